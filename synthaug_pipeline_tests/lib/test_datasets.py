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
from synthaug_pipeline.lib import datasets, embedded_datasets
from synthaug_pipeline.lib.datasets import (
    DatasetError,
    check_classes,
    check_dataset_available,
    dataset_class_ids,
    load_dataset,
)
from synthaug_pipeline.lib.embedded_datasets import FASHION_DEBIAN_DIR, FASHION_FILES


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
    monkeypatch.setattr(embedded_datasets, "FASHION_DEBIAN_DIR", str(tmp_path / "not-installed"))
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


def _parquet(path: Path, **columns) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.mark.parametrize("held_out", ["val", "validation", "valid", " Val ", "test"])
def test_parquet_validation_rows_are_held_out_not_trained_on(tmp_path, held_out):
    splits = ["train", "train", held_out] * 4
    path = _parquet(tmp_path / "d.parquet", image=[_png(i * 20) for i in range(12)], label=["a", "b"] * 6, split=splits)
    data = load_dataset(DataConfig(source="folder", path=path, image_size=8))
    assert len(data.train) == 8 and len(data.test) == 4


@pytest.mark.parametrize(("split", "match"), [("dev", r"row 2 has split 'dev'; expected train"), (None, "row 2 has split None")])
def test_parquet_unknown_or_null_split_is_refused_in_one_line(tmp_path, split, match):
    path = _parquet(tmp_path / "d.parquet", image=[_png(9)] * 3, label=["a", "b", "a"], split=["train", "test", split])
    with pytest.raises(DatasetError, match=match) as raised:
        dataset_class_ids(DataConfig(source="folder", path=path))
    assert "\n" not in str(raised.value)


def test_parquet_null_label_missing_column_or_not_parquet_is_one_line(tmp_path):
    cases = {
        "null label": (
            _parquet(tmp_path / "n.parquet", image=[_png(9)] * 3, label=["a", None, None]),
            r"2 row\(s\) with a null label \(first: row 1\)",
        ),
        "no label": (_parquet(tmp_path / "l.parquet", image=[_png(9)], target=["a"]), "has no column 'label': it needs 'image'"),
        "no image": (_parquet(tmp_path / "i.parquet", label=["a"]), "has no column 'image'"),
    }
    text = tmp_path / "notes.parquet"
    text.write_text("not parquet at all")
    cases["not parquet"] = (str(text), "cannot be read as Parquet .*Parquet file with columns 'image' and 'label'")
    for path, match in cases.values():
        for check in (dataset_class_ids, check_dataset_available, load_dataset):
            with pytest.raises(DatasetError, match=match) as raised:
                check(DataConfig(source="folder", path=path))
            assert "\n" not in str(raised.value) and repr(path) in str(raised.value)


def test_every_allowed_seed_works_and_a_negative_one_is_refused_in_one_line(tmp_path):
    from synthaug_pipeline.lib.config import ProfileError, load_profile

    top = 2**32 - 1
    data = load_dataset(DataConfig(source="digits", seed=top, train_per_class=3))
    again = load_dataset(DataConfig(source="digits", seed=top, train_per_class=3))
    assert np.bincount(data.train.labels).tolist() == [3] * 10
    assert np.array_equal(data.train.images, again.train.images)
    assert not np.array_equal(data.train.images, load_dataset(DataConfig(source="digits", seed=0, train_per_class=3)).train.images)
    _tree(tmp_path, {"a": 5, "b": 5})
    assert len(load_dataset(DataConfig(source="folder", path=str(tmp_path), seed=top, train_per_class=2)).train) == 4
    with pytest.raises(ProfileError, match="data.seed") as refused:
        load_profile("digits", ["data.seed=-1"])
    assert "\n" not in str(refused.value)


def _tree(root: Path, counts: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for class_id, n in counts.items():
        (root / class_id).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            (root / class_id / f"{i:02d}.png").write_bytes(buffer.getvalue())


def _count_decodes(monkeypatch) -> list:
    from synthaug_pipeline.lib import images

    calls, decode = [], images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda data, channels: calls.append(1) or decode(data, channels))
    return calls


def test_only_the_chosen_images_are_decoded_and_the_choice_is_unchanged(tmp_path, monkeypatch):
    _tree(tmp_path, {"a": 20, "b": 15, "c": 12})
    base = dict(source="folder", path=str(tmp_path), image_size=8, seed=5, classes=["a", "c"])
    everything = load_dataset(DataConfig(**base))
    calls = _count_decodes(monkeypatch)
    few = load_dataset(DataConfig(**base, train_per_class=3, test_per_class=2))
    assert len(calls) == 3 * 2 + 2 * 2
    # decoding everything, then drawing (what load_dataset did before): the same images
    expected_train = datasets._take_per_class(everything.train, 3, 5)
    expected_test = datasets._take_per_class(everything.test, 2, 6)
    assert np.array_equal(few.train.images, expected_train.images) and np.array_equal(few.train.labels, expected_train.labels)
    assert np.array_equal(few.test.images, expected_test.images) and np.array_equal(few.test.labels, expected_test.labels)


