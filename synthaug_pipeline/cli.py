"""`synthaug`: run the pipeline, list profiles, start the Dagster UI.

synthaug run [--profile digits] [--set key=value ...]
synthaug experiment [--profile fashion-headline] [--set key=value ...]
synthaug profiles
synthaug lineage MODEL_FOLDER | --shard URI
synthaug gc [--profile digits] [--delete]
synthaug dev
synthaug worker [--name NAME] [--concurrency 1]
synthaug bench generation|scoring [options]
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time

from synthaug_pipeline.lib.config import DEFAULT_PROFILE, OVERRIDES_ENV_VAR, PROFILE_ENV_VAR, ProfileError, available_profiles, load_profile
from synthaug_pipeline.lib.redaction import redact_url

BENCHMARKS = ("generation", "scoring")  # modules synthaug_pipeline.bench_<name> with main(argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthaug", description="Synthetic training images, scored, filtered and proven.")
    sub = parser.add_subparsers(dest="command", required=True)

    def profile_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--profile", default=None, help=f"profile name ({', '.join(available_profiles())}) or YAML path; default {DEFAULT_PROFILE}"
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a profile field, e.g. generator.train_steps=500",
        )

    run = sub.add_parser("run", help="materialize the whole graph for every class and print the report")
    profile_args(run)
    run.add_argument("--classes", nargs="+", default=None, help="only these class ids (partition keys)")
    run.add_argument("--dagster-home", default=None, help="Dagster instance folder (default $DAGSTER_HOME or ./.dagster_home)")
    run.add_argument(
        "--no-reuse",
        dest="reuse",
        action="store_false",
        help="redo every asset; by default materializations of an earlier run with the same settings and code are reused",
    )

    experiment = sub.add_parser(
        "experiment", help="materialize the profile's experiment grid (arms x regimes x ratios x seeds) and its summary as Dagster runs"
    )
    profile_args(experiment)
    experiment.add_argument("--dagster-home", default=None, help="Dagster instance folder (default $DAGSTER_HOME or ./.dagster_home)")
    experiment.add_argument("--no-reuse", dest="reuse", action="store_false", help="redo every asset and experiment")

    sub.add_parser("profiles", help="list packaged profiles")

    lineage = sub.add_parser("lineage", help="the shards and settings that fed a model, or the models that used a shard")
    lineage.add_argument("model", nargs="?", help="a model folder (…/models/classifier_augmented/<run>)")
    lineage.add_argument("--shard", default=None, help="list the models whose training read this shard URI")
    profile_args(lineage)

    gc = sub.add_parser("gc", help="list (or --delete) shard files no class manifest and no model lineage references")
    profile_args(gc)
    gc.add_argument("--delete", action="store_true", help="remove them (default: dry run, only list)")

    bench = sub.add_parser("bench", help="benchmarks: `synthaug bench generation --help`, `synthaug bench scoring --help`")
    bench.add_argument("name", choices=BENCHMARKS, help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")

    worker = sub.add_parser("worker", help="serve steps of execution.executor=celery runs (broker in $SYNTHAUG_CELERY_BROKER)")
    worker.add_argument("--name", default=None, help="worker name (default synthaug-<random>); the node is NAME@host")
    worker.add_argument("--concurrency", type=int, default=1, help="steps at once (default 1: start one worker per GPU)")
    worker.add_argument("--loglevel", default="INFO")

    dev = sub.add_parser("dev", help="start the Dagster UI on the same instance as `synthaug run`")
    profile_args(dev)
    dev.add_argument("--dagster-home", default=None)
    dev.add_argument("--port", default="3000")
    dev.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default: this machine only; 0.0.0.0 exposes it)")
    return parser


def _bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"synthaug_pipeline.bench_{args.name}")
    return int(module.main(args.args) or 0)


def _fail(message: str, code: int = 2) -> int:
    print(f"synthaug: error: {message}", file=sys.stderr)
    return code


def _validate(profile_name: str | None, overrides: list[str], classes: list[str] | None = None):
    """Everything that can be checked before anything is written: profile, settings, data path, classes."""
    from synthaug_pipeline.lib.datasets import check_classes, check_dataset_available, dataset_class_ids

    profile = load_profile(profile_name, overrides)
    # an explicit data.path must hold the data (of the --classes asked for): no Dagster run, no download
    data = profile.data.model_copy(update={"classes": check_classes(profile.data, classes)}) if classes else profile.data
    check_dataset_available(data)
    known = dataset_class_ids(profile.data)
    if profile.evaluation.shift_folders:
        from synthaug_pipeline.lib.shift_sets import check_shift_folders

        check_shift_folders(profile.evaluation.shift_folders, known, profile.evaluation.shift_folder_labels)
    if classes:
        known = check_classes(profile.data, classes)
    if profile.judge.pretrained or profile.classifier.pretrained:
        from synthaug_pipeline.lib.preflight import check_pretrained_settings  # imports torch: only when needed

        check_pretrained_settings(profile, known)
    return profile


def _run(args: argparse.Namespace) -> int:
    try:
        profile = _validate(args.profile, args.overrides, args.classes)
        if profile.experiments.in_run and not args.classes:  # the run ends with the grid: check it before anything trains
            from synthaug_pipeline.experiment_runs import check_grid_before_training

            check_grid_before_training(profile)
    except ProfileError as exc:
        return _fail(str(exc))

    from synthaug_pipeline.defs.instance import InstanceUnavailableError, open_instance
    from synthaug_pipeline.lib.cost import headline_cost
    from synthaug_pipeline.lib.report import headline_table
    from synthaug_pipeline.orchestration import PipelineError, prepare_dagster_home, run_pipeline

    home = prepare_dagster_home(args.dagster_home)
    print(f"synthaug: profile {profile.name}, output {redact_url(profile.output_url)}, Dagster instance {home}", flush=True)
    # A closed terminal (SIGHUP) stops the run like Ctrl-C: the run is marked failed and its pool slot freed.
    signal.signal(signal.SIGHUP, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    started = time.perf_counter()
    try:
        instance = open_instance(str(home))
    except InstanceUnavailableError as exc:
        return _fail(str(exc), code=1)
    with instance:
        try:
            grid_runs = 0
            if profile.experiments.in_run and not args.classes:  # the grid follows the pipeline: the estimate counts it
                from synthaug_pipeline.experiment_runs import new_grid_points

                grid_runs = new_grid_points(instance, profile)
            result = run_pipeline(args.profile, args.overrides, instance, classes=args.classes, resume=args.reuse, grid_runs=grid_runs)
        except (PipelineError, ProfileError) as exc:
            return _fail(str(exc), code=1)
    grid = None
    if profile.experiments.in_run and not args.classes and result.evaluation is not None:  # the default's few-shot comparison
        from synthaug_pipeline.experiment_runs import run_experiment_grid

        print("\nexperiments: the profile's grid (experiments.in_run)", flush=True)
        with open_instance(str(home)) as instance:
            try:
                grid = run_experiment_grid(args.profile, args.overrides, instance, resume=args.reuse, pipeline_done=True)
            except (PipelineError, ProfileError) as exc:
                return _fail(str(exc), code=1)
    total = time.perf_counter() - started
    if result.evaluation is None:  # one class: shards only
        print(f"\nshards: {redact_url(profile.output_url.rstrip('/'))}/synthetic_shards (no classifier comparison with one class)")
        print(f"total {total:.0f}s; see every run and asset with `synthaug dev`")
        return 0
    print()
    print(headline_table(result.evaluation))
    if (result.report or {}).get("cost"):
        print(headline_cost(result.report["cost"]))
    print()
    print(f"report: {redact_url(result.report['json'])}  {redact_url(result.report['markdown'])}")
    if grid is not None:
        _print_grid(grid)
    print(f"total {total:.0f}s; see every run and asset with `synthaug dev`")
    return 0


def _print_grid(outcome) -> None:
    from synthaug_pipeline.lib.experiment_report import comparison_lines, headline_lines

    summary = outcome.summary
    print()
    print(f"experiments: {len(outcome.trained)} trained, {len(outcome.reused)} reused; {redact_url(summary['markdown'])}")
    arms = outcome.profile.experiments.arms
    for line in headline_lines(summary, arms) or ["no paired real-only vs synthetic result (see experiments.md)"]:
        print(line)
    for line in comparison_lines(summary):
        print(line)


def _experiment(args: argparse.Namespace) -> int:
    try:
        profile = _validate(args.profile, args.overrides)
        from synthaug_pipeline.experiment_runs import check_grid_before_training

        check_grid_before_training(profile)  # class counts, pools, arms, validation split: before any Dagster run
    except ProfileError as exc:
        return _fail(str(exc))

    import dagster as dg

    from synthaug_pipeline.experiment_runs import PipelineError, run_experiment_grid
    from synthaug_pipeline.orchestration import prepare_dagster_home

    home = prepare_dagster_home(args.dagster_home)
    print(f"synthaug: experiment grid of profile {profile.name}, output {redact_url(profile.output_url)}, Dagster instance {home}", flush=True)
    signal.signal(signal.SIGHUP, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        try:
            outcome = run_experiment_grid(args.profile, args.overrides, instance, resume=args.reuse)
        except (PipelineError, ProfileError) as exc:
            return _fail(str(exc), code=1)
    _print_grid(outcome)
    print(f"total {time.perf_counter() - started:.0f}s; every run is in `synthaug dev` (jobs synthaug_experiment_runs, synthaug_experiment_summary)")
    return 0


def _dev(args: argparse.Namespace) -> int:
    try:
        _validate(args.profile, args.overrides)
    except ProfileError as exc:
        return _fail(str(exc))
    from synthaug_pipeline.orchestration import prepare_dagster_home

    home = prepare_dagster_home(args.dagster_home)
    env = dict(os.environ, DAGSTER_HOME=str(home))
    if args.profile:
        env[PROFILE_ENV_VAR] = args.profile
    if args.overrides:
        env[OVERRIDES_ENV_VAR] = ";".join(args.overrides)
    command = [sys.executable, "-m", "dagster", "dev", "-m", "synthaug_pipeline.definitions", "-p", args.port, "-h", args.host]
    return subprocess.call(command, env=env)


def _worker(args: argparse.Namespace) -> int:
    """A Celery worker for the steps of celery-executor runs: it listens on dagster-celery's queue."""
    import uuid

    from synthaug_pipeline.defs.executors import CELERY_BROKER_ENV, CELERY_QUEUE

    if not os.environ.get(CELERY_BROKER_ENV):
        return _fail(f"set ${CELERY_BROKER_ENV} to the broker URL the runs use (e.g. redis://localhost:6379/0)")
    if args.concurrency < 1:
        return _fail("--concurrency must be at least 1")
    name = args.name or f"synthaug-{uuid.uuid4().hex[:6]}"
    command = [
        sys.executable, "-m", "celery", "-A", "synthaug_pipeline.celery_worker", "worker", "-Q", CELERY_QUEUE,
        "-n", f"{name}@%h", "-c", str(args.concurrency), "--prefetch-multiplier=1", "--loglevel", args.loglevel,
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    os.execv(sys.executable, command)  # the worker replaces this process: signals reach Celery directly
    return 0  # pragma: no cover


def _lineage(args: argparse.Namespace) -> int:
    from synthaug_pipeline.lib.lineage import LineageError, describe_lineage, models_using_shard, read_lineage, verify_shards

    if bool(args.model) == bool(args.shard):
        return _fail("give either a model folder or --shard URI")
    if args.model:
        try:
            record = read_lineage(args.model)
        except (FileNotFoundError, LineageError) as exc:
            return _fail(str(exc))
        print(f"model folder: {redact_url(args.model)}")
        for line in describe_lineage(record):
            print(line)
        bad = [(uri, status) for uri, status in verify_shards(record) if status != "ok"]
        for uri, status in bad:
            print(f"shard {status}: {uri}" + (" (its bytes no longer match the recorded sha256)" if status == "changed" else ""))
        print(f"shards verified: {len(record.get('shards', [])) - len(bad)} of {len(record.get('shards', []))} match their sha256")
        return 1 if bad else 0
    try:
        profile = load_profile(args.profile, args.overrides)
        models = models_using_shard(profile.output_url, args.shard)
    except (ProfileError, LineageError) as exc:
        return _fail(str(exc))
    if not models:
        print(f"no model under {redact_url(profile.output_url)}/models used {redact_url(args.shard)}")
        return 1
    for model in models:
        print(f"{model['model']}  {model['name']} version {model['version']} (shard sha256 {model['shard_sha256'][:16]})")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from synthaug_pipeline.lib.shard_gc import gc_shards
    from synthaug_pipeline.lib.storage import configure_output_storage

    try:
        profile = load_profile(args.profile, args.overrides)
    except ProfileError as exc:
        return _fail(str(exc))
    configure_output_storage(profile.output)
    report = gc_shards(profile.output_url, delete=args.delete, min_age_s=profile.output.stale_temp_after_s)
    for path in report.removable:
        print(f"{'removed' if args.delete else 'unreferenced'}: {path}")
    verb = "removed" if args.delete else "would remove (run with --delete)"
    print(f"{len(report.kept)} shard files kept, {len(report.removable)} {verb}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "profiles":
        for name in available_profiles():
            print(f"{name:10s} {load_profile(name, []).description}")
        return 0
    if args.command == "dev":
        return _dev(args)
    if args.command == "lineage":
        return _lineage(args)
    if args.command == "gc":
        return _gc(args)
    if args.command == "worker":
        return _worker(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "experiment":
        return _experiment(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
