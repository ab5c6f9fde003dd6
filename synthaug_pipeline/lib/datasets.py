"""Real labelled images for each profile: digits, Fashion-MNIST, any folder or Parquet file.

Every loader returns a :class:`Dataset` with a fixed train/test split, uint8
``[N, H, W, C]`` images and integer labels indexing ``class_ids`` (the partition
keys). ``dataset_class_ids`` answers the class list without reading images, so
Dagster can build its partitions at load time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from synthaug_pipeline.lib.config import DataConfig, ProfileError
from synthaug_pipeline.lib.records import record

FASHION_IDS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


class DatasetError(ProfileError):
    """The configured data cannot be read; the message says how to fix it."""


@dataclass
class LabeledImages:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N], indexes Dataset.class_ids

    def of_class(self, index: int) -> np.ndarray:
        return self.images[self.labels == index]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    class_ids: list[str]
    class_names: list[str]
    train: LabeledImages
    test: LabeledImages
    source: str
    skipped_files: list[str] = field(default_factory=list)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # {class id: {reason: files skipped}}
    available: dict[str, dict[str, int]] | None = None  # {class id: {"train": n, "test": n}} listed before caps (imagenet)
    # carved from the training split (data.validation_fraction): every choice is made on it, never on test
    validation: LabeledImages | None = None
    # listed sources read only some classes' pixels (load_dataset's ``decode``): those classes, None for all
    decoded: list[str] | None = None
    # per class, the images each split gets when every listed file decodes: {class id: {"train", "validation", "test"}}
    planned: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def counts(self, class_id: str) -> dict[str, int]:
        """Images per split of one class: counted from the decoded pixels, or the listing's plan for a class not decoded."""
        if self.decoded is not None and class_id not in self.decoded:
            return dict(self.planned[class_id])
        index = self.class_ids.index(class_id)
        return {
            "train": int(np.sum(self.train.labels == index)),
            "validation": int(np.sum(self.validation.labels == index)) if self.validation is not None else 0,
            "test": int(np.sum(self.test.labels == index)),
        }

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        """Files skipped over all classes, per reason (``corrupt``, ``empty_file``, ``too_large``, ...)."""
        totals: Counter = Counter()
        for reasons in self.skipped.values():
            totals.update(reasons)
        return dict(sorted(totals.items()))


