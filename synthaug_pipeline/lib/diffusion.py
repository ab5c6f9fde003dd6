"""Class-conditional pixel-space DDPM with classifier-free guidance.

A small diffusers ``UNet2DModel`` (no attention: it is too slow on CPU) learns to
predict the noise added to an image, conditioned on a class label. Label index
``num_classes`` is the *null* class: training replaces a share of labels with it,
so one network gives both conditional and unconditional predictions, and
sampling can mix them (classifier-free guidance).

Images enter and leave as uint8 ``[N, H, W, C]`` (see :mod:`.images`). Sampling is
reproducible per image: each image's randomness comes from its own seed, so its
pixels do not depend on the batch it was drawn in. Pure module: no Dagster here.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DModel,
)
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .config import GeneratorConfig
from .records import record
from .images import from_model_tensor, to_model_tensor
from .progress import Eta

SAMPLERS = ("ddim", "ddpm", "dpmsolver++", "sde-dpmsolver++", "euler")
FORMAT = "synthaug-ddpm/1"
LOSS_INTERVAL = 10  # training steps averaged into one entry of TrainedGenerator.losses
WEIGHT_DECAY = 1e-4
GRAD_CLIP = 1.0


SAMPLING_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ARCHITECTURE_KEYS = ("block_out_channels", "layers_per_block", "norm_num_groups")  # GeneratorConfig fields the UNet shape follows


@record("synthetic_class")
@dataclass
class SyntheticClass:
    """One class's generated images as ``synthetic_images`` hands them on, with each image's provenance
    (seed; prompt and conditioning image when the backend used them)."""

    class_id: str
    class_index: int
    images: np.ndarray  # uint8 [N, H, W, C]
    seeds: list[int]
    backend: str
    generator_id: str
    generator_version: str
    sampler: str
    steps: int
    guidance_scale: float
    regeneration_round: int = 0
    prompts: list[str] | None = None
    negative_prompts: list[str | None] | None = None
    conditioning_image_ids: list[str] | None = None
    seconds: float = 0.0
    device: str | None = None
    generator_revision: str | None = None
    generator_dtype: str | None = None
    clip_prompt: str | None = None  # what CLIP compares prompt-less images with: the class's disambiguated name
    batch_sizes: list[int] | None = None  # each image's sampling batch (CUDA pixels can depend on it)
    safety_flagged: list[bool] | None = None  # None when no safety checker ran
    safety_dropped_seeds: list[int] = field(default_factory=list)
    oom_retries: int = 0


@dataclass
class TrainedGenerator:
    model: UNet2DModel  # EMA weights (float32), eval mode; on CPU after training/loading, then where it was last sampled
    config: dict  # JSON-able description: architecture, classes, schedule, training settings
    losses: list[float]  # mean training loss per LOSS_INTERVAL steps
    seconds: float
    num_parameters: int
    version: str = ""  # first 16 hex digits of sha256 of the safetensors bytes (set by save/load)
    url: str = ""  # where it was saved to / loaded from (set by save/load)
    # torch.compile wrappers of ``model`` by device, built once per process (the generator is cached per process)
    compiled: dict = field(default_factory=dict, repr=False, compare=False)


def resolve_device(device: str | torch.device) -> torch.device:
    """``generator.device``: ``auto`` is CUDA when torch sees one, else CPU."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)  # "cuda:1" is fine too
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"generator.device {name!r} is unknown: use auto, cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("generator.device is 'cuda' but torch sees no CUDA device: use auto or cpu")
    return resolved


def check_init_compatible(previous: TrainedGenerator, cfg: GeneratorConfig, image_size: int, channels: int, num_classes: int) -> None:
    """Raise ``ValueError`` naming the settings when ``previous`` cannot initialise a UNet built from ``cfg``."""
    where = f"generator.init_from {previous.url or '(in memory)'} (version {previous.version or 'unsaved'})"
    theirs = previous.config
    data = {"num_classes": num_classes, "image_size": image_size, "channels": channels}
    data_diff = {k: (theirs.get(k), v) for k, v in data.items() if theirs.get(k) != v}
    if data_diff:
        detail = ", ".join(f"{k} {old} vs {new} now" for k, (old, new) in data_diff.items())
        raise ValueError(
            f"{where} was trained on other data ({detail}): fine-tune only on the same classes and image size "
            "(data.classes, data.image_size, data.channels), or unset generator.init_from"
        )
    unet = theirs.get("unet", {})
    def plain(value):  # tuples (in memory) and lists (from JSON) compare equal
        return list(value) if isinstance(value, (list, tuple)) else value

    pairs = {k: (plain(unet.get(k)), plain(getattr(cfg, k))) for k in ARCHITECTURE_KEYS}
    arch_diff = {k: (old, new) for k, (old, new) in pairs.items() if old != new}
    if arch_diff:
        detail = ", ".join(f"generator.{k}={new} (it has {old})" for k, (old, new) in arch_diff.items())
        raise ValueError(f"{where} has another UNet architecture: {detail}; set these to match it, or unset generator.init_from")


