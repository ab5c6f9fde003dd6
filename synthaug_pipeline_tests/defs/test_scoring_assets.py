"""Scoring through Dagster on two digit classes at tiny sizes: features, scores, filtered shards, checks, bad input."""

import dataclasses
import shutil

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
import torch

from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.defs.resources import SynthaugSettings
from synthaug_pipeline.defs.scoring import assets as scoring_assets
from synthaug_pipeline.defs.scoring.assets import build_scoring_assets
from synthaug_pipeline.lib.diffusion import SyntheticClass
from synthaug_pipeline.lib.scoring import ScoredClass
from synthaug_pipeline.lib.shard_checks import (
    SHARD_CHECKS,
    accepted_test_leak_check,
    metrics_computed_check,
    metrics_markdown,
    near_duplicates_markdown,
    non_finite_scores,
)
from synthaug_pipeline.lib.config import load_profile
from synthaug_pipeline.lib.filtering import FilterPolicy, policy_json_version
from synthaug_pipeline.lib.shard_filtering import filter_policy, filter_version, refilter_table
from synthaug_pipeline.lib.scoring import ClassScores, score_class
from synthaug_pipeline.lib.shard_reading import read_shards
from synthaug_pipeline.orchestration import STAGES, PipelineError, _only_blocking_checks_failed, run_pipeline
from synthaug_pipeline_tests.lib.test_clip_score import write_tiny_clip

CLASSES = ["0", "1"]


def tiny_overrides(output: str) -> list[str]:
    return [
        "data.classes=['0', '1']",
        "data.train_per_class=20",
        "data.test_per_class=10",
        "generator.block_out_channels=[16, 32]",
        "generator.train_steps=10",
        "generator.warmup_steps=2",
        "generator.images_per_class=10",
        "generator.sample_steps=2",
        "judge.model=synthaug_cnn_small",
        "judge.steps=20",
        "augmented.synthetic_ratio=0.1",
        "filter.min_confidence=0.0",
        "filter.require_label_match=false",
        f"output.url={output}",
    ]


def _materialize(
    defs: dg.Definitions, selection: list[str], partition: str | None, instance, strict: bool = True
) -> dg.ExecuteInProcessResult:
    """One run; with ``strict=False`` a run whose only failures are failed blocking checks is returned, not raised."""
    result = dg.materialize(
        list(defs.assets),
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources=dict(defs.resources),
        raise_on_error=strict,
    )
    assert result.success or _only_blocking_checks_failed(result)
    return result


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {check.check_name: check.passed for check in result.get_asset_check_evaluations()}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Every stage up to the shards (not training), for both classes, with a tiny CLIP model configured."""
    root = tmp_path_factory.mktemp("scoring")
    clip = write_tiny_clip(root / "clip")
    overrides = [*tiny_overrides(str(root / "output")), f"scoring.clip_model={clip}"]
    defs = build_definitions("digits", overrides)
    with dg.instance_for_test() as instance:
        results = {}
        for stage in STAGES:
            if stage.name == "classifiers":
                break
            for partition in CLASSES if stage.per_class else [None]:
                results[(stage.name, partition)] = _materialize(defs, list(stage.assets), partition, instance)
        yield {"defs": defs, "instance": instance, "results": results, "overrides": overrides, "root": root, "clip": clip}


def _value(scored, asset: str, partition: str):
    return scored["results"][("synthetic", partition)].output_for_node(asset)[partition]


def _variant(scored, name: str, *extra: str) -> dg.Definitions:
    """Definitions writing to a fresh output folder that starts with the module run's stored values."""
    output = scored["root"] / name
    shutil.copytree(scored["root"] / "output" / "assets", output / "assets")
    return build_definitions("digits", [*scored["overrides"], f"output.url={output}", *extra])


def _metadata(scored, asset: str, partition: str) -> dict:
    records = scored["instance"].fetch_materializations(dg.AssetKey(asset), limit=100).records
    record = next(r for r in records if r.partition_key == partition)
    return record.asset_materialization.metadata


# --------------------------------------------------------------------------------------------------
# The normal run
# --------------------------------------------------------------------------------------------------


