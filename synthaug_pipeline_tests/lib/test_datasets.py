import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthaug_pipeline.lib.config import DataConfig
from synthaug_pipeline.lib.datasets import FASHION_DEBIAN_DIR, DatasetError, dataset_class_ids, load_dataset


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


def test_fashion_missing_directory_says_how_to_install(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig(source="fashion", path=str(tmp_path)))


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
