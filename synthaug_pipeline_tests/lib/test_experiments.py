import math

import numpy as np
import pytest

from synthaug_pipeline.lib.config import ExperimentsConfig, ProfileError, load_profile
from synthaug_pipeline.lib.experiments import (
    ExperimentError,
    ExperimentSpec,
    control_images_per_class,
    experiment_grid,
    experiment_keys,
    format_ratio,
    parse_experiment_key,
    plan_experiment,
    setup_fingerprint,
)
from synthaug_pipeline.lib.experiment_summary import render_experiments_markdown, summarize_experiments

CLASSES = ["a", "b"]


def test_default_grid_has_readable_keys_in_a_stable_order():
    keys = experiment_keys(ExperimentsConfig())
    assert keys == [
        *[f"few_shot-r{r}-s{s}" for r in (0, 0.5, 1) for s in (0, 1, 2)],
        "cas-s0",
        "cas-s1",
        "cas-s2",
    ]
    assert keys == experiment_keys(ExperimentsConfig())


def test_aux_bn_without_synthetic_images_and_repeats_collapse():
    cfg = ExperimentsConfig(ratios=[0, 1, 1.0, 0.5], regimes=["few_shot"], seeds=[0, 0], aux_bn=[False, True], synthetic_only=False)
    assert experiment_keys(cfg) == [
        "few_shot-r0-s0",
        "few_shot-r1-s0",
        "few_shot-r1-s0-auxbn",
        "few_shot-r0.5-s0",
        "few_shot-r0.5-s0-auxbn",
    ]
    only_aux = ExperimentsConfig(ratios=[0, 2], regimes=["long_tail"], seeds=[3], aux_bn=[True], synthetic_only=True)
    assert experiment_keys(only_aux) == ["long_tail-r0-s3", "long_tail-r2-s3-auxbn", "cas-s3"]


@pytest.mark.parametrize("ratio, text", [(3.0, "3"), (0.0, "0"), (0.25, "0.25"), (1e-05, "0.00001"), (0.1 + 0.2, "0.30000000000000004")])
def test_ratio_text_reads_back_as_the_same_float(ratio, text):
    assert format_ratio(ratio) == text
    assert parse_experiment_key(f"full-r{text}-s0").ratio == ratio


def test_every_key_parses_back_to_its_spec():
    cfg = ExperimentsConfig(ratios=[0, 0.5, 3], regimes=["full", "few_shot", "long_tail"], seeds=[0, 11], aux_bn=[False, True])
    grid = experiment_grid(cfg)
    assert len(grid) == 3 * (1 + 2 * 2) * 2 + 2
    for spec in grid:
        assert parse_experiment_key(spec.key) == spec
    spec = parse_experiment_key("few_shot-r3-s0-auxbn")
    assert (spec.regime, spec.ratio, spec.seed, spec.aux_bn, spec.group) == ("few_shot", 3.0, 0, True, "few_shot-r3-auxbn")
    cas = parse_experiment_key("cas-s2")
    assert cas.synthetic_only and cas.uses_synthetic and cas.group == "cas" and cas.ratio is None


@pytest.mark.parametrize(
    "key, message",
    [
        ("full-r1.0-s0", "the key of that experiment is 'full-r1-s0'"),
        ("full-r0-s01", "the key of that experiment is 'full-r0-s1'"),
        ("full-r0-s0-auxbn", "ratio 0 and aux BN is the plain run"),
        ("medium-r1-s0", "unknown data regime 'medium'"),
        ("full-r-1-s0", "not an experiment key"),
        ("cas-s0-auxbn", "not an experiment key"),
        ("", "not an experiment key"),
    ],
)
def test_malformed_keys_are_rejected_with_the_reason(key, message):
    with pytest.raises(ExperimentError, match=message):
        parse_experiment_key(key)


@pytest.mark.parametrize(
    "cfg, message",
    [
        (ExperimentsConfig.model_construct(seeds=[-1]), "seeds are integers >= 0"),
        (ExperimentsConfig.model_construct(ratios=[-0.5]), "ratios are finite numbers >= 0"),
        (ExperimentsConfig.model_construct(ratios=[math.nan]), "ratios are finite numbers >= 0"),
        (ExperimentsConfig(regimes=[], synthetic_only=False), "grid is empty"),
        (ExperimentsConfig(seeds=[]), "grid is empty"),
    ],
)
def test_invalid_grids_fail_before_anything_runs(cfg, message):
    with pytest.raises(ExperimentError, match=message):
        experiment_grid(cfg)


def _labels(*counts: int) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_few_shot_plan_keeps_k_real_and_ratio_times_k_synthetic_per_class():
    cfg = ExperimentsConfig(few_shot_k=3)
    real, synthetic = _labels(8, 5), _labels(20, 9)
    plan = plan_experiment(parse_experiment_key("few_shot-r2.5-s0"), cfg, real, synthetic, CLASSES)
    assert np.bincount(real[plan.real_indices]).tolist() == [3, 3]
    assert np.bincount(synthetic[plan.synthetic_indices]).tolist() == [8, 8]  # ceil(2.5 * 3)
    assert plan.real_per_class == {"a": 3, "b": 3} and plan.synthetic_per_class == {"a": 8, "b": 8}
    assert np.all(np.diff(plan.synthetic_indices) > 0)
    smaller = plan_experiment(parse_experiment_key("few_shot-r1-s0"), cfg, real, synthetic, CLASSES)
    assert set(smaller.synthetic_indices) < set(plan.synthetic_indices)  # one seed: nested across ratios
    assert np.array_equal(smaller.real_indices, plan.real_indices)  # and the same real images
    other_seed = plan_experiment(parse_experiment_key("few_shot-r2.5-s1"), cfg, real, synthetic, CLASSES)
    assert not np.array_equal(other_seed.synthetic_indices, plan.synthetic_indices)


