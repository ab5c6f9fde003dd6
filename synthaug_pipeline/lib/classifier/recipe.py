"""The training recipe's pieces around the loop: schedule, augmentation, optimizer, mixed precision, checks.

:func:`synthaug_pipeline.lib.classifier.training._fit` (the loop) uses them: the learning-rate schedule
(:func:`lr_factor`), random translation (:func:`random_translate`), the optimizer (:func:`make_optimizer`), the
autocast dtype (:func:`autocast_dtype`), the validation top-1 of early stopping, and the input checks.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import nn

from synthaug_pipeline.lib.config import ClassifierConfig
from synthaug_pipeline.lib.images import to_model_tensor

LABEL_SMOOTHING = 0.1
WARMUP_FRACTION = 0.05
SGD_MOMENTUM = 0.9  # optimizer="sgd": Nesterov momentum


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


@torch.no_grad()
def _validation_top1(
    model: nn.Module, validation: tuple[np.ndarray, np.ndarray], device: torch.device, amp_dtype: torch.dtype | None, batch_size: int = 512
) -> float:
    """Top-1 on ``validation`` in eval mode (no random numbers, no running-statistics update); back to train mode after."""
    images, labels = validation
    model.eval()
    try:
        correct = 0
        for start in range(0, len(images), batch_size):
            x = to_model_tensor(images[start : start + batch_size]).to(device)
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext():
                predicted = model(x).argmax(dim=1).cpu().numpy()
            correct += int(np.sum(predicted == labels[start : start + batch_size]))
    finally:
        model.train()
    return correct / len(images)


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
