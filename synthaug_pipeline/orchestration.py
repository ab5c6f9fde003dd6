"""Run the whole asset graph, class by class, on a Dagster instance (what `synthaug run` does).

Each stage is one or more Dagster runs recorded on the instance, so the same
materializations, metadata and checks appear in `dagster dev`. Per-class stages
run once per class partition; shared models are trained once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.defs.resources import set_progress_listener
from synthaug_pipeline.lib.config import Profile, load_profile
from synthaug_pipeline.lib.datasets import check_classes, dataset_class_ids

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


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name in ("DagsterExecutionStepExecutionError",):
                error = error.cause
            return f"{event.step_key}: {error.message.strip()}"
    return "run failed (see the run's logs in dagster dev)"


def run_pipeline(
    profile_name: str | None,
    overrides: list[str],
    instance: dg.DagsterInstance,
    echo: Callable[[str], None] = print,
    classes: list[str] | None = None,
) -> PipelineResult:
    """Materialize every stage for every class (or ``classes``) and return the evaluation.

    ``classes`` narrows the profile (a ``data.classes`` override), so the partitions, the data, the judge,
    the generator and the classifiers all cover exactly those classes.
    """
    overrides = with_classes(profile_name, overrides, classes)
    profile = load_profile(profile_name, overrides)
    classes = dataset_class_ids(profile.data)  # the partitions of the definitions below
    defs = build_definitions(profile_name or profile.name, overrides)
    assets = list(defs.assets or [])
    resources = dict(defs.resources or {})
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    outcome = PipelineResult(profile=profile)

    def materialize(stage: Stage, partition: str | None) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            assets,
            selection=list(stage.assets),
            partition_key=partition,
            instance=instance,
            resources=resources,
            run_config=quiet,
            raise_on_error=False,
            tags={"synthaug/profile": profile.name, "synthaug/stage": stage.name},
        )
        outcome.run_ids.append(result.run_id)
        if not result.success and not _only_blocking_checks_failed(result):
            where = f" (class {partition})" if partition else ""
            raise PipelineError(f"stage '{stage.name}'{where} failed: {_failure_message(result)}")
        for check in result.get_asset_check_evaluations():
            if not check.passed:
                outcome.failed_checks.append(f"{check.asset_key.to_user_string()}[{partition}] {check.check_name}")
        return result

    set_progress_listener(lambda message: echo(f"      {message}"))
    try:
        _run_stages(classes, materialize, outcome, echo)
    finally:
        set_progress_listener(None)
    return outcome


def with_classes(profile_name: str | None, overrides: list[str], classes: list[str] | None) -> list[str]:
    """``overrides`` plus a ``data.classes`` override for ``classes`` (validated; unknown ids are an error)."""
    if not classes:
        return list(overrides)
    selected = check_classes(load_profile(profile_name, overrides).data, classes)
    return [*overrides, f"data.classes={json.dumps(selected)}"]


def _run_stages(classes, materialize, outcome: PipelineResult, echo: Callable[[str], None]) -> None:
    for number, stage in enumerate(STAGES, start=1):
        echo(f"[{number}/{len(STAGES)}] {stage.name}: {stage.description}" + (f" ({len(classes)} classes)" if stage.per_class else ""))
        started = time.perf_counter()
        if stage.name == "classifiers" and outcome.failed_checks:
            raise PipelineError(
                "blocking shard checks failed, not training on them: "
                + "; ".join(outcome.failed_checks)
                + ". Loosen filter.min_confidence / filter.min_accepted_per_class or improve the generator."
            )
        if stage.per_class:
            for class_id in classes:
                class_started = time.perf_counter()
                materialize(stage, class_id)
                echo(f"      class {class_id}: {time.perf_counter() - class_started:.1f}s")
        else:
            result = materialize(stage, None)
            if "evaluation" in stage.assets:
                outcome.evaluation = result.output_for_node("evaluation")
                outcome.report = result.output_for_node("report")
        outcome.seconds[stage.name] = time.perf_counter() - started
        echo(f"      done in {outcome.seconds[stage.name]:.1f}s")
