"""Filter policies: which scored synthetic images are accepted into training.

A policy is applied in this order, on per-image scores already computed by
:func:`synthaug_pipeline.lib.scoring.score_class` (or cached in a shard):

1. thresholds: judge confidence for the intended class ``>= min_confidence``
   (and ``<= max_confidence``: a confidence band that drops the images the
   judge finds too easy, the class prototypes) and, with
   ``require_label_match``, judge top-1 == the intended class;
2. near-duplicates: with ``drop_train_copies`` images flagged as copies of a
   training image (memorization) are dropped, with ``drop_test_leaks`` copies
   of a test image (they would leak the test set into training); with
   ``drop_safety_flagged`` images the generator's safety checker flagged;
3. ranking among the survivors: keep the ``top_k`` most confident, or the top
   ``quantile`` share of them (``ceil(quantile * survivors)`` images). Equal
   confidences are ordered by row index (lower first), so results are
   deterministic. With ``diversity="k_center"`` the same number is chosen to
   cover the class instead (:func:`select_k_center`, greedy k-center on the
   images' features): a filter that keeps variety rather than only the
   images the judge finds most typical.

Duplicates are dropped before ranking, so ``top_k=100`` yields 100 clean
images when that many survive the thresholds.

Every policy has a stable identifier (:func:`policy_version`, same scheme as
:func:`synthaug_pipeline.lib.scoring.filter_version`) that shards record per
row; it includes the near-duplicate distance threshold when a duplicate rule is
on. :func:`shard_decisions` computes a shard's ``accepted``/``filter_version``
columns and :func:`shard_policy` its ``filter_policy`` column (the policy
itself, as the canonical JSON the version is the hash of), for the pipeline and
for :func:`refilter_table`, which re-applies a policy to a shard's cached
scores without decoding or regenerating any image.

Pure NumPy (and PyArrow for shard tables); no Dagster, no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from synthaug_pipeline.lib.config import FilterConfig

if TYPE_CHECKING:  # only for annotations: scoring computes the scores, this module decides on them
    from synthaug_pipeline.lib.scoring import ClassScores

VERSION_PREFIX = "v1-"

# FilterConfig fields that do NOT decide whether a single row is accepted.
# They are left out of filter_version so that changing, e.g., the asset-check
# threshold does not make identical accept decisions look like a new policy.
# Any field added to FilterConfig later is included by default (safer: a new
# row-level rule must change the version).
_NON_ROW_POLICY_FIELDS = frozenset({"min_accepted_per_class"})

# Shard columns refilter_table reads and writes.
SCORE_COLUMNS = ("judge_confidence", "judge_top1", "nearest_real_distance")
DECISION_COLUMNS = ("accepted", "filter_version", "filter_policy")
# dtype of the score columns in a shard (SHARD_SCHEMA): shard decisions are made on values rounded to it.
SHARD_SCORE_DTYPE = np.float32


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class FilterPolicy:
    """One row-acceptance policy (validated on construction; see module docs).

    ``min_confidence`` in [0, 1]; ``top_k`` an int >= 0 or None; ``quantile``
    in (0, 1] or None; at most one of ``top_k`` and ``quantile``. Invalid
    values raise ``ValueError`` naming the field.
    """

    min_confidence: float = 0.5
    require_label_match: bool = True
    top_k: int | None = None
    quantile: float | None = None
    drop_train_copies: bool = True
    drop_test_leaks: bool = True
    drop_safety_flagged: bool = True
    max_confidence: float = 1.0
    diversity: str = "none"

    def __post_init__(self) -> None:
        if not _is_real(self.min_confidence) or not 0.0 <= float(self.min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be a probability in [0, 1], got {self.min_confidence!r}")
        object.__setattr__(self, "min_confidence", float(self.min_confidence))
        if not _is_real(self.max_confidence) or not self.min_confidence <= float(self.max_confidence) <= 1.0:
            raise ValueError(f"max_confidence must lie in [min_confidence, 1] = [{self.min_confidence}, 1], got {self.max_confidence!r}")
        object.__setattr__(self, "max_confidence", float(self.max_confidence))
        if self.diversity not in DIVERSITY_SELECTIONS:
            raise ValueError(f"diversity must be one of {', '.join(DIVERSITY_SELECTIONS)}, got {self.diversity!r}")
        object.__setattr__(self, "require_label_match", _as_bool(self.require_label_match, "require_label_match"))
        object.__setattr__(self, "drop_train_copies", _as_bool(self.drop_train_copies, "drop_train_copies"))
        object.__setattr__(self, "drop_test_leaks", _as_bool(self.drop_test_leaks, "drop_test_leaks"))
        object.__setattr__(self, "drop_safety_flagged", _as_bool(self.drop_safety_flagged, "drop_safety_flagged"))
        if self.top_k is not None:
            if not _is_int(self.top_k) or self.top_k < 0:
                raise ValueError(f"top_k must be an integer >= 0 or None, got {self.top_k!r}")
            object.__setattr__(self, "top_k", int(self.top_k))
        if self.quantile is not None:
            if not _is_real(self.quantile) or not 0.0 < float(self.quantile) <= 1.0:
                raise ValueError(f"quantile must be in (0, 1] or None, got {self.quantile!r}")
            object.__setattr__(self, "quantile", float(self.quantile))
        if self.top_k is not None and self.quantile is not None:
            raise ValueError(f"choose top_k or quantile, not both (got top_k={self.top_k}, quantile={self.quantile})")

    @staticmethod
    def field_names() -> frozenset[str]:
        return frozenset(f.name for f in fields(FilterPolicy))

    @classmethod
    def from_config(cls, cfg: Any) -> FilterPolicy:
        """Policy of a :class:`~synthaug_pipeline.lib.config.FilterConfig` (or any object with its fields)."""
        return cls(
            min_confidence=cfg.min_confidence,
            require_label_match=cfg.require_label_match,
            top_k=cfg.top_k,
            quantile=cfg.quantile,
            drop_train_copies=cfg.drop_train_copies,
            drop_test_leaks=cfg.drop_test_leaks,
            drop_safety_flagged=getattr(cfg, "drop_safety_flagged", True),
            max_confidence=cfg.max_confidence,
            diversity=cfg.diversity,
        )

    def canonical(self) -> dict[str, Any]:
        """The settings that define the policy, as plain JSON values.

        Settings at their no-op value are omitted (``top_k``/``quantile`` None,
        ``drop_*`` False): the identifier names the decisions, so a policy that
        never drops duplicates or ranks hashes as the two-threshold policies of
        shards written before those rules existed (``v1-e7d13883f612`` for
        the defaults), and a no-op rule added later changes no identifier.
        ``drop_safety_flagged`` decides rows only where a safety checker ran, so
        it enters through :func:`shard_decisions`' extra settings for those rows.
        """
        out: dict[str, Any] = {"min_confidence": self.min_confidence, "require_label_match": self.require_label_match}
        if self.top_k is not None:
            out["top_k"] = self.top_k
        if self.quantile is not None:
            out["quantile"] = self.quantile
        if self.drop_train_copies:
            out["drop_train_copies"] = True
        if self.drop_test_leaks:
            out["drop_test_leaks"] = True
        if self.max_confidence < 1.0:
            out["max_confidence"] = self.max_confidence
        if self.diversity != "none":
            out["diversity"] = self.diversity
        return out

    def canonical_json(self, extra: dict[str, Any] | None = None) -> str:
        """The canonical JSON (sorted keys, no whitespace, ASCII) of
        :meth:`canonical` merged with ``extra`` (further row-level settings,
        e.g. a duplicate threshold): what shards store in ``filter_policy``
        and what :meth:`version` hashes."""
        policy = self.canonical()
        for key, value in (extra or {}).items():
            if key in policy:
                raise ValueError(f"extra policy setting {key!r} clashes with a FilterPolicy field")
            policy[key] = value
        return json.dumps(policy, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    def version(self, extra: dict[str, Any] | None = None) -> str:
        """``"v1-"`` + 12 hex of the sha256 of :meth:`canonical_json` (see :func:`policy_json_version`)."""
        return policy_json_version(self.canonical_json(extra))

    def keep_count(self, survivors: int) -> int:
        """How many of ``survivors`` images the ranking step keeps."""
        if self.top_k is not None:
            return min(self.top_k, survivors)
        if self.quantile is not None:
            # Rounded first so 0.1 * 10 (= 1.0000000000000002 in floats) keeps 1, not 2.
            return min(survivors, math.ceil(round(self.quantile * survivors, 9)))
        return survivors

    def decide(
        self,
        confidence: np.ndarray,
        top1: np.ndarray,
        class_index: int,
        train_copy: np.ndarray | None = None,
        test_leak: np.ndarray | None = None,
        safety_flagged: np.ndarray | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """Accept mask from per-image arrays (``None`` flags: not checked; ``features`` ``[N, D]``: needed by
        ``diversity="k_center"`` when it has to choose)."""
        conf = np.asarray(confidence, dtype=np.float64)
        if conf.ndim != 1:
            raise ValueError(f"judge_confidence must be 1-D, got shape {conf.shape}")
        n = conf.shape[0]
        arrays = {"judge_top1": top1, "is_train_copy": train_copy, "is_test_leak": test_leak, "safety_flagged": safety_flagged}
        checked: dict[str, np.ndarray | None] = {}
        for name, values in arrays.items():
            if values is None:
                checked[name] = None
                continue
            arr = np.asarray(values)
            if arr.shape != (n,):
                raise ValueError(f"{name} has shape {arr.shape} but judge_confidence has {n} images")
            checked[name] = arr
        if not _is_int(class_index):
            raise ValueError(f"class_index must be an integer, got {class_index!r}")

        mask = conf >= self.min_confidence  # NaN confidence is never accepted
        if self.max_confidence < 1.0:
            mask &= conf <= self.max_confidence
        if self.require_label_match:
            mask &= checked["judge_top1"].astype(np.int64) == int(class_index)
        if self.drop_train_copies and checked["is_train_copy"] is not None:
            mask &= ~checked["is_train_copy"].astype(bool)
        if self.drop_test_leaks and checked["is_test_leak"] is not None:
            mask &= ~checked["is_test_leak"].astype(bool)
        if self.drop_safety_flagged and checked["safety_flagged"] is not None:
            mask &= ~checked["safety_flagged"].astype(bool)

        survivors = np.flatnonzero(mask)
        keep = self.keep_count(survivors.size)
        if keep < survivors.size and self.diversity == "k_center":
            if features is None:
                raise ValueError(
                    "diversity=k_center needs the images' features to choose among the survivors; these scores have none "
                    "(re-materialize synthetic_scores)"
                )
            feats = np.asarray(features, dtype=np.float64)
            if feats.ndim != 2 or feats.shape[0] != n:
                raise ValueError(f"features must be [N, D] with N = {n} images, got shape {feats.shape}")
            mask = np.zeros(n, dtype=bool)
            mask[select_k_center(feats, survivors, keep, conf)] = True
        elif keep < survivors.size:
            # Stable sort of survivors (ascending index) by descending confidence:
            # ties keep the lower index first.
            order = np.argsort(-conf[survivors], kind="stable")
            mask = np.zeros(n, dtype=bool)
            mask[survivors[order[:keep]]] = True
        return mask.astype(bool, copy=False)

    def apply(self, scores: ClassScores, class_index: int) -> np.ndarray:
        """Accept mask for a :class:`~synthaug_pipeline.lib.scoring.ClassScores`."""
        return self.decide(
            scores.judge_confidence,
            scores.judge_top1,
            class_index,
            getattr(scores, "is_train_copy", None),
            getattr(scores, "is_test_leak", None),
            getattr(scores, "safety_flagged", None),
            getattr(scores, "features", None),
        )


DIVERSITY_SELECTIONS = ("none", "k_center")


def select_k_center(features: np.ndarray, candidates: np.ndarray, keep: int, confidence: np.ndarray | None = None) -> np.ndarray:
    """``keep`` of ``candidates`` (row indices) that cover their feature cloud: greedy k-center (farthest point).

    Starts from the most confident candidate (the lowest row on ties; the first row without
    ``confidence``), then repeatedly adds the candidate farthest from every image chosen so far (ties:
    lowest row). Each prefix of the order is a 2-approximation of the best covering of that size, so
    the chosen set spans the class's modes instead of piling up where the judge is surest.
    Deterministic; returns the chosen rows sorted. Pure NumPy, O(keep x candidates x D).
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if not _is_int(keep) or keep < 0:
        raise ValueError(f"keep must be an integer >= 0, got {keep!r}")
    if keep >= candidates.size:
        return np.sort(candidates)
    if keep == 0:
        return np.zeros(0, dtype=np.int64)
    points = np.asarray(features, dtype=np.float64)[candidates]
    if confidence is None:
        first = 0
    else:
        conf = np.asarray(confidence, dtype=np.float64)[candidates]
        first = int(np.argmax(np.where(np.isfinite(conf), conf, -np.inf)))  # argmax: lowest position on ties
    chosen = [first]
    distance = np.sum((points - points[first]) ** 2, axis=1)
    for _ in range(keep - 1):
        distance[chosen[-1]] = -1.0  # never pick a chosen point again (distances are >= 0)
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, np.sum((points - points[nxt]) ** 2, axis=1))
        distance[chosen] = -1.0
    return np.sort(candidates[chosen])