def validation_split(dataset: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """``(images, labels)`` of the dataset's validation split (early stopping), None without one."""
    return (dataset.validation.images, dataset.validation.labels) if dataset.validation is not None else None


@record("real_class")
@dataclass
class RealClass:
    """One class's real images as ``real_images`` hands them on (uint8 ``[N, H, W, C]`` train and test)."""

    class_id: str
    class_index: int
    class_name: str
    train: np.ndarray
    test: np.ndarray
    train_ids: list[str] | None = None  # stable names of the training images, when the source has them
    validation: np.ndarray | None = None  # carved from training (data.validation_fraction); None without it


# --- class lists (cheap, no pixels) -------------------------------------------------------


def dataset_class_ids(cfg: DataConfig) -> list[str]:
    """The class ids (partition keys) a data config yields, without decoding images."""
    if cfg.source == "imagenet":
        from synthaug_pipeline.lib.imagenet import imagenet_class_ids

        return imagenet_class_ids(cfg.classes)  # the 1000 wnids (or the chosen ones), standard order: no data read
    if cfg.source == "digits":
        ids = [str(i) for i in range(10)]
    elif cfg.source == "fashion":
        ids = list(FASHION_IDS)
    else:
        from synthaug_pipeline.lib.listed_datasets import _folder_class_ids

        ids = _folder_class_ids(_require_path(cfg))
    return _select_classes(ids, wanted_classes(cfg))


def wanted_classes(cfg: DataConfig) -> list[str] | None:
    """``data.classes`` as a list: as given, or read from a text file (one class id per line, ``#`` comments)."""
    if not isinstance(cfg.classes, str):
        return cfg.classes
    from synthaug_pipeline.lib.imagenet import read_class_list

    return read_class_list(cfg.classes)


def _select_classes(ids: list[str], wanted: list[str] | None) -> list[str]:
    if wanted is None:
        return ids
    unknown = [c for c in wanted if c not in ids]
    if unknown:
        raise DatasetError(f"data.classes names classes the dataset does not have: {unknown}; it has {ids[:20]}")
    return [c for c in ids if c in wanted]


def _require_path(cfg: DataConfig) -> str:
    if not cfg.path:
        raise DatasetError("data.path is not set: point it at an ImageFolder tree or a Parquet file, e.g. --set data.path=/data/images")
    return cfg.path


def check_classes(cfg: DataConfig, classes: list[str]) -> list[str]:
    """The requested class ids (e.g. ``--classes``) in dataset order; unknown ids are an error listing the valid ones."""
    known = dataset_class_ids(cfg)
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise DatasetError(f"--classes names unknown classes {unknown}; valid class ids are {known[:20]}")
    return [c for c in known if c in classes]


# --- availability (cheap, no pixels, no download) ------------------------------------------

def check_dataset_available(cfg: DataConfig) -> None:
    """Fail fast, before anything is written, when an explicit ``data.path`` cannot hold the configured data.

    Reads no pixels and downloads nothing. Without ``data.path``, fashion may still fall back to the
    Debian package or torchvision's download at load time. A folder dataset's class ids are checked
    (:func:`~synthaug_pipeline.lib.listed_datasets.check_class_id`), a Parquet file's schema, labels and splits
    too, and each selected class folder must hold at least one image file (one listing per class).
    """
    if cfg.source == "fashion" and cfg.path:
        from synthaug_pipeline.lib.embedded_datasets import check_fashion_available

        check_fashion_available(cfg)
    elif cfg.source == "imagenet":
        from synthaug_pipeline.lib.imagenet import check_imagenet_available

        check_imagenet_available(cfg)
    elif cfg.source == "folder":
        from synthaug_pipeline.lib.listed_datasets import check_folder_available

        check_folder_available(cfg)


# --- loading -------------------------------------------------------------------------------


EMBEDDED_SOURCES = ("digits", "fashion")  # decoded whole: at most ~70,000 small images


def load_dataset(cfg: DataConfig, decode: list[str] | None = None) -> Dataset:
    """Load, split, subset and resize the configured dataset.

    ``decode``: the class ids whose images are read and decoded (None: every selected class). Listed sources (folder,
    Parquet, imagenet) read only those, so a step over a batch of classes holds that batch's pixels, not the dataset's;
    the split and each class's draw are the same as with every class decoded. The other classes keep their planned
    counts (:meth:`Dataset.counts`). The embedded sources (digits, fashion) are always decoded whole.
    """
    if cfg.source == "digits":
        from synthaug_pipeline.lib.embedded_datasets import _load_digits

        dataset = _load_digits(cfg)
    elif cfg.source == "fashion":
        from synthaug_pipeline.lib.embedded_datasets import _load_fashion

        dataset = _load_fashion(cfg)
    elif cfg.source == "imagenet":
        from synthaug_pipeline.lib.imagenet import load_imagenet

        return load_imagenet(cfg, decode)  # subsets before decoding, like folder
    else:
        from synthaug_pipeline.lib.listed_datasets import _load_folder

        return _load_folder(cfg, decode)  # subsets before decoding
    return _postprocess(dataset, cfg)


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[-1] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=-1)
    return image.mean(axis=-1, keepdims=True).round().astype(np.uint8)


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """Center-crop to a square and resize to ``size`` (bicubic)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return square
    pil = Image.fromarray(square[..., 0] if square.shape[-1] == 1 else square)
    resized = np.asarray(pil.resize((size, size), Image.BICUBIC), dtype=np.uint8)
    return resized[..., None] if resized.ndim == 2 else resized


# --- shared post-processing ---------------------------------------------------------------


def _rng(seed: int) -> np.random.Generator:
    """A generator for any int seed: numpy refuses negative seeds, so they wrap as 64-bit two's complement (-1 -> 2**64 - 1)."""
    return np.random.default_rng(seed if seed >= 0 else seed % 2**64)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(seed)
    train, test = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, int(round(len(idx) * test_fraction))) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def carve_validation(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, class_ids: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Split training ``indices`` into (train, validation): ``round(fraction * n_c)`` images of each class, seeded.

    Stratified, so every class keeps its share; the draw is a stream of its own (``[seed, 3]``), not the
    one the train/test split or ``train_per_class`` draw from. ``fraction`` 0 keeps everything for training.
    Raises DatasetError, naming the class, when the fraction would leave a class with no validation image
    or no training image.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not fraction:
        return indices, np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 3])
    train, validation = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c, class_id in enumerate(class_ids):
        members = rng.permutation(indices[labels[indices] == c])
        held = int(round(len(members) * fraction))
        if held == 0 or held == len(members):
            side = "no validation image" if held == 0 else "no training image"
            raise DatasetError(
                f"data.validation_fraction={fraction:g} leaves class {class_id!r} with {side} (it has {len(members)} training "
                f"images, round({fraction:g} x {len(members)}) = {held} held out): {'raise' if held == 0 else 'lower'} the fraction, "
                "or set it to 0 for no validation split"
            )
        validation.append(members[:held])
        train.append(members[held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))


