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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.defs.executors import StagePool, apply_gpu_slots, check_distributable, check_executor_ready, wait_for_class
from synthaug_pipeline.defs.resources import default_device, set_progress_listener
from synthaug_pipeline.defs.run_health import BlockedStepReporter, process_tags, reap_dead_runs
from synthaug_pipeline.lib.classifier import reached_ratios, synthetic_images_needed
from synthaug_pipeline.lib.config import Profile, ProfileError, load_profile
from synthaug_pipeline.lib.datasets import check_classes, dataset_class_ids
from synthaug_pipeline.lib.estimate import RunEstimate, estimate_run
from synthaug_pipeline.lib.preflight import check_before_training
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


@dataclass(frozen=True)
class Stage:
    """Assets materialized together; ``per_class`` stages run once per class partition."""

    name: str
    assets: tuple[str, ...]
    per_class: bool
    description: str


STAGES = (
    Stage("catalog", ("class_catalog",), False, "load the dataset and list classes"),
    Stage("real images", ("real_images", "class_prompts"), True, "split real images and write prompts per class"),
    Stage("models", ("judge", "generator"), False, "train the judge and the diffusion generator"),
    Stage(
        "synthetic",
        ("real_features", "synthetic_images", "synthetic_scores", "synthetic_shards"),
        True,
        "sample, score, filter and write shards per class",
    ),
    Stage("classifiers", ("classifier_baseline", "classifier_augmented", "evaluation", "report"), False, "train, evaluate, report"),
)


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
) -> PipelineResult:
    """Materialize every stage for every class (or ``classes``) and return the evaluation.

    ``classes`` narrows the profile (a ``data.classes`` override), so the partitions, the data, the judge,
    the generator and the classifiers all cover exactly those classes. With ``resume`` (the default),
    materializations left by an earlier run with the same settings and code are reused (:mod:`synthaug_pipeline.reuse`)
    and the terminal says which. Runs of this instance whose process died are marked failed and their pool
    slots freed first, so they cannot block this one.
    """
    overrides = with_classes(profile_name, overrides, classes)
    profile = load_profile(profile_name, overrides)
    classes = dataset_class_ids(profile.data)  # the partitions of the definitions below
    defs = build_definitions(profile_name or profile.name, overrides)
    assets = list(defs.assets or [])
    resources = dict(defs.resources or {})
    # Failures come back as one line (PipelineError) and warnings through log_warning: no traces in the terminal.
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    outcome = PipelineResult(profile=profile)
    planner = ReusePlanner.for_definitions(instance, profile, defs) if resume else None

    try:  # an unreachable or read-only output.url fails now, not after the models trained
        check_output_writable(profile)
    except OutputNotWritableError as exc:
        raise PipelineError(str(exc)) from None
    execution = profile.execution
    embedded = execution.executor == "in_process" and execution.step_retries == 0  # dg.materialize, as always
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

    def materialize(stage: Stage, selection: list[str], partition: str | None) -> dg.ExecuteInProcessResult:
        tags = {"synthaug/profile": profile.name, "synthaug/stage": stage.name, **process_tags(), **fingerprint_tags(profile, selection)}
        with BlockedStepReporter(instance, echo):
            if embedded:
                result = dg.materialize(
                    assets,
                    selection=selection,
                    partition_key=partition,
                    instance=instance,
                    resources=resources,
                    run_config=quiet,
                    raise_on_error=False,
                    tags=tags,
                )
            else:  # the profile's executor: steps in other processes or on workers, retried per execution.step_retries
                if partition is not None:
                    wait_for_class(instance, partition, echo)
                result = stage_pool.execute(profile_name or profile.name, overrides, selection, partition, quiet, tags, OUTPUTS_READ)
        outcome.run_ids.append(result.run_id)
        if not result.success and not _only_blocking_checks_failed(result):
            where = f" (class {partition})" if partition else ""
            raise PipelineError(f"stage '{stage.name}'{where} failed: {_failure_message(result)}")
        for check in result.get_asset_check_evaluations():
            if not check.passed:
                outcome.failed_checks.append(f"{check.asset_key.to_user_string()}[{partition}] {check.check_name}")
        return result

    set_progress_listener(lambda message: echo(f"      {_clock()} {message}"))
    parallel = 1 if execution.executor == "in_process" else min(execution.max_concurrent, len(classes))
    stage_pool = None if embedded else StagePool(instance, parallel)
    try:
        _run_stages(classes, _StageRunner(materialize, planner, echo, parallel), outcome, echo)
    finally:
        set_progress_listener(None)
        if stage_pool is not None:
            stage_pool.close()
    return outcome


