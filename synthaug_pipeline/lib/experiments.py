"""The ablation grid: which experiments a profile asks for, their partition keys, their data, their summary.

An experiment is one classifier training run. ``experiments`` in a profile spans a grid of data
regime x synthetic ratio x aux-BN on/off x seed (plus synthetic-only CAS runs per seed); each point
has a stable, readable key that is its Dagster partition key:

    few_shot-r3-s0-auxbn    few_shot regime, 3 synthetic images per real image, seed 0, aux BN
    full-r0-s1              every real image, no synthetic images (the real-only baseline), seed 1
    long_tail-r0.5-s2       long-tailed real set, half as many synthetic images as real ones, seed 2
    few_shot-r3-s0-unfiltered    the same share of synthetic images, drawn from every generated image
    few_shot-r3-s0-retrieval     the same share of REAL images, drawn from the generator's training pool
    few_shot-r3-s0-control       the same share of images from a generator trained only on the seed's few-shot subset
    few_shot-r3-s0-photometric   the same share of photometric copies (contrast, brightness, gamma) of the seed's own real images
    few_shot-r3-s0-targeted      the same NUMBER of accepted synthetic images in all, shared out by few_shot-r0-s0's validation errors
    cas-s0                  synthetic images only (Classification Accuracy Score), seed 0

The arm (``experiments.arms``) says where the extra images come from: ``filtered`` (the default, no
suffix: images the filter accepted), ``unfiltered`` (every generated image but test leaks),
``retrieval`` (real images of the generator's training pool that the regime did not keep: what the
generator could at best hand back) and ``control`` (a same-data generator: trained on exactly the
few-shot images of that seed, so a gain it gives is diffusion as augmentation, not knowledge from
more data) and ``photometric`` (copies of the run's own real images with random contrast, brightness and
gamma: classical augmentation in place of generated images, :mod:`~synthaug_pipeline.lib.photometric`) and
``targeted`` (closed loop: the filtered arm's total of accepted images, shared out across classes by the per-class
validation error of the same seed's real-only run, so classes the classifier gets wrong receive more;
:func:`targeted_allocation`).
Meaningless points are dropped: aux BN or an arm without synthetic images is the plain
run, retrieval needs a regime that leaves real images over (not ``full``), control is defined for
``few_shot``, and CAS has no real images, hence no regime, ratio, arm or aux BN.

The ratio is the size of the synthetic pool relative to the real one, class by class: a run with
ratio ``r`` trains on ``ceil(r * n_c)`` accepted synthetic images of each class ``c`` that keeps
``n_c`` real images (:func:`~synthaug_pipeline.lib.classifier.synthetic_images_needed`; a subset
drawn from the seed, nested across ratios for one seed), mixed into each batch at the share
``r / (1 + r)``, so every image, real or synthetic, is seen equally often on average.
:func:`plan_experiment` checks all of this before any training and names the class that falls
short. The seed selects the real subset (:func:`~synthaug_pipeline.lib.regimes.select_regime`),
the synthetic subset and the classifier's initialisation and batches.

:func:`~synthaug_pipeline.lib.experiment_summary.summarize_experiments` groups results by everything but the
seed and reports mean ± sample std over seeds; missing and stale runs are listed, never averaged in.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from synthaug_pipeline.lib.classifier import synthetic_images_needed
from synthaug_pipeline.lib.config import ExperimentsConfig, Profile
from synthaug_pipeline.lib.regimes import REGIMES, select_regime

CAS = "cas"
AUX_BN_SUFFIX = "auxbn"
FILTERED = "filtered"
PHOTOMETRIC = "photometric"
TARGETED = "targeted"
ARMS = ("filtered", "unfiltered", "retrieval", "control", PHOTOMETRIC, TARGETED)  # where the extra images of a run come from
CONTROL_REGIME = "few_shot"  # the same-data control generator is trained on the few-shot subset of a seed
METRICS = ("top1", "top5", "shifted_mean_top1", "shift_drop")  # the numbers a result carries under "metrics" (top5: >10 classes)
VALIDATION_METRICS = ("top1", "shifted_mean_top1", "shift_drop")  # a result's "validation": what choices are made on
TOP5_MIN_CLASSES = 11  # evaluation reports top-5 only with more than 10 classes

_MIX_KEY = re.compile(
    r"^(?P<regime>[a-z_]+)-r(?P<ratio>[0-9]+(?:\.[0-9]+)?)-s(?P<seed>[0-9]+)(?:-(?P<arm>unfiltered|retrieval|control|photometric|targeted))?(?P<aux_bn>-auxbn)?$"
)
_CAS_KEY = re.compile(r"^cas-s(?P<seed>[0-9]+)$")


class ExperimentError(ValueError):
    """An experiment that cannot run as asked; the message names the experiment, the class and the fix."""


@dataclass(frozen=True)
class ExperimentSpec:
    """One point of the grid. ``regime`` and ``ratio`` are None for a synthetic-only (CAS) run."""

    seed: int
    regime: str | None = None
    ratio: float | None = None
    aux_bn: bool = False
    arm: str = FILTERED

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ExperimentError(f"experiment seeds are integers >= 0, got {self.seed!r}")
        if self.arm not in ARMS:
            raise ExperimentError(f"unknown experiment arm {self.arm!r}: choose one of {', '.join(ARMS)}")
        if self.synthetic_only:
            if self.ratio is not None or self.aux_bn or self.arm != FILTERED:
                raise ExperimentError("a synthetic-only (CAS) run has no ratio and no aux BN (and no arm)")
            return
        if self.regime not in REGIMES:
            raise ExperimentError(f"unknown data regime {self.regime!r}: choose one of {', '.join(REGIMES)}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not math.isfinite(self.ratio) or self.ratio < 0:
            raise ExperimentError(f"synthetic ratios are finite numbers >= 0, got {self.ratio!r}")
        if self.aux_bn and self.ratio == 0:
            raise ExperimentError(f"aux BN needs synthetic images: {self.regime} with ratio 0 and aux BN is the plain run")
        if self.arm != FILTERED and self.ratio == 0:
            raise ExperimentError(f"arm {self.arm} adds images: {self.regime} with ratio 0 is the real-only run")
        if self.arm == "retrieval" and self.regime == "full":
            raise ExperimentError("the retrieval arm draws real images the regime did not keep: the full regime keeps them all")
        if self.arm == "control" and self.regime != CONTROL_REGIME:
            raise ExperimentError(f"the control arm's generator is trained on the {CONTROL_REGIME} subset: regime {self.regime!r} has none")
        object.__setattr__(self, "ratio", float(self.ratio))

    @property
    def synthetic_only(self) -> bool:
        return self.regime is None

    @property
    def uses_synthetic(self) -> bool:
        """Whether the run reads the synthetic shards (filtered, unfiltered and targeted arms, and CAS)."""
        return self.synthetic_only or (bool(self.ratio) and self.arm in (FILTERED, "unfiltered", TARGETED))

    @property
    def real_only_partner(self) -> "ExperimentSpec":
        """The real-only run of the same regime and seed (the targeted arm shares its images out by that run's errors)."""
        return ExperimentSpec(seed=self.seed, regime=self.regime, ratio=0.0)

    @property
    def _arm_suffix(self) -> str:
        return "" if self.arm == FILTERED else f"-{self.arm}"

    @property
    def group(self) -> str:
        """The key without the seed: runs of one group differ only in their seed."""
        if self.synthetic_only:
            return CAS
        return f"{self.regime}-r{format_ratio(self.ratio)}{self._arm_suffix}" + (f"-{AUX_BN_SUFFIX}" if self.aux_bn else "")

    @property
    def key(self) -> str:
        """The partition key, e.g. ``few_shot-r3-s0-auxbn`` or ``cas-s1``."""
        if self.synthetic_only:
            return f"{CAS}-s{self.seed}"
        return f"{self.regime}-r{format_ratio(self.ratio)}-s{self.seed}{self._arm_suffix}" + (f"-{AUX_BN_SUFFIX}" if self.aux_bn else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "group": self.group,
            "regime": self.regime,
            "ratio": self.ratio,
            "seed": self.seed,
            "aux_bn": self.aux_bn,
            "arm": None if self.synthetic_only else self.arm,
            "synthetic_only": self.synthetic_only,
        }


def format_ratio(ratio: float) -> str:
    """Shortest plain decimal that reads back as the same float: 3.0 -> "3", 0.25 -> "0.25", 1e-05 -> "0.00001"."""
    return np.format_float_positional(float(ratio), trim="-")


def experiment_grid(cfg: ExperimentsConfig) -> list[ExperimentSpec]:
    """Every experiment of ``cfg`` in a stable order (regime, ratio, aux BN, seed as listed; CAS last), without duplicates.

    Raises ExperimentError for an invalid value (negative seed or ratio) or a grid with no experiment at all.
    """
    specs = [
        ExperimentSpec(seed=seed, regime=regime, ratio=ratio, aux_bn=aux_bn and ratio != 0, arm=arm if ratio != 0 else FILTERED)
        for regime in cfg.regimes
        for ratio in regime_ratios(cfg, regime)
        for arm in cfg.arms
        if arm_applies(arm, regime)
        for aux_bn in cfg.aux_bn
        for seed in cfg.seeds
    ]
    if cfg.synthetic_only:
        specs += [ExperimentSpec(seed=seed) for seed in cfg.seeds]
    unique = list(dict.fromkeys(specs))  # aux BN at ratio 0 and repeated list entries collapse here
    if not unique:
        raise ExperimentError(
            "the experiment grid is empty: set experiments.seeds and experiments.regimes + experiments.ratios "
            "(or experiments.synthetic_only=true)"
        )
    return unique


def arm_applies(arm: str, regime: str) -> bool:
    """Whether ``arm`` is defined for ``regime`` (retrieval needs real images the regime left over; control the few-shot subset)."""
    return not (arm == "retrieval" and regime == "full") and not (arm == "control" and regime != CONTROL_REGIME)


def control_partition(seed: int) -> str:
    """The partition key of the same-data control generator of a seed (``few_shot-s0``)."""
    return f"{CONTROL_REGIME}-s{seed}"


def control_seeds(cfg: ExperimentsConfig) -> list[int]:
    """Seeds whose control generator the grid needs (none unless the control arm runs on few_shot at a ratio > 0)."""
    return sorted({spec.seed for spec in experiment_grid(cfg) if spec.arm == "control"})


def regime_ratios(cfg: ExperimentsConfig, regime: str) -> list[float]:
    """The ratios the grid trains ``regime`` at: ``experiments.ratios_by_regime[regime]`` when set, else ``experiments.ratios``."""
    return list(cfg.ratios_by_regime.get(regime, cfg.ratios))


def control_images_per_class(cfg: ExperimentsConfig) -> int:
    """Images per class each control generator samples: ``experiments.control_images_per_class`` when set, else what
    the grid's largest few-shot ratio draws (``ceil(ratio x few_shot_k)``). The control's samples are not filtered, so
    every one is used; sampling ``generator.images_per_class`` (hundreds) for a grid that draws 30 was most of its cost."""
    if cfg.control_images_per_class:
        return cfg.control_images_per_class
    needed = [int(synthetic_images_needed([cfg.few_shot_k], ratio)[0]) for ratio in regime_ratios(cfg, "few_shot")]
    return max([1, *needed])


def experiment_keys(cfg: ExperimentsConfig) -> list[str]:
    """The partition keys of :func:`experiment_grid`."""
    return [spec.key for spec in experiment_grid(cfg)]


def parse_experiment_key(key: str) -> ExperimentSpec:
    """The spec behind a key written by :attr:`ExperimentSpec.key` (only canonical keys are accepted)."""
    cas = _CAS_KEY.match(key)
    mix = _MIX_KEY.match(key)
    if cas:
        spec = ExperimentSpec(seed=int(cas["seed"]))
    elif mix:
        spec = ExperimentSpec(
            seed=int(mix["seed"]), regime=mix["regime"], ratio=float(mix["ratio"]), aux_bn=bool(mix["aux_bn"]), arm=mix["arm"] or FILTERED
        )
    else:
        raise ExperimentError(
            f"{key!r} is not an experiment key: expected <regime>-r<ratio>-s<seed>[-<arm>][-auxbn] (e.g. few_shot-r3-s0-retrieval) "
            "or cas-s<seed>"
        )
    if spec.key != key:
        raise ExperimentError(f"{key!r} is not written canonically: the key of that experiment is {spec.key!r}")
    return spec


# --------------------------------------------------------------------------------------------------
# The data of one experiment, checked before training
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentPlan:
    """Which real and extra images (indices into the given pools, sorted) one experiment trains on.

    ``synthetic_indices`` index the arm's pool: the accepted synthetic rows (filtered), every usable
    generated row (unfiltered), the control generator's images (control) or, for the retrieval and photometric
    arms, the real training images themselves (``extra_from_real``; ``photometric``: each index is a kept real
    image to copy with random contrast, brightness and gamma, repeated where the ratio asks for more copies).
    """

    spec: ExperimentSpec
    real_indices: np.ndarray
    synthetic_indices: np.ndarray
    real_per_class: dict[str, int]
    synthetic_per_class: dict[str, int]
    extra_from_real: bool = False

    @property
    def photometric(self) -> bool:
        return self.spec.arm == PHOTOMETRIC


POOL_NAMES = {
    FILTERED: "its shard holds only {have} accepted",
    "unfiltered": "its shard holds only {have} usable generated images",
    "control": "the control generator made only {have}",
}
POOL_FIXES = {
    FILTERED: "generate more (generator.images_per_class), loosen the filter (or raise filter.top_k), or lower experiments.ratios",
    "unfiltered": "generate more (generator.images_per_class) or lower experiments.ratios",
    "control": "raise experiments.control_images_per_class or lower experiments.ratios",
}
POOL_NAMES[TARGETED], POOL_FIXES[TARGETED] = POOL_NAMES[FILTERED], POOL_FIXES[FILTERED]  # the same accepted pool


def plan_experiment(
    spec: ExperimentSpec,
    cfg: ExperimentsConfig,
    real_labels: np.ndarray,
    synthetic_labels: np.ndarray | None,
    class_ids: Sequence[str],
    class_errors: Sequence[float] | None = None,
) -> ExperimentPlan:
    """Select the real images (regime) and extra images (ratio, from the arm's pool) of ``spec``, or explain why it cannot run.

    ``real_labels``: class index of every real training image; ``synthetic_labels``: class index of every
    image of the arm's pool (ignored by the retrieval arm, whose pool is the real images the regime did not
    keep). Every arm draws the same ``ceil(ratio x n_c)`` images per class, so arms differ in which images,
    not how many -- except ``targeted``, which draws the same total from the accepted pool shared out by
    ``class_errors`` (the real-only partner's validation error of each class, :func:`targeted_allocation`).
    A CAS run trains on every accepted image, or on a seeded draw of ``cfg.cas_per_class`` per class.
    Raises ExperimentError naming the experiment and the first class that has no real images, fewer than the
    regime keeps, or fewer pool images than the ratio needs.
    """
    num_classes = len(class_ids)
    real_labels = _class_indices(real_labels, num_classes, "real")
    synthetic_labels = _class_indices(synthetic_labels if synthetic_labels is not None else np.zeros(0, np.int64), num_classes, "synthetic")
    real_counts = np.bincount(real_labels, minlength=num_classes)
    synthetic_counts = np.bincount(synthetic_labels, minlength=num_classes)

    if spec.synthetic_only:
        empty = np.flatnonzero(synthetic_counts == 0)
        if len(empty):
            raise ExperimentError(
                f"experiment {spec.key}: class {class_ids[empty[0]]!r} has no accepted synthetic images; "
                "synthetic-only training (CAS) needs at least one per class"
            )
        synthetic_indices = np.arange(len(synthetic_labels), dtype=np.int64)
        if cfg.cas_per_class is not None:
            short = np.flatnonzero(synthetic_counts < cfg.cas_per_class)
            if len(short):
                c = short[0]
                raise ExperimentError(
                    f"experiment {spec.key}: class {class_ids[c]!r} has {int(synthetic_counts[c])} accepted synthetic images but "
                    f"experiments.cas_per_class is {cfg.cas_per_class} [{len(short)} class(es) short]: raise "
                    "generator.images_per_class or lower experiments.cas_per_class"
                )
            rng = np.random.default_rng([spec.seed, 5])  # a stream of its own, the same for every CAS run of this seed
            synthetic_indices = np.sort(np.concatenate([
                rng.permutation(np.flatnonzero(synthetic_labels == c))[: cfg.cas_per_class] for c in range(num_classes)
            ]))
        used = np.bincount(synthetic_labels[synthetic_indices], minlength=num_classes)
        return ExperimentPlan(
            spec,
            np.zeros(0, np.int64),
            synthetic_indices,
            dict.fromkeys(class_ids, 0),
            {c: int(n) for c, n in zip(class_ids, used)},
        )

    real_indices = _select_real(spec, cfg, real_labels, real_counts, class_ids)
    kept = np.bincount(real_labels[real_indices], minlength=num_classes)
    needed = synthetic_images_needed(kept, spec.ratio).tolist()
    if spec.arm == PHOTOMETRIC:
        rng = np.random.default_rng([spec.seed, 3])
        sources = []
        for c, need in enumerate(needed):
            own = real_indices[real_labels[real_indices] == c]
            sources.append(np.resize(rng.permutation(own), need))  # every kept image copied equally often (to within one)
        return ExperimentPlan(
            spec,
            real_indices,
            np.sort(np.concatenate(sources)).astype(np.int64),
            {c: int(n) for c, n in zip(class_ids, kept)},
            {c: int(n) for c, n in zip(class_ids, needed)},
            extra_from_real=True,
        )
    if spec.arm == "retrieval":
        left = np.ones(len(real_labels), dtype=bool)
        left[real_indices] = False
        pool = np.flatnonzero(left)
        pool_labels = real_labels[pool]
        have = np.bincount(pool_labels, minlength=num_classes)
        for c, need in enumerate(needed):
            if need > have[c]:
                raise ExperimentError(
                    f"experiment {spec.key}: the retrieval arm needs {need} more real images of class {class_ids[c]!r} "
                    f"({format_ratio(spec.ratio)} x {kept[c]} real) but the generator's training pool has only {have[c]} "
                    "beyond the ones the regime keeps: lower experiments.ratios or drop retrieval from experiments.arms"
                )
        chosen = pool[_select_per_class(pool_labels, needed, seed=spec.seed)]
        return ExperimentPlan(
            spec,
            real_indices,
            np.sort(chosen),
            {c: int(n) for c, n in zip(class_ids, kept)},
            {c: int(n) for c, n in zip(class_ids, needed)},
            extra_from_real=True,
        )
    if spec.arm == TARGETED:
        if class_errors is None:
            raise ExperimentError(f"experiment {spec.key}: the targeted arm needs the per-class validation errors of {spec.real_only_partner.key}")
        try:
            needed = targeted_allocation(needed, class_errors, synthetic_counts, cfg.targeted_floor)
        except ExperimentError as exc:
            raise ExperimentError(f"experiment {spec.key}: {exc}") from None
    for c, (need, have) in enumerate(zip(needed, synthetic_counts)):
        if need > have:
            raise ExperimentError(
                f"experiment {spec.key}: ratio {format_ratio(spec.ratio)} needs {need} synthetic images of class {class_ids[c]!r} "
                f"({format_ratio(spec.ratio)} x {kept[c]} real) but {POOL_NAMES[spec.arm].format(have=have)}; {POOL_FIXES[spec.arm]}"
            )
    synthetic_indices = _select_per_class(synthetic_labels, needed, seed=spec.seed)
    return ExperimentPlan(
        spec,
        real_indices,
        synthetic_indices,
        {c: int(n) for c, n in zip(class_ids, kept)},
        {c: int(n) for c, n in zip(class_ids, needed)},
    )


def targeted_allocation(uniform: Sequence[int], errors: Sequence[float], available: Sequence[int], floor: float) -> list[int]:
    """Share out ``sum(uniform)`` images across classes: a ``floor`` fraction as ``uniform`` does, the rest in proportion
    to ``errors`` (a class the classifier never gets wrong gets only its floor), then capped at ``available`` per class
    with what a full class cannot take re-shared among the others (water-filling), rounded by largest remainder so the
    total is exactly ``sum(uniform)``. Errors that are all zero share like ``uniform``. Raises ExperimentError when the
    classes together hold fewer than the total or an error is not in [0, 1]."""
    uniform = np.asarray(uniform, dtype=np.int64)
    available = np.asarray(available, dtype=np.int64)
    errors = np.asarray(errors, dtype=np.float64)
    if not (len(uniform) == len(errors) == len(available)):
        raise ExperimentError(f"targeted allocation: {len(uniform)} classes, {len(errors)} errors, {len(available)} pool sizes")
    if not np.all(np.isfinite(errors)) or errors.min(initial=0) < 0 or errors.max(initial=0) > 1:
        raise ExperimentError(f"targeted allocation: per-class errors must lie in [0, 1], got {errors.tolist()}")
    if not 0 <= floor <= 1:
        raise ExperimentError(f"targeted allocation: the floor is a fraction in [0, 1], got {floor}")
    total = int(uniform.sum())
    if total > available.sum():
        raise ExperimentError(
            f"it shares out {total} accepted synthetic images but the classes hold only {int(available.sum())}: {POOL_FIXES[TARGETED]}"
        )
    if total == 0:
        return [0] * len(uniform)
    share = uniform / total
    weight = errors / errors.sum() if errors.sum() > 0 else share
    target = total * (floor * share + (1 - floor) * weight)
    amounts = target.copy()
    full = np.zeros(len(target), dtype=bool)
    while True:  # water-filling: a class offered more than its pool holds takes all of it; the rest is re-shared
        over = ~full & (amounts > available)
        if not over.any():
            break
        full |= over
        amounts[full] = available[full]
        free = ~full
        left = total - available[full].sum()
        basis = target[free] if target[free].sum() > 0 else available[free].astype(np.float64)
        amounts[free] = left * basis / basis.sum() if basis.sum() > 0 else 0.0
    counts = np.minimum(np.floor(amounts + 1e-9).astype(np.int64), available)
    short = total - int(counts.sum())  # < number of classes: each floor lost less than one
    if short > 0:
        order = sorted(np.flatnonzero(counts < available), key=lambda c: (-(amounts[c] - counts[c]), c))
        counts[order[:short]] += 1
    elif short < 0:  # amounts a hair under an integer were rounded up
        order = sorted(np.flatnonzero(counts > 0), key=lambda c: (amounts[c] - counts[c], c))
        counts[order[:-short]] -= 1
    return counts.tolist()


def _select_real(
    spec: ExperimentSpec, cfg: ExperimentsConfig, labels: np.ndarray, counts: np.ndarray, class_ids: Sequence[str]
) -> np.ndarray:
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise ExperimentError(
            f"experiment {spec.key}: class {class_ids[empty[0]]!r} has no real training images; regime {spec.regime!r} needs every class"
        )
    if spec.regime == "few_shot":
        short = np.flatnonzero(counts < cfg.few_shot_k)
        if len(short):
            c = short[0]
            raise ExperimentError(
                f"experiment {spec.key}: few_shot keeps {cfg.few_shot_k} real images per class (experiments.few_shot_k) "
                f"but class {class_ids[c]!r} has only {counts[c]} training images"
            )
        return few_shot_subset(labels, cfg, spec.seed, len(class_ids))
    if spec.regime == "long_tail":
        return select_regime(labels, "long_tail", imbalance=cfg.long_tail_imbalance, seed=spec.seed, num_classes=len(class_ids))
    return select_regime(labels, "full", seed=spec.seed, num_classes=len(class_ids))


def few_shot_subset(labels: np.ndarray, cfg: ExperimentsConfig, seed: int, num_classes: int) -> np.ndarray:
    """The few-shot real images of ``seed`` (sorted indices): every arm of the seed, and its control generator, see exactly these."""
    return select_regime(labels, "few_shot", k=cfg.few_shot_k, seed=seed, num_classes=num_classes)


def validation_subset(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """Rows of the validation split every experiment is evaluated on: all, or a fixed seeded ``per_class`` of each class."""
    labels = np.asarray(labels, dtype=np.int64)
    if per_class is None:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng([0, 4])  # fixed: every experiment is compared on the same images
    kept = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(kept)).astype(np.int64) if kept else np.zeros(0, np.int64)


def _select_per_class(labels: np.ndarray, wanted: Sequence[int], seed: int) -> np.ndarray:
    """The first ``wanted[c]`` images of a seeded permutation of each class (nested across sizes), sorted."""
    rng = np.random.default_rng([seed, 2])  # a stream of its own: not the one select_regime draws real images from
    kept = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in enumerate(wanted)]
    return np.sort(np.concatenate(kept)).astype(np.int64) if kept else np.zeros(0, np.int64)


