"""The imagenet data source on tiny trees and Parquet files the tests build: class subsets, both val layouts
(wnid folders, flat with LOC_val_solution.csv or the devkit's ground truth + meta.mat), Parquet of (image,
wnid or index), and the one-line errors for labels that do not match the data."""

import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io
from PIL import Image

from synthaug_pipeline.lib.config import DataConfig, load_profile
from synthaug_pipeline.lib.datasets import DatasetError, check_dataset_available, dataset_class_ids, load_dataset
from synthaug_pipeline.lib.imagenet import imagenet_1k, imagenet_class_ids, named_subset

SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "imagenet-samples" / "samples.parquet"
TENCH, GOLDFISH, SHARK = "n01440764", "n01443537", "n01484850"


def jpeg(seed: int, size: int = 12) -> bytes:
    """A tiny JPEG whose mean colour encodes ``seed`` (so tests can tell images apart after decoding)."""
    image = np.full((size, size, 3), (seed * 37) % 256, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def value_of(image: np.ndarray) -> int:
    return int(round(float(image.mean())))


def make_train(root: Path, per_class: dict[str, int]) -> None:
    seed = 0
    for wnid, count in per_class.items():
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(count):
            (root / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(jpeg(seed))
            seed += 1


def flat_val(root: Path, labels: list[str]) -> list[str]:
    """val/ILSVRC2012_val_0000000{i}.JPEG for i = 1.. with the given wnids; returns the file stems."""
    (root / "val").mkdir(parents=True)
    stems = []
    for number, _ in enumerate(labels, start=1):
        stem = f"ILSVRC2012_val_{number:08d}"
        (root / "val" / f"{stem}.JPEG").write_bytes(jpeg(100 + number))
        stems.append(stem)
    return stems


def write_meta_mat(path: Path, order: list[str]) -> None:
    """A devkit-style meta.mat: ``synsets`` with ILSVRC2012_ID i+1 for ``order[i]`` (plus a non-leaf synset, as the real one)."""
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(i + 1, wnid, wnid, 0) for i, wnid in enumerate(order)] + [(1001, "n00001740", "entity", 3)]
    table = np.array(rows, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"synsets": table})


def cfg(path, **extra) -> DataConfig:
    return DataConfig(source="imagenet", path=str(path), image_size=8, **extra)


# --- class lists ---------------------------------------------------------------------------


def test_every_class_in_the_standard_order_without_reading_data():
    ids = dataset_class_ids(DataConfig(source="imagenet", path="/nowhere"))
    assert len(ids) == 1000 and ids[:2] == [TENCH, GOLDFISH] and ids == list(imagenet_1k())


def test_imagenet100_is_shipped_and_used_in_the_standard_order():
    subset = named_subset("imagenet100")
    assert len(subset) == len(set(subset)) == 100 and set(subset) <= set(imagenet_1k())
    ids = imagenet_class_ids("imagenet100")
    assert sorted(ids, key=list(imagenet_1k()).index) == ids and set(ids) == set(subset)


def test_a_class_file_is_read_in_any_order(tmp_path):
    listed = tmp_path / "classes.txt"
    listed.write_text(f"# mine\n{SHARK}\n\n{TENCH}  # the fish\n")
    assert imagenet_class_ids(str(listed)) == [TENCH, SHARK]


@pytest.mark.parametrize(
    "classes, message",
    [
        (["n99999999"], "no ImageNet-1k wnid: ['n99999999']"),
        ("imagenet7", "neither a named subset (imagenet100) nor an existing file"),
        ("FILE_WITH_REPEATS", "more than once"),
        ("FILE_WITH_UNKNOWN", "no ImageNet-1k wnid: ['tench']"),
    ],
)
def test_bad_class_subsets_are_one_line_errors(classes, message, tmp_path):
    files = {"FILE_WITH_REPEATS": f"{TENCH}\n{TENCH}\n", "FILE_WITH_UNKNOWN": f"{TENCH}\ntench\n"}
    if isinstance(classes, str) and classes in files:
        path = tmp_path / "classes.txt"
        path.write_text(files[classes])
        classes = str(path)
    with pytest.raises(DatasetError, match=re.escape(message)) as info:
        dataset_class_ids(DataConfig(source="imagenet", classes=classes))
    assert "\n" not in str(info.value)


def test_a_list_with_repeats_is_refused_by_the_settings():
    with pytest.raises(Exception, match="more than once"):
        load_profile("imagenet", [f"data.classes=[{TENCH}, {TENCH}]"])


# --- the ILSVRC-2012 tree -------------------------------------------------------------------


