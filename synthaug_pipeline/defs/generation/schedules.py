"""Scheduled regeneration: re-sample, re-score and re-filter the classes whose images scored worst.

``regenerate_worst_classes`` (stopped by default; turn it on in the UI) reads the last
``synthetic_scores`` materialization of every class, ranks classes with
:func:`~synthaug_pipeline.lib.regeneration.worst_classes` on ``regeneration.metric`` and asks for one
run per chosen class: ``synthetic_images`` -> ``synthetic_scores`` -> ``synthetic_shards`` of that
partition with the next ``regeneration_round``, so the class gets new seeds (recorded on every shard
row) and its shard is replaced. Classifiers are not retrained by the schedule: they read the new
shards the next time they are materialized, and their lineage names them.
"""

from __future__ import annotations

import dagster as dg

from synthaug_pipeline.defs.instance_queries import latest_materializations
from synthaug_pipeline.defs.resources import latest_materialization
from synthaug_pipeline.lib.config import Profile
from synthaug_pipeline.lib.regeneration import CLASSIFIER_METRICS, ClassQuality, worst_classes

REGENERATED_ASSETS = ("synthetic_images", "synthetic_scores", "synthetic_shards")


def _metadata_value(metadata: dict, key: str):
    entry = metadata.get(key)
    return None if entry is None else getattr(entry, "value", entry)


def latest_class_qualities(instance: dg.DagsterInstance, class_ids: list[str], metric: str) -> tuple[list[ClassQuality], list[str]]:
    """What the last ``synthetic_scores`` materialization of each class recorded, and the classes never scored.

    For a classifier metric (``validation_error``) the value comes from the last ``evaluation`` instead: the
    augmented classifier's per-class error on the validation split (None for every class until it exists).
    """
    qualities, never_scored = [], []
    records = latest_materializations(instance, "synthetic_scores", class_ids)  # one query for every class
    classifier_metric: dict = {}
    if metric in CLASSIFIER_METRICS:
        evaluation = latest_materialization(instance, "evaluation")
        if evaluation is not None:
            classifier_metric = _metadata_value(evaluation.asset_materialization.metadata, "augmented_" + metric) or {}
    for class_id in class_ids:
        record = records.get(class_id)
        if record is None:
            never_scored.append(class_id)
            continue
        metadata = record.asset_materialization.metadata
        value = classifier_metric.get(class_id) if metric in CLASSIFIER_METRICS else _metadata_value(metadata, metric)
        qualities.append(
            ClassQuality(
                class_id=class_id,
                metric_value=float(value) if isinstance(value, (int, float)) else None,
                error=_metadata_value(metadata, "error"),
                regeneration_round=int(_metadata_value(metadata, "regeneration_round") or 0),
                scored_event=record.storage_id,
            )
        )
    return qualities, never_scored


def build_regeneration_schedule(profile: Profile, class_ids: list[str]) -> dg.ScheduleDefinition:
    cfg = profile.regeneration

    @dg.schedule(
        name="regenerate_worst_classes",
        cron_schedule=cfg.cron,
        target=dg.AssetSelection.assets(*REGENERATED_ASSETS),
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Regenerate the {cfg.classes_per_run} classes with the worst {cfg.metric} (new seed round), re-score, re-filter.",
    )
    def regenerate_worst_classes(context: dg.ScheduleEvaluationContext):
        qualities, never_scored = latest_class_qualities(context.instance, class_ids, cfg.metric)
        picks, passed_over = worst_classes(qualities, cfg.metric, cfg.classes_per_run, cfg.max_rounds)
        if not picks:
            reasons = [f"{len(never_scored)} classes never scored (materialize them first)"] if never_scored else []
            return dg.SkipReason("no class to regenerate: " + "; ".join(reasons + passed_over or ["no scored class"]))
        # One request per scoring event: a tick that fires before the last regeneration of a class
        # has been scored asks for the same run key again, and Dagster launches it only once.
        return [
            dg.RunRequest(
                run_key=f"{pick.class_id}-round{pick.next_round}-after-event{pick.scored_event}",
                partition_key=pick.class_id,
                run_config={"ops": {"synthetic_images": {"config": {"regeneration_round": pick.next_round}}}},
                tags={
                    "synthaug/profile": profile.name,
                    "synthaug/regeneration_round": str(pick.next_round),
                    "synthaug/regeneration_reason": pick.reason,
                },
            )
            for pick in picks
        ]

    return regenerate_worst_classes
