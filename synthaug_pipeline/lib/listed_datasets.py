"""Folder and Parquet datasets: every image listed before any is read, then only the chosen ones decoded.

A listing (:class:`_Listing`) holds each image's reference, class and split; :func:`load_listing` splits, draws
and decodes from it. lib/imagenet.py builds its loader on the same listing helpers.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np

from synthaug_pipeline.lib.config import DataConfig
from synthaug_pipeline.lib.datasets import (
    Dataset,
    DatasetError,
    LabeledImages,
    _fit,
    _require_path,
    _rng,
    _select_classes,
    _stratified_split,
    carve_validation,
    wanted_classes,
)
from synthaug_pipeline.lib.redaction import redact_url

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
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


def check_folder_available(cfg: DataConfig) -> None:
    """The folder source's part of :func:`~synthaug_pipeline.lib.datasets.check_dataset_available`: reads no pixels."""
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