def test_tree_with_val_folders(tmp_path):
    make_train(tmp_path, {TENCH: 3, GOLDFISH: 2, SHARK: 2})
    for wnid, count in ((TENCH, 2), (GOLDFISH, 1)):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "val" / wnid / f"v{i}.JPEG").write_bytes(jpeg(50 + i))
    (tmp_path / "train" / TENCH / "notes.txt").write_text("not an image")
    dataset = load_dataset(cfg(tmp_path, classes=[TENCH, GOLDFISH]))
    assert dataset.class_ids == [TENCH, GOLDFISH] and dataset.class_names == ["tench", "goldfish"]
    assert np.bincount(dataset.train.labels).tolist() == [3, 2]
    assert np.bincount(dataset.test.labels).tolist() == [2, 1]  # val/ is held out, never trained on
    assert dataset.available == {TENCH: {"train": 3, "test": 2}, GOLDFISH: {"train": 2, "test": 1}}
    assert dataset.skipped == {TENCH: {"not_an_image_file": 1}}
    assert dataset.train.images.shape[1:] == (8, 8, 3)


def test_flat_val_with_kaggle_loc_solution(tmp_path):
    make_train(tmp_path, {TENCH: 2, GOLDFISH: 2})
    stems = flat_val(tmp_path, [GOLDFISH, TENCH, SHARK])
    rows = ["ImageId,PredictionString"] + [f"{s},{w} 1 2 3 4" for s, w in zip(stems, [GOLDFISH, TENCH, SHARK])]
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    dataset = load_dataset(cfg(tmp_path, classes=[TENCH, GOLDFISH]))
    tench, goldfish = dataset.test.of_class(0), dataset.test.of_class(1)
    assert [value_of(i) for i in tench] == [value_of(load_one(jpeg(102)))]  # val_00000002 is the tench
    assert [value_of(i) for i in goldfish] == [value_of(load_one(jpeg(101)))]


def load_one(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_flat_val_with_devkit_ground_truth_maps_ilsvrc_ids_through_meta_mat(tmp_path):
    make_train(tmp_path, {TENCH: 2, GOLDFISH: 2})
    devkit_order = list(reversed(imagenet_1k()))  # ILSVRC2012_IDs are not the standard order: the devkit says which is which
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    write_meta_mat(data / "meta.mat", devkit_order)
    ids = {w: devkit_order.index(w) + 1 for w in (TENCH, GOLDFISH)}  # 1000 and 999
    flat_val(tmp_path, [TENCH, GOLDFISH, GOLDFISH])
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(f"{ids[TENCH]}\n{ids[GOLDFISH]}\n{ids[GOLDFISH]}\n")
    dataset = load_dataset(cfg(tmp_path, classes=[TENCH, GOLDFISH]))
    assert np.bincount(dataset.test.labels).tolist() == [1, 2]
    assert value_of(dataset.test.of_class(0)[0]) == value_of(load_one(jpeg(101)))


def test_ground_truth_without_meta_mat_is_refused_before_decoding(tmp_path):
    make_train(tmp_path, {TENCH: 1})
    flat_val(tmp_path, [TENCH])
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("1000\n")
    with pytest.raises(DatasetError, match="only through the devkit's meta.mat"):
        check_dataset_available(cfg(tmp_path, classes=[TENCH]))


@pytest.mark.parametrize("problem", ["unlabelled val image", "val folder that is no wnid", "missing class folder", "empty class folder"])
def test_labels_that_do_not_match_the_tree_are_one_line_errors(problem, tmp_path):
    make_train(tmp_path, {TENCH: 1, GOLDFISH: 1})
    classes = [TENCH, GOLDFISH]
    if problem == "unlabelled val image":
        stems = flat_val(tmp_path, [TENCH, GOLDFISH])
        (tmp_path / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\n{stems[0]},{TENCH} 1 1 2 2\n")
        message = "1 of the 2 images in .* have no label in .*LOC_val_solution.csv"
    elif problem == "val folder that is no wnid":
        (tmp_path / "val" / "cats").mkdir(parents=True)
        message = r"has folders that are no ImageNet-1k wnid: \['cats'\]"
    elif problem == "missing class folder":
        classes = [TENCH, SHARK]
        message = r"1 selected class folder\(s\) are missing from .*train': \['n01484850'\]"
    else:
        (tmp_path / "train" / GOLDFISH / f"{GOLDFISH}_0.JPEG").unlink()
        message = r"hold no training image files: \['n01443537'\]"
    with pytest.raises(DatasetError, match=message) as info:
        check_dataset_available(cfg(tmp_path, classes=classes))
    assert "\n" not in str(info.value)


# --- Parquet --------------------------------------------------------------------------------


def write_parquet(path: Path, **columns) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_of_wnids_with_a_split(tmp_path):
    path = write_parquet(
        tmp_path / "in.parquet",
        image=[jpeg(i) for i in range(5)],
        wnid=[TENCH, TENCH, GOLDFISH, GOLDFISH, SHARK],
        split=["train", "val", "train", "train", "train"],
    )
    dataset = load_dataset(cfg(path, classes=[TENCH, GOLDFISH]))
    assert np.bincount(dataset.train.labels).tolist() == [1, 2] and np.bincount(dataset.test.labels).tolist() == [1]
    assert value_of(dataset.test.images[0]) == value_of(load_one(jpeg(1)))


def test_parquet_of_imagenet_indices(tmp_path):
    path = write_parquet(tmp_path / "in.parquet", image=[jpeg(i) for i in range(4)], label=[1, 0, 1, 999])
    dataset = load_dataset(cfg(path, classes=[TENCH, GOLDFISH, imagenet_1k()[999]]))
    assert np.bincount(dataset.train.labels, minlength=3).tolist() == [1, 1, 1]
    assert dataset.test.labels.tolist() == [1]  # no split column: a class with one image keeps it for training
    assert dataset.available[GOLDFISH] == {"images": 2}


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"wnid": ["n99999999"]}, "row 0 has label 'n99999999': labels must be ImageNet-1k wnids"),
        ({"label": [1000]}, "row 0 has label '1000'"),
        ({"wnid": [GOLDFISH]}, r"no training rows in Parquet file .*: \['n01440764'\]"),
        ({"name": ["tench"]}, "has no column 'wnid or label'"),
    ],
)
def test_bad_parquet_labels_are_one_line_errors(columns, message, tmp_path):
    path = write_parquet(tmp_path / "in.parquet", image=[jpeg(0)], **columns)
    with pytest.raises(DatasetError, match=message):
        check_dataset_available(cfg(path, classes=[TENCH]))