def _take_per_class(split: LabeledImages, k: int | None, seed: int) -> LabeledImages:
    if k is None:
        return split
    rng = _rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(split.labels == c))[:k] for c in np.unique(split.labels)])
    keep.sort()
    return LabeledImages(split.images[keep], split.labels[keep])


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    h = images.shape[1]
    if h == size:
        return images
    if size > h and (size - h) % 2 == 0 and images.shape[1] == images.shape[2]:
        # MNIST-style data on a black background: pad rather than interpolate (28 -> 32)
        p = (size - h) // 2
        return np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    return np.stack([_fit(image, size) for image in images]) if len(images) else images.reshape(0, size, size, images.shape[-1])


def _postprocess(dataset: Dataset, cfg: DataConfig) -> Dataset:
    class_ids = _select_classes(dataset.class_ids, wanted_classes(cfg))
    old_index = [dataset.class_ids.index(c) for c in class_ids]
    remap = np.full(len(dataset.class_ids), -1, dtype=np.int64)
    remap[old_index] = np.arange(len(class_ids))

    def subset(split: LabeledImages) -> LabeledImages:
        new_labels = remap[split.labels]
        keep = new_labels >= 0
        images = split.images[keep]
        if cfg.image_size:
            images = _resize_all(images, cfg.image_size)
        if cfg.channels:
            images = np.stack([_to_channels(i, cfg.channels) for i in images]) if len(images) else images
        return LabeledImages(np.ascontiguousarray(images), new_labels[keep])

    train = subset(dataset.train)
    validation = None
    if cfg.validation_fraction:
        keep, held = carve_validation(np.arange(len(train)), train.labels, cfg.validation_fraction, cfg.seed, class_ids)
        train, validation = LabeledImages(train.images[keep], train.labels[keep]), LabeledImages(train.images[held], train.labels[held])
    train = _take_per_class(train, cfg.train_per_class, cfg.seed)
    test = _take_per_class(subset(dataset.test), cfg.test_per_class, cfg.seed + 1)
    empty = [class_ids[i] for i in range(len(class_ids)) if not np.any(train.labels == i)]
    if empty:
        raise DatasetError(f"classes with no training images: {empty}; check data.path or data.classes")
    return Dataset(
        name=dataset.name,
        class_ids=class_ids,
        class_names=[dataset.class_names[i] for i in old_index],
        train=train,
        test=test,
        source=dataset.source,
        skipped_files=dataset.skipped_files,
        validation=validation,
    )
