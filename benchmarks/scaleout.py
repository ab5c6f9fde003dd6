"""Scaling-out benchmark: the same tiny run on in_process, multiprocess and Celery (two workers), on real servers.

    python benchmarks/scaleout.py [--classes 100] [--batch 20] [--generator dit|unet]
                                  [--executors in_process,multiprocess,celery] [--out benchmarks/results/scaleout.json]

Starts SeaweedFS (S3), PostgreSQL, Redis and two `synthaug worker` processes on loopback ports (the test
suite's servers, synthaug_pipeline_tests/services.py), then runs `synthaug run`'s pipeline once per executor,
each on the PostgreSQL instance with its output in its own prefix of the bucket and nothing reused.

Data and models are those of benchmarks/scale.py: the digits replicated to N classes as an image folder (the
``folder`` profile at the tests' tiny settings, ``TINY_FOLDER_SETTINGS``), and with ``--generator dit`` (the
default) the tests' tiny random-weight DiT as a pretrained generator (no generator training; class ``cNNNN``
is DiT label NNNN through ``generator.class_index_map``). Every executor runs class batches of ``--batch``
classes per run (``execution.classes_per_run``; other executors split the classes so both concurrent runs get
a batch). Records the wall time of each stage and of each class batch, the per-class overhead of each executor
against in_process (wall time and per-class stages), the bytes written to the bucket per class (shards, and
everything under the prefix), the Dagster runs and steps, and the load average before and after each executor.
Tiny models: this measures orchestration, not models. The results file is rewritten after each executor.
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
sys.path.insert(0, str(REPO / "benchmarks"))

from synthaug_pipeline_tests.tiny_models import TINY_FOLDER_SETTINGS  # noqa: E402 - the tests' tiny settings

PER_CLASS_STAGES = ("real images", "synthetic")


def dit_overrides(work: Path, classes: int) -> list[str]:
    """The tiny DiT (random weights, 16 px) as the folder profile's generator, one DiT label per class."""
    from synthaug_pipeline_tests.tiny_models import tiny_dit_pipeline

    dit = tiny_dit_pipeline(work / "tiny-dit", num_labels=classes)
    index_map = work / "dit-labels.json"
    index_map.write_text(json.dumps({f"c{c:04d}": c for c in range(classes)}))
    return [
        "generator.backend=dit",
        f"generator.model={dit}",
        f"generator.class_index_map={index_map}",
    ]


def _bucket_bytes(fs, root: str, classes: list[str]) -> dict:
    fs.invalidate_cache()
    shards = [sum(fs.du(f"{root}/synthetic_shards/class={c}", total=False).values()) for c in classes]
    per_class_assets = 0
    for asset in ("real_images", "real_features", "synthetic_images", "synthetic_scores", "synthetic_shards"):
        try:
            per_class_assets += int(fs.du(f"{root}/assets/{asset}"))
        except FileNotFoundError:
            pass
    total = int(fs.du(root))
    return {
        "total": total,
        "per_class_total": round(total / len(classes)),
        "shard_per_class_mean": round(sum(shards) / len(classes)),
        "per_class_assets_and_shards_per_class": round((per_class_assets + sum(shards)) / len(classes)),
    }


def _steps(instance, run_ids: list[str]) -> dict:
    stats = [s for run_id in run_ids for s in instance.get_run_step_stats(run_id)]
    busy = sum((s.end_time or 0) - (s.start_time or 0) for s in stats)
    return {"runs": len(run_ids), "steps": len(stats), "step_seconds": round(busy, 1)}


