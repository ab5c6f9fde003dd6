"""Real data: the class catalog and each class's real train/test images."""

import time

import dagster as dg
import numpy as np

from synthaug_pipeline.defs.io_managers import PerPartition
from synthaug_pipeline.defs.metadata import add_metadata
from synthaug_pipeline.defs.resources import SynthaugSettings, add_partition_metadata, log_warning
from synthaug_pipeline.lib.datasets import RealClass
from synthaug_pipeline.lib.images import grid_markdown
from synthaug_pipeline.lib.config import ProfileError
from synthaug_pipeline.lib.preflight import check_before_training, check_experiment_grid, held_out_warning


def build_data_assets(partitions: dg.PartitionsDefinition, backfill_policy: dg.BackfillPolicy | None = None) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="data", kinds={"python"})
    def class_catalog(context: dg.AssetExecutionContext, settings: SynthaugSettings) -> dict:
        """Class ids, names and real-image counts of the active profile's dataset.

        A folder, Parquet or ImageNet source is listed, not decoded, here: its counts are what each split gets when
        every listed file decodes, and files skipped at decode time are counted per class by ``real_images``.
        """
        started = time.perf_counter()
        dataset = settings.dataset(classes=[])  # the listing; digits and Fashion-MNIST are decoded whole (small)
        counts = [
            {
                "class_id": class_id,
                "name": name,
                **dataset.counts(class_id),
                "skipped": dataset.skipped.get(class_id, {}),
                **({"available": dataset.available[class_id]} if dataset.available else {}),  # listed before per-class caps
            }
            for class_id, name in zip(dataset.class_ids, dataset.class_names, strict=True)
        ]
        profile = settings.load()
        train_counts = [c["train"] for c in counts]
        untested = [c["class_id"] for c in counts if not c["test"]]
        if untested:
            log_warning(context, held_out_warning(untested, len(counts)))
        check_before_training(profile, dataset.class_ids, train_counts)  # fail before anything trains
        try:  # the experiment grid is its own job: a point that cannot run is reported here, refused there
            check_experiment_grid(profile, dataset.class_ids, train_counts)
            grid_problem = None
        except ProfileError as exc:
            grid_problem = str(exc)
            log_warning(context, f"the experiment grid cannot run as configured: {grid_problem}")
        catalog = {
            "dataset": dataset.name,
            "source": dataset.source,
            "class_ids": dataset.class_ids,
            "class_names": dataset.class_names,
            "image_shape": list(dataset.image_shape),
            "classes": counts,
            # carved from the training split, stratified and seeded (data.validation_fraction, data.seed): choices are made on it
            "validation_fraction": profile.data.validation_fraction,
            "skipped_files": len(dataset.skipped_files),
            "skipped_by_reason": dataset.skipped_by_reason,
        }
        table = "| class | name | train | validation | test | skipped files |\n|---|---|---|---|---|---|\n" + "\n".join(
            f"| {c['class_id']} | {c['name']} | {c['train']} | {c['validation']} | {c['test']} | "
            f"{', '.join(f'{n} {reason}' for reason, n in c['skipped'].items()) or 0} |"
            for c in counts
        )
        add_metadata(context,
            {
                "num_classes": len(dataset.class_ids),
                "image_shape": str(dataset.image_shape),
                "source": dataset.source,
                "validation_fraction": profile.data.validation_fraction,
                "skipped_files": len(dataset.skipped_files),
                "skipped_by_reason": dg.MetadataValue.json(dataset.skipped_by_reason),
                "classes": dg.MetadataValue.md(table),
                "experiment_grid": grid_problem or "every grid point can run",
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        return catalog

    @dg.asset(partitions_def=partitions, group_name="data", kinds={"numpy"}, backfill_policy=backfill_policy)
    def real_images(context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict) -> PerPartition:
        """The real train and test images of each class of the step (only the step's classes are decoded)."""
        dataset = settings.dataset(classes=list(context.partition_keys))
        values = PerPartition()
        for class_id in context.partition_keys:
            started = time.perf_counter()
            class_index = class_catalog["class_ids"].index(class_id)
            train, test = dataset.train.of_class(class_index), dataset.test.of_class(class_index)
            # None without data.validation_fraction; every choice is made on it, never on test
            validation = dataset.validation.of_class(class_index) if dataset.validation is not None else None
            name = class_catalog["class_names"][class_index]
            values[class_id] = RealClass(class_id, class_index, name, train=train, test=test, validation=validation)
            add_partition_metadata(
                context,
                class_id,
                {
                    "train_images": len(train),
                    "validation_images": 0 if validation is None else len(validation),
                    "test_images": len(test),
                    # files of this class that could not be decoded (corrupt, empty, too large, ...): skipped, replaced
                    "skipped_files": dg.MetadataValue.json(dataset.skipped.get(class_id, {})),
                    "preview": dg.MetadataValue.md(grid_markdown(train, f"real {class_id} ({name})")),
                    "seconds": round(time.perf_counter() - started, 2),
                },
            )
        return values

    return [class_catalog, real_images]
