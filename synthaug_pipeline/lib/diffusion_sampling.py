"""Sampling the class-conditional DDPM (:mod:`.diffusion`) with classifier-free guidance.

The null class of the label embeddings gives the unconditional prediction that guidance mixes with the
conditional one. Images leave as uint8 ``[N, H, W, C]`` (see :mod:`.images`). Sampling is
reproducible per image: each image's randomness comes from its own seed (:func:`image_seed`), so its
pixels do not depend on the batch it was drawn in. Pure module: no Dagster here.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from .diffusion import TrainedGenerator, resolve_device
from .images import from_model_tensor

SAMPLERS = ("ddim", "ddpm", "dpmsolver++", "sde-dpmsolver++", "euler")
SAMPLING_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_scheduler(name: str, num_train_timesteps: int, beta_schedule: str):
    """A fresh diffusers scheduler for sampling (schedulers carry state: one per batch).

    Every sampler keeps the predicted clean image inside the data range [-1, 1], and does so
    *consistently*: the noise estimate the step uses is the one implied by the clipped image.
    ``ddpm`` (ancestral) and the DPM-Solver++ pair (which work on the clean-image prediction, with
    ``thresholding`` at ``sample_max_value=1``, i.e. clipping) get that from diffusers. ``ddim`` and
    ``euler`` do not (diffusers' DDIM clips the image but keeps the raw noise for its direction term,
    and Euler cannot clip): :func:`sample_images` clips for them through :func:`consistent_clip`.
    Without it, guidance pushes the clean image of our 8x8 generators past the range and DDIM got
    *worse* with more steps (86% -> 42% judged correct from 20 to 100 steps, BENCHMARKS.md).
    ``sde-dpmsolver++`` adds fresh noise each step like ancestral sampling (from each image's own
    seed), which lands closest to the 1000-step ancestral distribution at 20 steps.
    ``trailing`` spacing makes few-step samplers start at the last training timestep (pure noise).
    """
    common = {"num_train_timesteps": num_train_timesteps, "beta_schedule": beta_schedule}
    if name == "ddim":
        # set_alpha_to_one: the final step returns the predicted clean image, no leftover noise.
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=True, timestep_spacing="trailing")
    if name in ("dpmsolver++", "sde-dpmsolver++"):
        return DPMSolverMultistepScheduler(
            **common, algorithm_type=name, thresholding=True, sample_max_value=1.0, timestep_spacing="trailing"
        )
    if name == "euler":
        return EulerDiscreteScheduler(**common, timestep_spacing="trailing")
    raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def consistent_clip(scheduler, eps: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
    """The noise estimate whose clean image is ``x0 = clip(x0(eps), -1, 1)``, for DDIM and Euler steps.

    Both see the sample as ``x0 + sigma * eps`` up to a scale: DDIM's ``x_t = sqrt(a) * (x0 + sigma * eps)``
    with ``sigma = sqrt((1 - a) / a)``, Euler's ``x`` directly (``a`` = alphas_cumprod at ``t``). Other
    schedulers return ``eps`` unchanged (they clip on their own, see :func:`make_scheduler`).
    """
    if not isinstance(scheduler, (DDIMScheduler, EulerDiscreteScheduler)):
        return eps
    a = scheduler.alphas_cumprod[int(t)].to(x.device, torch.float64)  # float64: a is ~1e-5 at the first step
    sigma = ((1 - a) / a).sqrt()
    x_sigma = x.double() / a.sqrt() if isinstance(scheduler, DDIMScheduler) else x.double()
    x0 = (x_sigma - sigma * eps.double()).clamp(-1.0, 1.0)
    return ((x_sigma - x0) / sigma).to(eps.dtype)


def image_seed(class_id: str, index: int, generator_version: str, regeneration_round: int = 0) -> int:
    """A 63-bit seed for image ``index`` of ``class_id``, stable across processes and machines.

    ``regeneration_round`` > 0 draws a fresh, equally reproducible set of seeds for a class that is
    regenerated with the same generator (round 0 is the first draw; its seeds never change).
    """
    if regeneration_round < 0:
        raise ValueError(f"regeneration_round must be >= 0, got {regeneration_round}")
    key = f"{class_id}\x00{index}\x00{generator_version}" + (f"\x00round{regeneration_round}" if regeneration_round else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _check_finite(tensor: torch.Tensor, where: str, settings: str) -> None:
    if not torch.isfinite(tensor).all():
        raise ValueError(
            f"generator produced non-finite values for {where} ({settings}); change generator.sampler (ddim is the most "
            "robust), generator.sample_steps or a lower generator.guidance_scale; if every setting fails, the weights are "
            "broken: retrain with a lower generator.learning_rate"
        )


def _denoiser(generator: TrainedGenerator, device: torch.device, compile: bool) -> torch.nn.Module:
    """The UNet on ``device`` (moved in place and left there), channels_last on CUDA, compiled once if asked."""
    model = generator.model.to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # in place; cuDNN convolutions run fastest in NHWC
    if not compile:
        return model
    key = str(device)
    if key not in generator.compiled:
        generator.compiled[key] = torch.compile(model)
    return generator.compiled[key]


@torch.no_grad()
def sample_images(
    generator: TrainedGenerator,
    class_index: int,
    seeds: list[int],
    sampler: str = "ddim",
    steps: int = 20,
    guidance_scale: float = 2.5,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    compile: bool = False,
    class_id: str | None = None,
) -> np.ndarray:
    """Draw one uint8 ``[H, W, C]`` image per seed for ``class_index``; returns ``[len(seeds), H, W, C]``.

    Image ``i`` uses only ``torch.Generator().manual_seed(seeds[i])`` (initial noise and, for ``ddpm`` and
    ``sde-dpmsolver++``, the per-step noise), so it does not depend on ``batch_size`` or on the other seeds.
    Guidance: ``eps = eps_uncond + w * (eps_cond - eps_uncond)`` from one forward on ``[x, x]``
    (so a forward sees ``2 * batch_size`` images). ``guidance_scale <= 1`` means *no guidance*, as in
    diffusers pipelines: only the conditional half runs (exact for ``w == 1``; ``w < 1`` would blend
    toward unconditional samples, which is never wanted for class-specific data).
    ``progress(done, total)`` counts images, once per batch.

    ``device`` (``auto``/``cpu``/``cuda``): the model moves there and stays (callers cache the generator per
    process). On CUDA the UNet runs channels_last, under ``torch.autocast`` when ``dtype`` is float16/bfloat16
    (weights and scheduler arithmetic stay float32). CPU always samples in float32, as before: the pixels
    are bit-identical whatever ``dtype``. ``compile`` wraps the UNet in ``torch.compile`` once per device.
    ``class_id`` only names the class in errors.
    """
    cfg = generator.config
    num_classes, null_class = cfg["num_classes"], cfg["null_class"]
    if not isinstance(class_index, (int, np.integer)) or not 0 <= class_index < num_classes:
        raise ValueError(f"class_index {class_index!r} out of range: the generator knows classes 0..{num_classes - 1}")
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= cfg["num_train_timesteps"]:
        raise ValueError(
            f"steps (generator.sample_steps) must be between 1 and the generator's num_train_timesteps "
            f"{cfg['num_train_timesteps']}, got {steps!r}"
        )
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if dtype not in SAMPLING_DTYPES:
        raise ValueError(f"generator.dtype {dtype!r} is unknown: choose one of {', '.join(SAMPLING_DTYPES)}")
    make_scheduler(sampler, cfg["num_train_timesteps"], cfg["beta_schedule"])  # raise early on unknown names

    device = resolve_device(device)
    model = _denoiser(generator, device, compile)
    cuda = device.type == "cuda"
    # Autocast only on CUDA: the CPU path runs exactly the float32 ops it always has.
    autocast = (
        torch.autocast("cuda", dtype=SAMPLING_DTYPES[dtype]) if cuda and dtype != "float32" else contextlib.nullcontext()
    )
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    shape = (cfg["channels"], cfg["image_size"], cfg["image_size"])
    guided = guidance_scale > 1.0
    where = f"class {class_id!r} (class index {class_index})" if class_id is not None else f"class index {class_index}"
    settings = (
        f"generator.sampler={sampler!r}, generator.sample_steps={steps}, generator.guidance_scale={guidance_scale}"
        + (f", generator.dtype={dtype}" if cuda and dtype != "float32" else "")
    )
    out = np.empty((len(seeds), shape[1], shape[2], shape[0]), dtype=np.uint8)
    for begin in range(0, len(seeds), batch_size):
        chunk = [int(s) for s in seeds[begin : begin + batch_size]]
        n = len(chunk)
        gens = [torch.Generator().manual_seed(s) for s in chunk]
        # Per-image draws, concatenated: identical to what the image would get in a batch of one.
        x = torch.cat([torch.randn((1, *shape), generator=g) for g in gens]).to(device)
        scheduler = make_scheduler(sampler, cfg["num_train_timesteps"], cfg["beta_schedule"])
        scheduler.set_timesteps(steps, device=device)
        x = x * scheduler.init_noise_sigma
        cond = torch.full((n,), class_index, dtype=torch.long, device=device)
        labels = torch.cat([cond, torch.full_like(cond, null_class)]) if guided else cond
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)
            inp = torch.cat([inp, inp]) if guided else inp
            with autocast:
                eps = model(inp.contiguous(memory_format=memory_format), t, class_labels=labels).sample
            eps = eps.float()  # no-op in float32; the guidance mix and scheduler step stay float32
            if guided:
                eps_cond, eps_uncond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            _check_finite(eps, where, f"{settings}, at timestep {float(t):.0f}")
            eps = consistent_clip(scheduler, eps, x, t)
            # diffusers' randn_tensor draws row i from gens[i] when given a list (ddpm and sde-dpmsolver++ draw noise here).
            x = scheduler.step(eps, t, x, generator=gens).prev_sample
        _check_finite(x, where, f"{settings}, in the final images")
        out[begin : begin + n] = from_model_tensor(x)
        if progress is not None:
            progress(begin + n, len(seeds))
    return out


@torch.no_grad()
def sample_images_naive(generator: TrainedGenerator, class_index: int, n: int, guidance_scale: float, seed: int) -> np.ndarray:
    """Baseline for benchmarks: what one would write without thinking about speed.

    Full ``num_train_timesteps`` ancestral DDPM steps, guidance as two separate forwards, one batch of ``n``.
    """
    cfg = generator.config
    model = generator.model.eval()
    scheduler = DDPMScheduler(num_train_timesteps=cfg["num_train_timesteps"], beta_schedule=cfg["beta_schedule"], clip_sample=True)
    scheduler.set_timesteps(cfg["num_train_timesteps"])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, cfg["channels"], cfg["image_size"], cfg["image_size"]), generator=gen)
    cond = torch.full((n,), class_index, dtype=torch.long)
    null = torch.full((n,), cfg["null_class"], dtype=torch.long)
    for t in scheduler.timesteps:
        eps_cond = model(x, t, class_labels=cond).sample
        eps_uncond = model(x, t, class_labels=null).sample
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x, generator=gen).prev_sample
    return from_model_tensor(x)
