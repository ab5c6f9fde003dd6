"""Pretrained backends on tiny random-weight diffusers models written to disk: the real loading and sampling code."""

import functools
import json
from typing import get_args

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from synthaug_pipeline.lib import pretrained, pretrained_sampling
from synthaug_pipeline.lib.config import GeneratorConfig
from synthaug_pipeline.lib.diffusion_sampling import SAMPLERS
from synthaug_pipeline.lib.pretrained import (
    GeneratorSettingError,
    NonFiniteImagesError,
    load_pretrained,
    model_version,
    pipeline_kind,
    resolve_model_path,
)
from synthaug_pipeline.lib.pretrained_sampling import default_batch_size, generate_images, per_image, to_profile_images
from synthaug_pipeline.lib.pretrained_settings import (
    SCHEDULERS,
    SamplingSettings,
    dit_class_indices,
    imagenet_1k_wnids,
    make_pretrained_scheduler,
    validate_settings,
)
from synthaug_pipeline_tests.tiny_models import (
    IMAGE_SIZE,
    tiny_dit_pipeline,
    tiny_image_variation_pipeline,
    tiny_stable_diffusion_pipeline,
)

FAST = SamplingSettings(sampler="ddim", steps=2, guidance_scale=3.0, batch_size=2, strength=0.75, negative_prompt="blurry")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "dit": str(tiny_dit_pipeline(root / "dit")),
        "sd": str(tiny_stable_diffusion_pipeline(root / "sd")),
        "variation": str(tiny_image_variation_pipeline(root / "variation")),
        "sd_nan": str(tiny_stable_diffusion_pipeline(root / "sd_nan", nan=True)),
        "dit_nan": str(tiny_dit_pipeline(root / "dit_nan", num_labels=10, nan=True)),
    }


def _conditioning(n: int, channels: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (8, 8, channels), dtype=np.uint8) for _ in range(n)]


# --- DiT class map ----------------------------------------------------------------------------


def test_wnids_map_to_the_standard_imagenet_order():
    assert imagenet_1k_wnids()[:2] == ("n01440764", "n01443537") and len(imagenet_1k_wnids()) == 1000
    assert dit_class_indices(["n01443537", "n01440764"], 1000) == {"n01443537": 1, "n01440764": 0}


def test_a_class_the_model_cannot_produce_is_named(tmp_path):
    with pytest.raises(GeneratorSettingError, match=r"class 'cats'.*generator.class_index_map"):
        dit_class_indices(["n01440764", "cats"], 1000)
    with pytest.raises(GeneratorSettingError, match=r"class 'n15075141' maps to DiT class index 999.*0\.\.9"):
        dit_class_indices(["n15075141"], 10)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"0": 7, "1": 2}))
    assert dit_class_indices(["1", "0"], 10, str(mapping)) == {"1": 2, "0": 7}
    with pytest.raises(GeneratorSettingError, match=r"class '2' has no DiT class index in generator.class_index_map"):
        dit_class_indices(["0", "2"], 10, str(mapping))
    mapping.write_text(json.dumps({"0": "seven"}))
    with pytest.raises(GeneratorSettingError, match="must hold a JSON object"):
        dit_class_indices(["0"], 10, str(mapping))
    with pytest.raises(GeneratorSettingError, match="not a readable JSON file"):
        dit_class_indices(["0"], 10, str(tmp_path / "missing.json"))


# --- loading ------------------------------------------------------------------------------------


