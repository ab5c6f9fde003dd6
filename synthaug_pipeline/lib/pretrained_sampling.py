"""Sampling one class from a loaded pretrained pipeline (:mod:`~.pretrained`) with :mod:`~.pretrained_settings`.

:func:`generate_class` samples one class and returns uint8 ``[N, H, W, C]`` images at the profile's size and
channel count, the format of the DDPM backend's :func:`~.diffusion_sampling.sample_images`, with each image's batch
size and safety flag (the checkpoint's safety checker, run on the real pixels by :func:`safety_flags`).

Reproducibility: image ``i`` draws all its randomness (initial latents, img2img's VAE posterior sample and
added noise, ancestral scheduler noise) from its own CPU ``torch.Generator`` seeded with ``seeds[i]`` (the
callers use :func:`~.diffusion_sampling.image_seed`), so on a CPU the same settings reproduce the same pixels at any
batch size. On CUDA, kernels may reduce in another order at another batch size (after an out-of-memory
retry, say): each image's batch size is returned and recorded on its shard row.
Pure module: no Dagster here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .pretrained import TORCH_DTYPES, GeneratorSettingError, NonFiniteImagesError, PretrainedGenerator
from .pretrained_settings import SamplingSettings, dit_num_labels, make_pretrained_scheduler, validate_settings

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L"), for grayscale profiles
BATCH_PIXELS = 8 * 512 * 512  # default batch: 8 images at 512 px (16 UNet inputs with guidance), more when smaller
MAX_DEFAULT_BATCH = 32
logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- #
# Sampling one class
# --------------------------------------------------------------------------- #


def default_batch_size(size: int) -> int:
    """Images per pipeline call at ``size`` px when generator.pretrained_batch_size is unset: 8 at 512 px
    (16 UNet inputs with guidance), 2 at 1024 px, at most 32 for small models."""
    return max(1, min(MAX_DEFAULT_BATCH, BATCH_PIXELS // (int(size) * int(size))))


@dataclass
class GeneratedClass:
    """One class's samples and what decided them beyond the settings."""

    images: np.ndarray  # uint8 [N, H, W, C]
    batch_sizes: list[int]  # images per pipeline call that produced each image (CUDA kernels may differ with it)
    safety_flagged: np.ndarray | None  # bool [N] from the checkpoint's safety checker; None when none ran
    oom_retries: int  # batches retried at half size after CUDA out-of-memory


def generate_images(generator: PretrainedGenerator, class_id: str, seeds: Sequence[int], settings: SamplingSettings,
                    image_shape: Sequence[int], **inputs: Any) -> np.ndarray:
    """The images of :func:`generate_class` (same arguments)."""
    return generate_class(generator, class_id, seeds, settings, image_shape, **inputs).images


