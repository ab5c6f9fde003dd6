"""Questions to the Dagster instance asked once per asset, not once per class partition.

At 1000 classes, one ``fetch_materializations`` per class partition is 1000 event-log queries for
one asset (2000 for a classifier's lineage, 1000 per regeneration schedule tick). Here the event
log is asked for the latest storage id of every partition in one query, then for those records by
id, in pages of :data:`PAGE_SIZE`: 1000 partitions take 3 queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

# Storage ids (and partition keys) per query: well under SQLite's oldest bound-variable limit (999)
# and Dagster's records limit per fetch.
PAGE_SIZE = 500


def latest_materializations(
    instance: dg.DagsterInstance, asset: str, partitions: Sequence[str] | None = None
) -> dict[str, dg.EventLogRecord]:
    """``{partition: newest materialization record}`` of ``asset``, for the given ``partitions`` (every
    materialized partition when None), in the order asked; partitions never materialized are absent."""
    key = dg.AssetKey(asset)
    wanted = None if partitions is None else list(dict.fromkeys(partitions))
    if wanted == []:
        return {}
    # Past a page of partition keys, listing every partition's latest id costs less than a long IN list.
    by_partition = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(wanted) if wanted and len(wanted) <= PAGE_SIZE else None
    )
    order = wanted if wanted is not None else sorted(by_partition)
    storage_ids = {partition: by_partition[partition] for partition in order if partition in by_partition}
    ids = sorted(storage_ids.values())
    records: dict[int, dg.EventLogRecord] = {}
    for start in range(0, len(ids), PAGE_SIZE):
        page = ids[start : start + PAGE_SIZE]
        result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, storage_ids=page), limit=len(page))
        records.update((record.storage_id, record) for record in result.records)
    return {partition: records[storage_id] for partition, storage_id in storage_ids.items() if storage_id in records}
