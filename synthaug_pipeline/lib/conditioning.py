"""Conditioning images for img2img / image-variation generators, made from real images of one class.

``conditioning_image(train, "n02012849", index=7, seed=0, augmentations=["random_resized_crop", "flip"])``
picks a real training image of the class, augments it and returns a :class:`ConditioningImage`
whose ``provenance`` ("train:12|crop,flip", "train:12+train:40|cutmix,crop") goes in the shard's
``conditioning_image_id`` column. Everything is deterministic per (class, index, seed). Pass
``image_ids`` (the dataset's stable ids, or :func:`pixel_ids`) so the record names the real image
rather than its position, which shifts when the class's image list changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

AUGMENTATIONS = ("random_resized_crop", "flip", "color_jitter", "mixup", "cutmix")
SHORT_NAMES = {"random_resized_crop": "crop", "flip": "flip", "color_jitter": "jitter", "mixup": "mixup", "cutmix": "cutmix"}
_ID_RESERVED = ("|", "+", ",")


class ConditioningError(ValueError):
    """Conditioning inputs that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ConditioningImage:
    """An augmented real image and where it came from."""

    image: np.ndarray  # uint8 [H, W, C], same shape as the real images
    source_ids: tuple[str, ...]  # the real image(s) used, e.g. ("train:12",) or ("train:12", "train:40")
    augmentations: tuple[str, ...]  # short names of what was applied, in order: mixup/cutmix, crop, flip, jitter

    @property
    def provenance(self) -> str:
        """Compact Parquet-friendly record: ``"train:12|crop,flip"``; no augmentation gives ``"train:12"``."""
        ids = "+".join(self.source_ids)
        return f"{ids}|{','.join(self.augmentations)}" if self.augmentations else ids


