"""Checks of a profile against its data that can run before anything is trained.

The class catalog runs them first thing, so a setting that cannot work fails in seconds, not after the
judge and the generator have trained: extra shifted test sets whose class ids are not the profile's,
and a synthetic ratio that the generator could not supply even if the filter accepted every image.
The experiment grid is checked by every experiment run before it trains (:func:`check_experiment_grid`).
(The training assets check again with what really exists: the accepted synthetic images.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from synthaug_pipeline.lib.classifier import check_synthetic_supply, synthetic_images_needed
from synthaug_pipeline.lib.config import Profile, ProfileError
from synthaug_pipeline.lib.shift_sets import check_shift_folders
from synthaug_pipeline.lib.experiments import control_images_per_class, experiment_grid, format_ratio
from synthaug_pipeline.lib.regimes import long_tail_counts
from synthaug_pipeline.lib.shards import ShardRef


def check_before_training(profile: Profile, class_ids: Sequence[str], train_counts: Sequence[int]) -> None:
    """Raise ProfileError for shift folders with foreign class ids or an unreachable ``augmented.synthetic_ratio``.

    The experiment grid is not checked here: it is a separate job, and a grid point that cannot run must
    not stop the main pipeline. :func:`check_experiment_grid` runs in every ``experiment_run`` before it
    trains (and the class catalog reports its verdict as a warning).

    ``train_counts``: real training images per class, in ``class_ids`` order. The ratio needs
    ``ceil(ratio * n_c)`` accepted synthetic images of each class (see
    :func:`~synthaug_pipeline.lib.classifier.check_synthetic_supply`); more than
    ``generator.images_per_class`` can never be accepted.
    """
    check_shift_folders(profile.evaluation.shift_folders, class_ids, profile.evaluation.shift_folder_labels)
    check_pretrained_settings(profile, class_ids)
    generated = profile.generator.images_per_class
    try:
        check_synthetic_supply(
            list(train_counts),
            [generated] * len(train_counts),
            profile.augmented.synthetic_ratio,
            class_ids=list(class_ids),
            available=f"can be generated (generator.images_per_class={generated})",
            hint="lower augmented.synthetic_ratio or raise generator.images_per_class (the filter rejects some, so leave a margin)",
        )
    except ValueError as exc:
        raise ProfileError(str(exc)) from None


def check_pretrained_settings(profile: Profile, class_ids: Sequence[str]) -> None:
    """Pretrained judge and classifier weights that cannot work, before any model loads: an unknown model or tag, a missing
    file or package, a judge whose known output size is not ImageNet-1k's 1000, class ids that are no ImageNet-1k wnid."""
    from synthaug_pipeline.lib.pretrained_classifiers import check_pretrained_judge, pretrained_source

    if profile.judge.pretrained:
        check_pretrained_judge(profile.judge, list(class_ids))
    if profile.classifier.pretrained:
        pretrained_source(profile.classifier, "classifier")


def held_out_warning(untested: Sequence[str], num_classes: int) -> str:
    """What a run without test images for some classes cannot measure (one image per class: nothing to hold out)."""
    return (
        f"{len(untested)} of {num_classes} classes have no held-out test image ({list(untested)[:5]}"
        f"{' ...' if len(untested) > 5 else ''}): their test accuracies (and the judge's test top-1 when no class has one) are "
        "n/a; a class with a single image keeps it for training, has too few real images for FID/KID, and its shard fails "
        "metrics_computed, which stops the run before the classifiers; give more images per class, a val/ split or a Parquet "
        "split column"
    )


def regime_real_counts(regime: str, counts: Sequence[int], few_shot_k: int, long_tail_imbalance: float) -> list[int]:
    """Real images per class that ``regime`` keeps from ``counts`` (as :func:`~synthaug_pipeline.lib.regimes.select_regime`
    with the experiments' settings: few_shot keeps k, long_tail the fixed-order tail from the smallest class size)."""
    counts = [int(n) for n in counts]
    if regime == "few_shot":
        return [few_shot_k] * len(counts)
    if regime == "long_tail":
        return long_tail_counts(min(counts), len(counts), long_tail_imbalance)
    return counts