def policy_json_version(policy_json: str) -> str:
    """The identifier ``"v1-" + 12 hex`` of a canonical policy JSON string (a
    shard's ``filter_policy`` value hashes to its ``filter_version``)."""
    return VERSION_PREFIX + hashlib.sha256(policy_json.encode("utf-8")).hexdigest()[:12]


def apply_policy(
    scores: ClassScores,
    class_index: int,
    *,
    min_confidence: float = 0.5,
    require_label_match: bool = True,
    top_k: int | None = None,
    quantile: float | None = None,
    drop_train_copies: bool = True,
    drop_test_leaks: bool = True,
    max_confidence: float = 1.0,
    diversity: str = "none",
) -> np.ndarray:
    """Boolean accept mask (length N, aligned with ``scores``) of one policy.

    Thresholds, then near-duplicate dropping, then ``top_k`` or ``quantile``
    among the survivors (see the module docstring). Duplicate flags come from
    ``scores.is_train_copy`` / ``scores.is_test_leak``; where those are None
    (not computed: no threshold, no test features) nothing is dropped for them,
    and ``score_class``'s ``summary["warnings"]`` says why.

    Raises ``ValueError`` for invalid settings (see :class:`FilterPolicy`),
    both ``top_k`` and ``quantile``, or per-image arrays of different lengths.
    """
    policy = FilterPolicy(
        min_confidence=min_confidence,
        require_label_match=require_label_match,
        top_k=top_k,
        quantile=quantile,
        drop_train_copies=drop_train_copies,
        drop_test_leaks=drop_test_leaks,
        max_confidence=max_confidence,
        diversity=diversity,
    )
    return policy.apply(scores, class_index)


