"""Tiny random-weight diffusers pipelines, saved in diffusers layout, for tests that run the real loading code.

Each builder writes a folder that ``from_pretrained(folder)`` loads exactly like a hub checkpoint: DiT
(class labels), Stable Diffusion (text-to-image and img2img share it) and Stable Diffusion image variation.
All are a few thousand parameters, 16x16 px output (8x8 latents, a 2-level VAE), so a 2-step sample takes
milliseconds on a CPU. Weights come from a fixed seed, so the same builder call writes the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    StableDiffusionImageVariationPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

IMAGE_SIZE = 16  # pixels: 8x8 latents, VAE downsampling factor 2
LATENT_SIZE = 8
EMBED_DIM = 16  # text / image embedding width = UNet cross-attention width
TOKENIZER_MAX_LENGTH = 16
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=IMAGE_SIZE,
    )


def _scheduler() -> DDIMScheduler:
    # What SD 1.x ships: scaled-linear betas, no clipping (latents are not in [-1, 1]).
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )


def _unet(cross_attention_dim: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
    )


def _poison(module: torch.nn.Module) -> None:
    """Make ``module`` produce NaNs: a NaN in the last parameter reaches every output."""
    with torch.no_grad():
        list(module.parameters())[-1].fill_(float("nan"))


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode table: printable bytes map to themselves, the rest to chars from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_clip_tokenizer_files(folder: Path, words: tuple[str, ...] = ("a", "photo", "of", "the", "digit")) -> int:
    """Write a CLIP BPE ``vocab.json`` + ``merges.txt``: every byte as a char and as a word end, plus ``words``.

    Any text tokenizes (unknown words fall back to single characters). Returns the vocabulary size.
    """
    chars = _byte_chars()
    vocab_tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in words:  # merge left to right: "p h" -> "ph", "ph o" -> "pho", ... and the word end last
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            if pieces[0] not in vocab_tokens:
                vocab_tokens.append(pieces[0])
    vocab_tokens += list(SPECIAL_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab_tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return len(vocab_tokens)


def tiny_dit_pipeline(folder: str | Path, num_labels: int = 1000, seed: int = 0, nan: bool = False) -> Path:
    """A DiT pipeline (DiTTransformer2DModel with learned sigma, AutoencoderKL, DDIM) for ``num_labels`` classes."""
    folder = Path(folder)
    _seeded(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=4,
        out_channels=8,  # noise + learned variance, as the released DiT checkpoints
        num_layers=1,
        sample_size=LATENT_SIZE,
        patch_size=2,
        num_embeds_ada_norm=num_labels,
    )
    if nan:
        _poison(transformer)
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False)
    DiTPipeline(transformer=transformer, vae=_vae(), scheduler=scheduler).save_pretrained(folder)
    return folder


def tiny_safety_checker() -> tuple[StableDiffusionSafetyChecker, CLIPImageProcessor]:
    """Stable Diffusion's NSFW checker on a tiny CLIP vision tower, and its feature extractor. Its concept
    thresholds are 1.0 (a cosine never exceeds it): nothing is flagged until a test plants a concept."""
    config = CLIPConfig(
        text_config={"hidden_size": EMBED_DIM, "intermediate_size": 2 * EMBED_DIM, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={
            "hidden_size": EMBED_DIM,
            "intermediate_size": 2 * EMBED_DIM,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=EMBED_DIM,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(1.0)
        checker.special_care_embeds_weights.fill_(1.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return checker, extractor


def tiny_stable_diffusion_pipeline(folder: str | Path, seed: int = 0, nan: bool = False, safety_checker: bool = False) -> Path:
    """A Stable Diffusion 1.x-shaped pipeline (UNet, VAE, CLIP text encoder + tokenizer, DDIM); with
    ``safety_checker`` it carries the NSFW checker and feature extractor, as hub checkpoints do."""
    folder = Path(folder)
    _seeded(seed)
    vocab_size = write_clip_tokenizer_files(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=TOKENIZER_MAX_LENGTH)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=EMBED_DIM,
            intermediate_size=2 * EMBED_DIM,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=TOKENIZER_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = _unet(EMBED_DIM)
    if nan:
        _poison(unet)
    checker, extractor = tiny_safety_checker() if safety_checker else (None, None)
    pipeline = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=checker,
        feature_extractor=extractor,
        requires_safety_checker=safety_checker,
    )
    pipeline.save_pretrained(folder)
    return folder


def tiny_image_variation_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """A Stable Diffusion image-variation pipeline: a CLIP vision encoder's image embedding conditions the UNet."""
    folder = Path(folder)
    _seeded(seed)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=EMBED_DIM,
            intermediate_size=2 * EMBED_DIM,
            projection_dim=EMBED_DIM,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=8,
        )
    )
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    pipeline = StableDiffusionImageVariationPipeline(
        vae=_vae(),
        image_encoder=image_encoder,
        unet=_unet(EMBED_DIM),
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=feature_extractor,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder


def parameter_count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def shard_ref(class_id: str, checks: dict[str, bool], error: str | None = None):
    """A ``synthetic_shards`` value naming no real file: for tests that must be refused before any shard is read."""
    from synthaug_pipeline.lib.shards import ShardRef

    return ShardRef(class_id, f"memory://none/{class_id}.parquet", "0" * 64, 0, 0, "v", "{}", "g", "run", checks, error)


# The folder profile at tiny settings (8x8 grey images, 2-step models, 3 generated images per class): measures
# orchestration, storage and memory, not image quality. The storage-layer tests and benchmarks/scale.py use it.
TINY_FOLDER_SETTINGS = [
    "data.image_size=8",
    "data.channels=1",
    "data.train_per_class=null",
    "data.test_fraction=0.34",
    "generator.block_out_channels=[8, 16]",
    "generator.norm_num_groups=4",
    "generator.train_steps=2",
    "generator.warmup_steps=1",
    "generator.images_per_class=3",
    "generator.sample_steps=2",
    "judge.steps=2",
    "classifier.steps=2",
    "filter.min_confidence=0.0",
    "filter.require_label_match=false",
    "filter.min_accepted_per_class=0",
    "augmented.synthetic_ratio=0.25",
    "augmented.shortfall=use_available",
    "evaluation.corruptions=[]",
]
