"""The Dagster layer at 10, 100 and 1000 class partitions: overhead, metadata, event log, memory, model loads.

    python benchmarks/scale.py --classes 10 100 1000 [--batch 20] [--out benchmarks/results/scale.json]
    python benchmarks/scale.py --imagenet-samples PATH [--imagenet-classes N] [--keep DIR] [--out ...]   # imagenet profile

Default source: the digits images replicated to N classes (class c holds the digit c mod 10, with a little
pixel noise so classes are not identical), written as an image folder and run with the ``folder`` profile at
tiny settings (2-step models, 3 generated images per class): this measures orchestration, storage and
memory, not image quality. ``--imagenet-samples`` runs the ``imagenet`` profile over every wnid (or the first
``--imagenet-classes`` N) with the real EfficientNet-Lite0 judge (at its native 224 px) and a tiny randomly
initialised DiT (the DiT-XL/2 code path, 2 images per class), real images = the sample set's one photo per class.
One photo cannot be split: it is the class's training image and, as a copy, its test image, so test numbers are
NOT held out (they measure orchestration only), and two blocking shard checks that need 2 real images per class
are relaxed in the benchmark's own process only (:func:`orchestration_only_checks`). ``--keep DIR`` leaves the
instance and the output there (with ``run.json``, the settings) for ``benchmarks/ui_partitions.py``.

Each N runs `synthaug run`'s code (``run_pipeline``) in a fresh child process on a fresh instance and
records: wall time per stage; per run, the run's wall time minus the time its steps took (Dagster's own
overhead) divided by the asset partitions it materialized (median and total); the largest materialization
metadata of any asset partition (bytes, Dagster's serialization); event-log and ``$DAGSTER_HOME`` bytes per
class; the child's peak RSS; model loads per kind (``lib.model_store``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synthaug_pipeline.lib.machine import describe_machine, finish_machine, machine_summary  # noqa: E402
from synthaug_pipeline_tests.tiny_models import TINY_FOLDER_SETTINGS as TINY  # noqa: E402 - the tests' tiny settings



def digits_folder(root: Path, classes: int, per_class: int = 6) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).astype("uint8")
    rng = __import__("numpy").random.default_rng(0)
    for c in range(classes):
        folder = root / f"c{c:04d}"
        folder.mkdir(parents=True)
        pool = images[digits.target == c % 10]
        for i in range(per_class):
            noisy = (pool[(c // 10 + i) % len(pool)].astype(int) + rng.integers(-8, 9, (8, 8))).clip(0, 255).astype("uint8")
            Image.fromarray(noisy, "L").save(folder / f"{i}.png")
    return root


def child(args: argparse.Namespace) -> None:
    """In a fresh process: run the pipeline and print the measurements as JSON."""
    import dagster as dg
    from dagster._serdes import serialize_value

    from synthaug_pipeline.lib.model_store import PROCESS_STORE
    from synthaug_pipeline.orchestration import prepare_dagster_home, run_pipeline

    home = prepare_dagster_home(args.home)
    if args.profile == "imagenet":  # one photo per class: see orchestration_only_checks
        orchestration_only_checks()
    lines: list[str] = []
    started = time.perf_counter()
    error = None
    with dg.DagsterInstance.get() as instance:
        try:
            result = run_pipeline(args.profile, json.loads(args.overrides), instance, echo=lines.append)
            seconds, run_ids = result.seconds, result.run_ids
        except Exception as exc:  # noqa: BLE001 - recorded: the measurements up to the failure still count
            error, seconds, run_ids = f"{type(exc).__name__}: {exc}", {}, [r.run_id for r in instance.get_runs()]
        wall = time.perf_counter() - started
        per_partition, metadata_max, asset_partitions = [], {}, 0
        for run_id in run_ids:
            run = instance.get_run_record_by_id(run_id)
            stats = instance.get_run_step_stats(run_id)
            steps = sum((s.end_time or 0) - (s.start_time or 0) for s in stats)
            records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
            partitions = max(1, len(records))
            asset_partitions += len(records)
            if run.start_time and run.end_time:
                per_partition.append(max(0.0, (run.end_time - run.start_time) - steps) / partitions)
            for record in records:
                materialization = record.event_log_entry.asset_materialization
                size = len(serialize_value(materialization.metadata))
                name = materialization.asset_key.to_user_string()
                metadata_max[name] = max(metadata_max.get(name, 0), size)
    history = sum(p.stat().st_size for p in (home / "history").rglob("*") if p.is_file()) if (home / "history").exists() else 0
    total = sum(p.stat().st_size for p in home.rglob("*") if p.is_file())
    print(
        json.dumps(
            {
                "wall_s": round(wall, 1),
                "stage_s": {k: round(v, 1) for k, v in seconds.items()},
                "runs": len(run_ids),
                "asset_partitions": asset_partitions,
                "overhead_per_asset_partition_s": {
                    "median": round(statistics.median(per_partition), 3) if per_partition else None,
                    "max": round(max(per_partition), 3) if per_partition else None,
                },
                "metadata_bytes_max_per_asset_partition": metadata_max,
                "event_log_bytes": history,
                "dagster_home_bytes": total,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "model_loads": dict(PROCESS_STORE.loads),
                "error": error,
                "lines": lines[-8:],
            }
        )
    )


def measure(profile: str, overrides: list[str], classes: int, work: Path) -> dict:
    argv = [sys.executable, __file__, "--child", "--profile", profile, "--home", str(work / "home"), "--overrides", json.dumps(overrides)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SYNTHAUG_PROFILE", None), env.pop("SYNTHAUG_SET", None)
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=6 * 3600)
    if done.returncode != 0:
        raise SystemExit(f"child failed for {classes} classes:\n{done.stderr[-3000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["classes"] = classes
    record["event_log_bytes_per_class"] = round(record["event_log_bytes"] / classes)
    record["dagster_home_bytes_per_class"] = round(record["dagster_home_bytes"] / classes)
    output = work / "output"
    record["output_bytes_per_class"] = round(sum(p.stat().st_size for p in output.rglob("*") if p.is_file()) / classes)
    return record


def orchestration_samples(samples: str, work: Path, classes: int) -> Path:
    """The sample set as the benchmark runs it: each class's one photo as its training image *and*, as a copy, its
    test image (a Parquet ``split`` column), for the first ``classes`` wnids. The test split is therefore NOT held
    out: test accuracies measured on it measure orchestration only (the cost of the evaluation stage), not accuracy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthaug_pipeline.lib.imagenet import imagenet_1k

    wanted = imagenet_1k()[:classes]
    table = pq.read_table(samples, columns=["image", "wnid"])
    if sorted(table.column("wnid").to_pylist()) != sorted(imagenet_1k()):
        raise SystemExit(f"{samples} does not hold one image for each of the 1000 ImageNet-1k wnids")
    table = table.filter(pa.compute.is_in(table.column("wnid"), pa.array(wanted)))
    both = pa.concat_tables([table.append_column("split", pa.array(["train"] * len(table))),
                             table.append_column("split", pa.array(["test"] * len(table)))])
    path = work / "samples_train_and_test.parquet"
    pq.write_table(both, path)
    return path


