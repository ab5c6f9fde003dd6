"""Ablations as assets: one ``experiment_run`` partition per point of the profile's grid, and their summary.

Partition keys come from :func:`synthaug_pipeline.lib.experiments.experiment_keys` (``few_shot-r3-s0-auxbn``,
``few_shot-r3-s1-retrieval``, ``full-r0-s1``, ``cas-s0``). ``synthaug experiment --profile P`` backfills them
as runs of the ``synthaug_experiment_runs`` job (or backfill ``experiment_run`` from the asset graph): each
partition trains one classifier for the profile's fixed ``classifier.steps``, evaluates it on the validation
split (what choices are made on) and on the test split, in-domain and under the corruption suite, and saves
it with its lineage. The control arm reads ``control_samples[few_shot-s<seed>]``: a generator trained only on
that seed's few-shot images, and its samples. ``experiment_summary`` reads whichever partitions exist
(missing ones are listed, not fatal) and writes ``experiments.json`` / ``experiments.md`` to the output folder.
"""

import json
import time
from collections.abc import Mapping

import dagster as dg
import fsspec
import numpy as np
import pyarrow as pa

from synthaug_pipeline.defs.io_managers import Partitions
from synthaug_pipeline.defs.metadata import add_metadata
from synthaug_pipeline.defs.resources import (
    SynthaugSettings,
    default_device,
    latest_materialization,
    log_progress,
    model_url,
    training_progress,
)
from synthaug_pipeline.defs.training.assets import upstream_materializations
from synthaug_pipeline.lib.classifier import save_classifier, train_classifier, train_classifier_synthetic_only
from synthaug_pipeline.lib.config import ExperimentsConfig, Profile
from synthaug_pipeline.lib.class_splits import spill_classes
from synthaug_pipeline.lib.control import train_control
from synthaug_pipeline.lib.diffusion_store import save_generator
from synthaug_pipeline.lib.evaluation import evaluate_under_shift
from synthaug_pipeline.lib.shift_sets import load_shift_set
from synthaug_pipeline.lib.experiments import (
    TARGETED,
    ExperimentSpec,
    control_partition,
    control_seeds,
    experiment_keys,
    few_shot_subset,
    parse_experiment_key,
    plan_experiment,
    setup_fingerprint,
    validation_subset,
)
from synthaug_pipeline.lib.experiment_summary import render_experiments_markdown, summarize_experiments
from synthaug_pipeline.lib.images import grid_markdown
from synthaug_pipeline.lib.lineage import write_lineage
from synthaug_pipeline.lib.photometric import photometric_copies
from synthaug_pipeline.lib.redaction import redact_url, redact_urls
from synthaug_pipeline.lib.plots import line_chart_markdown
from synthaug_pipeline.lib.preflight import check_experiment_grid, check_shards_passed
from synthaug_pipeline.lib.scoring import ScoredClass
from synthaug_pipeline.lib.shard_reading import decode_shard_images, read_shards, read_verified_shards
from synthaug_pipeline.lib.shards import ShardRef

RESULT_FILE = "result.json"


