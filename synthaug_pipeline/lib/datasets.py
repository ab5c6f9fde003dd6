"""Real labelled images for each profile: digits, Fashion-MNIST, any folder or Parquet file.

Every loader returns a :class:`Dataset` with a fixed train/test split, uint8
``[N, H, W, C]`` images and integer labels indexing ``class_ids`` (the partition
keys). ``dataset_class_ids`` answers the class list without reading images, so
Dagster can build its partitions at load time.
"""

from __future__ import annotations

import gzip
import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image, UnidentifiedImageError

from synthaug_pipeline.lib.config import DataConfig, ProfileError
from synthaug_pipeline.lib.redaction import redact_url

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_IDS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


# --- class lists (cheap, no pixels) -------------------------------------------------------


def dataset_class_ids(cfg: DataConfig) -> list[str]:
    """The class ids (partition keys) a data config yields, without decoding images."""
    if cfg.source == "digits":
        ids = [str(i) for i in range(10)]
    elif cfg.source == "fashion":
        ids = list(FASHION_IDS)
    else:
        ids = _folder_class_ids(_require_path(cfg))
    return _select_classes(ids, cfg.classes)


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

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def _fashion_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Each idx file in ``directory`` (gzipped or not) and the names of the missing ones."""
    found, missing = {}, []
    for key, name in FASHION_FILES.items():
        candidates = [directory / name, directory / name[: -len(".gz")]]
        present = next((c for c in candidates if c.is_file()), None)
        if present is None:
            missing.append(name)
        else:
            found[key] = present
    return found, missing


def check_dataset_available(cfg: DataConfig) -> None:
    """Fail fast, before anything is written, when an explicit ``data.path`` cannot hold the configured data.

    Reads no pixels and downloads nothing. Without ``data.path``, fashion may still fall back to the
    Debian package or torchvision's download at load time.
    """
    if cfg.source == "fashion" and cfg.path:
        directory = Path(cfg.path)
        if not directory.is_dir():
            raise DatasetError(
                f"data.path {cfg.path!r} for fashion is not a folder: point it at a folder holding the four "
                f"Fashion-MNIST idx files ({', '.join(FASHION_FILES.values())}), or unset it to use {FASHION_DEBIAN_DIR}"
            )
        _, missing = _fashion_files(directory)
        if missing:
            raise DatasetError(
                f"data.path {cfg.path!r} lacks the Fashion-MNIST files {missing} (gzipped or not): copy them there, "
                f"or unset data.path to use {FASHION_DEBIAN_DIR} (apt-get install dataset-fashion-mnist)"
            )
    elif cfg.source == "folder":
        path = _require_path(cfg)
        fs, root = fsspec.core.url_to_fs(path)
        if not fs.exists(root):
            raise DatasetError(f"data.path {path!r} does not exist: point it at an ImageFolder tree or a Parquet file")


# --- loading -------------------------------------------------------------------------------


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load, split, subset and resize the configured dataset."""
    if cfg.source == "digits":
        dataset = _load_digits(cfg)
    elif cfg.source == "fashion":
        dataset = _load_fashion(cfg)
    else:
        dataset = _load_folder(cfg)
    return _postprocess(dataset, cfg)