def _class_indices(labels: Any, num_classes: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ExperimentError(f"{what} labels must be a 1-D integer array, got {labels.dtype} shaped {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ExperimentError(f"{what} labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    return labels


# --------------------------------------------------------------------------------------------------
# Which setup a result belongs to
# --------------------------------------------------------------------------------------------------


def experiment_setup(spec: ExperimentSpec, profile: Profile) -> dict[str, Any]:
    """Everything outside the key that decides an experiment's result (seeds excluded: the key has it)."""
    setup: dict[str, Any] = {
        "data": profile.data.model_dump(mode="json"),
        "classifier": {k: v for k, v in profile.classifier.model_dump(mode="json").items() if k != "seed"},
        "evaluation": {
            "corruptions": list(profile.evaluation.corruptions),
            "severities": list(profile.evaluation.severities),
            "shift_folders": dict(profile.evaluation.shift_folders),
            **({"shift_folder_labels": dict(profile.evaluation.shift_folder_labels)} if profile.evaluation.shift_folder_labels else {}),
        },
    }
    if spec.regime == "few_shot":
        setup["few_shot_k"] = profile.experiments.few_shot_k
    if spec.synthetic_only and profile.experiments.cas_per_class is not None:
        setup["cas_per_class"] = profile.experiments.cas_per_class
    if spec.arm != FILTERED:
        setup["arm"] = spec.arm
    if spec.arm == TARGETED:  # its share-out follows from the real-only partner, whose setup is this one without the arm
        setup["targeted_floor"] = profile.experiments.targeted_floor
    if spec.arm == "control":
        setup["control"] = {"train_steps": profile.experiments.control_train_steps, "images_per_class": control_images_per_class(profile.experiments)}
    if profile.experiments.validation_per_class is not None:
        setup["validation_per_class"] = profile.experiments.validation_per_class
    if spec.regime == "long_tail":
        setup["long_tail_imbalance"] = profile.experiments.long_tail_imbalance
    return setup


def setup_fingerprint(spec: ExperimentSpec, profile: Profile, shard_sha256s: Sequence[str], control_version: str | None = None) -> str:
    """A hash of :func:`experiment_setup` and, for runs that use synthetic images, of the shards' content
    (for the control arm: the version of the control generator whose samples it trained on)."""
    payload = {"setup": experiment_setup(spec, profile), "shards": sorted(shard_sha256s) if spec.uses_synthetic else []}
    if spec.arm == "control" and spec.ratio:
        payload["control"] = control_version
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
