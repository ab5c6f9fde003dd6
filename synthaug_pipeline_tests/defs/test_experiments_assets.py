"""The ablation grid through Dagster: two classes, few-shot experiments, a CAS run and their summary, at tiny sizes."""

import json
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.lib.config import ProfileError
from synthaug_pipeline.lib.datasets import RealClass
from synthaug_pipeline_tests.tiny_models import shard_ref
from synthaug_pipeline.lib.lineage import models_using_shard, read_lineage
from synthaug_pipeline.lib.shard_reading import file_sha256, read_shards
from synthaug_pipeline.lib.shards import list_class_shards
from synthaug_pipeline.orchestration import STAGES
from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides

EXPERIMENTS = [
    "experiments.regimes=['few_shot']",
    "experiments.ratios=[0, 1, 2]",  # ratio 2 needs 10 synthetic images per class of the 12 generated: the preflight passes
    "experiments.seeds=[0, 1]",
    "experiments.few_shot_k=5",
    "experiments.aux_bn=[false]",
    "experiments.synthetic_only=true",  # the digits profile's own grid (its default run's few-shot comparison) has no CAS
    "augmented.synthetic_ratio=0",  # the grid does not train classifier_augmented: no supply check for it
]
GRID = [f"few_shot-r{r}-s{s}" for r in (0, 1, 2) for s in (0, 1)] + ["cas-s0", "cas-s1"]
RUN = ["few_shot-r1-s0", "few_shot-r1-s1", "cas-s0"]


def _materialize(defs: dg.Definitions, instance: dg.DagsterInstance, selection: list[str], partition: str | None = None):
    return dg.materialize(
        list(defs.assets),
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources=dict(defs.resources),
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("output"))
    overrides = tiny_overrides(output) + EXPERIMENTS
    with dg.instance_for_test() as instance:
        defs = build_definitions("digits", overrides)
        for stage in STAGES:  # what `synthaug run` does up to the shards; the grid needs no baseline/augmented models
            if stage.name != "classifiers":
                for partition in ("0", "1") if stage.per_class else (None,):
                    assert _materialize(defs, instance, list(stage.assets), partition).success, stage.name
        shards = {  # as the experiments read them, before the re-filtering below rewrites class 0
            uri: {"sha256": file_sha256(uri), "filter_version": read_shards([uri], columns=["filter_version"])["filter_version"][0].as_py()}
            for c in ("0", "1")
            for uri in list_class_shards(f"{output}/synthetic_shards", c)
        }
        upstream = {
            asset: {
                c: instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[c]), limit=1)
                .records[0]
                .storage_id
                for c in ("0", "1")
            }
            for asset in ("real_images", "synthetic_shards")
        }
        upstream["class_catalog"] = instance.fetch_materializations(dg.AssetKey("class_catalog"), limit=1).records[0].storage_id
        runs = {key: _materialize(defs, instance, ["experiment_run"], key) for key in RUN}
        # a grid widened after the catalog passed its preflight: ratio 3 needs 15 synthetic images per class, 12 exist at most
        wider = build_definitions("digits", [*overrides, "experiments.ratios=[0, 1, 3]"])
        too_many = _materialize(wider, instance, ["experiment_run"], "few_shot-r3-s0")
        summary = _materialize(defs, instance, ["experiment_summary"])
        files = {name: (Path(output) / name).read_text() for name in ("experiments.md", "experiments.json")}
        # re-filtering rewrites the shards: every run that trained on the old ones is now stale
        refiltered = build_definitions("digits", overrides + ["filter.drop_train_copies=false"])
        assert _materialize(refiltered, instance, ["synthetic_shards"], "0").success
        after_refilter = _materialize(refiltered, instance, ["experiment_summary"])
        yield {
            "output": output,
            "shards": shards,
            "upstream": upstream,
            "runs": runs,
            "too_many": too_many,
            "summary": summary,
            "files": files,
            "after_refilter": after_refilter,
        }