def _duplicate_extra(policy: FilterPolicy, duplicate_threshold: float | None) -> dict[str, Any]:
    if duplicate_threshold is None or not (policy.drop_train_copies or policy.drop_test_leaks):
        return {}  # no duplicate rule is on: the threshold decides nothing, so it is not part of the policy
    return {"duplicate_threshold": float(duplicate_threshold)}


def policy_version(
    *,
    min_confidence: float = 0.5,
    require_label_match: bool = True,
    top_k: int | None = None,
    quantile: float | None = None,
    drop_train_copies: bool = True,
    drop_test_leaks: bool = True,
    duplicate_threshold: float | None = None,
    max_confidence: float = 1.0,
    diversity: str = "none",
) -> str:
    """Stable identifier ``"v1-" + 12 hex`` of a policy (same arguments and
    defaults as :func:`apply_policy`).

    The same scheme as :func:`~synthaug_pipeline.lib.scoring.filter_version`:
    a ``FilterConfig`` and keyword arguments describing the same decisions give
    the same string. Settings at their no-op value are left out of the hash
    (see :meth:`FilterPolicy.canonical`). ``duplicate_threshold`` (the distance
    under which an image counts as a copy) enters when a duplicate rule is on
    (``drop_train_copies`` or ``drop_test_leaks``): it decides which rows those
    rules drop.
    """
    policy = FilterPolicy(
        min_confidence=min_confidence,
        require_label_match=require_label_match,
        top_k=top_k,
        quantile=quantile,
        drop_train_copies=drop_train_copies,
        drop_test_leaks=drop_test_leaks,
        max_confidence=max_confidence,
        diversity=diversity,
    )
    _check_threshold(duplicate_threshold)
    return policy.version(extra=_duplicate_extra(policy, duplicate_threshold))


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and (not _is_real(threshold) or not math.isfinite(threshold) or threshold < 0):
        raise ValueError(f"duplicate_threshold must be a finite distance >= 0 or None, got {threshold!r}")


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
    float32, as :data:`~synthaug_pipeline.lib.shards.SHARD_SCHEMA` stores them,
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
    (see :data:`synthaug_pipeline.lib.shards.SHARD_SCHEMA`) and returns the
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
    (float32, see :func:`~synthaug_pipeline.lib.filtering.shard_decisions`):
    training copies are rows with ``nearest_real_distance <=
    summary["duplicate_threshold"]``, test leaks come from
    ``scores.is_test_leak``. :func:`~synthaug_pipeline.lib.filtering.refilter_table`
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
