"""Classifiers: a small CNN registered with timm, a fixed-compute training loop, predictions and storage.

Importing this module registers ``synthaug_cnn`` (widths 32-64-128) and ``synthaug_cnn_small``
(16-32-64) with timm, so ``timm.create_model("synthaug_cnn", num_classes=10, in_chans=1)`` works and
any other timm model name can be used in a profile instead.

The same code trains the judge (real images only) and the baseline/augmented classifiers (real +
synthetic mix). Training runs a fixed number of optimisation steps whatever the data size, so runs
that are compared with each other get exactly the same compute. Ablations: ``train_classifier(...,
aux_bn=True)`` gives synthetic images their own batch-norm layers during training (see
:mod:`synthaug_pipeline.lib.aux_bn`), ``augment=False`` turns augmentation off, and
:func:`train_classifier_synthetic_only` trains on synthetic images alone (Classification Accuracy Score).

The synthetic ratio ``r`` means "r synthetic images per real image", class by class: the mix sampler
(:class:`BalancedMixSampler`) draws, in expectation, ``r`` synthetic images of class ``c`` for every
real image of class ``c`` it draws. For that to be true without drawing a synthetic image more often
than a real one, class ``c`` with ``n_c`` real images needs at least ``ceil(r * n_c)`` distinct
synthetic images (:func:`synthetic_images_needed`); a smaller pool is an error
(:func:`check_synthetic_supply`) unless ``allow_synthetic_reuse=True`` asks for oversampling.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.optim import create_optimizer_v2
from torch import nn

from synthaug_pipeline.lib.aux_bn import convert_to_aux_bn, route_synthetic, strip_aux_bn
from synthaug_pipeline.lib.config import ClassifierConfig
from synthaug_pipeline.lib.faults import failpoint
from synthaug_pipeline.lib.images import to_model_tensor

LABEL_SMOOTHING = 0.1
WARMUP_FRACTION = 0.05
SGD_MOMENTUM = 0.9  # optimizer="sgd": Nesterov momentum
HISTORY_POINTS = 20  # how many times per run the loss is logged
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

ProgressFn = Callable[[int, int, float], None]


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


def _conv_block(in_chs: int, out_chs: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers at one resolution."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


class SynthaugCNN(nn.Module):
    """A small VGG-style CNN for tiny images (8x8 digits up to 32x32 and beyond).

    ``stages`` are conv blocks whose widths come from ``widths``; every stage after the first
    halves the resolution with a max-pool first. The head average-pools globally, then an MLP
    (hidden Linear + ReLU = the pre-logits features) and a final Linear ``fc``.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128),
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"synthaug_cnn supports only global_pool='avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        stages, prev = [], in_chans
        for i, width in enumerate(widths):
            # Pool before every stage but the first: the total stride is 2**(len(widths)-1), so an
            # 8x8 digit still has a 2x2 map in the last stage. ceil_mode keeps odd sizes (7 -> 4)
            # and never shrinks a 1x1 map to nothing.
            pool = nn.MaxPool2d(2, ceil_mode=True) if i else nn.Identity()
            stages.append(nn.Sequential(pool, _conv_block(prev, width)))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=w, reduction=2**i, module=f"stages.{i}") for i, w in enumerate(widths)]

        # The MLP's hidden layer keeps the width, so pre-logits features have num_features dims
        # (timm's head_hidden_size == num_features for this model).
        self.num_features = self.head_hidden_size = prev
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.pre_logits = nn.Sequential(nn.Linear(prev, prev), nn.ReLU(inplace=True))
        self.fc = nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input ``[N, C, H, W]`` -> unpooled feature map ``[N, num_features, H', W']``."""
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits ``[N, num_classes]``, or the MLP features ``[N, num_features]``."""
        x = self.pre_logits(self.global_pool(x))
        if pre_logits:
            return x
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self, name_only: bool = False) -> str | nn.Module:
        """The final linear layer (timm convention), or its name."""
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the final layer with a fresh one for ``num_classes`` (0 -> identity, features out)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"synthaug_cnn supports only global_pool='avg', got {global_pool!r}")
        device = self.pre_logits[0].weight.device
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        self.fc.train(self.training)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No url / hf_hub_id: there are no pretrained weights. Mean/std 0.5 match to_model_tensor's [-1, 1].
    return {
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": (7, 7),
        "mean": (0.5,),
        "std": (0.5,),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "first_conv": "stages.0.1.0",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"synthaug_cnn": _cfg(), "synthaug_cnn_small": _cfg()})


