"""Generation backends through Dagster, on two digit classes: pretrained ones on tiny random-weight diffusers
models, and fine-tuning the DDPM backend from a previous run's generator (generator.init_from)."""

import json

import dagster as dg
import pytest

from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.lib.conditioning import parse_provenance, pixel_ids
from synthaug_pipeline.lib.config import ProfileError, load_profile
from synthaug_pipeline.lib.datasets import load_dataset
from synthaug_pipeline.lib.diffusion_store import load_generator
from synthaug_pipeline.lib.images import decode_image
from synthaug_pipeline.lib.pretrained import model_version
from synthaug_pipeline.lib.shard_reading import read_shards
from synthaug_pipeline.lib.shards import list_class_shards
from synthaug_pipeline.orchestration import STAGES
from synthaug_pipeline_tests.tiny_models import tiny_dit_pipeline, tiny_image_variation_pipeline, tiny_stable_diffusion_pipeline

CLASSES = ["0", "1"]
IMAGES_PER_CLASS = 3
STAGES_UP_TO_SHARDS = [stage for stage in STAGES if stage.name != "classifiers"]
# an experiment grid a few generated images per class can feed, so the preflight checks pass
SMALL_GRID = ("experiments.regimes=['few_shot']", "experiments.ratios=[0.0, 0.1]", "experiments.ratios_by_regime={}")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    class_map = root / "digits_to_dit.json"
    class_map.write_text(json.dumps({"0": 7, "1": 2}))
    return {
        "dit": str(tiny_dit_pipeline(root / "dit", num_labels=10)),
        "sd": str(tiny_stable_diffusion_pipeline(root / "sd")),
        "sd_checked": str(tiny_stable_diffusion_pipeline(root / "sd_checked", safety_checker=True)),
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
        "generator.sampler=ddim",  # the pipelines' own scheduler family at 2 steps; samplers are tested in lib
        "generator.pretrained_batch_size=2",
        "generator.guidance_scale=2.0",
        "generator.negative_prompt=blurry",
        "generator.device=cpu",
        "prompts.prompts_per_class=2",
        "augmented.synthetic_ratio=0.1",  # 2 synthetic images per class for 20 real: the preflight check passes
        *SMALL_GRID,
        "judge.steps=5",
        "filter.min_confidence=0.0",
        "filter.require_label_match=false",
        "filter.min_accepted_per_class=0",
        f"output.url={output}",
        *extra,
    ]


