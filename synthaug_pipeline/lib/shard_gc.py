"""Garbage collection of superseded shards: files no class manifest and no model lineage names.

Writers never delete shards (see :mod:`synthaug_pipeline.lib.shards`), so superseded ones pile up
under ``<output>/synthetic_shards``. :func:`gc_shards` keeps every shard a class manifest names
(or the single shard of a folder written before manifests), every shard a model's ``lineage.json``
under ``<output>/models`` names, and every file younger than ``min_age_s`` (a writer may have put
its shard in place and not yet committed the manifest); it lists the rest, and removes them only
when asked.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import fsspec

from synthaug_pipeline.lib.lineage import lineage_records
from synthaug_pipeline.lib.shards import (
    DEFAULT_STALE_TEMP_AFTER_S,
    current_class_shard,
    file_age_seconds,
    is_shard_file_name,
    stale_temp_files,
)

SHARDS_FOLDER = "synthetic_shards"  # under the output URL, as the synthetic_shards asset writes it


@dataclass(frozen=True)
class GcReport:
    """What :func:`gc_shards` found: paths (in the output's filesystem) kept and removable."""

    kept: list[str]
    removable: list[str]
    deleted: bool


def gc_shards(output_url: str, *, delete: bool = False, min_age_s: float = DEFAULT_STALE_TEMP_AFTER_S) -> GcReport:
    """List (and with ``delete=True`` remove) shard and stale temp files nothing references.

    A dry run by default. A class whose manifest cannot be read keeps all its files, so a damaged
    class is never emptied by gc.
    """
    fs, root = fsspec.core.url_to_fs(output_url)
    root = root.rstrip("/")
    referenced = {_path(fs, shard["uri"]) for _, record in lineage_records(output_url) for shard in record.get("shards", [])}
    kept, removable = [], []
    base = f"{root}/{SHARDS_FOLDER}"
    fs.invalidate_cache(base)
    try:
        folders = [entry for entry in fs.ls(base, detail=True) if entry["type"] == "directory"]
    except FileNotFoundError:
        folders = []
    for folder in sorted(entry["name"].rstrip("/") for entry in folders):
        name = folder.rsplit("/", 1)[-1]
        if not name.startswith("class="):
            continue
        try:
            current = current_class_shard(f"{output_url.rstrip('/')}/{SHARDS_FOLDER}", name[len("class=") :])
        except (ValueError, FileNotFoundError):
            current = None
            protect_all = True
        else:
            protect_all = False
        current_path = _path(fs, current) if current else None
        young = set(_young_files(fs, folder, min_age_s))
        for entry in sorted(fs.ls(folder, detail=False)):
            path = entry.rstrip("/")
            if not is_shard_file_name(path.rsplit("/", 1)[-1]):
                continue
            if protect_all or path == current_path or path in referenced or path in young:
                kept.append(path)
            else:
                removable.append(path)
        removable.extend(stale_temp_files(fs, folder, min_age_s))
    if delete:
        for path in removable:
            try:
                fs.rm_file(path)
            except FileNotFoundError:
                pass
    return GcReport(kept=kept, removable=sorted(removable), deleted=delete)


def _path(fs: fsspec.AbstractFileSystem, uri: str) -> str:
    return fs._strip_protocol(uri).rstrip("/")


def _young_files(fs: fsspec.AbstractFileSystem, folder: str, min_age_s: float) -> list[str]:
    """Files in ``folder`` modified less than ``min_age_s`` ago (or of unknown age: kept to be safe)."""
    now = dt.datetime.now(dt.timezone.utc)
    young = []
    for path in fs.ls(folder, detail=False):
        age = file_age_seconds(fs, path, now)
        if age is None or age < min_age_s:
            young.append(path.rstrip("/"))
    return young
