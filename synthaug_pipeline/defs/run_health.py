"""Runs whose process is gone: find them, mark them failed, free their pool slots.

A `synthaug run` killed with SIGKILL, by the OOM killer or a closed terminal never reports its end: the
instance keeps the run STARTED and its `gpu` pool slot claimed, and every later run waits for that slot
forever. Each `synthaug run` run is tagged with its process (host, pid, process start time), so the next
`synthaug run`, and the `reap_dead_runs` sensor on the daemon, can tell a live run from a dead one.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import dagster as dg
from dagster._core.execution.stats import StepEventStatus
from dagster._utils.interrupts import check_captured_interrupt

HOST_TAG, PID_TAG, PID_START_TAG = "synthaug/host", "synthaug/pid", "synthaug/pid_start"
UNFINISHED = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING]


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def process_tags() -> dict[str, str]:
    """Tags naming this process, for every run it starts."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), PID_START_TAG: _process_start(os.getpid())}


def process_alive(pid: int, started: str = "") -> bool:
    """Whether process ``pid`` runs on this host and (when ``started`` is known) is the same process, not a reused pid."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return not started or _process_start(pid) in ("", started)


def dead_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Unfinished runs started on this host by a process that no longer exists."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED, tags={HOST_TAG: socket.gethostname()}))
    return [run for run in runs if not process_alive(int(run.tags.get(PID_TAG, "0") or 0), run.tags.get(PID_START_TAG, ""))]


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark dead runs failed and free every pool slot held by a dead or finished run; returns the run ids freed."""
    freed = []
    for run in dead_runs(instance):
        pid = run.tags.get(PID_TAG)
        instance.report_run_failed(run, f"the process that ran this run (pid {pid} on {run.tags.get(HOST_TAG)}) is gone")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        freed.append(run.run_id)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for pool in storage.get_concurrency_keys():
            info = storage.get_concurrency_info(pool)
            for run_id in info.active_run_ids | {step.run_id for step in info.pending_steps}:
                run = instance.get_run_by_id(run_id)
                if run is None or run.is_finished:
                    storage.free_concurrency_slots_for_run(run_id)
                    freed.append(run_id)
    return sorted(set(freed))


def pool_blockers(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """For each pool on which a step of ``run_id`` waits: a line naming the runs that hold the pool's slots."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    lines = []
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        waiting = [step.step_key for step in info.pending_steps if step.run_id == run_id and step.assigned_timestamp is None]
        if not waiting:
            continue
        holders = []
        for holder in sorted(info.active_run_ids - {run_id}):
            run = instance.get_run_by_id(holder)
            tags = run.tags if run else {}
            where = f"pid {tags[PID_TAG]} on {tags.get(HOST_TAG)}" if PID_TAG in tags else "launched from the UI or the daemon"
            holders.append(f"run {holder[:8]} ({run.status.value if run else 'unknown'}, {where})")
        lines.append(
            f"waiting for pool '{pool}' (limit {info.slot_count}) for {', '.join(waiting)}: held by {'; '.join(holders) or 'another run'}"
        )
    return lines


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def reap_dead_runs_sensor(context: dg.SensorEvaluationContext):
    """Marks `synthaug run` runs whose process died as failed and frees their pool slots (this host only)."""
    started = time.perf_counter()
    freed = reap_dead_runs(context.instance)
    return dg.SkipReason(
        f"freed {len(freed)} run(s): {', '.join(r[:8] for r in freed)}" if freed else f"no dead run ({time.perf_counter() - started:.2f}s)"
    )


class BlockedStepReporter:
    """While a run of this process waits for a pool slot, say why in the terminal within seconds (and again every 30 s)."""

    def __init__(self, instance: dg.DagsterInstance, echo, interval: float = 2.0, repeat: float = 30.0):
        self.instance, self.echo, self.interval, self.repeat = instance, echo, interval, repeat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="synthaug-blocked-steps", daemon=True)

    def __enter__(self) -> BlockedStepReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        said, said_at = None, 0.0
        mine = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        while not self._stop.wait(self.interval):
            try:
                runs = self.instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags=mine), limit=1)
                lines = [line for run in runs for line in pool_blockers(self.instance, run.run_id)]
                if lines and check_captured_interrupt():
                    self._stop_blocked_run(runs[0])
            except Exception:  # a watcher must never break the run it watches
                continue
            if lines and (lines != said or time.monotonic() - said_at > self.repeat):
                for line in lines:
                    self.echo(f"      {line} (Ctrl-C to stop; a dead holder is freed by the next `synthaug run`)")
                said, said_at = lines, time.monotonic()

    def _stop_blocked_run(self, run: dg.DagsterRun) -> None:
        """Ctrl-C (or SIGTERM, SIGHUP) while only waiting for a slot: Dagster defers the signal to the next step,
        which never starts; end the run here instead. No step is running, so nothing is half-written."""
        in_progress = [s for s in self.instance.get_run_step_stats(run.run_id) if s.status == StepEventStatus.IN_PROGRESS]
        if in_progress:
            return  # a step runs: Dagster raises the interrupt inside it
        self.instance.report_run_failed(run, "interrupted while waiting for a pool slot")
        self.instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        print(f"synthaug: interrupted while waiting for a pool slot; run {run.run_id[:8]} marked failed", file=sys.stderr, flush=True)
        os._exit(130)
