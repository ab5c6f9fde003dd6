"""Resume: a re-run reuses what is complete and valid for the same settings and code, and redoes the rest."""

import inspect
import re
from pathlib import Path

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
    monkeypatch.setattr(reuse, "code_version", lambda *args, **kwargs: "another version")
    planner = reuse.ReusePlanner.for_definitions(instance, profile, defs)  # one planner per run: the next run's code
    assert planner.reusable_run("generator", None) is None
    monkeypatch.undo()
    changed = load_profile("digits", [*tiny_overrides(output), "generator.train_steps=31"])
    planner = reuse.ReusePlanner.for_definitions(instance, changed, defs)
    assert planner.reusable_run("generator", None) is None
    assert planner.reusable_run("judge", None) is not None  # the judge does not read generator settings
    # sampling settings re-sample with the trained generator
    more = load_profile("digits", [*tiny_overrides(output), "generator.images_per_class=7", "generator.guidance_scale=1.5"])
    planner = reuse.ReusePlanner.for_definitions(instance, more, defs)
    assert planner.reusable_run("generator", None) is not None
    assert planner.reusable_run("synthetic_images", "0") is None


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


def test_every_asset_module_is_where_the_asset_is_defined():
    defs = build_definitions("fashion-headline", ["experiments.arms=[filtered, control]"])
    names = set()
    for assets_def in defs.assets or ():
        for key in assets_def.keys:
            name = key.to_user_string()
            names.add(name)
            assert reuse.ASSET_MODULES.get(name) == assets_def.op.compute_fn.decorated_fn.__module__, name
    assert {a for s in STAGES for a in s.assets} | {"experiment_run", "control_samples", "experiment_summary"} <= names


def _edit(root, module: str, old: str, new: str) -> None:
    path = root / module
    text = path.read_text()
    assert old in text, (module, old)
    path.write_text(text.replace(old, new, 1))


def test_an_asset_code_version_covers_the_code_it_imports_and_nothing_else(tmp_path):
    """A docstring edit or a change to the experiment grid's code keeps a trained generator (it used to retrain the
    37-66 min Fashion generator); a change to the diffusion code redoes it and what it feeds."""
    import shutil

    import synthaug_pipeline

    source = Path(synthaug_pipeline.__file__).parent
    assets = ("real_images", "generator", "judge", "classifier_baseline", "experiment_run", "report", None)

    def versions(root: Path) -> dict:
        return {asset: reuse.code_version(asset, root) for asset in assets}

    def copy(name: str) -> Path:
        root = tmp_path / name / "synthaug_pipeline"
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("__pycache__"))
        return root

    base = versions(copy("base"))
    assert base == versions(source)  # a copy has the same versions
    assert len(set(base.values())) == len(assets)
    assert reuse.code_version("class_catalog", source) == base["real_images"]  # one module defines both

    cosmetic = copy("cosmetic")  # a docstring, a comment, layout, a setting's description
    _edit(cosmetic, "lib/diffusion.py", '"""', '"""Reworded. ')
    _edit(cosmetic, "lib/diffusion.py", "\ndef ", "\n# a new comment\n\n\ndef ")
    _edit(cosmetic, "lib/config.py", 'description="Denoising steps;', 'description="How many denoising steps;')
    assert versions(cosmetic) == base

    setting = copy("setting")  # a new setting: the assets that read it see its value, not the settings module's code
    _edit(setting, "lib/config.py", "    images_per_class: int = Field(100, ge=1)\n", "    images_per_class: int = Field(100, ge=1)\n    new_knob: int = 3\n")
    changed = versions(setting)
    assert all(changed[asset] == base[asset] for asset in assets if asset) and changed[None] != base[None]

    grid = copy("grid")
    _edit(grid, "lib/experiments.py", "def format_ratio(ratio: float) -> str:\n", "def format_ratio(ratio: float) -> str:\n    ratio = float(ratio)\n")
    changed = versions(grid)
    assert changed["generator"] == base["generator"] and changed["judge"] == base["judge"]
    assert changed["real_images"] == base["real_images"]  # redoing the real images would redo the generator after them
    assert changed["experiment_run"] != base["experiment_run"] and changed[None] != base[None]

    check = copy("check")  # a new refusal in the checks that run before anything trains: nothing written changes
    _edit(check, "lib/preflight.py", "\ndef ", "\nA_NEW_LIMIT = 7\n\n\ndef ")
    changed = versions(check)
    assert all(changed[asset] == base[asset] for asset in assets if asset) and changed[None] != base[None]

    diffusion = copy("diffusion")
    _edit(diffusion, "lib/diffusion.py", "\ndef ", "\nSOMETHING_NEW = 1\n\n\ndef ")
    changed = versions(diffusion)
    assert changed["generator"] != base["generator"] and changed[None] != base[None]
    assert changed["experiment_run"] != base["experiment_run"]  # the grid imports the diffusion code (control arm)

    data = copy("data")
    (data / "data" / "imagenet100.txt").write_text("n01440764\n")  # package data, read without an import
    assert all(versions(data)[asset] != base[asset] for asset in assets)

    profiles = copy("profiles")  # settings enter by value, not as code
    _edit(profiles, "profiles/digits.yaml", "\n", "\n# edited\n")
    assert versions(profiles) == base


