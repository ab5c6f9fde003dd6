"""All classes' images of a split without holding them in RAM: per-class stores spilled to a local file.

Training, the judge, the experiments and the evaluation need every class's real images of a split as one
``[N, H, W, C]`` array (random batches over all classes, per-class accuracy over the test set). Stacking
them in RAM makes peak memory grow with the number of classes: the ``imagenet`` profile's 224 px images
are ~150 KB each, 100 training images a class is 15 GB at 1000 classes. Instead :func:`spill_classes`
walks the per-class stores (``real_images`` handed on as a lazy :class:`~synthaug_pipeline.defs.io_managers.Partitions`
mapping reads one class's record on lookup) one class at a time, appends each split's pixels to a local
uint8 file and drops the class before reading the next; each split comes back as a read-only
``np.memmap`` over that file, with the labels (8 bytes an image) in RAM.

Why a spill file rather than a class-blocked sampler with a bounded resident set:

* the memmap *is* an ``np.ndarray`` with the same rows in the same order as the old ``np.concatenate``
  (classes by ``class_index``), so every consumer -- the fixed-compute training loop with its
  class-balanced random batches, the mix sampler and its supply rule (:mod:`synthaug_pipeline.lib.classifier.mixing`),
  the experiment plans' row indices, the DDPM trainer -- runs unchanged and bit-identical: same seeds,
  same batches, same recorded numbers. A class-blocked sampler would change which images share a batch;
* a random batch reads only its own rows (a few pages each); the file's pages are clean page cache the
  kernel drops under memory pressure, unlike anonymous memory, so the process's committed memory is the
  labels plus one class at a time while spilling, plus one batch;
* evaluation reads the test split in fixed chunks (:func:`synthaug_pipeline.lib.evaluation.evaluate`),
  so corrupted copies and logits are never made for the whole set at once.

The file lives in a fresh temporary folder (``$TMPDIR``, default ``/tmp``: local disk, the run's scratch)
and is unlinked as soon as it is mapped, so nothing is left behind when the process ends, however it ends;
the disk space returns when the last array viewing it is freed. Synthetic shard rows are spilled the same
way, one shard at a time (:func:`spill_batches`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")
CHUNK_ROWS = 4096  # rows copied at a time when a spilled split is reordered or subset


@dataclass
class Split:
    """One split of every class: ``images`` uint8 ``[N, H, W, C]`` (a read-only memmap when non-empty),
    ``labels`` int64 ``[N]`` (class indices), rows grouped by class in ``class_index`` order."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: Any) -> Split:
        """The rows ``rows`` (indices into this split, any order) as a new spilled split, copied in chunks."""
        rows = np.asarray(rows, dtype=np.int64)
        writer = SpillWriter("subset")
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            writer.append(self.images[chunk], self.labels[chunk])
        return writer.finish(self.images.shape[1:])


class SpillWriter:
    """Appends uint8 image batches (one class, one shard) to a local file; :meth:`finish` maps it read-only."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._folder = tempfile.mkdtemp(prefix="synthaug-spill-")
        self._path = os.path.join(self._folder, f"{what}.u8")
        self._file = open(self._path, "wb")  # noqa: SIM115 - closed by finish()
        self._shape: tuple[int, ...] | None = None
        self._labels: list[np.ndarray] = []
        self.rows = 0

    def append(self, images: np.ndarray, labels: Any) -> None:
        """Add ``images`` (uint8 ``[n, H, W, C]``) with their ``labels`` (``n`` integers, or one for all)."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise ValueError(f"{self._what}: expected uint8 images shaped [N, H, W, C], got {got}")
        if self._shape is None:
            self._shape = images.shape[1:]
        elif images.shape[1:] != self._shape and len(images):
            raise ValueError(f"{self._what}: images shaped {images.shape[1:]} (H, W, C) after images shaped {self._shape}")
        labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), (len(images),)).copy()
        self._file.write(np.ascontiguousarray(images).tobytes())
        self._labels.append(labels)
        self.rows += len(images)

    def discard(self) -> None:
        """Close and remove the file (a spill abandoned on an error)."""
        self._file.close()
        if os.path.exists(self._path):
            os.unlink(self._path)
        os.rmdir(self._folder)

    def finish(self, shape: Sequence[int] | None = None) -> Split:
        """The rows written, as a :class:`Split`; the file is unlinked once mapped (freed with the array).
        ``shape`` (H, W, C) is used when nothing was appended."""
        self._file.close()
        item_shape = tuple(self._shape if self._shape is not None else (shape if shape is not None else (0, 0, 0)))
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        try:
            if self.rows == 0:  # an empty file cannot be mapped
                images = np.zeros((0, *item_shape), np.uint8)
            else:
                images = np.memmap(self._path, dtype=np.uint8, mode="r", shape=(self.rows, *item_shape))
        finally:
            os.unlink(self._path)
            os.rmdir(self._folder)
        return Split(images=images, labels=labels)


