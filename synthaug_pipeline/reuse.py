"""Resume: which materializations a re-run of `synthaug run` may reuse instead of redoing.

An asset partition is reused when its latest materialization came from a step that succeeded in a
`synthaug run` run whose fingerprint for that asset equals today's, its stored value still exists, and
nothing upstream of it was redone in this run. The fingerprint hashes the package's code (every
``.py`` and profile ``.yaml`` file), the output URL and the profile sections the asset reads
(:data:`ASSET_SECTIONS`): a changed filter threshold redoes the shards and what trains on them, and
reuses the models, images and scores.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.execution.stats import StepEventStatus

import synthaug_pipeline
from synthaug_pipeline.defs.instance_queries import latest_materializations
from synthaug_pipeline.defs.io_managers import stored
from synthaug_pipeline.defs.resources import latest_materialization
from synthaug_pipeline.lib.config import Profile
from synthaug_pipeline.lib.storage import output_filesystem

FINGERPRINT_TAG = "synthaug/fingerprint."  # + asset name: one tag per asset the run materializes

# The profile sections each asset reads itself; what it reads through its inputs is covered by
# redoing everything downstream of a redone asset. Assets not listed here read every section.
ASSET_SECTIONS: dict[str, tuple[str, ...]] = {
    "class_catalog": ("data",),
    "real_images": ("data",),
    "class_prompts": ("data", "prompts"),
    "judge": ("data", "judge"),
    "generator": ("data", "generator"),
    "real_features": ("data", "judge", "scoring"),
    "synthetic_images": ("data", "generator", "prompts"),
    "synthetic_scores": ("data", "generator", "prompts", "judge", "scoring"),
    "synthetic_shards": ("data", "generator", "prompts", "judge", "scoring", "filter", "output"),
    "classifier_baseline": ("data", "classifier", "evaluation"),
    "classifier_augmented": ("data", "classifier", "augmented", "evaluation", "filter"),
    "evaluation": ("data", "classifier", "augmented", "evaluation"),
    # The grid's own assets: not the whole experiments section (adding an arm, a seed or a ratio must not redo every
    # point). experiment_run also compares each point's setup fingerprint (lib.experiments.setup_fingerprint: the
    # experiments settings that point uses, the shards' content, its control generator); control_samples reads the
    # control settings below.
    "experiment_run": ("data", "classifier", "evaluation"),
    "control_samples": ("data", "generator"),
}


def _control_settings(profile: Profile) -> dict:
    from synthaug_pipeline.lib.experiments import control_images_per_class

    cfg = profile.experiments
    return {"few_shot_k": cfg.few_shot_k, "train_steps": cfg.control_train_steps, "images_per_class": control_images_per_class(cfg)}


# Settings an asset reads from a section it does not read whole (ASSET_SECTIONS): name -> what it reads.
ASSET_SETTINGS = {"control_samples": _control_settings}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 (16 hex) of the package's source and profiles: any code change redoes every asset."""
    root = Path(synthaug_pipeline.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def asset_fingerprint(profile: Profile, asset: str) -> str:
    sections = ASSET_SECTIONS.get(asset) or tuple(type(profile).model_fields)
    payload = {
        "asset": asset,
        "code": code_version(),
        "output": profile.output_url,
        "settings": {name: getattr(profile, name).model_dump(mode="json") for name in sections if name not in ("name", "description", "execution")},
    }
    if asset in ASSET_SETTINGS:
        payload["read"] = ASSET_SETTINGS[asset](profile)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint_tags(profile: Profile, assets: Iterable[str]) -> dict[str, str]:
    return {FINGERPRINT_TAG + asset: asset_fingerprint(profile, asset) for asset in assets}


@dataclass
class ReusePlanner:
    """Decides, asset partition by asset partition, whether this run may reuse the last materialization."""

    instance: dg.DagsterInstance
    profile: Profile
    defs: dg.Definitions
    upstream: dict[str, set[str]]  # asset -> the assets it reads
    partitioned: set[str]
    redone: set[tuple[str, str | None]] = field(default_factory=set)
    _step_status: dict[str, dict[str, StepEventStatus]] = field(default_factory=dict)
    # what the instance says of each asset partition, looked up once (the estimate asks before the stage does)
    _recorded: dict[tuple[str, str | None], str | None] = field(default_factory=dict)
    # the latest materialization of every partition of a partitioned asset: one query per asset, not per class
    _latest: dict[str, dict[str, object]] = field(default_factory=dict)
    _runs: dict[str, object] = field(default_factory=dict)

    @classmethod
    def for_definitions(cls, instance: dg.DagsterInstance, profile: Profile, defs: dg.Definitions) -> ReusePlanner:
        graph = defs.resolve_asset_graph()
        upstream, partitioned = {}, set()
        for key in graph.get_all_asset_keys():
            node = graph.get(key)
            name = key.to_user_string()
            upstream[name] = {parent.to_user_string() for parent in node.parent_keys}
            if node.partitions_def is not None:
                partitioned.add(name)
        return cls(instance, profile, defs, upstream, partitioned)

    def reusable_run(self, asset: str, partition: str | None) -> str | None:
        """The run id whose materialization of ``asset`` (``partition``) this run can reuse, or None."""
        if self._upstream_redone(asset, partition):
            return None
        if (asset, partition) not in self._recorded:
            self._recorded[asset, partition] = self._valid_materialization(asset, partition)
        return self._recorded[asset, partition]

    def _valid_materialization(self, asset: str, partition: str | None) -> str | None:
        """The run of the latest materialization if it is complete and made with today's fingerprint."""
        record = self._latest_record(asset, partition)
        if record is None:
            return None
        run_id = record.event_log_entry.run_id
        if run_id not in self._runs:
            self._runs[run_id] = self.instance.get_run_by_id(run_id)
        run = self._runs[run_id]
        if run is None or run.tags.get(FINGERPRINT_TAG + asset) != asset_fingerprint(self.profile, asset):
            return None
        if self._step_succeeded(run_id, asset) and self._stored(asset, partition):
            return run_id
        return None

    def _latest_record(self, asset: str, partition: str | None):
        if partition is None or asset not in self.partitioned:
            return latest_materialization(self.instance, asset, partition)
        if asset not in self._latest:
            self._latest[asset] = latest_materializations(self.instance, asset)
        return self._latest[asset].get(partition)

    def mark_redone(self, asset: str, partition: str | None) -> None:
        self.redone.add((asset, partition))
        self._recorded.pop((asset, partition), None)  # its latest materialization is now this run's
        self._latest.pop(asset, None)  # looked up again (once) if asked

    def _upstream_redone(self, asset: str, partition: str | None) -> bool:
        for parent in self.upstream.get(asset, ()):
            if parent in self.partitioned:
                if partition is not None and asset in self.partitioned:
                    if (parent, partition) in self.redone:
                        return True
                elif any(done == parent for done, _ in self.redone):
                    return True
            elif (parent, None) in self.redone:
                return True
        return False

    def _step_succeeded(self, run_id: str, asset: str) -> bool:
        if run_id not in self._step_status:
            self._step_status[run_id] = {stat.step_key: stat.status for stat in self.instance.get_run_step_stats(run_id)}
        return self._step_status[run_id].get(asset) == StepEventStatus.SUCCESS

    def _stored(self, asset: str, partition: str | None) -> bool:
        return stored(*output_filesystem(self.profile), asset, partition)

    def load(self, asset: str, partition: str | None = None):
        """The stored value of a reused asset, read through the definitions' IO manager."""
        value = self.defs.load_asset_value(dg.AssetKey(asset), instance=self.instance, partition_key=partition)
        return value[partition] if partition is not None else value


def reused_summary(reused: dict[str, str]) -> str:
    """``{asset: run_id}`` -> "judge, generator (run 1a2b3c4d)" for the terminal."""
    by_run: dict[str, list[str]] = {}
    for asset, run_id in reused.items():
        by_run.setdefault(run_id, []).append(asset)
    return "; ".join(f"{', '.join(assets)} (run {run_id[:8]})" for run_id, assets in by_run.items())