def orchestration_only_checks() -> None:
    """Benchmark only (in this child process, never in the product): the two blocking shard checks that need 2 real
    images per class, ``metrics_computed`` (FID/KID) and ``no_test_leaks_accepted`` (its duplicate threshold is derived
    from real-image distances), pass for a class with fewer than 2 real images, with ``orchestration_only`` in their
    metadata; FID/KID stay None. Every other failure of those checks still fails. The product has no such switch:
    with one image per class, ``synthaug run`` stops before the classifiers, as it should."""
    from synthaug_pipeline.defs.scoring import assets

    metrics, leaks = assets.metrics_computed_check, assets.accepted_test_leak_check
    note = "benchmark: 1 real image per class, FID/KID and the duplicate threshold cannot be computed (orchestration only)"

    def metrics_check(class_id: str, summary: dict) -> tuple[bool, dict]:
        passed, metadata = metrics(class_id, summary)
        if not passed and not summary.get("error") and (summary.get("n_real") or 0) < 2:
            return True, {**metadata, "orchestration_only": note}
        return passed, metadata

    def leak_check(scores, accepted):
        passed, metadata = leaks(scores, accepted)
        if not passed and scores is not None and scores.is_test_leak is None and (scores.summary.get("n_real") or 0) < 2:
            return True, {**metadata, "orchestration_only": note}
        return passed, metadata

    assets.metrics_computed_check, assets.accepted_test_leak_check = metrics_check, leak_check