def _create_synthaug_cnn(variant: str, widths: tuple[int, ...], pretrained: bool, **kwargs: Any) -> SynthaugCNN:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights: create it with pretrained=False")
    return build_model_with_cfg(
        SynthaugCNN,
        variant,
        pretrained=False,
        widths=widths,
        # features_only=True returns the output of each stage (timm's default asks for 5 stages).
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(len(widths)))),
        **kwargs,
    )


@register_model
def synthaug_cnn(pretrained: bool = False, **kwargs: Any) -> SynthaugCNN:
    """Small CNN, stage widths 32-64-128 (about 0.3 M parameters)."""
    return _create_synthaug_cnn("synthaug_cnn", (32, 64, 128), pretrained, **kwargs)


@register_model
def synthaug_cnn_small(pretrained: bool = False, **kwargs: Any) -> SynthaugCNN:
    """Tiny CNN, stage widths 16-32-64, for tests and smoke runs."""
    return _create_synthaug_cnn("synthaug_cnn_small", (16, 32, 64), pretrained, **kwargs)


def create_classifier(name: str, num_classes: int, in_chans: int) -> nn.Module:
    """A freshly initialised timm model (never pretrained: nothing is downloaded).

    Raises ValueError for an unknown name, suggesting close matches from ``timm.list_models()``.
    """
    if not timm.is_model(name):
        matches = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(matches)}?" if matches else "; see timm.list_models()"
        raise ValueError(f"unknown classifier model {name!r}{hint}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainedClassifier:
    """A trained model (eval mode, on CPU) with what is needed to rebuild and judge it."""

    model: nn.Module
    config: dict[str, Any]  # JSON-able: model name, num_classes, in_chans, image_size, training settings
    history: list[dict[str, float]] = field(default_factory=list)  # {"step", "loss", "lr"}, ~20 entries
    seconds: float = 0.0
    num_parameters: int = 0
    num_real: int = 0
    num_synthetic: int = 0
    version: str = ""  # sha256 prefix of the saved weights; set by save_classifier / load_classifier


class BalancedMixSampler:
    """Draws the sample indices of each training batch.

    A share ``synthetic_ratio / (1 + synthetic_ratio)`` of every batch comes from the synthetic pool
    (stochastically rounded, so the share is exact on average), the rest from the real pool. Both
    pools are class-balanced: pick a class uniformly (among the classes the pool has), then an image
    of that class uniformly.

    ``class_ratios`` (one ratio per class) replaces the single ratio where classes differ (a class with
    fewer accepted images than the ratio needs trains at the ratio its pool reaches): the synthetic share
    is then ``m / (1 + m)`` for the mean ratio ``m`` over the real classes, and a synthetic class is picked
    with probability proportional to its ratio, so class ``c`` still gets ``r_c`` synthetic draws per real one.
    """

    def __init__(
        self,
        real_labels: np.ndarray,
        num_classes: int,
        synthetic_labels: np.ndarray | None = None,
        synthetic_ratio: float = 0.0,
        rng: np.random.Generator | None = None,
        class_ratios: np.ndarray | None = None,
    ) -> None:
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._real = _ClassPools(real_labels, num_classes)
        use_synthetic = synthetic_ratio > 0 and synthetic_labels is not None and len(synthetic_labels) > 0
        self._synthetic = _ClassPools(synthetic_labels, num_classes) if use_synthetic else None
        self.synthetic_share = synthetic_ratio / (1.0 + synthetic_ratio) if use_synthetic else 0.0
        if use_synthetic and class_ratios is not None:
            ratios = np.asarray(class_ratios, dtype=np.float64)
            mean = float(ratios[np.bincount(real_labels, minlength=num_classes) > 0].mean())
            self.synthetic_share = mean / (1.0 + mean)
            if mean > 0:
                self._synthetic.set_weights(ratios)

    def draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices into the real pool and into the synthetic pool (int64 arrays) for one batch."""
        expected = batch_size * self.synthetic_share
        num_synthetic = int(expected) + int(self.rng.random() < expected - int(expected))
        real = self._real.draw(batch_size - num_synthetic, self.rng)
        synthetic = self._synthetic.draw(num_synthetic, self.rng) if self._synthetic else np.zeros(0, np.int64)
        return real, synthetic


class _ClassPools:
    """Indices grouped by class, for vectorised class-balanced draws."""

    def __init__(self, labels: np.ndarray, num_classes: int) -> None:
        self.order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=num_classes)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        present = counts > 0
        self.counts, self.starts = counts[present], starts[present]

        self.present = np.flatnonzero(present)
        self.probabilities: np.ndarray | None = None

    def set_weights(self, weights: np.ndarray) -> None:
        """Pick class ``c`` with probability proportional to ``weights[c]`` instead of uniformly."""
        kept = np.asarray(weights, dtype=np.float64)[self.present]
        self.probabilities = kept / kept.sum()

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.probabilities is None:
            classes = rng.integers(len(self.counts), size=n)
        else:
            classes = rng.choice(len(self.counts), size=n, p=self.probabilities)
        within = (rng.random(n) * self.counts[classes]).astype(np.int64)
        return self.order[self.starts[classes] + within].astype(np.int64)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for 0-based ``step``: linear warm-up to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def random_translate(x: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y (reflect-pad, then random crop).

    No flips: digits and many other classes are not mirror-symmetric.
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="reflect").permute(0, 2, 3, 1)  # [N, H+2s, W+2s, C]
    dy, dx = torch.from_numpy(rng.integers(0, 2 * max_shift + 1, size=(2, n))).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # [N, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # [N, 1, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    cfg: ClassifierConfig,
    synthetic_images: np.ndarray | None = None,
    synthetic_labels: np.ndarray | None = None,
    synthetic_ratio: float = 0.0,
    progress: ProgressFn | None = None,
    device: str | torch.device = "cpu",
    *,
    aux_bn: bool = False,
    augment: bool = True,
    allow_synthetic_reuse: bool = False,
    use_available: bool = False,
    amp: bool = True,
) -> TrainedClassifier:
    """Train ``cfg.model`` for exactly ``cfg.steps`` steps of ``cfg.batch_size`` images.

    Images are uint8 ``[N, H, W, C]``, labels integers in ``[0, num_classes)``; every class needs at
    least one real image. With ``synthetic_ratio > 0`` each batch mixes in synthetic images (see
    :class:`BalancedMixSampler`); every class then needs at least ``ceil(synthetic_ratio * n_c)``
    synthetic images, ``n_c`` being its number of real images (see the module docstring), else
    ValueError names the first class that falls short -- before any training.
    ``allow_synthetic_reuse=True`` lifts that rule (a class's synthetic images are then drawn more
    often than its real ones; a class without any gets none). ``use_available=True`` trains a class that
    falls short at the ratio its pool reaches (:func:`reached_ratios`; recorded as
    ``config["synthetic_ratio_by_class"]``), never drawing a synthetic image more often than a real one.

    ``cfg.optimizer``: ``"adamw"`` or ``"sgd"`` (Nesterov momentum 0.9; it wants a learning rate about
    50x AdamW's), no weight decay on biases/norms either way; 5% linear warm-up then cosine decay,
    cross-entropy with label smoothing 0.1, random translation by up to 1/8 of the image size. On CUDA
    the forward pass runs under bf16 autocast (``amp=False`` keeps float32; CPU is always float32).
    ``progress(step, total_steps, mean_loss)`` is called each time the loss is logged (~20 times).
    Deterministic for ``cfg.seed`` (bit-exact on CPU; cuDNN may differ slightly between GPU runs).
    The CPU RNG state and that of the training GPU are restored afterwards.

    ``aux_bn=True`` trains with auxiliary batch-norm (:mod:`synthaug_pipeline.lib.aux_bn`): the
    synthetic samples of each batch are normalised by separate BN layers, the real ones by the main
    layers; the returned model keeps only the main layers (a plain ``cfg.model``, saved and used like
    any other). Without synthetic images in the mix it changes nothing. ``augment=False`` turns the
    random translation off. The defaults reproduce earlier results bit for bit. Both settings are
    recorded in ``config`` (``aux_bn``, ``augment``; ``max_translate`` is 0 without augmentation).

    For synthetic-only training (Classification Accuracy Score) use
    :func:`train_classifier_synthetic_only`.
    """
    nothing_accepted = use_available and synthetic_ratio > 0 and (synthetic_images is None or len(synthetic_images) == 0)
    if nothing_accepted:  # every class reaches ratio 0: train on the real images alone, and say so
        synthetic_images, synthetic_labels, synthetic_ratio = None, None, 0.0
    labels, synthetic_labels = _check_training_data(images, labels, num_classes, synthetic_images, synthetic_labels, synthetic_ratio)
    use_synthetic = synthetic_ratio > 0
    class_ratios = np.zeros(num_classes) if nothing_accepted else None
    if use_synthetic and use_available:
        class_ratios = reached_ratios(
            np.bincount(labels, minlength=num_classes), np.bincount(synthetic_labels, minlength=num_classes), synthetic_ratio
        )
    elif use_synthetic and not allow_synthetic_reuse:
        check_synthetic_supply(
            np.bincount(labels, minlength=num_classes),
            np.bincount(synthetic_labels, minlength=num_classes),
            synthetic_ratio,
            hint="lower synthetic_ratio, add synthetic images, or pass allow_synthetic_reuse=True to oversample them",
        )
    run = _fit(
        images,
        labels,
        num_classes,
        cfg,
        synthetic_images if use_synthetic else None,
        synthetic_labels if use_synthetic else None,
        synthetic_ratio if use_synthetic else 0.0,
        progress,
        device,
        aux_bn=aux_bn,
        augment=augment,
        amp=amp,
        class_ratios=class_ratios,
    )
    config = {
        **run.config,
        "synthetic_ratio": float(synthetic_ratio) if use_synthetic else 0.0,
        "synthetic_only": False,
        "synthetic_reuse": bool(use_synthetic and allow_synthetic_reuse),
        **({"synthetic_ratio_by_class": [round(float(r), 6) for r in class_ratios]} if class_ratios is not None else {}),
    }
    return TrainedClassifier(
        model=run.model,
        config=config,
        history=run.history,
        seconds=run.seconds,
        num_parameters=sum(p.numel() for p in run.model.parameters()),
        num_real=len(images),
        num_synthetic=len(synthetic_images) if use_synthetic else 0,
    )


def untrained_classifier(images: np.ndarray, num_classes: int, cfg: ClassifierConfig) -> TrainedClassifier:
    """``cfg.model`` with its seeded initial weights, not trained: the judge of a one-class run.

    With a single class a classifier has nothing to learn (its softmax confidence is 1 for every
    image), so a one-class run records this network instead of failing; its features are those of a
    seeded random network, and ``config["trained"]`` is False so every consumer can say so.
    """
    _check_images(images, "real images")
    height, width, in_chans = images.shape[1:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = create_classifier(cfg.model, num_classes, in_chans).eval()
    config = {
        **cfg.model_dump(),
        "steps": 0,
        "trained": False,
        "num_classes": int(num_classes),
        "in_chans": int(in_chans),
        "image_size": [int(height), int(width)],
    }
    return TrainedClassifier(
        model=model, config=config, num_parameters=sum(p.numel() for p in model.parameters()), num_real=len(images)
    )


def train_classifier_synthetic_only(
    synthetic_images: np.ndarray,
    synthetic_labels: np.ndarray,
    num_classes: int,
    cfg: ClassifierConfig,
    progress: ProgressFn | None = None,
    device: str | torch.device = "cpu",
    *,
    augment: bool = True,
    amp: bool = True,
) -> TrainedClassifier:
    """Train on synthetic images only, for the Classification Accuracy Score (CAS).

    CAS (Ravuri & Vinyals 2019) trains a classifier on generated images alone and reports its
    accuracy on the *real* test set: a measure of how much class information the generator captured.
    Same recipe as :func:`train_classifier` (steps, schedule, class-balanced batches, augmentation),
    with the synthetic pool in place of the real one. Every class needs at least one synthetic
    image: a class the generator never produced could not be predicted, and CAS would silently
    measure a smaller problem.

    The result records ``num_real=0``, ``num_synthetic=len(synthetic_images)`` and in ``config``
    ``synthetic_only=True`` and ``synthetic_ratio=None`` (no real images to be a ratio of). There is
    no ``aux_bn`` option: with no real images the main BN would never be trained.
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    _check_images(synthetic_images, "synthetic images")
    if len(synthetic_images) == 0:
        raise ValueError("no synthetic training images: synthetic-only training (CAS) needs at least one per class")
    synthetic_labels = _check_labels(synthetic_labels, len(synthetic_images), num_classes, "synthetic images")
    missing = np.flatnonzero(np.bincount(synthetic_labels, minlength=num_classes) == 0)
    if len(missing):
        raise ValueError(f"classes {missing.tolist()} have no synthetic images; synthetic-only training (CAS) needs at least one per class")
    run = _fit(
        synthetic_images, synthetic_labels, num_classes, cfg, None, None, 0.0, progress, device, aux_bn=False, augment=augment, amp=amp
    )
    return TrainedClassifier(
        model=run.model,
        config={**run.config, "synthetic_ratio": None, "synthetic_only": True},
        history=run.history,
        seconds=run.seconds,
        num_parameters=sum(p.numel() for p in run.model.parameters()),
        num_real=0,
        num_synthetic=len(synthetic_images),
    )


@dataclass
class _Run:
    model: nn.Module
    config: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float


def _fit(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    cfg: ClassifierConfig,
    synthetic_images: np.ndarray | None,
    synthetic_labels: np.ndarray | None,
    synthetic_ratio: float,
    progress: ProgressFn | None,
    device: str | torch.device,
    *,
    aux_bn: bool,
    augment: bool,
    amp: bool,
    class_ratios: np.ndarray | None = None,
) -> _Run:
    """The training loop behind train_classifier / train_classifier_synthetic_only (inputs validated).

    ``images`` is the primary pool; ``synthetic_*`` the pool mixed in at ``synthetic_ratio`` (None
    and 0.0 for none). Returns the model (CPU, eval mode, aux BN stripped) and the shared config.
    """
    use_synthetic = synthetic_ratio > 0
    rng = np.random.default_rng(cfg.seed)
    sampler = BalancedMixSampler(labels, num_classes, synthetic_labels if use_synthetic else None, synthetic_ratio, rng, class_ratios)
    height, width, in_chans = images.shape[1:]
    max_shift = max(1, round(min(height, width) / 8)) if augment else 0
    warmup_steps = max(1, round(WARMUP_FRACTION * cfg.steps))
    log_every = max(1, cfg.steps // HISTORY_POINTS)
    device = torch.device(device)
    amp_dtype = autocast_dtype(device) if amp else None

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(cfg.seed)  # weight init and dropout
        model = _initial_model(cfg, num_classes, in_chans).to(device).train()
        if aux_bn:
            model = convert_to_aux_bn(model)  # before the optimizer, so it also trains the aux layers
        optimizer = make_optimizer(model, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.steps, warmup_steps))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)

        history: list[dict[str, float]] = []
        loss_sum, loss_count = torch.zeros((), device=device), 0
        start = time.perf_counter()
        for step in range(1, cfg.steps + 1):
            real_idx, synthetic_idx = sampler.draw(cfg.batch_size)
            batch, target = images[real_idx], labels[real_idx]
            if len(synthetic_idx):
                batch = np.concatenate([batch, synthetic_images[synthetic_idx]])
                target = np.concatenate([target, synthetic_labels[synthetic_idx]])
            x = to_model_tensor(batch).to(device)
            if augment:
                x = random_translate(x, max_shift, rng)
            y = torch.from_numpy(target).to(device)

            # bf16 autocast needs no loss scaling (same exponent range as float32).
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext():
                if aux_bn:
                    # The batch is real samples first, then synthetic ones.
                    is_synthetic = torch.arange(len(target), device=device) >= len(real_idx)
                    with route_synthetic(model, is_synthetic):
                        logits = model(x)
                else:
                    logits = model(x)
                loss = loss_fn(logits.float(), y)
            if step <= 10 or step % 50 == 0 or step == cfg.steps:  # a sync per check; once NaN, a loss stays NaN
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss.item()} at step {step}; lower learning_rate (now {cfg.learning_rate})"
                    )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            scheduler.step()

            # Accumulate on the device; .item() only when logging, to avoid a GPU sync every step.
            loss_sum += loss.detach()
            loss_count += 1
            failpoint("training_step")
            if step % log_every == 0 or step == cfg.steps:
                mean_loss = loss_sum.item() / loss_count
                history.append({"step": step, "loss": mean_loss, "lr": lr})
                loss_sum.zero_()
                loss_count = 0
                if progress is not None:
                    progress(step, cfg.steps, mean_loss)
        seconds = time.perf_counter() - start

    if aux_bn:
        model = strip_aux_bn(model)
    model = model.cpu().eval()
    config = {
        **cfg.model_dump(),  # model, steps, batch_size, learning_rate, weight_decay, seed
        "num_classes": int(num_classes),
        "in_chans": int(in_chans),
        "image_size": [int(height), int(width)],
        "label_smoothing": LABEL_SMOOTHING,
        "warmup_steps": warmup_steps,
        "max_translate": max_shift,
        "augment": bool(augment),
        "aux_bn": bool(aux_bn),
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else None,
        **_adapter_config(model),
    }
    return _Run(model=model, config=config, history=history, seconds=seconds)


