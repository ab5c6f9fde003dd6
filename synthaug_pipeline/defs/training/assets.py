"""Training: the real-only baseline and the real + synthetic classifier, each with its lineage.

Both check their inputs before training: the extra shifted test sets the evaluation will read
(class ids), and for the augmented model that no shard failed a blocking check (recorded with the
shard, so a later run that only materializes classifier_augmented sees it too) and that every class
has the synthetic images its ratio asks for. Lineage records the upstream materializations read.
"""

import dagster as dg
import numpy as np

from synthaug_pipeline.lib.class_splits import Split, spill_batches, spill_classes
from synthaug_pipeline.defs.io_managers import Partitions
from synthaug_pipeline.defs.instance_queries import latest_materializations
from synthaug_pipeline.defs.lineage_metadata import shard_lineage_table
from synthaug_pipeline.defs.metadata import add_metadata
from synthaug_pipeline.defs.resources import (
    SynthaugSettings,
    default_device,
    latest_materialization,
    log_warning,
    model_url,
    training_progress,
)
from synthaug_pipeline.lib.classifier import TrainedClassifier, check_synthetic_supply, save_classifier, train_classifier
from synthaug_pipeline.lib.shift_sets import check_shift_folders
from synthaug_pipeline.lib.lineage import write_lineage
from synthaug_pipeline.lib.plots import line_chart_markdown
from synthaug_pipeline.lib.preflight import check_shards_passed
from synthaug_pipeline.lib.redaction import redact_url, redact_urls
from synthaug_pipeline.lib.model_store import ModelRef
from synthaug_pipeline.lib.shard_reading import decode_shard_images, read_verified_shards
from synthaug_pipeline.lib.shards import ShardRef


def synthetic_pool(shards: list[ShardRef], image_shape: tuple[int, ...]) -> Split:
    """The accepted rows of ``shards``, checked against the bytes their scoring run wrote, decoded one shard at a time
    into a spilled split (:mod:`synthaug_pipeline.lib.class_splits`): same rows, same order as decoding them all at once."""
    return spill_batches((decode_shard_images(read_verified_shards([shard])) for shard in shards), "synthetic", image_shape)


def _materialization(record) -> dict | None:
    return None if record is None else {"storage_id": record.storage_id, "run_id": record.run_id, "timestamp": record.timestamp}


def upstream_materializations(
    context: dg.AssetExecutionContext, class_ids: list[str], per_class: tuple[str, ...] = ("real_images",)
) -> dict:
    """The latest materialization (storage id, run id, timestamp) of ``class_catalog`` and of each class
    partition of the ``per_class`` assets: the inputs a training step just read. ``None`` where the instance has none."""
    instance = context.instance
    found: dict = {"class_catalog": _materialization(latest_materialization(instance, "class_catalog"))}
    for asset in per_class:
        records = latest_materializations(instance, asset, class_ids)  # one query per asset, not per class
        found[asset] = {c: _materialization(records.get(c)) for c in class_ids}
    return found


def _model_record(context: dg.AssetExecutionContext, trained: TrainedClassifier, name: str, output_url: str, lineage: dict) -> ModelRef:
    url = model_url(output_url, name, context.run_id)
    version = save_classifier(trained, url)
    lineage = {**lineage, "name": name, "version": version, "run_id": context.run_id, "training": trained.config}
    write_lineage(url, lineage)
    add_metadata(context,
        {
            "url": redact_url(url),
            "version": version,
            "model": trained.config.get("model", ""),
            "steps": len(trained.history) and trained.history[-1]["step"],
            "real_images": trained.num_real,
            "synthetic_images": trained.num_synthetic,
            "aux_bn": bool(trained.config.get("aux_bn", False)),
            "seconds": round(trained.seconds, 1),
            "loss_curve": dg.MetadataValue.md(line_chart_markdown([h["loss"] for h in trained.history], "training loss")),
            "lineage": dg.MetadataValue.json(redact_urls(lineage)),
            "shards": shard_lineage_table(lineage["shards"]),  # every shard partition read, as a table in the UI
        }
    )
    return ModelRef(role=name, url=url, version=version, model=trained.config.get("model", ""), details={"lineage": lineage})


def _splits(profile) -> tuple[str, ...]:
    """The real splits a classifier reads: the validation split too when it selects weights on it (early stopping)."""
    return ("train", "validation") if profile.classifier.early_stopping_every and profile.data.validation_fraction else ("train",)