def test_each_partition_is_one_experiment_with_in_domain_and_shift_results(grid_run):
    for key, result in grid_run["runs"].items():
        assert result.success, key
        value = result.output_for_node("experiment_run")
        assert value["spec"]["key"] == key
        assert 0.0 <= value["metrics"]["top1"] <= 1.0
        assert set(value["per_class"]) == {"0", "1"}
        assert list(value["evaluation"]["shifted"]) == [  # the default suite: all six corruptions
            f"{kind}@2" for kind in ("gaussian_noise", "gaussian_blur", "contrast", "brightness", "jpeg", "pixelate")
        ]
        assert value["metrics"]["top5"] is None  # two classes: no top-5
        metadata = result.get_asset_materialization_events()[0].materialization.metadata
        assert metadata["top1"].value == pytest.approx(value["metrics"]["top1"], rel=1e-3)  # rounded for reading
        assert json.loads(open(f"{value['model']['url']}/result.json").read())["metrics"] == value["metrics"]
    few_shot = grid_run["runs"]["few_shot-r1-s0"].output_for_node("experiment_run")
    assert (few_shot["real_images"], few_shot["synthetic_images"]) == (10, 10)  # k=5 real and ratio 1 x 5 synthetic per class
    cas = grid_run["runs"]["cas-s0"].output_for_node("experiment_run")
    assert cas["real_images"] == 0 and cas["synthetic_images"] > 0


def test_lineage_names_the_shards_used_and_the_experiment(grid_run):
    shard_uris = sorted(grid_run["shards"])
    assert len(shard_uris) == 2
    for key in ("few_shot-r1-s0", "few_shot-r1-s1"):
        value = grid_run["runs"][key].output_for_node("experiment_run")
        lineage = read_lineage(value["model"]["url"])
        assert lineage["experiment"]["key"] == key and lineage["real"]["regime"] == "few_shot"
        assert lineage["synthetic_ratio"] == 1.0
        assert lineage["training"]["steps"] == 20 and lineage["training"]["seed"] == value["spec"]["seed"]
        assert sorted(s["uri"] for s in lineage["shards"]) == shard_uris
        for shard in lineage["shards"]:
            assert shard["sha256"] == grid_run["shards"][shard["uri"]]["sha256"]
            assert shard["filter_version"] == grid_run["shards"][shard["uri"]]["filter_version"]
            assert shard["images_used"] == 5
        assert lineage["filter_versions"] == sorted({s["filter_version"] for s in lineage["shards"]})
        assert lineage["generator_versions"] == sorted({s["generator_version"] for s in lineage["shards"]}) and lineage["aux_bn"] is False
        upstream = lineage["upstream"]  # the materializations this run read, by storage id
        assert upstream["class_catalog"]["storage_id"] == grid_run["upstream"]["class_catalog"]
        for asset in ("real_images", "synthetic_shards"):
            assert {c: m["storage_id"] for c, m in upstream[asset].items()} == grid_run["upstream"][asset]
    real_only = read_lineage(grid_run["runs"]["cas-s0"].output_for_node("experiment_run")["model"]["url"])
    assert set(real_only["upstream"]) == {"class_catalog", "real_images", "synthetic_shards"}
    users = {m["name"] for m in models_using_shard(grid_run["output"], shard_uris[0])}
    assert {"experiment-few_shot-r1-s0", "experiment-few_shot-r1-s1", "experiment-cas-s0"} <= users


def test_a_ratio_beyond_the_accepted_images_fails_before_training(grid_run):
    result = grid_run["too_many"]
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    error = failure.step_failure_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    # the grid check runs in every experiment run before it trains (the catalog only warned)
    assert any("experiment grid point few_shot-r3-s0: ratio 3 needs 15 accepted synthetic images of class '0'" in m for m in messages)
    assert not (Path(grid_run["output"]) / "models" / "experiment-few_shot-r3-s0").exists()


