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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from synthaug_pipeline.lib.aux_bn import convert_to_aux_bn, route_synthetic, strip_aux_bn
from synthaug_pipeline.lib.config import ClassifierConfig
from synthaug_pipeline.lib.faults import failpoint
from synthaug_pipeline.lib.images import to_model_tensor
from synthaug_pipeline.lib.classifier.mixing import BalancedMixSampler, check_synthetic_supply, reached_ratios
from synthaug_pipeline.lib.classifier.models import _adapter_config, _initial_model, create_classifier
from synthaug_pipeline.lib.classifier.recipe import (
    LABEL_SMOOTHING,
    WARMUP_FRACTION,
    _check_images,
    _check_labels,
    _check_training_data,
    _validation_top1,
    autocast_dtype,
    lr_factor,
    make_optimizer,
    random_translate,
)

HISTORY_POINTS = 20  # how many times per run the loss is logged
ProgressFn = Callable[[int, int, float], None]


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
    validation: tuple[np.ndarray, np.ndarray] | None = None,
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

    ``validation`` (images, labels): the held-out split that ``cfg.early_stopping_every`` selects the weights on
    (see :func:`_fit`); never the test split.

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
        validation=validation,
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
    validation: tuple[np.ndarray, np.ndarray] | None = None,
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
    no ``aux_bn`` option: with no real images the main BN would never be trained. ``validation``: real held-out
    images for ``cfg.early_stopping_every`` (see :func:`_fit`).
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
        synthetic_images, synthetic_labels, num_classes, cfg, None, None, 0.0, progress, device, aux_bn=False, augment=augment, amp=amp,
        validation=validation,
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
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> _Run:
    """The training loop behind train_classifier / train_classifier_synthetic_only (inputs validated).

    ``images`` is the primary pool; ``synthetic_*`` the pool mixed in at ``synthetic_ratio`` (None
    and 0.0 for none). Returns the model (CPU, eval mode, aux BN stripped) and the shared config.

    With ``cfg.early_stopping_every`` = N, top-1 on ``validation`` is measured every N steps and at the last, in
    eval mode (the main batch-norm layers), and the weights that scored best are returned (the earliest of equal
    scores), recorded as ``config["early_stopping"]``. The measurements draw no random numbers and change no
    running statistics, so the training steps are the same as without it.
    """
    every = cfg.early_stopping_every
    if every is not None:
        if validation is None or len(validation[0]) == 0:
            raise ValueError(
                f"classifier.early_stopping_every={every} selects weights on the validation split, and there is none: "
                "set data.validation_fraction > 0, or unset early_stopping_every"
            )
        _check_images(validation[0], "validation")
        validation = (validation[0], _check_labels(validation[1], len(validation[0]), num_classes, "validation"))
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
        curve: list[dict[str, float]] = []  # early stopping: validation top-1 per check
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
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
            if every is not None and (step % every == 0 or step == cfg.steps):
                top1 = _validation_top1(model, validation, device, amp_dtype)
                curve.append({"step": step, "top1": round(top1, 6)})
                if best is None or top1 > best[0]:
                    best = (top1, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if best is not None:
            model.load_state_dict(best[2])
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
        **(
            {"early_stopping": {"best_step": best[1], "best_validation_top1": round(best[0], 6), "validation_images": len(validation[0]), "curve": curve}}
            if best is not None
            else {}
        ),
    }
    return _Run(model=model, config=config, history=history, seconds=seconds)


# --------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------
