"""`synthaug`: run the pipeline, list profiles, start the Dagster UI.

    synthaug run [--profile digits] [--set key=value ...]
    synthaug profiles
    synthaug dev
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from synthaug_pipeline.lib.config import DEFAULT_PROFILE, OVERRIDES_ENV_VAR, PROFILE_ENV_VAR, ProfileError, available_profiles, load_profile


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthaug", description="Synthetic training images, scored, filtered and proven.")
    sub = parser.add_subparsers(dest="command", required=True)

    def profile_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--profile", default=None, help=f"profile name ({', '.join(available_profiles())}) or YAML path; default {DEFAULT_PROFILE}")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a profile field, e.g. generator.train_steps=500")

    run = sub.add_parser("run", help="materialize the whole graph for every class and print the report")
    profile_args(run)
    run.add_argument("--classes", nargs="+", default=None, help="only these class ids (partition keys)")
    run.add_argument("--dagster-home", default=None, help="Dagster instance folder (default $DAGSTER_HOME or ./.dagster_home)")

    sub.add_parser("profiles", help="list packaged profiles")

    dev = sub.add_parser("dev", help="start the Dagster UI on the same instance as `synthaug run`")
    profile_args(dev)
    dev.add_argument("--dagster-home", default=None)
    dev.add_argument("--port", default="3000")
    return parser


def _fail(message: str, code: int = 2) -> int:
    print(f"synthaug: error: {message}", file=sys.stderr)
    return code


def _validate(profile_name: str | None, overrides: list[str], classes: list[str] | None = None):
    """Everything that can be checked before anything is written: profile, settings, data path, classes."""
    from synthaug_pipeline.lib.datasets import dataset_class_ids

    profile = load_profile(profile_name, overrides)
    known = dataset_class_ids(profile.data)
    if classes:
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise ProfileError(f"--classes names unknown classes {unknown}; this profile has {known[:20]}")
    return profile


def _run(args: argparse.Namespace) -> int:
    try:
        profile = _validate(args.profile, args.overrides, args.classes)
    except ProfileError as exc:
        return _fail(str(exc))

    import dagster as dg

    from synthaug_pipeline.lib.report import headline_table
    from synthaug_pipeline.orchestration import PipelineError, prepare_dagster_home, run_pipeline

    home = prepare_dagster_home(args.dagster_home)
    print(f"synthaug: profile {profile.name}, output {profile.output_url}, Dagster instance {home}")
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        try:
            result = run_pipeline(args.profile, args.overrides, instance, classes=args.classes)
        except (PipelineError, ProfileError) as exc:
            return _fail(str(exc), code=1)
    total = time.perf_counter() - started
    print()
    print(headline_table(result.evaluation))
    print()
    print(f"report: {result.report['json']}  {result.report['markdown']}")
    print(f"total {total:.0f}s; see every run and asset with `synthaug dev`")
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
    command = [sys.executable, "-m", "dagster", "dev", "-m", "synthaug_pipeline.definitions", "-p", args.port]
    return subprocess.call(command, env=env)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "profiles":
        for name in available_profiles():
            print(f"{name:10s} {load_profile(name, []).description}")
        return 0
    if args.command == "dev":
        return _dev(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
