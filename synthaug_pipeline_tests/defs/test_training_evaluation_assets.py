"""Training and evaluation through Dagster: auxiliary BN, extra shifted test sets, the new corruptions,
and the settings that must fail before anything is trained."""

import json

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from synthaug_pipeline.lib.classifier import load_classifier
from synthaug_pipeline.lib.config import DataConfig
from synthaug_pipeline.lib.datasets import load_dataset
from synthaug_pipeline.orchestration import PipelineError, run_pipeline
from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides
from synthaug_pipeline_tests.tiny_models import shard_ref


def write_digit_folder(root, classes: list[str], per_class: int = 8) -> str:
    """An ImageFolder tree of digits test images, brightened (a shifted copy of the classes)."""
    test = load_dataset(DataConfig(source="digits", test_fraction=0.3)).test
    for class_id in classes:
        folder = root / class_id
        folder.mkdir(parents=True)
        images = test.of_class(int(class_id))[:per_class] if class_id.isdigit() else test.images[:per_class]
        for i, image in enumerate(images):
            shifted = np.clip(image[..., 0].astype(int) + 60, 0, 255).astype(np.uint8)
            Image.fromarray(shifted).resize((16, 16), Image.BICUBIC).save(folder / f"{i}.png")  # other size: resized on load
    return str(root)


@pytest.fixture(scope="module")
def aux_bn_shift_run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("output"))
    folder = write_digit_folder(tmp_path_factory.mktemp("bright_digits"), ["0", "1"])
    overrides = tiny_overrides(output) + [
        "augmented.aux_bn=true",
        f"evaluation.shift_folders={{bright: {folder}}}",
        "evaluation.corruptions=[brightness, jpeg, pixelate]",
    ]
    with dg.instance_for_test() as instance:
        result = run_pipeline("digits", overrides, instance, echo=lambda line: None)
        augmented = instance.fetch_materializations(dg.AssetKey("classifier_augmented"), limit=1).records[0]
        evaluation = instance.fetch_materializations(dg.AssetKey("evaluation"), limit=1).records[0]
        yield output, result, augmented.asset_materialization.metadata, evaluation.asset_materialization.metadata


@pytest.mark.slow
def test_augmented_classifier_trains_with_aux_bn(aux_bn_shift_run):
    output, result, metadata, _ = aux_bn_shift_run
    assert metadata["aux_bn"].value is True
    lineage = metadata["lineage"].value
    assert lineage["aux_bn"] is True and lineage["training"]["aux_bn"] is True
    assert lineage["synthetic_ratio"] == 0.04
    assert lineage["filter_versions"] == sorted({s["filter_version"] for s in lineage["shards"]}) and lineage["generator_versions"]
    upstream = lineage["upstream"]  # the materializations it read: the latest of each input, by storage id and run
    assert upstream["class_catalog"]["run_id"] and set(upstream["real_images"]) == set(upstream["synthetic_shards"]) == {"0", "1"}
    assert {s["class_id"]: s["run_id"] for s in lineage["shards"]} == {c: m["run_id"] for c, m in upstream["synthetic_shards"].items()}
    model = load_classifier(metadata["url"].value)  # a plain model: the aux layers were stripped
    assert model.config["aux_bn"] is True
    assert not any("aux" in key for key in model.model.state_dict())
    report = json.loads(open(f"{output}/report.json").read())
    baseline = load_classifier(report["models"]["baseline"]["url"])
    assert baseline.config["aux_bn"] is False
    assert list(baseline.model.state_dict()) == list(model.model.state_dict())