BACKENDS = {  # name -> (generator.backend, model key, extra overrides)
    "dit": ("dit", "dit", lambda m: [f"generator.class_index_map={m['class_map']}"]),
    "text2img": ("text2img", "sd_checked", lambda m: []),  # a checkpoint with a safety checker, as hub SD models have
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
    name, model, output, overrides, instance = backend_run
    dataset = load_dataset(load_profile("digits", overrides).data)
    generator = instance.fetch_materializations(dg.AssetKey("generator"), limit=1).records[0].asset_materialization.metadata
    assert generator["model"].value == model and generator["version"].value == model_version(model)
    assert generator["num_parameters"].value > 1000 and generator["load_seconds"].value >= 0
    sampler = load_profile("digits", overrides).generator.sampler
    assert generator["scheduler"].value.startswith(sampler) and generator["dtype"].value == "float32"
    if name == "dit":
        assert generator["class_indices"].value == {"0": 7, "1": 2}

    for class_id in CLASSES:
        uris = list_class_shards(f"{output}/synthetic_shards", class_id)
        assert len(uris) == 1
        rows = read_shards(uris, accepted_only=False).to_pylist()
        assert len(rows) == IMAGES_PER_CLASS
        assert {r["generator_id"] for r in rows} == {model} and {r["generator_version"] for r in rows} == {model_version(model)}
        assert {r["generator_revision"] for r in rows} == {None} and {r["generator_dtype"] for r in rows} == {"float32"}  # a local folder
        assert [r["generation_batch"] for r in rows] == [2, 2, 1]  # generator.pretrained_batch_size=2
        # the checker ran on the real pixels and flagged nothing; models without one record null
        assert {r["safety_flagged"] for r in rows} == ({False} if name == "text2img" else {None})
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
            # the real images carry no ids: each is named by its pixel hash, stable when data.train_per_class changes
            real = dataset.train.of_class(dataset.class_ids.index(class_id))
            assert {i for c in conditioning for i in parse_provenance(c)[0]} <= set(pixel_ids(real)), conditioning
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


# --- ddpm: fine-tuning from a previous run's generator ------------------------------------------


def ddpm_overrides(output: str, *extra: str) -> list[str]:
    return [
        "data.classes=['0', '1']",
        "data.train_per_class=20",
        "data.test_per_class=10",
        "generator.block_out_channels=[16, 32]",
        "generator.train_steps=3",
        "generator.warmup_steps=1",
        "generator.batch_size=8",
        "generator.images_per_class=2",
        "generator.sample_steps=2",
        "generator.device=cpu",
        "augmented.synthetic_ratio=0.05",  # 1 synthetic image per class for 20 real
        *SMALL_GRID,
        f"output.url={output}",
        *extra,
    ]


def train_ddpm(overrides: list[str], instance, classes: list[str] = CLASSES) -> dg.ExecuteInProcessResult:
    for assets, partitions in ((("class_catalog",), [None]), (("real_images", "class_prompts"), classes)):
        for partition in partitions:
            assert materialize(overrides, assets, instance, partition).success
    return materialize(overrides, ("generator",), instance)


def latest_generator(instance) -> dict:
    return instance.fetch_materializations(dg.AssetKey("generator"), limit=1).records[0].asset_materialization.metadata


def test_ddpm_fine_tunes_from_init_from_and_records_it(tmp_path):
    with dg.instance_for_test() as instance:
        assert train_ddpm(ddpm_overrides(str(tmp_path / "first")), instance).success
        first = latest_generator(instance)
        assert "init_from" not in first and first["total_train_steps"].value == 3
        start_url, start_version = first["url"].value, first["version"].value
        assert load_generator(start_url).config["class_ids"] == CLASSES

        tuned_overrides = ddpm_overrides(str(tmp_path / "second"), f"generator.init_from={start_url}")
        assert train_ddpm(tuned_overrides, instance).success
        tuned = latest_generator(instance)
        assert (tuned["init_from"].value, tuned["init_from_version"].value) == (start_url, start_version)
        assert tuned["total_train_steps"].value == 6 and tuned["version"].value != start_version
        saved = load_generator(tuned["url"].value).config
        assert (saved["init_from"], saved["init_from_url"], saved["total_train_steps"]) == (start_version, start_url, 6)
        # the fine-tuned generator samples through the pipeline like any other
        assert materialize(tuned_overrides, ("synthetic_images",), instance, "1").success


@pytest.mark.parametrize(
    "extra, classes, named",
    [
        (["generator.block_out_channels=[16, 64]"], CLASSES, "generator.block_out_channels=[16, 64] (it has [16, 32])"),
        (["data.classes=['0', '2']"], ["0", "2"], "was trained on classes ['0', '1'], this run has ['0', '2']"),
    ],
)
def test_an_incompatible_init_from_fails_the_generator_naming_the_setting(tmp_path, extra, classes, named):
    with dg.instance_for_test() as instance:
        assert train_ddpm(ddpm_overrides(str(tmp_path / "first")), instance).success
        start_url = latest_generator(instance)["url"].value
        overrides = ddpm_overrides(str(tmp_path / "second"), f"generator.init_from={start_url}", *extra)
        result = train_ddpm(overrides, instance, classes)
        message = failure([result])
        assert message.startswith("generator") and "generator.init_from" in message and named in message, message
        assert len(instance.fetch_materializations(dg.AssetKey("generator"), limit=10).records) == 1  # only the first run's
        assert not (tmp_path / "second" / "models").exists()


def test_init_from_that_is_no_generator_fails_before_training(tmp_path):
    with dg.instance_for_test() as instance:
        result = train_ddpm(ddpm_overrides(str(tmp_path / "out"), f"generator.init_from={tmp_path / 'nothing'}"), instance)
        message = failure([result])
        assert "generator.init_from" in message and "is not a generator saved by a previous run" in message
        assert not instance.fetch_materializations(dg.AssetKey("generator"), limit=1).records


def test_ddpm_settings_that_cannot_sample_fail_early(tmp_path):
    with pytest.raises(ProfileError, match="generator.sample_steps 30 exceeds generator.num_train_timesteps 20"):
        build_definitions("digits", ddpm_overrides(str(tmp_path), "generator.num_train_timesteps=20", "generator.sample_steps=30"))
    with pytest.raises(ProfileError, match="generator.init_from fine-tunes the ddpm backend"):
        build_definitions("digits", backend_overrides(str(tmp_path), "text2img", "some/model", "generator.init_from=/x"))
    # a generator trained on a short schedule, sampled with settings that outgrew it: the class fails before sampling
    short = ddpm_overrides(str(tmp_path / "out"), "generator.num_train_timesteps=20")
    with dg.instance_for_test() as instance:
        assert train_ddpm(short, instance).success
        result = materialize(ddpm_overrides(str(tmp_path / "out"), "generator.sample_steps=50"), ("synthetic_images",), instance, "0")
        message = failure([result])
        assert message.startswith("synthetic_images") and "generator.sample_steps 50 exceeds the num_train_timesteps 20" in message
        assert not instance.fetch_materializations(dg.AssetKey("synthetic_images"), limit=1).records
