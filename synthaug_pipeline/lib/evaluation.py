"""Judging classifiers: accuracy, per-class accuracy, confusion, and robustness to shifted inputs.

Two kinds of shift:

* **Corruptions** in the style of ImageNet-C (Hendrycks & Dietterich 2019), made by :func:`corrupt`
  from the test split: gaussian_noise, gaussian_blur, contrast, brightness, jpeg and pixelate, each
  at five fixed severities, so numbers from different runs are comparable. Sizes are scaled to the
  image (blur sigma and pixelation grid are fractions of the side) because our images are tiny (8x8
  to 64x64), and chosen so that the distortion (MSE to the clean image, averaged over a test set)
  never decreases with severity, down to 8x8.
* **Shifted test sets**: extra labelled folders (``evaluation.shift_folders``: ImageFolder roots or
  Parquet URLs, e.g. a sketch or rendition version of the classes), checked and read by
  :mod:`synthaug_pipeline.lib.shift_sets`.

:func:`evaluate_under_shift` reports both for one model, :func:`compare` the differences between the
augmented model and the real-only baseline (overall, per class, per corruption, drop under shift).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import nn

from synthaug_pipeline.lib.images import to_model_tensor

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "brightness", "jpeg", "pixelate")
SEVERITIES = (1, 2, 3, 4, 5)

NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)  # fraction of the 0..255 range
# Blur sigma as a fraction of the image side: 8x8 -> sigma 0.4 px (still legible) .. 2.2 px (a blob);
# 32x32 -> 1.6 .. 9 px. ImageNet-C's absolute sigmas would be invisible at 8x8.
BLUR_SIGMA = (0.05, 0.08, 0.12, 0.18, 0.28)
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)  # remaining share of each pixel's distance to the image mean
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to the HSV value channel (0..1), as ImageNet-C
JPEG_QUALITY = (25, 18, 15, 10, 7)  # PIL JPEG quality, as ImageNet-C
# Side of the coarse pixel grid as a fraction of the image side, as ImageNet-C; see pixelate_size.
PIXELATE_FACTOR = (0.6, 0.5, 0.4, 0.3, 0.25)


def pixelate_size(side: int, severity: int) -> int:
    """Side of the coarse grid that ``pixelate`` at ``severity`` averages a ``side``-pixel image onto.

    ``round(side * PIXELATE_FACTOR)``, but every severity strictly coarser than the one before while
    the image allows it (at 8 pixels ImageNet-C's factors give 5, 4, 3, 2, 2; here 5, 4, 3, 2, 1), so
    no two severities are the same corruption. Never below 1 pixel.
    """
    size = side
    for level in range(severity):
        size = max(1, min(size - 1, round(side * PIXELATE_FACTOR[level])))
    return size


def corrupt(images: np.ndarray, kind: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupted copy of uint8 ``[N, H, W, C]`` images: ``kind`` from CORRUPTIONS, severity 1..5.

    * gaussian_noise: add N(0, NOISE_STD * 255) per pixel and channel.
    * gaussian_blur: Gaussian filter over H and W, sigma = BLUR_SIGMA * the shorter side.
    * contrast: pull every pixel towards the image mean, keeping CONTRAST_FACTOR of its distance.
    * brightness: add BRIGHTNESS_SHIFT to the HSV value channel (hue and saturation kept; gray
      images: add it to the gray level), clipped at white.
    * jpeg: encode with PIL at JPEG_QUALITY and decode (1- or 3-channel images).
    * pixelate: area-average onto a :func:`pixelate_size` grid, then blow the cells back up
      (nearest neighbour) to the original size.

    Deterministic for a given ``seed`` (only gaussian_noise is random).
    """
    _check_corruption(kind, severity)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError("corrupt expects uint8 images shaped [N, H, W, C]")
    return _corrupt(images, kind, int(severity) - 1, np.random.default_rng(seed))


def _check_corruption(kind: str, severity: Any) -> None:
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}: choose one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"corruption severity must be an integer from 1 to 5, got {severity!r}")


