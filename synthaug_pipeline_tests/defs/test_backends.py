"""Pretrained generation backends through Dagster, on two digit classes and tiny random-weight diffusers models."""

import json

import dagster as dg
import pytest

from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.lib.config import ProfileError
from synthaug_pipeline.lib.images import decode_image
from synthaug_pipeline.lib.pretrained import model_version
from synthaug_pipeline.lib.shards import list_class_shards, read_shards
from synthaug_pipeline.orchestration import STAGES
from synthaug_pipeline_tests.tiny_models import tiny_dit_pipeline, tiny_image_variation_pipeline, tiny_stable_diffusion_pipeline

CLASSES = ["0", "1"]
IMAGES_PER_CLASS = 3
STAGES_UP_TO_SHARDS = [stage for stage in STAGES if stage.name != "classifiers"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    class_map = root / "digits_to_dit.json"
    class_map.write_text(json.dumps({"0": 7, "1": 2}))
    return {
        "dit": str(tiny_dit_pipeline(root / "dit", num_labels=10)),
        "sd": str(tiny_stable_diffusion_pipeline(root / "sd")),
        "variation": str(tiny_image_variation_pipeline(root / "variation")),
        "sd_nan": str(tiny_stable_diffusion_pipeline(root / "sd_nan", nan=True)),
        "class_map": str(class_map),
    }


def backend_overrides(output: str, backend: str, model: str, *extra: str) -> list[str]:
    return [
        "data.classes=['0', '1']",
        "data.train_per_class=20",
        "data.test_per_class=10",
        f"generator.backend={backend}",
        f"generator.model={model}",
        f"generator.images_per_class={IMAGES_PER_CLASS}",
        "generator.sample_steps=2",
        "generator.sample_batch_size=2",
        "generator.guidance_scale=2.0",
        "generator.negative_prompt=blurry",
        "generator.device=cpu",
        "prompts.prompts_per_class=2",
        "augmented.synthetic_ratio=0.1",  # 2 synthetic images per class for 20 real: the preflight check passes
        "judge.steps=5",
        "filter.min_confidence=0.0",
        "filter.require_label_match=false",
        "filter.min_accepted_per_class=0",
        f"output.url={output}",
        *extra,
    ]


BACKENDS = {  # name -> (generator.backend, model key, extra overrides)
    "dit": ("dit", "dit", lambda m: [f"generator.class_index_map={m['class_map']}"]),
    "text2img": ("text2img", "sd", lambda m: []),
    "img2img": ("img2img", "sd", lambda m: ["generator.strength=0.5", "generator.conditioning_augmentations=['flip']"]),
    "image_variation": ("img2img", "variation", lambda m: ["generator.image_variation=true"]),
}


def materialize(overrides: list[str], assets: tuple[str, ...], instance, partition: str | None = None) -> dg.ExecuteInProcessResult:
    defs = build_definitions("digits", overrides)
    return dg.materialize(
        list(defs.assets),
        selection=list(assets),
        partition_key=partition,
        instance=instance,
        resources=dict(defs.resources),
        raise_on_error=False,
    )


def run_until_shards(overrides: list[str], instance) -> list[dg.ExecuteInProcessResult]:
    """The `synthaug run` stages up to the shards (no classifiers), every class; stops at the first failure."""
    results = []
    for stage in STAGES_UP_TO_SHARDS:
        for partition in CLASSES if stage.per_class else [None]:
            results.append(materialize(overrides, stage.assets, instance, partition))
            if not results[-1].success:
                return results
    return results


def failure(results: list[dg.ExecuteInProcessResult]) -> str:
    events = [e for r in results for e in r.all_events if e.is_step_failure]
    assert events, "expected a failed step"
    error = events[0].step_failure_data.error
    return f"{events[0].step_key}: " + " / ".join(
        e.message for e in (error, error.cause, getattr(error.cause, "cause", None)) if e is not None
    )


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend_run(request, tiny_models, tmp_path_factory):
    backend, key, extra = BACKENDS[request.param]
    output = str(tmp_path_factory.mktemp(f"output_{request.param}"))
    overrides = backend_overrides(output, backend, tiny_models[key], *extra(tiny_models))
    with dg.instance_for_test() as instance:
        results = run_until_shards(overrides, instance)
        assert all(r.success for r in results), failure(results)
        yield request.param, tiny_models[key], output, overrides, instance


def test_backend_writes_both_classes_with_provenance(backend_run):
    name, model, output, _, instance = backend_run
    generator = instance.fetch_materializations(dg.AssetKey("generator"), limit=1).records[0].asset_materialization.metadata
    assert generator["model"].value == model and generator["version"].value == model_version(model)
    assert generator["num_parameters"].value > 1000 and generator["load_seconds"].value >= 0
    assert generator["scheduler"].value.startswith("ddim") and generator["dtype"].value == "float32"
    if name == "dit":
        assert generator["class_indices"].value == {"0": 7, "1": 2}

    for class_id in CLASSES:
        uris = list_class_shards(f"{output}/synthetic_shards", class_id)
        assert len(uris) == 1
        rows = read_shards(uris, accepted_only=False).to_pylist()
        assert len(rows) == IMAGES_PER_CLASS
        assert {r["generator_id"] for r in rows} == {model} and {r["generator_version"] for r in rows} == {model_version(model)}
        assert all(decode_image(r["image"], 1).shape == (8, 8, 1) for r in rows)  # resized to the profile's 8x8 grayscale
        assert len({r["seed"] for r in rows}) == IMAGES_PER_CLASS
        prompts = [r["prompt"] for r in rows]
        conditioning = [r["conditioning_image_id"] for r in rows]
        if name in ("text2img", "img2img"):
            assert all(f"digit {class_id}" in p for p in prompts), prompts  # from class_prompts
            assert {r["negative_prompt"] for r in rows} == {"blurry"}
        else:
            assert prompts == [None] * IMAGES_PER_CLASS and {r["negative_prompt"] for r in rows} == {None}
        if name in ("img2img", "image_variation"):
            assert all(c.startswith("train:") for c in conditioning), conditioning
        else:
            assert conditioning == [None] * IMAGES_PER_CLASS


def test_rerunning_one_class_regenerates_only_it_with_the_same_bytes(backend_run):
    _, _, output, overrides, instance = backend_run

    def images(class_id: str) -> list[bytes]:
        return read_shards(list_class_shards(f"{output}/synthetic_shards", class_id), accepted_only=False).column("image").to_pylist()

    def generated(class_id: str) -> int:
        records = instance.fetch_materializations(dg.AssetKey("synthetic_images"), limit=100).records
        return sum(r.partition_key == class_id for r in records)

    before = {c: (images(c), generated(c)) for c in CLASSES}
    result = materialize(overrides, ("synthetic_images", "synthetic_scores", "synthetic_shards"), instance, "1")
    assert result.success
    assert (images("1"), generated("1")) == (before["1"][0], before["1"][1] + 1)
    assert (images("0"), generated("0")) == before["0"]


# --- bad inputs: clear errors, nothing half-written ---------------------------------------------


def _nothing_written(output, instance, asset: str) -> None:
    assert not list_class_shards(f"{output}/synthetic_shards", "0") and not list_class_shards(f"{output}/synthetic_shards", "1")
    assert not instance.fetch_materializations(dg.AssetKey(asset), limit=1).records


def test_a_path_that_is_not_a_model_fails_the_generator(tmp_path):
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    with dg.instance_for_test() as instance:
        results = run_until_shards(backend_overrides(str(tmp_path / "out"), "text2img", str(not_a_model)), instance)
        message = failure(results)
        assert message.startswith("generator") and "generator.model" in message and "no model_index.json" in message
        _nothing_written(tmp_path / "out", instance, "generator")


def test_a_class_the_dit_model_cannot_produce_fails_the_generator(tiny_models, tmp_path):
    partial = tmp_path / "map.json"
    partial.write_text(json.dumps({"0": 7}))
    overrides = backend_overrides(str(tmp_path / "out"), "dit", tiny_models["dit"], f"generator.class_index_map={partial}")
    with dg.instance_for_test() as instance:
        message = failure(run_until_shards(overrides, instance))
        assert message.startswith("generator") and "class '1' has no DiT class index in generator.class_index_map" in message
        _nothing_written(tmp_path / "out", instance, "generator")


def test_settings_no_sampler_can_use_fail_before_any_class(tiny_models, tmp_path):
    overrides = backend_overrides(str(tmp_path / "out"), "img2img", tiny_models["sd"], "generator.strength=0.2")
    with dg.instance_for_test() as instance:
        message = failure(run_until_shards(overrides, instance))
        assert message.startswith("generator") and "generator.strength 0.2 x generator.sample_steps 2" in message
        _nothing_written(tmp_path / "out", instance, "generator")


@pytest.mark.parametrize(
    "setting, named", [("generator.sampler=heun", "generator.sampler"), ("generator.guidance_scale=80", "generator.guidance_scale")]
)
def test_unknown_scheduler_and_out_of_range_guidance_are_profile_errors(tiny_models, tmp_path, setting, named):
    with pytest.raises(ProfileError, match=named):
        build_definitions("digits", backend_overrides(str(tmp_path), "text2img", tiny_models["sd"], setting))


def test_a_model_producing_nans_fails_its_class_and_writes_nothing(tiny_models, tmp_path):
    output = tmp_path / "out"
    with dg.instance_for_test() as instance:
        message = failure(run_until_shards(backend_overrides(str(output), "text2img", tiny_models["sd_nan"]), instance))
        assert message.startswith("synthetic_images")
        assert "class '0'" in message and "generator.model" in message and "non-finite" in message and "generator.dtype=float32" in message
        _nothing_written(output, instance, "synthetic_images")
