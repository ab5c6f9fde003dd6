"""Parquet shards of synthetic images: the contract between generation and training; where they live and how they are written.

Layout on any fsspec URL (local path, ``file://``, ``s3://``, ``memory://`` ...)::

    <base_url>/class=<class_id>/shard-<first 16 hex of the file's sha256>.parquet
    <base_url>/class=<class_id>/manifest.json      (names the class's current shard)

One row per synthetic image: the columns, the contract version and building a
table are :mod:`~synthaug_pipeline.lib.shard_schema`; reading the rows back is
:mod:`~synthaug_pipeline.lib.shard_reading`.

Shards are immutable and named by their content. A write puts the complete
shard file in place first (local: temp file, fsync, rename; object stores: one
PUT) and only then commits the class's ``manifest.json``, a small JSON pointer
replaced atomically in the same way. Readers resolve a class through the
manifest only (:func:`current_class_shard`), so a class has exactly one current
shard after any successful write: a crash before the commit leaves the previous
manifest in force, and two writers of one class finishing together give "last
commit wins", never an empty class, because no writer deletes a shard.
Superseded shards stay (models record shard URI + sha256 in their lineage) until
:func:`synthaug_pipeline.lib.shard_gc.gc_shards` removes the unreferenced ones.
Temp files (``.tmp-*``) left by a killed writer are removed by the next write
of the class once older than ``stale_temp_after_s``; younger ones may belong to
a live writer. A class folder written before manifests existed (no manifest,
exactly one shard) is still read.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from synthaug_pipeline.lib.faults import fail_once, failpoint
from synthaug_pipeline.lib.records import record
from synthaug_pipeline.lib.shard_schema import _conform
from synthaug_pipeline.lib.storage import TEMP_PREFIX, put_atomic

_SHARD_PREFIX = "shard-"
_SHARD_SUFFIX = ".parquet"
_TEMP_PREFIX = TEMP_PREFIX
MANIFEST_NAME = "manifest.json"
MANIFEST_CONTRACT = "synthaug-shard-manifest/1"
# A temp file older than this is left by a killed writer; younger ones may be a live writer's.
DEFAULT_STALE_TEMP_AFTER_S = 3600.0
# Row groups of about this many bytes: one huge row group per class (ImageNet
# at 512 px is hundreds of MB) would force readers to load it all at once.
_TARGET_ROW_GROUP_BYTES = 64 * 1024 * 1024


# --------------------------------------------------------------------------- #
# Locations
# --------------------------------------------------------------------------- #


def _check_class_id(class_id: Any) -> str:
    if not isinstance(class_id, str) or not class_id:
        raise ValueError(f"class_id must be a non-empty string, got {class_id!r}")
    if "/" in class_id or "\\" in class_id or ".." in class_id:
        raise ValueError(f"class_id {class_id!r} is not a safe path segment: it must not contain '/', '\\' or '..'")
    if "::" in class_id or any(ord(ch) < 32 for ch in class_id):
        # '::' chains fsspec protocols when a shard URI is parsed again.
        raise ValueError(f"class_id {class_id!r} is not a safe path segment: no '::' or control characters")
    return class_id


@dataclass(frozen=True)
class _ClassLocation:
    fs: fsspec.AbstractFileSystem
    folder: str  # path inside fs
    uri_prefix: str  # folder as a URI in the caller's style

    def uri(self, name: str) -> str:
        return f"{self.uri_prefix}/{name}"


def _class_location(base_url: str, class_id: str) -> _ClassLocation:
    _check_class_id(class_id)
    fs, root = fsspec.core.url_to_fs(base_url)
    root = root.rstrip("/") or "/"
    folder = f"{root.rstrip('/')}/class={class_id}"
    if isinstance(fs, LocalFileSystem):
        # Absolute local paths, so URIs stay valid if the working directory
        # changes; keep the file:// form when the caller used a URL.
        prefix = fs.unstrip_protocol(folder) if "://" in base_url else folder
    else:
        # Build from the caller's URL so chained URLs ("simplecache::s3://...")
        # and the caller's spelling survive.
        prefix = f"{base_url.rstrip('/')}/class={class_id}"
    return _ClassLocation(fs=fs, folder=folder, uri_prefix=prefix)


def is_shard_file_name(name: str) -> bool:
    """Whether a file name (no folder) is a shard's, ``shard-<hex>.parquet``."""
    return name.startswith(_SHARD_PREFIX) and name.endswith(_SHARD_SUFFIX) and "/" not in name


