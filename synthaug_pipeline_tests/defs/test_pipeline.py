"""The whole graph through Dagster on two digit classes at tiny sizes."""

import json

import dagster as dg
import numpy as np
import pytest

from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.lib.config import load_profile
from synthaug_pipeline.lib.shard_reading import read_shards
from synthaug_pipeline.lib.shard_schema import SHARD_SCHEMA
from synthaug_pipeline.lib.shards import list_class_shards
from synthaug_pipeline.orchestration import PipelineError, run_pipeline


def tiny_overrides(output: str) -> list[str]:
    return [
        "data.classes=['0', '1']",
        "data.test_per_class=20",
        "generator.block_out_channels=[16, 32]",
        "generator.train_steps=30",
        "generator.warmup_steps=5",
        "generator.images_per_class=12",
        "generator.sample_steps=4",
        "judge.steps=30",
        "classifier.steps=20",
        "filter.min_confidence=0.0",
        "filter.require_label_match=false",
        "augmented.synthetic_ratio=0.04",  # ceil(0.04 x ~127 real) = 6 of the 12 generated per class
        "evaluation.severities=[2]",
        f"output.url={output}",
    ]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("output"))
    with dg.instance_for_test() as instance:
        lines: list[str] = []
        result = run_pipeline("digits", tiny_overrides(output), instance, echo=lines.append)
        records = {
            key: instance.fetch_materializations(dg.AssetKey(key), limit=100).records
            for key in ("real_images", "synthetic_shards", "classifier_augmented", "report")
        }
        yield output, result, lines, records, instance


def test_every_stage_runs_and_reports(pipeline_run):
    output, result, lines, records, _ = pipeline_run
    assert set(result.seconds) == {"catalog", "real images", "models", "synthetic", "classifiers"}
    assert result.failed_checks == []
    assert any("classes 0..1 (2)" in line for line in lines)  # both classes in one run (execution.classes_per_run)
    for model in ("classifier_baseline", "classifier_augmented"):
        top1 = result.evaluation["models"][model]["in_domain"]["top1"]
        assert 0.0 <= top1 <= 1.0
        assert set(result.evaluation["models"][model]["in_domain"]["per_class"]) == {"0", "1"}
    report = json.loads(open(f"{output}/report.json").read())
    assert report["dataset"]["class_ids"] == ["0", "1"]
    assert "| top-1 in-domain |" in open(f"{output}/report.md").read()


def test_per_class_partitions_are_materialized_once_each(pipeline_run):
    _, _, _, records, _ = pipeline_run
    assert sorted(r.partition_key for r in records["real_images"]) == ["0", "1"]
    assert sorted(r.partition_key for r in records["synthetic_shards"]) == ["0", "1"]
    assert len(records["report"]) == 1


def test_every_materialization_keeps_its_metadata_under_the_cap(pipeline_run):
    from dagster._serdes import serialize_value

    from synthaug_pipeline.lib.metadata import METADATA_LIMIT_BYTES

    _, _, _, _, instance = pipeline_run
    sizes = {}
    for key in instance.get_asset_keys():
        for record in instance.fetch_materializations(key, limit=100).records:
            materialization = record.asset_materialization
            sizes[key.to_user_string(), materialization.partition] = len(serialize_value(materialization))
    assert {"real_images", "synthetic_images", "synthetic_scores", "synthetic_shards"} <= {asset for asset, _ in sizes}
    assert max(sizes.values()) <= METADATA_LIMIT_BYTES, sorted(sizes.items(), key=lambda item: -item[1])[:3]
    # the previews are thumbnails: a class partition's images and scores stay far under the cap
    assert max(size for (asset, partition), size in sizes.items() if partition is not None) <= 64 * 1024


def test_shards_carry_provenance_and_feed_the_augmented_model(pipeline_run):
    output, _, _, records, _ = pipeline_run
    uris = [u for c in ("0", "1") for u in list_class_shards(f"{output}/synthetic_shards", c)]
    assert len(uris) == 2
    table = read_shards(uris, accepted_only=False)
    assert table.num_rows == 24
    assert table.schema.remove_metadata().equals(SHARD_SCHEMA.remove_metadata())
    assert len(set(table.column("seed").to_pylist())) == 24
    assert set(table.column("sampler").to_pylist()) == {load_profile("digits", tiny_overrides(output)).generator.sampler}
    assert np.isfinite(np.asarray(table.column("judge_confidence"))).all()
    lineage = records["classifier_augmented"][0].asset_materialization.metadata["lineage"].value
    assert sorted(s["uri"] for s in lineage["shards"]) == sorted(uris)


def test_rerunning_one_class_replaces_its_shard(pipeline_run):
    output, _, _, _, instance = pipeline_run
    defs = build_definitions("digits", tiny_overrides(output))
    before = list_class_shards(f"{output}/synthetic_shards", "1")
    images_before = read_shards(before, accepted_only=False).column("image").to_pylist()
    result = dg.materialize(
        list(defs.assets),
        selection=["synthetic_images", "synthetic_scores", "synthetic_shards"],
        partition_key="1",
        instance=instance,
        resources=dict(defs.resources),
    )
    assert result.success
    after = list_class_shards(f"{output}/synthetic_shards", "1")
    assert len(after) == 1  # replaced, never duplicated
    # same seeds and generator version: the same pixels, byte for byte
    assert read_shards(after, accepted_only=False).column("image").to_pylist() == images_before


