"""Run a named job of the code location in this process, as a run the Dagster UI can re-execute.

``JobDefinition.execute_in_process`` records no code location, so its runs cannot be re-executed from
the UI ("No matching jobs"). :func:`execute_named_job` does what it does, but creates the run with the
origin of the code location ``synthaug dev`` / ``dagster dev`` serve (``python_module:
synthaug_pipeline.definitions``, as in ``workspace.yaml``), and with the profile and overrides in the
run's config, so a re-execution from the UI uses the same settings, whatever profile the UI serves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.execution.api import ExecuteRunWithPlanIterable, create_execution_plan, job_execution_iterator
from dagster._core.execution.context_creation_job import PlanOrchestrationContextManager, orchestration_context_event_generator
from dagster._core.execution.execute_in_process import merge_run_tags
from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

CODE_LOCATION_MODULE = "synthaug_pipeline.definitions"  # what workspace.yaml and `synthaug dev` load
REPOSITORY_NAME = "__repository__"  # the name Dagster gives a module's Definitions


def code_location_origin(job_name: str) -> RemoteJobOrigin:
    """Where the UI finds ``job_name``: the code location of ``synthaug dev`` (location name = module name)."""
    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=CODE_LOCATION_MODULE, working_directory=os.getcwd())
    location = ManagedGrpcPythonEnvCodeLocationOrigin(loadable_target_origin=target, location_name=CODE_LOCATION_MODULE)
    return RemoteJobOrigin(repository_origin=RemoteRepositoryOrigin(location, REPOSITORY_NAME), job_name=job_name)


def execute_named_job(
    defs: dg.Definitions,
    job_name: str,
    instance: dg.DagsterInstance,
    *,
    asset_selection: Sequence[str],
    run_config: Mapping[str, object],
    tags: Mapping[str, str],
    partition_key: str | None = None,
) -> dg.ExecuteInProcessResult:
    """Execute ``asset_selection`` of job ``job_name`` in this process (its executor: in-process) as a run of that job."""
    job_def = defs.resolve_job_def(job_name)
    keys = [dg.AssetKey(name) for name in asset_selection]
    job = job_def.as_ephemeral_job(resource_defs={}, input_values={}, asset_selection=keys)
    run_tags = merge_run_tags(job_def=job, partition_key=partition_key, tags=tags, asset_selection=keys, instance=instance, run_config=run_config)
    wrapped = InMemoryJob(job_def=job)
    plan = create_execution_plan(wrapped, run_config=run_config, instance_ref=instance.get_ref() if instance.is_persistent else None)
    run = instance.create_run_for_job(
        job_def=job,
        run_config=run_config,
        tags=run_tags,
        asset_selection=frozenset(keys),
        execution_plan=plan,
        remote_job_origin=code_location_origin(job_name),
    )
    output_capture: dict = {}
    events = list(
        ExecuteRunWithPlanIterable(
            execution_plan=plan,
            iterator=job_execution_iterator,
            execution_context_manager=PlanOrchestrationContextManager(
                context_event_generator=orchestration_context_event_generator,
                job=wrapped,
                execution_plan=plan,
                dagster_run=run,
                instance=instance,
                run_config=run_config,
                executor_defs=None,
                output_capture=output_capture,
                raise_on_error=False,
            ),
        )
    )
    return dg.ExecuteInProcessResult(
        job_def=job, event_list=events, dagster_run=instance.get_run_by_id(run.run_id), output_capture=output_capture
    )