def test_real_features_hold_train_and_test_features_with_the_extractor_name(scored):
    for class_id in CLASSES:
        features = _value(scored, "real_features", class_id)
        assert features.error is None
        assert features.extractor.startswith("judge:synthaug_cnn_small@") and features.extractor.endswith("/penultimate")
        assert features.train.shape[0] == 20 and features.test.shape[0] == 10
        assert features.train.shape[1] == features.test.shape[1] == 64
        assert np.isfinite(features.train).all() and np.isfinite(features.test).all()
        assert _metadata(scored, "real_features", class_id)["extractor"].value == features.extractor


def test_synthetic_scores_record_every_metric_with_profile_settings(scored):
    for class_id in CLASSES:
        record = _value(scored, "synthetic_scores", class_id)
        summary, scores = record.summary, record.scores
        assert record.error is None and summary["error"] is None
        assert summary["feature_extractor"] == _value(scored, "real_features", class_id).extractor
        assert summary["n_synthetic"] == 10 and summary["n_real"] == 20 and summary["n_test"] == 10
        for key in ("fid", "kid_mean", "kid_std", "diversity", "real_diversity", "diversity_ratio", "precision", "recall", "density"):
            assert isinstance(summary[key], float) and np.isfinite(summary[key]), key
        assert summary["ranking_metric"] == "kid_mean" and summary["kid_subset_size"] is None and summary["kid_num_subsets"] == 1
        assert summary["prdc_k"] == 5 and summary["duplicate_threshold_rule"].startswith("0.5 x median")
        assert record.duplicate_threshold == summary["duplicate_threshold"] > 0
        assert scores.nearest_test_distance.shape == (10,) and scores.is_test_leak.shape == (10,)
        assert summary["train_copies"] == int(scores.is_train_copy.sum()) and summary["test_leaks"] == int(scores.is_test_leak.sum())
        # CLIP score with the configured model, one per image, against the class prompt.
        assert summary["clip_model"] == f"open_clip:{scored['clip']}"
        assert scores.clip_score.shape == (10,) and np.all(np.abs(scores.clip_score) <= 1.0)
        assert summary["mean_clip_score"] == pytest.approx(float(scores.clip_score.mean()))
        metadata = _metadata(scored, "synthetic_scores", class_id)
        table = metadata["metrics"].value
        assert "| KID (ranking metric) |" in table and summary["feature_extractor"] in table and "CLIP" in table
        assert "judge_confidence_histogram" in metadata and "nearest_real_distance_histogram" in metadata
        assert metadata["fid"].value == pytest.approx(summary["fid"], rel=1e-3)  # rounded to 4 significant digits
        assert metadata["seconds"].value >= 0 and _metadata(scored, "real_features", class_id)["seconds"].value >= 0
        assert "**near-duplicates** (feature distance <=" in metadata["near_duplicates"].value
        # Each image's nearest real training / test image, as rows of real_images[c]["train"] / ["test"].
        assert scores.nearest_real_index.shape == scores.nearest_test_index.shape == (10,)
        assert scores.nearest_real_index.max() < 20 and scores.nearest_test_index.max() < 10


def test_shards_apply_the_full_policy_and_refiltering_reproduces_them(scored):
    profile = load_profile("digits", scored["overrides"])
    for class_id in CLASSES:
        shard = _value(scored, "synthetic_shards", class_id)
        record = _value(scored, "synthetic_scores", class_id)
        scores = record.scores
        table = read_shards([shard.uri], accepted_only=False)
        assert table.num_rows == 10 and shard.error is None
        version = filter_version(profile.filter, duplicate_threshold=record.duplicate_threshold)
        assert set(table.column("filter_version").to_pylist()) == {version} == {shard.filter_version}
        # Every row carries the policy itself: the canonical JSON its version is the hash of.
        policy_json = filter_policy(profile.filter, duplicate_threshold=record.duplicate_threshold)
        assert set(table.column("filter_policy").to_pylist()) == {policy_json} == {shard.filter_policy}
        assert policy_json_version(policy_json) == version and '"min_confidence":0.0' in policy_json
        accepted = np.asarray(table.column("accepted"))
        # The default policy drops training copies and test leaks.
        assert not (accepted & scores.is_train_copy).any() and not (accepted & scores.is_test_leak).any()
        np.testing.assert_allclose(np.asarray(table.column("clip_score")), scores.clip_score, rtol=1e-6)
        # What the cached scores keep is enough to re-filter the shard exactly.
        policy = vars(FilterPolicy.from_config(profile.filter))
        again = refilter_table(
            table, record.class_index, duplicate_threshold=record.duplicate_threshold, test_leak=scores.is_test_leak, **policy
        )
        assert again.equals(table)


