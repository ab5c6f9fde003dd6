"""Run the whole asset graph, class by class, on a Dagster instance (what `synthaug run` does).

Each stage is one or more Dagster runs recorded on the instance, so the same
materializations, metadata and checks appear in `dagster dev`. Per-class stages
run once per class partition; shared models are trained once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
import functools
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.defs.resources import default_device, set_progress_listener
from synthaug_pipeline.defs.executors import StagePool, apply_gpu_slots, check_distributable, check_executor_ready, wait_for_classes
from synthaug_pipeline.defs.launch import execute_named_job
from synthaug_pipeline.defs.stages import Stage, derive_stages
from synthaug_pipeline.defs.run_health import BlockedStepReporter, process_tags, reap_dead_runs
from synthaug_pipeline.lib.classifier import reached_ratios, synthetic_images_needed
from synthaug_pipeline.lib.config import Profile, ProfileError, load_profile
from synthaug_pipeline.lib.datasets import check_classes, dataset_class_ids
from synthaug_pipeline.lib.estimate import RunEstimate, estimate_run
from synthaug_pipeline.lib.preflight import check_before_training
from synthaug_pipeline.lib.shards import ShardRef
from synthaug_pipeline.lib.storage import OutputNotWritableError, check_output_writable
from synthaug_pipeline.reuse import ReusePlanner, fingerprint_tags, reused_summary

DEFAULT_DAGSTER_HOME = ".dagster_home"

# The default instance config, used when the working directory has no dagster.yaml.
DEFAULT_DAGSTER_YAML = """\
# Local Dagster instance for synthaug_pipeline. Storage is Dagster's default: SQLite files
# under $DAGSTER_HOME (`synthaug run` / `synthaug dev` use ./.dagster_home).
# GPU-heavy assets (training, sampling) declare pool "gpu"; one at a time per instance.
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def __getattr__(name: str):
    if name == "STAGES":  # the stages of the graph (the same for every profile), derived on first use
        return default_stages()
    raise AttributeError(name)


@functools.lru_cache(maxsize=1)
def default_stages() -> tuple[Stage, ...]:
    return stages_of(build_definitions(None, []))


def stages_of(defs: dg.Definitions) -> tuple[Stage, ...]:
    assets = list(defs.assets or [])
    partitions = next(a.partitions_def for a in assets if a.partitions_def is not None and "real_images" in {k.to_user_string() for k in a.keys})
    return derive_stages(assets, partitions)


class PipelineError(RuntimeError):
    """A stage failed; the message names the stage, the class and the cause."""


@dataclass
class PipelineResult:
    profile: Profile
    seconds: dict[str, float] = field(default_factory=dict)
    failed_checks: list[str] = field(default_factory=list)
    report: dict | None = None
    evaluation: dict | None = None
    catalog: dict | None = None
    run_ids: list[str] = field(default_factory=list)