def _initial_model(cfg: ClassifierConfig, num_classes: int, in_chans: int) -> nn.Module:
    """``cfg.model`` freshly initialised, or with ``cfg.pretrained`` weights and a new head (fine-tuning)."""
    if not cfg.pretrained:
        return create_classifier(cfg.model, num_classes, in_chans)
    from synthaug_pipeline.lib.pretrained_classifiers import pretrained_classifier

    return pretrained_classifier(cfg, num_classes)


def _adapter_config(model: nn.Module) -> dict[str, Any]:
    from synthaug_pipeline.lib.pretrained_classifiers import CONFIG_KEY, adapter_facts

    facts = adapter_facts(model)
    return {CONFIG_KEY: facts} if facts is not None else {}


def make_optimizer(model: nn.Module, cfg: ClassifierConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``model``: AdamW, or SGD with Nesterov momentum 0.9; no decay on biases and norms."""
    if cfg.optimizer == "sgd":
        # timm's "sgd" is torch SGD with nesterov=True
        return create_optimizer_v2(model, "sgd", lr=cfg.learning_rate, weight_decay=cfg.weight_decay, momentum=SGD_MOMENTUM)
    if cfg.optimizer == "adamw":
        return create_optimizer_v2(model, "adamw", lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}: choose adamw or sgd")


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for training on ``device``: bfloat16 on a CUDA GPU that supports it, else None."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    with torch.cuda.device(device):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None


def synthetic_images_needed(real_counts: Any, ratio: float) -> np.ndarray:
    """Distinct synthetic images each class needs at ``ratio``: ``ceil(ratio * n_c)`` for ``n_c`` real images.

    ``real_counts`` holds ``n_c`` per class (int64 array out, same length; all 0 for ratio 0). A hair
    of tolerance keeps float error from asking one image too many (0.1 * 30 is 3.0000000000000004).
    """
    counts = np.asarray(real_counts, dtype=np.float64)
    if not ratio >= 0 or not math.isfinite(ratio):
        raise ValueError(f"synthetic_ratio must be a finite number >= 0, got {ratio}")
    if ratio == 0:
        return np.zeros(len(counts), np.int64)
    return np.ceil(ratio * counts - 1e-9).astype(np.int64)


def reached_ratios(real_counts: Any, synthetic_counts: Any, ratio: float) -> np.ndarray | None:
    """Per class, the ratio its synthetic pool supports without drawing a synthetic image more often than a real one:
    ``ratio`` where ``ceil(ratio * n_c)`` images exist, else ``a_c / n_c``. None when every class reaches ``ratio``."""
    real_counts = np.asarray(real_counts, dtype=np.float64)
    synthetic_counts = np.asarray(synthetic_counts, dtype=np.float64)
    short = synthetic_images_needed(real_counts, ratio) > synthetic_counts
    if not short.any():
        return None
    supported = np.where(real_counts > 0, synthetic_counts / np.maximum(real_counts, 1), 0.0)
    return np.where(short, np.minimum(supported, ratio), ratio)


def check_synthetic_supply(
    real_counts: Any,
    synthetic_counts: Any,
    synthetic_ratio: float,
    *,
    class_ids: list[str] | None = None,
    available: str = "are available",
    hint: str = "lower the ratio, generate more synthetic images or loosen the filter",
) -> None:
    """Raise ValueError unless every class ``c`` has ``ceil(synthetic_ratio * real_counts[c])`` synthetic images.

    ``real_counts`` / ``synthetic_counts``: images per class (same length). The message names the
    first class that falls short (``class_ids[c]`` when given), what it needs and has ("only m
    {available}"), the largest ratio the pool supports, and ``hint``.
    """
    real_counts = np.asarray(real_counts, dtype=np.int64)
    synthetic_counts = np.asarray(synthetic_counts, dtype=np.int64)
    if real_counts.shape != synthetic_counts.shape:
        raise ValueError(f"{len(real_counts)} real class counts but {len(synthetic_counts)} synthetic ones")
    needed = synthetic_images_needed(real_counts, synthetic_ratio)
    short = np.flatnonzero(needed > synthetic_counts)
    if not len(short):
        return
    c = int(short[0])
    name = repr(class_ids[c]) if class_ids is not None else str(c)
    with_real = real_counts > 0
    supported = math.floor(float((synthetic_counts[with_real] / real_counts[with_real]).min()) * 1000) / 1000 if with_real.any() else 0.0
    raise ValueError(
        f"synthetic ratio {synthetic_ratio:g} needs {needed[c]} synthetic images of class {name} "
        f"({synthetic_ratio:g} x {real_counts[c]} real) but only {synthetic_counts[c]} {available} "
        f"({len(short)} of {len(real_counts)} classes fall short; a ratio up to {supported:g} would fit): {hint}"
    )


def _check_labels(labels: Any, num_images: int, num_classes: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != num_images:
        raise ValueError(f"{what}: {num_images} images but labels shaped {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what}: labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    return labels


def _check_images(images: Any, what: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{what}: expected uint8 images shaped [N, H, W, C], got {got}")


def _check_training_data(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    synthetic_images: np.ndarray | None,
    synthetic_labels: np.ndarray | None,
    synthetic_ratio: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate the inputs of train_classifier; returns labels (and synthetic labels) as int64."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    _check_images(images, "real images")
    if len(images) == 0:
        raise ValueError("no real training images: every class needs at least one")
    labels = _check_labels(labels, len(images), num_classes, "real images")
    missing = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)
    if len(missing):
        raise ValueError(f"classes {missing.tolist()} have no real training images; every class needs at least one")
    if not synthetic_ratio >= 0:
        raise ValueError(f"synthetic_ratio must be >= 0, got {synthetic_ratio}")
    if synthetic_images is None or synthetic_ratio == 0:
        if synthetic_ratio > 0:
            raise ValueError(f"synthetic_ratio={synthetic_ratio} but no synthetic images were given")
        return labels, None
    _check_images(synthetic_images, "synthetic images")
    if len(synthetic_images) == 0:
        raise ValueError(f"synthetic_ratio={synthetic_ratio} but the synthetic pool is empty")
    if synthetic_images.shape[1:] != images.shape[1:]:
        raise ValueError(f"synthetic images are {synthetic_images.shape[1:]} (H, W, C) but real images are {images.shape[1:]}")
    if synthetic_labels is None:
        raise ValueError("synthetic images were given without synthetic_labels")
    synthetic_labels = _check_labels(synthetic_labels, len(synthetic_images), num_classes, "synthetic images")
    return labels, synthetic_labels


# --------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, batch_size: int = 512, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``[N, K]`` and pre-logits features ``[N, D]`` (both float32).

    The model needs timm's ``forward_features`` / ``forward_head(pre_logits=True)``. It runs in eval
    mode on ``device`` without gradients; its original device and train/eval mode are restored.
    """
    _check_images(images, "predict")
    if len(images) == 0:
        features_dim = getattr(model, "head_hidden_size", None) or model.num_features
        return np.zeros((0, model.num_classes), np.float32), np.zeros((0, features_dim), np.float32)
    original_device = next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    try:
        probabilities, features = [], []
        for start in range(0, len(images), batch_size):
            x = to_model_tensor(images[start : start + batch_size]).to(device)
            feature_map = model.forward_features(x)
            # forward_head twice (cheap next to the backbone) rather than applying the classifier to
            # the pre-logits ourselves: that stays right for any timm head layout.
            features.append(model.forward_head(feature_map, pre_logits=True).float().cpu())
            probabilities.append(model.forward_head(feature_map).float().softmax(dim=1).cpu())
    finally:
        model.to(original_device).train(was_training)
    return torch.cat(probabilities).numpy(), torch.cat(features).numpy()


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def _weights_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def save_classifier(trained: TrainedClassifier, url: str) -> str:
    """Write ``<url>/model.safetensors`` and ``<url>/config.json`` (any fsspec URL or local path).

    Returns the version (first 16 hex digits of the weights' sha256), also set on ``trained``.
    """
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in trained.model.state_dict().items()}
    data = safetensors.torch.save(state)
    version = _weights_version(data)
    record = {
        "config": trained.config,
        "history": trained.history,
        "seconds": trained.seconds,
        "num_parameters": trained.num_parameters,
        "num_real": trained.num_real,
        "num_synthetic": trained.num_synthetic,
        "version": version,
    }
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    # Weights first, config last: a config.json whose version matches the weights marks a complete save.
    fs.pipe_file(_join(root, MODEL_FILE), data)
    fs.pipe_file(_join(root, CONFIG_FILE), json.dumps(record, indent=2).encode())
    trained.version = version
    return version


def load_classifier(url: str) -> TrainedClassifier:
    """Rebuild a classifier written by :func:`save_classifier` (eval mode, on CPU)."""
    fs, root = fsspec.core.url_to_fs(url)
    model_path, config_path = _join(root, MODEL_FILE), _join(root, CONFIG_FILE)
    if not fs.exists(model_path) or not fs.exists(config_path):
        raise FileNotFoundError(
            f"no saved classifier at {url!r}: expected {MODEL_FILE} and {CONFIG_FILE} there (written by save_classifier)"
        )
    data = fs.cat_file(model_path)
    record = json.loads(fs.cat_file(config_path))
    version = _weights_version(data)
    if record.get("version") not in (None, "", version):
        raise ValueError(
            f"{model_path} (version {version}) does not match {config_path} (version {record['version']}): "
            "the save was interrupted or the files come from different runs; save the classifier again"
        )
    config = record["config"]
    if "pretrained_adapter" in config:  # a pretrained judge or a fine-tuned model (lib.pretrained_classifiers)
        from synthaug_pipeline.lib.pretrained_classifiers import rebuild

        model = rebuild(config)
    else:
        model = create_classifier(config["model"], config["num_classes"], config["in_chans"])
    model.load_state_dict(safetensors.torch.load(data))
    return TrainedClassifier(
        model=model.eval(),
        config=config,
        history=record.get("history", []),
        seconds=record.get("seconds", 0.0),
        num_parameters=record.get("num_parameters", sum(p.numel() for p in model.parameters())),
        num_real=record.get("num_real", 0),
        num_synthetic=record.get("num_synthetic", 0),
        version=version,
    )
