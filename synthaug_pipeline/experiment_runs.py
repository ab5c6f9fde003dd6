"""Run a profile's experiment grid through the asset graph (what `synthaug experiment` does).

1. Check the grid against the data before anything trains (class counts, pools, arms, validation split).
2. Materialize the pipeline up to the shards (:func:`~synthaug_pipeline.orchestration.run_pipeline`, with its
   resume): judge, generator, samples, scores, shards, reused across every arm and seed; only the real images when
   no point reads generated images (:func:`grid_uses_generated_images`).
3. ``control_samples[few_shot-s<seed>]`` for the control arm, as runs of the ``synthaug_control_samples`` job.
4. One run of the ``synthaug_experiment_runs`` job per grid point (the partition key names it); a point whose
   last materialization has today's settings, code and shard content is reused.
5. ``experiment_summary`` (job ``synthaug_experiment_summary``): experiments.md / experiments.json.

Every run is a real run of a named job on the instance (`DagsterInstance.get()` in the CLI), so `synthaug dev`
shows and can re-execute each of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from synthaug_pipeline.defs.instance_queries import latest_materializations
from synthaug_pipeline.defs.launch import execute_named_job
from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.defs.resources import latest_materialization, set_progress_listener
from synthaug_pipeline.defs.run_health import BlockedStepReporter, process_tags
from synthaug_pipeline.lib.config import Profile, ProfileError, load_profile
from synthaug_pipeline.lib.datasets import load_dataset
from synthaug_pipeline.lib.experiments import (
    TARGETED,
    control_partition,
    control_seeds,
    experiment_grid,
    experiment_keys,
    parse_experiment_key,
    setup_fingerprint,
)
from synthaug_pipeline.lib.preflight import check_experiment_grid
from synthaug_pipeline.orchestration import PipelineError, _failure_message, run_pipeline
from synthaug_pipeline.reuse import ReusePlanner, fingerprint_tags

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class ExperimentOutcome:
    profile: Profile
    summary: dict | None = None
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)


def check_grid_before_training(profile: Profile) -> None:
    """The grid against the real data's class counts (ProfileError, one line), before any model trains."""
    dataset = load_dataset(profile.data)
    counts = [int((dataset.train.labels == i).sum()) for i in range(len(dataset.class_ids))]
    check_experiment_grid(profile, dataset.class_ids, counts)


def new_grid_points(instance: dg.DagsterInstance, profile: Profile) -> int:
    """Grid points never materialized on ``instance``: the runs the time estimate can count on (a point with an
    older materialization may be reused or retrained; that is only known once its shards are)."""
    keys = experiment_keys(profile.experiments)
    return len(keys) - len(latest_materializations(instance, "experiment_run", keys))


def grid_uses_generated_images(profile: Profile) -> bool:
    """Whether a point of the grid trains on the pipeline's shards (filtered, unfiltered or CAS): if none does, the judge,
    the generator and the shards are not needed."""
    return any(spec.uses_synthetic for spec in experiment_grid(profile.experiments))