def imagenet_overrides(samples: str, work: Path, classes: int) -> list[str]:
    from synthaug_pipeline.lib.imagenet import imagenet_1k
    from synthaug_pipeline_tests.tiny_models import tiny_dit_pipeline  # the tests' tiny DiT (random weights)

    dit = tiny_dit_pipeline(work / "tiny-dit", num_labels=1000)
    data = orchestration_samples(samples, work, classes)
    subset = "null" if classes == len(imagenet_1k()) else "[" + ",".join(imagenet_1k()[:classes]) + "]"
    return [
        f"data.path={data}",
        f"data.classes={subset}",  # the first N wnids in the standard order (null: all 1000)
        "data.image_size=32",
        "data.validation_fraction=0",
        "execution.executor=in_process",  # orchestration_only_checks patches this process's shard checks
        "generator.backend=dit",
        f"generator.model={dit}",
        "generator.images_per_class=2",
        "generator.sample_steps=2",
        "filter.min_confidence=0.0",
        "filter.require_label_match=false",
        "filter.min_accepted_per_class=0",
        "classifier.steps=2",
        "classifier.model=synthaug_cnn",
        "evaluation.corruptions=[]",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--batch", type=int, default=20, help="execution.classes_per_run")
    parser.add_argument("--imagenet-samples", default=None, help="samples.parquet: run the imagenet profile over all 1000 wnids")
    parser.add_argument("--imagenet-classes", type=int, default=1000, help="with --imagenet-samples: only the first N wnids")
    parser.add_argument("--keep", default=None, help="with --imagenet-samples: work in this folder and keep it (instance + output)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", default="folder", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    machine = describe_machine()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.imagenet_samples:
            if not 1 <= args.imagenet_classes <= 1000:
                raise SystemExit(f"--imagenet-classes {args.imagenet_classes}: ImageNet-1k has 1 to 1000 classes")
            work = Path(args.keep).resolve() if args.keep else Path(tmp) / "imagenet"
            work.mkdir(parents=True)  # a kept folder must be new: the instance and the output are measured from empty
            n = args.imagenet_classes
            overrides = [*imagenet_overrides(args.imagenet_samples, work, n), f"execution.classes_per_run={args.batch}", f"output.url={work / 'output'}"]
            (work / "run.json").write_text(json.dumps({"profile": "imagenet", "overrides": overrides, "dagster_home": str(work / "home")}))
            results.append(measure("imagenet", overrides, n, work))
            print(json.dumps(results[-1]), flush=True)
        else:
            for n in args.classes:
                work = Path(tmp) / f"n{n}"
                work.mkdir()
                data = digits_folder(work / "data", n)
                overrides = [f"data.path={data}", *TINY, f"execution.classes_per_run={args.batch}", f"output.url={work / 'output'}"]
                results.append(measure("folder", overrides, n, work))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "lines"}), flush=True)
    record = {
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": finish_machine(machine),
        "machine_summary": machine_summary(machine),
        "batch": args.batch,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
