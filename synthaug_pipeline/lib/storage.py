"""The storage behind ``output.url``: S3-compatible endpoint, timeouts, retries, and a write preflight.

``output.url`` is any fsspec URL. For ``s3://`` the profile's ``output`` section adds the endpoint
(MinIO, SeaweedFS, Ceph ...), region, connect/read timeouts and retry count, so an unreachable store
fails after bounded time instead of hanging. Credentials never pass through settings: boto's
standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles)
supplies them, and no message here prints them.

:func:`configure_output_storage` registers those options as fsspec's defaults for ``s3://``
(``fsspec.config.conf``), so every lib function that opens a URL under the output (shards, models,
lineage, reports) picks them up without each taking a filesystem argument;
:func:`output_filesystem` builds the filesystem of the output URL itself. Options a caller passes
explicitly still win over these defaults.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import fsspec
import fsspec.config
from fsspec.implementations.local import LocalFileSystem

from synthaug_pipeline.lib.config import OutputConfig, Profile
from synthaug_pipeline.lib.faults import failpoint
from synthaug_pipeline.lib.redaction import redact_url

S3_PROTOCOL = "s3"  # the key fsspec.config.conf uses for s3:// and s3a://
_PROBE_PREFIX = ".synthaug-write-probe-"


class OutputNotWritableError(RuntimeError):
    """``output.url`` cannot be written; the message is one line naming the URL and the cause."""


def storage_options(output: OutputConfig) -> dict[str, Any]:
    """s3fs options from ``output``: endpoint, region, timeouts and retries (never credentials)."""
    client_kwargs = {key: value for key, value in (("endpoint_url", output.endpoint_url), ("region_name", output.region)) if value}
    return {
        "client_kwargs": client_kwargs,
        "config_kwargs": {
            "connect_timeout": output.connect_timeout_s,
            "read_timeout": output.read_timeout_s,
            # botocore's max_attempts counts retries after the first attempt; standard mode backs off with jitter.
            "retries": {"max_attempts": output.retries, "mode": "standard"},
        },
    }


def configure_output_storage(output: OutputConfig) -> None:
    """Make ``output``'s S3 options the defaults of every ``s3://`` filesystem this process opens."""
    fsspec.config.conf[S3_PROTOCOL] = {**fsspec.config.conf.get(S3_PROTOCOL, {}), **storage_options(output)}


def output_filesystem(profile: Profile, url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``url`` (default: the profile's output URL), built with ``profile.output``'s options."""
    configure_output_storage(profile.output)
    return fsspec.core.url_to_fs(url or profile.output_url)


def _causes(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _describe_failure(exc: BaseException, url: str, output: OutputConfig) -> str:
    """One line for why writing a probe under ``url`` failed."""
    chain = _causes(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    endpoint = redact_url(output.endpoint_url) if output.endpoint_url else "the default AWS endpoint"
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionRefusedError", "ClientConnectorError", "ConnectTimeout"} or (
        "Could not connect" in text
    ):
        return (
            f"output.url {url}: cannot reach the storage endpoint {endpoint} "
            f"(connect timeout {output.connect_timeout_s:g} s, {output.retries} retries); check output.endpoint_url and the network"
        )
    if names & {"ReadTimeoutError", "ReadTimeout", "TimeoutError", "FSTimeoutError"}:
        return f"output.url {url}: the storage endpoint {endpoint} did not answer within {output.read_timeout_s:g} s (output.read_timeout_s)"
    if "NoCredentialsError" in names or "Unable to locate credentials" in text:
        return f"output.url {url}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    if any(isinstance(e, FileNotFoundError) for e in chain) or "NoSuchBucket" in text:
        bucket = url.split("://", 1)[-1].split("/", 1)[0]
        return f"output.url {url}: bucket {bucket!r} does not exist at {endpoint}; create it or fix output.url"
    if any(isinstance(e, PermissionError) for e in chain) or any(
        code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden")
    ):
        return f"output.url {url}: access denied writing a probe object; check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket policy"
    return f"output.url {url}: cannot write a probe object ({type(exc).__name__}: {_first_line(exc)})"


def check_output_writable(profile: Profile) -> None:
    """Write and delete a small probe object under ``profile.output_url``.

    Raises :class:`OutputNotWritableError` with one line naming the URL and the cause (endpoint
    unreachable, bucket missing, access denied, no credentials) and never the credentials. Bounded
    in time by ``output.connect_timeout_s``, ``output.read_timeout_s`` and ``output.retries``.
    """
    url = redact_url(profile.output_url)
    try:
        fs, root = output_filesystem(profile)
    except (ImportError, ValueError) as exc:
        raise OutputNotWritableError(f"output.url {url}: cannot open this URL ({_first_line(exc)})") from None
    root = root.rstrip("/")
    probe = f"{root}/{_PROBE_PREFIX}{uuid.uuid4().hex}"
    if isinstance(fs, LocalFileSystem):  # writable where it will be created; nothing is written before the run needs it
        existing = root
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            raise OutputNotWritableError(f"output.url {url}: {existing} is not a writable folder")
        return
    try:
        # No makedirs on object stores: s3fs would create a missing bucket instead of reporting it.
        fs.pipe_file(probe, b"synthaug write probe\n")
        fs.rm_file(probe)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming the cause
        raise OutputNotWritableError(_describe_failure(exc, url, profile.output)) from None


TEMP_PREFIX = ".tmp-"  # hidden temp files of atomic writes; `synthaug gc` and shard writers sweep stale ones


def put_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes, suffix: str = "", point: str | None = None) -> None:
    """Make ``path`` hold exactly ``data``, all or nothing, for every reader.

    Local: a hidden temp file in the same folder, fsynced, then renamed into place (``os.replace`` is
    atomic within a filesystem), then the folder fsynced. Object stores (and ``memory://``): one PUT of a
    whole object is atomic. ``point`` names a failpoint between a local write and its rename (kill tests).
    """
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    folder = os.path.dirname(path)
    tmp_path = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}{suffix}")
    try:
        with open(tmp_path, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # data on disk before the rename makes it visible
        if point:
            failpoint(point)
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.remove(tmp_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    # Makes the rename itself durable on POSIX; not supported on Windows.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
