"""Scoring and filtering: the judge, real-image features, per-class scores and filtered shards."""

import datetime as dt

import dagster as dg
import numpy as np

from synthaug_pipeline.defs.data.assets import stack_real
from synthaug_pipeline.defs.resources import SynthaugSettings, cached_classifier, default_device, model_url, training_progress
from synthaug_pipeline.lib.classifier import predict, save_classifier, train_classifier
from synthaug_pipeline.lib.evaluation import evaluate
from synthaug_pipeline.lib.images import encode_image, grid_markdown
from synthaug_pipeline.lib.plots import histogram_markdown
from synthaug_pipeline.lib.scoring import accept, filter_version, score_class
from synthaug_pipeline.lib.shards import SHARD_SCHEMA, build_shard_table, read_shards, write_class_shard

SHARD_CHECKS = ("has_accepted_images", "schema_matches_contract", "scores_finite")


def build_scoring_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="scoring", pool="gpu", kinds={"pytorch", "timm"})
    def judge(context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict, real_images: dict[str, dict]) -> dict:
        """A classifier trained on the real training split; it scores synthetic images and provides features."""
        profile = settings.load()
        images, labels = stack_real(real_images, "train")
        test_images, test_labels = stack_real(real_images, "test")
        trained = train_classifier(
            images,
            labels,
            len(class_catalog["class_ids"]),
            profile.judge,
            progress=training_progress(context, "judge"),
            device=default_device(),
        )
        url = model_url(profile.output_url, "judge", context.run_id)
        version = save_classifier(trained, url)
        accuracy = evaluate(trained.model, test_images, test_labels, class_catalog["class_ids"])["top1"]
        context.add_output_metadata(
            {
                "url": url,
                "version": version,
                "model": profile.judge.model,
                "test_top1": round(accuracy, 4),
                "seconds": round(trained.seconds, 1),
            }
        )
        return {"url": url, "version": version, "model": profile.judge.model, "test_top1": accuracy}

    @dg.asset(partitions_def=partitions, group_name="scoring", kinds={"numpy"})
    def real_features(context: dg.AssetExecutionContext, judge: dict, real_images: dict) -> dict:
        """Judge penultimate features of one class's real training images, computed once and reused."""
        model = cached_classifier(judge["url"], judge["version"]).model
        _, features = predict(model, real_images["train"], device=default_device())
        extractor = f"judge:{judge['model']}@{judge['version']}/penultimate"
        context.add_output_metadata({"images": len(features), "dim": int(features.shape[1]), "extractor": extractor})
        return {"features": features, "extractor": extractor}

    @dg.asset(partitions_def=partitions, group_name="scoring", kinds={"numpy"})
    def synthetic_scores(
        context: dg.AssetExecutionContext, settings: SynthaugSettings, judge: dict, synthetic_images: dict, real_features: dict
    ) -> dict:
        """Judge confidence, judge top-1, nearest-real distance and a per-class FID-style distance.

        Scores are cached here; the filter policy is applied by ``synthetic_shards``, so a new policy
        re-materializes shards without regenerating or re-scoring any image.
        """
        class_index = synthetic_images["class_index"]
        model = cached_classifier(judge["url"], judge["version"]).model
        probs, features = predict(model, synthetic_images["images"], device=default_device())
        scores = score_class(probs, features, class_index, real_features["features"], real_features["extractor"])
        summary = scores.summary
        context.add_output_metadata(
            {
                **{k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)},
                "judge_confidence": dg.MetadataValue.md(histogram_markdown(scores.judge_confidence, "judge confidence")),
                "nearest_real_distance": dg.MetadataValue.md(histogram_markdown(scores.nearest_real_distance, "nearest real distance")),
            }
        )
        return {"class_id": synthetic_images["class_id"], "class_index": class_index, "scores": scores, "summary": summary}

    @dg.asset(
        partitions_def=partitions,
        group_name="scoring",
        kinds={"parquet"},
        check_specs=[dg.AssetCheckSpec(name, asset="synthetic_shards", blocking=True) for name in SHARD_CHECKS],
    )
    def synthetic_shards(context: dg.AssetExecutionContext, settings: SynthaugSettings, synthetic_images: dict, synthetic_scores: dict):
        """Every scored image of one class as a Parquet shard, with provenance and the policy's accepted flag."""
        profile = settings.load()
        images = synthetic_images["images"]
        n = len(images)
        scores = synthetic_scores["scores"]
        accepted = accept(scores, synthetic_scores["class_index"], profile.filter)
        policy_version = filter_version(profile.filter)
        table = build_shard_table(
            {
                "image": [encode_image(image, profile.output.image_format) for image in images],
                "image_format": [profile.output.image_format] * n,
                "height": [images.shape[1]] * n,
                "width": [images.shape[2]] * n,
                "channels": [images.shape[3]] * n,
                "class_id": [synthetic_images["class_id"]] * n,
                "class_index": [synthetic_images["class_index"]] * n,
                "prompt": [None] * n,
                "negative_prompt": [None] * n,
                "conditioning_image_id": [None] * n,
                "generator_id": [synthetic_images["generator_id"]] * n,
                "generator_version": [synthetic_images["generator_version"]] * n,
                "sampler": [synthetic_images["sampler"]] * n,
                "steps": [synthetic_images["steps"]] * n,
                "guidance_scale": [synthetic_images["guidance_scale"]] * n,
                "seed": synthetic_images["seeds"],
                "image_index": list(range(n)),
                "judge_confidence": scores.judge_confidence,
                "judge_top1": scores.judge_top1,
                "clip_score": [None] * n,
                "nearest_real_distance": scores.nearest_real_distance,
                "accepted": accepted,
                "filter_version": [policy_version] * n,
                "run_id": [context.run_id] * n,
                "created_at": [dt.datetime.now(dt.timezone.utc)] * n,
            }
        )
        shard = write_class_shard(f"{profile.output_url.rstrip('/')}/synthetic_shards", synthetic_images["class_id"], table)
        written = read_shards([shard.uri], accepted_only=False)
        finite = all(np.isfinite(v).all() for v in (scores.judge_confidence, scores.nearest_real_distance))
        metadata = {
            "uri": shard.uri,
            "sha256": shard.sha256,
            "rows": shard.num_rows,
            "accepted": shard.num_accepted,
            "bytes": shard.num_bytes,
            "filter_version": policy_version,
            "accepted_preview": dg.MetadataValue.md(
                grid_markdown(images[accepted], "accepted") if accepted.any() else "**accepted**: none"
            ),
            "rejected_preview": dg.MetadataValue.md(
                grid_markdown(images[~accepted], "rejected") if (~accepted).any() else "**rejected**: none"
            ),
        }
        yield dg.Output(
            {
                "class_id": synthetic_images["class_id"],
                "uri": shard.uri,
                "sha256": shard.sha256,
                "num_rows": shard.num_rows,
                "num_accepted": shard.num_accepted,
                "filter_version": policy_version,
                "generator_version": synthetic_images["generator_version"],
                "run_id": context.run_id,
            },
            metadata=metadata,
        )
        minimum = profile.filter.min_accepted_per_class
        yield dg.AssetCheckResult(
            check_name="has_accepted_images",
            passed=shard.num_accepted >= minimum,
            metadata={"accepted": shard.num_accepted, "required": minimum},
        )
        yield dg.AssetCheckResult(
            check_name="schema_matches_contract",
            passed=written.schema.remove_metadata().equals(SHARD_SCHEMA.remove_metadata()),
            metadata={"columns": len(written.schema)},
        )
        yield dg.AssetCheckResult(check_name="scores_finite", passed=bool(finite))

    return [judge, real_features, synthetic_scores, synthetic_shards]