def build_unet(cfg: GeneratorConfig, image_size: int, channels: int, num_classes: int) -> UNet2DModel:
    """A class-conditional UNet with ``num_classes + 1`` label embeddings (the last is the null class).

    Only ResNet blocks (``DownBlock2D``/``UpBlock2D``, mid block without attention), which keeps a
    training step around a second on a 2-core CPU for 32x32 images.
    """
    levels = len(cfg.block_out_channels)
    factor = 2 ** (levels - 1)  # each level but the last halves the resolution
    if image_size < factor or image_size % factor:
        raise ValueError(
            f"image_size {image_size} must be divisible by {factor} (2**(levels-1)) for "
            f"block_out_channels {list(cfg.block_out_channels)}; resize the images or use fewer levels"
        )
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise ValueError(f"norm_num_groups {cfg.norm_num_groups} must divide every block_out_channels entry; {bad} do not")
    if num_classes < 1 or channels < 1:
        raise ValueError(f"need at least one class and one channel, got num_classes={num_classes}, channels={channels}")
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        mid_block_type="UNetMidBlock2D",
        add_attention=False,
        num_class_embeds=num_classes + 1,
    )


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero (constant LR plateaued in CALIBRATION.md)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _validate_training_set(images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")
    if len(images) == 0:
        raise ValueError("cannot train a generator on an empty image set")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square, got {images.shape[1]}x{images.shape[2]}")
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers shaped [{len(images)}], got {labels.dtype} {labels.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got min {labels.min()} max {labels.max()}")


def train_generator(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    cfg: GeneratorConfig,
    progress: Callable[[int, float], None] | None = None,
    device: str | torch.device = "cpu",
    init_from: TrainedGenerator | None = None,
) -> TrainedGenerator:
    """Train (or fine-tune, with ``init_from``) a class-conditional noise predictor.

    Deterministic for a given ``cfg.seed`` on a given machine: weight init, batch choice, noise,
    timesteps and label dropout all come from seeded generators. ``progress(step, loss)`` is called
    at the first step, about every 10% of ``cfg.train_steps`` and at least every 30 s, with the mean loss
    since the previous call.
    Returns the EMA weights (in eval mode, on CPU), which sample better than the raw weights.
    """
    _validate_training_set(images, labels, num_classes)
    device = torch.device(device)
    _, size, _, channels = images.shape
    start = time.perf_counter()

    # Weight init uses the global RNG; fork it so training neither depends on nor disturbs callers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_unet(cfg, size, channels, num_classes)
    if init_from is not None:
        check_init_compatible(init_from, cfg, size, channels, num_classes)
        try:
            model.load_state_dict(init_from.model.state_dict())
        except RuntimeError as exc:  # architecture mismatch the config check missed: name the fix rather than the tensor
            raise ValueError(f"generator.init_from UNet does not match the generator settings (block_out_channels etc.): {exc}") from None
    model.to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False)

    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=WEIGHT_DECAY)
    # A warm-up longer than half the run (e.g. short smoke runs) would never reach the peak rate.
    warmup = min(cfg.warmup_steps, cfg.train_steps // 2)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, cfg.train_steps))

    data = to_model_tensor(images).to(device)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    null_class = num_classes
    # CPU generator so the random stream is the same whatever the device.
    gen = torch.Generator().manual_seed(cfg.seed)
    report_every = max(1, cfg.train_steps // 10)
    eta = Eta(cfg.train_steps)  # also reports the first step and every REPORT_SECONDS, so long runs are never silent
    losses: list[float] = []
    interval: list[float] = []
    since_report: list[float] = []

    for step in range(cfg.train_steps):
        index = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        noise = torch.randn((cfg.batch_size, *data.shape[1:]), generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout
        x0, y = data[index.to(device)], targets[index.to(device)]
        y = torch.where(drop.to(device), torch.full_like(y, null_class), y)
        noise, t = noise.to(device), t.to(device)

        prediction = model(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = F.mse_loss(prediction, noise)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {step}; lower learning_rate (now {cfg.learning_rate})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        lr_schedule.step()

        # EMA warm-up: a plain 0.999 decay stays near the random init for hundreds of steps.
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1.0 - decay)
            for e, b in zip(ema.buffers(), model.buffers()):
                e.copy_(b)

        value = loss.item()
        interval.append(value)
        since_report.append(value)
        if len(interval) == LOSS_INTERVAL or step == cfg.train_steps - 1:
            losses.append(float(np.mean(interval)))
            interval = []
        if progress is not None and eta.due(step + 1, report_every):
            progress(step + 1, float(np.mean(since_report)))
            since_report = []

    ema.eval().cpu()
    unet_config = {k: v for k, v in dict(ema.config).items() if not k.startswith("_")}
    previous_steps = init_from.config.get("total_train_steps", 0) if init_from is not None else 0
    config = {
        "format": FORMAT,
        "unet": json.loads(json.dumps(unet_config)),  # tuples -> lists, so it round-trips through JSON
        "num_classes": num_classes,
        "null_class": null_class,
        "image_size": size,
        "channels": channels,
        "prediction_type": "epsilon",
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_schedule": cfg.beta_schedule,
        "train_steps": cfg.train_steps,
        "total_train_steps": previous_steps + cfg.train_steps,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "warmup_steps": warmup,
        "label_dropout": cfg.label_dropout,
        "ema_decay": cfg.ema_decay,
        "seed": cfg.seed,
        "loss_interval": LOSS_INTERVAL,
        "init_from": init_from.version if init_from is not None else None,
        "init_from_url": (init_from.url or None) if init_from is not None else None,
    }
    return TrainedGenerator(
        model=ema,
        config=config,
        losses=losses,
        seconds=time.perf_counter() - start,
        num_parameters=sum(p.numel() for p in ema.parameters()),
    )


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


def _version(weights: bytes) -> str:
    return hashlib.sha256(weights).hexdigest()[:16]


def save_generator(generator: TrainedGenerator, url: str) -> str:
    """Write ``<url>/model.safetensors`` and ``<url>/config.json`` (any fsspec URL); return the version.

    Both files are serialised in memory first; ``config.json`` is written last and records the
    weights' hash, so a reader never mistakes a half-written directory for a complete generator.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in generator.model.state_dict().items()}
    weights = save_safetensors(state, metadata={"format": FORMAT})
    version = _version(weights)
    meta = {
        "version": version,
        "config": generator.config,
        "losses": [float(v) for v in generator.losses],
        "seconds": float(generator.seconds),
        "num_parameters": int(generator.num_parameters),
    }
    meta_bytes = json.dumps(meta, indent=2).encode()
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(posixpath.join(root, "model.safetensors"), weights)
    fs.pipe_file(posixpath.join(root, "config.json"), meta_bytes)
    generator.version = version
    generator.url = url
    return version


def load_generator(url: str) -> TrainedGenerator:
    """Read a generator written by :func:`save_generator`; its ``version`` is checked against the weights."""
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    config_path, weights_path = posixpath.join(root, "config.json"), posixpath.join(root, "model.safetensors")
    if not fs.exists(config_path) or not fs.exists(weights_path):
        raise FileNotFoundError(f"no generator at {url!r}: expected config.json and model.safetensors there")
    try:
        meta = json.loads(fs.cat_file(config_path))
        config = meta["config"]
        if config.get("format") != FORMAT:
            raise ValueError(f"format {config.get('format')!r}, expected {FORMAT!r}")
        model = UNet2DModel.from_config(config["unet"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{url!r}/config.json does not describe a generator: {exc}") from None
    weights = fs.cat_file(weights_path)
    version = _version(weights)
    if version != meta.get("version"):
        raise ValueError(f"{url!r}: model.safetensors (version {version}) does not match config.json ({meta.get('version')}); rewrite it")
    try:
        model.load_state_dict(load_safetensors(weights))
    except RuntimeError as exc:
        raise ValueError(f"{url!r}: weights do not fit the UNet in config.json: {exc}") from None
    model.eval().requires_grad_(False)
    return TrainedGenerator(
        model=model,
        config=config,
        losses=list(meta.get("losses", [])),
        seconds=float(meta.get("seconds", 0.0)),
        num_parameters=int(meta.get("num_parameters", sum(p.numel() for p in model.parameters()))),
        version=version,
        url=url,
    )
