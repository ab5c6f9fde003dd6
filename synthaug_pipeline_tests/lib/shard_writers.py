"""Helpers for the shard concurrency tests: tiny valid tables and a writer that races others round by round.

A module of its own (not a test file) so spawned writer processes import it without collecting tests.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from synthaug_pipeline.lib.shard_schema import build_shard_table
from synthaug_pipeline.lib.shards import write_class_shard

CREATED = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def writer_table(class_id: str, writer: int, round_: int, n: int = 4) -> pa.Table:
    """A valid shard table whose content names its writer and round (image bytes need not decode here)."""
    return build_shard_table(
        {
            "image": [f"writer {writer} round {round_} image {i}".encode() for i in range(n)],
            "image_format": "png",
            "height": 8,
            "width": 8,
            "channels": 1,
            "class_id": class_id,
            "class_index": 0,
            "generator_id": f"writer-{writer}",
            "generator_version": "v",
            "sampler": "ddim",
            "steps": 1,
            "guidance_scale": 1.0,
            "seed": list(range(round_ * 100, round_ * 100 + n)),
            "image_index": list(range(n)),
            "judge_confidence": [0.9] * n,
            "judge_top1": [0] * n,
            "nearest_real_distance": [1.0] * n,
            "accepted": [True] * n,
            "filter_version": "v1-0123456789ab",
            "filter_policy": "{}",
            "created_at": CREATED,
        }
    )


def race_writer(base_url: str, class_id: str, writer: int, rounds: int, barrier, output_settings: dict | None = None) -> None:
    """Write one shard per round, starting each round together with the other writers and the checker.

    Two barrier waits per round: one to start writing together, one to let the checker inspect the
    class after every writer returned. ``output_settings`` (an ``OutputConfig`` as a dict) configures
    S3 in a spawned process.
    """
    if output_settings is not None:
        from synthaug_pipeline.lib.config import OutputConfig
        from synthaug_pipeline.lib.storage import configure_output_storage

        configure_output_storage(OutputConfig(**output_settings))
    try:
        for round_ in range(rounds):
            barrier.wait(timeout=120)
            write_class_shard(base_url, class_id, writer_table(class_id, writer, round_))
            barrier.wait(timeout=120)
    except BaseException:
        barrier.abort()  # the others fail now instead of waiting out the timeout
        raise