def test_full_and_long_tail_plans_size_the_synthetic_pool_per_class():
    cfg = ExperimentsConfig(long_tail_imbalance=4.0)
    real, synthetic = _labels(8, 6), _labels(16, 16)
    full = plan_experiment(parse_experiment_key("full-r2-s0"), cfg, real, synthetic, CLASSES)
    assert len(full.real_indices) == 14 and full.synthetic_per_class == {"a": 16, "b": 12}
    tail = plan_experiment(parse_experiment_key("long_tail-r1-s0"), cfg, real, synthetic, CLASSES)
    assert tail.real_per_class == {"a": 6, "b": 1} and tail.synthetic_per_class == {"a": 6, "b": 1}
    real_only = plan_experiment(parse_experiment_key("full-r0-s0"), cfg, real, np.zeros(0, np.int64), CLASSES)
    assert len(real_only.synthetic_indices) == 0 and real_only.synthetic_per_class == {"a": 0, "b": 0}


@pytest.mark.parametrize(
    "key, real, synthetic, message",
    [
        ("few_shot-r0-s0", (8, 2), (0, 0), "few_shot keeps 3 real images per class .* class 'b' has only 2"),
        ("full-r0-s0", (8, 0), (0, 0), "class 'b' has no real training images"),
        ("long_tail-r1-s0", (0, 4), (4, 4), "class 'a' has no real training images"),
        ("few_shot-r3-s0", (8, 8), (9, 8), r"needs 9 synthetic images of class 'b' \(3 x 3 real\) but its shard holds only 8"),
        ("full-r0.5-s0", (8, 7), (4, 3), "needs 4 synthetic images of class 'b'"),
        ("cas-s0", (8, 8), (3, 0), "class 'b' has no accepted synthetic images"),
    ],
)
def test_plans_that_cannot_run_name_the_class(key, real, synthetic, message):
    with pytest.raises(ExperimentError, match=f"experiment {key}: .*{message}"):
        plan_experiment(parse_experiment_key(key), ExperimentsConfig(few_shot_k=3), _labels(*real), _labels(*synthetic), CLASSES)


def test_cas_plan_uses_every_accepted_synthetic_image_and_no_real_one():
    plan = plan_experiment(parse_experiment_key("cas-s1"), ExperimentsConfig(), _labels(5, 5), _labels(3, 4), CLASSES)
    assert plan.synthetic_indices.tolist() == list(range(7)) and len(plan.real_indices) == 0
    assert plan.synthetic_per_class == {"a": 3, "b": 4}


def test_cas_per_class_draws_that_many_per_class_seeded_and_refuses_a_short_class():
    cfg = ExperimentsConfig(cas_per_class=3)
    synthetic = _labels(6, 4)
    plan = plan_experiment(parse_experiment_key("cas-s1"), cfg, _labels(5, 5), synthetic, CLASSES)
    assert np.bincount(synthetic[plan.synthetic_indices]).tolist() == [3, 3] and len(plan.real_indices) == 0
    assert plan.synthetic_per_class == {"a": 3, "b": 3} and np.all(np.diff(plan.synthetic_indices) > 0)
    again = plan_experiment(parse_experiment_key("cas-s1"), cfg, _labels(5, 5), synthetic, CLASSES)
    np.testing.assert_array_equal(again.synthetic_indices, plan.synthetic_indices)  # seeded
    draws = {tuple(plan_experiment(parse_experiment_key(f"cas-s{seed}"), cfg, _labels(5, 5), synthetic, CLASSES).synthetic_indices)
             for seed in range(6)}
    assert len(draws) > 1  # another seed, another draw
    with pytest.raises(ExperimentError, match=r"experiment cas-s0: class 'b' has 2 accepted synthetic images but experiments.cas_per_class is 3"):
        plan_experiment(parse_experiment_key("cas-s0"), cfg, _labels(5, 5), _labels(6, 2), CLASSES)
    profile, matched = load_profile("digits", []), load_profile("digits", ["experiments.cas_per_class=10"])
    cas, few = parse_experiment_key("cas-s0"), parse_experiment_key("few_shot-r3-s0")
    assert setup_fingerprint(cas, profile, ["aa"]) != setup_fingerprint(cas, matched, ["aa"])
    assert setup_fingerprint(few, profile, ["aa"]) == setup_fingerprint(few, matched, ["aa"])  # only CAS runs read it


