"""Ablations as assets: one ``experiment_run`` partition per point of the profile's grid, and their summary.

Partition keys come from :func:`synthaug_pipeline.lib.experiments.experiment_keys` (``few_shot-r3-s0-auxbn``,
``full-r0-s1``, ``cas-s0``). Backfill ``experiment_run`` from the asset graph (or run the
``synthaug_experiments`` job per partition): each partition trains one classifier for the profile's
fixed ``classifier.steps``, evaluates it in-domain and under the corruption suite, and saves it with
its lineage. ``experiment_summary`` reads whichever partitions exist (missing ones are listed, not
fatal) and writes ``experiments.json`` / ``experiments.md`` to the output folder.
"""

import json

import dagster as dg
import fsspec
import numpy as np
import pyarrow as pa

from synthaug_pipeline.defs.io_managers import Partitions
from synthaug_pipeline.defs.metadata import add_metadata
from synthaug_pipeline.defs.resources import SynthaugSettings, default_device, model_url, training_progress
from synthaug_pipeline.defs.training.assets import upstream_materializations
from synthaug_pipeline.lib.classifier import save_classifier, train_classifier, train_classifier_synthetic_only
from synthaug_pipeline.lib.config import ExperimentsConfig
from synthaug_pipeline.lib.datasets import stack_classes
from synthaug_pipeline.lib.evaluation import evaluate_under_shift, load_shift_set
from synthaug_pipeline.lib.experiments import (
    experiment_keys,
    parse_experiment_key,
    plan_experiment,
    render_experiments_markdown,
    setup_fingerprint,
    summarize_experiments,
)
from synthaug_pipeline.lib.lineage import write_lineage
from synthaug_pipeline.lib.redaction import redact_url, redact_urls
from synthaug_pipeline.lib.plots import line_chart_markdown
from synthaug_pipeline.lib.preflight import check_experiment_grid, check_shards_passed
from synthaug_pipeline.lib.shards import ShardRef, decode_shard_images, read_shards, read_verified_shards

RESULT_FILE = "result.json"


