"""Data regimes: which real training images a run keeps (full, few-shot, long-tailed).

Synthetic data is expected to help most where real data is scarce, so the ablations train on
subsets of the real training split:

* ``"full"`` -- every image.
* ``"few_shot"`` -- exactly ``k`` images per class.
* ``"long_tail"`` -- exponentially decaying class sizes (Cui et al. 2019, Cao et al. 2019 "CIFAR-LT"):
  class at rank ``i`` of ``C`` keeps ``max(1, floor(n_max * imbalance ** (-i / (C - 1))))`` images, so
  the largest class has ``n_max`` and the smallest ``n_max / imbalance`` (``imbalance`` = ratio of the
  largest class size to the smallest). ``n_max`` defaults to the size of the smallest class in the
  input, so every class can supply its share.

Class order for the long tail: **fixed** by default -- class 0 is the head, class C-1 the tail -- which
keeps the same classes rare in every run (runs over seeds then differ only in which images are kept).
``shuffle_classes=True`` ranks the classes by a permutation drawn from ``seed`` instead.

Which images of a class are kept: a permutation of that class's images drawn from ``seed`` (in class
order, independent of the regime's sizes), and the first ``n`` of it. So for one seed the subsets are
nested: few-shot k=5 is a subset of k=10, and both are subsets of a long tail whose class sizes are
larger. The returned indices are sorted, so the kept images stay in their original order.
"""

from __future__ import annotations

import math

import numpy as np

REGIMES = ("full", "few_shot", "long_tail")


def long_tail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Class sizes of a long tail by rank: ``max(1, floor(n_max * imbalance ** (-i / (C - 1))))``.

    Non-increasing, first ``n_max``, last ``max(1, floor(n_max / imbalance))``. (A 1e-9 tolerance
    before flooring keeps exact sizes such as 100 / 10 from landing one below through rounding error.)
    """
    if n_max < 1:
        raise ValueError(f"long_tail needs n_max >= 1, got {n_max}")
    if num_classes < 1:
        raise ValueError(f"long_tail needs at least one class, got {num_classes}")
    _check_imbalance(imbalance)
    if num_classes == 1:
        return [int(n_max)]
    return [max(1, math.floor(n_max * imbalance ** (-i / (num_classes - 1)) + 1e-9)) for i in range(num_classes)]


def select_regime(
    labels: np.ndarray,
    regime: str,
    *,
    k: int | None = None,
    imbalance: float | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    n_max: int | None = None,
    shuffle_classes: bool = False,
) -> np.ndarray:
    """Indices (sorted int64) of the images of ``labels`` that ``regime`` keeps.

    ``labels``: integer class of each image, in ``[0, num_classes)``; ``num_classes`` defaults to
    ``labels.max() + 1``. ``regime``: ``"full"``; ``"few_shot"`` with ``k`` images per class; or
    ``"long_tail"`` with ``imbalance`` >= 1 (optionally ``n_max``, the head class size, and
    ``shuffle_classes``; see the module docstring). Deterministic for ``seed``.

    Raises ValueError, naming the class, when a class has no images or fewer than the regime asks
    for, and for settings that do not belong to the regime (e.g. ``k`` with ``"long_tail"``).
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown data regime {regime!r}: choose one of {', '.join(REGIMES)}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} shaped {labels.shape}")
    labels = labels.astype(np.int64)
    if num_classes is None:
        if labels.size == 0:
            raise ValueError("no labels: cannot select a data regime from an empty training set")
        num_classes = int(labels.max()) + 1
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    _check_settings(regime, k, imbalance, n_max, shuffle_classes)

    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise ValueError(
            f"class {int(empty[0])} has no images (classes without images: {empty.tolist()}); regime {regime!r} needs every class"
        )
    if regime == "full":
        return np.arange(len(labels), dtype=np.int64)

    if regime == "few_shot":
        wanted = np.full(num_classes, k, dtype=np.int64)
        what = f"few_shot k={k}"
    else:
        head = int(n_max) if n_max is not None else int(counts.min())
        by_rank = long_tail_counts(head, num_classes, float(imbalance))
        order = np.random.default_rng([seed, 1]).permutation(num_classes) if shuffle_classes else np.arange(num_classes)
        wanted = np.zeros(num_classes, dtype=np.int64)
        wanted[order] = by_rank  # the class at rank i gets by_rank[i]
        what = f"long_tail imbalance={imbalance} n_max={head}"
    short = np.flatnonzero(counts < wanted)
    if len(short):
        c = int(short[0])
        raise ValueError(f"{what} needs {wanted[c]} images of class {c} but it has only {counts[c]}")

    rng = np.random.default_rng(seed)
    order_by_class = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    kept = [rng.permutation(order_by_class[starts[c] : starts[c] + counts[c]])[: wanted[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(kept)).astype(np.int64)


def _check_settings(regime: str, k: int | None, imbalance: float | None, n_max: int | None, shuffle_classes: bool) -> None:
    if regime != "few_shot" and k is not None:
        raise ValueError(f"k applies only to the few_shot regime, not {regime!r}")
    if regime != "long_tail" and (imbalance is not None or n_max is not None or shuffle_classes):
        raise ValueError(f"imbalance, n_max and shuffle_classes apply only to the long_tail regime, not {regime!r}")
    if regime == "few_shot" and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"few_shot needs an integer k >= 1 (images per class), got k={k!r}")
    if regime == "long_tail":
        if imbalance is None:
            raise ValueError("long_tail needs imbalance (ratio of the largest to the smallest class size, >= 1)")
        _check_imbalance(imbalance)
        if n_max is not None and (isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1):
            raise ValueError(f"long_tail n_max must be an integer >= 1, got {n_max!r}")


def _check_imbalance(imbalance: object) -> None:
    ok = isinstance(imbalance, (int, float, np.integer, np.floating)) and not isinstance(imbalance, bool)
    if not (ok and math.isfinite(imbalance) and imbalance >= 1):
        raise ValueError(f"long_tail imbalance (largest / smallest class size) must be a finite number >= 1, got {imbalance!r}")