def test_fingerprint_tracks_what_the_key_does_not_say():
    profile = load_profile("digits", [])
    few, cas, full = (parse_experiment_key(k) for k in ("few_shot-r0-s0", "cas-s0", "full-r1-s2"))
    base = {spec: setup_fingerprint(spec, profile, ["aa", "bb"]) for spec in (few, cas, full)}
    assert setup_fingerprint(few, profile, ["other"]) == base[few]  # a real-only run does not read shards
    assert setup_fingerprint(cas, profile, ["bb", "cc"]) != base[cas]
    assert setup_fingerprint(full, profile, ["bb", "aa"]) == base[full]  # shard order does not matter
    assert setup_fingerprint(parse_experiment_key("full-r1-s0"), profile, ["aa", "bb"]) == base[full]  # nor the seed
    reseeded = load_profile("digits", ["classifier.seed=5", "experiments.few_shot_k=4"])
    assert setup_fingerprint(full, reseeded, ["aa", "bb"]) == base[full]
    assert setup_fingerprint(few, reseeded, ["aa", "bb"]) != base[few]
    for changed in (["classifier.steps=501"], ["evaluation.severities=[1]"], ["evaluation.shift_folders={sketch: /data/sketch}"]):
        profile_changed = load_profile("digits", changed)
        assert all(setup_fingerprint(spec, profile_changed, ["aa", "bb"]) != base[spec] for spec in base), changed


def _result(key: str, top1: float, shifted: float, fingerprint: str = "now") -> dict:
    spec = parse_experiment_key(key)
    return {
        "spec": spec.as_dict(),
        "metrics": {"top1": top1, "shifted_mean_top1": shifted, "shift_drop": top1 - shifted},
        "per_class": {"a": top1 + 0.05, "b": top1 - 0.05},
        "shift_sets": {"sketch.v1": top1 - 0.2},  # a dotted name must not be read as a path into the result
        "real_images": 6,
        "synthetic_images": 6 if spec.ratio else 0,
        "fingerprint": fingerprint,
    }


def test_summary_averages_over_seeds_and_lists_missing_and_stale_runs():
    grid = experiment_keys(ExperimentsConfig(ratios=[0, 1], regimes=["few_shot"], seeds=[0, 1, 2], synthetic_only=True))
    results = {
        "few_shot-r0-s0": _result("few_shot-r0-s0", 0.60, 0.40),
        "few_shot-r0-s1": _result("few_shot-r0-s1", 0.70, 0.50),
        "few_shot-r1-s0": _result("few_shot-r1-s0", 0.70, 0.45),
        "few_shot-r1-s1": _result("few_shot-r1-s1", 0.74, 0.55),
        "few_shot-r1-s2": _result("few_shot-r1-s2", 0.99, 0.99, fingerprint="before"),
        "cas-s1": _result("cas-s1", 0.30, 0.20),
    }
    summary = summarize_experiments(results, grid, dict.fromkeys(grid, "now"))
    assert summary["missing"] == ["few_shot-r0-s2", "cas-s0", "cas-s2"]
    assert summary["stale"] == ["few_shot-r1-s2"]
    assert summary["materialized"] == ["few_shot-r0-s0", "few_shot-r0-s1", "few_shot-r1-s0", "few_shot-r1-s1", "cas-s1"]
    groups = {g["group"]: g for g in summary["groups"]}
    assert list(groups) == ["few_shot-r0", "few_shot-r1", "cas"]
    mixed = groups["few_shot-r1"]
    assert mixed["seeds"] == [0, 1] and mixed["n"] == 2 and mixed["ratio"] == 1.0 and mixed["regime"] == "few_shot"
    assert mixed["metrics"]["top1"]["mean"] == pytest.approx(0.72)
    assert mixed["metrics"]["top1"]["std"] == pytest.approx(math.sqrt(2) * 0.02)
    assert mixed["per_class"]["a"]["mean"] == pytest.approx(0.77)
    assert mixed["shift_sets"]["sketch.v1"]["mean"] == pytest.approx(0.52) and mixed["shift_sets"]["sketch.v1"]["n"] == 2
    gain = mixed["vs_real_only"]
    assert gain["baseline"] == "few_shot-r0" and gain["paired_seeds"] == 2
    assert gain["top1"]["mean"] == pytest.approx(0.07) and gain["top1"]["std"] == pytest.approx(math.sqrt(2) * 0.03)
    assert groups["few_shot-r0"]["vs_real_only"] is None and groups["cas"]["vs_real_only"] is None
    assert groups["cas"]["n"] == 1

    markdown = render_experiments_markdown(summary)
    assert "| experiment | seeds | top-1 | top-1 under shift | shift drop | top-1 gain" in markdown  # no top-5 with 2 classes
    assert "| few_shot-r1 | 2 | 72.0 ± 2.8 | 50.0 ± 7.1 | 22.0 ± 4.2 | +7.0 ± 4.2 | +5.0 ± 0.0 | 6 | 6 |" in markdown
    assert "| cas | 1 | 30.0 | 20.0 | 10.0 | — | — | 6 | 0 |" in markdown  # one seed: no spread to show
    # per class, paired by seed with few_shot-r0: a gains 0.10 (seed 0) and 0.04 (seed 1), b the same
    per_class = mixed["per_class_vs_real_only"]
    assert per_class["a"]["mean"] == pytest.approx(0.07) and per_class["a"]["n"] == 2
    assert per_class["b"]["std"] == pytest.approx(math.sqrt(2) * 0.03)
    assert "Per-class top-1 change vs real-only" in markdown
    assert "| class | few_shot-r1 |" in markdown and "| a | +7.0 ± 4.2 |" in markdown
    assert "5 of 9 experiments summarized" in markdown
    assert "Missing (not materialized, or failed): few_shot-r0-s2, cas-s0, cas-s2." in markdown
    assert "Stale (trained under another setup or on other shards; re-materialize): few_shot-r1-s2." in markdown


