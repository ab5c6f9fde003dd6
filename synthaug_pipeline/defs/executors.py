"""Where steps run: the executor chosen by ``execution.executor``, the stage jobs, and running one stage on them.

``in_process`` (the embedded default) runs every step in the run's own process, as ``dg.materialize`` does.
``multiprocess`` gives each step its own process on this machine; ``celery`` sends each step to a Celery
worker (``synthaug worker``) through the broker named by ``$SYNTHAUG_CELERY_BROKER`` (Redis:
``redis://host:6379/0``); ``k8s`` runs each step as a Kubernetes Job (dagster-k8s) in a cluster deployed
with docker/helm-values.yaml. Every executor honours the instance's ``gpu`` pool (steps that train or
sample claim a slot first), so generation never oversubscribes a GPU however many workers there are.

A step that runs in another process rebuilds the definitions from the profile name and the overrides
(:func:`reconstruct_stage_job`), so those travel with the run (Dagster stores them in the run's origin).
A setting that holds a secret therefore cannot go there: :func:`check_distributable` refuses it in one
line; credentials reach workers through their environment (AWS_* for the bucket, the broker URL).
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterable, Sequence

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from synthaug_pipeline.lib.config import ExecutionConfig, ProfileError
from synthaug_pipeline.lib.redaction import is_secret_name, redact_override, redact_url

CELERY_BROKER_ENV = "SYNTHAUG_CELERY_BROKER"  # e.g. redis://localhost:6379/0 (a password goes in the URL, from a secret)
CELERY_BACKEND_ENV = "SYNTHAUG_CELERY_BACKEND"  # result backend; defaults to the broker
PER_CLASS_JOB = "synthaug_per_class"
SHARED_JOB = "synthaug_shared"
CELERY_QUEUE = "dagster"  # dagster-celery's queue; `synthaug worker` listens on it


class ExecutorUnavailableError(ProfileError):
    """An executor that cannot run here (package missing, broker unreachable, no worker); one line naming the fix."""


def retry_policy(execution: ExecutionConfig) -> dg.RetryPolicy | None:
    """Step retries for transient failures, exponential backoff with jitter; None when ``step_retries`` is 0."""
    if execution.step_retries == 0:
        return None
    return dg.RetryPolicy(
        max_retries=execution.step_retries,
        delay=execution.retry_delay_s,
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def celery_backend_env() -> str:
    """The environment variable holding the Celery result backend: its own when set, else the broker's."""
    return CELERY_BACKEND_ENV if os.environ.get(CELERY_BACKEND_ENV) else CELERY_BROKER_ENV


def build_executor(execution: ExecutionConfig, gpu_step_keys: Sequence[str] = ()) -> dg.ExecutorDefinition:
    """The executor definition for ``execution.executor``. Broker URLs are read from the environment by Dagster
    (``{"env": ...}``), so no URL, password included, is written into a run's configuration."""
    kind = execution.executor
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "multiprocess":
        return dg.multiprocess_executor.configured({"max_concurrent": execution.max_concurrent}, name="synthaug_multiprocess")
    if kind == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError:
            raise ExecutorUnavailableError(
                "execution.executor=celery needs dagster-celery and redis: pip install 'synthaug_pipeline[scaleout]'"
            ) from None
        return celery_executor.configured(
            {"broker": {"env": CELERY_BROKER_ENV}, "backend": {"env": celery_backend_env()}}, name="synthaug_celery"
        )
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError:
        raise ExecutorUnavailableError("execution.executor=k8s needs dagster-k8s: pip install 'synthaug_pipeline[k8s]'") from None
    return k8s_job_executor.configured(
        {
            "max_concurrent": execution.max_concurrent,
            "per_step_k8s_config": {step: GPU_STEP_K8S_CONFIG for step in gpu_step_keys},
        },
        name="synthaug_k8s",
    )


