"""The command line: bad input is one clear line, exit 2 and nothing written; a tiny `run` end to end."""

import json
import re

import dagster as dg
import pytest

from synthaug_pipeline.cli import main
from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.lib.config import ProfileError
from synthaug_pipeline.orchestration import run_pipeline, with_classes
from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--profile", "nope"], "unknown profile 'nope'"),
        (["run", "--set", "generator.stepz=5"], "unknown setting 'generator.stepz'"),
        (["run", "--set", "generator.train_steps=many"], "generator.train_steps"),
        (["run", "--set", "generator.guidance_scale=-1"], "generator.guidance_scale"),
        (["run", "--profile", "folder"], "data.path is not set"),
        (["run", "--profile", "folder", "--set", "data.path=/no/such/folder"], "does not exist"),
        (["run", "--profile", "fashion", "--set", "data.classes=[shoe]"], "does not have"),
        (["run", "--classes", "11"], "unknown classes"),
        (["run", "--profile", "fashion", "--set", "data.path=/no/such/idx"], "is not a folder"),
        (["run", "--profile", "fashion", "--set", "data.classes=[bag]", "--classes", "coat"], "valid class ids are ['bag']"),
        (["dev", "--profile", "nope"], "unknown profile"),
        (
            ["experiment", "--set", "generator.backend=text2img", "--set", "generator.model=/models/sd", "--set", "experiments.arms=[retrieval]"],
            "the retrieval arm draws real images from the generator's training pool, but generator.backend=text2img",
        ),
        (["experiment", "--set", "data.validation_fraction=0.001"], "data.validation_fraction=0.001 leaves class '0' with no validation image"),
        (["run", "--set", "data.validation_fraction=0.999"], "leaves class '0' with no training image"),
        (["experiment", "--set", "experiments.ratios=[0, 20]"], "few_shot-r20-s0: ratio 20 needs 200 accepted synthetic images of class '0'"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synthaug: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_profiles_lists_packaged_profiles(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "fashion" in out and "folder" in out


def test_fashion_path_without_idx_files_fails_before_dagster(tmp_path, tmp_path_factory, monkeypatch, capsys):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", lambda *a, **k: pytest.fail("must not download"))
    data = tmp_path_factory.mktemp("idx")
    (data / "train-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["run", "--profile", "fashion", "--set", f"data.path={data}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lacks the Fashion-MNIST files" in err and "t10k-images-idx3-ubyte.gz" in err
    assert list(tmp_path.iterdir()) == []  # no .dagster_home, no output


def test_classes_become_the_partitions():
    overrides = with_classes("digits", ["data.test_per_class=5"], ["1", "0"])
    assert overrides == ["data.test_per_class=5", 'data.classes=["0", "1"]']
    partitions = build_definitions("digits", overrides).resolve_asset_graph().get(dg.AssetKey("real_images")).partitions_def
    assert partitions.get_partition_keys() == ["0", "1"]
    assert with_classes("digits", ["data.seed=1"], None) == ["data.seed=1"]


def test_run_pipeline_rejects_unknown_classes_before_any_run():
    with dg.instance_for_test() as instance:
        with pytest.raises(ProfileError, match=r"unknown classes \['x'\]; valid class ids are \['0'"):
            run_pipeline("digits", [], instance, classes=["0", "x"])
        assert instance.get_runs() == []


@pytest.mark.slow
def test_run_on_two_classes_prints_the_table_and_writes_the_report(tmp_path, monkeypatch, capsys):
    output = tmp_path / "output"
    fewer_steps = ["generator.train_steps=3", "generator.warmup_steps=1", "generator.sample_steps=2", "judge.steps=3", "classifier.steps=3"]
    overrides = [item for item in tiny_overrides(str(output)) if not item.startswith("data.classes=")] + fewer_steps
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    argv = ["run", "--classes", "0", "1", "--dagster-home", str(tmp_path / "home")]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[5/5]" in out and "classifiers: train, evaluate, report" in out and "(2 classes)" in out
    assert any(line.startswith("metric") and "augmented" in line for line in out.splitlines())  # the final table
    assert "top-1 in-domain" in out and f"report: {output}/report.json" in out
    report = json.loads((output / "report.json").read_text())
    assert report["dataset"]["class_ids"] == ["0", "1"]  # --classes narrowed the data, not only the partitions run
    assert (output / "report.md").is_file()


def test_experiment_prints_each_arms_gain_and_the_filtered_arm_against_the_others(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    grid = [
        "data.validation_fraction=0.2", "experiments.regimes=['few_shot']", "experiments.ratios=[0, 1]", "experiments.seeds=[0, 1]",
        "experiments.few_shot_k=5", "experiments.arms=[filtered, photometric]", "experiments.synthetic_only=false",
        "evaluation.corruptions=[gaussian_noise]",
    ]
    argv = ["experiment", "--dagster-home", str(tmp_path / "home")]
    for item in [*tiny_overrides(str(tmp_path / "out")), *grid]:
        argv += ["--set", item]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # the time estimate counts the six grid runs still to train, and no full-data classifiers (this command trains none)
    estimate_line = next(line for line in out.splitlines() if "estimate: ~" in line)
    assert re.search(r"experiments 6 x \d+ steps ~", estimate_line) and "classifiers" not in estimate_line
    assert "few_shot-r1 (real + filtered synthetic) vs real only, 2 seeds: top-1" in out
    assert "few_shot-r1-photometric (real + photometric copies of it (augmentation control)) vs real only, 2 seeds" in out
    assert "few_shot-r1 filtered minus photometric (few_shot-r1-photometric), 2 seeds: top-1" in out
