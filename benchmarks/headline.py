"""The headline experiment, through the product: `synthaug experiment --profile fashion-headline`.

    python benchmarks/headline.py [--profile fashion-headline] [--set key=value ...] [--dagster-home DIR]

The grid (real only, filtered, unfiltered, retrieval control, same-data control generator; 3 seeds) is the
profile's ``experiments`` section, backfilled as ``experiment_run`` partitions of the asset graph and summarized
by ``experiment_summary`` (experiments.md / experiments.json in the output folder). Nothing is re-implemented here.
"""

import sys

from synthaug_pipeline.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(["experiment", *([] if "--profile" in args else ["--profile", "fashion-headline"]), *args]))