def test_a_bad_chosen_file_is_replaced_from_the_same_draw(tmp_path, monkeypatch):
    _tree(tmp_path, {"a": 6, "b": 6})
    cfg = DataConfig(source="folder", path=str(tmp_path), image_size=8, train_per_class=2, test_fraction=0.2)
    clean = load_dataset(cfg)
    files = {path: datasets._fit(np.asarray(Image.open(path)), 8) for path in sorted((tmp_path / "a").iterdir())}
    chosen = [path for path, image in files.items() if any(np.array_equal(image, c) for c in clean.train.of_class(0))]
    assert len(chosen) == 2
    chosen[0].write_bytes(b"")
    calls = _count_decodes(monkeypatch)
    data = load_dataset(cfg)
    assert len(calls) == 2 + 1 + 2 + 2  # a's two, one replacement, b's two, the two held-out images
    assert data.skipped == {"a": {"empty_file": 1}} and [Path(p) for p in data.skipped_files] == [chosen[0]]
    assert np.bincount(data.train.labels).tolist() == [2, 2]
    kept = data.train.of_class(0)
    assert any(np.array_equal(image, files[chosen[1]]) for image in kept)
    assert not any(np.array_equal(image, files[chosen[0]]) for image in kept)
    assert np.array_equal(data.train.of_class(1), clean.train.of_class(1)) and np.array_equal(data.test.images, clean.test.images)


def test_a_class_with_only_held_out_rows_is_refused_naming_it(tmp_path):
    path = _parquet(tmp_path / "d.parquet", image=[_png(9)] * 4, label=["a", "a", "b", "b"], split=["train", "test", "val", "test"])
    with pytest.raises(DatasetError, match="class 'b' in .* no usable training images \\(all 2 of its images are in the held-out split\\)"):
        load_dataset(DataConfig(source="folder", path=path, image_size=8))
    with pytest.raises(DatasetError, match="class 'b' in Parquet file .* has no training rows"):
        check_dataset_available(DataConfig(source="folder", path=path))
    check_dataset_available(DataConfig(source="folder", path=path, classes=["a"]))


@pytest.mark.parametrize("held_out", ["val", "valid", "validation", "test"])
def test_validation_folders_are_held_out_as_test(tmp_path, held_out):
    _tree(tmp_path / "train", {"a": 3, "b": 3})
    _tree(tmp_path / held_out, {"a": 2, "b": 1})
    data = load_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=8))
    assert np.bincount(data.train.labels).tolist() == [3, 3] and np.bincount(data.test.labels).tolist() == [2, 1]


def test_validation_split_is_carved_from_training_stratified_seeded_and_recorded():
    whole = load_dataset(DataConfig(source="digits", test_fraction=0.3))
    carved = load_dataset(DataConfig(source="digits", test_fraction=0.3, validation_fraction=0.2))
    assert whole.validation is None
    np.testing.assert_array_equal(carved.test.labels, whole.test.labels)  # the test split is untouched
    assert len(carved.train) + len(carved.validation) == len(whole.train)
    for c in range(10):
        n = int((whole.train.labels == c).sum())
        assert int((carved.validation.labels == c).sum()) == round(0.2 * n)  # every class keeps its share
    # disjoint: no validation image is also a training image (rows of the whole training split)
    train_rows = {image.tobytes() + bytes([label]) for image, label in zip(carved.train.images, carved.train.labels)}
    overlap = sum(image.tobytes() + bytes([label]) in train_rows for image, label in zip(carved.validation.images, carved.validation.labels))
    assert overlap <= 2  # sklearn digits holds a few exact duplicate images; rows themselves are disjoint by construction
    again = load_dataset(DataConfig(source="digits", test_fraction=0.3, validation_fraction=0.2))
    np.testing.assert_array_equal(again.validation.images, carved.validation.images)
    other = load_dataset(DataConfig(source="digits", test_fraction=0.3, validation_fraction=0.2, seed=1))
    assert not np.array_equal(other.validation.images, carved.validation.images)
    few = load_dataset(DataConfig(source="digits", test_fraction=0.3, validation_fraction=0.2, train_per_class=5))
    np.testing.assert_array_equal(few.validation.images, carved.validation.images)  # carved before train_per_class


