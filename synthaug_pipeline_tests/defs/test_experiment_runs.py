"""`synthaug experiment` through Dagster: every arm of a tiny grid as runs of named jobs, reused on the second call."""

import json
from pathlib import Path

import dagster as dg
import pytest

from synthaug_pipeline.experiment_runs import run_experiment_grid
from synthaug_pipeline.lib.config import ProfileError
from synthaug_pipeline.lib.lineage import read_lineage
from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides

GRID = [
    "data.validation_fraction=0.2",
    "experiments.regimes=['few_shot']",
    "experiments.ratios=[0, 1]",
    "experiments.seeds=[0, 1]",
    "experiments.few_shot_k=5",
    "experiments.arms=[filtered, unfiltered, retrieval, control, photometric, targeted]",
    "experiments.control_train_steps=5",
    "experiments.control_images_per_class=6",
    "experiments.synthetic_only=false",
    "experiments.validation_per_class=5",
    "evaluation.corruptions=[gaussian_noise]",  # one corruption keeps 14 runs x 2 splits cheap; the suite is tested elsewhere
    # every check here is on counts, lineage, seeds and messages, never on accuracy: the fewest steps that train at all
    "generator.train_steps=3", "generator.warmup_steps=1", "generator.sample_steps=2", "judge.steps=3", "classifier.steps=4",
]
KEYS = [
    "few_shot-r0-s0", "few_shot-r0-s1", "few_shot-r1-s0", "few_shot-r1-s1", "few_shot-r1-s0-unfiltered", "few_shot-r1-s1-unfiltered",
    "few_shot-r1-s0-retrieval", "few_shot-r1-s1-retrieval", "few_shot-r1-s0-control", "few_shot-r1-s1-control",
    "few_shot-r1-s0-photometric", "few_shot-r1-s1-photometric", "few_shot-r1-s0-targeted", "few_shot-r1-s1-targeted",
]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("output"))
    overrides = tiny_overrides(output) + GRID
    with dg.instance_for_test() as instance:
        lines: list[str] = []
        first = run_experiment_grid("digits", overrides, instance, echo=lines.append)
        second = run_experiment_grid("digits", overrides, instance, echo=lines.append)
        runs = [run.job_name for run in instance.get_runs()]
        from synthaug_pipeline.definitions import build_definitions

        defs = build_definitions("digits", overrides)
        values = {key: defs.load_asset_value(dg.AssetKey("experiment_run"), instance=instance, partition_key=key)[key] for key in KEYS}
        control_version = (
            instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("control_samples"), asset_partitions=["few_shot-s0"]), limit=1)
            .records[0].asset_materialization.metadata["version"].value
        )
        too_many = None
        try:
            run_experiment_grid("digits", [*overrides, "experiments.ratios=[0, 3]"], instance, echo=lines.append)
        except ProfileError as exc:
            too_many = str(exc)
        runs_after_refusal = len(instance.get_runs())
        yield {
            "output": output, "first": first, "second": second, "runs": runs, "values": values, "lines": lines,
            "control_version": control_version, "too_many": too_many, "runs_after_refusal": runs_after_refusal,
        }


def test_every_grid_point_is_a_run_of_a_named_job_and_a_second_call_reuses_them(grid):
    assert grid["first"].trained == KEYS and grid["first"].reused == []
    assert grid["second"].trained == [] and grid["second"].reused == KEYS
    assert grid["runs"].count("synthaug_experiment_runs") == len(KEYS)  # named jobs: listed and re-executable in the UI
    assert grid["runs"].count("synthaug_control_samples") == 2  # one control generator per seed, trained once
    assert grid["runs"].count("synthaug_experiment_summary") == 2
    assert any("few_shot-r1-s0-retrieval: reused (same settings, code and shards)" in line for line in grid["lines"])


def test_arms_draw_the_same_number_of_extra_images_from_their_own_pools(grid):
    values = grid["values"]
    for key in KEYS[2:]:
        assert (values[key]["real_images"], values[key]["synthetic_images"]) == (10, 10), key  # 5 real + 5 extra per class
        assert values[key]["validation"]["images"] == 10  # 5 validation images per class, the same for every run
    retrieval = read_lineage(values["few_shot-r1-s0-retrieval"]["model"]["url"])
    assert retrieval["arm"] == "retrieval" and retrieval["retrieved_real_images"] == {"0": 5, "1": 5} and retrieval["shards"] == []
    control = read_lineage(values["few_shot-r1-s0-control"]["model"]["url"])
    assert control["control_generator"]["version"] == grid["control_version"] and control["control_generator"]["train_images"] == 10
    assert read_lineage(values["few_shot-r1-s0-unfiltered"]["model"]["url"])["arm"] == "unfiltered"
    photometric = read_lineage(values["few_shot-r1-s0-photometric"]["model"]["url"])
    assert photometric["arm"] == "photometric" and photometric["photometric_copies"] == {"0": 5, "1": 5} and photometric["shards"] == []
    assert "retrieved_real_images" not in photometric
    # closed loop: the filtered arm's total, shared out by the seed's real-only validation errors, from the same shards
    targeted = read_lineage(values["few_shot-r1-s0-targeted"]["model"]["url"])
    real_only = values["few_shot-r0-s0"]
    assert targeted["arm"] == "targeted" and targeted["targeted"]["from"] == "few_shot-r0-s0"
    assert targeted["targeted"]["fingerprint"] == real_only["fingerprint"]
    errors = {c: 1 - acc for c, acc in real_only["validation"]["per_class"].items()}
    assert targeted["targeted"]["validation_error"] == pytest.approx(errors)
    assert sum(targeted["targeted"]["per_class"].values()) == 10 and targeted["targeted"]["floor"] == 0.75
    assert {s["class_id"]: s["images_used"] for s in targeted["shards"]} == targeted["targeted"]["per_class"]
    if errors["0"] != errors["1"]:  # the class the real-only model gets wrong more often gets more images
        worse = max(errors, key=errors.get)
        assert targeted["targeted"]["per_class"][worse] > 5