def experiment_partitions(experiments: ExperimentsConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(experiment_keys(experiments))


def accepted_synthetic_rows(shards: list[ShardRef]) -> pa.Table:
    """The accepted rows of ``shards`` (``synthetic_shards`` outputs), after checking each file is the one scoring wrote."""
    return read_verified_shards(shards)


def build_experiment_assets(experiments: ExperimentsConfig) -> list[dg.AssetsDefinition]:
    partitions = experiment_partitions(experiments)
    every_class = dg.AssetIn(partition_mapping=dg.AllPartitionMapping())

    @dg.asset(
        partitions_def=partitions,
        ins={"real_images": every_class, "synthetic_shards": every_class},
        group_name="experiments",
        pool="gpu",
        kinds={"pytorch", "timm"},
    )
    def experiment_run(
        context: dg.AssetExecutionContext,
        settings: SynthaugSettings,
        class_catalog: dict,
        real_images: Partitions,
        synthetic_shards: Partitions,
    ) -> dict:
        """One experiment of the grid: train on its real subset + synthetic share, evaluate, save with lineage."""
        profile = settings.load()
        spec = parse_experiment_key(context.partition_key)
        class_ids = class_catalog["class_ids"]
        shards = [synthetic_shards[c] for c in class_ids if c in synthetic_shards]
        if spec.uses_synthetic:
            check_shards_passed(shards, f"experiment {spec.key}")
        check_experiment_grid(profile, class_ids, [len(real_images[c].train) for c in class_ids])  # before any training
        images, labels = stack_classes(real_images, "train")
        shift_sets = {  # read (and class-checked) before training, like everything else this run needs
            name: load_shift_set(
                name, url, class_ids, class_catalog["image_shape"], profile.evaluation.shift_folder_labels.get(name, "class_id")
            )
            for name, url in profile.evaluation.shift_folders.items()
        }
        rows = accepted_synthetic_rows(shards) if spec.uses_synthetic else read_shards([])
        synthetic_labels = np.asarray(rows["class_index"].to_numpy(zero_copy_only=False), dtype=np.int64)
        plan = plan_experiment(spec, profile.experiments, labels, synthetic_labels, class_ids)  # raises before any training
        synthetic, synthetic_labels = decode_shard_images(rows.take(plan.synthetic_indices)) if spec.uses_synthetic else (None, None)

        cfg = profile.classifier.model_copy(update={"seed": spec.seed})  # same steps for every run: gains are not longer training
        progress = training_progress(context, f"experiment {spec.key}")
        if spec.synthetic_only:
            trained = train_classifier_synthetic_only(synthetic, synthetic_labels, len(class_ids), cfg, progress, default_device())
        else:
            trained = train_classifier(
                images[plan.real_indices],
                labels[plan.real_indices],
                len(class_ids),
                cfg,
                synthetic_images=synthetic,
                synthetic_labels=synthetic_labels,
                synthetic_ratio=spec.ratio,
                progress=progress,
                device=default_device(),
                aux_bn=spec.aux_bn,
            )
        test_images, test_labels = stack_classes(real_images, "test")
        evaluation = evaluate_under_shift(
            trained.model.to(default_device()),
            test_images,
            test_labels,
            class_ids,
            profile.evaluation.corruptions,
            profile.evaluation.severities,
            shift_sets=shift_sets,
        )

        name = f"experiment-{spec.key}"
        url = model_url(profile.output_url, name, context.run_id)
        version = save_classifier(trained, url)
        fingerprint = setup_fingerprint(spec, profile, [s.sha256 for s in shards])
        used = shards if spec.uses_synthetic else []
        lineage = {
            "name": name,
            "version": version,
            "run_id": context.run_id,
            "experiment": spec.as_dict(),
            "real": {
                "dataset": class_catalog["dataset"],
                "source": class_catalog["source"],
                "regime": spec.regime,
                "images": int(trained.num_real),
                "per_class": plan.real_per_class,
            },
            "synthetic_ratio": spec.ratio,
            "shards": [{**s.lineage(), "images_used": plan.synthetic_per_class[s.class_id]} for s in used],
            "filter_versions": sorted({s.filter_version for s in used}),
            "generator_versions": sorted({s.generator_version for s in used}),
            "aux_bn": spec.aux_bn,
            "upstream": upstream_materializations(context, class_ids, ("real_images", "synthetic_shards") if used else ("real_images",)),
            "setup_fingerprint": fingerprint,
            "training": trained.config,
        }
        write_lineage(url, lineage)
        in_domain = evaluation["in_domain"]
        result = {
            "spec": spec.as_dict(),
            "metrics": {
                "top1": in_domain["top1"],
                "top5": in_domain.get("top5"),  # None with 10 classes or fewer
                "shifted_mean_top1": evaluation["shifted_mean_top1"],
                "shift_drop": evaluation["shift_drop"],
            },
            "per_class": in_domain["per_class"],
            "shift_sets": {name: scores["top1"] for name, scores in evaluation["shift_sets"].items()},
            "evaluation": evaluation,
            "real_images": int(trained.num_real),
            "synthetic_images": int(trained.num_synthetic),
            "steps": cfg.steps,
            "seconds": round(trained.seconds, 1),
            "model": {"url": url, "version": version},
            "lineage": lineage,
            "fingerprint": fingerprint,
        }
        with fsspec.open(f"{url}/{RESULT_FILE}", "w") as handle:  # metrics beside the weights and lineage they came from
            handle.write(json.dumps(redact_urls(result), indent=2))
        per_class = "| class | top-1 |\n|---|---|\n" + "\n".join(
            f"| {c} | {'n/a' if a is None else f'{100 * a:.1f}%'} |" for c, a in in_domain["per_class"].items()
        )
        add_metadata(context,
            {
                "group": spec.group,
                "top1": in_domain["top1"],
                "shifted_mean_top1": evaluation["shifted_mean_top1"],
                "shift_drop": evaluation["shift_drop"],
                "real_images": result["real_images"],
                "synthetic_images": result["synthetic_images"],
                "steps": cfg.steps,
                "seconds": result["seconds"],
                "url": redact_url(url),
                "version": version,
                "per_class": dg.MetadataValue.md(per_class),
                "shifted": dg.MetadataValue.json(evaluation["shifted"]),
                **{f"top1_{name}": top1 for name, top1 in result["shift_sets"].items()},
                "loss_curve": dg.MetadataValue.md(line_chart_markdown([h["loss"] for h in trained.history], "training loss")),
                "lineage": dg.MetadataValue.json(redact_urls(lineage)),
            }
        )
        return result

    @dg.asset(
        ins={"experiment_run": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True})},
        group_name="experiments",
        kinds={"json"},
    )
    def experiment_summary(
        context: dg.AssetExecutionContext,
        settings: SynthaugSettings,
        synthetic_shards: Partitions,
        experiment_run: Partitions,
    ) -> dict:
        """Mean ± std over seeds per experiment group, from whichever experiment_run partitions exist.

        Partitions never materialized (or failed) are listed as missing; results trained under another
        setup (profile settings or shard content changed since) are listed as stale. Neither is
        averaged in, and neither fails the summary.
        """
        profile = settings.load()
        keys = partitions.get_partition_keys()
        shard_hashes = [s.sha256 for s in synthetic_shards.values()]
        fingerprints = {key: setup_fingerprint(parse_experiment_key(key), profile, shard_hashes) for key in keys}
        summary = summarize_experiments(experiment_run, keys, fingerprints)
        markdown = redact_url(render_experiments_markdown(summary))
        base = profile.output_url.rstrip("/")
        for name, text in (("experiments.json", json.dumps(redact_urls(summary), indent=2)), ("experiments.md", markdown)):
            with fsspec.open(f"{base}/{name}", "w") as handle:
                handle.write(text)
        add_metadata(context,
            {
                "experiments": len(keys),
                "summarized": len(summary["materialized"]),
                "missing": len(summary["missing"]),
                "stale": len(summary["stale"]),
                "json": redact_url(f"{base}/experiments.json"),
                "summary": dg.MetadataValue.md(markdown),
            }
        )
        return {**summary, "json": f"{base}/experiments.json", "markdown": f"{base}/experiments.md"}

    return [experiment_run, experiment_summary]


experiments_job = dg.define_asset_job(
    "synthaug_experiments",
    selection=dg.AssetSelection.assets("experiment_run", "experiment_summary"),
    description="The ablation grid: one experiment_run per partition (backfill them all from the asset graph), then experiment_summary.",
)
