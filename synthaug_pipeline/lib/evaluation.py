"""Judging classifiers: accuracy, per-class accuracy, confusion, and robustness to corrupted inputs.

Corruptions follow ImageNet-C: a few fixed kinds at five fixed severities, so numbers from different
runs are comparable. Blur is scaled to the image size because our images are tiny (8x8 to 64x64).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from synthaug_pipeline.lib.images import to_model_tensor

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast")
SEVERITIES = (1, 2, 3, 4, 5)

NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)  # fraction of the 0..255 range
# Blur sigma as a fraction of the image side: 8x8 -> sigma 0.4 px (still legible) .. 2.2 px (a blob);
# 32x32 -> 1.6 .. 9 px. ImageNet-C's absolute sigmas would be invisible at 8x8.
BLUR_SIGMA = (0.05, 0.08, 0.12, 0.18, 0.28)
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)  # remaining share of each pixel's distance to the image mean


def corrupt(images: np.ndarray, kind: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupted copy of uint8 ``[N, H, W, C]`` images: ``kind`` from CORRUPTIONS, severity 1..5.

    Deterministic for a given ``seed`` (only gaussian_noise is random).
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}: choose one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"corruption severity must be an integer from 1 to 5, got {severity!r}")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError("corrupt expects uint8 images shaped [N, H, W, C]")
    level = int(severity) - 1
    x = images.astype(np.float32)
    if kind == "gaussian_noise":
        rng = np.random.default_rng(seed)
        x = x + rng.normal(0.0, NOISE_STD[level] * 255.0, size=x.shape).astype(np.float32)
    elif kind == "gaussian_blur":
        sigma = BLUR_SIGMA[level] * min(images.shape[1:3])
        x = gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="reflect")  # blur H and W only
    else:  # contrast
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = mean + (x - mean) * CONTRAST_FACTOR[level]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@torch.no_grad()
def _logits(model: nn.Module, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """Batched ``model(x)`` on the model's own device, in eval mode (mode restored afterwards)."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        chunks = [
            model(to_model_tensor(images[start : start + batch_size]).to(device)).float().cpu()
            for start in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, class_ids: list[str], batch_size: int = 512) -> dict[str, Any]:
    """Accuracy of ``model`` on labelled uint8 images.

    Returns ``{"top1", "top5" (None unless more than 10 classes), "n", "per_class": {class_id:
    accuracy or None when the class has no images}, "confusion": [[int]] rows = true, cols = predicted}``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = len(class_ids)
    if len(images) == 0:
        raise ValueError("evaluate needs at least one labelled image")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}) for {num_classes} class ids")
    logits = _logits(model, images, batch_size)
    if logits.shape[1] != num_classes:
        raise ValueError(f"the model predicts {logits.shape[1]} classes but {num_classes} class ids were given")

    predicted = logits.argmax(dim=1).numpy()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    top5 = None
    if num_classes > 10:
        top5_classes = logits.topk(5, dim=1).indices.numpy()
        top5 = float((top5_classes == labels[:, None]).any(axis=1).mean())
    return {
        "top1": float((predicted == labels).mean()),
        "top5": top5,
        "n": int(len(labels)),
        "per_class": {class_id: (float(confusion[i, i] / support[i]) if support[i] else None) for i, class_id in enumerate(class_ids)},
        "confusion": confusion.tolist(),
    }


def evaluate_under_shift(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    class_ids: list[str],
    corruptions: Iterable[str],
    severities: Iterable[int],
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, Any]:
    """In-domain :func:`evaluate` plus top-1 under each corruption@severity.

    ``shifted`` maps ``"kind@severity"`` to top-1; ``shifted_mean_top1`` is their mean and
    ``shift_drop`` = in-domain top-1 minus that mean (both None without corruptions).
    """
    in_domain = evaluate(model, images, labels, class_ids, batch_size)
    shifted = {
        f"{kind}@{severity}": evaluate(model, corrupt(images, kind, severity, seed), labels, class_ids, batch_size)["top1"]
        for kind in corruptions
        for severity in severities
    }
    shifted_mean = float(np.mean(list(shifted.values()))) if shifted else None
    return {
        "in_domain": in_domain,
        "shifted": shifted,
        "shifted_mean_top1": shifted_mean,
        "shift_drop": in_domain["top1"] - shifted_mean if shifted_mean is not None else None,
    }


def _delta(augmented: float | None, baseline: float | None) -> float | None:
    return None if augmented is None or baseline is None else float(augmented - baseline)


def compare(baseline: dict[str, Any], augmented: dict[str, Any]) -> dict[str, Any]:
    """Augmented minus baseline, for two :func:`evaluate_under_shift` (or :func:`evaluate`) results.

    Returns ``{"top1_delta", "shifted_mean_top1_delta", "per_class_delta": {class_id: delta},
    "shifted_delta": {"kind@severity": delta}}``; a delta is None where either side has no value.
    """
    base_in = baseline.get("in_domain", baseline)
    aug_in = augmented.get("in_domain", augmented)
    if list(base_in["per_class"]) != list(aug_in["per_class"]):
        raise ValueError("compare needs results over the same classes, in the same order")
    base_shifted, aug_shifted = baseline.get("shifted", {}), augmented.get("shifted", {})
    return {
        "top1_delta": _delta(aug_in["top1"], base_in["top1"]),
        "shifted_mean_top1_delta": _delta(augmented.get("shifted_mean_top1"), baseline.get("shifted_mean_top1")),
        "per_class_delta": {
            class_id: _delta(aug_in["per_class"][class_id], accuracy) for class_id, accuracy in base_in["per_class"].items()
        },
        "shifted_delta": {key: _delta(aug_shifted[key], base_shifted[key]) for key in base_shifted if key in aug_shifted},
    }