def test_summary_with_nothing_materialized_reports_everything_missing():
    grid = ["full-r0-s0", "cas-s0"]
    summary = summarize_experiments({}, grid, {})
    assert summary["groups"] == [] and summary["missing"] == grid
    assert "0 of 2 experiments summarized" in render_experiments_markdown(summary)
    with pytest.raises(ExperimentError, match="outside the grid: full-r1-s0"):
        summarize_experiments({"full-r1-s0": _result("full-r1-s0", 0.5, 0.5)}, grid, {})


def test_spec_rejects_combinations_that_mean_nothing():
    with pytest.raises(ExperimentError, match="no ratio and no aux BN"):
        ExperimentSpec(seed=0, ratio=1.0)
    with pytest.raises(ExperimentError, match="seeds are integers >= 0"):
        ExperimentSpec(seed=True, regime="full", ratio=0.0)


def test_ratios_by_regime_replace_the_shared_ratios_for_that_regime():
    cfg = ExperimentsConfig(regimes=["few_shot", "full"], ratios=[0, 2], ratios_by_regime={"full": [0, 0.05]}, seeds=[0])
    assert experiment_keys(cfg) == ["few_shot-r0-s0", "few_shot-r2-s0", "full-r0-s0", "full-r0.05-s0", "cas-s0"]
    ignored = ExperimentsConfig(regimes=["few_shot"], ratios=[0, 1], ratios_by_regime={"long_tail": [3]}, seeds=[0], synthetic_only=False)
    assert experiment_keys(ignored) == ["few_shot-r0-s0", "few_shot-r1-s0"]  # a regime the grid does not run


def _top5_result(key: str, top1: float, top5: float, per_class: dict) -> dict:
    result = _result(key, top1, top1 - 0.1)
    result["metrics"]["top5"] = top5
    result["per_class"] = per_class
    return result


def test_summary_with_many_classes_shows_top5_and_the_classes_that_change_most():
    classes = [f"c{i:02d}" for i in range(12)]
    grid = experiment_keys(ExperimentsConfig(ratios=[0, 1], regimes=["few_shot"], seeds=[0], synthetic_only=False))
    base = {c: 0.5 for c in classes}
    mixed = {c: 0.5 + 0.01 * i for i, c in enumerate(classes)}
    mixed["c00"] = 0.2  # the largest loss
    results = {
        "few_shot-r0-s0": _top5_result("few_shot-r0-s0", 0.5, 0.8, base),
        "few_shot-r1-s0": _top5_result("few_shot-r1-s0", 0.6, 0.9, mixed),
    }
    summary = summarize_experiments(results, grid, dict.fromkeys(grid, "now"))
    group = {g["group"]: g for g in summary["groups"]}["few_shot-r1"]
    assert group["metrics"]["top5"]["mean"] == pytest.approx(0.9)
    assert group["vs_real_only"]["top5"]["mean"] == pytest.approx(0.1)
    assert group["per_class_vs_real_only"]["c11"]["mean"] == pytest.approx(0.11)
    markdown = render_experiments_markdown(summary)
    assert "| experiment | seeds | top-1 | top-5 | top-1 under shift | shift drop | top-1 gain vs real-only | top-5 gain vs real-only |" in markdown
    assert "| few_shot-r1 | 1 | 60.0 | 90.0 | 50.0 | 10.0 | +10.0 | +10.0 | +10.0 | 6 | 6 |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| few_shot-r1 | c11"))
    assert row == "| few_shot-r1 | c11 +11.0, c10 +10.0, c09 +9.0, c08 +8.0, c07 +7.0 | c00 -30.0, c01 +1.0, c02 +2.0, c03 +3.0, c04 +4.0 |"


# --------------------------------------------------------------------------------------------------
# Preflight: every grid point checked against the data before anything trains
# --------------------------------------------------------------------------------------------------

DIGITS_TRAIN = [125, 127, 124, 128, 127, 127, 127, 125, 122, 126]  # the digits profile's real training images per class