class _StageRunner:
    """Materializes what a stage needs for one partition (or none): reused assets are skipped, the rest run together."""

    def __init__(self, materialize, planner: ReusePlanner | None, echo: Callable[[str], None], parallel: int = 1):
        self.materialize, self.planner, self.echo, self.parallel = materialize, planner, echo, parallel

    def run_classes(self, stage: Stage, classes: list[str]):
        """``(class_id, values, seconds)`` per class in class order; up to ``parallel`` class runs at once.

        The first failure stops new classes from starting, lets the running ones finish, and is raised."""
        if self.parallel <= 1:
            for class_id in classes:
                started = time.perf_counter()
                yield class_id, self.run(stage, class_id), time.perf_counter() - started
            return

        def timed(class_id: str):
            started = time.perf_counter()
            return self.run(stage, class_id), time.perf_counter() - started

        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="synthaug-class") as pool:
            futures = [(class_id, pool.submit(timed, class_id)) for class_id in classes]
            try:
                for class_id, future in futures:
                    values, seconds = future.result()
                    yield class_id, values, seconds
            finally:
                for _, future in futures:
                    future.cancel()  # classes not started yet; running ones finish before the pool closes

    def will_redo(self, asset: str, partition: str | None = None) -> bool:
        return self.planner is None or self.planner.reusable_run(asset, partition) is None

    def run(self, stage: Stage, partition: str | None, assets: tuple[str, ...] | None = None) -> dict[str, object]:
        """Returns ``{asset: value}`` for the stage's assets that later stages read (evaluation, report, shards)."""
        assets = assets or stage.assets
        reused: dict[str, str] = {}
        for asset in assets:
            run_id = self.planner.reusable_run(asset, partition) if self.planner else None
            if run_id is None:
                break  # this asset and everything after it in the stage is redone
            reused[asset] = run_id
        todo = [asset for asset in assets if asset not in reused]
        if reused:
            self.echo(f"      reused{f' for class {partition}' if partition else ''}: {reused_summary(reused)} (same settings and code)")
        values: dict[str, object] = {asset: self.planner.load(asset, partition) for asset in reused if asset in OUTPUTS_READ}
        if todo:
            result = self.materialize(stage, todo, partition)
            for asset in todo:
                if self.planner:
                    self.planner.mark_redone(asset, partition)
                if asset in OUTPUTS_READ:
                    values[asset] = result.output_for_node(asset)
        return values


OUTPUTS_READ = ("class_catalog", "synthetic_shards", "evaluation", "report")  # values the orchestrator reads


def with_classes(profile_name: str | None, overrides: list[str], classes: list[str] | None) -> list[str]:
    """``overrides`` plus a ``data.classes`` override for ``classes`` (validated; unknown ids are an error)."""
    if not classes:
        return list(overrides)
    selected = check_classes(load_profile(profile_name, overrides).data, classes)
    return [*overrides, f"data.classes={json.dumps(selected)}"]


def _run_stages(classes, runner: _StageRunner, outcome: PipelineResult, echo: Callable[[str], None]) -> None:
    profile = outcome.profile
    for number, stage in enumerate(STAGES, start=1):
        echo(
            f"[{number}/{len(STAGES)}] {_clock()} {stage.name}: {stage.description}"
            + (f" ({len(classes)} classes)" if stage.per_class else "")
        )
        if stage.name == "models":
            try:
                echo(f"      {_estimate(profile, outcome.catalog, classes, runner).describe()}")
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
            for class_id, values, seconds in runner.run_classes(stage, classes):
                if "synthetic_shards" in values:
                    _check_supply(profile, outcome.catalog, values["synthetic_shards"], echo)
                echo(f"      class {class_id}: {seconds:.1f}s")
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


def _estimate(profile: Profile, catalog: dict, classes: list[str], runner: _StageRunner) -> RunEstimate:
    """Time a few steps of each model this run will still train, on this machine (see lib.estimate)."""
    return estimate_run(
        profile,
        len(classes),
        tuple(catalog["image_shape"]),
        default_device(),
        generator=runner.will_redo("generator"),
        judge=runner.will_redo("judge"),
        sample_classes=sum(runner.will_redo("synthetic_images", c) for c in classes),
        classifiers=runner.will_redo("classifier_baseline") or runner.will_redo("classifier_augmented"),
    )


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _check_catalog(profile: Profile, catalog: dict) -> None:
    """The checks of the profile against the data that need the class counts (also when the catalog is reused)."""
    check_before_training(profile, catalog["class_ids"], [c["train"] for c in catalog["classes"]])


def _check_supply(profile: Profile, catalog: dict, shard: dict, echo: Callable[[str], None]) -> None:
    """Stop as soon as a class has fewer accepted images than ``augmented.synthetic_ratio`` needs, not at training."""
    ratio = profile.augmented.synthetic_ratio
    if ratio == 0 or len(catalog["class_ids"]) < 2 or not all((shard.get("checks") or {}).values()):
        return  # nothing to supply, or a failed blocking check already refuses the class (listed before training)
    train = next(c["train"] for c in catalog["classes"] if c["class_id"] == shard["class_id"])
    accepted = shard["num_accepted"]
    reached = reached_ratios([train], [accepted], ratio)  # the ceil(ratio x real) rule, in one place
    if reached is not None:
        needed, fits = int(synthetic_images_needed([train], ratio)[0]), float(reached[0])
        if profile.augmented.shortfall == "use_available":
            echo(
                f"      warning: class {shard['class_id']!r}: {accepted} accepted of the {needed} that ratio {ratio:g} needs; "
                f"it trains at ratio {fits:.3g} (augmented.shortfall=use_available)"
            )
            return
        raise PipelineError(
            f"class {shard['class_id']!r}: the filter accepted {accepted} of {shard['num_rows']} synthetic images but "
            f"augmented.synthetic_ratio={ratio:g} needs {needed} ({ratio:g} x {train} real). Re-run the same command with a "
            f"looser filter (e.g. --set filter.min_confidence=...) or a ratio up to {math.floor(fits * 1000) / 1000:g} "
            "(--set augmented.synthetic_ratio=...): the models, images and scores of this run are reused, only shards and "
            "classifiers are redone; or set augmented.shortfall=use_available to train short classes at the ratio they reach"
        )