def test_validation_fraction_that_leaves_a_class_without_images_is_one_line():
    from synthaug_pipeline.lib.datasets import DatasetError, carve_validation

    labels = np.array([0] * 20 + [1] * 3)
    with pytest.raises(DatasetError, match=r"data.validation_fraction=0.1 leaves class 'b' with no validation image \(it has 3"):
        carve_validation(np.arange(len(labels)), labels, 0.1, 0, ["a", "b"])
    with pytest.raises(DatasetError, match="leaves class 'b' with no training image"):
        carve_validation(np.arange(len(labels)), labels, 0.9, 0, ["a", "b"])
    train, validation = carve_validation(np.arange(len(labels)), labels, 0.34, 0, ["a", "b"])
    assert sorted(np.bincount(labels[validation]).tolist()) == [1, 7] and not set(train) & set(validation)


def _distinct_folder(root: Path, classes: dict[str, int]) -> None:
    """``classes``: {class id: number of images}; every image a distinct grey level, so rows can be told apart."""
    value = 0
    for class_id, n in classes.items():
        (root / class_id).mkdir(parents=True)
        for i in range(n):
            value += 3
            (root / class_id / f"{i:03d}.png").write_bytes(_png(value % 256))


@pytest.mark.parametrize("caps", [{}, {"train_per_class": 3, "test_per_class": 2}])
def test_decoding_some_classes_reads_only_them_and_draws_the_same_images(tmp_path, monkeypatch, caps):
    _distinct_folder(tmp_path, {"ant": 9, "bee": 12, "cat": 7, "dog": 10})
    (tmp_path / "cat" / "broken.png").write_bytes(b"not an image")
    cfg = DataConfig(source="folder", path=str(tmp_path), image_size=8, test_fraction=0.25, validation_fraction=0.2, **caps)
    full = load_dataset(cfg)

    decoded_files = []
    real_decode = __import__("synthaug_pipeline.lib.images", fromlist=["decode_image"]).decode_image

    def counting_decode(data, channels):
        decoded_files.append(data)
        return real_decode(data, channels)

    monkeypatch.setattr("synthaug_pipeline.lib.images.decode_image", counting_decode)
    part = load_dataset(cfg, decode=["bee", "cat"])
    assert part.decoded == ["bee", "cat"]
    for class_id in ("bee", "cat"):
        index = part.class_ids.index(class_id)
        for split in ("train", "test", "validation"):
            np.testing.assert_array_equal(getattr(part, split).of_class(index), getattr(full, split).of_class(index))
        assert part.counts(class_id) == full.counts(class_id)
    assert len(decoded_files) == sum(full.counts(c)[s] for c in ("bee", "cat") for s in ("train", "test", "validation")) + sum(
        full.skipped.get("cat", {}).values()  # the broken file, when the draw reached it
    )
    for class_id in ("ant", "dog"):  # not decoded: no pixels, the planned counts (every file here decodes)
        assert len(part.train.of_class(part.class_ids.index(class_id))) == 0
        assert part.counts(class_id) == full.counts(class_id)
    assert part.skipped == full.skipped and set(full.skipped) <= {"cat"}

    listing_only = load_dataset(cfg, decode=[])  # what class_catalog reads: no pixels
    assert listing_only.image_shape == (8, 8, 3) and len(listing_only.train) == 0
    assert [listing_only.counts(c) for c in ("ant", "bee", "dog")] == [full.counts(c) for c in ("ant", "bee", "dog")]
    # the plan assumes every listed file decodes: cat's broken file is counted until real_images reads it
    planned, got = listing_only.counts("cat"), full.counts("cat")
    assert all(planned[split] >= got[split] for split in got)
    if not caps:  # with a cap the broken file may be replaced by the next candidate of the draw
        assert sum(planned.values()) == sum(got.values()) + 1


def test_decoding_an_unknown_class_is_refused(tmp_path):
    _distinct_folder(tmp_path, {"ant": 4, "bee": 4})
    with pytest.raises(DatasetError, match=r"\['emu'\] are not among the selected classes"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=8, test_fraction=0.25), decode=["emu"])


def test_embedded_sources_count_from_their_pixels():
    data = load_dataset(DataConfig(source="digits", test_fraction=0.3, validation_fraction=0.2), decode=["3"])
    assert data.decoded is None  # digits are decoded whole whatever is asked
    counts = data.counts("3")
    assert counts == {
        "train": int(np.sum(data.train.labels == 3)),
        "validation": int(np.sum(data.validation.labels == 3)),
        "test": int(np.sum(data.test.labels == 3)),
    }
