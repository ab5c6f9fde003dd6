import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthaug_pipeline.lib.config import DataConfig
from synthaug_pipeline.lib import datasets
from synthaug_pipeline.lib.datasets import (
    FASHION_DEBIAN_DIR,
    FASHION_FILES,
    DatasetError,
    check_classes,
    check_dataset_available,
    dataset_class_ids,
    load_dataset,
)


def test_digits_split_is_stratified_and_uint8():
    data = load_dataset(DataConfig(source="digits", test_fraction=0.3))
    assert data.train.images.dtype == np.uint8 and data.train.images.shape[1:] == (8, 8, 1)
    assert len(data.train) + len(data.test) == 1797
    assert set(np.unique(data.test.labels)) == set(range(10))
    assert data.train.images.max() == 255
    assert data.class_ids == dataset_class_ids(DataConfig(source="digits"))


def test_digits_few_shot_and_class_subset():
    data = load_dataset(DataConfig(source="digits", classes=["3", "7"], train_per_class=5, test_per_class=4))
    assert data.class_ids == ["3", "7"]
    assert np.bincount(data.train.labels).tolist() == [5, 5]
    assert np.bincount(data.test.labels).tolist() == [4, 4]
    assert data.class_names == ["three", "seven"]


def test_unknown_class_subset_is_an_error():
    with pytest.raises(DatasetError, match="does not have"):
        dataset_class_ids(DataConfig(source="digits", classes=["42"]))


@pytest.mark.skipif(not Path(FASHION_DEBIAN_DIR).is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_from_debian_package_padded_to_32():
    data = load_dataset(DataConfig(source="fashion", image_size=32, classes=["bag", "coat"], test_per_class=10))
    assert data.train.images.shape[1:] == (32, 32, 1)
    assert np.bincount(data.train.labels).tolist() == [6000, 6000]
    assert data.train.images[:, :2].max() == 0  # padding rows are background


def _no_download(monkeypatch) -> list:
    import torchvision.datasets

    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    return calls


def test_fashion_without_path_or_debian_package_says_how_to_install(tmp_path, monkeypatch):
    calls = _no_download(monkeypatch)
    monkeypatch.setattr(datasets, "FASHION_DEBIAN_DIR", str(tmp_path / "not-installed"))
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig(source="fashion"))
    assert calls  # no explicit path: the download fallback was tried


def test_fashion_explicit_path_without_files_is_an_error_not_a_download(tmp_path, monkeypatch):
    calls = _no_download(monkeypatch)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    cfg = DataConfig(source="fashion", path=str(tmp_path))
    with pytest.raises(DatasetError, match="lacks the Fashion-MNIST files") as raised:
        check_dataset_available(cfg)
    assert "t10k-labels-idx1-ubyte.gz" in str(raised.value) and "train-images-idx3-ubyte.gz" not in str(raised.value)
    with pytest.raises(DatasetError, match="lacks the Fashion-MNIST files"):
        load_dataset(cfg)
    with pytest.raises(DatasetError, match="is not a folder"):
        check_dataset_available(DataConfig(source="fashion", path=str(tmp_path / "missing")))
    assert calls == []


def _write_idx(path: Path, array: np.ndarray, gzipped: bool) -> None:
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if gzipped else data)


@pytest.mark.parametrize("gzipped", [True, False])
def test_fashion_explicit_path_reads_gzipped_or_unzipped_idx(tmp_path, gzipped):
    rng = np.random.default_rng(0)
    labels = {"train": np.repeat(np.arange(10, dtype=np.uint8), 3), "t10k": np.arange(10, dtype=np.uint8)}
    for split, split_labels in labels.items():
        name = FASHION_FILES["train_images" if split == "train" else "test_images"][: -len(".gz")]
        images = rng.integers(0, 256, (len(split_labels), 28, 28), dtype=np.uint8)
        _write_idx(tmp_path / (name + (".gz" if gzipped else "")), images, gzipped)
        _write_idx(tmp_path / (name.replace("images-idx3", "labels-idx1") + (".gz" if gzipped else "")), split_labels, gzipped)
    cfg = DataConfig(source="fashion", path=str(tmp_path), image_size=32)
    check_dataset_available(cfg)
    data = load_dataset(cfg)
    assert data.source == str(tmp_path)
    assert data.train.images.shape == (30, 32, 32, 1) and len(data.test) == 10
    assert np.bincount(data.train.labels).tolist() == [3] * 10


def test_check_classes_lists_valid_ids_and_keeps_dataset_order():
    assert check_classes(DataConfig(source="digits"), ["7", "3", "7"]) == ["3", "7"]
    with pytest.raises(DatasetError, match=r"unknown classes \['11'\]; valid class ids are \['0', '1'"):
        check_classes(DataConfig(source="digits"), ["1", "11"])
    with pytest.raises(DatasetError, match="unknown classes"):  # narrower than a profile's own data.classes
        check_classes(DataConfig(source="digits", classes=["3", "7"]), ["1"])


def _png(value: int, size: int = 10) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_folder_skips_unreadable_files(tmp_path):
    for class_id, value in (("cat", 10), ("dog", 200)):
        (tmp_path / class_id).mkdir()
        for i in range(4):
            (tmp_path / class_id / f"{i}.png").write_bytes(_png(value))
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    data = load_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=8, test_fraction=0.25))
    assert data.class_ids == ["cat", "dog"]
    assert data.train.images.shape[1:] == (8, 8, 3)
    assert len(data.train) + len(data.test) == 8
    assert [Path(p).name for p in data.skipped_files] == ["broken.png"]
    assert abs(int(data.train.of_class(1).mean()) - 200) <= 1


def test_parquet_with_split_column(tmp_path):
    rows = [(_png(i * 20), label, "test" if i % 3 == 0 else "train") for i, label in enumerate(["a", "b"] * 6)]
    table = pa.table({"image": [r[0] for r in rows], "label": [r[1] for r in rows], "split": [r[2] for r in rows]})
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    data = load_dataset(DataConfig(source="folder", path=str(path), image_size=8, channels=1))
    assert data.class_ids == ["a", "b"]
    assert len(data.test) == 4 and len(data.train) == 8
    assert data.train.images.shape[1:] == (8, 8, 1)


def test_folder_without_path_or_missing_path():
    with pytest.raises(DatasetError, match="data.path is not set"):
        dataset_class_ids(DataConfig(source="folder"))
    with pytest.raises(DatasetError, match="does not exist"):
        dataset_class_ids(DataConfig(source="folder", path="/nonexistent/images"))
    with pytest.raises(DatasetError, match="data.path is not set"):
        check_dataset_available(DataConfig(source="folder"))
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset_available(DataConfig(source="folder", path="/nonexistent/images"))
    check_dataset_available(DataConfig(source="digits", path="/ignored/for/digits"))