def test_the_summary_reports_intervals_retrieval_share_validation_and_costs(grid):
    summary = grid["second"].summary
    assert summary["materialized"] == KEYS and summary["stale"] == []
    groups = {g["group"]: g for g in summary["groups"]}
    assert set(groups) == {
        "few_shot-r0", "few_shot-r1", "few_shot-r1-unfiltered", "few_shot-r1-retrieval", "few_shot-r1-control", "few_shot-r1-photometric",
        "few_shot-r1-targeted",
    }
    assert groups["few_shot-r1"]["vs_arms"]["targeted"]["test"]["paired_seeds"] == 2  # filtered minus targeted, paired by seed
    assert groups["few_shot-r1-retrieval"]["vs_real_only"]["paired_seeds"] == 2
    assert "ci95" in groups["few_shot-r1"]["vs_real_only"]["top1"]
    assert groups["few_shot-r1"]["validation"]["top1"]["n"] == 2
    assert any(name.startswith("control generator few_shot-s1") for name in summary["costs"])
    markdown = Path(summary["markdown"]).read_text()
    for section in ("Paired gains vs real-only", "Validation split", "Wall time per run", "Shared costs the arms draw on"):
        assert section in markdown
    assert json.loads(Path(summary["json"]).read_text())["materialized"] == KEYS


def test_a_grid_asking_for_more_images_than_can_exist_is_refused_before_any_run(grid):
    assert grid["too_many"] is not None and "\n" not in grid["too_many"]
    assert "few_shot-r3-s0: ratio 3 needs 15 accepted synthetic images of class '0'" in grid["too_many"]
    assert grid["runs_after_refusal"] == len(grid["runs"])


def test_a_grid_that_reads_no_generated_image_trains_no_generator(tmp_path):
    """Real-only, retrieval and photometric points need the real images only: no judge, generator or shards."""
    overrides = tiny_overrides(str(tmp_path)) + [
        "experiments.regimes=['few_shot']", "experiments.ratios=[0, 1]", "experiments.seeds=[0]", "experiments.few_shot_k=5",
        "experiments.arms=[retrieval, photometric]", "experiments.synthetic_only=false", "evaluation.corruptions=[gaussian_noise]",
    ]
    with dg.instance_for_test() as instance:
        lines: list[str] = []
        outcome = run_experiment_grid("digits", overrides, instance, echo=lines.append)
        assert outcome.trained == ["few_shot-r0-s0", "few_shot-r1-s0-retrieval", "few_shot-r1-s0-photometric"]
        assert any("no grid point reads generated images" in line for line in lines)
        materialized = {key.to_user_string() for key in instance.get_asset_keys()}
        assert {"real_images", "experiment_run", "experiment_summary"} <= materialized
        assert not materialized & {"judge", "generator", "synthetic_images", "synthetic_shards"}
        groups = {g["group"] for g in outcome.summary["groups"]}
        assert groups == {"few_shot-r0", "few_shot-r1-retrieval", "few_shot-r1-photometric"}


def test_a_targeted_run_refuses_a_missing_or_stale_real_only_partner():
    from synthaug_pipeline.defs.experiments.assets import partner_validation_errors
    from synthaug_pipeline.lib.config import load_profile
    from synthaug_pipeline.lib.experiments import parse_experiment_key

    profile = load_profile("digits", ["data.validation_fraction=0.2", "experiments.arms=[targeted]", "experiments.ratios=[0, 1]"])
    spec = parse_experiment_key("few_shot-r1-s0-targeted")
    with dg.instance_for_test() as instance:
        with pytest.raises(ValueError, match="validation errors of few_shot-r0-s0: materialize few_shot-r0-s0 first"):
            partner_validation_errors(instance, spec, profile, ["0", "1"])
        instance.report_runless_asset_event(
            dg.AssetMaterialization("experiment_run", partition="few_shot-r0-s0", metadata={"fingerprint": "0123456789abcdef"})
        )
        with pytest.raises(ValueError, match="trained under other settings: re-materialize few_shot-r0-s0 first"):
            partner_validation_errors(instance, spec, profile, ["0", "1"])
