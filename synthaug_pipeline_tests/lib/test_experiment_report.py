"""experiments.md's reviewer sections, from hand-built results: intervals, retrieval share, costs, plain findings."""

import pytest

from synthaug_pipeline.lib.config import ExperimentsConfig
from synthaug_pipeline.lib.experiment_report import headline_lines, plain_findings, retrieval_shares
from synthaug_pipeline.lib.experiment_summary import render_experiments_markdown, summarize_experiments
from synthaug_pipeline.lib.experiments import experiment_keys, parse_experiment_key


def _result(key: str, top1: float, shifted: float, validation: float | None = None, seconds: float = 10.0) -> dict:
    spec = parse_experiment_key(key)
    return {
        "spec": spec.as_dict(),
        "metrics": {"top1": top1, "top5": None, "shifted_mean_top1": shifted, "shift_drop": top1 - shifted},
        "per_class": {"a": top1, "b": top1},
        "real_images": 20,
        "synthetic_images": 60 if spec.ratio else 0,
        "validation": None if validation is None else {"top1": validation, "shifted_mean_top1": validation - 0.2, "shift_drop": 0.2},
        "seconds": seconds,
        "eval_seconds": 2.0,
        "fingerprint": "now",
    }


@pytest.fixture()
def summary():
    cfg = ExperimentsConfig(regimes=["few_shot"], ratios=[0, 3], seeds=[0, 1, 2], arms=["filtered", "retrieval", "control"], synthetic_only=False)
    grid = experiment_keys(cfg)
    base = {0: 0.70, 1: 0.72, 2: 0.71}
    gains = {"": (0.10, 0.11, 0.09), "-retrieval": (0.20, 0.19, 0.21), "-control": (0.01, -0.02, 0.02)}
    results = {f"few_shot-r0-s{s}": _result(f"few_shot-r0-s{s}", base[s], base[s] - 0.3, validation=base[s]) for s in base}
    for suffix, deltas in gains.items():
        for s, d in zip(base, deltas):
            key = f"few_shot-r3-s{s}{suffix}"
            results[key] = _result(key, base[s] + d, base[s] - 0.3 + d, validation=base[s] + d, seconds=20.0)
    summary = summarize_experiments(results, grid, dict.fromkeys(grid, "now"))
    summary["costs"] = {"generator": 120.0, "sampling (all classes)": 30.0}
    return summary


def test_paired_gains_carry_95_percent_t_intervals(summary):
    group = {g["group"]: g for g in summary["groups"]}["few_shot-r3"]
    gain = group["vs_real_only"]["top1"]
    assert gain["mean"] == pytest.approx(0.10) and gain["std"] == pytest.approx(0.01)
    low, high = gain["ci95"]
    assert low == pytest.approx(0.10 - 4.302653 * 0.01 / 3**0.5, abs=1e-5) and high > 0.1
    assert group["validation_vs_real_only"]["top1"]["mean"] == pytest.approx(0.10)
    assert group["seconds"]["seconds"]["mean"] == pytest.approx(20.0)


def test_the_filtered_arm_is_compared_with_every_other_arm_paired_by_seed(summary):
    group = {g["group"]: g for g in summary["groups"]}["few_shot-r3"]
    assert set(group["vs_arms"]) == {"retrieval", "control"}
    retrieval = group["vs_arms"]["retrieval"]
    assert retrieval["group"] == "few_shot-r3-retrieval"
    diff = retrieval["test"]["top1"]  # (0.10 - 0.20, 0.11 - 0.19, 0.09 - 0.21) per seed
    assert diff["mean"] == pytest.approx(-0.10) and diff["std"] == pytest.approx(0.02) and diff["ci95"][1] < 0
    assert group["vs_arms"]["control"]["validation"]["top1"]["mean"] == pytest.approx((0.09 + 0.13 + 0.07) / 3)
    assert all("vs_arms" not in g for g in summary["groups"] if g["group"] != "few_shot-r3")  # only the filtered arm's
    markdown = render_experiments_markdown(summary)
    assert "| few_shot-r3 | few_shot-r3-retrieval | -10.0 ± 2.0 [-15.0, -5.0] |" in markdown
    from synthaug_pipeline.lib.experiment_report import comparison_lines

    assert comparison_lines(summary)[0].startswith(
        "few_shot-r3 filtered minus retrieval (few_shot-r3-retrieval), 3 seeds: top-1 -10.0 ± 2.0 [-15.0, -5.0] points, under shift"
    )


def test_the_report_says_how_much_of_the_retrieval_gain_synthetic_images_reach(summary):
    shares = {s["group"]: s for s in retrieval_shares(summary)}
    assert shares["few_shot-r3"]["top1"] == pytest.approx(0.5)  # +10 of the retrieval arm's +20 points
    assert shares["few_shot-r3-control"]["top1"] == pytest.approx(0.0033 / 0.2, abs=0.01)
    markdown = render_experiments_markdown(summary)
    assert "| few_shot-r3 | few_shot-r3-retrieval | 50% | 50% |" in markdown
    assert "| few_shot-r3 | filtered | 3 | +10.0 ± 1.0 [+7.5, +12.5] |" in markdown
    assert "Validation split (carved from the training data" in markdown
    assert "Shared costs the arms draw on (seconds, last materialization): generator 120 s; sampling (all classes) 30 s." in markdown
    assert "| few_shot-r3-retrieval | 20 | 2 |" in markdown


def test_null_and_negative_results_are_said_plainly(summary):
    findings = plain_findings(summary)
    assert any(f.startswith("few_shot-r3-control: top-1 gain +0.3") and "within seed noise" in f for f in findings)
    assert not any(f.startswith("few_shot-r3:") for f in findings)  # a clear gain is not listed
    lines = headline_lines(summary, ["filtered"])
    assert lines == ["few_shot-r3 (real + filtered synthetic) vs real only, 3 seeds: top-1 +10.0 ± 1.0 [+7.5, +12.5] points, "
                     "under shift +10.0 ± 1.0 [+7.5, +12.5] points"]


def test_a_targeted_arm_is_compared_on_test_and_its_validation_numbers_are_flagged():
    cfg = ExperimentsConfig(regimes=["few_shot"], ratios=[0, 3], seeds=[0, 1], arms=["filtered", "targeted"], synthetic_only=False)
    grid = experiment_keys(cfg)
    results = {key: _result(key, 0.8 if "-r3-" in key else 0.7, 0.5, validation=0.8) for key in grid}
    markdown = render_experiments_markdown(summarize_experiments(results, grid, dict.fromkeys(grid, "now")))
    assert "| few_shot-r3 | few_shot-r3-targeted |" in markdown
    assert markdown.count("validation numbers are optimistic; judge it on test") == 2  # under the validation and comparison tables
    plain = ExperimentsConfig(regimes=["few_shot"], ratios=[0, 3], seeds=[0, 1], arms=["filtered", "retrieval"], synthetic_only=False)
    keys = experiment_keys(plain)
    results = {key: _result(key, 0.8, 0.5, validation=0.8) for key in keys}
    assert "optimistic" not in render_experiments_markdown(summarize_experiments(results, keys, dict.fromkeys(keys, "now")))
