"""Runs whose process is gone are found, marked failed and their pool slots freed; live runs are left alone."""

import os
import subprocess
import sys

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun

from synthaug_pipeline.defs.run_health import PID_START_TAG, PID_TAG, pool_blockers, process_alive, process_tags, reap_dead_runs, reap_dead_runs_sensor


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _holding_run(instance: dg.DagsterInstance, pid: int, started: str = "") -> str:
    tags = {**process_tags(), PID_TAG: str(pid), PID_START_TAG: started}
    run = instance.add_run(DagsterRun(job_name="holder", status=dg.DagsterRunStatus.STARTED, tags=tags))
    instance.event_log_storage.set_concurrency_slots("gpu", 1)
    assert instance.event_log_storage.claim_concurrency_slot("gpu", run.run_id, "generator").is_claimed
    return run.run_id


def test_process_alive_tells_a_reused_pid_from_the_original():
    me = process_tags()
    assert process_alive(os.getpid(), me[PID_START_TAG])
    assert not process_alive(os.getpid(), "1")  # same pid, another start time: the pid was reused
    assert not process_alive(_dead_pid())
    assert not process_alive(0)


def test_reaping_frees_the_slot_of_a_dead_run_only():
    with dg.instance_for_test() as instance:
        dead = _holding_run(instance, _dead_pid())
        assert reap_dead_runs(instance) == [dead]
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []

        alive = _holding_run(instance, os.getpid(), process_tags()[PID_START_TAG])
        assert reap_dead_runs(instance) == []
        assert instance.get_run_by_id(alive).status == dg.DagsterRunStatus.STARTED


def test_a_finished_runs_leftover_slot_is_freed():
    with dg.instance_for_test() as instance:
        run_id = _holding_run(instance, os.getpid(), process_tags()[PID_START_TAG])
        instance.report_run_failed(instance.get_run_by_id(run_id), "ended without freeing its slot")
        assert reap_dead_runs(instance) == [run_id]
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []


def test_a_waiting_step_names_the_run_that_holds_the_slot():
    with dg.instance_for_test() as instance:
        holder = _holding_run(instance, 1)
        waiting = instance.add_run(DagsterRun(job_name="waiting", status=dg.DagsterRunStatus.STARTED, tags=process_tags()))
        assert not instance.event_log_storage.claim_concurrency_slot("gpu", waiting.run_id, "judge").is_claimed
        (line,) = pool_blockers(instance, waiting.run_id)
        assert line.startswith("waiting for pool 'gpu' (limit 1) for judge: held by run") and holder[:8] in line and "pid 1" in line


def test_the_daemon_sensor_reaps_dead_runs():
    with dg.instance_for_test() as instance:
        dead = _holding_run(instance, _dead_pid())
        with dg.build_sensor_context(instance=instance) as context:
            result = reap_dead_runs_sensor(context)
        assert dead[:8] in result.skip_message
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