def test_every_class_gets_blocking_checks_that_pass_on_good_data(scored):
    spec_blocking = {spec.name: spec.blocking for spec in scored["defs"].get_assets_def("synthetic_shards").check_specs}
    assert spec_blocking == {name: True for name in SHARD_CHECKS}
    assert "metrics_computed" in SHARD_CHECKS
    for class_id in CLASSES:
        assert _checks(scored["results"][("synthetic", class_id)]) == {name: True for name in SHARD_CHECKS}
        # The outcome travels with the shard, for training to refuse failed ones.
        assert _value(scored, "synthetic_shards", class_id).checks == {name: True for name in SHARD_CHECKS}
        metadata = _metadata(scored, "synthetic_shards", class_id)
        assert "accepted_preview" in metadata and "rejected_preview" in metadata and "near_duplicates" in metadata
        assert metadata["seconds"].value >= 0
    records = scored["instance"].fetch_materializations(dg.AssetKey("judge"), limit=1).records
    assert records[0].asset_materialization.metadata["seconds"].value >= 0


def test_top_k_policy_and_accepted_leaks_fail_the_leak_check(scored):
    """Re-materialize shards only (cached scores) with a top-k policy that keeps test leaks."""
    defs = _variant(scored, "topk", "filter.top_k=3", "filter.drop_test_leaks=false")
    result = _materialize(defs, ["synthetic_shards"], "0", scored["instance"], strict=False)
    shard = result.output_for_node("synthetic_shards")["0"]
    scores = _value(scored, "synthetic_scores", "0").scores
    table = read_shards([shard.uri], accepted_only=False)
    accepted = np.asarray(table.column("accepted"))
    clean = ~scores.is_train_copy
    assert accepted.sum() == min(3, int(clean.sum()))
    assert not (accepted & scores.is_train_copy).any()
    leaks = int((accepted & scores.is_test_leak).sum())
    checks = _checks(result)
    assert checks["no_test_leaks_accepted"] is (leaks == 0) and shard.checks == checks
    # Whatever this data holds, the outcome travels with the shard; the failing path on a known leak is below.


def _leaky_run(scored, tmp_path, drop_test_leaks: bool) -> dg.ExecuteInProcessResult:
    """Real scoring assets of class 0 in a fresh instance, on its synthetic images with image 0 replaced by test image 4."""
    extra = ["filter.drop_train_copies=false", f"filter.drop_test_leaks={str(drop_test_leaks).lower()}"]
    defs = build_definitions("digits", [*scored["overrides"], f"output.url={tmp_path}", *extra])
    partitions = defs.get_assets_def("synthetic_scores").partitions_def
    judge_value = scored["results"][("models", None)].output_for_node("judge")
    real = scored["results"][("real images", "0")].output_for_node("real_images")["0"]
    original = _value(scored, "synthetic_images", "0")
    synthetic = dataclasses.replace(original, images=original.images.copy())
    assert synthetic.images.shape[1:] == real.test.shape[1:] and synthetic.images.dtype == real.test.dtype
    synthetic.images[0] = real.test[4]  # a generator that reproduced a held-out test image

    @dg.asset(name="judge")
    def judge_stub():
        return judge_value

    @dg.asset(name="real_images", partitions_def=partitions)
    def real_images_stub():
        return real

    @dg.asset(name="synthetic_images", partitions_def=partitions)
    def synthetic_images_stub():
        return synthetic

    scoring = [defs.get_assets_def(key) for key in ("real_features", "synthetic_scores", "synthetic_shards")]
    assets = [judge_stub, real_images_stub, synthetic_images_stub, *scoring]
    resources = dict(defs.resources)
    with dg.instance_for_test() as instance:
        assert dg.materialize(assets, selection=["judge"], instance=instance, resources=resources).success
        per_class = ["real_images", "synthetic_images", "real_features", "synthetic_scores", "synthetic_shards"]
        result = dg.materialize(
            assets, selection=per_class, partition_key="0", instance=instance, resources=resources, raise_on_error=False
        )
    assert result.success or _only_blocking_checks_failed(result)
    return result


