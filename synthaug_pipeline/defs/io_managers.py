"""The IO manager of every asset: values stored at ``output.url`` as arrays + JSON, never pickles.

Each asset partition lives under ``<output.url>/assets/<asset>/<partition>/`` (``.../<asset>/_/`` when
unpartitioned), written by :func:`synthaug_pipeline.lib.records.write_value`: a content-addressed
``arrays-<sha>.npz`` and a ``value.json`` committed last. A second machine with the same ``output.url``
(``s3://...``) reads what the first wrote; ``$DAGSTER_HOME`` keeps only Dagster's own runs and events.

Shapes are fixed by the partitions, not by how many there are:

* a partitioned upstream is always read as ``{partition: value}`` (one class, all classes or a batch);
* a partitioned asset returns ``PerPartition({partition: value})`` for the partitions of its step (a
  batched backfill hands a step several), or a bare value when its step has exactly one partition.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg

from synthaug_pipeline.defs.resources import SynthaugSettings
from synthaug_pipeline.lib.records import VALUE_FILE, read_value, value_exists, write_value
from synthaug_pipeline.lib.storage import output_filesystem

UNPARTITIONED = "_"


class PerPartition(dict):
    """The values of a partitioned asset's step, one per partition key of the step."""


def asset_folder(output_url: str, asset: str, partition: str | None) -> str:
    """Where one asset partition's value lives under ``output_url``."""
    return f"{output_url.rstrip('/')}/assets/{asset}/{partition if partition is not None else UNPARTITIONED}"


class SynthaugIOManager(dg.ConfigurableIOManager):
    """Asset values under ``<output.url>/assets`` (see the module docstring)."""

    settings: SynthaugSettings

    def _fs_and_base(self):
        profile = self.settings.load()
        fs, base = output_filesystem(profile)
        return fs, base

    def _folder(self, base: str, asset_key: dg.AssetKey, partition: str | None) -> str:
        return asset_folder(base, "/".join(asset_key.path), partition)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        fs, base = self._fs_and_base()
        key = context.asset_key
        info = {"asset": key.to_user_string(), "run_id": context.run_id}
        if not context.has_asset_partitions:
            write_value(fs, self._folder(base, key, None), obj, info)
            return
        partitions = list(context.asset_partition_keys)
        if isinstance(obj, PerPartition):
            missing = [p for p in partitions if p not in obj]
            extra = [p for p in obj if p not in partitions]
            if missing or extra:
                raise ValueError(f"{info['asset']} returned values for {sorted(obj)} but its step covers {partitions}")
            values = dict(obj)
        elif len(partitions) == 1:
            values = {partitions[0]: obj}
        else:
            raise TypeError(f"{info['asset']} covers {len(partitions)} partitions: return PerPartition({{partition: value}})")
        for partition, value in values.items():
            write_value(fs, self._folder(base, key, partition), value, {**info, "partition": partition})

    def load_input(self, context: dg.InputContext) -> Any:
        fs, base = self._fs_and_base()
        key = context.asset_key
        name = key.to_user_string()
        if not context.has_asset_partitions:
            return read_value(fs, self._folder(base, key, None), name)
        keys = list(context.asset_partition_keys)
        if len(keys) > 1:  # a fan-in over classes not all materialized: the consumer checks what it needs
            keys = [k for k in keys if k in stored_partitions(fs, base, "/".join(key.path))]
        return Partitions(fs, base, "/".join(key.path), keys)


class Partitions(Mapping):
    """``{partition: value}`` of a partitioned asset, each value read from storage when it is looked up.

    Nothing is held: a consumer that walks the classes one at a time has one class in memory at a time,
    and one that never looks (a pretrained ``generator`` given every ``real_images`` partition) reads nothing.
    """

    def __init__(self, fs, base: str, asset: str, keys: list[str]):
        self._fs, self._base, self._asset, self._keys = fs, base, asset, list(keys)
        self._known = set(self._keys)

    def __getitem__(self, partition: str) -> Any:
        if partition not in self._known:
            raise KeyError(partition)
        return read_value(self._fs, asset_folder(self._base, self._asset, partition), f"{self._asset}[{partition}]")

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, partition: object) -> bool:
        return partition in self._known

    def __repr__(self) -> str:
        return f"Partitions({self._asset}, {len(self._keys)} partitions)"


def stored_partitions(fs, base: str, asset: str) -> set[str]:
    """The partitions of ``asset`` with a committed value under ``base`` (one listing, not one request per class)."""
    root = f"{base.rstrip('/')}/assets/{asset}"
    forget_listings(fs, root)  # another process (a worker, another machine) may have committed partitions since
    try:
        found = fs.glob(f"{root}/*/{VALUE_FILE}")
    except FileNotFoundError:
        return set()
    return {path.rstrip("/").split("/")[-2] for path in found}


def forget_listings(fs, root: str) -> None:
    """Drop ``fs``'s cached listings of ``root`` and everything under it (object stores cache directory listings
    per filesystem instance, and a Celery worker keeps its instance across steps)."""
    fs.invalidate_cache(root)
    cache = getattr(fs, "dircache", None)
    if cache:
        prefix = fs._strip_protocol(root).rstrip("/") + "/"
        for key in [k for k in list(cache) if str(k).startswith(prefix)]:
            cache.pop(key, None)


def stored(fs, output_url: str, asset: str, partition: str | None) -> bool:
    """Whether ``asset`` (``partition``) has a committed value under the output URL."""
    return value_exists(fs, asset_folder(output_url, asset, partition))


# An input annotated ``Partitions`` accepts any ``{partition: value}`` mapping (tests hand assets plain dicts).
dg.make_python_type_usable_as_dagster_type(
    Partitions,
    dg.DagsterType(
        type_check_fn=lambda _context, value: isinstance(value, Mapping),
        name="Partitions",
        description="{partition key: value} of a partitioned asset, read lazily from output.url",
        typing_type=Mapping,
    ),
)
