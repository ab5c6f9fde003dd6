"""Class-conditional pixel-space DDPM with classifier-free guidance: the model and its training.

A small diffusers ``UNet2DModel`` (no attention: it is too slow on CPU) learns to
predict the noise added to an image, conditioned on a class label. Label index
``num_classes`` is the *null* class: training replaces a share of labels with it,
so one network gives both conditional and unconditional predictions, and
sampling can mix them (classifier-free guidance, :mod:`.diffusion_sampling`).
A trained generator is saved and loaded by :mod:`.diffusion_store`.

Images enter as uint8 ``[N, H, W, C]`` (see :mod:`.images`). Pure module: no Dagster here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from .config import GeneratorConfig
from .images import to_model_tensor
from .progress import Eta
from .records import record

FORMAT = "synthaug-ddpm/1"
LOSS_INTERVAL = 10  # training steps averaged into one entry of TrainedGenerator.losses
WEIGHT_DECAY = 1e-4
GRAD_CLIP = 1.0
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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 kernels natively (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def training_autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """``generator.train_dtype`` on ``device``: the autocast dtype of the UNet's forward pass (None: plain float32)."""
    if setting == "float32":
        return None
    if setting == "bfloat16":
        return torch.bfloat16
    if setting == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    raise ValueError(f"generator.train_dtype {setting!r} is unknown: choose float32, bfloat16 or auto")


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

    autocast_dtype = training_autocast_dtype(cfg.train_dtype, device)
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
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

        with autocast:
            prediction = model(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = F.mse_loss(prediction.float(), noise)
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
        "train_dtype": str(autocast_dtype or torch.float32).removeprefix("torch."),
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
