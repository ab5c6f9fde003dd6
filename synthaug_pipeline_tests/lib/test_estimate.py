"""The timed run estimate: per-step seconds from a few real steps, robust to first-call costs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from synthaug_pipeline.lib import estimate
from synthaug_pipeline.lib.config import load_profile


def fake_train(costs: list[float], per_step: float):
    """A ``train(steps)`` whose n-th call pays ``costs[n]`` once (start-up) plus ``per_step`` a step."""
    calls = []

    def train(steps: int):
        start_up = costs[len(calls)] if len(calls) < len(costs) else costs[-1]
        calls.append(steps)
        return SimpleNamespace(seconds=start_up + per_step * steps)

    return train, calls


def test_first_call_costs_do_not_cancel_the_steps():
    # The first call in a process pays 2 s of one-off costs; the later ones 0.1 s. Subtracting the first call
    # from the timed one made this ~0 s per step (the digits estimate printed "generator 1500 steps ~0s").
    train, calls = fake_train([2.0, 0.1, 0.1], per_step=0.25)
    per_step, timed = estimate._per_step(train)
    assert calls == [1, 1, 1 + estimate.TIMED_STEPS]
    assert per_step == pytest.approx(0.25)
    assert timed.seconds == pytest.approx(0.1 + 0.25 * (1 + estimate.TIMED_STEPS))


def test_a_noisy_difference_falls_back_to_the_mean_step():
    train, _ = fake_train([0.0, 5.0, 0.1], per_step=0.2)  # the one-step run was slowed down by something else
    per_step, _ = estimate._per_step(train)
    assert per_step == pytest.approx((0.1 + 0.2 * (1 + estimate.TIMED_STEPS)) / (1 + estimate.TIMED_STEPS))
    assert per_step > 0


def test_estimate_run_times_every_part_it_will_run():
    profile = load_profile(
        "digits",
        ["generator.block_out_channels=[8, 16]", "generator.batch_size=16", "judge.batch_size=16", "classifier.batch_size=16"],
    )
    result = estimate.estimate_run(profile, num_classes=10, image_shape=(8, 8, 1))
    assert set(result.parts) == {"generator", "sampling", "judge", "classifiers"}
    assert all(seconds > 0 for _, seconds in result.parts.values())
    assert result.parts["generator"][0] == f"{profile.generator.train_steps} steps"
    assert "estimate: ~" in result.describe() and result.measured_in > 0
    reused = estimate.estimate_run(profile, 10, (8, 8, 1), generator=False, judge=False, sample_classes=0, classifiers=False)
    assert reused.parts == {} and reused.describe() == "estimate: nothing left to train or sample"


def test_estimate_counts_the_experiment_grid_at_the_classifiers_cost_per_step():
    profile = load_profile("digits", ["classifier.batch_size=16", "classifier.steps=200"])
    grid_only = estimate.estimate_run(profile, 10, (8, 8, 1), generator=False, judge=False, sample_classes=0, classifiers=False, experiment_runs=6)
    assert set(grid_only.parts) == {"experiments"} and grid_only.parts["experiments"][0] == "6 x 200 steps"
    both = estimate.estimate_run(profile, 10, (8, 8, 1), generator=False, judge=False, sample_classes=0, classifiers=True, experiment_runs=3)
    assert both.parts["classifiers"][0] == "2 x 200 steps" and both.parts["experiments"][0] == "3 x 200 steps"
    # one timing of the classifier's step prices both parts: 3 grid runs cost 1.5x the 2 classifiers
    assert both.parts["experiments"][1] == pytest.approx(1.5 * both.parts["classifiers"][1])
    assert "experiments 3 x 200 steps ~" in both.describe()