# Kubernetes: a step that trains or samples (pool "gpu") runs on a GPU node with one GPU; the other steps run anywhere.
# Node label and taint of the NVIDIA GPU operator; change them here for another cluster's labels.
GPU_STEP_K8S_CONFIG = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def gpu_steps(assets: Sequence[dg.AssetsDefinition]) -> list[str]:
    """The step keys (op names) of assets in the ``gpu`` pool."""
    return sorted(a.node_def.name for a in assets if getattr(a.node_def, "pool", None) == "gpu")


def build_stage_jobs(
    assets: Sequence[dg.AssetsDefinition], partitions: dg.PartitionsDefinition, execution: ExecutionConfig
) -> list[dg.UnresolvedAssetJobDefinition]:
    """The per-class job (every asset partitioned by class) and the shared job (the unpartitioned ones: catalog,
    models, classifiers, evaluation, report), each with the profile's step retries."""
    policy = retry_policy(execution)
    per_class = [a for a in assets if a.partitions_def == partitions]
    # the ablation grid (group "experiments") has its own job
    shared = [a for a in assets if a.partitions_def is None and "experiments" not in a.group_names_by_key.values()]
    return [
        dg.define_asset_job(
            PER_CLASS_JOB,
            selection=dg.AssetSelection.assets(*per_class),
            partitions_def=partitions,
            op_retry_policy=policy,
            description="The per-class assets of one class (pick a partition).",
        ),
        dg.define_asset_job(
            SHARED_JOB,
            selection=dg.AssetSelection.assets(*shared),
            op_retry_policy=policy,
            description="The assets shared by every class: catalog, judge, generator, classifiers, evaluation, report.",
        ),
    ]


def reconstruct_stage_job(profile_name: str, overrides: list[str], job_name: str) -> dg.JobDefinition:
    """Rebuild a stage job in another process (a step subprocess, a Celery worker) from what the run recorded."""
    return _stage_job(profile_name, tuple(overrides), job_name)


@functools.lru_cache(maxsize=8)
def _stage_job(profile_name: str, overrides: tuple[str, ...], job_name: str) -> dg.JobDefinition:
    # a worker serves many steps of the same runs: build their definitions once
    from synthaug_pipeline.definitions import build_definitions

    return build_definitions(profile_name, list(overrides)).resolve_job_def(job_name)


def check_distributable(overrides: Iterable[str], executor: str) -> None:
    """Refuse, in one line, overrides holding a secret when steps run in other processes (they would be stored)."""
    secret = [item for item in overrides if _holds_secret(item)]
    if secret:
        raise ProfileError(
            f"--set {redact_override(secret[0])}: a setting holding a secret cannot be sent to other processes "
            f"(execution.executor={executor}); give credentials to every process through the environment instead "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
        )


def _holds_secret(item: str) -> bool:
    """A ``key=value`` override whose key names a secret or whose value holds a URL's ``user:password@``."""
    key, _, value = item.partition("=")
    if any(is_secret_name(part) for part in key.strip().split(".")):
        return True
    return re.search(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@]+@", value) is not None


