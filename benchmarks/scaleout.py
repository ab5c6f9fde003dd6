"""Scaling-out benchmark: the same tiny run on in_process, multiprocess and Celery (two workers), on real servers.

    python benchmarks/scaleout.py [--classes 4] [--executors in_process,multiprocess,celery] [--out benchmarks/results/scaleout.json]

Starts SeaweedFS (S3), PostgreSQL, Redis and two `synthaug worker` processes on loopback ports (the test
suite's servers, synthaug_pipeline_tests/services.py), then runs `synthaug run`'s pipeline once per executor,
each on the PostgreSQL instance with its output in its own prefix of the bucket and nothing reused. Records
the wall time of each stage and of each class run, the per-class overhead of each executor against in_process
(the difference of the per-class stages' time, divided by the number of classes) and the bytes written to the
bucket per class (shards, and everything under the prefix). Tiny models: this measures orchestration, not models.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides  # noqa: E402

# the test suite's tiny two-class settings (data.classes and output.url are set per executor)
TINY = [item for item in tiny_overrides("") if not item.startswith(("data.classes=", "output.url="))]


def _bucket_bytes(fs, root: str, classes: list[str]) -> dict:
    fs.invalidate_cache()
    shards = {c: sum(fs.du(f"{root}/synthetic_shards/class={c}", total=False).values()) for c in classes}
    return {"total": int(fs.du(root)), "shards_per_class": shards, "per_class_total": int(fs.du(root)) / len(classes)}


def run_one(executor: str, classes: list[str], endpoint: str, bucket: str, home: Path) -> dict:
    import dagster as dg

    from synthaug_pipeline.lib.config import load_profile
    from synthaug_pipeline.lib.storage import output_filesystem
    from synthaug_pipeline.orchestration import run_pipeline

    output = f"s3://{bucket}/bench-{executor}-{int(time.time())}"
    overrides = [
        *TINY,
        f"data.classes={json.dumps(classes)}",
        f"output.url={output}",
        f"output.endpoint_url={endpoint}",
        "output.region=us-east-1",
        f"execution.executor={executor}",
        f"execution.max_concurrent={min(2, len(classes))}",
    ]
    lines: list[str] = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        started = time.perf_counter()
        def echo(line: str) -> None:
            lines.append(line)
            print(f"  [{executor}] {line}", flush=True)

        result = run_pipeline("digits", overrides, instance, echo=echo, resume=False)
        wall = time.perf_counter() - started
    per_class = {m[1]: float(m[2]) for line in lines if (m := re.match(r"\s+class (\S+): ([0-9.]+)s$", line))}
    fs, root = output_filesystem(load_profile("digits", overrides))
    return {
        "executor": executor,
        "classes": len(classes),
        "wall_s": round(wall, 1),
        "stages_s": {k: round(v, 1) for k, v in result.seconds.items()},
        "class_runs_s": per_class,
        "runs": len(result.run_ids),
        "top1_delta": result.evaluation["delta"].get("top1_delta") if result.evaluation else None,
        "bucket_bytes": _bucket_bytes(fs, root, classes),
        "cost": (result.report or {}).get("cost", {}).get("points_per_device_hour"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=4, help="digit classes 0..N-1 (default 4)")
    parser.add_argument("--executors", default="in_process,multiprocess,celery")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scaleout.json"))
    args = parser.parse_args(argv)
    from synthaug_pipeline.defs.executors import CELERY_BROKER_ENV
    from synthaug_pipeline_tests.services import celery_workers, postgres, redis, seaweedfs

    classes = [str(c) for c in range(args.classes)]
    folder = Path(tempfile.mkdtemp(prefix="synthaug-bench-scaleout-"))
    home = folder / "home"
    home.mkdir()
    shutil.copyfile(REPO / "docker" / "dagster.yaml", home / "dagster.yaml")
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret-key", DAGSTER_HOME=str(home))
    results = []
    with seaweedfs(folder, "bench") as endpoint, postgres("bench-pg-password") as pg, redis("bench-redis-password") as broker:
        os.environ.update({**pg.env(), CELERY_BROKER_ENV: broker})
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with celery_workers(["bench1", "bench2"], env, folder):
            for executor in args.executors.split(","):
                print(f"== {executor}: {len(classes)} classes", flush=True)
                results.append(run_one(executor, classes, endpoint, "bench", home))
    base = next((r for r in results if r["executor"] == "in_process"), None)
    for r in results:
        per_class_stages = sum(r["stages_s"].get(s, 0.0) for s in ("real images", "synthetic"))
        r["per_class_stages_s"] = round(per_class_stages, 1)
        if base is not None:
            base_stages = sum(base["stages_s"].get(s, 0.0) for s in ("real images", "synthetic"))
            r["overhead_per_class_s"] = round((per_class_stages - base_stages) / len(classes), 1)
            r["overhead_total_s"] = round(r["wall_s"] - base["wall_s"], 1)
    record = {
        "command": "python benchmarks/scaleout.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{os.cpu_count()} cores, shared with other jobs (timings are noisy)",
        "load_average_at_end": os.getloadavg(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"{'executor':14s} {'wall s':>8s} {'per-class stages s':>19s} {'overhead/class s':>17s} {'bucket bytes/class':>19s}")
    for r in results:
        print(
            f"{r['executor']:14s} {r['wall_s']:8.1f} {r['per_class_stages_s']:19.1f} {r.get('overhead_per_class_s', 0):17.1f} "
            f"{r['bucket_bytes']['per_class_total']:19,.0f}"
        )
    print(f"written {args.out}")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