def _corrupt(images: np.ndarray, kind: str, level: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`corrupt` with checked arguments; ``rng`` (only gaussian_noise draws from it) may carry on over chunks:
    noise drawn chunk by chunk from one generator equals noise drawn for the whole set at once."""
    if kind == "jpeg":
        return _jpeg(images, JPEG_QUALITY[level])
    x = images.astype(np.float32)
    if kind == "gaussian_noise":
        x = x + rng.normal(0.0, NOISE_STD[level] * 255.0, size=x.shape).astype(np.float32)
    elif kind == "gaussian_blur":
        sigma = BLUR_SIGMA[level] * min(images.shape[1:3])
        x = gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="reflect")  # blur H and W only
    elif kind == "contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = mean + (x - mean) * CONTRAST_FACTOR[level]
    elif kind == "brightness":
        x = _brighten(x / 255.0, BRIGHTNESS_SHIFT[level]) * 255.0
    else:  # pixelate
        x = _pixelate(x, pixelate_size(images.shape[1], level + 1), pixelate_size(images.shape[2], level + 1))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _brighten(x: np.ndarray, shift: float) -> np.ndarray:
    """Add ``shift`` to the HSV value (max over channels) of float images in [0, 1], keeping hue and saturation.

    Scaling a pixel's channels by ``new_value / value`` moves its value and keeps its hue and
    saturation, which is what ImageNet-C's rgb2hsv -> add -> hsv2rgb does; black pixels become gray.
    """
    value = x.max(axis=-1, keepdims=True)
    new_value = np.minimum(value + shift, 1.0)
    scale = np.divide(new_value, value, out=np.zeros_like(value), where=value > 0)
    return np.where(value > 0, x * scale, new_value)


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    channels = images.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"jpeg corruption needs 1- or 3-channel images, got {channels} channels")
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if channels == 1 else image).save(buffer, format="JPEG", quality=quality)
        with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
            array = np.asarray(decoded.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        out[i] = array[..., None] if channels == 1 else array
    return out


def _pixelate(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Area-average float images ``[N, H, W, C]`` onto a ``rows x cols`` grid, then nearest-neighbour back up."""
    n, height, width, channels = x.shape
    out = np.empty_like(x)
    for i in range(n):
        for c in range(channels):
            plane = Image.fromarray(np.ascontiguousarray(x[i, :, :, c], dtype=np.float32))  # mode "F"
            coarse = plane.resize((cols, rows), Image.BOX)
            out[i, :, :, c] = np.asarray(coarse.resize((width, height), Image.NEAREST))
    return out


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


CHUNK_BYTES = 64 * 2**20  # pixels read (and corrupted) at a time: memory does not grow with the test set


def chunk_rows(images: np.ndarray, batch_size: int) -> int:
    """Rows of ``images`` evaluated at a time: about CHUNK_BYTES of pixels, a whole number of batches (so the
    model sees the same batches as over the whole array at once, whatever the chunking)."""
    per_image = max(1, int(np.prod(images.shape[1:])))
    return max(1, CHUNK_BYTES // per_image // batch_size) * batch_size


def _chunks(images: np.ndarray, batch_size: int, kind: str | None = None, level: int = 0, seed: int = 0) -> Iterator[np.ndarray]:
    """``images`` in consecutive chunks (:func:`chunk_rows`), corrupted by ``kind`` at ``level`` when given."""
    rng = np.random.default_rng(seed)
    step = chunk_rows(images, batch_size)
    for start in range(0, len(images), step):
        chunk = np.array(images[start : start + step])  # in RAM and writable (a memmap's pages are read-only)
        yield chunk if kind is None else _corrupt(chunk, kind, level, rng)


def _predictions(model: nn.Module, chunks: Iterable[np.ndarray], labels: np.ndarray, num_classes: int, batch_size: int):
    """Top-1 predictions ``[N]`` and, with more than 10 classes, whether the label is in the top 5 (``[N]`` bool)."""
    predicted, hits, start = [], [], 0
    for chunk in chunks:
        logits = _logits(model, chunk, batch_size)
        if logits.shape[1] != num_classes:
            raise ValueError(f"the model predicts {logits.shape[1]} classes but {num_classes} class ids were given")
        predicted.append(logits.argmax(dim=1).numpy())
        if num_classes > 10:
            top5_classes = logits.topk(5, dim=1).indices.numpy()
            hits.append((top5_classes == labels[start : start + len(chunk), None]).any(axis=1))
        start += len(chunk)
    return np.concatenate(predicted), (np.concatenate(hits) if num_classes > 10 else None)


def _check_labelled(images: np.ndarray, labels: Any, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) == 0:
        raise ValueError("evaluate needs at least one labelled image")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}) for {num_classes} class ids")
    return labels


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, class_ids: list[str], batch_size: int = 512) -> dict[str, Any]:
    """Accuracy of ``model`` on labelled uint8 images.

    Returns ``{"top1", "top5" (None unless more than 10 classes), "n", "per_class": {class_id:
    accuracy or None when the class has no images}, "confusion": [[int]] rows = true, cols = predicted}``.
    ``images`` may be a memmap (:mod:`synthaug_pipeline.lib.class_splits`): it is read a chunk at a time.
    """
    num_classes = len(class_ids)
    labels = _check_labelled(images, labels, num_classes)
    predicted, top5_hits = _predictions(model, _chunks(images, batch_size), labels, num_classes, batch_size)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    return {
        "top1": float((predicted == labels).mean()),
        "top5": float(top5_hits.mean()) if top5_hits is not None else None,
        "n": int(len(labels)),
        "per_class": {class_id: (float(confusion[i, i] / support[i]) if support[i] else None) for i, class_id in enumerate(class_ids)},
        "confusion": confusion.tolist(),
    }


def corrupted_top1(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int, kind: str, severity: int, seed: int = 0, batch_size: int = 512
) -> float:
    """Top-1 of ``model`` on ``corrupt(images, kind, severity, seed)``, corrupting a chunk at a time (same numbers)."""
    _check_corruption(kind, severity)
    labels = _check_labelled(images, labels, num_classes)
    predicted, _ = _predictions(model, _chunks(images, batch_size, kind, int(severity) - 1, seed), labels, num_classes, batch_size)
    return float((predicted == labels).mean())