def generate_class(
    generator: PretrainedGenerator,
    class_id: str,
    seeds: Sequence[int],
    settings: SamplingSettings,
    image_shape: Sequence[int],
    *,
    class_index: int | None = None,
    prompts: Sequence[str] | None = None,
    conditioning: Sequence[np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> GeneratedClass:
    """One uint8 image per seed, shaped ``[len(seeds), *image_shape]`` (``image_shape`` = (H, W, C), C = 1 or 3).

    Per-image inputs, by kind: ``dit`` needs ``class_index`` (see :func:`~.pretrained_settings.dit_class_indices`); ``text2img``
    ``prompts``; ``img2img`` ``prompts`` and ``conditioning`` (uint8 ``[h, w, c]`` real images, any size);
    ``image_variation`` ``conditioning``. ``progress(done, total)`` is called once per batch.
    Batches hold ``settings.batch_size`` images (None: :func:`default_batch_size`); a batch that runs out of
    CUDA memory is halved and retried (reported through ``log``, default: this module's logger) and later
    batches keep the smaller size. Every image draws from its own seed, so on CPU the pixels do not depend on
    the batch; on CUDA, kernels may reduce in another order at another batch size, so each image's batch size is
    returned (and recorded on its shard row).
    With a safety checker in the checkpoint and ``settings.safety_checker`` record or drop, each decoded
    image is checked on its real pixels (never replaced by a black image) and flagged in ``safety_flagged``.
    Raises :class:`~.pretrained.NonFiniteImagesError` naming the class and settings when the model yields NaN/Inf.
    """
    validate_settings(generator, settings)
    n = len(seeds)
    height, width, channels = (int(v) for v in image_shape)
    if channels not in (1, 3):
        raise GeneratorSettingError(f"image_shape must end in 1 or 3 channels, got {tuple(image_shape)}")
    needs = {
        "dit": ("class_index",),
        "text2img": ("prompts",),
        "img2img": ("prompts", "conditioning"),
        "image_variation": ("conditioning",),
    }
    given = {"class_index": class_index, "prompts": prompts, "conditioning": conditioning}
    for name in needs[generator.kind]:
        value = given[name]
        if value is None or (name != "class_index" and len(value) != n):
            raise GeneratorSettingError(f"class {class_id!r}: a {generator.kind} generator needs {name} for each of the {n} seeds")
    if generator.kind == "dit" and not 0 <= int(class_index) < dit_num_labels(generator):
        raise GeneratorSettingError(f"class {class_id!r}: DiT class index {class_index} is outside 0..{dit_num_labels(generator) - 1}")

    def check(tensor: torch.Tensor, where: str) -> None:
        if not torch.isfinite(tensor).all():
            raise NonFiniteImagesError(
                f"class {class_id!r}: generator.model {generator.model!r} produced non-finite values {where} "
                f"(generator.dtype={generator.dtype}, generator.sampler={settings.sampler}, generator.sample_steps={settings.steps}); "
                "float16 overflows in some VAEs: try generator.dtype=bfloat16 or float32, otherwise the weights are broken"
            )

    def one_batch(begin: int, end: int) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[begin:end]]  # fresh per try: a retry redraws the same noise
        scheduler = make_pretrained_scheduler(settings.sampler, generator.scheduler_config)
        if generator.kind == "dit":
            return _sample_dit(generator, int(class_index), gens, scheduler, settings, check)
        batch_prompts = list(prompts[begin:end]) if prompts is not None else None
        batch_images = list(conditioning[begin:end]) if conditioning is not None else None
        return _sample_stable_diffusion(generator, gens, scheduler, settings, check, batch_prompts, batch_images)

    checking = generator.safety_checker is not None and settings.safety_checker != "off"
    size = settings.output_size or generator.native_size
    batch = int(settings.batch_size or default_batch_size(size))
    log = log or logger.warning
    out = np.empty((n, height, width, channels), dtype=np.uint8)
    flagged = np.zeros(n, dtype=bool) if checking else None
    batch_sizes = [0] * n
    retries = 0
    begin = 0
    while begin < n:
        end = min(n, begin + batch)
        try:
            pixels = one_batch(begin, end)
        except torch.cuda.OutOfMemoryError:
            if end - begin == 1:
                raise GeneratorSettingError(
                    f"class {class_id!r}: one {size} px image of generator.model {generator.model!r} does not fit in "
                    f"{generator.device} memory (generator.dtype={generator.dtype}): "
                    "use float16/bfloat16 or a smaller generator.output_size"
                ) from None
            pixels = None
        if pixels is None:  # outside the except block, so the failed batch's tensors are already released
            batch = max(1, (end - begin) // 2)
            retries += 1
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log(f"class {class_id!r}: a batch of {end - begin} images ran out of {generator.device} memory; retrying with {batch}")
            continue
        check(pixels, "in the decoded images")
        if checking:
            flagged[begin:end] = safety_flags(generator, pixels)
        out[begin:end] = to_profile_images(pixels, (height, width), channels)
        batch_sizes[begin:end] = [end - begin] * (end - begin)
        if progress is not None:
            progress(end, n)
        begin = end
    return GeneratedClass(images=out, batch_sizes=batch_sizes, safety_flagged=flagged, oom_retries=retries)


@torch.no_grad()
def safety_flags(generator: PretrainedGenerator, pixels: torch.Tensor) -> np.ndarray:
    """The checkpoint's safety checker on float ``[N, 3, h, w]`` images in ``[0, 1]``: one bool per image.

    The checker blacks out what it flags in the ``images`` it is given; it gets placeholders, so the real
    pixels stay and only the flags are kept.
    """
    checker, extractor = generator.safety_checker, generator.safety_feature_extractor
    rgb = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    clip_input = extractor([Image.fromarray(image) for image in rgb], return_tensors="pt").pixel_values
    parameter = next(checker.parameters())
    _, flags = checker(images=np.zeros((len(rgb), 1)), clip_input=clip_input.to(device=parameter.device, dtype=parameter.dtype))
    return np.asarray([bool(f) for f in flags], dtype=bool)


@torch.no_grad()
def _sample_dit(
    generator: PretrainedGenerator,
    class_index: int,
    gens: list[torch.Generator],
    scheduler,
    settings: SamplingSettings,
    check: Callable[[torch.Tensor, str], None],
) -> torch.Tensor:
    """DiTPipeline's loop, with two changes: each image's noise (ancestral steps too) comes from its own
    generator, and the null class is the model's ``num_embeds_ada_norm`` rather than a fixed 1000."""
    pipeline = generator.pipeline
    transformer, vae = pipeline.transformer, pipeline.vae
    config = transformer.config
    device, dtype = torch.device(generator.device), TORCH_DTYPES[generator.dtype]
    shape = (config.in_channels, config.sample_size, config.sample_size)
    x = torch.cat([torch.randn((1, *shape), generator=g) for g in gens]).to(device=device, dtype=dtype)
    scheduler.set_timesteps(settings.steps, device=device)
    x = x * scheduler.init_noise_sigma
    guided = settings.guidance_scale > 1.0
    labels = torch.full((len(gens),), class_index, dtype=torch.long, device=device)
    if guided:  # classifier-free guidance: one forward on [x, x] with [class, null]
        labels = torch.cat([labels, torch.full_like(labels, config.num_embeds_ada_norm)])
    for step, t in enumerate(scheduler.timesteps):
        inp = scheduler.scale_model_input(x, t)
        inp = torch.cat([inp, inp]) if guided else inp
        timesteps = t.reshape(1).to(device).expand(len(inp))
        output = transformer(inp, timestep=timesteps, class_labels=labels).sample
        eps = output[:, : config.in_channels]  # learned-sigma models also predict a variance; these samplers do not use it
        if guided:
            eps_cond, eps_uncond = eps.chunk(2)
            eps = eps_uncond + settings.guidance_scale * (eps_cond - eps_uncond)
        check(eps, f"at denoising step {step}")
        x = scheduler.step(eps, t, x, generator=gens).prev_sample
    images = vae.decode(x / vae.config.scaling_factor).sample
    return images.float() / 2 + 0.5


def _sample_stable_diffusion(
    generator: PretrainedGenerator,
    gens: list[torch.Generator],
    scheduler,
    settings: SamplingSettings,
    check: Callable[[torch.Tensor, str], None],
    prompts: list[str] | None,
    conditioning: list[np.ndarray] | None,
) -> torch.Tensor:
    """One batch through the diffusers pipeline; per-image generators make every image independent of the batch."""
    pipeline = generator.pipeline
    pipeline.scheduler = scheduler
    size = settings.output_size or generator.native_size
    common = {"num_inference_steps": settings.steps, "guidance_scale": settings.guidance_scale, "generator": gens, "output_type": "pt"}

    def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
        check(tensors["latents"], f"at denoising step {step}")
        return tensors

    if generator.kind == "image_variation":  # this pipeline still has the older per-step callback
        result = pipeline(
            image=_conditioning_pil(conditioning, size),
            height=size,
            width=size,
            callback=lambda step, t, latents: check(latents, f"at denoising step {step}"),
            **common,
        )
    else:
        negative = [settings.negative_prompt] * len(prompts) if settings.negative_prompt else None
        text = {"prompt": prompts, "negative_prompt": negative, "callback_on_step_end": on_step_end}
        if generator.kind == "img2img":
            result = pipeline(image=_conditioning_pil(conditioning, size), strength=settings.strength, **text, **common)
        else:
            result = pipeline(height=size, width=size, **text, **common)
    return result.images.float()


def _conditioning_pil(images: Sequence[np.ndarray], size: int) -> list[Image.Image]:
    """Real uint8 ``[h, w, c]`` images as RGB PIL images at the generation size."""
    out = []
    for image in images:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise GeneratorSettingError(f"conditioning images must be uint8 [H, W, 1 or 3], got {getattr(image, 'shape', type(image))}")
        rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
        out.append(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
    return out


def to_profile_images(pixels: torch.Tensor, size: tuple[int, int], channels: int) -> np.ndarray:
    """Float ``[N, 3, h, w]`` in ``[0, 1]`` -> uint8 ``[N, H, W, channels]`` (antialiased bicubic, luma for grayscale)."""
    x = pixels.detach().float().cpu().clamp(0, 1)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    if channels == 1:
        x = sum(w * x[:, i : i + 1] for i, w in enumerate(LUMA))
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def per_image(values: Sequence[Any], count: int) -> list[Any]:
    """``count`` values cycling through ``values`` (prompts or conditioning images -> one per image)."""
    if not values:
        raise GeneratorSettingError("need at least one value to assign to images")
    return [values[i % len(values)] for i in range(count)]