def test_packaged_profiles_default_grids_are_feasible():
    from synthaug_pipeline.lib.preflight import check_before_training, check_experiment_grid

    ids = [str(i) for i in range(10)]
    for check in (check_before_training, check_experiment_grid):
        check(load_profile("digits", []), ids, DIGITS_TRAIN)
        check(load_profile("fashion", []), ids, [6000] * 10)
    # the old default grid (ratios 1 and 3 on the full data) could not run on either
    old = ["experiments.ratios=[0, 1, 3]", "experiments.ratios_by_regime={}", "experiments.regimes=[full, few_shot]"]
    for name, counts in (("digits", DIGITS_TRAIN), ("fashion", [6000] * 10)):
        with pytest.raises(ProfileError, match=r"experiment grid point full-r1-s0: ratio 1 needs \d+ accepted synthetic images"):
            check_experiment_grid(load_profile(name, old), ids, counts)
        check_before_training(load_profile(name, old), ids, counts)  # the main pipeline is not held up by the grid


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["experiments.regimes=[full]", "experiments.ratios=[0, 0.5]", "experiments.ratios_by_regime={}", "experiments.seeds=[0, 1, 2]"],
            r"grid point full-r0.5-s0: ratio 0.5 needs 64 accepted synthetic images of class '1' \(0.5 x 127 real kept by full\) "
            r"but at most generator.images_per_class=50 are generated: .*up to 0.39 fits for full.*raise generator.images_per_class to at least 64"
            r".*\[2 more experiment grid point\(s\) fail as well\]",
        ),
        (
            ["experiments.few_shot_k=123"],
            r"grid point few_shot-r0-s0: few_shot keeps experiments.few_shot_k=123 real images per class but class '8' has only 122: "
            r"lower experiments.few_shot_k to at most 122",
        ),
        (
            ["experiments.regimes=[long_tail]", "experiments.ratios=[1]", "experiments.long_tail_imbalance=2"],
            r"grid point long_tail-r1-s0: ratio 1 needs 122 accepted synthetic images of class '0' \(1 x 122 real kept by long_tail\)",
        ),
        (
            ["experiments.regimes=[few_shot, full]", "experiments.ratios=[0, 6]", "experiments.ratios_by_regime={full: [0, 0.5]}"],
            r"grid point few_shot-r6-s0: ratio 6 needs 60 .* lower the ratio in experiments.ratios \(",
        ),
        (
            ["experiments.regimes=[full]", "experiments.ratios_by_regime={full: [0, 0.5]}"],
            r"grid point full-r0.5-s0: .*lower the ratio in experiments.ratios_by_regime.full",
        ),
        (
            ["experiments.synthetic_only=true", "experiments.cas_per_class=51"],
            r"experiments.cas_per_class 51 is more than the 50 accepted images per class that generator.images_per_class allows",
        ),
        (
            ["experiments.synthetic_only=true", "experiments.cas_per_class=40", "filter.top_k=30"],
            r"experiments.cas_per_class 40 is more than the 30 accepted images per class that filter.top_k allows",
        ),
    ],
)
def test_preflight_names_the_grid_point_class_and_fix(overrides, message):
    from synthaug_pipeline.lib.preflight import check_experiment_grid

    profile = load_profile("digits", ["generator.images_per_class=50", "experiments.seeds=[0]", *overrides])
    with pytest.raises(ProfileError, match=message):
        check_experiment_grid(profile, [str(i) for i in range(10)], DIGITS_TRAIN)


def test_preflight_passes_a_grid_that_just_fits_and_refuses_a_class_without_images():
    from synthaug_pipeline.lib.preflight import check_experiment_grid

    fits = load_profile("digits", ["generator.images_per_class=10", "experiments.regimes=[few_shot]", "experiments.ratios=[0, 1]",
                                   "experiments.synthetic_only=true", "experiments.cas_per_class=10"])
    check_experiment_grid(fits, ["0", "1"], [30, 12])  # ceil(1 x 10) = 10 of 10, and CAS draws 10 of 10
    copies = load_profile("digits", ["generator.images_per_class=10", "experiments.ratios=[0, 50]", "experiments.arms=[photometric]"])
    check_experiment_grid(copies, ["0", "1"], [30, 12])  # photometric copies: no pool bounds the ratio
    with pytest.raises(ProfileError, match="few_shot-r50-s0: ratio 50 needs 500 accepted synthetic images"):
        check_experiment_grid(copies.model_copy(update={"experiments": copies.experiments.model_copy(update={"arms": ["filtered"]})}), ["0", "1"], [30, 12])
    with pytest.raises(ProfileError, match="grid point few_shot-r0-s0: class '1' has no real training images"):
        check_experiment_grid(fits, ["0", "1"], [30, 0])


def test_shards_whose_blocking_checks_failed_are_refused():
    from synthaug_pipeline.lib.preflight import check_shards_passed

    from synthaug_pipeline_tests.tiny_models import shard_ref

    ok = shard_ref("0", {"has_accepted_images": True, "scores_finite": True})
    legacy = shard_ref("1", {})  # no check recorded: nothing failed
    check_shards_passed([ok, legacy], "classifier_augmented")
    bad = shard_ref("2", {"has_accepted_images": False, "no_test_leaks_accepted": False, "scores_finite": True})
    broken = shard_ref("3", {"scores_finite": False}, error="class 3: scoring failed: NaN")
    with pytest.raises(
        ValueError,
        match=r"classifier_augmented refuses 2 synthetic shard\(s\) .*class '2' \(failed: has_accepted_images, no_test_leaks_accepted\); "
        r"class '3' \(failed: scores_finite; error: class 3: scoring failed: NaN\)",
    ):
        check_shards_passed([ok, bad, legacy, broken], "classifier_augmented")


# --------------------------------------------------------------------------------------------------
# Arms: unfiltered, retrieval control, same-data control generator
# --------------------------------------------------------------------------------------------------


def test_arms_add_readable_keys_only_where_they_mean_something():
    cfg = ExperimentsConfig(
        regimes=["few_shot", "full"], ratios=[0, 3], ratios_by_regime={"full": [0, 0.1]}, seeds=[0, 1],
        arms=["filtered", "unfiltered", "retrieval", "control"], synthetic_only=False,
    )
    keys = experiment_keys(cfg)
    assert keys[:10] == [
        "few_shot-r0-s0", "few_shot-r0-s1",  # real only: one run per seed, whatever the arms
        "few_shot-r3-s0", "few_shot-r3-s1",
        "few_shot-r3-s0-unfiltered", "few_shot-r3-s1-unfiltered",
        "few_shot-r3-s0-retrieval", "few_shot-r3-s1-retrieval",
        "few_shot-r3-s0-control", "few_shot-r3-s1-control",
    ]
    assert keys[10:] == ["full-r0-s0", "full-r0-s1", "full-r0.1-s0", "full-r0.1-s1", "full-r0.1-s0-unfiltered", "full-r0.1-s1-unfiltered"]
    for key in keys:
        assert parse_experiment_key(key).key == key
    spec = parse_experiment_key("few_shot-r3-s1-retrieval")
    assert (spec.arm, spec.seed, spec.group, spec.uses_synthetic) == ("retrieval", 1, "few_shot-r3-retrieval", False)
    assert parse_experiment_key("few_shot-r3-s0-unfiltered-auxbn").aux_bn
    from synthaug_pipeline.lib.experiments import control_seeds

    assert control_seeds(cfg) == [0, 1]
    for bad, message in (
        (dict(regime="full", ratio=1.0, arm="retrieval"), "full regime keeps them all"),
        (dict(regime="long_tail", ratio=1.0, arm="control"), "trained on the few_shot subset"),
        (dict(regime="few_shot", ratio=0.0, arm="unfiltered"), "ratio 0 is the real-only run"),
        (dict(regime="few_shot", ratio=1.0, arm="magic"), "unknown experiment arm"),
    ):
        with pytest.raises(ExperimentError, match=message):
            ExperimentSpec(seed=0, **bad)


