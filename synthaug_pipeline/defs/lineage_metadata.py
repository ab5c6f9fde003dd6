"""A model's lineage as Dagster metadata the UI renders: one table row per shard partition it read.

Dagster records one input event per upstream asset (the latest materialization of one partition of
``synthetic_shards``), so the model's own record of every shard it trained on is this table: class,
shard URI (credentials redacted), sha256, rows, accepted rows, filter version and the run that wrote it.
``synthetic_shards`` also reports each shard's sha256 as its data version, so Dagster's input data
version of the model (a hash over the class partitions' versions, below 100 classes) changes with any shard.
"""

from __future__ import annotations

import warnings

import dagster as dg

from synthaug_pipeline.lib.redaction import redact_url

# Output(data_version=...) is a beta parameter of a stable API; its warning would reach every `synthaug run` terminal
warnings.filterwarnings("ignore", message=r"Parameter `data_version` of initializer `Output.__init__`", category=dg.BetaWarning)

SHARD_COLUMNS = (
    ("class_id", "string", "class (partition key)"),
    ("uri", "string", "shard file (credentials redacted)"),
    ("sha256", "string", "content hash of the shard file"),
    ("rows", "int", "images in the shard"),
    ("accepted", "int", "images the filter accepted"),
    ("filter_version", "string", "filter policy version"),
    ("run_id", "string", "run that wrote the shard"),
)


def shard_rows(shards: list[dict]) -> list[dict]:
    """One plain row per shard, in the table's column order (missing fields of older records are None)."""
    return [
        {
            "class_id": str(shard.get("class_id")),
            "uri": redact_url(str(shard.get("uri", ""))),
            "sha256": shard.get("sha256"),
            "rows": shard.get("num_rows"),
            "accepted": shard.get("num_accepted"),
            "filter_version": shard.get("filter_version"),
            "run_id": shard.get("run_id"),
        }
        for shard in shards
    ]


def shard_lineage_table(shards: list[dict]) -> dg.TableMetadataValue:
    """The shards a model read, as a table in the asset's materialization metadata."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind, description=text) for name, kind, text in SHARD_COLUMNS])
    records = [dg.TableRecord({k: v for k, v in row.items() if v is not None}) for row in shard_rows(shards)]
    return dg.MetadataValue.table(records=records, schema=schema)
