"""The code location loads for every profile, and the asset graph keeps its shape."""

from pathlib import Path

import dagster as dg
import yaml

from synthaug_pipeline.definitions import build_definitions, defs
from synthaug_pipeline.lib.config import load_profile
from synthaug_pipeline.lib.experiments import experiment_keys
from synthaug_pipeline.orchestration import DEFAULT_DAGSTER_YAML, STAGES

EXPECTED_DEPS = {
    "class_catalog": set(),
    "class_prompts": {"class_catalog", "real_images"},  # real images rank candidate names with CLIP
    "real_images": {"class_catalog"},
    "judge": {"class_catalog", "real_images"},
    "generator": {"class_catalog", "real_images"},
    "real_features": {"judge", "real_images"},
    "synthetic_images": {"class_catalog", "generator", "class_prompts", "real_images"},
    "synthetic_scores": {"judge", "synthetic_images", "real_features"},
    "synthetic_shards": {"synthetic_images", "synthetic_scores"},
    "classifier_baseline": {"class_catalog", "real_images"},
    "classifier_augmented": {"class_catalog", "real_images", "synthetic_shards"},
    "evaluation": {"class_catalog", "real_images", "classifier_baseline", "classifier_augmented"},
    "report": {
        "class_catalog",
        "judge",
        "generator",  # its training time is part of the run's cost
        "synthetic_shards",
        "synthetic_scores",
        "classifier_baseline",
        "classifier_augmented",
        "evaluation",
    },
    "experiment_run": {"class_catalog", "real_images", "synthetic_shards", "synthetic_scores"},  # scores: the unfiltered arm drops test leaks
    "experiment_summary": {"experiment_run", "synthetic_shards"},
}
PER_CLASS = {"real_images", "class_prompts", "real_features", "synthetic_images", "synthetic_scores", "synthetic_shards"}
EXPERIMENTS = {"experiment_run", "experiment_summary"}  # the ablation grid: its own job, not part of `synthaug run`


def _graph(definitions: dg.Definitions) -> dict[str, set[str]]:
    graph = definitions.resolve_asset_graph()
    return {key.to_user_string(): {parent.to_user_string() for parent in graph.get(key).parent_keys} for key in graph.get_all_asset_keys()}


def test_default_definitions_load_with_the_expected_graph():
    dg.Definitions.validate_loadable(defs)
    assert _graph(defs) == EXPECTED_DEPS


def test_per_class_assets_are_partitioned_by_class_ids():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        partitions = graph.get(key).partitions_def
        if key.to_user_string() in PER_CLASS:
            assert partitions.get_partition_keys() == [str(i) for i in range(10)]
        elif key.to_user_string() == "experiment_run":
            assert partitions.get_partition_keys() == experiment_keys(load_profile("digits", []).experiments)
        else:
            assert partitions is None


def test_jobs_split_per_class_assets_from_the_experiment_grid():
    def selected(name: str) -> set[str]:
        return {key.to_user_string() for key in defs.resolve_job_def(name).asset_layer.selected_asset_keys}

    assert selected("synthaug_per_class") == PER_CLASS
    assert selected("synthaug_shared") == set(EXPECTED_DEPS) - PER_CLASS - EXPERIMENTS
    assert selected("synthaug_experiments") == EXPERIMENTS


def test_fashion_and_folder_profiles_load(tmp_path):
    fashion = build_definitions("fashion", [])
    keys = fashion.resolve_asset_graph().get(dg.AssetKey("real_images")).partitions_def.get_partition_keys()
    assert keys[:2] == ["t-shirt", "trouser"] and len(keys) == 10
    for class_id in ("cats", "dogs"):
        (tmp_path / class_id).mkdir()
    folder = build_definitions("folder", [f"data.path={tmp_path}"])
    assert folder.resolve_asset_graph().get(dg.AssetKey("real_images")).partitions_def.get_partition_keys() == ["cats", "dogs"]


def test_cli_stages_cover_every_asset_once():
    staged = [asset for stage in STAGES for asset in stage.assets]
    assert sorted(staged) == sorted(set(EXPECTED_DEPS) - EXPERIMENTS)
    assert {a for s in STAGES if s.per_class for a in s.assets} == PER_CLASS


def test_project_dagster_yaml_matches_the_built_in_default():
    with open(Path(__file__).parents[2] / "dagster.yaml") as handle:
        assert yaml.safe_load(handle) == yaml.safe_load(DEFAULT_DAGSTER_YAML)


def test_the_headline_profile_adds_the_control_generator_and_named_experiment_jobs():
    headline = build_definitions("fashion-headline", [])
    graph = headline.resolve_asset_graph()
    control = graph.get(dg.AssetKey("control_samples"))
    assert control.partitions_def.get_partition_keys() == ["few_shot-s0", "few_shot-s1", "few_shot-s2"]
    assert {p.to_user_string() for p in graph.get(dg.AssetKey("experiment_run")).parent_keys} == {
        "class_catalog", "real_images", "synthetic_shards", "synthetic_scores", "control_samples"
    }
    keys = graph.get(dg.AssetKey("experiment_run")).partitions_def.get_partition_keys()
    assert "few_shot-r3-s2-retrieval" in keys and "few_shot-r3-s0-control" in keys and "few_shot-r0-s1" in keys

    def selected(name: str) -> set[str]:
        return {key.to_user_string() for key in headline.resolve_job_def(name).asset_layer.selected_asset_keys}

    assert selected("synthaug_experiment_runs") == {"experiment_run"}
    assert selected("synthaug_control_samples") == {"control_samples"}
    assert selected("synthaug_experiment_summary") == {"experiment_summary"}
    assert "control_samples" not in {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}  # digits: no control arm
