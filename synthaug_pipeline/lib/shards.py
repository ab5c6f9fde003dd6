"""Parquet shards of synthetic images: the contract between generation and training.

Layout on any fsspec URL (local path, ``file://``, ``s3://``, ``memory://`` ...)::

    <base_url>/class=<class_id>/shard-<first 16 hex of the file's sha256>.parquet
    <base_url>/class=<class_id>/manifest.json      (names the class's current shard)

One row per synthetic image (see :data:`SHARD_SCHEMA`). Every row carries the
filter policy that decided its ``accepted`` flag twice: ``filter_version`` (a
short hash, ``"v1-"`` + 12 hex, to group and compare by) and ``filter_policy``
(the policy itself: the canonical JSON, sorted keys and no whitespace, that the
version is the sha256 of; see
:meth:`synthaug_pipeline.lib.filtering.FilterPolicy.canonical_json`), so a
shard can be audited without the config that wrote it.

Shards are immutable and named by their content. A write puts the complete
shard file in place first (local: temp file, fsync, rename; object stores: one
PUT) and only then commits the class's ``manifest.json``, a small JSON pointer
replaced atomically in the same way. Readers resolve a class through the
manifest only, so a class has exactly one current shard after any successful
write: a crash before the commit leaves the previous manifest in force, and two
writers of one class finishing together give "last commit wins", never an
empty class, because no writer deletes a shard. Superseded shards stay (models
record shard URI + sha256 in their lineage) until
:func:`synthaug_pipeline.lib.shard_gc.gc_shards` removes the unreferenced ones.
Temp files (``.tmp-*``) left by a killed writer are removed by the next write
of the class once older than ``stale_temp_after_s``; younger ones may belong to
a live writer. A class folder written before manifests existed (no manifest,
exactly one shard) is still read.

Contract ``synthaug-shard/3`` (the ``synthaug_shard_contract`` schema
metadata) added to ``synthaug-shard/2`` the generator's identity beyond id and
content hash (``generator_revision``: the hub commit; ``generator_dtype``), the
batch each image was sampled in (``generation_batch``: CUDA kernels may round
differently at another batch size) and the safety checker's verdict
(``safety_flagged``: null when none ran). ``synthaug-shard/2`` added the
required ``filter_policy`` column to ``synthaug-shard/1``.
:func:`read_shards` refuses files of any other contract with a message saying
to re-materialize ``synthetic_shards`` (cheap: scores are cached, nothing is
regenerated).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from synthaug_pipeline.lib.faults import fail_once, failpoint
from synthaug_pipeline.lib.images import encode_image
from synthaug_pipeline.lib.records import record
from synthaug_pipeline.lib.redaction import redact_url
from synthaug_pipeline.lib.storage import TEMP_PREFIX, put_atomic

if TYPE_CHECKING:  # records of the producers of a shard's rows (imported for annotations only)
    from synthaug_pipeline.lib.diffusion import SyntheticClass
    from synthaug_pipeline.lib.scoring import ClassScores

SHARD_CONTRACT = "synthaug-shard/3"
CONTRACT_METADATA_KEY = b"synthaug_shard_contract"

SHARD_SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary(), nullable=False),
        pa.field("image_format", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("channels", pa.int32(), nullable=False),
        pa.field("class_id", pa.string(), nullable=False),
        pa.field("class_index", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=True),
        pa.field("negative_prompt", pa.string(), nullable=True),
        pa.field("conditioning_image_id", pa.string(), nullable=True),
        pa.field("generator_id", pa.string(), nullable=False),
        pa.field("generator_version", pa.string(), nullable=False),
        pa.field("generator_revision", pa.string(), nullable=True),  # hub commit of the weights; null for a local folder
        pa.field("generator_dtype", pa.string(), nullable=True),
        pa.field("sampler", pa.string(), nullable=False),
        pa.field("steps", pa.int32(), nullable=False),
        pa.field("guidance_scale", pa.float32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("image_index", pa.int32(), nullable=False),
        pa.field("generation_batch", pa.int32(), nullable=True),  # images per sampling call that made this one
        pa.field("judge_confidence", pa.float32(), nullable=False),
        pa.field("judge_top1", pa.int32(), nullable=False),
        pa.field("clip_score", pa.float32(), nullable=True),
        pa.field("safety_flagged", pa.bool_(), nullable=True),  # the checkpoint's safety checker; null when none ran
        pa.field("nearest_real_distance", pa.float32(), nullable=False),
        pa.field("accepted", pa.bool_(), nullable=False),
        pa.field("filter_version", pa.string(), nullable=False),
        # The policy itself, as the canonical JSON filter_version hashes (see the module docstring).
        pa.field("filter_policy", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=True),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={CONTRACT_METADATA_KEY: SHARD_CONTRACT.encode()},
)

SHARD_COLUMNS: tuple[str, ...] = tuple(SHARD_SCHEMA.names)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(f.name for f in SHARD_SCHEMA if not f.nullable)

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
# Building and validating tables
# --------------------------------------------------------------------------- #

_SCALAR_TYPES = (str, bytes, bool, int, float, _dt.datetime, np.generic)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, _SCALAR_TYPES)


def _kind_compatible(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether values of ``source`` type may be cast to ``target`` at all.

    Arrow would happily parse strings into integers or truncate floats into
    integers; for a data contract both are mistakes, so only casts within the
    same kind (and int -> float) are allowed. Range/precision is then checked by
    a safe cast.
    """
    if pa.types.is_null(source):
        return True
    if pa.types.is_integer(target):
        return pa.types.is_integer(source)
    if pa.types.is_floating(target):
        return pa.types.is_integer(source) or pa.types.is_floating(source)
    if pa.types.is_string(target):
        return pa.types.is_string(source) or pa.types.is_large_string(source) or pa.types.is_string_view(source)
    if pa.types.is_binary(target):
        return (
            pa.types.is_binary(source)
            or pa.types.is_large_binary(source)
            or pa.types.is_fixed_size_binary(source)
            or pa.types.is_binary_view(source)
        )
    if pa.types.is_boolean(target):
        return pa.types.is_boolean(source)
    if pa.types.is_timestamp(target):
        return pa.types.is_timestamp(source)
    return source == target


