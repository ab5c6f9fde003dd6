"""The IO manager of every asset: Dagster's filesystem storage, with one rule made explicit.

Dagster's UPath IO managers hand a downstream asset that reads *every* class partition a
``{class_id: value}`` dict, except when the partition set has exactly one key: then they hand the
bare value. An asset typed ``real_images: dict[str, dict]`` then receives one class's record, and any
one-class run (``--classes 3``, a one-class folder) fails its type check. Here the shape depends on the
mapping, not on the count: a step reads one bare value only when it is partitioned like its upstream
and asks for its own partition (the identity mapping); every other partitioned read is a dict.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager


class ClassPartitionsIOManager(PickledObjectFilesystemIOManager):
    """Pickles under the instance's storage folder; fan-in reads are always ``{partition: value}``."""

    def load_partitions(self, context: dg.InputContext):
        keys = list(context.asset_partition_keys)
        own_partition = context.has_partition_key and keys == [context.partition_key]
        if own_partition:
            return super().load_partitions(context)
        paths = self._get_paths_for_partitions(context)
        loaded = {key: self._load_partition_from_path(context, key, paths[key]) for key in keys}
        return {key: value for key, value in loaded.items() if value is not None}


class SynthaugIOManager(dg.ConfigurableIOManagerFactory):
    """Where asset values live: ``base_dir``, or the Dagster instance's storage folder by default."""

    base_dir: str | None = None

    def create_io_manager(self, context: dg.InitResourceContext) -> ClassPartitionsIOManager:
        base_dir = self.base_dir or context.instance.storage_directory()
        return ClassPartitionsIOManager(base_dir=base_dir)
