"""Kill `synthaug run` at every failpoint, re-run the same command, and compare with an uninterrupted run.

    python benchmarks/reliability.py [--out benchmarks/results/reliability.json]

For each failpoint (:data:`synthaug_pipeline.lib.faults.FAILPOINTS`) a fresh folder gets a run that SIGKILLs
itself there, then the same command again. Recorded per case: both exit codes, the seconds of each, what the
re-run reused, whether every class's current shard equals the uninterrupted run's in its image, seed and score
columns (rows and bytes compared), temporary files left visible to readers, and the killed run's final status.
Tiny settings (two digit classes, tiny models): this measures the fault handling, not image quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synthaug_pipeline.lib.faults import FAILPOINTS, KILL_AT_ENV_VAR  # noqa: E402
from synthaug_pipeline.lib.machine import describe_machine, machine_summary  # noqa: E402
from synthaug_pipeline.lib.shard_reading import read_shards  # noqa: E402
from synthaug_pipeline.lib.shards import list_class_shards  # noqa: E402
from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides  # noqa: E402

COMPARED = ["image", "seed", "image_index", "judge_confidence", "judge_top1", "nearest_real_distance", "accepted"]
# the test suite's tiny two-class settings (output.url is set per case)
SETTINGS = [item for item in tiny_overrides("") if not item.startswith(("data.classes=", "output.url="))]
# The n-th hit of a point that fires more than once per run (training steps: the judge's 30 come first).
KILL_AT = {"training_step": "training_step#35"}


def synthaug(cwd: Path, kill_at: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    argv = [sys.executable, "-m", "synthaug_pipeline.cli", "run", "--classes", "0", "1", "--set", f"output.url={cwd / 'output'}"]
    for item in SETTINGS:
        argv += ["--set", item]
    env = {**os.environ, "DAGSTER_HOME": str(cwd / "home"), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    env.pop(KILL_AT_ENV_VAR, None)
    if kill_at:
        env[KILL_AT_ENV_VAR] = kill_at
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return done, time.perf_counter() - started


def shards(output: Path) -> dict[str, dict]:
    return {
        c: read_shards(list_class_shards(f"{output}/synthetic_shards", c), accepted_only=False).select(COMPARED).to_pydict()
        for c in ("0", "1")
    }


def case(point: str, reference: dict, root: Path) -> dict:
    cwd = root / point
    cwd.mkdir()
    killed, killed_s = synthaug(cwd, KILL_AT.get(point, point))
    again, again_s = synthaug(cwd)
    result = {
        "failpoint": KILL_AT.get(point, point),
        "killed_exit": killed.returncode,
        "killed_seconds": round(killed_s, 1),
        "rerun_exit": again.returncode,
        "rerun_seconds": round(again_s, 1),
        "rerun_reused": [line.strip() for line in again.stdout.splitlines() if "reused" in line],
        "rerun_freed_dead_run": "whose process is gone" in again.stdout,
    }
    if again.returncode == 0:
        got = shards(cwd / "output")
        result["rows_compared"] = sum(len(t["seed"]) for t in got.values())
        result["image_bytes_compared"] = sum(len(b) for t in got.values() for b in t["image"])
        result["identical_to_uninterrupted"] = got == reference
    visible = [p.name for p in (cwd / "output" / "synthetic_shards").rglob("*") if p.is_file() and not p.name.startswith(".")]
    result["visible_temp_files"] = [name for name in visible if "tmp" in name]
    os.environ["DAGSTER_HOME"] = str(cwd / "home")
    with dg.DagsterInstance.get() as instance:
        statuses = [run.status.value for run in instance.get_runs()]
    os.environ.pop("DAGSTER_HOME")
    result["runs_left_started"] = statuses.count("STARTED")
    result["runs_failed"] = statuses.count("FAILURE")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/reliability.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "reference").mkdir()
        done, seconds = synthaug(root / "reference")
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        reference = shards(root / "reference" / "output")
        cases = []
        for point in FAILPOINTS:
            cases.append(case(point, reference, root))
            print(json.dumps(cases[-1]), flush=True)
    record = {
        "command": "python benchmarks/reliability.py",
        "machine": machine_summary(describe_machine()),
        "date": time.strftime("%Y-%m-%d"),
        "uninterrupted_seconds": round(seconds, 1),
        "settings": SETTINGS,
        "cases": cases,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(c.get("identical_to_uninterrupted") for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
