"""Faults: a killed run never blocks the instance, a re-run resumes, one-class runs work.

The kill tests run `synthaug run` in real subprocesses: the first is SIGKILLed at a failpoint
(:mod:`synthaug_pipeline.lib.faults`), the second is the same command; its shards must equal those of an
uninterrupted run in their image, seed and score columns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from synthaug_pipeline.lib.faults import KILL_AT_ENV_VAR
from synthaug_pipeline.lib.shard_reading import read_shards
from synthaug_pipeline.lib.shards import list_class_shards
from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
COMPARED = ["image", "seed", "image_index", "judge_confidence", "judge_top1", "nearest_real_distance", "accepted"]
FAST = ["generator.train_steps=3", "generator.warmup_steps=1", "generator.sample_steps=2", "judge.steps=3", "classifier.steps=4"]


def _argv(output: Path) -> list[str]:
    argv = ["run", "--classes", "0", "1"]
    for item in [o for o in tiny_overrides(str(output)) if not o.startswith("data.classes=")] + FAST:
        argv += ["--set", item]
    return argv


def _synthaug(argv: list[str], cwd: Path, kill_at: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(cwd / "home"), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    env.pop(KILL_AT_ENV_VAR, None)
    if kill_at:
        env[KILL_AT_ENV_VAR] = kill_at
    command = [sys.executable, "-m", "synthaug_pipeline.cli", *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _shards(output: Path) -> dict[str, dict]:
    tables = {}
    for class_id in ("0", "1"):
        uris = list_class_shards(f"{output}/synthetic_shards", class_id)
        assert len(uris) == 1, f"class {class_id}: {uris}"
        tables[class_id] = read_shards(uris, accepted_only=False).select(COMPARED).to_pydict()
    return tables


def _visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run: its shards, and (for test_a_dead_runs_slot_is_freed_and_the_next_run_goes_through, which
    would otherwise pay for the same run again) it starts on an instance where a dead process's run holds the `gpu`
    pool's only slot."""
    cwd = tmp_path_factory.mktemp("reference")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = _hold_gpu_slot(cwd / "home", dead.pid)
    done = _synthaug(_argv(cwd / "output"), cwd, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return {"shards": _shards(cwd / "output"), "stdout": done.stdout, "home": cwd / "home", "holder": holder}


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["synthetic_images", "synthetic_scores", "shard_write", "training_step#5"])  # shard_commit: benchmarks/reliability.py
def test_sigkill_anywhere_then_rerun_gives_the_uninterrupted_shards(kill_at, reference, tmp_path):
    killed = _synthaug(_argv(tmp_path / "output"), tmp_path, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]

    again = _synthaug(_argv(tmp_path / "output"), tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "marked 1 run(s) whose process is gone as failed" in again.stdout
    assert "reused" in again.stdout  # the models trained before the kill are not trained again
    assert _shards(tmp_path / "output") == reference["shards"]
    assert not [name for name in _visible_files(tmp_path / "output" / "synthetic_shards") if "tmp" in name]

    os.environ["DAGSTER_HOME"] = str(tmp_path / "home")
    try:
        with dg.DagsterInstance.get() as instance:
            statuses = [run.status for run in instance.get_runs()]
            assert dg.DagsterRunStatus.STARTED not in statuses
            assert statuses.count(dg.DagsterRunStatus.FAILURE) == 1  # the killed run, marked by the re-run
    finally:
        os.environ.pop("DAGSTER_HOME")


def _hold_gpu_slot(home: Path, pid: int) -> str:
    """A STARTED run of process ``pid`` on this host holding the `gpu` pool's only slot."""
    from dagster._core.storage.dagster_run import DagsterRun

    from synthaug_pipeline.defs.run_health import process_tags

    os.environ["DAGSTER_HOME"] = str(home)
    try:
        from synthaug_pipeline.orchestration import prepare_dagster_home

        prepare_dagster_home(str(home))
        with dg.DagsterInstance.get() as instance:
            tags = {**process_tags(), "synthaug/pid": str(pid), "synthaug/pid_start": ""}
            run = instance.add_run(DagsterRun(job_name="holder", status=dg.DagsterRunStatus.STARTED, tags=tags))
            instance.event_log_storage.set_concurrency_slots("gpu", 1)  # as the first run of a fresh instance would
            claim = instance.event_log_storage.claim_concurrency_slot("gpu", run.run_id, "generator")
            assert claim.is_claimed
            return run.run_id
    finally:
        os.environ.pop("DAGSTER_HOME")


def _run_status(home: Path, run_id: str) -> dg.DagsterRunStatus:
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            return instance.get_run_by_id(run_id).status
    finally:
        os.environ.pop("DAGSTER_HOME")


@pytest.mark.slow
def test_a_dead_runs_slot_is_freed_and_the_next_run_goes_through(reference):
    """The reference run started with a dead process's run holding the only `gpu` slot, and completed (the fixture)."""
    holder = reference["holder"]
    assert f"freed their pool slots: {holder[:8]}" in reference["stdout"]
    assert _run_status(reference["home"], holder) == dg.DagsterRunStatus.FAILURE


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_run_waiting_for_a_live_runs_slot_says_why_and_stops_on_a_signal(sig, tmp_path):
    holder = _hold_gpu_slot(tmp_path / "home", 1)  # pid 1 is alive for as long as the test runs
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "synthaug_pipeline.cli", *_argv(tmp_path / "output")]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waited = []
    deadline = time.monotonic() + 240
    for line in process.stdout:
        waited.append(line)
        if "waiting for pool 'gpu'" in line or time.monotonic() > deadline:
            break
    assert f"held by run {holder[:8]}" in waited[-1], "".join(waited)
    process.send_signal(sig)
    try:
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, process.stderr.read()[-2000:]
    assert "interrupted while waiting for a pool slot" in process.stderr.read()
    assert _run_status(tmp_path / "home", holder) == dg.DagsterRunStatus.STARTED  # a live holder is left alone