def _folder_entries(loc: _ClassLocation) -> list[dict]:
    # Object-store listings are cached by fsspec; a stale cache would hide the
    # shard or manifest just written.
    loc.fs.invalidate_cache(loc.folder)
    try:
        return loc.fs.ls(loc.folder, detail=True)
    except FileNotFoundError:
        return []


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ShardInfo:
    """Where a shard was written and what it holds.

    ``sha256`` is the hex digest of the written file's bytes (its first 16 hex
    characters name the file); ``num_bytes`` is the file size.
    """

    uri: str
    sha256: str
    num_rows: int
    num_accepted: int
    num_bytes: int


@record("shard_ref")
@dataclass(frozen=True)
class ShardRef:
    """A class's written shard as ``synthetic_shards`` hands it on: where, which bytes, what it holds, and
    the outcome of its blocking checks (``checks``: name -> passed), so training refuses a failed shard
    even when the check ran in an earlier run."""

    class_id: str
    uri: str
    sha256: str
    num_rows: int
    num_accepted: int
    filter_version: str
    filter_policy: str
    generator_version: str
    run_id: str
    checks: dict[str, bool]
    error: str | None = None
    cost: dict[str, Any] | None = None  # device seconds per generated / accepted image (lib.cost)

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def lineage(self) -> dict[str, Any]:
        """What a model's lineage records of this shard."""
        keys = ("class_id", "uri", "sha256", "num_rows", "num_accepted", "filter_version", "generator_version", "run_id")
        return {key: getattr(self, key) for key in keys}


