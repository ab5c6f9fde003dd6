"""Shifted test sets: extra labelled folders the classifiers are also judged on (``evaluation.shift_folders``).

ImageFolder roots or Parquet URLs, e.g. a sketch or rendition version of the classes, read with the pipeline's
folder loader: :func:`check_shift_folders` checks their class ids against the profile's before anything is
trained (cheap, no pixels, no torch), :func:`load_shift_set` reads one at the profile's image size. Folder names
map to the profile's classes by ``evaluation.shift_folder_labels`` (:func:`shift_label_map`). Scoring a model
on them is :func:`synthaug_pipeline.lib.evaluation.evaluate_under_shift`'s ``shift_sets``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

import fsspec
import numpy as np

from synthaug_pipeline.lib.class_names import WNID_PATTERN
from synthaug_pipeline.lib.config import DataConfig, ProfileError
from synthaug_pipeline.lib.datasets import dataset_class_ids, load_dataset

SHIFT_LABEL_MODES = ("class_id", "class_index", "wnid", "imagenet_index")
_SPLIT_DIRS = ("test", "val")


def shift_set_roots(url: str) -> list[str]:
    """The folders shift set ``url`` is read from: ``url`` itself, or its ``test/`` and ``val/`` when the root holds
    only those split folders (and no ``train/``), so a ``<root>/val/<class>/...`` layout is not read as a class "val"."""
    if url.rstrip("/").endswith(".parquet"):
        return [url]
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.isdir(root):
        return [url]  # the folder loader says what is wrong with it
    root = root.rstrip("/")
    subdirs = sorted(
        PurePosixPath(entry).name for entry in fs.ls(root, detail=False) if fs.isdir(entry) and not PurePosixPath(entry).name.startswith(".")
    )
    if not subdirs or not set(subdirs) <= set(_SPLIT_DIRS):
        return [url]
    return [fs.unstrip_protocol(f"{root}/{d}") if "://" in url else f"{root}/{d}" for d in subdirs]


def _folder_labels(name: str, url: str) -> list[str]:
    labels: list[str] = []
    for root in shift_set_roots(url):
        try:
            labels += dataset_class_ids(DataConfig(source="folder", path=root))
        except ProfileError as exc:
            raise ProfileError(f"evaluation.shift_folders.{name} ({url!r}): {exc}") from None
    return sorted(set(labels))


def shift_label_map(name: str, url: str, labels: Sequence[str], class_ids: Sequence[str], mode: str = "class_id") -> dict[str, str]:
    """``{folder name or Parquet label: profile class id}`` for shift set ``name`` read with ``mode``.

    ``class_id``: the name is the class id (checked against ``class_ids``). ``class_index``: the name is an
    integer index into ``class_ids`` (ImageNet-V2 names its folders 0..999). Raises ProfileError naming the
    set, the names that do not map and the fix.
    """
    if mode not in SHIFT_LABEL_MODES:
        raise ProfileError(f"evaluation.shift_folder_labels.{name}={mode!r}: choose one of {', '.join(SHIFT_LABEL_MODES)}")
    if mode in ("wnid", "imagenet_index"):
        return _imagenet_label_map(name, url, labels, class_ids, mode)
    if mode == "class_index":
        bad = [label for label in labels if not (label.isdigit() and int(label) < len(class_ids))]
        if bad:
            raise ProfileError(
                f"evaluation.shift_folders.{name} ({url!r}) is read with evaluation.shift_folder_labels.{name}=class_index, "
                f"but {bad[:10]}{' ...' if len(bad) > 10 else ''} are not integer indices into the profile's {len(class_ids)} classes "
                f"(0..{len(class_ids) - 1}): name the folders by class index, or use class_id for folders named by class id"
            )
        return {label: class_ids[int(label)] for label in labels}
    known = set(class_ids)
    unknown = [c for c in labels if c not in known]
    if unknown:
        hint = (
            f"; its folder names look like class indices: set evaluation.shift_folder_labels.{name}=class_index"
            if all(c.isdigit() for c in labels) and not any(c.isdigit() for c in class_ids)
            else f"; its folder names are ImageNet wnids: set evaluation.shift_folder_labels.{name}=wnid to keep the profile's classes"
            if all(WNID_PATTERN.match(c) for c in labels)
            else ""
        )
        raise ProfileError(
            f"evaluation.shift_folders.{name} ({url!r}) has classes {unknown[:10]}{' ...' if len(unknown) > 10 else ''} "
            f"that this profile does not have; its classes are {list(class_ids)[:20]}{' ...' if len(class_ids) > 20 else ''}: "
            f"name the class folders (or Parquet labels) by the profile's class ids{hint}"
        )
    return {c: c for c in labels}


def _imagenet_label_map(name: str, url: str, labels: Sequence[str], class_ids: Sequence[str], mode: str) -> dict[str, str]:
    """wnid / imagenet_index labels -> the profile's class ids; labels of ImageNet-1k classes the profile lacks are left out
    (ImageNet-R and -A cover 200 classes, ImageNet-V2 all 1000, a run often fewer), labels outside ImageNet-1k are errors."""
    from synthaug_pipeline.lib.imagenet import imagenet_1k, wnid_index

    order, index = imagenet_1k(), wnid_index()
    if mode == "imagenet_index":
        bad = [label for label in labels if not (label.isdigit() and int(label) < len(order))]
        wnids = {label: order[int(label)] for label in labels if label not in bad}
        what = "ImageNet-1k indices 0..999 (standard order)"
    else:
        bad = [label for label in labels if label not in index]
        wnids = {label: label for label in labels if label not in bad}
        what = "ImageNet-1k wnids"
    if bad:
        raise ProfileError(
            f"evaluation.shift_folders.{name} ({url!r}) is read with evaluation.shift_folder_labels.{name}={mode}, but "
            f"{bad[:10]}{' ...' if len(bad) > 10 else ''} are no {what}"
        )
    known = set(class_ids)
    mapping = {label: wnid for label, wnid in wnids.items() if wnid in known}
    if not mapping:
        raise ProfileError(
            f"evaluation.shift_folders.{name} ({url!r}) shares no class with this profile's {len(class_ids)} classes "
            f"({list(class_ids)[:5]}{' ...' if len(class_ids) > 5 else ''}): drop it or choose classes it covers"
        )
    return mapping


def shift_folder_class_ids(name: str, url: str, class_ids: Sequence[str] | None = None, mode: str = "class_id") -> list[str]:
    """The class ids of shift set ``name`` at ``url`` (ImageFolder class folders or Parquet labels), no pixels read.

    With ``class_ids``, folder names are mapped to them by ``mode`` (see :func:`shift_label_map`); without,
    the raw names are returned.
    """
    labels = _folder_labels(name, url)
    if class_ids is None:
        return labels
    mapping = shift_label_map(name, url, labels, class_ids, mode)
    return sorted(set(mapping.values()), key=list(class_ids).index)


def check_shift_folders(
    shift_folders: Mapping[str, str], class_ids: Sequence[str], label_modes: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """Check that every shift set's class ids are classes of the profile; returns ``{name: its class ids}``.

    Cheap (lists folders or reads one Parquet column), so it runs before anything is trained. A set
    may hold a subset of the classes (renditions or sketches often cover only some, as ImageNet-R
    does: the missing ones get no per-class score), but a class id the profile does not have is a
    ProfileError naming the set, the unknown ids and the profile's ids. ``label_modes``
    (``evaluation.shift_folder_labels``) says per set whether folder names are class ids (default)
    or class indices; a root holding only ``test/``/``val/`` is read from those (:func:`shift_set_roots`).
    """
    label_modes = label_modes or {}
    return {name: shift_folder_class_ids(name, url, class_ids, label_modes.get(name, "class_id")) for name, url in shift_folders.items()}


def load_shift_set(
    name: str, url: str, class_ids: Sequence[str], image_shape: Sequence[int], label_mode: str = "class_id"
) -> tuple[np.ndarray, np.ndarray]:
    """Every image of shift set ``name`` (all splits) as uint8 ``[N, H, W, C]`` at the profile's
    ``image_shape`` (H, W, C; square), with labels indexing ``class_ids``.

    Read by the pipeline's folder loader (:func:`synthaug_pipeline.lib.datasets.load_dataset`,
    ``source="folder"``): centre crop, bicubic resize, grayscale/RGB conversion. Folder names map to
    classes by ``label_mode`` and are checked as in :func:`check_shift_folders`.
    """
    height, width, channels = (int(v) for v in image_shape)
    if height != width:
        raise ValueError(f"shift sets are read at a square size; the profile's images are {height}x{width}")
    check_shift_folders({name: url}, class_ids, {name: label_mode})
    all_images, all_labels = [], []
    for root in shift_set_roots(url):
        try:
            labels = dataset_class_ids(DataConfig(source="folder", path=root))
            mapping = shift_label_map(name, url, labels, class_ids, label_mode) if label_mode in ("wnid", "imagenet_index") else None
            # wnid / imagenet_index sets keep the profile's classes: only their images are decoded
            wanted = [label for label in labels if label in mapping] if mapping is not None else None
            if wanted == []:
                continue
            dataset = load_dataset(DataConfig(source="folder", path=root, image_size=height, channels=channels, classes=wanted))
        except ProfileError as exc:
            raise ProfileError(f"evaluation.shift_folders.{name} ({url!r}): {exc}") from None
        mapping = shift_label_map(name, url, dataset.class_ids, class_ids, label_mode)
        index = np.asarray([list(class_ids).index(mapping[c]) for c in dataset.class_ids], dtype=np.int64)
        all_images += [dataset.train.images, dataset.test.images]
        all_labels += [index[dataset.train.labels], index[dataset.test.labels]]
    return np.concatenate(all_images), np.concatenate(all_labels)
