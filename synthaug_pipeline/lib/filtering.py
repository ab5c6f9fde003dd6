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
on. The decisions as shard columns, and the policy of a profile's ``filter``
settings (the pipeline's one door), are in :mod:`synthaug_pipeline.lib.shard_filtering`.

Pure NumPy; no Dagster, no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

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