def check_experiment_grid(profile: Profile, class_ids: Sequence[str], train_counts: Sequence[int]) -> None:
    """Raise ProfileError unless every point of the experiment grid (``experiments.*``) can run on this data.

    Per grid point: every class has real images, at least ``experiments.few_shot_k`` of them for few_shot, and
    ``ceil(ratio * n_c)`` (``n_c``: the real images the regime keeps) is at most ``generator.images_per_class``
    (the filter can only accept fewer). The message names the first grid point and class that fail, how many
    points fail, and the fix.
    """
    cfg = profile.experiments
    counts = [int(n) for n in train_counts]
    if len(counts) != len(class_ids):
        raise ValueError(f"{len(class_ids)} class ids but {len(counts)} training counts")
    grid = experiment_grid(cfg)
    arms = {spec.arm for spec in grid if spec.ratio}
    backend = profile.generator.backend
    if backend != "ddpm" and arms & {"retrieval", "control"}:
        arm = "retrieval" if "retrieval" in arms else "control"
        what = "draws real images from the generator's training pool" if arm == "retrieval" else "trains a same-data DDPM"
        raise ProfileError(
            f"experiments.arms: the {arm} arm {what}, but generator.backend={backend} is a pretrained model whose training pool "
            "is unknown: drop retrieval/control from experiments.arms"
        )
    if cfg.validation_per_class is not None and not profile.data.validation_fraction:
        raise ProfileError("experiments.validation_per_class needs a validation split: set data.validation_fraction > 0")
    if "targeted" in arms:
        if not profile.data.validation_fraction:
            raise ProfileError(
                "experiments.arms: the targeted arm shares images out by the real-only run's per-class validation error: "
                "set data.validation_fraction > 0"
            )
        keys = {spec.key for spec in grid}
        partnerless = [spec for spec in grid if spec.arm == "targeted" and spec.real_only_partner.key not in keys]
        if partnerless:
            raise ProfileError(
                f"experiment grid point {partnerless[0].key}: the targeted arm shares images out by the per-class validation "
                f"error of {partnerless[0].real_only_partner.key}, which the grid does not train: add 0 to experiments.ratios"
            )
    if cfg.synthetic_only and cfg.cas_per_class is not None:
        capacity, setting = _pool_capacity(profile, "filtered")  # CAS trains on the filtered shards
        if cfg.cas_per_class > capacity:
            raise ProfileError(
                f"experiments.cas_per_class {cfg.cas_per_class} is more than the {capacity} accepted images per class that "
                f"{setting} allows: lower experiments.cas_per_class or raise {setting}"
            )
    failures: list[str] = []
    for spec in grid:
        if spec.synthetic_only:
            continue  # CAS needs one accepted image per class (or cas_per_class, checked above against what is generated)
        problem = _grid_point_problem(
            spec.key, spec.regime, spec.ratio, counts, class_ids, cfg, *_pool_capacity(profile, spec.arm), pooled=spec.arm == "targeted"
        )
        if problem:
            failures.append(problem)
    if failures:
        more = f" [{len(failures) - 1} more experiment grid point(s) fail as well]" if len(failures) > 1 else ""
        raise ProfileError(f"experiment grid point {failures[0]}{more}")


def _pool_capacity(profile: Profile, arm: str) -> tuple[float | None, str]:
    """The most images per class the arm's pool can ever hold (None: retrieval, sized by the real data; inf: photometric
    copies), and the setting bounding it."""
    generated = profile.generator.images_per_class
    if arm == "retrieval":
        return None, ""
    if arm == "photometric":  # copies of the kept real images: as many as any ratio asks
        return math.inf, ""
    if arm == "control":
        return control_images_per_class(profile.experiments), "experiments.control_images_per_class"
    if arm in ("filtered", "targeted") and profile.filter.top_k is not None and profile.filter.top_k < generated:
        return profile.filter.top_k, "filter.top_k"
    if arm in ("filtered", "targeted") and profile.filter.quantile is not None:
        return math.ceil(round(profile.filter.quantile * generated, 9)), f"filter.quantile x generator.images_per_class={generated}"
    return generated, "generator.images_per_class"