@pytest.mark.parametrize("drop_test_leaks", [False, True])
def test_a_copy_of_a_test_image_fails_the_leak_check_unless_dropped(scored, tmp_path, drop_test_leaks):
    result = _leaky_run(scored, tmp_path, drop_test_leaks)
    scores = result.output_for_node("synthetic_scores")["0"].scores
    assert scores.is_test_leak[0] and scores.nearest_test_index[0] == 4
    assert scores.nearest_test_distance[0] == pytest.approx(0.0, abs=1e-4)
    shard = result.output_for_node("synthetic_shards")["0"]
    accepted = np.asarray(read_shards([shard.uri], accepted_only=False).column("accepted"))
    checks = _checks(result)
    assert shard.checks == checks
    if drop_test_leaks:
        assert not accepted[0] and checks == {name: True for name in SHARD_CHECKS}
    else:
        # Thresholds at 0 and no duplicate rule: every image is accepted, the leak with them.
        assert accepted.all() and checks["no_test_leaks_accepted"] is False and result.success is False
        assert {name for name, ok in checks.items() if not ok} == {"no_test_leaks_accepted"}
        evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "no_test_leaks_accepted")
        assert evaluation.metadata["accepted_test_leaks"].value >= 1
    # The flagged pair is shown next to its nearest real image's row.
    table = near_duplicates_markdown(scores)
    assert "| 0 | " in table and "test[4]" in table
    materialization = result.asset_materializations_for_node("synthetic_shards")[0]
    assert "test[4]" in materialization.metadata["near_duplicates"].value
    assert "flagged synthetic images" in materialization.metadata["near_duplicates"].value


# --------------------------------------------------------------------------------------------------
# Bad input: the class says why, its checks fail, other classes carry on.
# These tests write new materializations into the shared instance, so they come after the tests
# above and each re-materializes what an earlier one may have replaced.
# --------------------------------------------------------------------------------------------------


def test_missing_extractor_fails_that_class_with_a_clear_message(scored):
    # Without weights (and, where the imagenet extra is not installed, without torch-fidelity) the
    # Inception extractor cannot be built; either way the message names what to set or install.
    defs = _variant(scored, "inception", "scoring.feature_extractor=inception")
    result = _materialize(defs, ["real_features", "synthetic_scores", "synthetic_shards"], "1", scored["instance"], strict=False)
    # Nothing raised: the class is scored as "not scored", its shard is written, and only its blocking checks fail.
    assert not result.success and _only_blocking_checks_failed(result)
    record = result.output_for_node("synthetic_scores")["1"]
    assert record.scores is None and record.error.startswith("class 1: features from inception failed:")
    assert "scoring.feature_extractor=inception needs" in record.error
    shard = result.output_for_node("synthetic_shards")["1"]
    assert shard.num_rows == 0 and shard.error == record.error
    checks = _checks(result)
    assert checks["scores_finite"] is False and checks["has_accepted_images"] is False and checks["schema_matches_contract"] is True