def _serialize(table: pa.Table) -> bytes:
    """Parquet bytes of ``table``; identical tables give identical bytes."""
    others = [name for name in table.column_names if name != "image"]
    image_bytes = int(pc.sum(pc.binary_length(table["image"])).as_py() or 0) if table.num_rows else 0
    avg_row = max(1, image_bytes // max(1, table.num_rows))
    row_group_size = max(1, min(max(1, table.num_rows), _TARGET_ROW_GROUP_BYTES // avg_row))
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=row_group_size,
        # Encoded images are already compressed, and min/max statistics or a
        # dictionary of unique blobs would only bloat the file footer.
        compression={name: "zstd" for name in others} | {"image": "none"},
        use_dictionary=others,
        write_statistics=others,
    )
    return sink.getvalue().to_pybytes()


def _put_atomic(loc: _ClassLocation, name: str, data: bytes, suffix: str) -> None:
    """Make ``<folder>/name`` hold exactly ``data``, all or nothing, for every reader."""
    fail_once("storage_put")  # tests: the storage drops this request; nothing was written yet
    put_atomic(loc.fs, f"{loc.folder}/{name}", data, suffix, point="shard_write")


def file_age_seconds(fs: fsspec.AbstractFileSystem, path: str, now: _dt.datetime) -> float | None:
    """Seconds since ``path`` was last modified, or None where the backend cannot tell."""
    try:
        modified = fs.modified(path)
    except (FileNotFoundError, NotImplementedError, OSError):
        return None
    if modified.tzinfo is None:  # fsspec backends report naive UTC
        modified = modified.replace(tzinfo=_dt.timezone.utc)
    return (now - modified).total_seconds()


def stale_temp_files(fs: fsspec.AbstractFileSystem, folder: str, older_than_s: float = DEFAULT_STALE_TEMP_AFTER_S) -> list[str]:
    """Paths (in ``fs``) of the ``.tmp-*`` files in ``folder`` older than ``older_than_s`` (left by a killed writer)."""
    fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []
    now = _dt.datetime.now(_dt.timezone.utc)
    stale = []
    for entry in entries:
        if not _basename(entry["name"]).startswith(_TEMP_PREFIX):
            continue
        age = file_age_seconds(fs, entry["name"], now)
        if age is not None and age > older_than_s:
            stale.append(entry["name"])
    return sorted(stale)


def _remove_quietly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        fs.rm_file(path)
    except FileNotFoundError:  # another writer's cleanup got there first
        pass


def write_class_shard(
    base_url: str, class_id: str, table: pa.Table, *, stale_temp_after_s: float = DEFAULT_STALE_TEMP_AFTER_S
) -> ShardInfo:
    """Write ``table`` as the current shard of ``class_id`` under ``base_url``.

    The table is validated against :data:`SHARD_SCHEMA` (see
    :func:`build_shard_table`) and every row's ``class_id`` must equal
    ``class_id``; nothing is written if either check fails. The file goes to
    ``<base_url>/class=<class_id>/shard-<16 hex of its sha256>.parquet``
    (local: hidden temp file, fsync, ``os.replace``; object stores: one PUT),
    then ``manifest.json`` is committed the same way to name it. A failure
    before the commit leaves the previous current shard in force; no shard is
    ever deleted here (see the module docstring). Temp files of the class
    older than ``stale_temp_after_s`` are removed first. Writing identical
    content again gives the same URI. ``class_id`` must be a safe path
    segment (non-empty, no '/', '\\', '..', '::'), else ``ValueError``.
    """
    loc = _class_location(base_url, class_id)
    table = _conform(table)
    wrong = pc.unique(pc.filter(table["class_id"], pc.not_equal(table["class_id"], class_id))).to_pylist()
    if wrong:
        raise ValueError(f"table rows have class_id {sorted(wrong)!r} but the shard is for class {class_id!r}")

    data = _serialize(table)
    digest = hashlib.sha256(data).hexdigest()
    name = f"{_SHARD_PREFIX}{digest[:16]}{_SHARD_SUFFIX}"
    info = ShardInfo(
        uri=loc.uri(name),
        sha256=digest,
        num_rows=table.num_rows,
        num_accepted=int(pc.sum(table["accepted"].cast(pa.int64())).as_py() or 0),
        num_bytes=len(data),
    )

    loc.fs.makedirs(loc.folder, exist_ok=True)
    for path in stale_temp_files(loc.fs, loc.folder, stale_temp_after_s):
        _remove_quietly(loc.fs, path)
    _put_atomic(loc, name, data, _SHARD_SUFFIX)
    failpoint("shard_commit")  # a kill here leaves the new shard unnamed by the manifest
    manifest = {
        "contract": MANIFEST_CONTRACT,
        "class_id": class_id,
        "shard": name,
        "sha256": digest,
        "num_rows": info.num_rows,
        "num_accepted": info.num_accepted,
        "num_bytes": info.num_bytes,
        "committed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    _put_atomic(loc, MANIFEST_NAME, json.dumps(manifest, sort_keys=True).encode(), ".json")
    return info


# --------------------------------------------------------------------------- #
# Resolving a class's current shard
# --------------------------------------------------------------------------- #


def _read_manifest(loc: _ClassLocation, entries: list[dict]) -> dict | None:
    path = f"{loc.folder}/{MANIFEST_NAME}"
    if not any(_basename(entry["name"]) == MANIFEST_NAME for entry in entries):
        return None
    try:
        manifest = json.loads(loc.fs.cat_file(path))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{loc.uri(MANIFEST_NAME)} is not valid JSON; re-materialize this class's synthetic_shards") from None
    if not isinstance(manifest, dict) or manifest.get("contract") != MANIFEST_CONTRACT or not is_shard_file_name(str(manifest.get("shard", ""))):
        raise ValueError(f"{loc.uri(MANIFEST_NAME)} is not a {MANIFEST_CONTRACT} manifest; re-materialize this class's synthetic_shards")
    return manifest


def current_class_shard(base_url: str, class_id: str) -> str | None:
    """URI of the current shard of ``class_id``, or None if the class has none.

    Resolved through the class's manifest; a folder written before manifests
    existed is read if it holds exactly one shard. Raises ``ValueError`` for an
    unreadable manifest or a manifest-less folder with several shards, and
    ``FileNotFoundError`` when the manifest names a shard that is gone.
    """
    loc = _class_location(base_url, class_id)
    entries = _folder_entries(loc)
    manifest = _read_manifest(loc, entries)
    if manifest is not None:
        name = manifest["shard"]
        if not loc.fs.exists(f"{loc.folder}/{name}"):
            raise FileNotFoundError(f"{loc.uri(MANIFEST_NAME)} names {name}, which is missing; re-materialize this class's synthetic_shards")
        return loc.uri(name)
    legacy = sorted(name for name in (_basename(entry["name"]) for entry in entries) if is_shard_file_name(name))
    if len(legacy) > 1:
        raise ValueError(
            f"{loc.uri_prefix} holds {len(legacy)} shards and no {MANIFEST_NAME} (an interrupted write of an older version); "
            "re-materialize this class's synthetic_shards"
        )
    return loc.uri(legacy[0]) if legacy else None


def list_class_shards(base_url: str, class_id: str) -> list[str]:
    """The current shard of ``class_id`` as a list: one URI, or empty if the class has none.

    See :func:`current_class_shard`; superseded shards kept for lineage and temp
    files are never listed.
    """
    uri = current_class_shard(base_url, class_id)
    return [uri] if uri else []
