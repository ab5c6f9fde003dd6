"""The `imagenet` profile end to end on three wnid classes: a Parquet of tiny JPEGs the test writes, a tiny timm judge
with 1000 outputs from a local weights file (used as-is), a tiny random DiT for 1000 labels, a tiny classifier; and
its bad input as one line from the command line, before anything is written."""

import io

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from synthaug_pipeline.cli import main
from synthaug_pipeline.lib.imagenet import imagenet_1k
from synthaug_pipeline.lib.shard_reading import read_shards
from synthaug_pipeline.orchestration import run_pipeline
from synthaug_pipeline_tests.tiny_models import IMAGE_SIZE, tiny_dit_pipeline

WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark


def _jpeg(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    rows = [(wnid, "val" if i >= 6 else "train") for wnid in [*WNIDS, "n01491361"] for i in range(8)]  # a 4th class, left out
    pq.write_table(
        pa.table({"image": [_jpeg(rng) for _ in rows], "wnid": [w for w, _ in rows], "split": [s for _, s in rows]}),
        root / "images.parquet",
    )
    torch.manual_seed(0)
    judge = timm.create_model("test_resnet", num_classes=1000)
    safetensors.torch.save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(root / "judge.safetensors"))
    small = timm.create_model("test_resnet", num_classes=10)
    safetensors.torch.save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(root / "judge10.safetensors"))
    return {
        "data": str(root / "images.parquet"),
        "judge": str(root / "judge.safetensors"),
        "judge10": str(root / "judge10.safetensors"),
        "dit": str(tiny_dit_pipeline(root / "dit", num_labels=1000)),
    }


def imagenet_overrides(inputs: dict, output: str) -> list[str]:
    return [
        f"data.path={inputs['data']}",
        f"data.classes={WNIDS}",
        f"data.image_size={IMAGE_SIZE}",
        "data.train_per_class=6",
        f"generator.model={inputs['dit']}",
        "generator.sampler=ddim",
        "generator.sample_steps=2",
        "generator.images_per_class=4",
        "generator.pretrained_batch_size=4",
        "generator.device=cpu",
        "judge.model=test_resnet",
        f"judge.pretrained={inputs['judge']}",
        "classifier.model=synthaug_cnn_small",
        "classifier.steps=3",
        "classifier.batch_size=8",
        "classifier.optimizer=adamw",
        "classifier.learning_rate=0.001",
        "augmented.synthetic_ratio=0.5",  # 3 of the 4 generated per class for 6 real
        "filter.min_confidence=0.0",
        "filter.require_label_match=false",
        "experiments.few_shot_k=2",
        "experiments.ratios=[0.0, 0.5]",
        "evaluation.corruptions=['contrast']",
        "evaluation.severities=[2]",
        f"output.url={output}",
    ]


@pytest.mark.slow
def test_three_imagenet_classes_end_to_end(inputs, tmp_path):
    output = tmp_path / "out"
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        result = run_pipeline("imagenet", imagenet_overrides(inputs, str(output)), instance, echo=lines.append)
        judge = instance.fetch_materializations(dg.AssetKey("judge"), limit=1).records[0]
    assert result.failed_checks == []
    catalog = result.catalog
    assert catalog["class_ids"] == WNIDS and catalog["class_names"] == ["tench", "goldfish", "great white shark"]
    assert [c["available"] for c in catalog["classes"]] == [{"train": 6, "test": 2}] * 3
    assert [(c["train"], c["test"]) for c in catalog["classes"]] == [(6, 2)] * 3
    assert any("used as-is (not trained)" in line for line in lines)
    assert judge.asset_materialization.metadata["model"].value == "test_resnet-pretrained"
    assert result.evaluation["models"]["classifier_augmented"]["in_domain"]["n"] == 6
    rows = read_shards([str(p) for p in sorted((output / "synthetic_shards").glob("class=*/shard-*.parquet"))]).to_pylist()
    assert sorted({r["class_id"] for r in rows}) == WNIDS and {r["generator_id"] for r in rows} == {inputs["dit"]}


def test_the_judge_keeps_the_logits_of_the_run_classes(inputs, tmp_path):
    from synthaug_pipeline.lib.classifier import load_classifier

    overrides = imagenet_overrides(inputs, str(tmp_path / "out"))
    with dg.instance_for_test() as instance:
        assert materialize_imagenet(overrides, ("class_catalog",), instance).success
        for wnid in WNIDS:
            assert materialize_imagenet(overrides, ("real_images",), instance, wnid).success
        result = materialize_imagenet(overrides, ("judge",), instance)
        assert result.success
        record = result.output_for_node("judge")
    judge = load_classifier(record.url)
    assert judge.config["pretrained_adapter"]["class_indices"] == [list(imagenet_1k()).index(w) for w in WNIDS] == [0, 1, 2]
    assert judge.model.num_classes == 3 and judge.config["trained"] is False


def materialize_imagenet(overrides, assets, instance, partition=None):
    from synthaug_pipeline.definitions import build_definitions

    defs = build_definitions("imagenet", overrides)
    return dg.materialize(
        list(defs.assets),
        selection=list(assets),
        partition_key=partition,
        instance=instance,
        resources=dict(defs.resources),
        raise_on_error=False,
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "data.path is not set"),
        (["--set", "data.path=DATA", "--set", "data.classes=[n99999999]"], "no ImageNet-1k wnid: ['n99999999']"),
        (["--set", "data.path=DATA", "--set", "data.classes=[n01440764, n01440764]"], "more than once"),
        (["--set", "data.path=DATA", "--classes", "n01440764", "n04592741"], "no training rows in Parquet file"),
        (["--set", "data.path=DATA", "--classes", "n01440764", "--set", "judge.model=resnet50"], "set judge.model=tf_efficientnet_lite0"),
        (["--set", "data.path=DATA", "--classes", "n01440764", "--set", "judge.model=test_resnet", "--set", "judge.pretrained=JUDGE10"], "judge.model outputs 10 classes"),
    ],
)
def test_bad_imagenet_input_is_one_line_and_writes_nothing(extra, message, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    argv = ["run", "--profile", "imagenet", *[item.replace("DATA", inputs["data"]).replace("JUDGE10", inputs["judge10"]) for item in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synthaug: error: ") and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_judge_whose_output_is_not_imagenet_1k_stops_at_the_catalog_before_any_model_loads(inputs, tmp_path):
    overrides = [*imagenet_overrides(inputs, str(tmp_path / "out")), f"judge.pretrained={inputs['judge10']}"]
    with dg.instance_for_test() as instance:  # the catalog's preflight reads the file's head size; nothing is built
        result = materialize_imagenet(overrides, ("class_catalog",), instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    text = failure.message + (failure.cause.message if failure.cause else "")
    assert "judge.model outputs 10 classes" in text