def test_retrieval_draws_as_many_extra_real_images_from_outside_the_seeds_subset():
    labels = np.repeat([0, 1], 20)
    cfg = ExperimentsConfig(few_shot_k=4)
    retrieval = plan_experiment(parse_experiment_key("few_shot-r2-s0-retrieval"), cfg, labels, None, CLASSES)
    filtered = plan_experiment(parse_experiment_key("few_shot-r2-s0"), cfg, labels, np.repeat([0, 1], 10), CLASSES)
    assert retrieval.extra_from_real and not filtered.extra_from_real
    np.testing.assert_array_equal(retrieval.real_indices, filtered.real_indices)  # the same real subset in every arm of a seed
    assert retrieval.synthetic_per_class == filtered.synthetic_per_class == {"a": 8, "b": 8}  # same N as the synthetic arm
    assert not set(retrieval.synthetic_indices) & set(retrieval.real_indices)
    assert np.bincount(labels[retrieval.synthetic_indices]).tolist() == [8, 8]
    with pytest.raises(ExperimentError, match=r"retrieval arm needs 20 more real images of class 'a' \(5 x 4 real\) but the generator's training pool has only 16"):
        plan_experiment(parse_experiment_key("few_shot-r5-s0-retrieval"), cfg, labels, None, CLASSES)


def test_photometric_copies_the_seeds_own_real_images_as_often_as_a_synthetic_arm_adds_images():
    labels = np.repeat([0, 1], 20)
    cfg = ExperimentsConfig(few_shot_k=4)
    filtered = plan_experiment(parse_experiment_key("few_shot-r2.5-s1"), cfg, labels, np.repeat([0, 1], 10), CLASSES)
    photometric = plan_experiment(parse_experiment_key("few_shot-r2.5-s1-photometric"), cfg, labels, None, CLASSES)
    assert photometric.photometric and photometric.extra_from_real and not filtered.photometric
    np.testing.assert_array_equal(photometric.real_indices, filtered.real_indices)
    assert photometric.synthetic_per_class == filtered.synthetic_per_class == {"a": 10, "b": 10}  # ceil(2.5 x 4)
    assert set(photometric.synthetic_indices) == set(photometric.real_indices)  # copies of the kept images only
    copies = np.bincount(photometric.synthetic_indices, minlength=len(labels))[photometric.real_indices]
    assert sorted(copies.tolist()) == [2, 2, 2, 2, 3, 3, 3, 3]  # 10 copies of 4 images per class: evenly, to within one
    assert np.bincount(labels[photometric.synthetic_indices]).tolist() == [10, 10]
    # no pool bounds it: any ratio plans
    assert plan_experiment(parse_experiment_key("few_shot-r40-s0-photometric"), cfg, labels, None, CLASSES).synthetic_per_class == {"a": 160, "b": 160}
    spec = parse_experiment_key("full-r0.5-s0-photometric")
    assert (spec.group, spec.uses_synthetic) == ("full-r0.5-photometric", False)
    with pytest.raises(ExperimentError, match="ratio 0 is the real-only run"):
        ExperimentSpec(seed=0, regime="few_shot", ratio=0.0, arm="photometric")


def test_photometric_copies_vary_intensity_reproducibly_and_keep_the_shape():
    from synthaug_pipeline.lib.photometric import photometric_copies

    rng = np.random.default_rng(0)
    images = rng.integers(40, 200, size=(64, 8, 8, 3), dtype=np.uint8)
    a, b, other = photometric_copies(images, seed=3), photometric_copies(images, seed=3), photometric_copies(images, seed=4)
    assert a.dtype == np.uint8 and a.shape == images.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other)
    means = a.reshape(64, -1).mean(axis=1) - images.reshape(64, -1).mean(axis=1)
    spreads = a.reshape(64, -1).std(axis=1) / images.reshape(64, -1).std(axis=1)
    assert means.min() < -15 and means.max() > 15  # darker and brighter copies
    assert spreads.min() < 0.8 and spreads.max() > 1.2  # lower and higher contrast
    grey = np.repeat(images[..., :1], 3, axis=3)  # one factor for every channel: a grey image stays grey
    np.testing.assert_array_equal(np.ptp(photometric_copies(grey, seed=3), axis=3), 0)
    with pytest.raises(ValueError, match=r"uint8 images shaped \[N, H, W, C\]"):
        photometric_copies(images.astype(np.float32), seed=0)