def build_training_assets() -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="training", pool="gpu", kinds={"pytorch", "timm"})
    def classifier_baseline(
        context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict, real_images: Partitions
    ) -> ModelRef:
        """A classifier trained on the real training images only."""
        profile = settings.load()
        check_shift_folders(profile.evaluation.shift_folders, class_catalog["class_ids"], profile.evaluation.shift_folder_labels)
        spilled = spill_classes(real_images, _splits(profile))  # one class in RAM at a time (lib.class_splits)
        images, labels = spilled["train"].images, spilled["train"].labels
        trained = train_classifier(
            images,
            labels,
            len(class_catalog["class_ids"]),
            profile.classifier,
            progress=training_progress(context, "classifier_baseline"),
            device=default_device(),
            validation=spilled.validation(),
        )
        lineage = {
            "real": {"dataset": class_catalog["dataset"], "source": class_catalog["source"], "images": len(images)},
            "synthetic_ratio": 0.0,
            "aux_bn": False,
            "shards": [],
            "filter_versions": [],
            "generator_versions": [],
            "upstream": upstream_materializations(context, class_catalog["class_ids"]),
        }
        return _model_record(context, trained, "classifier_baseline", profile.output_url, lineage)

    @dg.asset(group_name="training", pool="gpu", kinds={"pytorch", "timm"})
    def classifier_augmented(
        context: dg.AssetExecutionContext,
        settings: SynthaugSettings,
        class_catalog: dict,
        real_images: Partitions,
        synthetic_shards: Partitions,
    ) -> ModelRef:
        """A classifier trained on real images plus the accepted synthetic images, at the profile's ratio.

        With ``augmented.aux_bn`` the synthetic images go through auxiliary batch-norm layers during training.
        """
        profile = settings.load()
        class_ids = class_catalog["class_ids"]
        shards = [synthetic_shards[c] for c in class_ids if c in synthetic_shards]
        if profile.augmented.synthetic_ratio > 0:  # checks of a run materialized earlier count too, not only this run's
            check_shards_passed(shards, "classifier_augmented")
        check_shift_folders(profile.evaluation.shift_folders, class_ids, profile.evaluation.shift_folder_labels)
        spilled = spill_classes(real_images, _splits(profile))  # one class in RAM at a time (lib.class_splits)
        images, labels = spilled["train"].images, spilled["train"].labels
        pool = synthetic_pool(shards, images.shape[1:])  # the exact bytes the scoring run wrote, one shard at a time
        synthetic, synthetic_labels = pool.images, pool.labels
        ratio = profile.augmented.synthetic_ratio
        use_available = profile.augmented.shortfall == "use_available"
        if not use_available:
            check_synthetic_supply(
                np.bincount(labels, minlength=len(class_ids)),
                np.bincount(synthetic_labels, minlength=len(class_ids)),
                ratio,
                class_ids=class_ids,
                available="were accepted",
                hint="lower augmented.synthetic_ratio, raise generator.images_per_class, loosen the filter (filter.min_confidence) "
                "or set augmented.shortfall=use_available",
            )
        trained = train_classifier(
            images,
            labels,
            len(class_ids),
            profile.classifier,
            synthetic_images=synthetic if ratio > 0 else None,
            synthetic_labels=synthetic_labels if ratio > 0 else None,
            synthetic_ratio=ratio,
            progress=training_progress(context, "classifier_augmented"),
            device=default_device(),
            aux_bn=profile.augmented.aux_bn,
            use_available=use_available,
            validation=spilled.validation(),
        )
        reached = trained.config.get("synthetic_ratio_by_class")
        by_class = dict(zip(class_ids, reached, strict=True)) if reached is not None else None
        if by_class is not None:
            log_warning(context, f"trained short classes at the ratio their accepted images reach: {by_class}")
        lineage = {
            "real": {"dataset": class_catalog["dataset"], "source": class_catalog["source"], "images": len(images)},
            "synthetic_ratio": ratio,
            **({"synthetic_ratio_by_class": by_class} if by_class is not None else {}),
            "aux_bn": profile.augmented.aux_bn,
            "shards": [s.lineage() for s in shards],
            "filter_versions": sorted({s.filter_version for s in shards}),
            "generator_versions": sorted({s.generator_version for s in shards}),
            "upstream": upstream_materializations(context, class_ids, ("real_images", "synthetic_shards")),
        }
        return _model_record(context, trained, "classifier_augmented", profile.output_url, lineage)

    return [classifier_baseline, classifier_augmented]