def test_a_path_that_is_not_a_model_names_the_setting(tmp_path):
    with pytest.raises(GeneratorSettingError, match=r"generator.model .* no model_index.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(GeneratorSettingError, match=r"generator.model '/no/such/model' does not exist"):
        load_pretrained("dit", "/no/such/model")
    with pytest.raises(GeneratorSettingError, match="generator.model is not set"):
        load_pretrained("text2img", None)


def test_a_model_of_another_family_names_the_setting(models):
    with pytest.raises(GeneratorSettingError, match=r"generator.model .* could not be loaded as a text2img pipeline"):
        load_pretrained("text2img", models["dit"])


def test_hub_ids_resolve_through_the_hub_cache(models, monkeypatch):
    monkeypatch.setattr(DiffusionPipeline, "download", classmethod(lambda cls, name, **kw: models["dit"]))
    loaded = load_pretrained("dit", "someorg/tiny-dit")
    assert (loaded.model, loaded.path) == ("someorg/tiny-dit", models["dit"])

    def offline(cls, name, **kw):
        raise OSError("we are offline")

    monkeypatch.setattr(DiffusionPipeline, "download", classmethod(offline))
    with pytest.raises(GeneratorSettingError, match=r"generator.model 'someorg/other'.*could not be fetched.*offline"):
        load_pretrained("dit", "someorg/other")


def test_the_pipeline_is_loaded_once_per_process_and_described(models):
    first = load_pretrained("text2img", models["sd"], "float32", "cpu")
    assert load_pretrained("text2img", models["sd"], "float32", "cpu") is first
    facts = first.describe()
    assert facts["pipeline"] == "StableDiffusionPipeline" and facts["native_size"] == IMAGE_SIZE
    assert facts["attention"] == "AttnProcessor2_0"  # PyTorch SDPA, diffusers' default
    assert facts["num_parameters"] == sum(
        p.numel() for m in (first.pipeline.unet, first.pipeline.vae, first.pipeline.text_encoder) for p in m.parameters()
    )
    assert facts["version"] == model_version(models["sd"])
    assert first.pipeline.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    half = load_pretrained("text2img", models["sd"], "bfloat16", "cpu")
    assert half is not first and half.pipeline.unet.dtype == torch.bfloat16


def test_a_rewritten_model_folder_is_reloaded_not_reused(tmp_path):
    folder = tiny_dit_pipeline(tmp_path / "dit", num_labels=10)
    first = load_pretrained("dit", str(folder), "float32", "cpu")
    assert load_pretrained("dit", str(folder), "float32", "cpu") is first
    tiny_dit_pipeline(folder, num_labels=10, seed=1)  # same path, other weights, mid-process
    second = load_pretrained("dit", str(folder), "float32", "cpu")
    assert second is not first and second.version == model_version(folder) != first.version
    old_weights, new_weights = (dict(g.pipeline.transformer.named_parameters()) for g in (first, second))
    assert not torch.equal(old_weights["pos_embed.proj.weight"], new_weights["pos_embed.proj.weight"])
    assert load_pretrained("dit", str(folder), "float32", "cpu") is second
    assert first not in pretrained._PIPELINES.values()  # the stale copy is dropped, not kept beside the new one
    assert len(pretrained._PIPELINES) <= pretrained.PIPELINE_CACHE_SIZE


def test_model_version_follows_the_weights(tmp_path):
    folder = tiny_dit_pipeline(tmp_path / "dit", num_labels=10)
    before = model_version(folder)
    assert model_version(tiny_dit_pipeline(tmp_path / "same", num_labels=10)) == before  # same seed, same bytes
    tiny_dit_pipeline(folder, num_labels=10, seed=1)
    assert model_version(folder) != before


def test_pipeline_kind_follows_backend_and_image_variation():
    assert pipeline_kind(GeneratorConfig(backend="img2img", image_variation=True)) == "image_variation"
    assert pipeline_kind(GeneratorConfig(backend="text2img")) == "text2img"
    with pytest.raises(GeneratorSettingError, match="generator.image_variation needs generator.backend=img2img"):
        pipeline_kind(GeneratorConfig(backend="dit", image_variation=True))
    with pytest.raises(GeneratorSettingError, match="trained by the pipeline"):
        pipeline_kind(GeneratorConfig(backend="ddpm"))


# --- schedulers and settings -------------------------------------------------------------------


def test_pretrained_backends_offer_the_ddpm_backends_sampler_names():
    literal, none = get_args(GeneratorConfig.model_fields["sampler"].annotation)  # None: the backend's default
    assert tuple(SCHEDULERS) == SAMPLERS == get_args(literal) and none is type(None)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("ddim", DDIMScheduler),
        ("ddpm", DDPMScheduler),
        ("dpmsolver++", DPMSolverMultistepScheduler),
        ("sde-dpmsolver++", DPMSolverMultistepScheduler),
        ("euler", EulerDiscreteScheduler),
    ],
)
def test_schedulers_swap_by_name_and_keep_the_models_noise_schedule(models, name, cls):
    loaded = load_pretrained("text2img", models["sd"], "float32", "cpu")
    scheduler = make_pretrained_scheduler(name, loaded.scheduler_config)
    assert type(scheduler) is cls
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.beta_end == pytest.approx(0.012)
    images = generate_images(loaded, "7", [1, 2], SamplingSettings(sampler=name, steps=2), (8, 8, 3), prompts=["a photo"] * 2)
    assert images.shape == (2, 8, 8, 3)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sampler": "heun"}, r"generator.sampler 'heun' is unknown: choose one of ddim, ddpm, dpmsolver\+\+, sde-dpmsolver\+\+, euler"),
        ({"steps": 0}, r"generator.sample_steps must be an integer from 1 to 1000"),
        ({"steps": 1001}, r"generator.sample_steps .* got 1001"),
        ({"guidance_scale": float("nan")}, r"generator.guidance_scale must be a finite number"),
        ({"guidance_scale": -1.0}, r"generator.guidance_scale"),
        ({"batch_size": 0}, r"generator.pretrained_batch_size must be an integer >= 1"),
        ({"strength": 0.2, "steps": 2}, r"generator.strength 0.2 x generator.sample_steps 2 leaves no denoising step"),
        ({"output_size": 20}, r"generator.output_size must be a multiple of 8"),
    ],
)
def test_settings_out_of_range_name_the_setting(models, change, message):
    loaded = load_pretrained("img2img", models["sd"], "float32", "cpu")
    settings = SamplingSettings(**{**FAST.__dict__, **change})
    with pytest.raises(GeneratorSettingError, match=message):
        generate_images(loaded, "0", [1], settings, (8, 8, 1), prompts=["x"], conditioning=_conditioning(1))