def test_summary_reports_mean_and_std_over_seeds_and_what_is_missing(grid_run):
    result = grid_run["summary"]
    assert result.success
    summary = result.output_for_node("experiment_summary")
    assert summary["grid"] == GRID
    assert summary["materialized"] == RUN
    assert summary["missing"] == [key for key in GRID if key not in RUN]
    assert summary["stale"] == []
    groups = {g["group"]: g for g in summary["groups"]}
    assert list(groups) == ["few_shot-r1", "cas"]
    top1 = groups["few_shot-r1"]["metrics"]["top1"]
    runs = [grid_run["runs"][k].output_for_node("experiment_run")["metrics"]["top1"] for k in ("few_shot-r1-s0", "few_shot-r1-s1")]
    assert top1["n"] == 2 and top1["mean"] == pytest.approx(sum(runs) / 2)
    assert top1["std"] == pytest.approx(abs(runs[0] - runs[1]) / 2**0.5)
    assert groups["few_shot-r1"]["vs_real_only"]["paired_seeds"] == 0  # the real-only runs were not materialized
    markdown = result.get_asset_materialization_events()[0].materialization.metadata["summary"].value
    assert "| few_shot-r1 | 2 | " in markdown and " ± " in markdown
    assert "Missing (not materialized, or failed): few_shot-r0-s0" in markdown
    assert grid_run["files"]["experiments.md"] == markdown
    assert json.loads(grid_run["files"]["experiments.json"])["materialized"] == RUN


def test_summary_marks_runs_on_rewritten_shards_stale(grid_run):
    result = grid_run["after_refilter"]
    assert result.success
    summary = result.output_for_node("experiment_summary")
    assert summary["stale"] == RUN and summary["groups"] == []
    stale = "Stale (trained under another setup or on other shards; re-materialize): few_shot-r1-s0, few_shot-r1-s1, cas-s0."
    assert stale in (Path(grid_run["output"]) / "experiments.md").read_text()


def test_an_infeasible_grid_is_reported_at_the_catalog_and_refused_by_experiment_run(tmp_path):
    from synthaug_pipeline.defs.resources import SynthaugSettings

    overrides = [*tiny_overrides(str(tmp_path / "output")), *EXPERIMENTS, "experiments.ratios=[0, 1, 3]"]
    expected = "experiment grid point few_shot-r3-s0: ratio 3 needs 15 accepted synthetic images of class '0'"
    defs = build_definitions("digits", overrides)
    with dg.instance_for_test() as instance:
        result = _materialize(defs, instance, ["class_catalog"])
        assert result.success  # the main pipeline does not run the grid: a warning, not a failure
        metadata = instance.fetch_materializations(dg.AssetKey("class_catalog"), limit=1).records[0].asset_materialization.metadata
        assert expected in metadata["experiment_grid"].value
    experiment_run = next(a for a in defs.assets if a.key == dg.AssetKey("experiment_run"))
    real = {
        c: RealClass(c, i, c, train=np.zeros((20, 8, 8, 1), np.uint8), test=np.zeros((0, 8, 8, 1), np.uint8))
        for i, c in enumerate(("0", "1"))
    }
    context = dg.build_asset_context(partition_key="few_shot-r0-s0")
    with context, pytest.raises(ProfileError, match=re.escape(expected)) as raised:
        experiment_run(
            context,
            settings=SynthaugSettings(profile="digits", overrides=overrides),
            class_catalog={"class_ids": ["0", "1"]},
            real_images=real,
            synthetic_shards={},
            synthetic_scores={},
        )
    assert "generator.images_per_class=12" in str(raised.value) and "experiments.ratios" in str(raised.value)
    assert not (tmp_path / "output" / "models").exists()


def test_experiment_run_refuses_shards_whose_checks_failed_before_training(tmp_path):
    from synthaug_pipeline.defs.resources import SynthaugSettings

    defs = build_definitions("digits", [*tiny_overrides(str(tmp_path)), *EXPERIMENTS])
    experiment_run = next(a for a in defs.assets if a.key == dg.AssetKey("experiment_run"))
    shards = {
        "0": shard_ref("0", {"has_accepted_images": True, "no_test_leaks_accepted": True}),
        "1": shard_ref("1", {"has_accepted_images": True, "no_test_leaks_accepted": False}),
    }
    settings = SynthaugSettings(profile="digits", overrides=[*tiny_overrides(str(tmp_path)), *EXPERIMENTS])
    with dg.build_asset_context(partition_key="few_shot-r1-s0") as context, pytest.raises(ValueError, match=r"experiment few_shot-r1-s0 refuses 1 synthetic shard\(s\).*class '1' \(failed: no_test_leaks_accepted\)"):
        experiment_run(
            context, settings=settings, class_catalog={"class_ids": ["0", "1"]}, real_images={}, synthetic_shards=shards, synthetic_scores={}
        )
    assert not (tmp_path / "models").exists()