def test_nan_features_fail_only_that_class(scored, monkeypatch):
    real_score_class = scoring_assets.score_class

    def nan_features_in_class_1(probs, features, class_index, *args, **kwargs):
        if class_index == 1:  # e.g. an extractor that overflows on this class's images
            features = features.copy()
            features[2] = np.nan
        return real_score_class(probs, features, class_index, *args, **kwargs)

    monkeypatch.setattr(scoring_assets, "score_class", nan_features_in_class_1)
    defs = _variant(scored, "nan")
    outcome = {}
    for class_id in CLASSES:
        result = _materialize(defs, ["real_features", "synthetic_scores", "synthetic_shards"], class_id, scored["instance"], strict=False)
        outcome[class_id] = (result.output_for_node("synthetic_scores")[class_id].error, _checks(result))
    error, checks = outcome["1"]
    assert error.startswith("class 1: scoring failed:") and "features has 1 of 10 rows with NaN or inf values" in error
    assert checks["scores_finite"] is False
    assert outcome["0"] == (None, {name: True for name in SHARD_CHECKS})


def test_one_image_class_is_scored_with_warnings(scored):
    defs = _variant(scored, "one", "generator.images_per_class=1")
    result = _materialize(defs, ["synthetic_images", "synthetic_scores", "synthetic_shards"], "0", scored["instance"], strict=False)
    summary = result.output_for_node("synthetic_scores")["0"].summary
    assert summary["error"] is None and summary["n_synthetic"] == 1
    assert summary["fid"] is None and summary["kid_mean"] is None and summary["diversity"] is None
    assert any("fid/kid need at least 2" in w for w in summary["warnings"])
    checks = _checks(result)
    assert checks["scores_finite"] is True and checks["schema_matches_contract"] is True
    assert result.output_for_node("synthetic_shards")["0"].num_rows == 1
    # Unranked: FID and KID are missing, so the blocking metrics check fails, naming the class and why.
    assert checks["metrics_computed"] is False and result.output_for_node("synthetic_shards")["0"].checks == checks
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "metrics_computed")
    message = evaluation.metadata["message"].value
    assert message.startswith("class 0: FID and KID could not be computed: fid/kid need at least 2 synthetic")


def test_empty_class_by_direct_invocation(tmp_path):
    """No synthetic images at all: scored (empty), an empty shard, and the count check fails."""
    _, _, scores_def, shards_def = build_scoring_assets(dg.StaticPartitionsDefinition(CLASSES))
    settings = SynthaugSettings(profile="digits", overrides=[f"output.url={tmp_path}", "filter.min_accepted_per_class=1"])
    images = np.zeros((0, 8, 8, 1), np.uint8)
    synthetic = SyntheticClass("0", 0, images, [], "ddpm", "g", "v", "ddim", 2, 1.0)
    scores = score_class(
        np.zeros((0, 10)), np.zeros((0, 4)), 0, np.random.default_rng(0).normal(size=(6, 4)), "x", test_features=np.ones((2, 4))
    )
    record = ScoredClass("0", 0, scores, scores.summary)
    with dg.build_asset_context(partition_key="0", resources={"settings": settings}) as context:
        events = list(shards_def(context, synthetic_images={"0": synthetic}, synthetic_scores={"0": record}))
    output, checks = events[0].value["0"], {e.check_name: e.passed for e in events[1:]}
    assert output.num_rows == 0 and read_shards([output.uri], accepted_only=False).num_rows == 0
    assert checks == {
        "has_accepted_images": False,
        "no_test_leaks_accepted": True,
        "scores_finite": True,
        "metrics_computed": False,
        "schema_matches_contract": True,
    }
    assert output.checks == checks


def test_pipeline_with_a_missing_extractor_scores_every_class_then_refuses_to_train(tmp_path):
    overrides = [*tiny_overrides(str(tmp_path)), "scoring.feature_extractor=inception"]
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        with pytest.raises(PipelineError, match=r"synthetic_shards\[0\] scores_finite.*synthetic_shards\[1\] scores_finite"):
            run_pipeline("digits", overrides, instance, echo=lines.append)
    assert any("class 1" in line for line in lines)  # class 1 was scored after class 0 failed its checks
    assert not (tmp_path / "report.json").exists()


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------


def _scores(**kwargs) -> ClassScores:
    base = {
        "judge_confidence": np.array([0.9, 0.8, 0.7]),
        "judge_top1": np.array([0, 0, 0]),
        "nearest_real_distance": np.array([1.0, 2.0, 3.0]),
        "summary": {"n_test": 2, "fid": 1.5},
    }
    return ClassScores(**{**base, **kwargs})