def test_failed_blocking_check_stops_before_training(tmp_path):
    overrides = tiny_overrides(str(tmp_path)) + ["filter.min_confidence=1.0", "filter.min_accepted_per_class=5"]
    with dg.instance_for_test() as instance:
        with pytest.raises(PipelineError, match="has_accepted_images"):
            run_pipeline("digits", overrides, instance, echo=lambda line: None)
    assert not (tmp_path / "report.json").exists()


def test_lineage_from_model_to_shards_and_back(pipeline_run, capsys):
    from synthaug_pipeline.cli import main

    output, result, _, _, _ = pipeline_run
    report = json.loads(open(f"{output}/report.json").read())
    model = report["models"]["augmented"]["url"]
    uris = [shard["uri"] for shard in report["shards"]]  # as trained on (a later test re-runs class 1)
    assert main(["lineage", model]) == 0
    out = capsys.readouterr().out
    assert "shards: 2" in out and all(uri in out for uri in uris)
    assert main(["lineage", "--shard", uris[0], "--set", f"output.url={output}"]) == 0
    out = capsys.readouterr().out
    assert "classifier_augmented" in out and "classifier_baseline" not in out
    assert main(["lineage", "--shard", "/no/such/shard.parquet", "--set", f"output.url={output}"]) == 1


def test_refiltering_rewrites_shards_without_regenerating(pipeline_run):
    output, _, _, _, instance = pipeline_run
    before = read_shards(list_class_shards(f"{output}/synthetic_shards", "0"), accepted_only=False)
    generated = len(instance.fetch_materializations(dg.AssetKey("synthetic_images"), limit=100).records)
    strict = build_definitions("digits", tiny_overrides(output) + ["filter.min_confidence=0.6", "filter.min_accepted_per_class=0"])
    result = dg.materialize(
        list(strict.assets), selection=["synthetic_shards"], partition_key="0", instance=instance, resources=dict(strict.resources)
    )
    assert result.success
    after = read_shards(list_class_shards(f"{output}/synthetic_shards", "0"), accepted_only=False)
    assert after.column("image").to_pylist() == before.column("image").to_pylist()
    assert after.column("filter_version")[0].as_py() != before.column("filter_version")[0].as_py()
    confidence = np.asarray(after.column("judge_confidence"))
    assert np.array_equal(np.asarray(after.column("accepted")), confidence >= 0.6)
    assert len(instance.fetch_materializations(dg.AssetKey("synthetic_images"), limit=100).records) == generated


# Last in the module: it replaces the worst class's shard with a new seed round.
def test_scheduled_regeneration_resamples_only_the_worst_class(pipeline_run):
    from synthaug_pipeline.defs.generation.schedules import REGENERATED_ASSETS, latest_class_qualities

    output, _, _, _, instance = pipeline_run
    overrides = tiny_overrides(output) + ["regeneration.classes_per_run=1", "regeneration.metric=mean_judge_confidence"]
    defs = build_definitions("digits", overrides)
    schedule = next(s for s in defs.schedules if s.name == "regenerate_worst_classes")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    confidence = {q.class_id: q.metric_value for q in latest_class_qualities(instance, ["0", "1"], "mean_judge_confidence")[0]}
    worst, other = sorted(confidence, key=lambda c: (confidence[c], c))

    with dg.build_schedule_context(instance=instance) as context:
        requests = schedule(context)
    assert [r.partition_key for r in requests] == [worst]
    assert requests[0].run_config == {"ops": {"synthetic_images": {"config": {"regeneration_round": 1}}}}

    seeds_before = {c: read_shards(list_class_shards(f"{output}/synthetic_shards", c), accepted_only=False).column("seed").to_pylist() for c in "01"}
    result = dg.materialize(
        list(defs.assets),
        selection=list(REGENERATED_ASSETS),
        partition_key=worst,
        run_config=requests[0].run_config,
        instance=instance,
        resources=dict(defs.resources),
        tags=requests[0].tags,
    )
    assert result.success
    shards = list_class_shards(f"{output}/synthetic_shards", worst)
    assert len(shards) == 1
    seeds_after = read_shards(shards, accepted_only=False).column("seed").to_pylist()
    assert len(seeds_after) == len(seeds_before[worst]) and set(seeds_after).isdisjoint(seeds_before[worst])
    untouched = read_shards(list_class_shards(f"{output}/synthetic_shards", other), accepted_only=False).column("seed").to_pylist()
    assert untouched == seeds_before[other]
    rounds = {q.class_id: q.regeneration_round for q in latest_class_qualities(instance, ["0", "1"], "mean_judge_confidence")[0]}
    assert rounds == {worst: 1, other: 0}


def test_regeneration_schedule_skips_when_nothing_was_scored(tmp_path):
    defs = build_definitions("digits", tiny_overrides(str(tmp_path)))
    schedule = next(s for s in defs.schedules if s.name == "regenerate_worst_classes")
    with dg.instance_for_test() as instance, dg.build_schedule_context(instance=instance) as context:
        result = schedule(context)
    assert isinstance(result, dg.SkipReason)
    assert "2 classes never scored" in result.skip_message
