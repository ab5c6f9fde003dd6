"""Evaluation and the report: baseline vs augmented, in-domain and under distribution shift."""

import json
from dataclasses import asdict

import dagster as dg
import fsspec

from synthaug_pipeline.lib.class_splits import spill_classes
from synthaug_pipeline.defs.io_managers import Partitions
from synthaug_pipeline.defs.metadata import add_metadata
from synthaug_pipeline.defs.resources import ModelsResource, SynthaugSettings, log_progress
from synthaug_pipeline.lib.evaluation import compare, evaluate, evaluate_under_shift
from synthaug_pipeline.lib.shift_sets import load_shift_set
from synthaug_pipeline.lib.redaction import redact_settings, redact_url, redact_urls
from synthaug_pipeline.lib.model_store import ModelRef
from synthaug_pipeline.lib.report import render_report_markdown, report_cost


def _model_json(ref: ModelRef) -> dict:
    """A model as report.json records it: name, where, which version, and its details (lineage, ...) at the top level."""
    return {"name": ref.role, "url": ref.url, "version": ref.version, "model": ref.model, **ref.details}


def build_evaluation_assets() -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="evaluation", kinds={"pytorch"})
    def evaluation(
        context: dg.AssetExecutionContext,
        settings: SynthaugSettings,
        models: ModelsResource,
        class_catalog: dict,
        real_images: Partitions,
        classifier_baseline: ModelRef,
        classifier_augmented: ModelRef,
    ) -> dict:
        """Both classifiers on the test split (top-1, top-5 with more than 10 classes, per class), on corrupted
        copies of it and on the extra shifted test sets; the augmented-minus-baseline deltas of all of them."""
        cfg = settings.load().evaluation
        class_ids = class_catalog["class_ids"]
        # test and validation in one pass over the class stores, one class in RAM at a time (lib.class_splits);
        # evaluate reads them back a chunk at a time
        spilled = spill_classes(real_images, ("test", "validation"))
        images, labels = spilled["test"].images, spilled["test"].labels
        shift_sets = {
            name: load_shift_set(name, url, class_ids, class_catalog["image_shape"], cfg.shift_folder_labels.get(name, "class_id"))
            for name, url in cfg.shift_folders.items()
        }
        results = {}
        for record in (classifier_baseline, classifier_augmented):
            log_progress(
                context,
                f"evaluating {record.role} on {len(images)} test images, in-domain and under "
                f"{len(cfg.corruptions) * len(cfg.severities)} corruptions{f' and {len(shift_sets)} shift sets' if shift_sets else ''}",
            )
            model = models.classifier(record).model
            results[record.role] = evaluate_under_shift(
                model, images, labels, class_ids, cfg.corruptions, cfg.severities, shift_sets=shift_sets
            )
        base, aug = results["classifier_baseline"], results["classifier_augmented"]
        delta = compare(base, aug)
        metadata = {
            "baseline_top1": base["in_domain"]["top1"],
            "augmented_top1": aug["in_domain"]["top1"],
            "baseline_shifted_top1": base["shifted_mean_top1"],
            "augmented_shifted_top1": aug["shifted_mean_top1"],
            "baseline_shift_drop": base["shift_drop"],
            "augmented_shift_drop": aug["shift_drop"],
            "test_images": len(images),
            "per_class_delta": dg.MetadataValue.json(delta["per_class_delta"]),
        }
        if base["in_domain"]["top5"] is not None:
            metadata.update(baseline_top5=base["in_domain"]["top5"], augmented_top5=aug["in_domain"]["top5"])
        for name in shift_sets:
            metadata.update(
                {f"baseline_top1_{name}": base["shift_sets"][name]["top1"], f"augmented_top1_{name}": aug["shift_sets"][name]["top1"]}
            )
        validation_error = None
        if spilled.has("validation"):
            # the closed loop's signal (regeneration.metric=validation_error): which classes the augmented model still gets wrong
            val_images, val_labels = spilled["validation"].images, spilled["validation"].labels
            model = models.classifier(classifier_augmented).model
            per_class = evaluate(model, val_images, val_labels, class_ids)["per_class"]
            validation_error = {c: None if a is None else 1.0 - a for c, a in per_class.items()}
            metadata["augmented_validation_error"] = dg.MetadataValue.json(validation_error)
        add_metadata(context, metadata)
        return {
            "models": results,
            "delta": delta,
            "augmented_validation_error": validation_error,
            "test_images": len(images),
            "shift_set_images": {name: len(set_labels) for name, (_, set_labels) in shift_sets.items()},
        }

    @dg.asset(group_name="evaluation", kinds={"json"})
    def report(
        context: dg.AssetExecutionContext,
        settings: SynthaugSettings,
        class_catalog: dict,
        judge: ModelRef,
        generator: ModelRef,
        synthetic_shards: Partitions,
        synthetic_scores: Partitions,
        classifier_baseline: ModelRef,
        classifier_augmented: ModelRef,
        evaluation: dict,
    ) -> dict:
        """report.json and report.md in the output folder: what was generated, kept, and what it changed."""
        profile = settings.load()
        payload = {
            "profile": redact_settings(profile.model_dump(mode="json")),
            "dataset": {k: class_catalog[k] for k in ("dataset", "source", "class_ids", "image_shape")},
            "judge": {**asdict(judge), "test_top1": judge.get("test_top1")},
            "per_class": {c: synthetic_scores[c].summary for c in class_catalog["class_ids"] if c in synthetic_scores},
            "shards": [asdict(synthetic_shards[c]) for c in class_catalog["class_ids"] if c in synthetic_shards],
            "models": {"baseline": _model_json(classifier_baseline), "augmented": _model_json(classifier_augmented)},
            "evaluation": evaluation,
            "run_id": context.run_id,
        }
        payload["cost"] = report_cost(payload["shards"], generator.details, evaluation)
        payload = redact_urls(payload)  # what the report records; `base` below still writes to the real URL
        base = profile.output_url.rstrip("/")
        markdown = render_report_markdown(payload)
        # streamed: the text of report.json is never built in memory (with K x K confusion matrices at 1000 classes,
        # json.dumps(indent=2) held ~170 MB of string pieces for a 29 MB file; json.dump writes them as they come)
        with fsspec.open(f"{base}/report.json", "w") as handle:
            json.dump(payload, handle, indent=2, default=float)
        with fsspec.open(f"{base}/report.md", "w") as handle:
            handle.write(markdown)
        add_metadata(context, {"report_json": redact_url(f"{base}/report.json"), "report": dg.MetadataValue.md(markdown)})
        return {
            "json": f"{base}/report.json",
            "markdown": f"{base}/report.md",
            "summary": payload["evaluation"]["delta"],
            "cost": payload["cost"],
        }

    return [evaluation, report]