def experiment_partitions(experiments: ExperimentsConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(experiment_keys(experiments))


def accepted_synthetic_rows(shards: list[ShardRef]) -> pa.Table:
    """The accepted rows of ``shards`` (``synthetic_shards`` outputs), after checking each file is the one scoring wrote."""
    return read_verified_shards(shards)


def usable_synthetic_rows(shards: list[ShardRef], synthetic_scores: Mapping[str, ScoredClass]) -> pa.Table:
    """Every generated row of ``shards`` except test leaks (the unfiltered arm's pool), after the same sha256 check.

    Shards keep no test distances: the leak flags come from the class's cached ``synthetic_scores``, whose rows
    are the shard's ``image_index``. A class that was never checked for leaks is refused.
    """
    table = read_verified_shards(shards, accepted_only=False)
    keep = np.ones(table.num_rows, dtype=bool)
    class_column = np.asarray(table["class_id"].to_pylist())
    index_column = np.asarray(table["image_index"].to_numpy(zero_copy_only=False), dtype=np.int64)
    for shard in shards:
        scores = synthetic_scores[shard.class_id].scores if shard.class_id in synthetic_scores else None
        if scores is None or scores.is_test_leak is None:
            raise ValueError(
                f"the unfiltered arm drops test leaks, but class {shard.class_id!r} was not checked for them: "
                "re-materialize its synthetic_scores with test images"
            )
        rows = np.flatnonzero(class_column == shard.class_id)
        keep[rows] = ~np.asarray(scores.is_test_leak, dtype=bool)[index_column[rows]]
    return table.filter(pa.array(keep))


def partner_validation_errors(
    instance: dg.DagsterInstance, spec: ExperimentSpec, profile: Profile, class_ids: list[str]
) -> tuple[list[float], dict]:
    """The targeted arm's closed loop: each class's error on the validation split of the same seed's real-only run
    (``spec.real_only_partner``), read from that run's stored result, and where it came from. Raises ValueError when
    the partner was never materialized, was trained under other settings, or has no validation number for a class."""
    partner = spec.real_only_partner
    record = latest_materialization(instance, "experiment_run", partner.key)
    if record is None:
        raise ValueError(f"experiment {spec.key} shares its images out by the validation errors of {partner.key}: materialize {partner.key} first")
    metadata = record.asset_materialization.metadata
    fingerprint = getattr(metadata.get("fingerprint"), "value", None)
    if fingerprint != setup_fingerprint(partner, profile, []):
        raise ValueError(
            f"experiment {spec.key} shares its images out by the validation errors of {partner.key}, but its last result was "
            f"trained under other settings: re-materialize {partner.key} first"
        )
    url = model_url(profile.output_url, f"experiment-{partner.key}", record.run_id)  # the unredacted URL the run wrote to
    with fsspec.open(f"{url}/{RESULT_FILE}", "r") as handle:
        per_class = (json.load(handle).get("validation") or {}).get("per_class") or {}
    missing = [c for c in class_ids if per_class.get(c) is None]
    if missing:
        raise ValueError(f"experiment {spec.key}: {partner.key} has no validation top-1 for class {missing[0]!r} (no validation images of it)")
    errors = [1.0 - float(per_class[c]) for c in class_ids]
    return errors, {"from": partner.key, "run_id": record.run_id, "fingerprint": fingerprint, "validation_error": dict(zip(class_ids, errors))}


def build_experiment_assets(experiments: ExperimentsConfig) -> list[dg.AssetsDefinition]:
    partitions = experiment_partitions(experiments)
    every_class = dg.AssetIn(partition_mapping=dg.AllPartitionMapping())
    control_keys = [control_partition(seed) for seed in control_seeds(experiments)]
    control_partitions = dg.StaticPartitionsDefinition(control_keys) if control_keys else None
    any_partition = dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True})

    def run_experiment(
        context: dg.AssetExecutionContext,
        settings: SynthaugSettings,
        class_catalog: dict,
        real_images: Partitions,
        synthetic_shards: Partitions,
        synthetic_scores: Partitions,
        control_samples: Partitions,
    ) -> dict:
        profile = settings.load()
        spec = parse_experiment_key(context.partition_key)
        class_ids = class_catalog["class_ids"]
        shards = [synthetic_shards[c] for c in class_ids if c in synthetic_shards]
        if spec.uses_synthetic:
            check_shards_passed(shards, f"experiment {spec.key}")
        # every split in one pass over the class stores, one class in RAM at a time (lib.class_splits)
        spilled = spill_classes(real_images, ("train", "validation", "test"))
        check_experiment_grid(profile, class_ids, [spilled.counts["train"][c] for c in class_ids])  # before any training
        images, labels = spilled["train"].images, spilled["train"].labels
        shift_sets = {  # read (and class-checked) before training, like everything else this run needs
            name: load_shift_set(
                name, url, class_ids, class_catalog["image_shape"], profile.evaluation.shift_folder_labels.get(name, "class_id")
            )
            for name, url in profile.evaluation.shift_folders.items()
        }
        control = None
        if spec.arm == "control":
            control = control_samples.get(control_partition(spec.seed))
            if control is None:
                raise ValueError(f"experiment {spec.key} needs control_samples[{control_partition(spec.seed)}]: materialize it first")
            pool_labels = control["labels"]
        elif spec.arm == "unfiltered":
            rows = usable_synthetic_rows(shards, synthetic_scores)
            pool_labels = np.asarray(rows["class_index"].to_numpy(zero_copy_only=False), dtype=np.int64)
        else:
            rows = accepted_synthetic_rows(shards) if spec.uses_synthetic else read_shards([])
            pool_labels = np.asarray(rows["class_index"].to_numpy(zero_copy_only=False), dtype=np.int64)
        targeted = partner_validation_errors(context.instance, spec, profile, class_ids) if spec.arm == TARGETED else None
        plan = plan_experiment(  # raises before any training
            spec, profile.experiments, labels, pool_labels, class_ids, class_errors=targeted[0] if targeted else None
        )
        if plan.extra_from_real:
            extra = spilled["train"].take(plan.synthetic_indices)  # copied to its own spill file, not into RAM
            synthetic, synthetic_labels = extra.images, extra.labels
            if plan.photometric:  # the copies are new images: in RAM (as many as a synthetic arm would add)
                synthetic, synthetic_labels = photometric_copies(np.asarray(synthetic), seed=spec.seed), np.asarray(synthetic_labels)
        elif control is not None:
            if not np.array_equal(control["real_indices"], plan.real_indices):
                raise ValueError(
                    f"control_samples[{control_partition(spec.seed)}] was trained on other real images than experiment {spec.key} "
                    "keeps (the data or experiments.few_shot_k changed): re-materialize it"
                )
            synthetic, synthetic_labels = control["images"][plan.synthetic_indices], control["labels"][plan.synthetic_indices]
        elif spec.uses_synthetic:
            synthetic, synthetic_labels = decode_shard_images(rows.take(plan.synthetic_indices))
        else:
            synthetic, synthetic_labels = None, None

        cfg = profile.classifier.model_copy(update={"seed": spec.seed})  # same steps for every run: gains are not longer training
        progress = training_progress(context, f"experiment {spec.key}")
        rows_used = held_out = validation = None
        if spilled.has("validation"):  # the reported validation numbers and early stopping (when set) use the same images
            rows_used = validation_subset(spilled["validation"].labels, profile.experiments.validation_per_class)
            held = spilled["validation"].take(rows_used)
            held_out = (held.images, held.labels)
        if spec.synthetic_only:
            trained = train_classifier_synthetic_only(
                synthetic, synthetic_labels, len(class_ids), cfg, progress, default_device(), validation=held_out
            )
        else:
            kept = spilled["train"].take(plan.real_indices)
            ratio, by_class = spec.ratio, False
            if targeted:  # each class at the ratio of its own share (asked as the largest; every class "reaches" its pool's
                # ratio): a synthetic image is drawn as often as a real one of its class, the mean share stays the grid's
                ratio = max(plan.synthetic_per_class[c] / max(plan.real_per_class[c], 1) for c in class_ids)
                by_class = True
            trained = train_classifier(
                kept.images,
                kept.labels,
                len(class_ids),
                cfg,
                synthetic_images=synthetic,
                synthetic_labels=synthetic_labels,
                synthetic_ratio=ratio,
                progress=progress,
                device=default_device(),
                aux_bn=spec.aux_bn,
                use_available=by_class,
                validation=held_out,
            )
        evaluated_at = time.perf_counter()
        if held_out is not None:
            scores = evaluate_under_shift(
                trained.model.to(default_device()),
                held_out[0],
                held_out[1],
                class_ids,
                profile.evaluation.corruptions,
                profile.evaluation.severities,
            )
            validation = {
                "top1": scores["in_domain"]["top1"],
                "shifted_mean_top1": scores["shifted_mean_top1"],
                "shift_drop": scores["shift_drop"],
                "per_class": scores["in_domain"]["per_class"],
                "images": int(len(rows_used)),
            }
        test_images, test_labels = spilled["test"].images, spilled["test"].labels
        evaluation = evaluate_under_shift(
            trained.model.to(default_device()),
            test_images,
            test_labels,
            class_ids,
            profile.evaluation.corruptions,
            profile.evaluation.severities,
            shift_sets=shift_sets,
        )
        eval_seconds = time.perf_counter() - evaluated_at

        name = f"experiment-{spec.key}"
        url = model_url(profile.output_url, name, context.run_id)
        version = save_classifier(trained, url)
        fingerprint = setup_fingerprint(spec, profile, [s.sha256 for s in shards], control["version"] if control else None)
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
            "arm": spec.arm,
            **({"retrieved_real_images": plan.synthetic_per_class} if plan.extra_from_real and not plan.photometric else {}),
            **({"photometric_copies": plan.synthetic_per_class} if plan.photometric else {}),
            **({"control_generator": {k: control[k] for k in ("url", "version", "train_images")}} if control else {}),
            **({"targeted": {**targeted[1], "floor": profile.experiments.targeted_floor, "per_class": plan.synthetic_per_class}} if targeted else {}),
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
            "validation": validation,  # None without data.validation_fraction
            "real_images": int(trained.num_real),
            "synthetic_images": int(trained.num_synthetic),  # the arm's extra images (real ones for retrieval)
            "steps": cfg.steps,
            "seconds": round(trained.seconds, 1),
            "eval_seconds": round(eval_seconds, 1),
            "model": {"url": url, "version": version},
            "lineage": lineage,
            "fingerprint": fingerprint,
        }
        with fsspec.open(f"{url}/{RESULT_FILE}", "w") as handle:  # metrics beside the weights and lineage they came from
            handle.write(json.dumps(redact_urls(result), indent=2))
        per_class = "| class | top-1 |\n|---|---|\n" + "\n".join(
            f"| {c} | {'n/a' if a is None else f'{100 * a:.1f}%'} |" for c, a in in_domain["per_class"].items()
        )
        add_metadata(
            context,
            {
                "group": spec.group,
                "arm": spec.arm,
                "top1": in_domain["top1"],
                **({"validation_top1": validation["top1"], "validation_shifted_mean_top1": validation["shifted_mean_top1"]} if validation else {}),
                "shifted_mean_top1": evaluation["shifted_mean_top1"],
                "shift_drop": evaluation["shift_drop"],
                "real_images": result["real_images"],
                "synthetic_images": result["synthetic_images"],
                "steps": cfg.steps,
                "seconds": result["seconds"],
                "eval_seconds": result["eval_seconds"],
                "fingerprint": fingerprint,
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

    run_doc = "One experiment of the grid: train on its real subset + its arm's extra images, evaluate on validation and test, save with lineage."
    assets: list[dg.AssetsDefinition] = []
    if control_partitions is None:

        @dg.asset(
            name="experiment_run",
            partitions_def=partitions,
            ins={"real_images": every_class, "synthetic_shards": every_class, "synthetic_scores": every_class},
            group_name="experiments",
            pool="gpu",
            kinds={"pytorch", "timm"},
            description=run_doc,
        )
        def experiment_run(context, settings: SynthaugSettings, class_catalog: dict, real_images, synthetic_shards, synthetic_scores) -> dict:
            return run_experiment(context, settings, class_catalog, real_images, synthetic_shards, synthetic_scores, {})

        assets.append(experiment_run)
    else:

        @dg.asset(
            name="control_samples",
            partitions_def=control_partitions,
            ins={"real_images": every_class},
            group_name="experiments",
            pool="gpu",
            kinds={"pytorch", "diffusers"},
        )
        def control_samples(context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict, real_images) -> dict:
            """The same-data control: a generator trained only on one seed's few-shot images, and its (unfiltered) samples."""
            profile = settings.load()
            seed = int(context.partition_key.rsplit("-s", 1)[1])
            class_ids = class_catalog["class_ids"]
            real = spill_classes(real_images, ("train",))["train"]  # one class in RAM at a time (lib.class_splits)
            images, labels = real.images, real.labels
            subset = few_shot_subset(labels, profile.experiments, seed, len(class_ids))
            url = model_url(profile.output_url, f"control_generator-{context.partition_key}", context.run_id)
            samples = train_control(
                profile, images, labels, subset, class_ids, save=lambda g: save_generator(g, url), progress=lambda m: log_progress(context, m)
            )
            add_metadata(
                context,
                {
                    "url": redact_url(url),
                    "version": samples.generator.version,
                    "train_images": len(subset),
                    "train_steps": profile.experiments.control_train_steps,
                    "images": len(samples.images),
                    "train_seconds": round(samples.train_seconds, 1),
                    "sample_seconds": round(samples.sample_seconds, 1),
                    "seconds": round(samples.train_seconds + samples.sample_seconds, 1),
                    "preview": dg.MetadataValue.md(grid_markdown(samples.images[:: max(1, len(samples.images) // 40)], "control samples")),
                }
            )
            return {
                "images": samples.images,
                "labels": samples.labels,
                "real_indices": samples.real_indices,
                "url": url,
                "version": samples.generator.version,
                "train_images": int(len(subset)),
                "seconds": round(samples.train_seconds + samples.sample_seconds, 1),
            }

        @dg.asset(
            name="experiment_run",
            partitions_def=partitions,
            ins={
                "real_images": every_class,
                "synthetic_shards": every_class,
                "synthetic_scores": every_class,
                "control_samples": any_partition,
            },
            group_name="experiments",
            pool="gpu",
            kinds={"pytorch", "timm"},
            description=run_doc,
        )
        def experiment_run_with_control(
            context, settings: SynthaugSettings, class_catalog: dict, real_images, synthetic_shards, synthetic_scores, control_samples
        ) -> dict:
            return run_experiment(context, settings, class_catalog, real_images, synthetic_shards, synthetic_scores, control_samples)

        assets += [control_samples, experiment_run_with_control]

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
        controls = {}
        for seed in control_seeds(profile.experiments):
            record = latest_materialization(context.instance, "control_samples", control_partition(seed))
            controls[seed] = _metadata(record, "version")
        fingerprints = {
            key: setup_fingerprint(parse_experiment_key(key), profile, shard_hashes, controls.get(parse_experiment_key(key).seed))
            for key in keys
        }
        summary = summarize_experiments(experiment_run, keys, fingerprints)
        summary["costs"] = shared_costs(context.instance, synthetic_shards, list(controls))
        markdown = redact_url(render_experiments_markdown(summary))
        base = profile.output_url.rstrip("/")
        for name, text in (("experiments.json", json.dumps(redact_urls(summary), indent=2)), ("experiments.md", markdown)):
            with fsspec.open(f"{base}/{name}", "w") as handle:
                handle.write(text)
        add_metadata(
            context,
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

    return [*assets, experiment_summary]


def _metadata(record, key: str):
    if record is None:
        return None
    entry = record.asset_materialization.metadata.get(key)
    return None if entry is None else getattr(entry, "value", entry)


def shared_costs(instance: dg.DagsterInstance, synthetic_shards: Mapping[str, ShardRef], control_seed_list: list[int]) -> dict[str, float | None]:
    """Seconds the arms draw on, from the last materializations: judge, generator, sampling and scoring, control generators."""
    def seconds(asset: str, partition: str | None = None) -> float | None:
        value = _metadata(latest_materialization(instance, asset, partition), "seconds")
        return float(value) if isinstance(value, (int, float)) else None

    def total(asset: str) -> float | None:
        values = [seconds(asset, c) for c in synthetic_shards]
        return sum(values) if values and all(v is not None for v in values) else None

    costs = {
        "judge": seconds("judge"),
        "generator": seconds("generator"),
        "sampling (all classes)": total("synthetic_images"),
        "scoring (all classes)": total("synthetic_scores"),
    }
    for seed in control_seed_list:
        costs[f"control generator {control_partition(seed)} (train + sample)"] = seconds("control_samples", control_partition(seed))
    return costs


def experiment_jobs(experiments: ExperimentsConfig) -> list:
    """The named jobs `synthaug experiment` launches (runs the UI lists under their names), plus the whole-grid job."""
    jobs = [experiments_job, experiment_runs_job, experiment_summary_job]
    return jobs + [control_samples_job] if control_seeds(experiments) else jobs


experiments_job = dg.define_asset_job(
    "synthaug_experiments",
    selection=dg.AssetSelection.assets("experiment_run", "experiment_summary"),
    description="The ablation grid: one experiment_run per partition (backfill them all from the asset graph), then experiment_summary.",
)
experiment_runs_job = dg.define_asset_job(
    "synthaug_experiment_runs",
    selection=dg.AssetSelection.assets("experiment_run"),
    description="One point of the experiment grid per run (the partition key names it); `synthaug experiment` launches these.",
)
control_samples_job = dg.define_asset_job(
    "synthaug_control_samples",
    selection=dg.AssetSelection.assets("control_samples"),
    description="The same-data control generator of one seed (partition few_shot-s<seed>) and its samples.",
)
experiment_summary_job = dg.define_asset_job(
    "synthaug_experiment_summary",
    selection=dg.AssetSelection.assets("experiment_summary"),
    description="Mean ± std, paired gains and 95% intervals over whatever experiment_run partitions exist.",
)