def test_one_class_run_writes_its_shard_and_skips_the_comparison(tmp_path):
    from synthaug_pipeline.orchestration import run_pipeline

    output = tmp_path / "output"
    overrides = [o for o in tiny_overrides(str(output)) if not o.startswith("data.classes=")]
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        result = run_pipeline("digits", overrides, instance, echo=lines.append, classes=["3"])
    assert result.evaluation is None and result.failed_checks == []
    assert any("needs at least two classes" in line for line in lines)
    table = read_shards(list_class_shards(f"{output}/synthetic_shards", "3"), accepted_only=False)
    assert table.num_rows == 12 and set(table.column("class_id").to_pylist()) == {"3"}
    assert set(table.column("judge_confidence").to_pylist()) == {1.0}  # one class: confidence 1 by definition
    judge_config = json.loads(next((output / "models" / "judge").glob("*/config.json")).read_text())["config"]
    assert judge_config["trained"] is False and judge_config["num_classes"] == 1


def test_one_class_folder_runs_from_the_cli(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from synthaug_pipeline.cli import main

    rng = __import__("numpy").random.default_rng(0)
    (tmp_path / "data" / "cats").mkdir(parents=True)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype="uint8")).save(tmp_path / "data" / "cats" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = [
        f"data.path={tmp_path / 'data'}",
        "data.image_size=8",
        "generator.block_out_channels=[16, 32]",
        "generator.images_per_class=6",
        "augmented.synthetic_ratio=0.1",
        *FAST,
    ]
    argv = ["run", "--profile", "folder", "--dagster-home", str(tmp_path / "home")]
    for item in settings:
        argv += ["--set", item]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "no classifier comparison with one class" in out
    assert len(list_class_shards(str(tmp_path / "synthaug_output" / "folder" / "synthetic_shards"), "cats")) == 1


def test_shortfall_stops_at_the_class_or_trains_at_the_ratio_reached(tmp_path):
    from synthaug_pipeline.orchestration import PipelineError, run_pipeline

    strict = [*tiny_overrides(str(tmp_path / "output")), "filter.min_confidence=1.0", "filter.min_accepted_per_class=0"]
    with dg.instance_for_test() as instance:
        with pytest.raises(PipelineError, match=r"class '0': the filter accepted 0 of 12 .* augmented.shortfall=use_available"):
            run_pipeline("digits", strict, instance, echo=lambda _: None)
        assert not instance.get_runs(filters=dg.RunsFilter(tags={"synthaug/stage": "classifiers"}))  # stopped before training
        lines: list[str] = []
        result = run_pipeline("digits", [*strict, "augmented.shortfall=use_available"], instance, echo=lines.append)
    assert any("warning: class '0': 0 accepted" in line for line in lines)
    assert any("reused for 2 classes" in line and "synthetic_shards" in line for line in lines)  # the re-run regenerates nothing
    lineage = result.report and json.loads((tmp_path / "output" / "report.json").read_text())["models"]["augmented"]["lineage"]
    assert lineage["synthetic_ratio_by_class"] == {"0": 0.0, "1": 0.0}
    assert "trained at the ratio they reach: 0 0, 1 0" in (tmp_path / "output" / "report.md").read_text()