def run_experiment_grid(
    profile_name: str | None,
    overrides: list[str],
    instance: dg.DagsterInstance,
    echo: Callable[[str], None] = print,
    resume: bool = True,
    pipeline_done: bool = False,
) -> ExperimentOutcome:
    """Materialize the grid of ``experiments.*`` and its summary; see the module docstring.

    ``pipeline_done``: the pipeline's stages were just materialized by this process (`synthaug run`), skip step 2.
    Raises PipelineError (one line: the failing run and its cause) or ProfileError (a grid that cannot run).
    """
    profile = load_profile(profile_name, overrides)
    outcome = ExperimentOutcome(profile=profile)
    check_grid_before_training(profile)
    started = time.perf_counter()
    if not pipeline_done:
        if grid_uses_generated_images(profile):
            echo("experiments: the pipeline up to the shards (reused where its settings and code are unchanged)")
            run_pipeline(
                profile_name, overrides, instance, echo=echo, resume=resume, until="synthetic", grid_runs=new_grid_points(instance, profile)
            )
        else:  # real-only, retrieval and photometric points (and control, with its own generators) read no shard
            echo("experiments: no grid point reads generated images (arms: real only, retrieval, photometric, control): the real images only")
            run_pipeline(profile_name, overrides, instance, echo=echo, resume=resume, until="real images")
        outcome.seconds["pipeline"] = time.perf_counter() - started
    defs = build_definitions(profile_name or profile.name, overrides)
    planner = ReusePlanner.for_definitions(instance, profile, defs) if resume else None
    settings = defs.resources["settings"]
    run_config = {**QUIET, "resources": {"settings": {"config": {"profile": settings.profile, "overrides": list(settings.overrides)}}}}

    def launch(job_name: str, partition: str | None, asset: str) -> dg.ExecuteInProcessResult:
        tags = {"synthaug/profile": profile.name, "synthaug/stage": "experiments", **process_tags(), **fingerprint_tags(profile, [asset])}
        with BlockedStepReporter(instance, echo):  # a run of the named job, re-executable from the UI with the same settings
            result = execute_named_job(
                defs, job_name, instance, asset_selection=[asset], run_config=run_config, tags=tags, partition_key=partition
            )
        outcome.run_ids.append(result.run_id)
        if not result.success:
            raise PipelineError(f"{job_name}{f' [{partition}]' if partition else ''} failed: {_failure_message(result)}")
        return result

    set_progress_listener(lambda message: echo(f"      {time.strftime('%H:%M:%S')} {message}"))
    try:
        stage_started = time.perf_counter()
        for seed in control_seeds(profile.experiments):
            key = control_partition(seed)
            if planner is not None and planner.reusable_run("control_samples", key):
                echo(f"      reused: control_samples[{key}] (same settings and code)")
                continue
            echo(f"[control] {time.strftime('%H:%M:%S')} control_samples[{key}]: a generator trained on seed {seed}'s few-shot images only")
            launch("synthaug_control_samples", key, "control_samples")
        outcome.seconds["control"] = time.perf_counter() - stage_started

        shard_hashes = _shard_hashes(instance, profile)
        # a targeted point reads its real-only partner's result: partners first (stable otherwise)
        keys = sorted(experiment_keys(profile.experiments), key=lambda key: parse_experiment_key(key).arm == TARGETED)
        echo(f"[experiments] {time.strftime('%H:%M:%S')} {len(keys)} grid points: {', '.join(keys)}")
        stage_started = time.perf_counter()
        for number, key in enumerate(keys, start=1):
            spec = parse_experiment_key(key)
            control = _metadata(latest_materialization(instance, "control_samples", control_partition(spec.seed)), "version")
            expected = setup_fingerprint(spec, profile, shard_hashes, control if spec.arm == "control" else None)
            record = latest_materialization(instance, "experiment_run", key)
            if planner is not None and planner.reusable_run("experiment_run", key) and _metadata(record, "fingerprint") == expected:
                outcome.reused.append(key)
                echo(f"      [{number}/{len(keys)}] {key}: reused (same settings, code and shards)")
                continue
            run_started = time.perf_counter()
            value = launch("synthaug_experiment_runs", key, "experiment_run").output_for_node("experiment_run")
            outcome.trained.append(key)
            validation = value.get("validation") or {}
            echo(
                f"      [{number}/{len(keys)}] {key}: top-1 {100 * value['metrics']['top1']:.1f}%"
                + (f", validation {100 * validation['top1']:.1f}%" if validation else "")
                + f" ({time.perf_counter() - run_started:.0f}s)"
            )
        outcome.seconds["experiments"] = time.perf_counter() - stage_started
        outcome.summary = launch("synthaug_experiment_summary", None, "experiment_summary").output_for_node("experiment_summary")
    finally:
        set_progress_listener(None)
    outcome.seconds["total"] = time.perf_counter() - started
    return outcome


def _shard_hashes(instance: dg.DagsterInstance, profile: Profile) -> list[str]:
    """The sha256 of every class's current shard, as its last synthetic_shards materialization recorded it."""
    from synthaug_pipeline.lib.datasets import dataset_class_ids

    records = latest_materializations(instance, "synthetic_shards", dataset_class_ids(profile.data))  # one query, not one per class
    hashes = [_metadata(record, "sha256") for record in records.values()]
    return [h for h in hashes if h is not None]


def _metadata(record, key: str):
    if record is None:
        return None
    entry = record.asset_materialization.metadata.get(key)
    return None if entry is None else getattr(entry, "value", entry)


__all__ = ["ExperimentOutcome", "PipelineError", "ProfileError", "check_grid_before_training", "run_experiment_grid"]