def test_dit_generates_only_at_its_native_size(models):
    loaded = load_pretrained("dit", models["dit"], "float32", "cpu")
    validate_settings(loaded, SamplingSettings(output_size=IMAGE_SIZE))
    with pytest.raises(GeneratorSettingError, match="DiT generates at its native 16 px"):
        validate_settings(loaded, SamplingSettings(output_size=32))


# --- sampling -----------------------------------------------------------------------------------


def _inputs(kind: str, n: int) -> dict:
    return {
        "dit": {"class_index": 3},
        "text2img": {"prompts": per_image(["a photo of the digit 0", "the digit 0"], n)},
        "img2img": {"prompts": per_image(["a photo of the digit 0"], n), "conditioning": _conditioning(n)},
        "image_variation": {"conditioning": _conditioning(n, channels=3)},
    }[kind]


def _sample(models, kind: str, seeds, settings=FAST, shape=(8, 8, 1), **inputs):
    loaded = load_pretrained(kind, models["variation" if kind == "image_variation" else "dit" if kind == "dit" else "sd"], "float32", "cpu")
    return generate_images(loaded, "0", seeds, settings, shape, **{**_inputs(kind, len(seeds)), **inputs})


@pytest.mark.parametrize("kind", ["dit", "text2img", "img2img", "image_variation"])
def test_same_seeds_same_pixels_whatever_the_batch(models, kind):
    inputs, calls = _inputs(kind, 3), []
    images = _sample(models, kind, [11, 12, 13], progress=lambda done, total: calls.append((done, total)), **inputs)
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    assert calls == [(2, 3), (3, 3)]  # once per batch of FAST.batch_size = 2
    assert np.array_equal(_sample(models, kind, [11, 12, 13], **inputs), images)
    last = {k: v if k == "class_index" else v[2:] for k, v in inputs.items()}
    assert np.array_equal(_sample(models, kind, [13], **last)[0], images[2])  # image 2 drawn alone, not in a batch
    assert not np.array_equal(images[0], images[1])


def test_dit_class_labels_change_the_images(models):
    assert not np.array_equal(_sample(models, "dit", [5], class_index=1), _sample(models, "dit", [5], class_index=2))
    with pytest.raises(GeneratorSettingError, match=r"class '0': DiT class index 1000 is outside 0\.\.999"):
        _sample(models, "dit", [5], class_index=1000)


@pytest.mark.parametrize("sampler", ["ddpm", "euler", "dpmsolver++", "sde-dpmsolver++"])
def test_dit_reproduces_with_ancestral_and_sigma_samplers(models, sampler):
    settings = SamplingSettings(sampler=sampler, steps=3, guidance_scale=2.0, batch_size=4)
    first = _sample(models, "dit", [1, 2], settings)
    assert np.array_equal(first, _sample(models, "dit", [1, 2], settings))
    assert np.array_equal(first[1], _sample(models, "dit", [2], settings)[0])


def test_prompts_and_negative_prompts_steer_text2img(models):
    base = _sample(models, "text2img", [1], prompts=["a photo of the digit 0"])
    assert not np.array_equal(base, _sample(models, "text2img", [1], prompts=["a photo of the digit 9"]))
    other_negative = SamplingSettings(**{**FAST.__dict__, "negative_prompt": "the digit 9"})
    assert not np.array_equal(base, _sample(models, "text2img", [1], other_negative, prompts=["a photo of the digit 0"]))


def test_img2img_follows_its_conditioning_image(models):
    black, white = np.zeros((8, 8, 1), np.uint8), np.full((8, 8, 1), 255, np.uint8)
    settings = SamplingSettings(**{**FAST.__dict__, "strength": 0.5, "guidance_scale": 1.0})
    dark = _sample(models, "img2img", [1], settings, conditioning=[black])
    light = _sample(models, "img2img", [1], settings, conditioning=[white])
    assert not np.array_equal(dark, light)  # random weights: the VAE keeps no brightness, but the input reaches the output
    stronger = SamplingSettings(**{**settings.__dict__, "strength": 1.0})
    assert not np.array_equal(dark, _sample(models, "img2img", [1], stronger, conditioning=[black]))


