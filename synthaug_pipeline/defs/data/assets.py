"""Real data: the class catalog and each class's real train/test images."""

import time

import dagster as dg
import numpy as np

from synthaug_pipeline.defs.resources import SynthaugSettings, log_warning
from synthaug_pipeline.lib.images import grid_markdown
from synthaug_pipeline.lib.config import ProfileError
from synthaug_pipeline.lib.preflight import check_before_training, check_experiment_grid


def build_data_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="data", kinds={"python"})
    def class_catalog(context: dg.AssetExecutionContext, settings: SynthaugSettings) -> dict:
        """Class ids, names and real-image counts of the active profile's dataset."""
        started = time.perf_counter()
        dataset = settings.dataset()
        counts = [
            {
                "class_id": class_id,
                "name": name,
                "train": int(np.sum(dataset.train.labels == i)),
                "test": int(np.sum(dataset.test.labels == i)),
                "validation": int(np.sum(dataset.validation.labels == i)) if dataset.validation is not None else 0,
                "skipped": dataset.skipped.get(class_id, {}),
            }
            for i, (class_id, name) in enumerate(zip(dataset.class_ids, dataset.class_names, strict=True))
        ]
        profile = settings.load()
        train_counts = [c["train"] for c in counts]
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
        context.add_output_metadata(
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

    @dg.asset(partitions_def=partitions, group_name="data", kinds={"numpy"})
    def real_images(context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict) -> dict:
        """The real train and test images of one class."""
        started = time.perf_counter()
        class_id = context.partition_key
        class_index = class_catalog["class_ids"].index(class_id)
        dataset = settings.dataset()
        train, test = dataset.train.of_class(class_index), dataset.test.of_class(class_index)
        validation = dataset.validation.of_class(class_index) if dataset.validation is not None else None
        context.add_output_metadata(
            {
                "train_images": len(train),
                "validation_images": 0 if validation is None else len(validation),
                "test_images": len(test),
                "preview": dg.MetadataValue.md(grid_markdown(train, f"real {class_id} ({class_catalog['class_names'][class_index]})")),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        return {
            "class_id": class_id,
            "class_index": class_index,
            "class_name": class_catalog["class_names"][class_index],
            "train": train,
            "validation": validation,  # None without data.validation_fraction; every choice is made on it, never on test
            "test": test,
        }

    return [class_catalog, real_images]


def stack_real(real_images: dict[str, dict], split: str) -> tuple[np.ndarray, np.ndarray]:
    """All classes' images of one split, with their class indices, in class order."""
    parts = sorted(real_images.values(), key=lambda part: part["class_index"])
    images = np.concatenate([part[split] for part in parts])
    labels = np.concatenate([np.full(len(part[split]), part["class_index"], dtype=np.int64) for part in parts])
    return images, labels
