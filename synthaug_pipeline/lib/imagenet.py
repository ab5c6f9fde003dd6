"""ImageNet-1k: the class list, named class subsets, and readers for the layouts ImageNet copies come in.

Class ids are WordNet ids (wnids) in the standard ImageNet-1k order, the order of every timm and torchvision
ImageNet head (index 0 = ``n01440764``, tench), read from timm's ``timm/data/_info`` tables through
:func:`synthaug_pipeline.lib.class_names.imagenet_wordnet` (names and glosses come from the same tables).
``data.classes`` picks a subset: a list, a text file of wnids, or a named subset shipped with the package
(``imagenet100``: the 100 classes of Tian et al.'s CMC). The class list needs no data: the partitions of an
``imagenet`` profile exist before ``data.path`` is read.

Layouts read by ``data.source=imagenet`` (``data.path``):

* an ILSVRC-2012 tree: ``train/<wnid>/*.JPEG`` and, held out as the test split, ``val/`` either as
  ``val/<wnid>/*.JPEG`` folders or flat (``val/ILSVRC2012_val_00000001.JPEG`` ...) with its ground truth:
  Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first wnid of the prediction string is
  the label) or the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one 1-based ILSVRC2012_ID per line, in
  file-number order). ILSVRC2012_IDs are *not* the standard order: they are mapped to wnids through the devkit's
  own ``meta.mat`` (``synsets``: ``ILSVRC2012_ID``, ``WNID``), which must lie beside the ground-truth file as it
  does in ``ILSVRC2012_devkit_t12/data/``. ``data.val_labels`` names the file; without it the reader looks in
  ``data.path``, ``data.path/val``, ``data.path/../`` up to three levels and their ``ILSVRC2012_devkit_t12/data``.
  A root without ``train/`` whose sub-folders are wnids is read as one split (``data.test_fraction`` held out).
  ``test/`` (unlabelled in ILSVRC) is not read.
* a Parquet file with ``image`` (encoded bytes) and ``wnid`` (or ``label``: a wnid, or an ImageNet-1k index
  0..999 in the standard order), optionally ``split`` (train / val / test, as for the folder source).

Only the selected classes are listed, and only the chosen images are decoded (the folder source's
machinery, :func:`synthaug_pipeline.lib.listed_datasets.load_listing`). Every mismatch between labels and data
(a wnid outside ImageNet-1k, a selected class without a train folder or rows, a val image without a label,
a val folder that is no ImageNet-1k wnid) is a one-line :class:`~synthaug_pipeline.lib.datasets.DatasetError`,
raised by :func:`check_imagenet_available` before anything is written or any model loads.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from importlib import resources
from pathlib import Path, PurePosixPath

import fsspec
import numpy as np

from synthaug_pipeline.lib.class_names import imagenet_wordnet
from synthaug_pipeline.lib.config import DataConfig
from synthaug_pipeline.lib.datasets import Dataset, DatasetError, _require_path
from synthaug_pipeline.lib.listed_datasets import (
    IMAGE_SUFFIXES,
    _folder_reader,
    _is_parquet,
    _list_folder,
    _Listing,
    _parquet_index,
    load_listing,
)

SUBSETS = {"imagenet100": "imagenet100.txt"}  # named data.classes values -> package data files (synthaug_pipeline/data)
LOC_SOLUTION = "LOC_val_solution.csv"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
DEVKIT_DATA = "ILSVRC2012_devkit_t12/data"
VAL_FILE = re.compile(r"^ILSVRC2012_val_(\d{8})$")
_WNID = re.compile(r"^n\d{8}$")
_LABEL_SEARCH_DEPTH = 3  # parents of data.path searched for the val ground truth (Kaggle: <top>/ILSVRC/Data/CLS-LOC)


# --- the class list ---------------------------------------------------------------------------


def imagenet_1k() -> tuple[str, ...]:
    """The 1000 wnids in the standard order (index -> wnid)."""
    return imagenet_wordnet().imagenet_1k


@functools.lru_cache(maxsize=1)
def wnid_index() -> dict[str, int]:
    """wnid -> its ImageNet-1k index (the output index of an ImageNet-1k classifier)."""
    return {wnid: i for i, wnid in enumerate(imagenet_1k())}


def class_name(wnid: str) -> str:
    """The first WordNet lemma of a wnid ('n01440764' -> 'tench')."""
    lemmas = imagenet_wordnet().lemmas.get(wnid)
    return lemmas[0] if lemmas else wnid


def class_gloss(wnid: str) -> str | None:
    return imagenet_wordnet().glosses.get(wnid)


def read_class_list(path: str, where: str = "data.classes") -> list[str]:
    """Class ids from a text file: one per line; blank lines and ``#`` comments ignored; a repeat is an error."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{where} {path!r} cannot be read as a text file of class ids ({type(exc).__name__}: {exc})") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise DatasetError(f"{where} {path!r} lists no class id (one per line)")
    repeated = sorted({c for c in ids if ids.count(c) > 1})
    if repeated:
        raise DatasetError(f"{where} {path!r} names {repeated[:10]} more than once")
    return ids


