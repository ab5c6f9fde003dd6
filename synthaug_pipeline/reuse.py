"""Resume: which materializations a re-run of `synthaug run` may reuse instead of redoing.

An asset partition is reused when its latest materialization came from a step that succeeded in a
`synthaug run` run whose fingerprint for that asset equals today's, its stored value still exists, and
nothing upstream of it was redone in this run. The fingerprint hashes the code the asset runs (its module
and every package module that module imports, directly or not: :func:`code_version`; docstrings, comments,
layout and setting descriptions do not count), the output URL and the profile settings the asset reads
(:data:`ASSET_SECTIONS`, narrowed by :data:`SECTION_VIEWS`): a changed filter threshold redoes the shards
and what trains on them, and reuses the models, images and scores; an edit to the experiment grid's code or
to the number of images to sample keeps a trained generator.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from collections.abc import Callable, Iterable
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


# The module that defines each asset (checked against the definitions by a test). An asset's code version covers
# this module and every package module it imports; an asset not listed here gets the whole package's.
ASSET_MODULES: dict[str, str] = {
    **dict.fromkeys(("class_catalog", "real_images"), "synthaug_pipeline.defs.data.assets"),
    "class_prompts": "synthaug_pipeline.defs.prompts.assets",
    **dict.fromkeys(("generator", "synthetic_images"), "synthaug_pipeline.defs.generation.assets"),
    **dict.fromkeys(("judge", "real_features", "synthetic_scores", "synthetic_shards"), "synthaug_pipeline.defs.scoring.assets"),
    **dict.fromkeys(("classifier_baseline", "classifier_augmented"), "synthaug_pipeline.defs.training.assets"),
    **dict.fromkeys(("evaluation", "report"), "synthaug_pipeline.defs.evaluation.assets"),
    **dict.fromkeys(("experiment_run", "control_samples", "experiment_summary"), "synthaug_pipeline.defs.experiments.assets"),
}

# Generator settings the DDPM backend reads only when sampling (synthetic_images), never when training: changing
# them re-samples and keeps the trained generator. (Pretrained backends check them when loading: whole section.)
# A test trains a tiny DDPM with every one of them changed and gets the same weights.
DDPM_SAMPLING_ONLY = frozenset({
    "sampler", "sample_steps", "guidance_scale", "images_per_class", "sample_batch_size", "pretrained_batch_size",
    "negative_prompt", "strength", "output_size", "conditioning_augmentations", "image_variation", "safety_checker",
})


def _generator_training_view(profile: Profile) -> dict:
    settings = profile.generator.model_dump(mode="json")
    if profile.generator.backend != "ddpm":
        return settings
    return {name: value for name, value in settings.items() if name not in DDPM_SAMPLING_ONLY}


# (asset, section) -> the part of a section an asset reads, where it does not read it whole.
SECTION_VIEWS: dict[tuple[str, str], Callable[[Profile], dict]] = {("generator", "generator"): _generator_training_view}

_PACKAGE = "synthaug_pipeline"
# The settings module is not code an asset runs: what it gives an asset (defaults, validation, the values an override
# sets, output_url) reaches it as the settings' values, which the fingerprint hashes section by section. Hashing it as
# code made every new setting (one line in any section) retrain every model.
SETTINGS_MODULE = "synthaug_pipeline.lib.config"
# Checks that only refuse (raise before anything runs) or word a warning never change what an asset writes, so their
# code (and what they import) is not part of an asset's code version: the catalog's grid check imports the experiment
# grid's code, which made every edit to the grid redo the catalog, the real images and, after them, the generator.
CHECK_MODULES = frozenset({"synthaug_pipeline.lib.preflight"})


def _package_modules(root: Path) -> dict[str, Path]:
    modules = {}
    for path in root.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        parts = (_PACKAGE, *path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported_modules(name: str, tree: ast.Module, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its body (lazy imports too), with their parent packages."""
    package = name if modules[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    closure = set()
    for module in found:
        parts = module.split(".")
        closure.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules)
    return closure


def _normalized(tree: ast.Module) -> str:
    """The module's code without what cannot change a result: docstrings, comments and layout (ast.dump has
    neither), and ``description=`` arguments (setting and asset descriptions)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        elif isinstance(node, ast.Call):
            node.keywords = [k for k in node.keywords if k.arg != "description"]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


@functools.lru_cache(maxsize=4)
def _module_index(root: Path) -> tuple[dict[str, tuple[bytes, frozenset[str]]], bytes]:
    """Every package module -> (sha256 of its normalized code, the package modules it imports), and the sha256 of the
    package's data files (read through importlib.resources, not imports; every asset's version covers them). Profile
    files are left out: the settings they give enter the fingerprint by value. Read once per process."""
    modules = _package_modules(root)
    index = {}
    for name, path in modules.items():
        tree = _parse(path)
        imports = frozenset(_imported_modules(name, tree, modules))
        index[name] = (hashlib.sha256(_normalized(tree).encode()).digest(), imports)
    data = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in relative.parts and relative.parts[0] != "profiles":
            data.update(relative.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return index, data.digest()


@functools.lru_cache(maxsize=None)
def code_version(asset: str | None = None, root: Path | None = None) -> str:
    """sha256 (16 hex) of the code ``asset`` runs: its defining module (:data:`ASSET_MODULES`) and every package
    module that imports, directly or not, normalized (:func:`_normalized`), except the settings module
    (:data:`SETTINGS_MODULE`: settings enter the fingerprint by value) and the refuse-only checks (:data:`CHECK_MODULES`,
    not followed either); the whole package for an asset not listed
    (or None). Editing the CLI, the experiment grid or the report keeps a trained generator; editing the
    diffusion code does not. ``root``: the package folder (tests use a copy)."""
    index, data = _module_index(root or Path(synthaug_pipeline.__file__).parent)
    start = ASSET_MODULES.get(asset) if asset else None
    if start is None:
        covered = set(index)
    else:
        covered, todo = set(), [start, _PACKAGE]
        while todo:
            name = todo.pop()
            if name not in covered and name != SETTINGS_MODULE and name not in CHECK_MODULES:
                covered.add(name)
                todo.extend(index[name][1] - covered)
    digest = hashlib.sha256(data)
    for name in sorted(covered):
        digest.update(name.encode() + b"\0" + index[name][0])
    return digest.hexdigest()[:16]


def _section_settings(profile: Profile, asset: str, section: str) -> dict:
    view = SECTION_VIEWS.get((asset, section))
    return view(profile) if view else getattr(profile, section).model_dump(mode="json")


def asset_fingerprint(profile: Profile, asset: str) -> str:
    sections = ASSET_SECTIONS.get(asset) or tuple(type(profile).model_fields)
    payload = {
        "asset": asset,
        "code": code_version(asset),
        "output": profile.output_url,
        "settings": {name: _section_settings(profile, asset, name) for name in sections if name not in ("name", "description", "execution")},
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
