"""The shard schema (:data:`SHARD_SCHEMA`, one row per synthetic image) and building tables that conform to it.

Where shards live and how they are written is :mod:`~synthaug_pipeline.lib.shards`;
reading them back is :mod:`~synthaug_pipeline.lib.shard_reading`.

Every row carries the
filter policy that decided its ``accepted`` flag twice: ``filter_version`` (a
short hash, ``"v1-"`` + 12 hex, to group and compare by) and ``filter_policy``
(the policy itself: the canonical JSON, sorted keys and no whitespace, that the
version is the sha256 of; see
:meth:`synthaug_pipeline.lib.filtering.FilterPolicy.canonical_json`), so a
shard can be audited without the config that wrote it.

Contract ``synthaug-shard/3`` (the ``synthaug_shard_contract`` schema
metadata) added to ``synthaug-shard/2`` the generator's identity beyond id and
content hash (``generator_revision``: the hub commit; ``generator_dtype``), the
batch each image was sampled in (``generation_batch``: CUDA kernels may round
differently at another batch size) and the safety checker's verdict
(``safety_flagged``: null when none ran). ``synthaug-shard/2`` added the
required ``filter_policy`` column to ``synthaug-shard/1``.
:func:`~synthaug_pipeline.lib.shard_reading.read_shards` refuses files of any
other contract with a message saying to re-materialize ``synthetic_shards``
(cheap: scores are cached, nothing is regenerated).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from synthaug_pipeline.lib.images import encode_image

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
