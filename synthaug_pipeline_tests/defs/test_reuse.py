"""Resume: a re-run reuses what is complete and valid for the same settings and code, and redoes the rest."""

import inspect
import re

import dagster as dg
import pytest

from synthaug_pipeline import reuse
from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.lib.config import load_profile
from synthaug_pipeline.orchestration import OUTPUTS_READ, STAGES, run_pipeline
from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("output"))
    with dg.instance_for_test() as instance:
        result = run_pipeline("digits", tiny_overrides(output), instance, echo=lambda _: None)
        yield output, instance, result


def test_the_same_command_again_reuses_everything(first_run):
    output, instance, first = first_run
    runs_before = len(instance.get_runs())
    lines: list[str] = []
    again = run_pipeline("digits", tiny_overrides(output), instance, echo=lines.append)
    assert len(instance.get_runs()) == runs_before  # nothing ran
    assert again.evaluation == first.evaluation and again.report == first.report
    reused = " ".join(line for line in lines if "reused" in line)
    for stage in STAGES:
        for asset in stage.assets:
            assert asset in reused


def test_a_new_filter_redoes_shards_and_what_trains_on_them(first_run):
    output, instance, _ = first_run
    overrides = [*tiny_overrides(output), "filter.min_confidence=0.01"]
    lines: list[str] = []
    run_pipeline("digits", overrides, instance, echo=lines.append)
    line = next(line for line in lines if "reused for 2 classes:" in line and "real_features" in line)  # one batch
    assert "synthetic_scores" in line and "synthetic_shards" not in line
    assert any("reused: judge" in line for line in lines) and any("reused: generator" in line for line in lines)
    assert any("reused: classifier_baseline" in line for line in lines)  # reads no shard
    assert not any("classifier_augmented" in line for line in lines if "reused" in line)  # trains on the new shards


def test_changed_code_or_settings_reuse_nothing(first_run, monkeypatch):
    output, instance, _ = first_run
    defs = build_definitions("digits", tiny_overrides(output))
    profile = load_profile("digits", tiny_overrides(output))
    planner = reuse.ReusePlanner.for_definitions(instance, profile, defs)
    assert planner.reusable_run("generator", None) is not None
    monkeypatch.setattr(reuse, "code_version", lambda: "another version")
    planner = reuse.ReusePlanner.for_definitions(instance, profile, defs)  # one planner per run: the next run's code
    assert planner.reusable_run("generator", None) is None
    monkeypatch.undo()
    changed = load_profile("digits", [*tiny_overrides(output), "generator.train_steps=31"])
    planner = reuse.ReusePlanner.for_definitions(instance, changed, defs)
    assert planner.reusable_run("generator", None) is None
    assert planner.reusable_run("judge", None) is not None  # the judge does not read generator settings


def test_upstream_redone_invalidates_downstream(first_run):
    output, instance, _ = first_run
    defs = build_definitions("digits", tiny_overrides(output))
    planner = reuse.ReusePlanner.for_definitions(instance, load_profile("digits", tiny_overrides(output)), defs)
    assert planner.reusable_run("synthetic_images", "0") is not None
    planner.mark_redone("synthetic_images", "0")
    assert planner.reusable_run("synthetic_scores", "0") is None
    assert planner.reusable_run("synthetic_scores", "1") is not None  # another class is untouched
    assert planner.reusable_run("classifier_augmented", None) is None  # reads every class's shard


def test_every_staged_asset_lists_the_settings_it_reads():
    """A guard: an asset body that reads ``profile.<section>`` must list that section in ASSET_SECTIONS."""
    defs = build_definitions("digits", [])
    for stage in STAGES:
        for asset in stage.assets:
            if asset == "report":  # reads every section
                continue
            assert asset in reuse.ASSET_SECTIONS
            compute = defs.resolve_assets_def(asset).op.compute_fn.decorated_fn
            read = set(re.findall(r"profile\.([a-z_]+)", inspect.getsource(compute))) - {"output_url", "model_dump"}
            assert read <= set(reuse.ASSET_SECTIONS[asset]), (asset, read)
    assert set(OUTPUTS_READ) <= {a for s in STAGES for a in s.assets}
