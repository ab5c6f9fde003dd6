"""Real labelled images for each profile: digits, Fashion-MNIST, any folder or Parquet file.

Every loader returns a :class:`Dataset` with a fixed train/test split, uint8
``[N, H, W, C]`` images and integer labels indexing ``class_ids`` (the partition
keys). ``dataset_class_ids`` answers the class list without reading images, so
Dagster can build its partitions at load time.

Longer than ~400 lines: lib/imagenet.py builds its loader on the folder/Parquet listing helpers here, so they stay
together with the loaders that share them.
"""

from __future__ import annotations

import gzip
import struct
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image

from synthaug_pipeline.lib.config import DataConfig, ProfileError
from synthaug_pipeline.lib.records import record
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
    Debian package or torchvision's download at load time. A folder dataset's class ids are checked
    (:func:`check_class_id`), a Parquet file's schema, labels and splits too, and each selected class
    folder must hold at least one image file (one listing per class).
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
    elif cfg.source == "imagenet":
        from synthaug_pipeline.lib.imagenet import check_imagenet_available

        check_imagenet_available(cfg)
    elif cfg.source == "folder":
        path = _require_path(cfg)
        fs, root = fsspec.core.url_to_fs(path)
        if not fs.exists(root):
            raise DatasetError(f"data.path {path!r} does not exist: point it at an ImageFolder tree or a Parquet file")
        class_ids = _select_classes(_folder_class_ids(path), wanted_classes(cfg))  # odd class ids, bad Parquet: refused here
        if _is_parquet(path):
            labels, held_out = _parquet_index(fs, root, path)
            trained = {label for label, out in zip(labels, held_out, strict=True) if not out} if held_out is not None else set(labels)
            for class_id in class_ids:
                if class_id not in trained:
                    raise DatasetError(
                        f"class {class_id!r} in Parquet file {path!r} has no training rows (every row of it has a held-out "
                        "split): give it rows with split 'train', or leave the class out with data.classes"
                    )
        else:
            base = _folder_layout(fs, root)[0][0]
            for class_id in class_ids:
                entries = fs.ls(f"{base}/{class_id}", detail=False)
                if not any(Path(entry).suffix.lower() in IMAGE_SUFFIXES for entry in entries):
                    raise DatasetError(
                        f"class folder {class_id!r} in {base!r} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                        "add images or leave the class out with data.classes"
                    )


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
        dataset = _load_digits(cfg)
    elif cfg.source == "fashion":
        dataset = _load_fashion(cfg)
    elif cfg.source == "imagenet":
        from synthaug_pipeline.lib.imagenet import load_imagenet

        return load_imagenet(cfg, decode)  # subsets before decoding, like folder
    else:
        return _load_folder(cfg, decode)  # subsets before decoding
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


SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation")
# A dataset's own validation split is held out with the test split (ImageNet's "val" is its test set), never
# trained on and never chosen on; the pipeline's validation split is carved from training (data.validation_fraction). The same names mean the same thing as folders (<path>/val/<class>/...) and as values
# of a Parquet ``split`` column (case and surrounding spaces ignored).
HELD_OUT = {"train": False, "training": False, "test": True, "testing": True, "val": True, "valid": True, "validation": True}
READ_BATCH = 256  # files read per batch: concurrent requests on object stores, bounded memory
_CLASS_ID_PARTS = ("..", "/", "\\", "::")


def _is_parquet(path: str) -> bool:
    return path.rstrip("/").endswith(".parquet")


def check_class_id(class_id: str, where: str) -> None:
    """Refuse a class id that cannot serve as a partition key and a path component, naming it."""
    problem = None
    if not class_id.strip():
        problem = "is empty or only whitespace"
    elif class_id.startswith("."):
        problem = "starts with '.'"
    elif any(part in class_id for part in _CLASS_ID_PARTS):
        problem = f"contains {next(part for part in _CLASS_ID_PARTS if part in class_id)!r}"
    elif any(unicodedata.category(char) == "Cc" for char in class_id):
        problem = "contains a control character"
    if problem:
        raise DatasetError(
            f"class {class_id!r} in {where} {problem}; class ids become partition keys and folder names, "
            "so rename it (spaces and non-ASCII letters are fine)"
        )


def _folder_layout(fs, root: str) -> list[tuple[str, bool | None]]:
    """(folder of class folders, held out?) pairs: the split folders when ``train/`` exists, else the root.

    Held out None: no split on disk, so ``data.test_fraction`` of each class is held out.
    """
    if not fs.isdir(f"{root}/train"):
        return [(root, None)]
    return [(f"{root}/{name}", HELD_OUT[name]) for name in SPLIT_FOLDERS if fs.isdir(f"{root}/{name}")]


