"""Per-class partitions: one partition per class id of the active profile (ImageNet wnids in production)."""

import dagster as dg


def class_partitions(class_ids: list[str]) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(class_ids)
