"""Tests for synthaug_pipeline.lib.stats: mean ± sample std over seeds, and its formatting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synthaug_pipeline.lib.stats import format_pm, mean_std, summarize_seeds


def test_mean_std_is_the_sample_std() -> None:
    values = [0.70, 0.72, 0.75, 0.69]
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    assert mean_std([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert mean_std(iter([0.5])) == (0.5, 0.0)  # one run: no spread, not NaN
    assert mean_std([0.3, 0.3, 0.3])[1] == 0.0


def test_mean_std_is_exact_for_many_equal_values() -> None:
    # fsum keeps 0.1 x 1000 from drifting: the spread of identical values is exactly zero
    assert mean_std([0.1] * 1000) == (0.1, 0.0)


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [1.0, float("inf")], [True, 1.0], ["0.5"], [None]])
def test_mean_std_rejects(values: list) -> None:
    with pytest.raises(ValueError):
        mean_std(values)


def test_summarize_seeds_default_keys_are_numbers_in_every_run() -> None:
    runs = [
        {"top1": 0.8, "shift": 0.5, "name": "a", "flag": True, "sometimes": 1.0},
        {"top1": 0.9, "shift": 0.7, "name": "b", "flag": False},
    ]
    summary = summarize_seeds(runs)
    assert set(summary) == {"top1", "shift"}  # strings, bools and fields missing from a run are left out
    assert summary["top1"] == pytest.approx({"mean": 0.85, "std": np.std([0.8, 0.9], ddof=1), "n": 2})
    assert summary["shift"]["n"] == 2


def test_summarize_seeds_dotted_keys_and_missing_values() -> None:
    runs = [
        {"in_domain": {"top1": 0.6}, "drop": 0.2},
        {"in_domain": {"top1": 0.8}, "drop": None},
        {"in_domain": {}, "drop": 0.4},
    ]
    summary = summarize_seeds(runs, ["in_domain.top1", "drop", "nowhere", "in_domain.top1.deeper"])
    assert summary["in_domain.top1"] == pytest.approx({"mean": 0.7, "std": np.std([0.6, 0.8], ddof=1), "n": 2})
    assert summary["drop"] == pytest.approx({"mean": 0.3, "std": np.std([0.2, 0.4], ddof=1), "n": 2})
    assert summary["nowhere"] == {"mean": None, "std": None, "n": 0}
    assert summary["in_domain.top1.deeper"]["n"] == 0  # a number has no fields


def test_summarize_seeds_errors() -> None:
    with pytest.raises(ValueError, match="at least one result"):
        summarize_seeds([])
    with pytest.raises(ValueError, match=r"field 'top1' holds 'high', not a number"):
        summarize_seeds([{"top1": 0.5}, {"top1": "high"}], ["top1"])
    with pytest.raises(ValueError, match="finite"):
        summarize_seeds([{"top1": 0.5}, {"top1": float("nan")}], ["top1"])


@pytest.mark.parametrize(
    "args, text",
    [
        ((0.712, 0.008), "71.2 ± 0.8"),
        ((0.712, None), "71.2"),
        ((None, 0.01), "n/a"),
        ((0.5, 0.0), "50.0 ± 0.0"),
        ((0.71234, 0.00456, 100, 2), "71.23 ± 0.46"),
        ((3.5, 1.25, 1, 0), "4 ± 1"),  # Python rounds half to even
        ((-0.012, 0.003), "-1.2 ± 0.3"),
    ],
)
def test_format_pm(args: tuple, text: str) -> None:
    assert format_pm(*args) == text


def test_t_interval_uses_students_t_and_needs_two_values():
    from synthaug_pipeline.lib.stats import t_interval

    low, high = t_interval([0.10, 0.12, 0.14])
    # mean 0.12, std 0.02, t(0.975, 2) = 4.303: half-width 4.303 * 0.02 / sqrt(3)
    assert low == pytest.approx(0.12 - 0.0496828, abs=1e-6) and high == pytest.approx(0.12 + 0.0496828, abs=1e-6)
    assert t_interval([0.5]) is None
    with pytest.raises(ValueError, match="finite"):
        t_interval([0.1, float("nan")])