def test_accepted_test_leak_check_cases():
    accepted = np.array([True, True, False])
    assert accepted_test_leak_check(_scores(is_test_leak=np.array([False, False, True])), accepted)[0] is True
    passed, metadata = accepted_test_leak_check(_scores(is_test_leak=np.array([False, True, False])), accepted)
    assert passed is False and metadata["accepted_test_leaks"] == 1
    # Leak status unknown (no threshold) while test images exist: accepted rows cannot be trusted.
    assert accepted_test_leak_check(_scores(), accepted)[0] is False
    assert accepted_test_leak_check(_scores(), np.zeros(3, bool))[0] is True
    assert accepted_test_leak_check(_scores(summary={"n_test": 0}), accepted)[0] is True  # no test set, no leak
    assert accepted_test_leak_check(None, np.zeros(0, bool))[0] is True


def test_non_finite_scores_names_what_is_broken():
    assert non_finite_scores(_scores()) == []
    assert non_finite_scores(_scores(nearest_real_distance=np.array([1.0, np.inf, 0.0]))) == ["nearest_real_distance"]
    assert non_finite_scores(_scores(summary={"fid": float("nan"), "kid_mean": None})) == ["fid"]


def test_metrics_markdown_names_the_extractor_and_the_error():
    table = metrics_markdown({"feature_extractor": "judge:x", "kid_mean": 0.0123456, "fid": None, "warnings": ["few images"]})
    assert "Features: `judge:x`" in table and "| KID (ranking metric) | 0.01235 |" in table and "| FID | n/a |" in table
    assert "KID on" not in table
    subsets = metrics_markdown({"feature_extractor": "judge:x", "kid_subset_size": 50, "kid_num_subsets": 100})
    assert "; KID on 100 subsets of 50" in subsets
    assert "- few images" in table
    failed = metrics_markdown({"feature_extractor": "inception", "error": "class 3: no weights"})
    assert "**not scored**: class 3: no weights" in failed


def test_metrics_computed_check_messages():
    assert metrics_computed_check("3", {"fid": 1.0, "kid_mean": 0.01}) == (True, {"fid": 1.0, "kid_mean": 0.01})
    passed, metadata = metrics_computed_check("3", {"fid": 2.0, "kid_mean": None, "n_synthetic": 5, "n_real": 9, "warnings": []})
    assert passed is False and metadata["message"] == "class 3: KID could not be computed: 5 synthetic and 9 real images"
    passed, metadata = metrics_computed_check("3", {"n_synthetic": 4, "error": "class 3: scoring failed: boom"})
    expected = "class 3: FID and KID could not be computed: class 3: scoring failed: boom"
    assert passed is False and metadata == {"message": expected, "n_synthetic": 4}


def test_near_duplicates_markdown_lists_each_flagged_pair():
    scores = _scores(
        summary={"duplicate_threshold": 0.5},
        is_train_copy=np.array([False, True, False]),
        is_test_leak=np.array([False, True, True]),
        nearest_real_index=np.array([4, 7, 2]),
        nearest_test_index=np.array([0, 1, 9]),
        nearest_test_distance=np.array([5.0, 0.25, 0.0]),
    )
    table = near_duplicates_markdown(scores).splitlines()
    assert table[0] == "**near-duplicates** (feature distance <= 0.5): 2 flagged"
    assert table[4:] == [
        "| 1 | training copy + test leak | train[7] | 2 | test[1] | 0.25 |",
        "| 2 | test leak | train[2] | 3 | test[9] | 0 |",
    ]
    assert near_duplicates_markdown(_scores(summary={"duplicate_threshold": 0.5}, is_train_copy=np.zeros(3, bool))).endswith(": 0 flagged")
    assert "not checked" in near_duplicates_markdown(_scores()) and "not scored" in near_duplicates_markdown(None)


def test_refilter_table_needs_pa_table():
    with pytest.raises(ValueError, match="pyarrow.Table"):
        refilter_table(pa.table({"a": [1]}).to_batches()[0], 0)