def test_few_shot_subsets_vary_with_the_seed_and_the_control_generator_sees_the_same_one():
    from synthaug_pipeline.lib.experiments import few_shot_subset

    labels = np.repeat([0, 1], 50)
    cfg = ExperimentsConfig(few_shot_k=5)
    by_seed = {s: plan_experiment(parse_experiment_key(f"few_shot-r0-s{s}"), cfg, labels, None, CLASSES).real_indices for s in (0, 1)}
    assert not np.array_equal(by_seed[0], by_seed[1])
    for seed in (0, 1):
        np.testing.assert_array_equal(few_shot_subset(labels, cfg, seed, 2), by_seed[seed])
        control = plan_experiment(parse_experiment_key(f"few_shot-r1-s{seed}-control"), cfg, labels, np.repeat([0, 1], 6), CLASSES)
        np.testing.assert_array_equal(control.real_indices, by_seed[seed])
    with pytest.raises(ExperimentError, match="the control generator made only 3; raise experiments.control_images_per_class"):
        plan_experiment(parse_experiment_key("few_shot-r1-s0-control"), cfg, labels, np.repeat([0, 1], 3), CLASSES)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["generator.backend=text2img", "generator.model=/models/sd", "experiments.arms=[filtered, retrieval]"],
            "the retrieval arm draws real images from the generator's training pool, but generator.backend=text2img is a pretrained "
            "model whose training pool is unknown",
        ),
        (
            ["filter.top_k=20", "experiments.ratios=[0, 3]"],
            r"ratio 3 needs 30 accepted synthetic images of class '0' \(3 x 10 real kept by few_shot\) but at most filter.top_k=20 can be accepted",
        ),
        (
            ["experiments.arms=[retrieval]", "experiments.few_shot_k=60", "experiments.ratios=[0, 1]"],
            r"few_shot-r1-s0-retrieval: the retrieval arm needs 60 more real images of class '0'",
        ),
        (["data.validation_fraction=0", "experiments.validation_per_class=10"], "experiments.validation_per_class needs a validation split"),
        (
            ["experiments.arms=[control]", "experiments.control_images_per_class=20", "experiments.ratios=[0, 3]"],
            r"few_shot-r3-s0-control: ratio 3 needs 30 .* experiments.control_images_per_class=20",
        ),
    ],
)
def test_preflight_refuses_arms_and_pools_that_cannot_exist_in_one_line(overrides, message):
    from synthaug_pipeline.lib.preflight import check_experiment_grid

    with pytest.raises(ProfileError, match=message) as raised:
        profile = load_profile("digits", ["experiments.seeds=[0]", *overrides])
        check_experiment_grid(profile, [str(i) for i in range(10)], [100] * 10)
    assert "\n" not in str(raised.value)


def test_fingerprint_of_a_control_run_follows_its_generator_and_retrieval_ignores_shards():
    profile = load_profile("digits", [])
    control = parse_experiment_key("few_shot-r3-s0-control")
    assert setup_fingerprint(control, profile, ["a"], "v1") != setup_fingerprint(control, profile, ["a"], "v2")
    retrieval = parse_experiment_key("few_shot-r3-s0-retrieval")
    assert setup_fingerprint(retrieval, profile, ["a"]) == setup_fingerprint(retrieval, profile, ["b"])
    assert setup_fingerprint(retrieval, profile, []) != setup_fingerprint(parse_experiment_key("few_shot-r3-s0"), profile, [])


def test_control_generator_samples_what_the_grid_draws_unless_told():
    """The control's samples are unfiltered and every one is drawn: by default it samples ceil(largest few-shot ratio x k)
    per class, not generator.images_per_class (200 per class for a grid that draws 30 was most of the arm's cost)."""
    profile = load_profile("fashion-headline", [])
    assert profile.experiments.control_images_per_class is None
    assert control_images_per_class(profile.experiments) == 30  # ratio 3 x 10 real
    wider = ExperimentsConfig(ratios=[0, 1.5], ratios_by_regime={"few_shot": [0, 2.5, 6.25]}, few_shot_k=8, arms=["control"])
    assert control_images_per_class(wider) == 50  # ceil(6.25 x 8): the few-shot ratios, not the shared ones
    assert control_images_per_class(ExperimentsConfig(ratios=[0], arms=["control"])) == 1
    assert control_images_per_class(ExperimentsConfig(control_images_per_class=7, arms=["control"])) == 7
    control = parse_experiment_key("few_shot-r3-s0-control")
    told = load_profile("fashion-headline", ["experiments.control_images_per_class=30"])
    assert setup_fingerprint(control, profile, [], "v") == setup_fingerprint(control, told, [], "v")  # the same samples either way