def evaluate_under_shift(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    class_ids: list[str],
    corruptions: Iterable[str],
    severities: Iterable[int],
    seed: int = 0,
    batch_size: int = 512,
    *,
    shift_sets: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """In-domain :func:`evaluate` plus top-1 under each corruption@severity and on extra shifted test sets.

    ``shifted`` maps ``"kind@severity"`` to top-1 (corrupted copies of ``images``);
    ``shifted_by_kind`` maps each kind to its mean over the severities; ``shifted_mean_top1`` is the
    mean over all of ``shifted`` and ``shift_drop`` = in-domain top-1 minus that mean (both None
    without corruptions). ``shift_sets`` ({name: (images, labels)}, labels indexing ``class_ids``)
    adds ``shift_sets[name]`` = :func:`evaluate` of that set without the confusion matrix, plus
    ``drop`` = in-domain top-1 minus its top-1 (``{}`` without shift sets).
    """
    in_domain = evaluate(model, images, labels, class_ids, batch_size)
    severities = list(severities)
    shifted = {
        f"{kind}@{severity}": corrupted_top1(model, images, labels, len(class_ids), kind, severity, seed, batch_size)
        for kind in corruptions
        for severity in severities
    }
    by_kind: dict[str, list[float]] = {}
    for key, top1 in shifted.items():
        by_kind.setdefault(key.rsplit("@", 1)[0], []).append(top1)
    shifted_mean = float(np.mean(list(shifted.values()))) if shifted else None
    sets = {}
    for name, (set_images, set_labels) in (shift_sets or {}).items():
        result = evaluate(model, set_images, set_labels, class_ids, batch_size)
        del result["confusion"]  # K x K per set would dwarf the rest of the report for ImageNet-sized K
        sets[name] = {**result, "drop": in_domain["top1"] - result["top1"]}
    return {
        "in_domain": in_domain,
        "shifted": shifted,
        "shifted_by_kind": {kind: float(np.mean(values)) for kind, values in by_kind.items()},
        "shifted_mean_top1": shifted_mean,
        "shift_drop": in_domain["top1"] - shifted_mean if shifted_mean is not None else None,
        "shift_sets": sets,
    }


def _delta(augmented: float | None, baseline: float | None) -> float | None:
    return None if augmented is None or baseline is None else float(augmented - baseline)


def compare(baseline: dict[str, Any], augmented: dict[str, Any]) -> dict[str, Any]:
    """Augmented minus baseline, for two :func:`evaluate_under_shift` (or :func:`evaluate`) results.

    Returns ``{"top1_delta", "top5_delta", "shifted_mean_top1_delta", "shift_drop_delta",
    "per_class_delta": {class_id: delta}, "shifted_delta": {"kind@severity": delta},
    "shifted_by_kind_delta": {kind: delta}, "shift_sets_delta": {name: {"top1_delta", "drop_delta"}}}``;
    a delta is None where either side has no value, and only keys both sides have are compared. A
    negative ``shift_drop_delta`` means the augmented model loses less accuracy under corruption.
    """
    base_in = baseline.get("in_domain", baseline)
    aug_in = augmented.get("in_domain", augmented)
    if list(base_in["per_class"]) != list(aug_in["per_class"]):
        raise ValueError("compare needs results over the same classes, in the same order")
    base_shifted, aug_shifted = baseline.get("shifted", {}), augmented.get("shifted", {})
    base_kinds, aug_kinds = baseline.get("shifted_by_kind", {}), augmented.get("shifted_by_kind", {})
    base_sets, aug_sets = baseline.get("shift_sets", {}), augmented.get("shift_sets", {})
    return {
        "top1_delta": _delta(aug_in["top1"], base_in["top1"]),
        "top5_delta": _delta(aug_in.get("top5"), base_in.get("top5")),
        "shifted_mean_top1_delta": _delta(augmented.get("shifted_mean_top1"), baseline.get("shifted_mean_top1")),
        "shift_drop_delta": _delta(augmented.get("shift_drop"), baseline.get("shift_drop")),
        "per_class_delta": {
            class_id: _delta(aug_in["per_class"][class_id], accuracy) for class_id, accuracy in base_in["per_class"].items()
        },
        "shifted_delta": {key: _delta(aug_shifted[key], base_shifted[key]) for key in base_shifted if key in aug_shifted},
        "shifted_by_kind_delta": {kind: _delta(aug_kinds[kind], base_kinds[kind]) for kind in base_kinds if kind in aug_kinds},
        "shift_sets_delta": {
            name: {
                "top1_delta": _delta(aug_sets[name]["top1"], base_sets[name]["top1"]),
                "drop_delta": _delta(aug_sets[name]["drop"], base_sets[name]["drop"]),
            }
            for name in base_sets
            if name in aug_sets
        },
    }