def check_executor_ready(execution: ExecutionConfig, timeout_s: float = 5.0) -> None:
    """Before any run: the executor's package is importable and, for Celery, the broker answers and a worker listens.

    Raises :class:`ExecutorUnavailableError` with one line naming the setting or variable to fix.
    """
    build_executor(execution)
    if execution.executor == "k8s":
        raise ExecutorUnavailableError(
            "execution.executor=k8s runs steps as Kubernetes Jobs of a deployed instance (docker/helm-values.yaml): launch runs "
            "from its UI or a backfill, not `synthaug run` (which runs here with in_process, multiprocess or celery)"
        )
    if execution.executor != "celery":
        return
    broker = os.environ.get(CELERY_BROKER_ENV)
    if not broker:
        raise ExecutorUnavailableError(
            f"execution.executor=celery needs ${CELERY_BROKER_ENV}, the broker URL the workers listen on (e.g. redis://localhost:6379/0)"
        )
    app = celery_app(broker, os.environ.get(celery_backend_env()) or broker)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
        replies = app.control.ping(timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - any broker failure is one line
        text = redact_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise ExecutorUnavailableError(
            f"execution.executor=celery: the broker {redact_url(broker)} (${CELERY_BROKER_ENV}) does not answer: {text[:200]}"
        ) from None
    if not replies:
        raise ExecutorUnavailableError(
            f"execution.executor=celery: no Celery worker answers on {redact_url(broker)}; start one or more with `synthaug worker` "
            "(same broker, same code and environment)"
        )


def celery_app(broker: str, backend: str):
    """The Celery app of dagster-celery's step tasks, on ``broker``/``backend``."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    return make_app(CeleryExecutor.for_cli(broker=broker, backend=backend).app_args())


class StageResult:
    """What `synthaug run` reads of a finished stage run, whichever executor ran it: success, the step failures,
    the asset check evaluations and the stored values of the assets it asked for. Picklable: it crosses from the
    process that ran the stage (see :class:`StagePool`)."""

    def __init__(self, result: dg.ExecutionResult, outputs: dict[str, object]):
        self.run_id = result.run_id
        self.success = result.success
        self.all_events = [event for event in result.all_events if event.is_step_failure]
        self._checks = list(result.get_asset_check_evaluations())
        self._outputs = outputs

    def get_asset_check_evaluations(self):
        return self._checks

    def output_for_node(self, name: str):
        return self._outputs[name]


def execute_stage(
    defs: dg.Definitions,
    profile_name: str,
    overrides: Sequence[str],
    selection: Sequence[str],
    partitions: Sequence[str] | None,
    instance: dg.DagsterInstance,
    run_config: dict,
    tags: dict[str, str],
    load: Iterable[str] = (),
) -> StageResult:
    """Materialize ``selection`` (of the class ``partitions``, consecutive in the partitions' order, or of the shared
    assets when None) as one run of the stage job, on the profile's executor; the steps may run in other processes or
    on other machines. A run of several classes carries Dagster's partition range tags, so each of its steps
    materializes the whole batch (the assets' BackfillPolicy.multi_run), as a backfill from the UI does."""
    partitions = list(partitions) if partitions else None
    job_name = PER_CLASS_JOB if partitions else SHARED_JOB
    job = dg.build_reconstructable_job(
        "synthaug_pipeline.defs.executors", "reconstruct_stage_job", reconstructable_args=(profile_name, list(overrides), job_name)
    )
    # `synthaug run` resumes a failed run itself when re-run: the daemon's run retries (docker/dagster.yaml) leave it alone
    run_tags = {**tags, "dagster/max_retries": "0", **partition_tags(partitions)}
    result = dg.execute_job(job, instance, run_config=run_config, tags=run_tags, asset_selection=[dg.AssetKey(name) for name in selection])
    produced = {event.step_key for event in result.all_events if event.is_successful_output and event.step_key in selection}
    # stored values are read as a downstream step would (by asset key and partition), through the definitions' IO manager;
    # a per-class asset's value is ``{class: value}``, read eagerly (small references: shards, catalog entries)
    outputs: dict[str, object] = {}
    for name in load:
        if name not in produced:
            continue
        if partitions is None:
            outputs[name] = defs.load_asset_value(dg.AssetKey(name), instance=instance)
        else:
            values: dict[str, object] = {}
            for class_id in partitions:
                values.update(defs.load_asset_value(dg.AssetKey(name), instance=instance, partition_key=class_id))
            outputs[name] = values
    return StageResult(result, outputs)


def partition_tags(partitions: Sequence[str] | None) -> dict[str, str]:
    """The run tags naming a run's classes: ``dagster/partition`` for one (the deployed queue's per-class key), Dagster's
    partition range tags for a batch (first and last class; :func:`class_runs_in_progress` reads both)."""
    if not partitions:
        return {}
    if len(partitions) == 1:
        return {CLASS_TAG: partitions[0]}
    return {ASSET_PARTITION_RANGE_START_TAG: partitions[0], ASSET_PARTITION_RANGE_END_TAG: partitions[-1]}


class StagePool:
    """Runs stage runs in ``size`` worker processes, one Dagster run at a time each.

    Runs of several classes go at once this way. They cannot share one process: Dagster reconfigures Python
    logging at every run start, which deadlocks against another run's thread logging at that moment. A worker
    tags the runs it starts with its own process, so a killed worker's runs are reaped like any dead run.
    """

    def __init__(self, instance: dg.DagsterInstance, size: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(
            max_workers=size, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(instance.get_ref(),)
        )

    def execute(self, profile_name: str, overrides: Sequence[str], selection, partitions, run_config, tags, load=()) -> StageResult:
        if os.path.isfile(profile_name):  # a profile YAML: workers may start in another folder
            profile_name = os.path.abspath(profile_name)
        future = self._pool.submit(
            _execute_in_worker, profile_name, list(overrides), list(selection), None if partitions is None else list(partitions), run_config, dict(tags), list(load)
        )
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


_worker_instance: dg.DagsterInstance | None = None


def _init_worker(instance_ref) -> None:
    global _worker_instance
    _worker_instance = dg.DagsterInstance.from_ref(instance_ref)


def _execute_in_worker(profile_name, overrides, selection, partitions, run_config, tags, load) -> StageResult:
    from synthaug_pipeline.defs.run_health import process_tags

    assert _worker_instance is not None
    defs = _definitions(profile_name, tuple(overrides))
    tags = {**tags, **process_tags()}  # this process runs it: the reaper checks this pid
    return execute_stage(defs, profile_name, overrides, selection, partitions, _worker_instance, run_config, tags, load)


@functools.lru_cache(maxsize=2)
def _definitions(profile_name: str, overrides: tuple[str, ...]) -> dg.Definitions:
    from synthaug_pipeline.definitions import build_definitions

    return build_definitions(profile_name, list(overrides))


GPU_POOL = "gpu"  # the pool of every asset that trains or samples


def apply_gpu_slots(instance: dg.DagsterInstance, execution: ExecutionConfig) -> None:
    """Size the instance's ``gpu`` pool to ``execution.gpu_slots`` (None: leave the instance's setting)."""
    if execution.gpu_slots is not None:
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, execution.gpu_slots)


CLASS_TAG = "dagster/partition"  # every run of a class carries it; the deployed run queue allows one run per value
_UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def class_runs_in_progress(
    instance: dg.DagsterInstance, class_ids: Sequence[str], order: Sequence[str] = ()
) -> dict[str, list[dg.DagsterRun]]:
    """Unfinished runs (of any process, on any machine sharing the instance) that write any of ``class_ids``, per
    class (classes no run writes are absent): runs of that one class, and, given the partitions' ``order``, runs of a
    batch whose range covers it. One query of the unfinished runs serves the whole batch."""
    wanted = set(class_ids)
    index = {c: i for i, c in enumerate(order)}
    busy: dict[str, list[dg.DagsterRun]] = {}
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_UNFINISHED)):
        covered = [run.tags[CLASS_TAG]] if run.tags.get(CLASS_TAG) in wanted else []
        start, end = run.tags.get(ASSET_PARTITION_RANGE_START_TAG), run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
        if start in index and end in index:
            covered += [c for c in class_ids if c in index and index[start] <= index[c] <= index[end]]
        for class_id in covered:
            busy.setdefault(class_id, []).append(run)
    return busy


def wait_for_classes(
    instance: dg.DagsterInstance, class_ids: Sequence[str], echo, poll_s: float = 2.0, repeat_s: float = 30.0, order: Sequence[str] = ()
) -> None:
    """Before starting a run of the classes ``class_ids``: wait while another run writes any of them (the per-class key
    of `synthaug run`, batches included given the partitions' ``order``; runs launched from the UI or a backfill are
    held by the run queue's limit on ``dagster/partition``). A run whose process died is failed by the run-health
    reaper (this host) or the daemon's sensor, which ends the wait."""
    said_at = None
    while True:
        busy = class_runs_in_progress(instance, class_ids, order)
        if not busy:
            return
        now = time.monotonic()
        if said_at is None or now - said_at > repeat_s:
            class_id = next(c for c in class_ids if c in busy)
            echo(f"      class {class_id}: waiting for run {busy[class_id][0].run_id[:8]}, which writes the same class (Ctrl-C to stop)")
            said_at = now
        time.sleep(poll_s)