@pytest.mark.slow
def test_evaluation_reports_shift_sets_corruptions_and_deltas(aux_bn_shift_run):
    output, result, _, metadata = aux_bn_shift_run
    models = result.evaluation["models"]
    for name in ("classifier_baseline", "classifier_augmented"):
        evaluation = models[name]
        assert set(evaluation["shifted"]) == {"brightness@2", "jpeg@2", "pixelate@2"}
        assert set(evaluation["shifted_by_kind"]) == {"brightness", "jpeg", "pixelate"}
        bright = evaluation["shift_sets"]["bright"]
        assert bright["n"] == 16 and set(bright["per_class"]) == {"0", "1"}
        assert bright["drop"] == pytest.approx(evaluation["in_domain"]["top1"] - bright["top1"])
    delta = result.evaluation["delta"]
    assert set(delta["per_class_delta"]) == {"0", "1"}
    assert delta["shift_drop_delta"] == pytest.approx(
        models["classifier_augmented"]["shift_drop"] - models["classifier_baseline"]["shift_drop"]
    )
    assert set(delta["shift_sets_delta"]) == {"bright"}
    assert result.evaluation["shift_set_images"] == {"bright": 16}
    assert "baseline_top1_bright" in metadata and "baseline_shift_drop" in metadata

    markdown = open(f"{output}/report.md").read()
    assert "| top-1 on shift set bright |" in markdown
    assert "## Under shift: extra test sets (evaluation.shift_folders)" in markdown
    assert "| pixelate (mean) |" in markdown and "| jpeg@2 |" in markdown
    assert "auxiliary batch-norm on" in markdown


def test_shift_folder_with_foreign_classes_fails_before_any_training(tmp_path):
    folder = write_digit_folder(tmp_path / "shift", ["0", "1", "7"], per_class=1)
    overrides = tiny_overrides(str(tmp_path / "output")) + [f"evaluation.shift_folders={{odd: {folder}}}"]
    with dg.instance_for_test() as instance:
        with pytest.raises(PipelineError, match=r"stage 'catalog' failed: .*evaluation.shift_folders.odd .* has classes \['7'\]"):
            run_pipeline("digits", overrides, instance, echo=lambda line: None)
        assert instance.fetch_materializations(dg.AssetKey("judge"), limit=1).records == []
    assert not (tmp_path / "output").exists()


def test_ratio_the_generator_cannot_supply_fails_before_any_training(tmp_path):
    overrides = tiny_overrides(str(tmp_path / "output")) + ["augmented.synthetic_ratio=1.0"]
    with dg.instance_for_test() as instance:
        with pytest.raises(
            PipelineError, match=r"stage 'catalog' failed: .*needs 1\d\d synthetic images of class '0'.*generator.images_per_class=12"
        ):
            run_pipeline("digits", overrides, instance, echo=lambda line: None)
        assert instance.fetch_materializations(dg.AssetKey("generator"), limit=1).records == []


def test_cli_refuses_foreign_shift_classes_writing_nothing(tmp_path, monkeypatch, capsys):
    from synthaug_pipeline.cli import main

    folder = write_digit_folder(tmp_path / "shift", ["cat"], per_class=1)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["run", "--set", f"evaluation.shift_folders={{cats: {folder}}}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synthaug: error: evaluation.shift_folders.cats") and "['cat']" in err and len(err.splitlines()) == 1
    assert list(work.iterdir()) == []


def test_augmented_classifier_refuses_shards_whose_checks_failed_in_an_earlier_run(tmp_path):
    from synthaug_pipeline.defs.resources import SynthaugSettings
    from synthaug_pipeline.defs.training.assets import build_training_assets

    classifier_augmented = build_training_assets()[1]
    shards = {
        "0": shard_ref("0", {"has_accepted_images": False, "scores_finite": True}),
        "1": shard_ref("1", {"has_accepted_images": True}),
    }
    settings = SynthaugSettings(profile="digits", overrides=tiny_overrides(str(tmp_path)))
    refused = r"classifier_augmented refuses 1 synthetic shard\(s\).*class '0' \(failed: has_accepted_images\)"
    with dg.build_asset_context() as context, pytest.raises(ValueError, match=refused):
        classifier_augmented(context, settings=settings, class_catalog={"class_ids": ["0", "1"]}, real_images={}, synthetic_shards=shards)
    assert not (tmp_path / "models").exists()