def _grid_point_problem(
    key: str,
    regime: str,
    ratio: float,
    counts: list[int],
    class_ids: Sequence[str],
    cfg: Any,
    generated: float | None,
    bound: str,
    pooled: bool = False,
) -> str | None:
    """Why grid point ``key`` cannot run, or None. ``pooled`` (targeted arm): the classes' images are shared out after
    the real-only run, so only their total must fit in what the classes can hold together."""
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        return (
            f"{key}: class {class_ids[empty[0]]!r} has no real training images; regime {regime!r} needs every class "
            "(drop the class with data.classes)"
        )
    if regime == "few_shot":
        short = [c for c, n in enumerate(counts) if n < cfg.few_shot_k]
        if short:
            c = short[0]
            return (
                f"{key}: few_shot keeps experiments.few_shot_k={cfg.few_shot_k} real images per class but class "
                f"{class_ids[c]!r} has only {counts[c]}: lower experiments.few_shot_k to at most {min(counts)} "
                "or drop few_shot from experiments.regimes"
            )
    kept = regime_real_counts(regime, counts, cfg.few_shot_k, cfg.long_tail_imbalance)
    needed = synthetic_images_needed(np.asarray(kept, dtype=np.int64), ratio).tolist()
    if generated is None:  # retrieval: the real images the regime leaves over
        left = [n - k for n, k in zip(counts, kept)]
        short = [c for c, need in enumerate(needed) if need > left[c]]
        if not short:
            return None
        c = short[0]
        return (
            f"{key}: the retrieval arm needs {needed[c]} more real images of class {class_ids[c]!r} ({format_ratio(ratio)} x "
            f"{kept[c]}) but only {left[c]} are left in the generator's training pool beyond the {kept[c]} {regime} keeps: "
            "lower the ratio or drop retrieval from experiments.arms"
        )
    if pooled:
        total, holds = sum(needed), generated * len(counts)
        if total <= holds:
            return None
        return (
            f"{key}: the targeted arm shares out {total} accepted synthetic images ({format_ratio(ratio)} x the real images "
            f"{regime} keeps) but {len(counts)} classes x {bound}={generated} hold at most {holds:g}: lower the ratio or raise "
            f"{bound.split(' x ')[0].split('=')[0]}"
        )
    short = [c for c, need in enumerate(needed) if need > generated]
    if not short:
        return None
    c = max(short, key=lambda i: needed[i])
    fits = math.floor(generated / max(kept) * 1000) / 1000
    setting = f"experiments.ratios_by_regime.{regime}" if regime in cfg.ratios_by_regime else "experiments.ratios"
    return (
        f"{key}: ratio {format_ratio(ratio)} needs {needed[c]} accepted synthetic images of class {class_ids[c]!r} "
        f"({format_ratio(ratio)} x {kept[c]} real kept by {regime}) but at most {bound}={generated} {'can be accepted' if bound.startswith('filter.') else 'are generated'}: "
        f"lower the ratio in {setting} (up to {fits:g} fits for {regime}; e.g. experiments.ratios_by_regime={{{regime}: [0, {fits:g}]}}), "
        f"drop {regime} from experiments.regimes, or raise {bound.split(' x ')[0].split('=')[0]} to at least {needed[c]} "
        "(the filter rejects some, so leave a margin)"
    )


def check_shards_passed(shards: Sequence[ShardRef], consumer: str) -> None:
    """Raise ValueError when a ``synthetic_shards`` output that ``consumer`` would train on failed a blocking check.

    Each shard's ``checks`` ({check name: passed}) comes from the scoring run. A shard whose ``error`` is set
    (scoring failed) is refused as well. The message lists every refused class with its failed checks.
    """
    refused = []
    for shard in shards:
        failed = sorted(name for name, passed in shard.checks.items() if passed is False)
        if failed or shard.error:
            why = ", ".join(failed) if failed else "no failed check recorded"
            refused.append(f"class {shard.class_id!r} (failed: {why}{f'; error: {shard.error}' if shard.error else ''})")
    if refused:
        raise ValueError(
            f"{consumer} refuses {len(refused)} synthetic shard(s) whose blocking checks failed: {'; '.join(refused)}. "
            "Fix the cause and re-materialize synthetic_shards for those classes (or drop them with data.classes) before training"
        )