def _column_array(name: str, values: Any, num_rows: int) -> pa.Array:
    target = SHARD_SCHEMA.field(name)
    try:
        if _is_scalar(values):
            array = pa.array([values] * num_rows)
        elif isinstance(values, pa.ChunkedArray):
            array = values.combine_chunks()
        elif isinstance(values, pa.Array):
            array = values
        elif isinstance(values, np.ndarray):
            array = pa.array(values)
        else:
            array = pa.array(list(values))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise ValueError(f"column {name!r}: cannot convert values to Arrow ({exc})") from None
    if not _kind_compatible(array.type, target.type):
        raise ValueError(f"column {name!r} must be {target.type}, got values of type {array.type}")
    try:
        array = array.cast(target.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"column {name!r}: values do not fit {target.type} ({exc})") from None
    if not target.nullable and array.null_count:
        raise ValueError(f"column {name!r} is required but has {array.null_count} null values")
    return array


def build_shard_table(columns: Mapping[str, Any]) -> pa.Table:
    """Build a table that conforms to :data:`SHARD_SCHEMA` from column values.

    ``columns`` maps column names to sequences (lists, NumPy arrays, Arrow
    arrays), one value per image. A scalar (str, bytes, number, bool, datetime,
    None) is repeated for every row, which suits per-shard constants such as
    ``generator_id``, ``sampler`` or ``created_at``. Nullable columns may be
    omitted (filled with nulls); column order does not matter.

    Raises ``ValueError`` naming the problem for missing required columns,
    unknown columns, unequal column lengths, values of the wrong kind (e.g.
    strings or fractional floats in an integer column), out-of-range values
    and nulls in required columns.
    """
    if not isinstance(columns, Mapping):
        raise ValueError(f"columns must be a mapping of column name to values, got {type(columns).__name__}")
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    unknown = sorted(name for name in columns if name not in SHARD_SCHEMA.names)
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing required columns: {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown columns: {', '.join(map(str, unknown))}")
        raise ValueError("shard table does not match the shard schema: " + "; ".join(problems))

    lengths: dict[str, int] = {}
    for name, values in columns.items():
        if _is_scalar(values):
            continue
        try:
            lengths[name] = len(values)
        except TypeError:
            raise ValueError(f"column {name!r}: expected a sequence of values or a scalar, got {type(values).__name__}") from None
    if not lengths:
        raise ValueError("at least one column must be a sequence (one value per image) to give the number of rows")
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={length}" for name, length in sorted(lengths.items()))
        raise ValueError(f"columns have different lengths: {detail}")
    num_rows = next(iter(lengths.values()))

    arrays = [
        _column_array(f.name, columns[f.name], num_rows) if f.name in columns else pa.nulls(num_rows, type=f.type) for f in SHARD_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=SHARD_SCHEMA)


def _conform(table: pa.Table) -> pa.Table:
    """Validate an arbitrary table against the contract and return it in schema order."""
    if not isinstance(table, pa.Table):
        raise ValueError(f"expected a pyarrow.Table, got {type(table).__name__}")
    return build_shard_table({name: table.column(name) for name in table.column_names})


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
# Reading
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


def read_shards(uris: Sequence[str], accepted_only: bool = True, columns: Sequence[str] | None = None) -> pa.Table:
    """Read and concatenate shards.

    With ``accepted_only`` (the default) only rows with ``accepted == True`` are
    returned. ``columns`` selects columns (in that order); the ``accepted``
    column is read for filtering even when not selected. No URIs gives an
    empty table with the shard schema.

    Raises ``FileNotFoundError`` naming a missing URI, and ``ValueError`` for
    unknown column names or a file that is not a :data:`SHARD_CONTRACT`
    (``synthaug-shard/3``) shard, e.g. one written before ``filter_policy``
    existed (the message says so; re-materialize its ``synthetic_shards``).
    """
    if isinstance(uris, str):
        uris = [uris]
    selected = list(columns) if columns is not None else list(SHARD_SCHEMA.names)
    unknown = [name for name in selected if name not in SHARD_SCHEMA.names]
    if unknown:
        raise ValueError(f"unknown shard columns: {', '.join(unknown)}")
    to_read = selected + (["accepted"] if accepted_only and "accepted" not in selected else [])

    tables = []
    for uri in uris:
        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.isfile(path):
            raise FileNotFoundError(f"shard not found: {uri}")
        with fs.open(path, "rb") as handle:
            # Contract first (footer only): an older shard lacks columns, and reading them would fail less clearly.
            contract = (pq.read_schema(handle).metadata or {}).get(CONTRACT_METADATA_KEY, b"").decode()
            if contract != SHARD_CONTRACT:
                older = contract.startswith("synthaug-shard/")
                hint = "; re-materialize its synthetic_shards partition (scores are cached)" if older else ""
                raise ValueError(f"{uri} is not a {SHARD_CONTRACT} shard (contract metadata: {contract or 'none'}){hint}")
            handle.seek(0)
            table = pq.read_table(handle, columns=to_read)
        if accepted_only:
            table = table.filter(pc.fill_null(table["accepted"], False))
        tables.append(table.select(selected))

    if not tables:
        empty_schema = pa.schema([SHARD_SCHEMA.field(name) for name in selected], metadata=SHARD_SCHEMA.metadata)
        return empty_schema.empty_table()
    return pa.concat_tables(tables)


def file_sha256(uri: str) -> str:
    """Hex sha256 of the bytes at ``uri`` (streamed, so large files are fine)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.isfile(path):
        raise FileNotFoundError(f"file not found: {uri}")
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_shard_images(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Decode a shard table's images to uint8 ``[N, H, W, C]`` plus ``class_index`` labels (int64).

    Every row must have the same ``height``, ``width`` and ``channels`` (else
    ``ValueError`` listing the shapes found), and each decoded image must match
    its row's recorded shape. An empty table gives images shaped
    ``(0, 0, 0, 0)`` and empty labels.
    """
    # Imported here: images.py imports torch, which readers of shard metadata
    # (listing, hashing, filtering) should not have to load.
    from synthaug_pipeline.lib.images import decode_image

    needed = ["image", "height", "width", "channels", "class_index"]
    absent = [name for name in needed if name not in table.column_names]
    if absent:
        raise ValueError(f"table lacks columns needed to decode images: {', '.join(absent)}")
    labels = np.asarray(table["class_index"].to_numpy(zero_copy_only=False), dtype=np.int64)
    if table.num_rows == 0:
        return np.zeros((0, 0, 0, 0), dtype=np.uint8), labels

    shapes = pa.table({k: table[k] for k in ("height", "width", "channels")}).group_by(["height", "width", "channels"]).aggregate([])
    if shapes.num_rows != 1:
        found = sorted(tuple(row.values()) for row in shapes.to_pylist())
        raise ValueError(f"shard rows have different image shapes (height, width, channels): {found}")
    height, width, channels = (int(shapes[k][0].as_py()) for k in ("height", "width", "channels"))

    images = np.empty((table.num_rows, height, width, channels), dtype=np.uint8)
    # Decoding is per image by nature (each row is its own PNG/WebP/JPEG).
    for i, data in enumerate(table["image"].to_pylist()):
        decoded = decode_image(data, channels)
        if decoded.shape != (height, width, channels):
            raise ValueError(f"row {i}: decoded image has shape {decoded.shape}, row says {(height, width, channels)}")
        images[i] = decoded
    return images, labels


def read_verified_shards(refs: Sequence[ShardRef], accepted_only: bool = True) -> pa.Table:
    """The rows of ``refs``' shards, after checking each file is the exact bytes its scoring run wrote.

    Raises ``ValueError`` naming the class when a shard's sha256 changed (re-materialize its
    ``synthetic_shards`` partition) and ``FileNotFoundError`` when one is gone.
    """
    for ref in refs:
        if file_sha256(ref.uri) != ref.sha256:
            raise ValueError(
                f"shard {redact_url(ref.uri)} changed since it was written (sha256 mismatch): "
                f"re-materialize synthetic_shards[{ref.class_id}]"
            )
    return read_shards([ref.uri for ref in refs], accepted_only=accepted_only)


def class_shard_table(
    synthetic: SyntheticClass,
    scores: ClassScores | None,
    rows: np.ndarray,
    accepted: np.ndarray,
    policy_version: str,
    policy_json: str,
    fmt: str,
    run_id: str,
) -> pa.Table:
    """The shard rows of one class: every image at ``rows`` with its provenance, scores and the policy's decision."""
    images = synthetic.images[rows]
    n = len(rows)
    return build_shard_table(
        {
            "image": [encode_image(image, fmt) for image in images],
            "image_format": [fmt] * n,
            "height": [images.shape[1]] * n,
            "width": [images.shape[2]] * n,
            "channels": [images.shape[3]] * n,
            "class_id": [synthetic.class_id] * n,
            "class_index": [synthetic.class_index] * n,
            "prompt": _per_row(synthetic.prompts, rows),
            "negative_prompt": _per_row(synthetic.negative_prompts, rows),
            "conditioning_image_id": _per_row(synthetic.conditioning_image_ids, rows),
            "generator_id": [synthetic.generator_id] * n,
            "generator_version": [synthetic.generator_version] * n,
            "generator_revision": [synthetic.generator_revision] * n,
            "generator_dtype": [synthetic.generator_dtype] * n,
            "generation_batch": _per_row(synthetic.batch_sizes, rows),
            "sampler": [synthetic.sampler] * n,
            "steps": [synthetic.steps] * n,
            "guidance_scale": [synthetic.guidance_scale] * n,
            "seed": [synthetic.seeds[i] for i in rows],
            "image_index": rows.tolist(),
            "judge_confidence": scores.judge_confidence if scores is not None else [],
            "judge_top1": scores.judge_top1 if scores is not None else [],
            "clip_score": scores.clip_score if scores is not None and scores.clip_score is not None else [None] * n,
            "nearest_real_distance": scores.nearest_real_distance if scores is not None else [],
            "safety_flagged": _per_row(synthetic.safety_flagged, rows),
            "accepted": accepted,
            "filter_version": [policy_version] * n,
            "filter_policy": [policy_json] * n,
            "run_id": [run_id] * n,
            "created_at": [_dt.datetime.now(_dt.timezone.utc)] * n,
        }
    )


def _per_row(values: list | None, rows: np.ndarray) -> list:
    """``values`` (one per image; None: none) at ``rows``."""
    return [None] * len(rows) if values is None else [values[i] for i in rows]