@pytest.mark.skipif(not SAMPLES.is_file(), reason="the shared ImageNet samples are not beside the project")
def test_the_samples_parquet_serves_all_1000_classes_with_one_image_each():
    config = DataConfig(source="imagenet", path=str(SAMPLES), image_size=16)
    check_dataset_available(config)
    dataset = load_dataset(config)
    assert dataset.class_ids == list(imagenet_1k()) and len(dataset.train) == 1000 and len(dataset.test) == 0
    assert np.bincount(dataset.train.labels).tolist() == [1] * 1000
    assert dataset.available[TENCH] == {"images": 1}


# --- shifted test sets ----------------------------------------------------------------------


def test_shift_sets_of_wnids_or_indices_keep_the_runs_classes(tmp_path):
    from synthaug_pipeline.lib.shift_sets import check_shift_folders, load_shift_set

    for folder, names in (("r", [TENCH, SHARK, "n01491361"]), ("v2", ["0", "2", "3"])):
        for i, name in enumerate(names):
            (tmp_path / folder / name).mkdir(parents=True)
            (tmp_path / folder / name / "a.jpg").write_bytes(jpeg(i))
            (tmp_path / folder / name / "b.jpg").write_bytes(jpeg(i + 10))
    classes = [TENCH, GOLDFISH, SHARK]  # ImageNet-1k indices 0, 1, 2
    sets = {"r": str(tmp_path / "r"), "v2": str(tmp_path / "v2")}
    assert check_shift_folders(sets, classes, {"r": "wnid", "v2": "imagenet_index"}) == {"r": [TENCH, SHARK], "v2": [TENCH, SHARK]}
    images, labels = load_shift_set("r", sets["r"], classes, (8, 8, 3), "wnid")
    assert sorted(labels.tolist()) == [0, 0, 2, 2] and images.shape == (4, 8, 8, 3)  # n01491361 is not decoded
    _, labels = load_shift_set("v2", sets["v2"], classes, (8, 8, 3), "imagenet_index")
    assert sorted(labels.tolist()) == [0, 0, 2, 2]
    with pytest.raises(Exception, match="set evaluation.shift_folder_labels.r=wnid"):
        check_shift_folders(sets, classes, {"v2": "imagenet_index"})
    with pytest.raises(Exception, match=r"\['0', '2', '3'\] are no ImageNet-1k wnids"):
        check_shift_folders({"v2": sets["v2"]}, classes, {"v2": "wnid"})
    with pytest.raises(Exception, match="shares no class with this profile"):
        check_shift_folders({"r": sets["r"]}, [GOLDFISH], {"r": "wnid"})