def _load_digits(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # digits pixels are 0..16 ink counts; scale to the full uint8 range
    images = np.clip(bunch.images * 16.0, 0, 255).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = _stratified_split(labels, cfg.test_fraction, cfg.seed)
    return Dataset(
        name="digits",
        class_ids=[str(i) for i in range(10)],
        class_names=list(DIGIT_NAMES),
        train=LabeledImages(images[train_idx], labels[train_idx]),
        test=LabeledImages(images[test_idx], labels[test_idx]),
        source="sklearn.datasets.load_digits",
    )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
        data = handle.read()
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise DatasetError(f"{path} is not an idx file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_fashion(cfg: DataConfig) -> Dataset:
    if cfg.path:
        check_dataset_available(cfg)  # an explicit path must hold the files: never fall back to a download
    directory = Path(cfg.path or FASHION_DEBIAN_DIR)
    found, missing = _fashion_files(directory)
    if not missing:
        arrays = {key: _read_idx(path) for key, path in found.items()}
        source = str(directory)
    else:
        arrays, source = _fashion_from_torchvision(directory)
    return Dataset(
        name="fashion",
        class_ids=list(FASHION_IDS),
        class_names=list(FASHION_NAMES),
        train=LabeledImages(arrays["train_images"][..., None].copy(), arrays["train_labels"].astype(np.int64)),
        test=LabeledImages(arrays["test_images"][..., None].copy(), arrays["test_labels"].astype(np.int64)),
        source=source,
    )


def _fashion_from_torchvision(directory: Path) -> tuple[dict[str, np.ndarray], str]:
    root = Path.home() / ".cache" / "synthaug" / "fashion-mnist"
    try:
        from torchvision.datasets import FashionMNIST

        train = FashionMNIST(str(root), train=True, download=True)
        test = FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
        raise DatasetError(
            f"Fashion-MNIST not found in {directory} and torchvision could not download it ({type(exc).__name__}). "
            "Install the Debian package: `apt-get install dataset-fashion-mnist`, or set data.path to a folder "
            "holding the four *-idx*-ubyte.gz files."
        ) from None
    arrays = {
        "train_images": train.data.numpy(),
        "train_labels": train.targets.numpy(),
        "test_images": test.data.numpy(),
        "test_labels": test.targets.numpy(),
    }
    return arrays, f"torchvision FashionMNIST ({root})"


# --- folder / Parquet ---------------------------------------------------------------------


def _is_parquet(path: str) -> bool:
    return path.rstrip("/").endswith(".parquet")


def _folder_class_ids(path: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        raise DatasetError(f"data.path {path!r} does not exist")
    if _is_parquet(path):
        import pyarrow.parquet as pq

        with fs.open(root, "rb") as handle:
            labels = pq.read_table(handle, columns=["label"]).column("label").to_pylist()
        return sorted({str(label) for label in labels})
    split_roots = [d for d in ("train", "test", "val") if fs.isdir(f"{root}/{d}")]
    base = f"{root}/train" if "train" in split_roots else root
    ids = sorted(Path(entry).name for entry in fs.ls(base, detail=False) if fs.isdir(entry) and not Path(entry).name.startswith("."))
    if not ids:
        raise DatasetError(f"data.path {path!r} has no class sub-folders (expected <path>/<class>/<image files>)")
    return ids


def _decode(data: bytes, channels: int | None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as pil:
        pil = pil.convert("L" if channels == 1 else "RGB")
        array = np.asarray(pil, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _load_folder(cfg: DataConfig) -> Dataset:
    path = _require_path(cfg)
    class_ids = _folder_class_ids(path)
    index = {c: i for i, c in enumerate(class_ids)}
    fs, root = fsspec.core.url_to_fs(path)
    size = cfg.image_size or 32
    records: list[tuple[str, bytes, int, str | None]] = []  # (name, bytes, label, split)
    if _is_parquet(path):
        import pyarrow.parquet as pq

        with fs.open(root, "rb") as handle:
            table = pq.read_table(handle)
        if "image" not in table.column_names or "label" not in table.column_names:
            raise DatasetError(f"{path} needs columns 'image' (bytes) and 'label'; it has {table.column_names}")
        images = table.column("image").to_pylist()
        splits = table.column("split").to_pylist() if "split" in table.column_names else [None] * len(images)
        for i, (image, label, split) in enumerate(zip(images, table.column("label").to_pylist(), splits, strict=True)):
            data = image["bytes"] if isinstance(image, dict) else image
            records.append((f"row {i}", data, index[str(label)], split))
    else:
        has_splits = fs.isdir(f"{root}/train")
        for split in ("train", "test", "val") if has_splits else (None,):
            base = f"{root}/{split}" if split else root
            if not fs.isdir(base):
                continue
            for class_id in class_ids:
                class_dir = f"{base}/{class_id}"
                if not fs.isdir(class_dir):
                    continue
                for file in sorted(fs.ls(class_dir, detail=False)):
                    if Path(file).suffix.lower() in IMAGE_SUFFIXES:
                        records.append((file, fs.cat_file(file), index[class_id], "test" if split == "val" else split))
    images, labels, splits, skipped = [], [], [], []
    for name, data, label, split in records:
        try:
            image = _fit(_decode(data, cfg.channels), size)
        except (UnidentifiedImageError, OSError, ValueError):
            skipped.append(name)
            continue
        images.append(image)
        labels.append(label)
        splits.append(split)
    if not images:
        raise DatasetError(f"no readable images under {path!r} ({len(skipped)} unreadable)")
    channels = cfg.channels or max(image.shape[-1] for image in images)
    stacked = np.stack([_to_channels(image, channels) for image in images])
    label_array = np.asarray(labels, dtype=np.int64)
    if any(s is not None for s in splits):
        is_test = np.asarray([s == "test" for s in splits])
        train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    else:
        train_idx, test_idx = _stratified_split(label_array, cfg.test_fraction, cfg.seed)
    return Dataset(
        name=Path(root).name,
        class_ids=class_ids,
        class_names=list(class_ids),
        train=LabeledImages(stacked[train_idx], label_array[train_idx]),
        test=LabeledImages(stacked[test_idx], label_array[test_idx]),
        source=redact_url(path),  # recorded in the catalog, lineage and metadata: never with credentials
        skipped_files=skipped,
    )


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


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, int(round(len(idx) * test_fraction))) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _take_per_class(split: LabeledImages, k: int | None, seed: int) -> LabeledImages:
    if k is None:
        return split
    rng = np.random.default_rng(seed)
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
    class_ids = _select_classes(dataset.class_ids, cfg.classes)
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

    train = _take_per_class(subset(dataset.train), cfg.train_per_class, cfg.seed)
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
    )
