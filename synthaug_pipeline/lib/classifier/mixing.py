"""The real + synthetic mix: the class-balanced mix sampler and the supply rule.

The synthetic ratio ``r`` means "r synthetic images per real image", class by class. Class ``c`` with ``n_c``
real images needs ``ceil(r * n_c)`` distinct synthetic images (:func:`synthetic_images_needed`, the one
place that rule is written); :func:`reached_ratios` says what ratio a short class reaches and
:func:`check_synthetic_supply` refuses a short pool before training.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np



class BalancedMixSampler:
    """Draws the sample indices of each training batch.

    A share ``synthetic_ratio / (1 + synthetic_ratio)`` of every batch comes from the synthetic pool
    (stochastically rounded, so the share is exact on average), the rest from the real pool. Both
    pools are class-balanced: pick a class uniformly (among the classes the pool has), then an image
    of that class uniformly.

    ``class_ratios`` (one ratio per class) replaces the single ratio where classes differ (a class with
    fewer accepted images than the ratio needs trains at the ratio its pool reaches): the synthetic share
    is then ``m / (1 + m)`` for the mean ratio ``m`` over the real classes, and a synthetic class is picked
    with probability proportional to its ratio, so class ``c`` still gets ``r_c`` synthetic draws per real one.
    """

    def __init__(
        self,
        real_labels: np.ndarray,
        num_classes: int,
        synthetic_labels: np.ndarray | None = None,
        synthetic_ratio: float = 0.0,
        rng: np.random.Generator | None = None,
        class_ratios: np.ndarray | None = None,
    ) -> None:
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._real = _ClassPools(real_labels, num_classes)
        use_synthetic = synthetic_ratio > 0 and synthetic_labels is not None and len(synthetic_labels) > 0
        self._synthetic = _ClassPools(synthetic_labels, num_classes) if use_synthetic else None
        self.synthetic_share = synthetic_ratio / (1.0 + synthetic_ratio) if use_synthetic else 0.0
        if use_synthetic and class_ratios is not None:
            ratios = np.asarray(class_ratios, dtype=np.float64)
            mean = float(ratios[np.bincount(real_labels, minlength=num_classes) > 0].mean())
            self.synthetic_share = mean / (1.0 + mean)
            if mean > 0:
                self._synthetic.set_weights(ratios)

    def draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices into the real pool and into the synthetic pool (int64 arrays) for one batch."""
        expected = batch_size * self.synthetic_share
        num_synthetic = int(expected) + int(self.rng.random() < expected - int(expected))
        real = self._real.draw(batch_size - num_synthetic, self.rng)
        synthetic = self._synthetic.draw(num_synthetic, self.rng) if self._synthetic else np.zeros(0, np.int64)
        return real, synthetic


class _ClassPools:
    """Indices grouped by class, for vectorised class-balanced draws."""

    def __init__(self, labels: np.ndarray, num_classes: int) -> None:
        self.order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=num_classes)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        present = counts > 0
        self.counts, self.starts = counts[present], starts[present]

        self.present = np.flatnonzero(present)
        self.probabilities: np.ndarray | None = None

    def set_weights(self, weights: np.ndarray) -> None:
        """Pick class ``c`` with probability proportional to ``weights[c]`` instead of uniformly."""
        kept = np.asarray(weights, dtype=np.float64)[self.present]
        self.probabilities = kept / kept.sum()

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.probabilities is None:
            classes = rng.integers(len(self.counts), size=n)
        else:
            classes = rng.choice(len(self.counts), size=n, p=self.probabilities)
        within = (rng.random(n) * self.counts[classes]).astype(np.int64)
        return self.order[self.starts[classes] + within].astype(np.int64)


def synthetic_images_needed(real_counts: Any, ratio: float) -> np.ndarray:
    """Distinct synthetic images each class needs at ``ratio``: ``ceil(ratio * n_c)`` for ``n_c`` real images.

    ``real_counts`` holds ``n_c`` per class (int64 array out, same length; all 0 for ratio 0). A hair
    of tolerance keeps float error from asking one image too many (0.1 * 30 is 3.0000000000000004).
    """
    counts = np.asarray(real_counts, dtype=np.float64)
    if not ratio >= 0 or not math.isfinite(ratio):
        raise ValueError(f"synthetic_ratio must be a finite number >= 0, got {ratio}")
    if ratio == 0:
        return np.zeros(len(counts), np.int64)
    return np.ceil(ratio * counts - 1e-9).astype(np.int64)


def reached_ratios(real_counts: Any, synthetic_counts: Any, ratio: float) -> np.ndarray | None:
    """Per class, the ratio its synthetic pool supports without drawing a synthetic image more often than a real one:
    ``ratio`` where ``ceil(ratio * n_c)`` images exist, else ``a_c / n_c``. None when every class reaches ``ratio``."""
    real_counts = np.asarray(real_counts, dtype=np.float64)
    synthetic_counts = np.asarray(synthetic_counts, dtype=np.float64)
    short = synthetic_images_needed(real_counts, ratio) > synthetic_counts
    if not short.any():
        return None
    supported = np.where(real_counts > 0, synthetic_counts / np.maximum(real_counts, 1), 0.0)
    return np.where(short, np.minimum(supported, ratio), ratio)


def check_synthetic_supply(
    real_counts: Any,
    synthetic_counts: Any,
    synthetic_ratio: float,
    *,
    class_ids: list[str] | None = None,
    available: str = "are available",
    hint: str = "lower the ratio, generate more synthetic images or loosen the filter",
) -> None:
    """Raise ValueError unless every class ``c`` has ``ceil(synthetic_ratio * real_counts[c])`` synthetic images.

    ``real_counts`` / ``synthetic_counts``: images per class (same length). The message names the
    first class that falls short (``class_ids[c]`` when given), what it needs and has ("only m
    {available}"), the largest ratio the pool supports, and ``hint``.
    """
    real_counts = np.asarray(real_counts, dtype=np.int64)
    synthetic_counts = np.asarray(synthetic_counts, dtype=np.int64)
    if real_counts.shape != synthetic_counts.shape:
        raise ValueError(f"{len(real_counts)} real class counts but {len(synthetic_counts)} synthetic ones")
    needed = synthetic_images_needed(real_counts, synthetic_ratio)
    short = np.flatnonzero(needed > synthetic_counts)
    if not len(short):
        return
    c = int(short[0])
    name = repr(class_ids[c]) if class_ids is not None else str(c)
    with_real = real_counts > 0
    supported = math.floor(float((synthetic_counts[with_real] / real_counts[with_real]).min()) * 1000) / 1000 if with_real.any() else 0.0
    raise ValueError(
        f"synthetic ratio {synthetic_ratio:g} needs {needed[c]} synthetic images of class {name} "
        f"({synthetic_ratio:g} x {real_counts[c]} real) but only {synthetic_counts[c]} {available} "
        f"({len(short)} of {len(real_counts)} classes fall short; a ratio up to {supported:g} would fit): {hint}"
    )