def parse_provenance(provenance: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"train:12+train:40|cutmix"`` -> (("train:12", "train:40"), ("cutmix",))."""
    ids, _, augs = provenance.partition("|")
    return tuple(ids.split("+")), tuple(a for a in augs.split(",") if a)


def conditioning_seed(class_id: str, index: int, seed: int) -> int:
    """A 63-bit seed for conditioning image ``index`` of ``class_id``, stable across processes and machines."""
    digest = hashlib.sha256(f"conditioning\x00{class_id}\x00{index}\x00{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def pixel_ids(images: np.ndarray, split: str = "train") -> list[str]:
    """Stable ids for real images that carry none: ``"{split}:sha256-<12 hex>"`` of each image's shape and pixels.

    Unlike ``"{split}:{position}"`` they do not shift when the class's image list changes (e.g. another
    ``data.train_per_class``), and any copy of the dataset can find the image by hashing it. Identical
    images share an id, which is what a provenance record should say about them.
    """
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        raise ConditioningError(f"real images must be an array [N, H, W, C], got {getattr(images, 'shape', type(images).__name__)}")
    ids = []
    for image in images:
        digest = hashlib.sha256(repr(image.shape).encode() + str(image.dtype).encode() + b"\x00" + np.ascontiguousarray(image).tobytes())
        ids.append(f"{split}:sha256-{digest.hexdigest()[:12]}")
    return ids


def check_augmentations(augmentations: Sequence[str]) -> tuple[str, ...]:
    unknown = [a for a in augmentations if a not in AUGMENTATIONS]
    if unknown:
        raise ConditioningError(f"unknown conditioning augmentations {unknown}; choose from {list(AUGMENTATIONS)}")
    return tuple(dict.fromkeys(augmentations))


def _check_images(images: np.ndarray, class_id: str, image_ids: Sequence[str] | None) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ConditioningError(f"class {class_id!r}: real images must be uint8 [N, H, W, 1 or 3], got {dtype} {shape}")
    if len(images) == 0:
        raise ConditioningError(f"class {class_id!r} has no real training images to make conditioning images from")
    if image_ids is not None:
        if len(image_ids) != len(images):
            raise ConditioningError(f"class {class_id!r}: {len(image_ids)} image ids for {len(images)} images")
        bad = [i for i in image_ids if not i or any(ch in i for ch in _ID_RESERVED)]
        if bad:
            raise ConditioningError(f"image ids must be non-empty and free of {' '.join(_ID_RESERVED)}: {bad[:3]}")


def conditioning_image(
    images: np.ndarray,
    class_id: str,
    index: int,
    seed: int,
    augmentations: Sequence[str],
    *,
    image_ids: Sequence[str] | None = None,
    split: str = "train",
    crop_scale: tuple[float, float] = (0.35, 1.0),
    jitter: float = 0.3,
    mix_probability: float = 0.5,
) -> ConditioningImage:
    """Conditioning image ``index`` of a class from its real images ``[N, H, W, C]`` (uint8, C = 1 or 3).

    The base image cycles through a (class, seed)-shuffled order, so consecutive indices use
    different real images. ``random_resized_crop`` and ``color_jitter`` always apply (random
    strength), ``flip`` half the time, and ``mixup`` / ``cutmix`` (with another image of the same
    class) with ``mix_probability``. Ids are ``image_ids[i]`` when the dataset has stable ids, else
    ``"{split}:{i}"`` with ``i`` the position in ``images``.
    """
    _check_images(images, class_id, image_ids)
    enabled = check_augmentations(augmentations)
    if index < 0:
        raise ConditioningError(f"conditioning image index must be >= 0, got {index}")
    n = len(images)
    order = np.random.default_rng(conditioning_seed(class_id, -1, seed)).permutation(n)
    base = int(order[index % n])
    rng = np.random.default_rng(conditioning_seed(class_id, index, seed))
    image = images[base].astype(np.float32)
    used, applied = [base], []
    mixes = [a for a in ("mixup", "cutmix") if a in enabled]
    if mixes and n > 1 and rng.random() < mix_probability:
        kind = mixes[int(rng.integers(len(mixes)))]
        partner = int((base + 1 + rng.integers(n - 1)) % n)
        image = (_mixup if kind == "mixup" else _cutmix)(image, images[partner].astype(np.float32), rng)
        used.append(partner)
        applied.append(kind)
    if "random_resized_crop" in enabled:
        image = _random_resized_crop(image, rng, crop_scale)
        applied.append("crop")
    if "flip" in enabled and rng.random() < 0.5:
        image = image[:, ::-1]
        applied.append("flip")
    if "color_jitter" in enabled:
        image = _color_jitter(image, rng, jitter)
        applied.append("jitter")
    ids = tuple(image_ids[i] if image_ids is not None else f"{split}:{i}" for i in used)
    out = np.ascontiguousarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return ConditioningImage(out, ids, tuple(applied))


def conditioning_images(
    images: np.ndarray, class_id: str, count: int, seed: int, augmentations: Sequence[str], **options
) -> list[ConditioningImage]:
    """Conditioning images ``0 .. count - 1`` of a class (see :func:`conditioning_image` for ``options``)."""
    return [conditioning_image(images, class_id, i, seed, augmentations, **options) for i in range(count)]


def _mixup(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, alpha: float = 0.4) -> np.ndarray:
    lam = rng.beta(alpha, alpha)
    lam = max(lam, 1.0 - lam)  # the base image stays dominant
    return lam * a + (1.0 - lam) * b


def _cutmix(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = a.shape[:2]
    side = np.sqrt(rng.uniform(0.1, 0.5))  # the pasted box covers 10-50 % of the area
    bh, bw = max(1, int(round(h * side))), max(1, int(round(w * side)))
    top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    out = a.copy()
    out[top : top + bh, left : left + bw] = b[top : top + bh, left : left + bw]
    return out


def _random_resized_crop(image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float]) -> np.ndarray:
    """torchvision's RandomResizedCrop: a random area share and aspect ratio, resized back to the input size."""
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = int(round(np.sqrt(area / ratio))), int(round(np.sqrt(area * ratio)))
        if 0 < ch <= h and 0 < cw <= w:
            break
    else:
        ch = cw = min(h, w)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = np.ascontiguousarray(image[top : top + ch, left : left + cw], dtype=np.float32)
    channels = [np.asarray(Image.fromarray(crop[..., c]).resize((w, h), Image.BILINEAR)) for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)


def _color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and (RGB only) saturation, each by a factor in [1 - strength, 1 + strength]."""
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    image = image * brightness
    gray = image.mean(axis=-1, keepdims=True) if image.shape[-1] == 1 else image @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
    image = (image - gray.mean()) * contrast + gray.mean()
    if image.shape[-1] == 3:
        gray = image @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        image = gray + (image - gray) * saturation
    return np.clip(image, 0, 255)
