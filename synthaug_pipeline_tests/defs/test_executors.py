"""execution.*: the executor chosen by settings, step retries, stage jobs, and the checks made before any run
(no server needed; the real PostgreSQL / Celery / S3 run is in test_scaleout.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.dependency import NodeHandle

from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.defs.executors import (
    CELERY_BROKER_ENV,
    PER_CLASS_JOB,
    SHARED_JOB,
    ExecutorUnavailableError,
    build_executor,
    check_distributable,
    check_executor_ready,
    retry_policy,
)
from synthaug_pipeline.defs.instance import InstanceUnavailableError, describe_storage, open_instance
from synthaug_pipeline.lib.config import ProfileError, load_profile

REPO = Path(__file__).resolve().parents[2]


def _execution(*settings: str):
    return load_profile("digits", list(settings)).execution


def test_in_process_is_the_default_and_every_job_uses_the_chosen_executor():
    assert _execution().executor == "in_process"
    defs = build_definitions("digits", ["data.classes=['0', '1']"])
    for name in (PER_CLASS_JOB, SHARED_JOB):
        assert defs.resolve_job_def(name).executor_def.name == "in_process"
    defs = build_definitions("digits", ["data.classes=['0', '1']", "execution.executor=multiprocess", "execution.step_retries=2"])
    job = defs.resolve_job_def(PER_CLASS_JOB)
    assert job.executor_def.name == "synthaug_multiprocess"
    per_class = {"real_images", "class_prompts", "real_features", "synthetic_images", "synthetic_scores", "synthetic_shards"}
    assert {node.name for node in job.nodes} == per_class
    assert job.get_retry_policy_for_handle(NodeHandle("synthetic_images", None)).max_retries == 2
    shared = defs.resolve_job_def(SHARED_JOB)
    assert "classifier_augmented" in {node.name for node in shared.nodes} and "real_images" not in {node.name for node in shared.nodes}


def test_celery_executor_reads_the_broker_from_the_environment_not_from_settings(monkeypatch):
    executor = build_executor(_execution("execution.executor=celery"))
    assert executor.name == "synthaug_celery"
    monkeypatch.delenv(CELERY_BROKER_ENV, raising=False)
    unset = executor.config_schema.resolve_config({})  # a run's executor config: {"env": ...}, resolved in each process
    assert not unset.success and CELERY_BROKER_ENV in unset.errors[0].message
    monkeypatch.setenv(CELERY_BROKER_ENV, "redis://:pw@broker:6379/0")
    resolved = executor.config_schema.resolve_config({})
    assert resolved.value["config"]["broker"] == resolved.value["config"]["backend"] == "redis://:pw@broker:6379/0"


def test_retry_policy_backs_off():
    assert retry_policy(_execution()) is None
    policy = retry_policy(_execution("execution.step_retries=3", "execution.retry_delay_s=2"))
    assert policy.max_retries == 3 and policy.delay == 2 and policy.backoff == dg.Backoff.EXPONENTIAL


@pytest.mark.parametrize(
    "setting",
    [
        "execution.executor=threads",
        "execution.max_concurrent=0",
        "execution.gpu_slots=0",
        "execution.step_retries=-1",
        "execution.retry_delay_s=.nan",
    ],
)
def test_bad_execution_settings_are_one_line(setting):
    with pytest.raises(ProfileError) as caught:
        load_profile("digits", [setting])
    assert setting.split("=")[0] in str(caught.value) and "\n" not in str(caught.value)


def test_secrets_in_settings_never_travel_to_workers(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "bucket-named-like-the-key")
    check_distributable(["output.url=s3://bucket-named-like-the-key/x", "generator.train_steps=5"], "celery")  # not a secret
    for item in ("data.path=https://user:hunter22@host/d.parquet", "scoring.api_token=abc"):
        with pytest.raises(ProfileError, match="cannot be sent to other processes") as caught:
            check_distributable([item], "celery")
        assert "hunter22" not in str(caught.value) and "abc" not in str(caught.value).split("=")[-1]


def test_celery_without_a_broker_or_k8s_from_the_cli_is_one_line(monkeypatch):
    monkeypatch.delenv(CELERY_BROKER_ENV, raising=False)
    with pytest.raises(ExecutorUnavailableError, match=CELERY_BROKER_ENV):
        check_executor_ready(_execution("execution.executor=celery"))
    with pytest.raises(ExecutorUnavailableError) as caught:
        check_executor_ready(_execution("execution.executor=k8s"))
    assert "\n" not in str(caught.value) and ("dagster-k8s" in str(caught.value) or "Kubernetes" in str(caught.value))


def test_instance_with_an_unset_variable_is_one_line(tmp_path, monkeypatch):
    shutil.copyfile(REPO / "docker" / "dagster.yaml", tmp_path / "dagster.yaml")
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with pytest.raises(InstanceUnavailableError) as caught:
        open_instance(str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and "DAGSTER_PG_" in message and "postgres at $DAGSTER_PG_HOST" in message


def test_default_instance_is_sqlite(tmp_path):
    shutil.copyfile(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    assert describe_storage(str(tmp_path)) == "sqlite"


def test_a_class_waits_for_another_run_writing_it():
    import threading

    from dagster._core.storage.dagster_run import DagsterRun

    from synthaug_pipeline.defs.executors import CLASS_TAG, wait_for_classes

    with dg.instance_for_test() as instance:
        other = instance.add_run(DagsterRun(job_name=PER_CLASS_JOB, status=dg.DagsterRunStatus.STARTED, tags={CLASS_TAG: "3"}))
        lines: list[str] = []
        waiter = threading.Thread(target=wait_for_classes, args=(instance, ["3"], lines.append), kwargs={"poll_s": 0.05})
        waiter.start()
        wait_for_classes(instance, ["4"], lines.append, poll_s=0.05)  # another class: no wait
        deadline = 200
        while not lines and deadline:
            waiter.join(0.05)
            deadline -= 1
        assert waiter.is_alive()
        assert lines == [f"      class 3: waiting for run {other.run_id[:8]}, which writes the same class (Ctrl-C to stop)"]
        instance.report_run_failed(other)
        waiter.join(10)
        assert not waiter.is_alive()


def test_a_batch_run_holds_every_class_of_its_range():
    """A run of a batch of classes carries Dagster's range tags, not `dagster/partition`: the per-class key still sees it."""
    from dagster._core.storage.dagster_run import DagsterRun

    from synthaug_pipeline.defs.executors import CLASS_TAG, class_runs_in_progress, partition_tags

    order = [f"c{i}" for i in range(6)]
    assert partition_tags(None) == {} and partition_tags(["c2"]) == {CLASS_TAG: "c2"}
    batch_tags = partition_tags(["c1", "c2", "c3"])
    assert CLASS_TAG not in batch_tags and set(batch_tags.values()) == {"c1", "c3"}
    with dg.instance_for_test() as instance:
        batch = instance.add_run(DagsterRun(job_name=PER_CLASS_JOB, status=dg.DagsterRunStatus.STARTED, tags=batch_tags))
        single = instance.add_run(DagsterRun(job_name=PER_CLASS_JOB, status=dg.DagsterRunStatus.STARTED, tags=partition_tags(["c5"])))
        busy = class_runs_in_progress(instance, order, order)  # the whole batch in one query
        holders = {c: [r.run_id for r in busy.get(c, [])] for c in order}
        assert holders == {"c0": [], "c1": [batch.run_id], "c2": [batch.run_id], "c3": [batch.run_id], "c4": [], "c5": [single.run_id]}
        assert class_runs_in_progress(instance, ["c2"]) == {}  # without the partitions' order, only one-class runs are seen
        instance.report_run_failed(batch)
        assert class_runs_in_progress(instance, ["c2"], order) == {}


