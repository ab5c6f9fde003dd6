"""Wall time and accuracies of the embedded-default run (`synthaug run`), for BENCHMARKS.md.

    python benchmarks/digits_run.py [--profile digits] [--set key=value ...]

Runs the whole graph in a fresh temporary Dagster instance and output folder, then prints
a Markdown block (command, machine, per-stage seconds, accuracies) and writes it as JSON to
benchmarks/results/<profile>_run.json.
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

from synthaug_pipeline.lib.machine import describe_machine, machine_summary
from synthaug_pipeline.orchestration import run_pipeline


def git_commit() -> tuple[str | None, bool | None]:
    """The checked-out commit and whether tracked files differ from it; (None, None) outside a git checkout."""
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit.stdout.strip(), bool(status.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="digits")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--keep", default=None, help="write the output (models, shards, report) here instead of a temporary folder")
    args = parser.parse_args()
    commit, dirty = git_commit()  # before the run: the code that produced the numbers
    with tempfile.TemporaryDirectory() as tmp:
        output = str(Path(args.keep).resolve()) if args.keep else f"{tmp}/output"
        overrides = [*args.overrides, f"output.url={output}"]
        os.environ["DAGSTER_HOME"] = f"{tmp}/home"
        os.makedirs(os.environ["DAGSTER_HOME"])
        lines: list[str] = []

        def echo(line: str) -> None:
            lines.append(line)
            print(line, file=sys.stderr)

        started = time.perf_counter()
        with dg.DagsterInstance.get() as instance:
            result = run_pipeline(args.profile, overrides, instance, echo=echo)
        total = time.perf_counter() - started
    models = result.evaluation["models"]
    record = {
        "command": "python benchmarks/digits_run.py " + " ".join(sys.argv[1:]),
        "machine": machine_summary(describe_machine()),
        "date": time.strftime("%Y-%m-%d"),
        "profile": args.profile,
        "overrides": args.overrides,
        "git_commit": commit,
        "git_dirty": dirty,
        "resolved_profile": result.profile.model_dump(mode="json"),
        "total_seconds": round(total, 1),
        "stage_seconds": {k: round(v, 1) for k, v in result.seconds.items()},
        "estimate_printed": next((line.strip() for line in lines if line.strip().startswith("estimate:")), None),
        "baseline_top1": models["classifier_baseline"]["in_domain"]["top1"],
        "augmented_top1": models["classifier_augmented"]["in_domain"]["top1"],
        "baseline_shifted_top1": models["classifier_baseline"]["shifted_mean_top1"],
        "augmented_shifted_top1": models["classifier_augmented"]["shifted_mean_top1"],
    }
    out = Path(__file__).parent / "results" / f"{args.profile}_run.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