@dataclass
class ClassSplits:
    """What :func:`spill_classes` read: the spilled splits (``None`` for a split some class lacks, as
    ``validation`` without ``data.validation_fraction``) and each class's image counts per split."""

    splits: dict[str, Split | None]
    counts: dict[str, dict[str, int]]  # {split: {class id: images}}, in the order the classes were read

    def __getitem__(self, split: str) -> Split:
        found = self.splits.get(split)
        if found is None:
            raise KeyError(f"split {split!r} was not spilled or some class has none")
        return found

    def has(self, split: str) -> bool:
        return self.splits.get(split) is not None

    def validation(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(images, labels)`` of the validation split for early stopping, None when it was not spilled or is empty."""
        return (self.splits["validation"].images, self.splits["validation"].labels) if self.has("validation") else None


def spill_classes(classes: Mapping[str, Any] | Sequence[Any], splits: Iterable[str] = ("train",)) -> ClassSplits:
    """Every class's ``splits`` (``RealClass`` attributes) spilled to local files, classes in ``class_index`` order.

    ``classes`` is ``{class id: RealClass}`` (a lazy ``Partitions`` reads one class per lookup; each is
    dropped before the next is read) or a sequence of them. Each class is read once for all splits.
    """
    splits = tuple(splits)
    if not splits:
        raise ValueError("spill_classes needs at least one split")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown splits {unknown}: choose from {', '.join(SPLITS)}")
    writers = {split: SpillWriter(split) for split in splits}
    placed: dict[str, list[tuple[int, int, int]]] = {split: [] for split in splits}  # (class_index, start, rows)
    counts: dict[str, dict[str, int]] = {split: {} for split in splits}
    missing: set[str] = set()
    keys = list(classes) if isinstance(classes, Mapping) else range(len(classes))
    if not len(keys):
        raise ValueError("no classes to read images from")
    try:
        for key in keys:
            _spill_class(classes[key], writers, placed, counts, missing)  # the class is dropped on return
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    result: dict[str, Split | None] = {}
    for split, writer in writers.items():
        spilled = writer.finish()
        result[split] = None if split in missing else _in_class_order(spilled, placed[split])
    return ClassSplits(result, counts)


def _spill_class(part: Any, writers: dict[str, SpillWriter], placed: dict, counts: dict, missing: set[str]) -> None:
    for split, writer in writers.items():
        images = getattr(part, split)
        if images is None:
            missing.add(split)
            continue
        placed[split].append((int(part.class_index), writer.rows, len(images)))
        counts[split][part.class_id] = len(images)
        writer.append(images, part.class_index)


def _in_class_order(split: Split, placed: list[tuple[int, int, int]]) -> Split:
    """``split`` with its classes' row blocks sorted by class index (a stable copy; as is when already sorted)."""
    order = sorted(range(len(placed)), key=lambda i: placed[i][0])
    if order == list(range(len(placed))):
        return split
    rows = np.concatenate([np.arange(placed[i][1], placed[i][1] + placed[i][2]) for i in order])
    return split.take(rows)


def spill_batches(batches: Iterable[tuple[np.ndarray, np.ndarray]], what: str, shape: Sequence[int] | None = None) -> Split:
    """``(images, labels)`` batches (e.g. one decoded synthetic shard at a time) appended in order to one spilled
    split; empty batches are skipped. ``shape`` (H, W, C) gives an empty result its image shape."""
    writer = SpillWriter(what)
    for images, labels in batches:
        if len(images):
            writer.append(images, labels)
    return writer.finish(shape)
