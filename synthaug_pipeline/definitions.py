"""The Dagster code location: every stage's assets for the active profile.

The profile comes from SYNTHAUG_PROFILE (default: digits) and SYNTHAUG_SET
(';'-separated key=value overrides), so `dagster dev` with no setup serves the
embedded default.
"""

from __future__ import annotations

import os
import warnings

import dagster as dg

from synthaug_pipeline.defs.data.assets import build_data_assets
from synthaug_pipeline.defs.evaluation.assets import build_evaluation_assets
from synthaug_pipeline.defs.executors import build_executor, build_stage_jobs, gpu_steps, retry_policy
from synthaug_pipeline.defs.experiments.assets import build_experiment_assets, experiment_jobs
from synthaug_pipeline.defs.generation.assets import build_generation_assets
from synthaug_pipeline.defs.generation.schedules import build_regeneration_schedule
from synthaug_pipeline.defs.io_managers import SynthaugIOManager
from synthaug_pipeline.defs.run_health import reap_dead_runs_sensor
from synthaug_pipeline.defs.partitions import class_partitions
from synthaug_pipeline.defs.prompts.assets import build_prompt_assets
from synthaug_pipeline.defs.resources import ModelsResource, SynthaugSettings
from synthaug_pipeline.defs.scoring.assets import build_scoring_assets
from synthaug_pipeline.defs.stages import stage_jobs
from synthaug_pipeline.defs.training.assets import build_training_assets
from synthaug_pipeline.lib.config import DEFAULT_PROFILE, OVERRIDES_ENV_VAR, PROFILE_ENV_VAR, load_profile
from synthaug_pipeline.lib.datasets import dataset_class_ids
from synthaug_pipeline.lib.redaction import seal_overrides


def build_definitions(profile_name: str | None = None, overrides: list[str] | None = None) -> dg.Definitions:
    """Definitions for one profile: partitions are the profile's class ids."""
    profile = load_profile(profile_name, overrides)
    class_ids = dataset_class_ids(profile.data)
    partitions = class_partitions(class_ids)
    batches = dg.BackfillPolicy.multi_run(max_partitions_per_run=profile.execution.classes_per_run)
    with warnings.catch_warnings():  # backfill_policy is marked beta; it is the documented way to batch backfills
        warnings.simplefilter("ignore", dg.BetaWarning)
        assets = _assets(profile, partitions, batches)
    sealed = seal_overrides(list(overrides or []))  # the resource's config is stored by Dagster: no secrets in it
    settings = SynthaugSettings(profile=profile_name or os.environ.get(PROFILE_ENV_VAR) or DEFAULT_PROFILE, overrides=sealed)
    return dg.Definitions(
        assets=assets,
        jobs=[
            *build_stage_jobs(assets, partitions, profile.execution),  # every per-class asset / every shared one
            *stage_jobs(assets, partitions, retry_policy(profile.execution)),  # `synthaug run`'s stages
            *experiment_jobs(profile.experiments),
        ],
        schedules=[build_regeneration_schedule(profile, class_ids)],
        sensors=[reap_dead_runs_sensor],
        resources={"settings": settings, "models": ModelsResource(), "io_manager": SynthaugIOManager(settings=settings)},
        # in_process unless execution.executor says otherwise: steps of seconds cost less than a process per step
        executor=build_executor(profile.execution, gpu_steps(assets)),
    )


def _assets(profile, partitions: dg.PartitionsDefinition, batches: dg.BackfillPolicy) -> list[dg.AssetsDefinition]:
    return [
        *build_data_assets(partitions, batches),
        *build_prompt_assets(partitions, batches),
        *build_generation_assets(partitions, batches),
        *build_scoring_assets(partitions, batches),
        *build_training_assets(),
        *build_evaluation_assets(),
        *build_experiment_assets(profile.experiments),
    ]


def _load_default() -> dg.Definitions:
    overrides = [item for item in os.environ.get(OVERRIDES_ENV_VAR, "").split(";") if item.strip()]
    return build_definitions(os.environ.get(PROFILE_ENV_VAR), overrides)


defs = _load_default()