def test_ddpm_sampling_settings_keep_the_trained_generator():
    """What training does not read is out of the generator's fingerprint, and training really does not read it."""
    from synthaug_pipeline.lib.config import GeneratorConfig
    from synthaug_pipeline.lib.diffusion import train_generator
    from synthaug_pipeline_tests.lib.test_diffusion import TINY, two_class_images, weights_equal

    sampling = {
        "sampler": "ddim", "sample_steps": 3, "guidance_scale": 1.0, "images_per_class": 7, "sample_batch_size": 5,
        "pretrained_batch_size": 2, "negative_prompt": "blurry", "strength": 0.3, "output_size": 16,
        "conditioning_augmentations": ["flip"], "image_variation": True, "safety_checker": "drop",
    }
    assert set(sampling) == reuse.DDPM_SAMPLING_ONLY
    base = load_profile("digits", [])
    changed = load_profile("digits", [f"generator.{k}={v}" for k, v in sampling.items()])
    assert reuse.asset_fingerprint(base, "generator") == reuse.asset_fingerprint(changed, "generator")
    assert reuse.asset_fingerprint(base, "synthetic_images") != reuse.asset_fingerprint(changed, "synthetic_images")
    assert reuse.asset_fingerprint(base, "control_samples") != reuse.asset_fingerprint(changed, "control_samples")
    for training in ("generator.train_steps=7", "generator.seed=3", "generator.train_dtype=bfloat16", "generator.ema_decay=0.99"):
        assert reuse.asset_fingerprint(base, "generator") != reuse.asset_fingerprint(load_profile("digits", [training]), "generator"), training
    # a pretrained backend checks its sampling settings when it loads: the whole section counts
    text2img = ["generator.backend=text2img", "generator.model=/models/sd"]
    assert reuse.asset_fingerprint(load_profile("digits", text2img), "generator") != reuse.asset_fingerprint(
        load_profile("digits", [*text2img, "generator.images_per_class=7"]), "generator"
    )

    images, labels = two_class_images(16)
    cfg = GeneratorConfig(train_steps=2, **{**TINY, "batch_size": 8})
    a = train_generator(images, labels, 2, cfg)
    b = train_generator(images, labels, 2, cfg.model_copy(update=sampling))
    assert weights_equal(a.model, b.model) and a.losses == b.losses


def test_growing_the_grid_keeps_the_points_already_run():
    """Adding an arm, a seed or a ratio must not redo every grid point (the whole experiments section used to be part
    of experiment_run's fingerprint: adding the control arm retrained 12 finished Fashion runs, ~40 min)."""
    from synthaug_pipeline.lib.experiments import parse_experiment_key, setup_fingerprint

    base = load_profile("fashion-headline", ["experiments.arms=[filtered, unfiltered]"])
    grown = load_profile("fashion-headline", ["experiments.arms=[filtered, unfiltered, retrieval, control]", "experiments.seeds=[0, 1, 2, 3]"])
    for asset in ("experiment_run", "control_samples"):
        assert reuse.asset_fingerprint(base, asset) == reuse.asset_fingerprint(grown, asset)
    wider = load_profile("fashion-headline", ["experiments.arms=[filtered, unfiltered]", "experiments.ratios=[0, 3, 6]"])
    assert reuse.asset_fingerprint(base, "experiment_run") == reuse.asset_fingerprint(wider, "experiment_run")
    # a larger ratio makes the control sample more images, from which its runs draw: that one is redone
    assert reuse.asset_fingerprint(base, "control_samples") != reuse.asset_fingerprint(wider, "control_samples")
    key = parse_experiment_key("few_shot-r3-s0")
    for other in (grown, wider):
        assert setup_fingerprint(key, base, ["h"]) == setup_fingerprint(key, other, ["h"])
    # what a point does read still redoes it
    for change, asset in (
        ("classifier.steps=800", "experiment_run"),
        ("evaluation.severities=[3]", "experiment_run"),
        ("experiments.control_train_steps=100", "control_samples"),
        ("experiments.control_images_per_class=50", "control_samples"),
        ("experiments.few_shot_k=20", "control_samples"),
        ("generator.train_steps=10", "control_samples"),
    ):
        changed = load_profile("fashion-headline", ["experiments.arms=[filtered, unfiltered]", change])
        assert reuse.asset_fingerprint(base, asset) != reuse.asset_fingerprint(changed, asset), change
    few = load_profile("fashion-headline", ["experiments.arms=[filtered, unfiltered]", "experiments.few_shot_k=20"])
    assert setup_fingerprint(key, base, ["h"]) != setup_fingerprint(key, few, ["h"])