def named_subset(name: str) -> list[str]:
    """The wnids of a named subset shipped with the package (``imagenet100``)."""
    entry = resources.files("synthaug_pipeline.data") / SUBSETS[name]
    return [line.strip() for line in entry.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]


def imagenet_class_ids(classes: list[str] | str | None) -> list[str]:
    """``data.classes`` of the imagenet source as wnids in the standard order (None: all 1000).

    A string is a named subset (:data:`SUBSETS`) or a file of wnids. Unknown wnids and repeats are errors.
    """
    if classes is None:
        return list(imagenet_1k())
    if isinstance(classes, str):
        if classes in SUBSETS:
            wanted, where = named_subset(classes), f"data.classes subset {classes!r}"
        elif Path(classes).expanduser().is_file() or "://" in classes:
            wanted, where = read_class_list(classes), f"data.classes file {classes!r}"
        else:
            raise DatasetError(
                f"data.classes {classes!r} is neither a named subset ({', '.join(SUBSETS)}) nor an existing file of wnids: "
                "give a list, a file with one wnid per line, or a subset name"
            )
    else:
        wanted, where = list(classes), "data.classes"
    index = wnid_index()
    unknown = [c for c in wanted if c not in index]
    if unknown:
        raise DatasetError(
            f"{where} names {len(unknown)} class(es) that are no ImageNet-1k wnid: {unknown[:10]}; "
            "class ids of the imagenet profile are wnids such as n01440764 (tench)"
        )
    repeated = sorted({c for c in wanted if wanted.count(c) > 1})
    if repeated:
        raise DatasetError(f"{where} names {repeated[:10]} more than once")
    return sorted(wanted, key=index.__getitem__)


# --- validation ground truth ------------------------------------------------------------------


def _parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


def find_val_labels(fs, root: str) -> str | None:
    """The val ground-truth file near ``root`` (see the module docstring), or None."""
    folders, here = [root, f"{root}/val"], root
    for _ in range(_LABEL_SEARCH_DEPTH):
        here = _parent(here)
        folders.append(here)
    for folder in folders:
        for candidate in (f"{folder}/{LOC_SOLUTION}", f"{folder}/{GROUND_TRUTH}", f"{folder}/{DEVKIT_DATA}/{GROUND_TRUTH}"):
            if fs.isfile(candidate):
                return candidate
    return None


