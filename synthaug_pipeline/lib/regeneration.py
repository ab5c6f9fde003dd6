"""Which classes to regenerate: rank classes by the quality metric their last scoring recorded.

Scheduled regeneration (``regenerate_worst_classes`` in the Dagster UI) re-samples the classes whose
synthetic images scored worst, with a fresh seed round (``image_seed(..., regeneration_round=r)``),
and re-scores and re-filters them; nothing else is touched. This module holds the ranking, free of
Dagster, so it is tested on plain dictionaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Metrics where a larger value is worse (distances); the others are shares where smaller is worse.
LOWER_IS_BETTER = {"kid_mean": True, "fid": True, "label_match_rate": False, "mean_judge_confidence": False, "validation_error": True}
# Metrics read from the last ``evaluation`` (the augmented classifier on the validation split), not from ``synthetic_scores``.
CLASSIFIER_METRICS = ("validation_error",)


@dataclass(frozen=True)
class ClassQuality:
    """What the last ``synthetic_scores`` materialization of a class recorded."""

    class_id: str
    metric_value: float | None  # None: the metric was not computed (too few images) or the class failed
    error: str | None = None  # the class could not be scored at all
    regeneration_round: int = 0  # round of the images that were scored
    scored_event: int | None = None  # id of that scoring event (keys a regeneration request to it)


@dataclass(frozen=True)
class RegenerationPick:
    class_id: str
    next_round: int
    reason: str
    scored_event: int | None = None


def worst_classes(
    qualities: list[ClassQuality], metric: str, count: int, max_rounds: int
) -> tuple[list[RegenerationPick], list[str]]:
    """The ``count`` classes most in need of new images, and why the others were passed over.

    Order: classes that failed scoring first, then classes without a value for ``metric``, then the
    worst by ``metric`` (largest KID/FID or validation error, smallest label-match rate or confidence);
    ties by class id. ``validation_error`` closes the loop: the augmented classifier's per-class error on
    the validation split, so new images go where the classifier is still wrong, not where the images look
    least like the real ones.
    A class already regenerated ``max_rounds`` times is passed over: more draws from the same
    generator will not fix it.
    """
    if metric not in LOWER_IS_BETTER:
        raise ValueError(f"unknown regeneration metric {metric!r}: choose one of {', '.join(LOWER_IS_BETTER)}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    eligible, passed_over = [], []
    for quality in qualities:
        if quality.regeneration_round >= max_rounds:
            passed_over.append(f"{quality.class_id}: regenerated {quality.regeneration_round} times already (max_rounds {max_rounds})")
        else:
            eligible.append(quality)

    def badness(quality: ClassQuality) -> tuple:
        value = quality.metric_value
        if quality.error is not None:
            return (0, 0.0, quality.class_id)
        if value is None or not math.isfinite(value):
            return (1, 0.0, quality.class_id)
        return (2, -value if LOWER_IS_BETTER[metric] else value, quality.class_id)

    picks = []
    for quality in sorted(eligible, key=badness)[:count]:
        if quality.error is not None:
            reason = f"scoring failed: {quality.error}"
        elif quality.metric_value is None or not math.isfinite(quality.metric_value):
            reason = f"no {metric} recorded"
        else:
            reason = f"{metric} {quality.metric_value:.4g}"
        picks.append(RegenerationPick(quality.class_id, quality.regeneration_round + 1, reason, quality.scored_event))
    return picks, passed_over
