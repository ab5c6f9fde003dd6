"""A filter policy's decisions as shard columns, and the policy of a profile's ``filter`` settings.

:func:`shard_decisions` computes a shard's ``accepted``/``filter_version`` columns and :func:`shard_policy` its
``filter_policy`` column (the policy itself, as the canonical JSON the version is the hash of), for the pipeline and
for :func:`refilter_table`, which re-applies a policy to a shard's cached scores without decoding or regenerating
any image. :func:`filter_policy`, :func:`filter_version`, :func:`accept` and :func:`shard_accept` take a
:class:`~synthaug_pipeline.lib.config.FilterConfig`: the one door the pipeline decides shard rows through. The
policies themselves (thresholds, duplicates, ranking, k-center) are :mod:`synthaug_pipeline.lib.filtering`.

Pure NumPy and PyArrow; no Dagster, no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from synthaug_pipeline.lib.config import FilterConfig
from synthaug_pipeline.lib.filtering import (
    _NON_ROW_POLICY_FIELDS,
    FilterPolicy,
    _check_threshold,
    _duplicate_extra,
    _is_int,
    apply_policy,
    policy_json_version,
    policy_version,
)

if TYPE_CHECKING:  # only for annotations: scoring computes the scores, this module decides on them
    from synthaug_pipeline.lib.scoring import ClassScores

# Shard columns refilter_table reads and writes.
SCORE_COLUMNS = ("judge_confidence", "judge_top1", "nearest_real_distance")
DECISION_COLUMNS = ("accepted", "filter_version", "filter_policy")
# dtype of the score columns in a shard (SHARD_SCHEMA): shard decisions are made on values rounded to it.
SHARD_SCORE_DTYPE = np.float32


def _as_shard_float(values: Any) -> np.ndarray:
    """Scores as a shard stores them (float32), widened back to float64 for exact comparisons."""
    return np.asarray(values, dtype=np.float64).astype(SHARD_SCORE_DTYPE).astype(np.float64)


def shard_decisions(
    policy: FilterPolicy,
    class_index: int,
    judge_confidence: np.ndarray,
    judge_top1: np.ndarray,
    nearest_real_distance: np.ndarray,
    *,
    duplicate_threshold: float | None,
    test_leak: np.ndarray | None,
    extra: dict[str, Any] | None = None,
    safety_flagged: np.ndarray | None = None,
    features: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """The ``accepted`` flags and the ``filter_version`` of one class's shard rows.

    The one decision path for rows written by the pipeline and rows rewritten
    by :func:`refilter_table`. Confidences and distances are first rounded to
    float32, as :data:`~synthaug_pipeline.lib.shard_schema.SHARD_SCHEMA` stores them,
    so re-filtering a shard with the same policy, ``duplicate_threshold`` and
    ``test_leak`` flags reproduces its rows exactly.

    A row is a training copy when ``nearest_real_distance <= duplicate_threshold``
    (with ``duplicate_threshold=None`` copies are not checked); ``test_leak`` is
    one bool per row (the shard has no test distances) or None (not checked).
    ``extra``: further row-level settings hashed into the version (see
    :meth:`FilterPolicy.version`); the threshold is added when a duplicate rule
    is on. ``safety_flagged``: one bool per row from the generator's safety
    checker, or None where none ran; given, ``drop_safety_flagged`` joins the
    policy (see :func:`safety_extra`). Raises ``ValueError`` for a bad
    threshold or misaligned arrays.
    """
    _check_threshold(duplicate_threshold)
    confidence = _as_shard_float(judge_confidence)
    n = confidence.shape[0] if confidence.ndim == 1 else -1
    train_copy = None
    if duplicate_threshold is not None:
        train_copy = _as_shard_float(nearest_real_distance) <= float(duplicate_threshold)
    leak = None
    if test_leak is not None:
        leak = np.asarray(test_leak)
        if leak.shape != (n,) or leak.dtype != np.bool_:
            raise ValueError(f"test_leak must be a bool array with one flag per row ({n}), got dtype {leak.dtype} shape {leak.shape}")
    flagged = None
    if safety_flagged is not None:
        flagged = np.asarray(safety_flagged)
        if flagged.shape != (n,) or flagged.dtype != np.bool_:
            raise ValueError(
                f"safety_flagged must be a bool array with one flag per row ({n}), got dtype {flagged.dtype} shape {flagged.shape}"
            )
    accepted = policy.decide(confidence, judge_top1, class_index, train_copy, leak, flagged, features)
    version = policy_json_version(
        shard_policy(policy, duplicate_threshold=duplicate_threshold, extra=extra, safety_checked=flagged is not None)
    )
    return accepted, version


def safety_extra(policy: FilterPolicy, safety_checked: bool) -> dict[str, Any]:
    """``{"drop_safety_flagged": ...}`` for rows a safety checker checked; nothing otherwise (it decides nothing there)."""
    return {"drop_safety_flagged": policy.drop_safety_flagged} if safety_checked else {}


def shard_policy(
    policy: FilterPolicy, *, duplicate_threshold: float | None, extra: dict[str, Any] | None = None, safety_checked: bool = False
) -> str:
    """The ``filter_policy`` column value of rows :func:`shard_decisions` decides with the same arguments:
    the canonical JSON its ``filter_version`` is the hash of (see :meth:`FilterPolicy.canonical_json`)."""
    _check_threshold(duplicate_threshold)
    return policy.canonical_json(
        extra={**(extra or {}), **_duplicate_extra(policy, duplicate_threshold), **safety_extra(policy, safety_checked)}
    )


def _column_numpy(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise ValueError(f"column {name!r} has {column.null_count} null values; cannot re-filter those rows")
    return column.to_numpy().astype(dtype, copy=False)


def refilter_table(
    table: pa.Table,
    class_index: int,
    *,
    duplicate_threshold: float | None = None,
    test_leak: np.ndarray | None = None,
    features: np.ndarray | None = None,
    **policy: Any,
) -> pa.Table:
    """Re-apply a policy to one class's shard table from its cached scores.

    Reads ``judge_confidence``, ``judge_top1`` and ``nearest_real_distance``
    (see :data:`synthaug_pipeline.lib.shard_schema.SHARD_SCHEMA`) and returns the
    table with only ``accepted``, ``filter_version`` and ``filter_policy``
    (the canonical JSON of the new policy, :func:`shard_policy`) replaced; every other
    column (``image`` included) is the same Arrow data, so no image is decoded
    or regenerated. ``**policy`` takes the keyword arguments of
    :func:`apply_policy` with the same defaults; decisions and version come
    from :func:`shard_decisions`, the path the pipeline writes shards with, so
    the pipeline's own policy reproduces its rows exactly.

    Duplicate checks from the shard (the pipeline keeps both inputs in the
    cached ``synthetic_scores[c]``: ``duplicate_threshold`` and
    ``scores.is_test_leak``):

    * ``drop_train_copies`` (default on) drops rows with
      ``nearest_real_distance <= duplicate_threshold``; the shard does not
      store the threshold, so it must be passed or ``drop_train_copies=False``
      given, else ``ValueError``;
    * ``drop_test_leaks`` (default on) needs ``test_leak``, a bool array with
      one flag per row (shards do not store test distances), or
      ``drop_test_leaks=False``, else ``ValueError``.

    Ranking ties (top_k/quantile) are broken by row order.

    Raises ``ValueError`` for missing score/decision columns, nulls in score
    columns, rows whose ``class_index`` column differs from ``class_index``,
    and invalid policy settings; ``TypeError`` for unknown policy keywords.
    """
    if not isinstance(table, pa.Table):
        raise ValueError(f"expected a pyarrow.Table, got {type(table).__name__}")
    missing = [name for name in (*SCORE_COLUMNS, *DECISION_COLUMNS) if name not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns needed to re-filter: {', '.join(missing)}")
    rules = FilterPolicy(**policy)
    if not _is_int(class_index):
        raise ValueError(f"class_index must be an integer, got {class_index!r}")
    if "class_index" in table.column_names and table.num_rows:
        found = np.unique(_column_numpy(table, "class_index", np.int64))
        if found.size != 1 or int(found[0]) != int(class_index):
            raise ValueError(f"table rows have class_index {found.tolist()} but re-filtering is for class {class_index}")
    if rules.drop_train_copies and duplicate_threshold is None:
        raise ValueError(
            "drop_train_copies needs duplicate_threshold (shards keep nearest_real_distance, not the threshold; "
            "use synthetic_scores[c]['duplicate_threshold']) or pass drop_train_copies=False"
        )
    if rules.drop_test_leaks and test_leak is None:
        raise ValueError(
            "drop_test_leaks needs test_leak (one bool per row; shards do not store test distances; "
            "use synthetic_scores[c]['scores'].is_test_leak) or pass drop_test_leaks=False"
        )

    flagged = None
    if "safety_flagged" in table.column_names and table.num_rows and table.column("safety_flagged").null_count == 0:
        flagged = table.column("safety_flagged").to_numpy(zero_copy_only=False).astype(bool)
    accepted, version = shard_decisions(
        rules,
        int(class_index),
        _column_numpy(table, "judge_confidence", np.float64),
        _column_numpy(table, "judge_top1", np.int64),
        _column_numpy(table, "nearest_real_distance", np.float64),
        duplicate_threshold=duplicate_threshold,
        test_leak=test_leak if rules.drop_test_leaks else None,
        safety_flagged=flagged,
        features=features,
    )
    policy_json = shard_policy(rules, duplicate_threshold=duplicate_threshold, safety_checked=flagged is not None)
    n = table.num_rows
    for name, values in (("accepted", accepted), ("filter_version", [version] * n), ("filter_policy", [policy_json] * n)):
        index = table.schema.get_field_index(name)
        target = table.schema.field(index)
        table = table.set_column(index, target, pa.array(values, type=target.type))
    return table


# --------------------------------------------------------------------------- #
# The policy of a profile (FilterConfig): the one door the pipeline decides shard rows through
# --------------------------------------------------------------------------- #


def _config_extra(cfg: FilterConfig) -> dict[str, Any]:
    """FilterConfig fields beyond :class:`FilterPolicy` that still decide rows (e.g. a subclass's new rule)."""
    dumped = cfg.model_dump(mode="json")
    return {k: v for k, v in dumped.items() if k not in _NON_ROW_POLICY_FIELDS and k not in FilterPolicy.field_names()}


def filter_policy(cfg: FilterConfig, duplicate_threshold: float | None = None, safety_checked: bool = False) -> str:
    """The row-acceptance policy of ``cfg`` as canonical JSON (sorted keys, no whitespace).

    The exact string :func:`filter_version` hashes (see there for what it
    contains), stored per shard row in the ``filter_policy`` column so a
    shard says which rules accepted its rows, not only their hash:
    ``policy_json_version(filter_policy(cfg, t)) == filter_version(cfg, t)``.
    """
    policy = FilterPolicy.from_config(cfg)
    extra = _config_extra(cfg)
    if duplicate_threshold is not None and (policy.drop_train_copies or policy.drop_test_leaks):
        if isinstance(duplicate_threshold, bool) or not np.isfinite(duplicate_threshold) or duplicate_threshold < 0:
            raise ValueError(f"duplicate_threshold must be a finite distance >= 0 or None, got {duplicate_threshold!r}")
        extra["duplicate_threshold"] = float(duplicate_threshold)
    return policy.canonical_json(extra={**extra, **safety_extra(policy, safety_checked)})


def filter_version(cfg: FilterConfig, duplicate_threshold: float | None = None, safety_checked: bool = False) -> str:
    """Identifier of the row-acceptance policy: ``"v1-"`` + 12 hex of a sha256.

    Hashes the canonical JSON (sorted keys, no whitespace; :func:`filter_policy`) of the policy that
    :func:`accept` applies for ``cfg`` (see
    :meth:`~synthaug_pipeline.lib.filtering.FilterPolicy.canonical`), plus
    ``duplicate_threshold`` (the class's near-duplicate distance,
    ``summary["duplicate_threshold"]``) when a duplicate rule is on, so every
    shard row records which policy accepted it and a policy change is visible
    in the data. It equals
    :func:`~synthaug_pipeline.lib.filtering.policy_version` of the same
    settings. Rules at their no-op value (no top_k/quantile, duplicates kept)
    are left out, so a two-threshold policy keeps the identifier it had before
    the other rules existed. Any other FilterConfig field is included as
    dumped (a new row-level rule must change the version), except
    ``min_accepted_per_class``: it gates a whole class in an asset check and
    never changes a row's accepted flag.
    """
    return policy_json_version(filter_policy(cfg, duplicate_threshold, safety_checked))


def accept(scores: ClassScores, class_index: int, cfg: FilterConfig) -> np.ndarray:
    """Boolean accept mask of ``cfg``'s policy on in-memory float64 scores (see
    :func:`synthaug_pipeline.lib.filtering.apply_policy`): ``confidence >=
    min_confidence`` and, if ``require_label_match``, judge top-1 equals
    ``class_index``; then ``scores.is_train_copy`` / ``scores.is_test_leak``
    dropped if ``drop_train_copies`` / ``drop_test_leaks`` (flags that are None
    were not computed and drop nothing); then ``top_k`` or ``quantile``.
    Shards are written with :func:`shard_accept`, which makes the same
    decisions on the float32 values a shard stores."""
    return FilterPolicy.from_config(cfg).apply(scores, class_index)


def shard_accept(scores: ClassScores, class_index: int, cfg: FilterConfig) -> tuple[np.ndarray, str]:
    """``(accepted, filter_version)`` of the shard rows of ``scores`` under ``cfg``.

    The decisions of :func:`accept`, taken on the values as a shard stores them
    (float32, see :func:`~synthaug_pipeline.lib.shard_filtering.shard_decisions`):
    training copies are rows with ``nearest_real_distance <=
    summary["duplicate_threshold"]``, test leaks come from
    ``scores.is_test_leak``. :func:`~synthaug_pipeline.lib.shard_filtering.refilter_table`
    given the same policy, that ``duplicate_threshold`` and
    ``test_leak=scores.is_test_leak`` reproduces both columns exactly. The
    version is :func:`filter_version` of ``cfg`` and the threshold.
    """
    return shard_decisions(
        FilterPolicy.from_config(cfg),
        class_index,
        scores.judge_confidence,
        scores.judge_top1,
        scores.nearest_real_distance,
        duplicate_threshold=scores.summary.get("duplicate_threshold"),
        test_leak=scores.is_test_leak,
        extra=_config_extra(cfg),
        safety_flagged=getattr(scores, "safety_flagged", None),
        features=scores.features,
    )