def test_other_executors_split_the_classes_into_concurrent_batches():
    """`synthaug run` with multiprocess/celery: batches of execution.classes_per_run, but never fewer runs than
    execution.max_concurrent can run at once (two classes on two workers: one each)."""
    from synthaug_pipeline.orchestration import class_batch_size

    assert class_batch_size(_execution(), 100) == 20  # in_process: classes_per_run
    celery = ["execution.executor=celery", "execution.max_concurrent=2"]
    assert class_batch_size(_execution(*celery), 100) == 20
    assert class_batch_size(_execution(*celery), 2) == 1
    assert class_batch_size(_execution(*celery), 25) == 13
    assert class_batch_size(_execution(*celery, "execution.classes_per_run=1"), 100) == 1


def test_gpu_slots_size_the_pool_only_when_set():
    from synthaug_pipeline.defs.executors import GPU_POOL, apply_gpu_slots

    with dg.instance_for_test() as instance:
        apply_gpu_slots(instance, _execution())
        assert GPU_POOL not in instance.event_log_storage.get_concurrency_keys()
        apply_gpu_slots(instance, _execution("execution.gpu_slots=4"))
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 4


def test_worker_without_a_broker_is_one_line(monkeypatch, capsys):
    from synthaug_pipeline.cli import main

    monkeypatch.delenv(CELERY_BROKER_ENV, raising=False)
    assert main(["worker"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and CELERY_BROKER_ENV in err