def run_one(executor: str, base: list[str], classes: list[str], endpoint: str, bucket: str, home: Path) -> dict:
    import dagster as dg

    from synthaug_pipeline.lib.config import load_profile
    from synthaug_pipeline.lib.storage import output_filesystem
    from synthaug_pipeline.orchestration import run_pipeline

    output = f"s3://{bucket}/bench-{executor}-{int(time.time())}"
    overrides = [
        *base,
        f"output.url={output}",
        f"output.endpoint_url={endpoint}",
        "output.region=us-east-1",
        f"execution.executor={executor}",
        f"execution.max_concurrent={min(2, len(classes))}",
    ]
    lines: list[str] = []
    load_before = os.getloadavg()

    def echo(line: str) -> None:
        lines.append(line)
        print(f"  [{executor}] {line}", flush=True)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        started = time.perf_counter()
        result = run_pipeline("folder", overrides, instance, echo=echo, resume=False)
        wall = time.perf_counter() - started
        steps = _steps(instance, result.run_ids)
    batches = {m[1]: float(m[2]) for line in lines if (m := re.match(r"\s+(?:class|classes) (\S+)(?: \(\d+\))?: ([0-9.]+)s$", line))}
    fs, root = output_filesystem(load_profile("folder", overrides))
    return {
        "executor": executor,
        "classes": len(classes),
        "wall_s": round(wall, 1),
        "stages_s": {k: round(v, 1) for k, v in result.seconds.items()},
        "class_batches_s": batches,
        **steps,
        "top1_delta": result.evaluation["delta"].get("top1_delta") if result.evaluation else None,
        "bucket_bytes": _bucket_bytes(fs, root, classes),
        "cost": (result.report or {}).get("cost", {}).get("points_per_device_hour"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def _compare(results: list[dict], classes: int) -> None:
    base = next((r for r in results if r["executor"] == "in_process" and r.get("wall_s") is not None), None)
    for r in results:
        if r.get("wall_s") is None:
            continue
        r["per_class_stages_s"] = round(sum(r["stages_s"].get(s, 0.0) for s in PER_CLASS_STAGES), 1)
        if base is not None:
            r["overhead_per_class_s"] = round((r["per_class_stages_s"] - base["per_class_stages_s"]) / classes, 2)
            r["wall_overhead_per_class_s"] = round((r["wall_s"] - base["wall_s"]) / classes, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100, help="classes c0000..cN-1 (default 100)")
    parser.add_argument("--batch", type=int, default=20, help="execution.classes_per_run (default 20)")
    parser.add_argument("--generator", choices=("dit", "unet"), default="dit", help="tiny pretrained DiT, or the tiny trained UNet")
    parser.add_argument("--executors", default="in_process,multiprocess,celery")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scaleout.json"))
    args = parser.parse_args(argv)
    from scale import digits_folder  # benchmarks/scale.py: the same replicated digits

    from synthaug_pipeline.defs.executors import CELERY_BROKER_ENV
    from synthaug_pipeline.lib.machine import describe_machine, finish_machine, machine_summary
    from synthaug_pipeline_tests.services import celery_workers, postgres, redis, seaweedfs

    folder = Path(tempfile.mkdtemp(prefix="synthaug-bench-scaleout-"))
    data = digits_folder(folder / "data", args.classes)
    classes = sorted(p.name for p in data.iterdir())
    base = [f"data.path={data}", *TINY_FOLDER_SETTINGS, f"execution.classes_per_run={args.batch}"]
    if args.generator == "dit":
        base += dit_overrides(folder, args.classes)
    home = folder / "home"
    home.mkdir()
    shutil.copyfile(REPO / "docker" / "dagster.yaml", home / "dagster.yaml")
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret-key", DAGSTER_HOME=str(home))
    os.environ.pop("SYNTHAUG_PROFILE", None), os.environ.pop("SYNTHAUG_SET", None)
    machine = describe_machine()
    record = {
        "command": "python benchmarks/scaleout.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "classes": args.classes,
        "batch": args.batch,
        "generator": args.generator,
        "results": [],
    }

    def write() -> None:
        _compare(record["results"], args.classes)
        record["machine_summary"] = machine_summary(machine)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")

    with seaweedfs(folder, "bench") as endpoint, postgres("bench-pg-password") as pg, redis("bench-redis-password") as broker:
        os.environ.update({**pg.env(), CELERY_BROKER_ENV: broker})
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with celery_workers(["bench1", "bench2"], env, folder):
            for executor in args.executors.split(","):
                print(f"== {executor}: {len(classes)} classes, {args.batch} per run, load {os.getloadavg()}", flush=True)
                try:
                    record["results"].append(run_one(executor, base, classes, endpoint, "bench", home))
                except Exception as exc:  # noqa: BLE001 - recorded: the other executors still run
                    record["results"].append({"executor": executor, "error": f"{type(exc).__name__}: {exc}"[:2000], "stages_s": {}, "wall_s": None})
                    print(f"  [{executor}] failed: {record['results'][-1]['error']}", flush=True)
                record["results"] = [r for r in record["results"] if r.get("wall_s") is not None] + [
                    r for r in record["results"] if r.get("wall_s") is None
                ]
                write()
    record["machine"] = finish_machine(machine)
    write()
    print(f"{'executor':14s} {'wall s':>8s} {'per-class stages s':>19s} {'overhead/class s':>17s} {'bucket bytes/class':>19s}")
    for r in record["results"]:
        if r.get("wall_s") is None:
            print(f"{r['executor']:14s} failed: {r['error'][:200]}")
            continue
        print(
            f"{r['executor']:14s} {r['wall_s']:8.1f} {r['per_class_stages_s']:19.1f} {r.get('overhead_per_class_s', 0):17.2f} "
            f"{r['bucket_bytes']['per_class_total']:19,.0f}"
        )
    print(f"written {args.out}")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
