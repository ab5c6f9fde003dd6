"""Tests for synthaug_pipeline.lib.regimes: full, few-shot and long-tailed subsets of the real training set."""

from __future__ import annotations

import numpy as np
import pytest

from synthaug_pipeline.lib.regimes import long_tail_counts, select_regime


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """Shuffled labels with ``counts[c]`` images of class c."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)


def _sizes(labels: np.ndarray, kept: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels[kept], minlength=num_classes).tolist()


def test_full_keeps_everything() -> None:
    labels = _labels([3, 5, 2])
    kept = select_regime(labels, "full")
    assert kept.dtype == np.int64 and kept.tolist() == list(range(10))


def test_few_shot_keeps_exactly_k_per_class_sorted_and_deterministic() -> None:
    labels = _labels([30, 12, 50, 7])
    kept = select_regime(labels, "few_shot", k=7, seed=3)
    assert _sizes(labels, kept, 4) == [7, 7, 7, 7]
    assert kept.dtype == np.int64 and np.all(np.diff(kept) > 0)  # sorted, no repeats
    assert np.array_equal(kept, select_regime(labels, "few_shot", k=7, seed=3))
    assert not np.array_equal(kept, select_regime(labels, "few_shot", k=7, seed=4))


def test_subsets_are_nested_for_one_seed() -> None:
    labels = _labels([40, 40, 40, 40, 40])
    five = set(select_regime(labels, "few_shot", k=5, seed=1).tolist())
    ten = set(select_regime(labels, "few_shot", k=10, seed=1).tolist())
    tail = select_regime(labels, "long_tail", imbalance=2.0, n_max=30, seed=1)
    assert five < ten
    assert min(_sizes(labels, tail, 5)) == 15 >= 10
    assert ten <= set(tail.tolist())  # every class keeps at least 15 >= 10: the k=10 subset is inside
    other_seed = set(select_regime(labels, "few_shot", k=10, seed=2).tolist())
    assert five - other_seed  # nesting is per seed, not a fixed prefix


def test_long_tail_counts() -> None:
    counts = long_tail_counts(100, 10, 10.0)
    assert counts[0] == 100 and counts[-1] == 10  # exactly n_max / imbalance, not 9 through rounding
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    expected = [int(np.floor(100 * 10.0 ** (-i / 9) + 1e-9)) for i in range(10)]
    assert counts == expected
    assert long_tail_counts(5, 4, 1000.0)[-1] == 1  # never below one image
    assert long_tail_counts(7, 1, 10.0) == [7]
    assert long_tail_counts(8, 3, 1.0) == [8, 8, 8]  # imbalance 1 = balanced


def test_long_tail_selection_fixed_and_shuffled_class_order() -> None:
    labels = _labels([60, 50, 80, 70, 90])
    kept = select_regime(labels, "long_tail", imbalance=5.0, seed=0)
    # n_max defaults to the smallest class (50); class 0 is the head, class 4 the tail
    assert _sizes(labels, kept, 5) == long_tail_counts(50, 5, 5.0) == [50, 33, 22, 14, 10]
    assert np.array_equal(kept, select_regime(labels, "long_tail", imbalance=5.0, seed=0))
    other = select_regime(labels, "long_tail", imbalance=5.0, seed=1)
    assert _sizes(labels, other, 5) == [50, 33, 22, 14, 10]  # same rare classes, other images
    assert not np.array_equal(kept, other)

    shuffled = select_regime(labels, "long_tail", imbalance=5.0, seed=1, shuffle_classes=True)
    sizes = _sizes(labels, shuffled, 5)
    assert sorted(sizes, reverse=True) == [50, 33, 22, 14, 10] and sizes != [50, 33, 22, 14, 10]
    assert select_regime(labels, "long_tail", imbalance=5.0, seed=1, shuffle_classes=True).tolist() == shuffled.tolist()
    assert _sizes(labels, select_regime(labels, "long_tail", imbalance=2.0, n_max=40), 5) == [40, 33, 28, 23, 20]


def test_num_classes_names_a_class_without_images() -> None:
    labels = _labels([5, 5, 5])
    with pytest.raises(ValueError, match="class 3 has no images"):
        select_regime(labels, "full", num_classes=4)
    with pytest.raises(ValueError, match=r"class 1 has no images \(classes without images: \[1, 3\]\)"):
        select_regime(np.array([0, 2, 2, 0]), "few_shot", k=1, num_classes=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(regime="few_shot", k=8), "few_shot k=8 needs 8 images of class 1 but it has only 6"),
        (dict(regime="long_tail", imbalance=2.0, n_max=10), "n_max=10 needs 10 images of class 0 but it has only 9"),
        (dict(regime="long_tail", imbalance=2.0, n_max=9, shuffle_classes=True, seed=0), "needs 9 images of class 2 but it has only 8"),
        (dict(regime="fewshot"), "unknown data regime 'fewshot'"),
        (dict(regime="few_shot"), "integer k >= 1"),
        (dict(regime="few_shot", k=0), "integer k >= 1"),
        (dict(regime="few_shot", k=2.5), "integer k >= 1"),
        (dict(regime="full", k=3), "k applies only to the few_shot regime"),
        (dict(regime="few_shot", k=3, imbalance=2.0), "apply only to the long_tail regime"),
        (dict(regime="long_tail"), "long_tail needs imbalance"),
        (dict(regime="long_tail", imbalance=0.5), "finite number >= 1"),
        (dict(regime="long_tail", imbalance=float("inf")), "finite number >= 1"),
        (dict(regime="long_tail", imbalance=2.0, n_max=0), "n_max must be an integer >= 1"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    labels = _labels([9, 6, 8])
    with pytest.raises(ValueError, match=message):
        select_regime(labels, **kwargs)


def test_bad_labels() -> None:
    with pytest.raises(ValueError, match="1-D integer array"):
        select_regime(np.array([0.0, 1.0]), "full")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        select_regime(np.array([0, 1, 2]), "full", num_classes=2)
    with pytest.raises(ValueError, match="empty training set"):
        select_regime(np.array([], dtype=np.int64), "full")
