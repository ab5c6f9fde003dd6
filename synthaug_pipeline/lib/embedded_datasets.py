"""The embedded sources: scikit-learn's digits and Fashion-MNIST, small enough to be decoded whole.

Fashion-MNIST is read from ``data.path`` (the four idx files, gzipped or not), else from the Debian package
(``FASHION_DEBIAN_DIR``), else downloaded by torchvision. :func:`synthaug_pipeline.lib.datasets.load_dataset`
splits and subsets what these loaders return.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from synthaug_pipeline.lib.config import DataConfig
from synthaug_pipeline.lib.datasets import FASHION_IDS, Dataset, DatasetError, LabeledImages, _stratified_split, check_dataset_available

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
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


def check_fashion_available(cfg: DataConfig) -> None:
    """The fashion part of :func:`~synthaug_pipeline.lib.datasets.check_dataset_available` (an explicit ``data.path``)."""
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
