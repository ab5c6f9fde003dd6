"""What asset bodies attach as metadata goes through :func:`add_metadata`: floats rounded for reading,
and at most 256 KB per call, so 1000 class partitions stay small in Dagster's event log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from synthaug_pipeline.lib.metadata import METADATA_LIMIT_BYTES, bounded_metadata


def add_metadata(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    metadata: Mapping[str, Any],
    output_name: str | None = None,
    limit_bytes: int = METADATA_LIMIT_BYTES,
) -> None:
    """``context.add_output_metadata(metadata)`` through :func:`~synthaug_pipeline.lib.metadata.bounded_metadata`."""
    bounded = bounded_metadata(metadata, limit_bytes=limit_bytes)
    if output_name is None:
        context.add_output_metadata(bounded)
    else:
        context.add_output_metadata(bounded, output_name=output_name)