def prepare_dagster_home(path: str | None = None) -> Path:
    """Point DAGSTER_HOME at a persistent local folder with a dagster.yaml (created if missing)."""
    home = Path(path or os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        project_yaml = Path("dagster.yaml")
        if project_yaml.is_file():
            shutil.copyfile(project_yaml, config)
        else:
            config.write_text(DEFAULT_DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _only_blocking_checks_failed(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run failed only because blocking asset checks failed.

    Dagster fails the step of a failed blocking check (the asset is still written). The check is then
    recorded like any other failed check, the other classes are still scored, and training is refused
    before the classifiers stage with every failed check listed.
    """
    failures = [event for event in result.all_events if event.is_step_failure]
    errors = [event.step_failure_data.error if event.step_failure_data else None for event in failures]
    return bool(errors) and all(error is not None and error.cls_name == "DagsterAssetCheckFailedError" for error in errors)


# Errors whose message is written for the user: shown without their class name.
_USER_ERRORS = {"ValueError", "ProfileError", "DatasetError", "ImageDecodeError", "FileNotFoundError", "FloatingPointError", "PipelineError"}


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name in ("DagsterExecutionStepExecutionError",):
                error = error.cause
            message = " ".join(error.message.split())
            prefix = message.split(": ", 1)[0]
            if prefix.endswith(error.cls_name):  # "synthaug_pipeline.lib.datasets.DatasetError: ..." -> "..." for ours
                message = message[len(prefix) + 2 :] if error.cls_name in _USER_ERRORS else f"{error.cls_name}: {message[len(prefix) + 2 :]}"
            return f"{event.step_key}: {message}"
    return "run failed (see the run's logs in dagster dev)"


def run_pipeline(
    profile_name: str | None,
    overrides: list[str],
    instance: dg.DagsterInstance,
    echo: Callable[[str], None] = print,
    classes: list[str] | None = None,
    resume: bool = True,
    until: str | None = None,
    grid_runs: int = 0,
) -> PipelineResult:
    """Materialize every stage for every class (or ``classes``) and return the evaluation.

    ``classes`` narrows the profile (a ``data.classes`` override), so the partitions, the data, the judge,
    the generator and the classifiers all cover exactly those classes. With ``resume`` (the default),
    materializations left by an earlier run with the same settings and code are reused (:mod:`synthaug_pipeline.reuse`).
    ``until`` names the last stage to run (``synthaug experiment`` stops after "synthetic")
    and the terminal says which. ``grid_runs``: experiment grid points the caller trains after the pipeline
    (counted in the printed time estimate). Runs of this instance whose process died are marked failed and their pool
    slots freed first, so they cannot block this one.
    """
    overrides = with_classes(profile_name, overrides, classes)
    profile = load_profile(profile_name, overrides)
    classes = dataset_class_ids(profile.data)  # the partitions of the definitions below
    defs = build_definitions(profile_name or profile.name, overrides)
    # Failures come back as one line (PipelineError) and warnings through log_warning: no traces in the terminal.
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    # the settings travel in each run's config: a re-execution from the UI uses them, whatever profile the UI serves
    settings = defs.resources["settings"]
    run_config = {**quiet, "resources": {"settings": {"config": {"profile": settings.profile, "overrides": list(settings.overrides)}}}}
    outcome = PipelineResult(profile=profile)
    planner = ReusePlanner.for_definitions(instance, profile, defs) if resume else None

    try:  # an unreachable or read-only output.url fails now, not after the models trained
        check_output_writable(profile)
    except OutputNotWritableError as exc:
        raise PipelineError(str(exc)) from None
    execution = profile.execution
    embedded = execution.executor == "in_process"  # the stage jobs run in this process, in class batches
    if not embedded:
        try:
            check_distributable(overrides, execution.executor)
            check_executor_ready(execution)
        except ProfileError as exc:
            raise PipelineError(str(exc)) from None
    apply_gpu_slots(instance, execution)  # execution.gpu_slots: steps that train or sample at once, across runs
    freed = reap_dead_runs(instance)
    if freed:
        echo(f"      marked {len(freed)} run(s) whose process is gone as failed and freed their pool slots: {', '.join(r[:8] for r in freed)}")

    def materialize(stage: Stage, selection: list[str], partitions: list[str] | None) -> dg.ExecuteInProcessResult:
        tags = {"synthaug/profile": profile.name, "synthaug/stage": stage.name, **process_tags(), **fingerprint_tags(profile, selection)}
        if partitions and len(partitions) > 1:
            tags.update({ASSET_PARTITION_RANGE_START_TAG: partitions[0], ASSET_PARTITION_RANGE_END_TAG: partitions[-1]})
        with BlockedStepReporter(instance, echo):
            if embedded:
                result = execute_named_job(
                    defs,
                    stage.job_name,
                    instance,
                    asset_selection=selection,
                    run_config=run_config,
                    tags=tags,
                    partition_key=partitions[0] if partitions and len(partitions) == 1 else None,
                )
            else:  # the profile's executor: steps in other processes or on workers, a batch of classes per run, retried per step_retries
                if partitions:
                    wait_for_classes(instance, partitions, echo, order=classes)
                result = stage_pool.execute(profile_name or profile.name, overrides, selection, partitions, run_config, tags, OUTPUTS_READ)
        outcome.run_ids.append(result.run_id)
        if not result.success and not _only_blocking_checks_failed(result):
            where = f" (class {partitions[0]})" if partitions and len(partitions) == 1 else (f" (classes {partitions[0]}..{partitions[-1]})" if partitions else "")
            raise PipelineError(f"stage '{stage.name}'{where} failed: {_failure_message(result)}")
        return result

    set_progress_listener(lambda message: echo(f"      {_clock()} {message}"))
    parallel = 1 if embedded else min(execution.max_concurrent, len(classes))
    stage_pool = None if embedded else StagePool(instance, parallel)
    batch = class_batch_size(execution, len(classes))
    try:
        _run_stages(classes, stages_of(defs), _StageRunner(materialize, planner, echo, batch, parallel), outcome, echo, until, grid_runs)
    finally:
        set_progress_listener(None)
        if stage_pool is not None:
            stage_pool.close()
    return outcome


def class_batch_size(execution, classes: int) -> int:
    """Classes per run of a per-class stage: ``execution.classes_per_run`` (a step loads its models once per batch);
    executors other than in_process split the classes so that each of their concurrent runs gets a batch."""
    if execution.executor == "in_process":
        return execution.classes_per_run
    parallel = max(1, min(execution.max_concurrent, classes))
    return max(1, min(execution.classes_per_run, math.ceil(classes / parallel)))


class _StageRunner:
    """Materializes what a stage needs: reused assets are skipped, the rest run together (per-class stages in batches)."""

    def __init__(self, materialize, planner: ReusePlanner | None, echo: Callable[[str], None], batch: int = 1, parallel: int = 1):
        self.materialize, self.planner, self.echo = materialize, planner, echo
        self.batch, self.parallel = batch, parallel

    def will_redo(self, asset: str, partition: str | None = None) -> bool:
        return self.planner is None or self.planner.reusable_run(asset, partition) is None

    def _reused(self, assets: tuple[str, ...], partition: str | None) -> dict[str, str]:
        reused: dict[str, str] = {}
        for asset in assets:
            run_id = self.planner.reusable_run(asset, partition) if self.planner else None
            if run_id is None:
                break  # this asset and everything after it in the stage is redone
            reused[asset] = run_id
        return reused

    def run(self, stage: Stage, partition: str | None, assets: tuple[str, ...] | None = None) -> dict[str, object]:
        """Returns ``{asset: value}`` for the stage's assets that later stages read (evaluation, report)."""
        assets = assets or stage.assets
        reused = self._reused(assets, partition)
        todo = [asset for asset in assets if asset not in reused]
        if reused:
            self.echo(f"      reused: {reused_summary(reused)} (same settings and code)")
        values: dict[str, object] = {asset: self.planner.load(asset, partition) for asset in reused if asset in OUTPUTS_READ}
        if todo:
            result = self.materialize(stage, todo, [partition] if partition else None)
            for asset in todo:
                if self.planner:
                    self.planner.mark_redone(asset, partition)
                if asset in OUTPUTS_READ:
                    values[asset] = result.output_for_node(asset)
        return values

    def run_classes(self, stage: Stage, classes: list[str]) -> Iterator[tuple[list[str], dict[str, dict[str, object]], float]]:
        """Run a per-class stage over ``classes`` in runs of up to ``batch`` consecutive classes that need the same
        assets redone; yields, in class order, each run's classes, ``{asset: {class: value}}`` of the values later
        stages read, and its seconds. With ``parallel`` > 1 (executors other than in_process) up to that many runs go
        at once; the first failure stops new runs from starting, lets the running ones finish, and is raised."""
        plans = [(c, tuple(a for a in stage.assets if a not in self._reused(stage.assets, c))) for c in classes]
        groups: list[tuple[list[str], tuple[str, ...]]] = []
        group: list[str] = []
        for index, (class_id, todo) in enumerate(plans):
            group.append(class_id)
            if index == len(plans) - 1 or len(group) == self.batch or plans[index + 1][1] != todo:
                groups.append((group, todo))
                group = []

        def timed(group: list[str], todo: tuple[str, ...]):
            started = time.perf_counter()
            return self._run_group(stage, group, todo), time.perf_counter() - started

        if self.parallel <= 1:
            for group, todo in groups:
                values, seconds = timed(group, todo)
                yield group, values, seconds
            return
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="synthaug-class") as pool:
            futures = [(group, pool.submit(timed, group, todo)) for group, todo in groups]
            try:
                for group, future in futures:
                    values, seconds = future.result()
                    yield group, values, seconds
            finally:
                for _, future in futures:
                    future.cancel()  # runs not started yet; running ones finish before the pool closes

    def _run_group(self, stage: Stage, group: list[str], todo: tuple[str, ...]) -> dict[str, dict[str, object]]:
        values: dict[str, dict[str, object]] = {}
        reused_assets = [a for a in stage.assets if a not in todo]
        if reused_assets:
            runs = {a: self.planner.reusable_run(a, group[0]) for a in reused_assets}
            who = f"class {group[0]}" if len(group) == 1 else f"{len(group)} classes"
            self.echo(f"      reused for {who}: {reused_summary(runs)} (same settings and code)")
            for asset in reused_assets:
                if asset in OUTPUTS_READ:
                    values[asset] = {c: self.planner.load(asset, c) for c in group}
        if todo:
            result = self.materialize(stage, list(todo), group)
            for asset in todo:
                if self.planner:
                    for c in group:
                        self.planner.mark_redone(asset, c)
                if asset in OUTPUTS_READ:
                    values[asset] = dict(result.output_for_node(asset))
        return values


OUTPUTS_READ = ("class_catalog", "synthetic_shards", "evaluation", "report")  # values the orchestrator reads


def with_classes(profile_name: str | None, overrides: list[str], classes: list[str] | None) -> list[str]:
    """``overrides`` plus a ``data.classes`` override for ``classes`` (validated; unknown ids are an error)."""
    if not classes:
        return list(overrides)
    selected = check_classes(load_profile(profile_name, overrides).data, classes)
    return [*overrides, f"data.classes={json.dumps(selected)}"]


def _run_stages(
    classes, stages, runner: _StageRunner, outcome: PipelineResult, echo: Callable[[str], None], until: str | None = None,
    grid_runs: int = 0,
) -> None:
    profile = outcome.profile
    stages = stages[: [s.name for s in stages].index(until) + 1] if until else stages
    for number, stage in enumerate(stages, start=1):
        echo(
            f"[{number}/{len(stages)}] {_clock()} {stage.name}: {stage.description}"
            + (f" ({len(classes)} classes)" if stage.per_class else "")
        )
        if stage.name == "models":
            try:
                trains_classifiers = "classifiers" in [later.name for later in stages]
                echo(f"      {_estimate(profile, outcome.catalog, classes, runner, trains_classifiers, grid_runs).describe()}")
            except Exception as exc:  # noqa: BLE001 - the estimate is advice: the stage itself reports a real failure
                echo(f"      estimate: not available ({type(exc).__name__}: {exc})")
        started = time.perf_counter()
        if stage.name == "classifiers":
            if len(classes) < 2:
                echo("      skipped: a classifier comparison needs at least two classes; the class's shard is written")
                continue
            if outcome.failed_checks:
                raise PipelineError(
                    "blocking shard checks failed, not training on them: "
                    + "; ".join(outcome.failed_checks)
                    + ". Loosen filter.min_confidence / filter.min_accepted_per_class or improve the generator."
                )
        if stage.per_class:
            for group, values, seconds in runner.run_classes(stage, classes):
                for shard in (values.get("synthetic_shards") or {}).values():
                    _record_failed_checks(shard, outcome)
                    _check_supply(profile, outcome.catalog, shard, echo)
                who = f"class {group[0]}" if len(group) == 1 else f"classes {group[0]}..{group[-1]} ({len(group)})"
                echo(f"      {who}: {seconds:.1f}s")
        else:
            values = {}
            for asset in stage.assets:  # one run per asset: a failure stops the pipeline at once
                values.update(runner.run(stage, None, (asset,)))
                if asset == "class_catalog":
                    outcome.catalog = values["class_catalog"]
                    _check_catalog(profile, outcome.catalog)
            outcome.evaluation = values.get("evaluation", outcome.evaluation)
            outcome.report = values.get("report", outcome.report)
        outcome.seconds[stage.name] = time.perf_counter() - started
        echo(f"      done in {outcome.seconds[stage.name]:.1f}s")


def _estimate(
    profile: Profile, catalog: dict, classes: list[str], runner: _StageRunner, trains_classifiers: bool, grid_runs: int
) -> RunEstimate:
    """Time a few steps of each model this run will still train, on this machine (see lib.estimate); ``grid_runs``
    experiment grid points follow the pipeline."""
    return estimate_run(
        profile,
        len(classes),
        tuple(catalog["image_shape"]),
        default_device(),
        generator=runner.will_redo("generator"),
        judge=runner.will_redo("judge"),
        sample_classes=sum(runner.will_redo("synthetic_images", c) for c in classes),
        classifiers=trains_classifiers and (runner.will_redo("classifier_baseline") or runner.will_redo("classifier_augmented")),
        experiment_runs=grid_runs,
    )


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _check_catalog(profile: Profile, catalog: dict) -> None:
    """The checks of the profile against the data that need the class counts (also when the catalog is reused)."""
    check_before_training(profile, catalog["class_ids"], [c["train"] for c in catalog["classes"]])


def _record_failed_checks(shard: ShardRef, outcome: PipelineResult) -> None:
    for name, passed in shard.checks.items():
        if not passed:
            outcome.failed_checks.append(f"synthetic_shards[{shard.class_id}] {name}")


def _check_supply(profile: Profile, catalog: dict, shard: ShardRef, echo: Callable[[str], None]) -> None:
    """Stop as soon as a class has fewer accepted images than ``augmented.synthetic_ratio`` needs, not at training."""
    ratio = profile.augmented.synthetic_ratio
    if ratio == 0 or len(catalog["class_ids"]) < 2 or not shard.passed:
        return  # nothing to supply, or a failed blocking check already refuses the class (listed before training)
    train = next(c["train"] for c in catalog["classes"] if c["class_id"] == shard.class_id)
    accepted = shard.num_accepted
    reached = reached_ratios([train], [accepted], ratio)  # the ceil(ratio x real) rule, in one place
    if reached is not None:
        needed, fits = int(synthetic_images_needed([train], ratio)[0]), float(reached[0])
        if profile.augmented.shortfall == "use_available":
            echo(
                f"      warning: class {shard.class_id!r}: {accepted} accepted of the {needed} that ratio {ratio:g} needs; "
                f"it trains at ratio {fits:.3g} (augmented.shortfall=use_available)"
            )
            return
        raise PipelineError(
            f"class {shard.class_id!r}: the filter accepted {accepted} of {shard.num_rows} synthetic images but "
            f"augmented.synthetic_ratio={ratio:g} needs {needed} ({ratio:g} x {train} real). Re-run the same command with a "
            f"looser filter (e.g. --set filter.min_confidence=...) or a ratio up to {math.floor(fits * 1000) / 1000:g} "
            "(--set augmented.synthetic_ratio=...): the models, images and scores of this run are reused, only shards and "
            "classifiers are redone; or set augmented.shortfall=use_available to train short classes at the ratio they reach"
        )