def _folder_class_ids(path: str) -> list[str]:
    """Class ids of an ImageFolder tree (its class folders; hidden ones such as .git are not classes) or a Parquet file."""
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        raise DatasetError(f"data.path {path!r} does not exist")
    if _is_parquet(path):
        labels, _ = _parquet_index(fs, root, path)
        ids = sorted(set(labels))
    else:
        base = _folder_layout(fs, root)[0][0]
        ids = sorted(
            Path(entry["name"]).name
            for entry in fs.ls(base, detail=True)
            if entry["type"] == "directory" and not Path(entry["name"]).name.startswith(".")
        )
        if not ids:
            raise DatasetError(f"data.path {path!r} has no class sub-folders (expected <path>/<class>/<image files>)")
    for class_id in ids:
        check_class_id(class_id, f"data.path {path!r}")
    return ids


def _parquet_index(fs, root: str, path: str, label_columns: tuple[str, ...] = ("label",)) -> tuple[list[str], np.ndarray | None]:
    """Each row's class id and whether it is held out (None without a ``split`` column); reads no images.

    The class id comes from the first of ``label_columns`` the file has (imagenet: ``wnid``, then ``label``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open(root, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            label = next((name for name in label_columns if name in names), None)
            missing = ([] if "image" in names else ["image"]) + ([] if label else [" or ".join(label_columns)])
            if missing:
                raise DatasetError(
                    f"Parquet file {path!r} has no column {' or '.join(repr(m) for m in missing)}: it needs 'image' "
                    f"(encoded bytes, or a struct with 'bytes') and {' or '.join(repr(c) for c in label_columns)}, "
                    f"optionally 'split'; it has {names}"
                )
            table = parquet.read(columns=[name for name in (label, "split") if name in names])
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(
            f"data.path {path!r} cannot be read as Parquet ({reason}); a .parquet path must be a Parquet file "
            "with columns 'image' and 'label'"
        ) from None
    raw_labels = table.column(label).to_pylist()
    if None in raw_labels:
        row = raw_labels.index(None)
        count = raw_labels.count(None)
        raise DatasetError(f"Parquet file {path!r} has {count} row(s) with a null label (first: row {row}); every row needs a class label")
    labels = [str(label) for label in raw_labels]
    if "split" not in table.column_names:
        return labels, None
    held_out = []
    for row, value in enumerate(table.column("split").to_pylist()):
        key = value.strip().lower() if isinstance(value, str) else None
        if key not in HELD_OUT:
            raise DatasetError(
                f"Parquet file {path!r} row {row} has split {value!r}; expected train, or test / val / valid / "
                "validation (all held out as test images)"
            )
        held_out.append(HELD_OUT[key])
    return labels, np.asarray(held_out, dtype=bool)


@dataclass
class _Listing:
    """Every image of a folder or Parquet dataset, before any is read."""

    refs: list  # file paths, or Parquet row numbers
    labels: np.ndarray  # int64, indexes the dataset's class ids
    held_out: np.ndarray | None  # from the layout or the split column; None: split by data.test_fraction
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (name, class id, reason)


def _list_folder(fs, root: str, class_ids: list[str]) -> _Listing:
    refs, labels, held_out, skipped = [], [], [], []
    for base, is_test in _folder_layout(fs, root):
        for index, class_id in enumerate(class_ids):
            class_dir = f"{base}/{class_id}"
            if not fs.isdir(class_dir):
                continue
            for entry in sorted(fs.ls(class_dir, detail=True), key=lambda e: e["name"]):
                name = entry["name"]
                if entry["type"] == "directory":
                    skipped.append((name, class_id, "subfolder"))
                elif Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    refs.append(name)
                    labels.append(index)
                    held_out.append(is_test)
                else:  # notes.txt, .DS_Store, Thumbs.db, ...
                    skipped.append((name, class_id, "not_an_image_file"))
    split = None if not held_out or held_out[0] is None else np.asarray(held_out, dtype=bool)
    return _Listing(refs, np.asarray(labels, dtype=np.int64), split, skipped)


def _list_parquet(fs, root: str, path: str, class_ids: list[str]) -> _Listing:
    labels, held_out = _parquet_index(fs, root, path)
    index = {c: i for i, c in enumerate(class_ids)}
    return _Listing(list(range(len(labels))), np.asarray([index[label] for label in labels], dtype=np.int64), held_out)


def _folder_reader(fs, root: str, path: str):
    """A function from refs to their encoded bytes (or the exception that stopped the read)."""
    if not _is_parquet(path):
        return lambda paths: fs.cat_ranges(list(paths), None, None, on_error="return")
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open(root, "rb") as handle:
        column = pq.read_table(handle, columns=["image"]).column("image")

    def read(rows):
        values = column.take(pa.array(rows, type=pa.int64())).to_pylist()
        data = [value.get("bytes") if isinstance(value, dict) else value for value in values]
        return [d if isinstance(d, bytes) else None for d in data]  # None: the row has no image bytes

    return read


def _ref_name(ref) -> str:
    return f"row {ref}" if isinstance(ref, int) else str(ref)


def _skip_counts(skipped: list[tuple[str, str, str]]) -> dict[str, dict[str, int]]:
    """``{class id: {reason: files skipped}}``."""
    counts: dict[str, Counter] = {}
    for _, class_id, reason in skipped:
        counts.setdefault(class_id, Counter())[reason] += 1
    return {class_id: dict(sorted(c.items())) for class_id, c in counts.items()}


def _draw_order(indices: np.ndarray, labels: np.ndarray, k: int | None, seed: int) -> list[np.ndarray]:
    """Per class, the candidates in the order :func:`_take_per_class` draws them (all, in order, when ``k`` is None)."""
    if k is None:
        return [indices]
    rng = _rng(seed)
    # the same permutation calls, on arrays of the same length, as _take_per_class: the same draw
    return [rng.permutation(indices[labels[indices] == c]) for c in np.unique(labels[indices])]


def _draw_batches(groups: list[np.ndarray], k: int | None, chosen: dict[int, np.ndarray]):
    """Batches of candidates to read: each class's first ``k``, then replacements for those skipped."""
    taken = [0] * len(groups)
    while True:
        wanted = []
        for g, order in enumerate(groups):
            if k is None:
                more = order[taken[g] :]
            else:
                have = sum(int(i) in chosen for i in order[: taken[g]])
                more = order[taken[g] : taken[g] + k - have]
            taken[g] += len(more)
            wanted += [int(i) for i in more]
        if not wanted:
            return
        for start in range(0, len(wanted), READ_BATCH):
            yield wanted[start : start + READ_BATCH]


