"""Summarize stored experiment runs again, with today's summary code (e.g. runs made by an older commit).

    python benchmarks/resummarize.py OUTPUT_FOLDER [KEY ...] [--json OUT.json]

Reads ``<OUTPUT_FOLDER>/assets/experiment_run/<key>/value.json`` (what the ``experiment_run`` asset stored; the
latest materialization of each key) and prints experiments.md as ``experiment_summary`` would write it for those
keys (all stored keys when none are given). Each run counts with its own fingerprint: nothing is checked for
staleness here, so give keys made under one setup.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from synthaug_pipeline.lib.experiment_summary import render_experiments_markdown, summarize_experiments
from synthaug_pipeline.lib.experiments import parse_experiment_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the profile's output folder (output.url)")
    parser.add_argument("keys", nargs="*", help="experiment keys (default: every stored one)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    folder = args.output / "assets" / "experiment_run"
    if not folder.is_dir():
        print(f"resummarize: no stored experiment runs under {folder}", file=sys.stderr)
        return 2
    keys = args.keys or sorted(p.name for p in folder.iterdir() if (p / "value.json").is_file())
    results = {}
    for key in keys:
        parse_experiment_key(key)  # a clear error for a mistyped key
        path = folder / key / "value.json"
        if not path.is_file():
            print(f"resummarize: {key} has no stored run ({path})", file=sys.stderr)
            return 2
        results[key] = json.loads(path.read_text())["value"]
    summary = summarize_experiments(results, keys, {key: value.get("fingerprint") for key, value in results.items()})
    print(render_experiments_markdown(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
