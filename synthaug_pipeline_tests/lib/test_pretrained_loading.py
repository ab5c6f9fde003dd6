"""Pretrained generators as a user with hub weights meets them: dtype and weight variants, cached model hashes,
the safety checker, per-family defaults, parity with the stock DiT pipeline, and one-line errors."""

import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DiTPipeline

from synthaug_pipeline.lib import model_files, pretrained, pretrained_sampling, pretrained_settings
from synthaug_pipeline.lib.config import GeneratorConfig
from synthaug_pipeline.lib.pretrained import GeneratorSettingError, load_pretrained, model_version
from synthaug_pipeline.lib.pretrained_defaults import FAMILY_DEFAULTS, model_family, resolve_sampling
from synthaug_pipeline.lib.pretrained_sampling import generate_class, generate_images, safety_flags
from synthaug_pipeline.lib.pretrained_settings import SamplingSettings
from synthaug_pipeline_tests.tiny_models import IMAGE_SIZE, tiny_dit_pipeline, tiny_stable_diffusion_pipeline


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    return str(tiny_dit_pipeline(tmp_path_factory.mktemp("dit") / "dit"))


# --- parity with the stock pipeline ----------------------------------------------------------------


def test_dit_sampling_loop_matches_dit_pipeline_call(dit_folder):
    loaded = load_pretrained("dit", dit_folder, "float32", "cpu")
    settings = SamplingSettings(sampler="ddim", steps=4, guidance_scale=4.0, batch_size=2)
    ours = generate_class(loaded, "n0", [5, 6], settings, (IMAGE_SIZE, IMAGE_SIZE, 3), class_index=3)
    p = loaded.pipeline
    stock = DiTPipeline(transformer=p.transformer, vae=p.vae, scheduler=p.scheduler.__class__.from_config(p.scheduler.config))
    stock.set_progress_bar_config(disable=True)
    reference = stock(
        class_labels=[3, 3],
        guidance_scale=4.0,
        num_inference_steps=4,
        generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
        output_type="np",
    ).images
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    scheduler = pretrained_settings.make_pretrained_scheduler("ddim", loaded.scheduler_config)
    pixels = pretrained_sampling._sample_dit(loaded, 3, gens, scheduler, settings, lambda *a: None).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    diff = float(np.abs(pixels - reference).max())
    assert diff < 1e-5, f"max pixel difference {diff} (in [0, 1]) between our DiT loop and DiTPipeline.__call__"
    reference_uint8 = (np.clip(reference, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(ours.images.astype(int) - reference_uint8.astype(int)).max() <= 1  # the same after rounding to uint8
    assert ours.batch_sizes == [2, 2] and ours.safety_flagged is None


# --- dtype, weight variants, device -------------------------------------------------------------------


def test_fp32_weights_load_as_bfloat16_everywhere(tmp_path):
    folder = tiny_stable_diffusion_pipeline(tmp_path / "sd", safety_checker=True)
    loaded = load_pretrained("text2img", str(folder), "bfloat16", "cpu")
    modules = [m for m in loaded.pipeline.components.values() if isinstance(m, torch.nn.Module)] + [loaded.safety_checker]
    assert {p.dtype for m in modules for p in m.parameters()} == {torch.bfloat16}
    assert loaded.variant is None and loaded.describe()["dtype"] == "bfloat16"
    images = generate_images(loaded, "0", [1], SamplingSettings(steps=2), (8, 8, 3), prompts=["a photo"])
    assert images.shape == (1, 8, 8, 3)


def test_a_diffusers_that_ignores_the_dtype_keyword_still_gives_the_asked_dtype(dit_folder, monkeypatch):
    real = DiTPipeline.from_pretrained.__func__

    def old_diffusers(cls, path, **kwargs):  # diffusers < 0.40 dropped `dtype` silently
        kwargs.pop("dtype", None)
        kwargs.pop("torch_dtype", None)
        return real(cls, path, **kwargs)

    monkeypatch.setattr(DiTPipeline, "from_pretrained", classmethod(old_diffusers))
    monkeypatch.setattr(pretrained, "_PIPELINES", type(pretrained._PIPELINES)())
    loaded = load_pretrained("dit", dit_folder, "bfloat16", "cpu")
    assert loaded.pipeline.transformer.dtype == torch.bfloat16 and loaded.pipeline.vae.dtype == torch.bfloat16


def test_the_half_precision_variant_is_read_when_the_folder_has_it(tmp_path):
    folder = tmp_path / "dit"
    tiny_dit_pipeline(folder, num_labels=10)
    DiffusionPipeline.from_pretrained(folder).save_pretrained(folder, variant="fp16")  # now both sets of weight files
    assert model_files.weight_variant(folder, "float16") == "fp16" and model_files.weight_variant(folder, "bfloat16") == "fp16"
    assert model_files.weight_variant(folder, "float32") is None
    loaded = load_pretrained("dit", str(folder), "float16", "cpu")
    assert loaded.variant == "fp16" and loaded.pipeline.transformer.dtype == torch.float16
    assert load_pretrained("dit", str(folder), "float32", "cpu").variant is None


def test_hub_downloads_ask_for_the_variant_and_fall_back_without_it(dit_folder, monkeypatch):
    asked = []

    def download(cls, name, revision=None, variant=None, **kw):
        asked.append((name, revision, variant))
        if variant is not None:
            raise ValueError("no fp16 variant in this repo")
        return dit_folder

    monkeypatch.setattr(DiffusionPipeline, "download", classmethod(download))
    model_files.hub_snapshot.cache_clear()
    assert str(model_files.resolve_model_path("org/dit", revision="v1", variant="fp16")) == dit_folder
    assert asked == [("org/dit", "v1", "fp16"), ("org/dit", "v1", None)]


def test_a_hub_snapshot_folder_names_its_revision(tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert model_files.snapshot_revision(tmp_path / "models--org--x" / "snapshots" / sha) == sha
    assert model_files.snapshot_revision(tmp_path / "my_model") is None


# --- model hashes cached beside the folder ---------------------------------------------------------


def test_a_model_folder_is_hashed_once_and_the_hash_kept_beside_it(tmp_path, monkeypatch):
    folder = tiny_dit_pipeline(tmp_path / "dit", num_labels=10)
    version = model_version(folder)
    record = json.loads((folder / model_files.VERSION_FILE).read_text())
    assert record["version"] == version and record["files"] > 3

    model_files._cached_version.cache_clear()  # a new process: the JSON answers, no byte is read
    monkeypatch.setattr(model_files, "_hash_files", lambda *a: pytest.fail("hashed again"))
    assert model_version(folder) == version
    monkeypatch.undo()

    tiny_dit_pipeline(folder, num_labels=10, seed=1)  # new weights: sizes/mtimes change, the cache is stale
    assert model_version(folder) != version


def test_a_read_only_model_folder_keeps_its_hash_in_the_user_cache(tmp_path, monkeypatch):
    folder = tiny_dit_pipeline(tmp_path / "dit", num_labels=10)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_mkstemp = model_files.tempfile.mkstemp

    def read_only(prefix, dir):
        if str(dir) == str(folder.resolve()):
            raise PermissionError(13, "Read-only file system")
        return real_mkstemp(prefix=prefix, dir=dir)

    monkeypatch.setattr(model_files.tempfile, "mkstemp", read_only)
    version = model_version(folder)
    assert not (folder / model_files.VERSION_FILE).exists()
    (cached,) = (tmp_path / "cache" / "synthaug" / "model_versions").glob("*.json")
    assert json.loads(cached.read_text())["version"] == version


# --- safety checker --------------------------------------------------------------------------------------


def _plant_concept(checker, extractor, image: np.ndarray, others: np.ndarray) -> None:
    """Make ``checker`` flag ``image`` and none of ``others``: its embedding becomes concept 0, with a threshold
    halfway between a perfect match and the closest other image."""
    from PIL import Image

    def embed(images):
        pixels = extractor([Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
        with torch.no_grad():
            return torch.nn.functional.normalize(checker.visual_projection(checker.vision_model(pixels)[1]), dim=-1)

    target, rest = embed(image[None])[0], embed(others)
    closest = float((rest @ target).max())
    assert closest < 0.99, "test images too alike to tell apart"
    with torch.no_grad():
        checker.concept_embeds[0] = target
        checker.concept_embeds_weights[0] = (1.0 + closest) / 2


def test_record_flags_the_known_image_and_keeps_its_pixels(tmp_path):
    folder = tiny_stable_diffusion_pipeline(tmp_path / "sd", safety_checker=True)
    loaded = load_pretrained("text2img", str(folder), "float32", "cpu", safety_checker="record")
    assert loaded.pipeline.safety_checker is None and loaded.safety_checker is not None  # detached: the pipeline cannot black out
    settings = SamplingSettings(steps=2, batch_size=2)
    shape, seeds, prompts = (IMAGE_SIZE, IMAGE_SIZE, 3), [1, 2, 3], ["a photo", "the digit", "a photo of the digit"]
    before = generate_class(loaded, "0", seeds, settings, shape, prompts=prompts)
    assert before.safety_flagged.tolist() == [False, False, False]

    _plant_concept(loaded.safety_checker, loaded.safety_feature_extractor, before.images[1], before.images[[0, 2]])
    flagged = generate_class(loaded, "0", seeds, settings, shape, prompts=prompts)
    assert flagged.safety_flagged.tolist() == [False, True, False]
    assert np.array_equal(flagged.images, before.images) and flagged.images[1].max() > 0  # never a black image
    assert safety_flags(loaded, torch.from_numpy(before.images[[1]]).permute(0, 3, 1, 2).float() / 255).tolist() == [True]

    off = generate_class(loaded, "0", seeds, SamplingSettings(steps=2, batch_size=2, safety_checker="off"), shape, prompts=prompts)
    assert off.safety_flagged is None and np.array_equal(off.images, before.images)


def test_safety_checker_off_does_not_load_it(tmp_path):
    folder = tiny_stable_diffusion_pipeline(tmp_path / "sd", safety_checker=True)
    loaded = load_pretrained("text2img", str(folder), "float32", "cpu", safety_checker="off")
    assert loaded.safety_checker is None and loaded.describe()["safety_checker"] is None
    with pytest.raises(GeneratorSettingError, match="generator.safety_checker 'maybe' is unknown"):
        load_pretrained("text2img", str(folder), "float32", "cpu", safety_checker="maybe")


def test_drop_removes_flagged_images_and_keeps_their_seeds():
    from synthaug_pipeline.defs.generation.assets import drop_flagged

    record = {
        "images": np.arange(3 * 4).reshape(3, 2, 2, 1).astype(np.uint8),
        "seeds": [7, 8, 9],
        "prompts": ["a", "b", "c"],
        "negative_prompts": None,
        "batch_sizes": [2, 2, 1],
        "safety_flagged": [False, True, False],
    }
    kept = drop_flagged(record, np.array([False, True, False]))
    assert kept["seeds"] == [7, 9] and kept["prompts"] == ["a", "c"] and kept["safety_flagged"] == [False, False]
    assert np.array_equal(kept["images"], record["images"][[0, 2]]) and kept["safety_dropped_seeds"] == [8]


# --- per-family defaults -----------------------------------------------------------------------------------


class _Config:
    def __init__(self, **values):
        self.__dict__.update(values)


@pytest.mark.parametrize(
    "kind, model, config, family",
    [
        ("dit", "facebook/DiT-XL-2-256", _Config(), "dit"),
        ("text2img", "runwayml/stable-diffusion-v1-5", _Config(cross_attention_dim=768), "sd1"),
        ("text2img", "stabilityai/stable-diffusion-2-1", _Config(cross_attention_dim=1024), "sd2"),
        (
            "text2img",
            "stabilityai/stable-diffusion-xl-base-1.0",
            _Config(cross_attention_dim=2048, addition_embed_type="text_time"),
            "sdxl",
        ),
        ("text2img", "stabilityai/sd-turbo", _Config(cross_attention_dim=1024), "sd-turbo"),
        ("img2img", "stabilityai/sdxl-turbo", _Config(addition_embed_type="text_time"), "sdxl-turbo"),
    ],
)
def test_model_families_are_told_apart(kind, model, config, family):
    assert model_family(kind, model, config)[0] == family


def test_unset_sampling_settings_take_the_family_default_and_set_ones_win():
    sd = SamplingSettings.from_config(GeneratorConfig(backend="text2img"), "sd1")
    assert (sd.sampler, sd.steps, sd.guidance_scale) == ("dpmsolver++", 25, 7.5)
    assert set(sd.defaulted) == {"sampler", "sample_steps", "guidance_scale", "output_size"}
    dit = SamplingSettings.from_config(GeneratorConfig(backend="dit", guidance_scale=1.5), "dit")
    assert dit.guidance_scale == 1.5 and dit.steps == 25 and "guidance_scale" not in dit.defaulted
    turbo = resolve_sampling("sd-turbo", "img2img", sampler=None, steps=None, guidance_scale=None, output_size=None)
    assert (turbo.steps, turbo.guidance_scale, turbo.output_size) == (2, 0.0, 512)
    assert SamplingSettings.from_config(GeneratorConfig(), None).guidance_scale == 2.5  # ddpm: its own defaults, filled in the config
    described = sd.describe()
    assert described["from_family_defaults"] and described["defaults_source"] == FAMILY_DEFAULTS["sd1"].source


def test_a_loaded_model_knows_its_family(dit_folder, tmp_path):
    assert load_pretrained("dit", dit_folder, "float32", "cpu").family == "dit"
    sd = load_pretrained("text2img", str(tiny_stable_diffusion_pipeline(tmp_path / "sd")), "float32", "cpu")
    assert sd.family == "sd1" and "cross_attention_dim 16" in sd.family_reason


# --- bad input: one line naming the setting ------------------------------------------------------------


def test_a_hub_id_not_in_the_cache_without_network_is_one_line(monkeypatch):
    def offline(cls, name, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files,\nand couldn't find them in the cache")

    monkeypatch.setattr(DiffusionPipeline, "download", classmethod(offline))
    model_files.hub_snapshot.cache_clear()
    with pytest.raises(GeneratorSettingError) as error:
        load_pretrained("text2img", "someorg/not-cached", revision="main")
    message = str(error.value)
    assert "\n" not in message and message.startswith("generator.model 'someorg/not-cached' at generator.revision 'main'")
    assert "not in the hub cache" in message


def test_a_model_folder_without_a_scheduler_config_is_refused_before_loading(tmp_path, monkeypatch):
    folder = tiny_dit_pipeline(tmp_path / "dit", num_labels=10)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    monkeypatch.setattr(DiTPipeline, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("weights loaded")))
    with pytest.raises(GeneratorSettingError, match=r"^generator.model '.*' has no scheduler/scheduler_config.json") as error:
        load_pretrained("dit", str(folder), "float32", "cpu")
    assert "\n" not in str(error.value)


def test_a_revision_for_a_local_folder_is_refused(dit_folder):
    with pytest.raises(GeneratorSettingError, match="generator.revision 'v2' applies to hub ids"):
        load_pretrained("dit", dit_folder, "float32", "cpu", revision="v2")


# --- CUDA: half precision sampling (run on purpose with -m gpu) ---------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_sampling_on_cuda_is_finite_and_close_to_fp32(dit_folder, tmp_path, dtype):
    sd = str(tiny_stable_diffusion_pipeline(tmp_path / "sd"))
    for kind, folder, inputs in (("dit", dit_folder, {"class_index": 3}), ("text2img", sd, {"prompts": ["a photo", "the digit"]})):
        settings = SamplingSettings(sampler="ddim", steps=4, guidance_scale=3.0)
        full = generate_images(load_pretrained(kind, folder, "float32", "cuda"), "0", [1, 2], settings, (16, 16, 3), **inputs)
        half_model = load_pretrained(kind, folder, dtype, "cuda")
        assert half_model.denoiser.dtype == pretrained.TORCH_DTYPES[dtype] and half_model.device == "cuda"
        half = generate_images(half_model, "0", [1, 2], settings, (16, 16, 3), **inputs)
        assert np.abs(half.astype(int) - full.astype(int)).mean() < 8  # same noise, same model: close, not equal