def _load_folder(cfg: DataConfig, decode: list[str] | None = None) -> Dataset:
    """Load an ImageFolder tree or Parquet file, deciding the split and the subset before decoding.

    Only the chosen images are read and decoded. Splits: ``train/`` with ``test/``, ``val/``, ``valid/``,
    ``validation/`` folders, or a Parquet ``split`` column with those values; validation images are held
    out as test images. Without either, ``data.test_fraction`` of each class is held out (seeded).
    A file that cannot be decoded is skipped, counted per class and reason, and (when a per-class count
    is set) replaced by the next candidate of the same seeded draw; with every file readable the
    selection equals :func:`_take_per_class` over the decoded dataset.
    """
    path = _require_path(cfg)
    all_ids = _folder_class_ids(path)
    class_ids = _select_classes(all_ids, wanted_classes(cfg))
    fs, root = fsspec.core.url_to_fs(path)
    listing = _list_parquet(fs, root, path, all_ids) if _is_parquet(path) else _list_folder(fs, root, all_ids)
    return load_listing(
        cfg, listing, all_ids, class_ids, _folder_reader(fs, root, path), name=Path(root).name, path=path, decode=decode
    )


def load_listing(
    cfg: DataConfig,
    listing: _Listing,
    all_ids: list[str],
    class_ids: list[str],
    read,
    *,
    name: str,
    path: str,
    class_names=None,
    decode: list[str] | None = None,
) -> Dataset:
    """Split, subset, read and decode a listed dataset: only the chosen images are read (see :func:`_load_folder`).

    ``listing.labels`` index ``all_ids``; the result keeps ``class_ids`` (a subset, in that order). ``read`` maps a
    batch of ``listing.refs`` to their encoded bytes (an exception or None for one that cannot be read). ``decode``
    limits the reading to those classes (see :func:`load_dataset`); every draw is made over all classes first.
    """
    from synthaug_pipeline.lib.images import ImageDecodeError, decode_image  # imports torch: only when pixels are read

    if listing.held_out is None:
        train_idx, test_idx = _stratified_split(listing.labels, cfg.test_fraction, cfg.seed)
    else:
        train_idx, test_idx = np.flatnonzero(~listing.held_out), np.flatnonzero(listing.held_out)
    remap = np.full(len(all_ids), -1, dtype=np.int64)
    remap[[all_ids.index(c) for c in class_ids]] = np.arange(len(class_ids))
    labels = remap[listing.labels] if len(listing.labels) else listing.labels
    train_idx, validation_idx = carve_validation(train_idx[labels[train_idx] >= 0], labels, cfg.validation_fraction, cfg.seed, class_ids)
    skipped = [entry for entry in listing.skipped if entry[1] in class_ids]
    size, channels = cfg.image_size or 32, cfg.channels or 3
    unknown = sorted(set(decode or []) - set(class_ids))
    if unknown:
        raise DatasetError(f"classes {unknown[:10]} are not among the selected classes of {path!r}")
    decoded = np.ones(len(class_ids), dtype=bool) if decode is None else np.isin(class_ids, list(decode))

    def attempt(data) -> np.ndarray | str:
        """The fitted image, or why it is skipped."""
        if data is None:
            return "missing_image"
        if isinstance(data, BaseException):
            return "unreadable_file"
        try:
            return _fit(decode_image(data, channels), size)
        except ImageDecodeError as exc:
            return exc.reason

    def read_split(indices: np.ndarray, k: int | None, seed: int) -> LabeledImages:
        indices = indices[labels[indices] >= 0]
        chosen: dict[int, np.ndarray] = {}
        # drawn over every class (the same random stream whatever is decoded), then only the decoded classes are read
        groups = [order[decoded[labels[order]]] for order in _draw_order(indices, labels, k, seed)]
        for batch in _draw_batches([g for g in groups if len(g)], k, chosen):
            for i, data in zip(batch, read([listing.refs[i] for i in batch]), strict=True):
                outcome = attempt(data)
                if isinstance(outcome, str):
                    skipped.append((_ref_name(listing.refs[i]), class_ids[labels[i]], outcome))
                else:
                    chosen[i] = outcome
        keep = np.asarray(sorted(chosen), dtype=np.int64)
        images = np.stack([chosen[i] for i in keep]) if len(keep) else np.zeros((0, size, size, channels), np.uint8)
        return LabeledImages(images, labels[keep])

    train = read_split(train_idx, cfg.train_per_class, cfg.seed)
    test = read_split(test_idx, cfg.test_per_class, cfg.seed + 1)
    validation = read_split(validation_idx, None, cfg.seed) if cfg.validation_fraction else None
    counts = _skip_counts(skipped)
    planned = _planned_counts(class_ids, labels, train_idx, validation_idx, test_idx, cfg)
    for index, class_id in enumerate(class_ids):
        if not np.any(train.labels == index) if decoded[index] else not planned[class_id]["train"]:
            reasons = counts.get(class_id)
            held_out = int(np.sum(labels[test_idx] == index))
            if reasons:
                why = f"skipped {', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))}"
            else:
                why = f"all {held_out} of its images are in the held-out split" if held_out else "no image files"
            raise DatasetError(
                f"class {class_id!r} in {path!r} has no usable training images ({why}); add readable images "
                "or leave the class out with data.classes"
            )
    return Dataset(
        name=name,
        class_ids=class_ids,
        class_names=list(class_names) if class_names is not None else list(class_ids),
        train=train,
        test=test,
        source=redact_url(path),  # recorded in the catalog, lineage and metadata: never with credentials
        skipped_files=[ref for ref, _, _ in skipped],
        skipped=counts,
        validation=validation,
        decoded=None if decode is None else [c for c, d in zip(class_ids, decoded, strict=True) if d],
        planned=planned,
    )


def _planned_counts(
    class_ids: list[str], labels: np.ndarray, train_idx: np.ndarray, validation_idx: np.ndarray, test_idx: np.ndarray, cfg: DataConfig
) -> dict[str, dict[str, int]]:
    """Per class, the images each split gets when every listed file decodes (the per-class caps applied)."""

    def per_class(indices: np.ndarray, cap: int | None) -> np.ndarray:
        n = np.bincount(labels[indices][labels[indices] >= 0], minlength=len(class_ids))
        return n if cap is None else np.minimum(n, cap)

    train, test = per_class(train_idx, cfg.train_per_class), per_class(test_idx, cfg.test_per_class)
    validation = per_class(validation_idx, None)
    return {c: {"train": int(train[i]), "validation": int(validation[i]), "test": int(test[i])} for i, c in enumerate(class_ids)}


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