def test_outputs_take_the_profiles_size_and_channels(models):
    rgb = _sample(models, "text2img", [1, 2], shape=(32, 32, 3))
    assert rgb.shape == (2, 32, 32, 3)
    larger = _sample(models, "text2img", [1], SamplingSettings(**{**FAST.__dict__, "output_size": 24}), shape=(24, 24, 3))
    assert larger.shape == (1, 24, 24, 3)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    assert to_profile_images(red, (2, 2), 1).tolist() == [[[[76], [76]], [[76], [76]]]]  # 0.299 * 255, as PIL's "L"
    assert to_profile_images(red, (4, 4), 3)[0, 0, 0].tolist() == [255, 0, 0]


def test_missing_per_image_inputs_are_named(models):
    loaded = load_pretrained("img2img", models["sd"], "float32", "cpu")
    with pytest.raises(GeneratorSettingError, match="class '4': a img2img generator needs conditioning for each of the 2 seeds"):
        generate_images(loaded, "4", [1, 2], FAST, (8, 8, 1), prompts=["x", "y"], conditioning=_conditioning(1))
    with pytest.raises(GeneratorSettingError, match="needs prompts"):
        generate_images(loaded, "4", [1], FAST, (8, 8, 1), conditioning=_conditioning(1))


@pytest.mark.parametrize("kind, key, inputs", [("text2img", "sd_nan", {"prompts": ["x", "y"]}), ("dit", "dit_nan", {"class_index": 1})])
def test_a_model_producing_nans_names_the_class_and_settings(models, kind, key, inputs):
    loaded = load_pretrained(kind, models[key], "float32", "cpu")
    with pytest.raises(NonFiniteImagesError, match=r"class '3': generator.model .* non-finite values .*generator.dtype=float32"):
        generate_images(loaded, "3", [1, 2], FAST, (8, 8, 1), **inputs)


def test_compiled_denoiser_gives_the_same_images(models, monkeypatch):
    # the eager backend runs TorchDynamo's graph capture without needing a C++ toolchain in CI
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    compiled = load_pretrained("dit", models["dit"], "float32", "cpu", compile=True)
    assert compiled.compiled and type(compiled.pipeline.transformer).__name__ == "OptimizedModule"
    images = generate_images(compiled, "0", [1, 2], FAST, (8, 8, 1), class_index=3)
    assert np.array_equal(images, _sample(models, "dit", [1, 2]))


def test_pretrained_batches_default_to_a_size_that_fits():
    assert (default_batch_size(512), default_batch_size(1024), default_batch_size(256), default_batch_size(16)) == (8, 2, 32, 32)
    # generator.sample_batch_size (256) is the ddpm backend's: a pretrained pipeline never gets it
    assert SamplingSettings.from_config(GeneratorConfig(backend="text2img")).batch_size is None
    assert SamplingSettings.from_config(GeneratorConfig(backend="text2img", pretrained_batch_size=4)).batch_size == 4


def test_out_of_memory_halves_the_batch_with_the_same_pixels(models, monkeypatch):
    real, sizes, logs = pretrained_sampling._sample_stable_diffusion, [], []

    def small_gpu(generator, gens, *args):
        sizes.append(len(gens))
        if len(gens) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(generator, gens, *args)

    seeds, inputs = [21, 22, 23, 24, 25], _inputs("text2img", 5)
    one_by_one = _sample(models, "text2img", seeds, SamplingSettings(**{**FAST.__dict__, "batch_size": 1}), **inputs)
    monkeypatch.setattr(pretrained_sampling, "_sample_stable_diffusion", small_gpu)
    calls = []
    images = _sample(
        models, "text2img", seeds, SamplingSettings(**{**FAST.__dict__, "batch_size": 4}), **inputs,
        progress=lambda done, total: calls.append(done), log=logs.append,
    )
    assert sizes == [4, 2, 2, 1]  # 4 fails, then the smaller size is kept: [0:2], [2:4], [4:5]
    assert calls == [2, 4, 5] and len(logs) == 1 and "batch of 4 images ran out of cpu memory; retrying with 2" in logs[0]
    assert np.array_equal(images, one_by_one)

    out_of_memory = lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom"))
    monkeypatch.setattr(pretrained_sampling, "_sample_stable_diffusion", out_of_memory)
    with pytest.raises(GeneratorSettingError, match=r"class '0': one 16 px image .* does not fit .*generator.output_size"):
        _sample(models, "text2img", [1, 2], SamplingSettings(**{**FAST.__dict__, "batch_size": 2}), prompts=["x", "y"])


def test_per_image_cycles_through_values():
    assert per_image(["a", "b"], 5) == ["a", "b", "a", "b", "a"]
    with pytest.raises(GeneratorSettingError):
        per_image([], 2)
