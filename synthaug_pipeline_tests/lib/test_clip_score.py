"""CLIP score on a tiny random open_clip model built from a config (offline: no hub weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from synthaug_pipeline.lib.clip_score import ClipModelError, ClipScorer, load_clip_scorer  # noqa: E402

TINY_CLIP = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def write_tiny_clip(folder, seed: int = 0, weights: bool = True) -> str:
    """A ``local-dir:`` open_clip model (config + seeded random weights): loads like a downloaded one."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CLIP))
    if weights:
        import safetensors.torch

        torch.manual_seed(seed)
        model = open_clip.create_model(f"local-dir:{folder}")
        safetensors.torch.save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model; two threads only thrash when other tests share the cores
    yield write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")
    torch.set_num_threads(threads)


def _images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def test_clip_score_matches_open_clip_reference_pipeline(tiny_clip):
    from PIL import Image

    scorer = ClipScorer.load(tiny_clip, batch_size=2)
    assert scorer.name == f"open_clip:{tiny_clip}"
    images = _images(5, 32, 3)
    prompts = ["a photo of a 3", "a photo of a cat", "a photo of a 3", "a drawing", "a photo of a cat"]
    scores = scorer.score(images, prompts)
    assert scores.shape == (5,) and scores.dtype == np.float64 and (np.abs(scores) <= 1 + 1e-6).all()

    # Reference: open_clip's own PIL transforms and tokenizer, one image at a time.
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    tokenizer = open_clip.get_tokenizer(tiny_clip)
    model.eval()
    with torch.no_grad():
        expected = []
        for image, prompt in zip(images, prompts):
            e_img = model.encode_image(preprocess(Image.fromarray(image)).unsqueeze(0), normalize=True)
            e_txt = model.encode_text(tokenizer([prompt]), normalize=True)
            expected.append(float((e_img * e_txt).sum()))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_clip_score_batches_grey_images_and_prompts_consistently(tiny_clip):
    scorer = ClipScorer.load(tiny_clip, batch_size=256)
    small_batches = ClipScorer.load(tiny_clip, batch_size=3)
    grey = _images(7, 8, 1, seed=1)  # 8x8 digits: resized to the model's 32 px
    prompts = [f"a photo of a {i % 3}" for i in range(7)]
    scores = scorer.score(grey, prompts)
    np.testing.assert_allclose(small_batches.score(grey, prompts), scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scorer.score(np.repeat(grey, 3, axis=-1), prompts), scores, rtol=1e-5, atol=1e-6)
    # The score depends on the prompt each image is paired with.
    other = scorer.score(grey, ["a photo of a car"] * 7)
    assert np.abs(other - scores).max() > 1e-4
    assert scorer.score(grey[:0], []).shape == (0,)


def test_clip_score_rejects_mismatched_input(tiny_clip):
    scorer = load_clip_scorer(tiny_clip, None)
    assert load_clip_scorer(tiny_clip, None) is scorer  # one load per process
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(_images(2, 8, 1), ["only one"])
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(_images(2, 8, 1), "a string, not a list")
    with pytest.raises(ValueError, match="uint8 images"):
        scorer.score(np.zeros((2, 8, 8, 1), np.float32), ["a", "b"])


def test_clip_model_without_weights_is_refused(tmp_path):
    random_only = write_tiny_clip(tmp_path / "no_weights", weights=False)
    with pytest.raises(ClipModelError, match="scoring.clip_model="):
        ClipScorer.load(random_only)
    with pytest.raises(ClipModelError, match="scoring.clip_pretrained='/no/such/clip.pt'"):
        ClipScorer.load("ViT-B-32", "/no/such/clip.pt")


def test_clip_model_whose_tokenizer_is_missing_names_the_setting(tmp_path):
    folder = tmp_path / "no_tokenizer"
    model = write_tiny_clip(folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = str(tmp_path / "missing_tokenizer")
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ClipModelError, match=r"^prompts.clip_model='local-dir:.*': its tokenizer cannot be loaded") as error:
        ClipScorer.load(model, section="prompts")
    assert "\n" not in str(error.value)