def devkit_ids(fs, meta_path: str) -> dict[int, str]:
    """ILSVRC2012_ID (1..1000) -> wnid from the devkit's ``meta.mat`` (its ``synsets`` table)."""
    import scipy.io

    try:
        with fs.open(meta_path, "rb") as handle:
            synsets = scipy.io.loadmat(io.BytesIO(handle.read()), squeeze_me=True)["synsets"]
        ids = {int(row["ILSVRC2012_ID"]): str(row["WNID"]) for row in synsets}
    except Exception as exc:  # noqa: BLE001 - not a MAT file, no synsets table, other fields: one message
        raise DatasetError(
            f"{meta_path!r} is not the ILSVRC2012 devkit's meta.mat (a 'synsets' table with ILSVRC2012_ID and WNID): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    ids = {i: w for i, w in ids.items() if 1 <= i <= 1000}
    if sorted(ids) != list(range(1, 1001)) or set(ids.values()) != set(imagenet_1k()):
        raise DatasetError(
            f"{meta_path!r} does not map ILSVRC2012_IDs 1..1000 onto the 1000 ImageNet-1k wnids: it is not the ILSVRC2012 devkit's meta.mat"
        )
    return ids


def read_val_labels(fs, path: str) -> dict[str, str]:
    """``{val file stem: wnid}`` from ``LOC_val_solution.csv`` or ``ILSVRC2012_validation_ground_truth.txt``."""
    name = PurePosixPath(path).name
    try:
        with fs.open(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"data.val_labels {path!r} cannot be read ({type(exc).__name__}: {exc})") from None
    index = wnid_index()
    labels: dict[str, str] = {}
    if name.endswith(".csv"):
        rows = csv.DictReader(io.StringIO(text))
        if not {"ImageId", "PredictionString"} <= set(rows.fieldnames or []):
            raise DatasetError(f"{path!r} has no ImageId and PredictionString columns (Kaggle's {LOC_SOLUTION} has both)")
        for row in rows:
            words = (row["PredictionString"] or "").split()
            if not words or words[0] not in index:
                raise DatasetError(f"{path!r} labels {row['ImageId']!r} with {words[:1]}, which is no ImageNet-1k wnid")
            labels[row["ImageId"].strip()] = words[0]
        return labels
    meta = f"{_parent(path)}/{DEVKIT_META}"
    if not fs.isfile(meta):
        raise DatasetError(
            f"{path!r} holds ILSVRC2012_IDs, which map to wnids only through the devkit's {DEVKIT_META}: put it beside the file "
            f"(as in {DEVKIT_DATA}/), or use Kaggle's {LOC_SOLUTION}, or sort val/ into val/<wnid>/ folders"
        )
    ids = devkit_ids(fs, meta)
    for number, line in enumerate(text.split(), start=1):
        if not line.isdigit() or int(line) not in ids:
            raise DatasetError(f"{path!r} line {number} is {line!r}, not an ILSVRC2012_ID from 1 to 1000")
        labels[f"ILSVRC2012_val_{number:08d}"] = ids[int(line)]
    return labels


# --- listing ----------------------------------------------------------------------------------


def _list_flat_val(fs, val_dir: str, class_ids: list[str], labels_path: str | None, path: str) -> tuple[list, list, list]:
    """Refs, class indices and skipped files of a flat ``val/`` folder, labelled by its ground truth."""
    entries = [e for e in fs.ls(val_dir, detail=True) if not PurePosixPath(e["name"]).name.startswith(".")]
    files = sorted(e["name"] for e in entries if e["type"] != "directory" and PurePosixPath(e["name"]).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        return [], [], []
    if labels_path is None:
        raise DatasetError(
            f"{val_dir!r} holds {len(files)} images but no labels: put {LOC_SOLUTION} or {GROUND_TRUTH} (with the devkit's "
            f"{DEVKIT_META} beside it) in data.path, or set data.val_labels, or sort val/ into val/<wnid>/ folders"
        )
    labels = read_val_labels(fs, labels_path)
    position = {c: i for i, c in enumerate(class_ids)}
    refs, indices = [], []
    unlabelled = [f for f in files if PurePosixPath(f).stem not in labels]
    if unlabelled:
        raise DatasetError(
            f"{len(unlabelled)} of the {len(files)} images in {val_dir!r} have no label in {labels_path!r} "
            f"(first: {PurePosixPath(unlabelled[0]).name}): the labels do not match the folder; set data.val_labels to its ground truth"
        )
    for name in files:
        wnid = labels[PurePosixPath(name).stem]
        if wnid in position:
            refs.append(name)
            indices.append(position[wnid])
    return refs, indices, []


def _tree_listing(fs, root: str, path: str, class_ids: list[str], val_labels: str | None) -> _Listing:
    """The selected classes' images of an ILSVRC-2012 tree (train/ + val/), or of a root of wnid folders."""
    has_train = fs.isdir(f"{root}/train")
    base = f"{root}/train" if has_train else root
    present = {PurePosixPath(e["name"]).name for e in fs.ls(base, detail=True) if e["type"] == "directory"}
    if not has_train and not any(_WNID.match(name) for name in present):
        raise DatasetError(
            f"data.path {path!r} is no ImageNet tree: it has neither train/<wnid>/ nor <wnid>/ folders "
            "(or point data.path at a Parquet file of (image, wnid))"
        )
    missing = [c for c in class_ids if c not in present]
    if missing:
        raise DatasetError(
            f"{len(missing)} selected class folder(s) are missing from {base!r}: {missing[:10]}; "
            "copy them there or leave the classes out with data.classes"
        )
    listing = _list_folder(fs, root, class_ids)  # train/<wnid>/ and val/<wnid>/ (held out), as the folder source
    val_dir = f"{root}/val"
    if has_train and fs.isdir(val_dir):
        names = {PurePosixPath(e["name"]).name for e in fs.ls(val_dir, detail=True) if e["type"] == "directory"}
        foreign = sorted(n for n in names if n not in wnid_index() and not n.startswith("."))
        if foreign:
            raise DatasetError(
                f"{val_dir!r} has folders that are no ImageNet-1k wnid: {foreign[:10]}; val/ must hold val/<wnid>/ folders "
                "or the flat ILSVRC2012_val_*.JPEG files with their ground truth"
            )
        labels_path = val_labels or find_val_labels(fs, root)
        refs, indices, _ = _list_flat_val(fs, val_dir, class_ids, labels_path, path)
        if refs:
            held = listing.held_out if listing.held_out is not None else np.zeros(len(listing.refs), dtype=bool)
            listing = _Listing(
                listing.refs + refs,
                np.concatenate([listing.labels, np.asarray(indices, dtype=np.int64)]),
                np.concatenate([held, np.ones(len(refs), dtype=bool)]),
                listing.skipped,
            )
    return listing


def _parquet_listing(fs, root: str, path: str) -> _Listing:
    """Every row of an ImageNet Parquet file; labels index the 1000 wnids."""
    raw, held_out = _parquet_index(fs, root, path, ("wnid", "label"))
    index, order = wnid_index(), imagenet_1k()
    labels = []
    for row, value in enumerate(raw):
        if value.isdigit() and int(value) < len(order):
            labels.append(int(value))
        elif value in index:
            labels.append(index[value])
        else:
            raise DatasetError(
                f"Parquet file {path!r} row {row} has label {value!r}: labels must be ImageNet-1k wnids (n01440764) "
                "or indices 0..999 in the standard order"
            )
    return _Listing(list(range(len(raw))), np.asarray(labels, dtype=np.int64), held_out)


def _listing(cfg: DataConfig) -> tuple[_Listing, list[str], list[str], object]:
    """(listing, the ids its labels index, the selected class ids, a reader of refs) for ``cfg``."""
    path = _require_path(cfg)
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        raise DatasetError(f"data.path {path!r} does not exist: point it at an ILSVRC-2012 tree (train/, val/) or a Parquet file")
    class_ids = imagenet_class_ids(cfg.classes)
    if _is_parquet(path):
        listing, all_ids = _parquet_listing(fs, root, path), list(imagenet_1k())
        rows = np.bincount(listing.labels, minlength=len(all_ids))
        trained = rows if listing.held_out is None else np.bincount(listing.labels[~listing.held_out], minlength=len(all_ids))
        index = wnid_index()
        absent = [c for c in class_ids if not trained[index[c]]]
        if absent:
            held = [c for c in absent if rows[index[c]]]
            raise DatasetError(
                f"{len(absent)} selected class(es) have no training rows in Parquet file {path!r}: {absent[:10]}"
                + (f" ({held[:10]} have only held-out rows)" if held else "")
                + "; add their rows or leave the classes out with data.classes"
            )
    else:
        if cfg.val_labels and not fs.isfile(cfg.val_labels):
            raise DatasetError(f"data.val_labels {cfg.val_labels!r} does not exist")
        listing, all_ids = _tree_listing(fs, root.rstrip("/"), path, class_ids, cfg.val_labels), class_ids
    return listing, all_ids, class_ids, _folder_reader(fs, root, path)


def check_imagenet_available(cfg: DataConfig) -> None:
    """Fail fast (reads labels and lists folders, decodes nothing) when ``data.path`` cannot serve the selected classes."""
    listing, all_ids, class_ids, _ = _listing(cfg)
    train = listing.labels if listing.held_out is None else listing.labels[~listing.held_out]
    counts = np.bincount(train, minlength=len(all_ids))
    position = {c: i for i, c in enumerate(all_ids)}
    empty = [c for c in class_ids if not counts[position[c]]]
    if empty:
        raise DatasetError(
            f"{len(empty)} class folder(s) in {cfg.path!r} hold no training image files: {empty[:10]}; "
            "add images or leave the classes out with data.classes"
        )


def available_counts(listing: _Listing, all_ids: list[str], class_ids: list[str]) -> dict[str, dict[str, int]]:
    """Images listed per selected class before the per-class caps: ``{wnid: {"train": n, "test": n}}``, or
    ``{wnid: {"images": n}}`` when the data has no split (``data.test_fraction`` then holds some out)."""
    position = {c: i for i, c in enumerate(all_ids)}
    if listing.held_out is None:
        images = np.bincount(listing.labels, minlength=len(all_ids))
        return {c: {"images": int(images[position[c]])} for c in class_ids}
    train = np.bincount(listing.labels[~listing.held_out], minlength=len(all_ids))
    test = np.bincount(listing.labels[listing.held_out], minlength=len(all_ids))
    return {c: {"train": int(train[position[c]]), "test": int(test[position[c]])} for c in class_ids}


def load_imagenet(cfg: DataConfig, decode: list[str] | None = None) -> Dataset:
    """The selected classes of an ImageNet tree or Parquet file (only the chosen images of the ``decode`` classes
    decoded, every class when None), named by WordNet."""
    listing, all_ids, class_ids, read = _listing(cfg)
    dataset = load_listing(
        cfg, listing, all_ids, class_ids, read, name="imagenet", path=cfg.path, class_names=[class_name(c) for c in class_ids],
        decode=decode,
    )
    dataset.available = available_counts(listing, all_ids, class_ids)
    return dataset