def test_targeted_allocation_keeps_the_total_gives_weak_classes_more_and_respects_the_pools():
    from synthaug_pipeline.lib.experiments import targeted_allocation

    uniform, plenty = [30, 30, 30, 30], [200] * 4
    assert targeted_allocation(uniform, [0.6, 0.2, 0.2, 0.0], plenty, floor=1.0) == uniform  # floor 1: the filtered arm's counts
    assert targeted_allocation(uniform, [0.0] * 4, plenty, floor=0.0) == uniform  # a perfect classifier: shared evenly
    half = targeted_allocation(uniform, [0.6, 0.2, 0.2, 0.0], plenty, floor=0.5)
    assert half == [15 + 36, 15 + 12, 15 + 12, 15] and sum(half) == 120  # half evenly, half by error (60/20/20/0 %)
    errors_only = targeted_allocation(uniform, [0.5, 0.25, 0.25, 0.0], plenty, floor=0.0)
    assert errors_only == [60, 30, 30, 0]
    # a class offered more than its pool holds takes all of it; the others share what it could not take, in proportion
    capped = targeted_allocation(uniform, [0.5, 0.25, 0.25, 0.0], [40, 200, 200, 200], floor=0.0)
    assert capped == [40, 40, 40, 0] and sum(capped) == 120
    # rounding by largest remainder: the total is exact
    odd = targeted_allocation([3, 3, 3], [0.3, 0.3, 0.3], [10] * 3, floor=0.3)
    assert sum(odd) == 9 and odd == [3, 3, 3]
    skewed = targeted_allocation([7, 7, 7], [0.9, 0.05, 0.05], [100] * 3, floor=0.2)
    assert sum(skewed) == 21 and skewed[0] > 7 > skewed[1]
    with pytest.raises(ExperimentError, match="shares out 120 accepted synthetic images but the classes hold only 100"):
        targeted_allocation(uniform, [0.1] * 4, [25] * 4, floor=0.5)
    with pytest.raises(ExperimentError, match=r"errors must lie in \[0, 1\]"):
        targeted_allocation(uniform, [0.1, 0.2, 1.5, 0.0], plenty, floor=0.5)


def test_targeted_plan_draws_the_filtered_total_nested_with_the_filtered_draw():
    labels = np.repeat([0, 1], 20)
    pool = np.repeat([0, 1], 30)
    cfg = ExperimentsConfig(few_shot_k=4)
    filtered = plan_experiment(parse_experiment_key("few_shot-r3-s2"), cfg, labels, pool, CLASSES)
    targeted = plan_experiment(parse_experiment_key("few_shot-r3-s2-targeted"), cfg, labels, pool, CLASSES, class_errors=[0.5, 0.0])
    np.testing.assert_array_equal(targeted.real_indices, filtered.real_indices)
    assert filtered.synthetic_per_class == {"a": 12, "b": 12}
    assert targeted.synthetic_per_class == {"a": 15, "b": 9}  # floor 0.75 (the default): 9 each evenly, 6 to the class it gets wrong
    assert not targeted.extra_from_real
    for c in (0, 1):  # the same seeded permutation per class: one draw is a prefix of the other
        small, large = sorted((set(filtered.synthetic_indices[pool[filtered.synthetic_indices] == c]),
                               set(targeted.synthetic_indices[pool[targeted.synthetic_indices] == c])), key=len)
        assert small <= large
    with pytest.raises(ExperimentError, match="needs the per-class validation errors of few_shot-r0-s2"):
        plan_experiment(parse_experiment_key("few_shot-r3-s2-targeted"), cfg, labels, pool, CLASSES)
    with pytest.raises(ExperimentError, match="few_shot-r8-s2-targeted: it shares out 64 accepted synthetic images but the classes hold only 60"):
        plan_experiment(parse_experiment_key("few_shot-r8-s2-targeted"), cfg, labels, pool, CLASSES, class_errors=[0.5, 0.0])
    spec = parse_experiment_key("few_shot-r3-s2-targeted")
    assert (spec.group, spec.uses_synthetic, spec.real_only_partner.key) == ("few_shot-r3-targeted", True, "few_shot-r0-s2")
    profile = load_profile("digits", ["experiments.arms=[filtered, targeted]"])
    other_floor = load_profile("digits", ["experiments.arms=[filtered, targeted]", "experiments.targeted_floor=0.2"])
    assert setup_fingerprint(spec, profile, ["x"]) != setup_fingerprint(spec, other_floor, ["x"])
    filtered_spec = parse_experiment_key("few_shot-r3-s2")
    assert setup_fingerprint(filtered_spec, profile, ["x"]) == setup_fingerprint(filtered_spec, other_floor, ["x"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.validation_fraction=0", "experiments.arms=[targeted]", "experiments.ratios=[0, 1]"],
            "the targeted arm shares images out by the real-only run's per-class validation error: set data.validation_fraction > 0",
        ),
        (
            ["data.validation_fraction=0.1", "experiments.arms=[targeted]", "experiments.ratios=[1]"],
            "grid point few_shot-r1-s0-targeted: .* of few_shot-r0-s0, which the grid does not train: add 0 to experiments.ratios",
        ),
        (
            ["data.validation_fraction=0.1", "experiments.arms=[targeted]", "experiments.ratios=[0, 3]", "filter.top_k=20"],
            r"few_shot-r3-s0-targeted: the targeted arm shares out 300 accepted synthetic images .* but 10 classes x filter.top_k=20 hold at most 200",
        ),
    ],
)
def test_preflight_refuses_a_targeted_arm_without_its_partner_validation_or_pool(overrides, message):
    from synthaug_pipeline.lib.preflight import check_experiment_grid

    with pytest.raises(ProfileError, match=message) as raised:
        check_experiment_grid(load_profile("digits", ["experiments.seeds=[0]", *overrides]), [str(i) for i in range(10)], [100] * 10)
    assert "\n" not in str(raised.value)
    fits = load_profile("digits", ["experiments.seeds=[0]", "data.validation_fraction=0.1", "experiments.arms=[targeted]", "experiments.ratios=[0, 2]", "filter.top_k=20"])
    check_experiment_grid(fits, [str(i) for i in range(10)], [100] * 10)  # 200 in all fit 10 x 20, however they are shared out
