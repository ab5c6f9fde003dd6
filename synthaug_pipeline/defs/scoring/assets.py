"""Scoring and filtering: the judge, real-image features, per-class scores and filtered shards.

Per class c:

* ``real_features[c]``: features of the class's real train *and* test images (test: for the
  test-leak check) from the extractor ``scoring.feature_extractor`` names; the name travels with
  every number computed from them.
* ``synthetic_scores[c]``: judge confidence and top-1, FID, KID (the ranking metric: unbiased at
  per-class sample sizes), precision/recall/density/coverage, diversity vs real diversity, nearest
  real/test distances, training copies and test leaks, CLIP score when ``scoring.clip_model`` is
  set. Cached: a new filter policy re-materializes shards without re-scoring.
* ``synthetic_shards[c]``: every image with its scores, the policy's accepted flag, the policy
  version and the policy itself (canonical JSON) per row, plus blocking checks (enough accepted
  images, no accepted test leak, finite scores, FID and KID computed, schema). The output dict
  carries the outcome as ``checks`` (check name -> passed) so consumers can refuse failed shards.

A class that cannot be scored (no real images, NaN features, an extractor or CLIP model that
cannot be loaded) does not crash the run: ``synthetic_scores[c]["error"]`` says why, the class's
shard is written with no rows (replacing any earlier one, so nothing stale is trained on) and its
blocking ``scores_finite`` check fails with the message, while other classes carry on. Training is
then blocked for every class until that class is fixed: Dagster skips assets downstream of a failed
blocking check in the same run, and ``synthaug run`` stops before the classifiers stage. Dropping
the class from the augmented mix instead would silently change the mix the comparison is about.
Classes with too few images for a metric (one image, one real image) are scored: such metrics are
None with a warning, and the blocking ``metrics_computed`` check fails when FID or KID (the ranking
metric) is missing, so such a class is not trained on unnoticed.
"""

import datetime as dt
import math
import time

import dagster as dg
import numpy as np

from synthaug_pipeline.defs.data.assets import stack_real
from synthaug_pipeline.defs.resources import (
    SynthaugSettings,
    cached_classifier,
    default_device,
    log_progress,
    log_warning,
    model_url,
    training_progress,
)
from synthaug_pipeline.lib.classifier import save_classifier, train_classifier, untrained_classifier
from synthaug_pipeline.lib.clip_score import ClipModelError, load_clip_scorer
from synthaug_pipeline.lib.config import Profile
from synthaug_pipeline.lib.cost import class_cost, cost_metadata
from synthaug_pipeline.lib.evaluation import evaluate
from synthaug_pipeline.lib.faults import failpoint
from synthaug_pipeline.lib.features import (
    FeatureExtractor,
    FeatureExtractorError,
    build_feature_extractor,
    judge_name,
    judge_probs_and_features,
)
from synthaug_pipeline.lib.images import encode_image, grid_markdown
from synthaug_pipeline.lib.plots import histogram_markdown
from synthaug_pipeline.lib.redaction import redact_url
from synthaug_pipeline.lib.scoring import ClassScores, filter_policy, filter_version, score_class, shard_accept
from synthaug_pipeline.lib.shards import SHARD_SCHEMA, build_shard_table, read_shards, write_class_shard

SHARD_CHECKS = ("has_accepted_images", "no_test_leaks_accepted", "scores_finite", "metrics_computed", "schema_matches_contract")
SCORING_ERRORS = (FeatureExtractorError, ClipModelError, ValueError)  # bad input or setting of one class

# Rows of the per-class metric table: (summary key, label, how to read it).
METRIC_ROWS = (
    ("n_synthetic", "synthetic images", ""),
    ("n_real", "real training images", ""),
    ("n_test", "real test images", "for the test-leak check"),
    ("mean_judge_confidence", "mean judge confidence", "higher is better"),
    ("label_match_rate", "judge top-1 = class", "higher is better"),
    ("kid_mean", "KID (ranking metric)", "lower is better; unbiased at these sample counts"),
    ("kid_std", "KID std over subsets", "0 for one full-set estimate"),
    ("fid", "FID", "lower is better; biased upward at small N, compare within a run"),
    ("precision", "precision", "share of synthetic images on the real manifold"),
    ("recall", "recall", "share of real images covered by synthetic ones"),
    ("density", "density", "can exceed 1"),
    ("coverage", "coverage", ""),
    ("diversity", "diversity", "mean pairwise feature distance"),
    ("real_diversity", "real diversity", ""),
    ("diversity_ratio", "diversity / real diversity", "well below 1: mode collapse"),
    ("mean_nearest_real_distance", "mean nearest-real distance", ""),
    ("real_nn_distance", "median real-real nearest distance", "scale for the distances"),
    ("mean_nearest_test_distance", "mean nearest-test distance", ""),
    ("duplicate_threshold", "duplicate threshold", ""),
    ("train_copies", "training copies", "near-copies of a training image"),
    ("test_leaks", "test leaks", "near-copies of a test image"),
    ("mean_clip_score", "mean CLIP score", "image-prompt cosine"),
)


def metrics_markdown(summary: dict) -> str:
    """The per-class metric table, naming the feature extractor (and CLIP model) every number comes from."""

    def fmt(value) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = [
        f"Features: `{summary.get('feature_extractor')}`"
        + (f"; CLIP: `{summary['clip_model']}`" if summary.get("clip_model") else "")
        + (f"; KID on {summary['kid_num_subsets']} subsets of {summary['kid_subset_size']}" if summary.get("kid_subset_size") else ""),
        "",
    ]
    if summary.get("error"):
        lines += [f"**not scored**: {summary['error']}", ""]
    lines += ["| metric | value | note |", "|---|---|---|"]
    lines += [f"| {label} | {fmt(summary.get(key))} | {note} |" for key, label, note in METRIC_ROWS if key in summary]
    warnings = summary.get("warnings") or []
    if warnings:
        lines += ["", "Warnings:", *[f"- {w}" for w in warnings]]
    return "\n".join(lines)


def non_finite_scores(scores: ClassScores) -> list[str]:
    """Names of per-image or class-level scores that are NaN or inf (empty when all are finite)."""
    bad = [
        name
        for name in ("judge_confidence", "nearest_real_distance", "nearest_test_distance", "clip_score")
        if getattr(scores, name) is not None and not np.isfinite(getattr(scores, name)).all()
    ]
    bad += [key for key, value in scores.summary.items() if isinstance(value, float) and not math.isfinite(value)]
    return bad


def accepted_test_leak_check(scores: ClassScores | None, accepted: np.ndarray) -> tuple[bool, dict]:
    """Whether no accepted image copies a test image, and the check's metadata.

    Fails when an accepted row is flagged, or when test images exist but the leak check could not
    run (no duplicate threshold) and rows were accepted anyway.
    """
    accepted_count = int(accepted.sum())
    if scores is None:
        return accepted_count == 0, {"accepted": accepted_count, "reason": "class not scored"}
    n_test = scores.summary.get("n_test") or 0
    if scores.is_test_leak is None:
        passed = accepted_count == 0 or n_test == 0
        reason = "no test images" if n_test == 0 else "test-leak check could not run (no duplicate threshold)"
        return passed, {"accepted": accepted_count, "test_images": n_test, "reason": reason}
    leaks = int((accepted & scores.is_test_leak).sum())
    return leaks == 0, {"accepted_test_leaks": leaks, "test_leaks": int(scores.is_test_leak.sum()), "test_images": n_test}


def metrics_computed_check(class_id: str, summary: dict) -> tuple[bool, dict]:
    """Whether the class's FID and KID (the ranking metric) were computed, and the check's metadata.

    Fails for a class that was not scored and for one with too few images for them (fewer than 2
    synthetic or 2 real images), with a message naming the class, the missing metrics and why.
    """
    missing = [name for name, key in (("FID", "fid"), ("KID", "kid_mean")) if summary.get(key) is None]
    if not missing:
        return True, {"fid": summary["fid"], "kid_mean": summary["kid_mean"]}
    if summary.get("error"):
        why = summary["error"]
    else:
        why = next((w for w in summary.get("warnings") or [] if w.startswith("fid/kid")), None) or (
            f"{summary.get('n_synthetic')} synthetic and {summary.get('n_real')} real images"
        )
    message = f"class {class_id}: {' and '.join(missing)} could not be computed: {why}"
    counts = {key: summary[key] for key in ("n_synthetic", "n_real") if summary.get(key) is not None}
    return False, {"message": message, **counts}


def flagged_rows(scores: ClassScores | None) -> np.ndarray:
    """Rows flagged as a training copy or a test leak (empty when not scored or not checked)."""
    if scores is None:
        return np.zeros(0, dtype=np.int64)
    flags = np.zeros(len(scores.judge_confidence), dtype=bool)
    for flag in (scores.is_train_copy, scores.is_test_leak):
        if flag is not None:
            flags |= flag
    return np.flatnonzero(flags)


def near_duplicates_markdown(scores: ClassScores | None) -> str:
    """Table of the flagged pairs: each training copy / test leak and the real image it is nearest to.

    Real images are named by their row in ``real_images[c]["train"]`` / ``["test"]`` (the rows of
    ``real_features[c]``), so a reviewer can look both up.
    """
    if scores is None:
        return "**near-duplicates**: not checked (class not scored)"
    threshold = scores.summary.get("duplicate_threshold")
    if scores.is_train_copy is None:
        return "**near-duplicates**: not checked (no duplicate threshold; see warnings)"
    rows = flagged_rows(scores)
    head = f"**near-duplicates** (feature distance <= {threshold:.4g}): {len(rows)} flagged"
    if not len(rows):
        return head
    lines = [
        head,
        "",
        "| synthetic image | flag | nearest real train image | distance | nearest real test image | distance |",
        "|---|---|---|---|---|---|",
    ]
    for i in rows:
        copy = bool(scores.is_train_copy[i])
        leak = scores.is_test_leak is not None and bool(scores.is_test_leak[i])
        flag = " + ".join(name for name, on in (("training copy", copy), ("test leak", leak)) if on)
        test_index = "n/a" if scores.nearest_test_index is None else f"test[{int(scores.nearest_test_index[i])}]"
        test_distance = "n/a" if scores.nearest_test_distance is None else f"{float(scores.nearest_test_distance[i]):.4g}"
        real_index = "n/a" if scores.nearest_real_index is None else f"train[{int(scores.nearest_real_index[i])}]"
        lines.append(
            f"| {int(i)} | {flag} | {real_index} | {float(scores.nearest_real_distance[i]):.4g} | {test_index} | {test_distance} |"
        )
    return "\n".join(lines)


def _extractor(profile: Profile, judge: dict) -> FeatureExtractor:
    model = cached_classifier(judge["url"], judge["version"]).model
    name = judge_name(judge["model"], judge["version"])
    return build_feature_extractor(profile.scoring, judge_model=model, judge_features_name=name, device=default_device())


def _prompts(profile: Profile, synthetic_images: dict, class_name: str) -> list[str]:
    """Each image's prompt; images generated without one get the profile's template for the class."""
    fallback = profile.generator.prompt_template.replace("{name}", class_name)
    given = synthetic_images.get("prompts") or [None] * len(synthetic_images["images"])
    return [prompt or fallback for prompt in given]


def _per_row(synthetic_images: dict, key: str, rows: np.ndarray) -> list:
    """``synthetic_images[key]`` (one value per image; None or absent: none) at ``rows``."""
    values = synthetic_images.get(key)
    return [None] * len(rows) if values is None else [values[i] for i in rows]


def _score(profile: Profile, judge: dict, synthetic_images: dict, real_features: dict) -> ClassScores:
    cfg = profile.scoring
    images = synthetic_images["images"]
    extractor = _extractor(profile, judge)
    if extractor.name != real_features["extractor"]:
        raise ValueError(
            f"real features come from {real_features['extractor']} but scoring uses {extractor.name}: re-materialize real_features"
        )
    judge_model = cached_classifier(judge["url"], judge["version"]).model
    probs, features = judge_probs_and_features(judge_model, extractor, images, device=default_device())
    clip_scores, clip_name = None, None
    if cfg.clip_model:
        clip = load_clip_scorer(cfg.clip_model, cfg.clip_pretrained, cfg.batch_size, default_device())
        clip_scores, clip_name = clip.score(images, _prompts(profile, synthetic_images, real_features["class_name"])), clip.name
    return score_class(
        probs,
        features,
        synthetic_images["class_index"],
        real_features["train"],
        extractor.name,
        kid_subset_size=cfg.kid_subset_size,
        test_features=real_features["test"],
        duplicate_fraction=cfg.duplicate_fraction,
        prdc_k=cfg.prdc_k,
        clip_score=clip_scores,
        clip_model=clip_name,
    )


def build_scoring_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="scoring", pool="gpu", kinds={"pytorch", "timm"})
    def judge(context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict, real_images: dict[str, dict]) -> dict:
        """A classifier trained on the real training split; it scores synthetic images and provides features."""
        profile = settings.load()
        images, labels = stack_real(real_images, "train")
        test_images, test_labels = stack_real(real_images, "test")
        num_classes = len(class_catalog["class_ids"])
        model_name = profile.judge.model
        if num_classes < 2:  # nothing to learn: confidence is 1 by definition, features come from a seeded random network
            trained = untrained_classifier(images, num_classes, profile.judge)
            model_name = f"{profile.judge.model}-untrained"
            log_progress(context, "one class: the judge is an untrained network (confidence 1 for every image; random features)")
        else:
            trained = train_classifier(
                images, labels, num_classes, profile.judge, progress=training_progress(context, "judge"), device=default_device()
            )
        url = model_url(profile.output_url, "judge", context.run_id)
        version = save_classifier(trained, url)
        accuracy = evaluate(trained.model, test_images, test_labels, class_catalog["class_ids"])["top1"]
        context.add_output_metadata(
            {
                "url": redact_url(url),
                "version": version,
                "model": model_name,
                "test_top1": round(accuracy, 4),
                "seconds": round(trained.seconds, 1),
            }
        )
        return {"url": url, "version": version, "model": model_name, "test_top1": accuracy}

    @dg.asset(partitions_def=partitions, group_name="scoring", kinds={"numpy"})
    def real_features(context: dg.AssetExecutionContext, settings: SynthaugSettings, judge: dict, real_images: dict) -> dict:
        """Features of one class's real train and test images, from the profile's extractor (named), computed once."""
        started = time.perf_counter()
        profile = settings.load()
        record = {
            "class_id": real_images["class_id"],
            "class_index": real_images["class_index"],
            "class_name": real_images["class_name"],
            "extractor": profile.scoring.feature_extractor,
            "train": None,
            "test": None,
            "error": None,
        }
        try:
            extractor = _extractor(profile, judge)
            record.update(
                extractor=extractor.name, train=extractor.extract(real_images["train"]), test=extractor.extract(real_images["test"])
            )
        except SCORING_ERRORS as exc:
            record["error"] = f"class {real_images['class_id']}: features from {record['extractor']} failed: {exc}"
            context.log.error(record["error"])
        metadata = {"extractor": record["extractor"]}
        if record["error"]:
            metadata["error"] = record["error"]
        else:
            bad = {split: int((~np.isfinite(record[split])).any(axis=1).sum()) for split in ("train", "test")}
            metadata.update(
                train_images=len(record["train"]),
                test_images=len(record["test"]),
                dim=int(record["train"].shape[1]),
                non_finite_rows=sum(bad.values()),
            )
        metadata["seconds"] = round(time.perf_counter() - started, 2)
        context.add_output_metadata(metadata)
        return record

    @dg.asset(partitions_def=partitions, group_name="scoring", kinds={"numpy"})
    def synthetic_scores(
        context: dg.AssetExecutionContext, settings: SynthaugSettings, judge: dict, synthetic_images: dict, real_features: dict
    ) -> dict:
        """Judge confidence/top-1, FID, KID, PRDC, diversity, nearest real/test distances, copies/leaks, CLIP score.

        Scores are cached here; the filter policy is applied by ``synthetic_shards``, so a new policy
        re-materializes shards without regenerating or re-scoring any image. A class that cannot be
        scored gets ``scores=None`` and the reason in ``error`` (see the module docstring).
        """
        started = time.perf_counter()
        profile = settings.load()
        class_id = synthetic_images["class_id"]
        scores, error = None, real_features.get("error")
        if error is None:
            try:
                scores = _score(profile, judge, synthetic_images, real_features)
            except SCORING_ERRORS as exc:
                error = f"class {class_id}: scoring failed: {exc}"
        if error:
            context.log.error(error)
            summary = {"n_synthetic": len(synthetic_images["images"]), "feature_extractor": real_features["extractor"], "error": error}
            summary["warnings"] = [error]
        else:
            summary = {**scores.summary, "error": None}
            for warning in summary["warnings"]:
                log_warning(context, f"class {class_id}: {warning}")
        metadata = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        # read back by the regenerate_worst_classes schedule
        metadata["regeneration_round"] = int(synthetic_images.get("regeneration_round", 0))
        metadata["metrics"] = dg.MetadataValue.md(metrics_markdown(summary))
        metadata["near_duplicates"] = dg.MetadataValue.md(near_duplicates_markdown(scores))
        if scores is not None:
            metadata["judge_confidence_histogram"] = dg.MetadataValue.md(histogram_markdown(scores.judge_confidence, "judge confidence"))
            metadata["nearest_real_distance_histogram"] = dg.MetadataValue.md(
                histogram_markdown(scores.nearest_real_distance, "nearest real distance")
            )
        metadata["seconds"] = round(time.perf_counter() - started, 2)
        failpoint("synthetic_scores")
        context.add_output_metadata(metadata)
        return {
            "class_id": class_id,
            "class_index": synthetic_images["class_index"],
            "scores": scores,
            "summary": summary,
            # what refilter_table needs besides the shard: the threshold and the per-row test-leak flags (scores.is_test_leak)
            "duplicate_threshold": summary.get("duplicate_threshold"),
            "error": error,
            "seconds": metadata["seconds"],
        }

    @dg.asset(
        partitions_def=partitions,
        group_name="scoring",
        kinds={"parquet"},
        check_specs=[dg.AssetCheckSpec(name, asset="synthetic_shards", blocking=True) for name in SHARD_CHECKS],
    )
    def synthetic_shards(context: dg.AssetExecutionContext, settings: SynthaugSettings, synthetic_images: dict, synthetic_scores: dict):
        """Every scored image of one class as a Parquet shard, with provenance, the policy's accepted flag and version.

        Decisions come from :func:`~synthaug_pipeline.lib.scoring.shard_accept` (thresholds, copies, test
        leaks, top_k/quantile), so ``refilter_table`` with the cached threshold and leak flags reproduces them.
        The output's ``checks`` maps each blocking check to whether it passed.
        """
        started = time.perf_counter()
        profile = settings.load()
        scores = synthetic_scores["scores"]
        class_index = synthetic_scores["class_index"]
        if scores is None:  # not scored: no row may be trained on (see the module docstring)
            rows = np.zeros(0, dtype=np.int64)
            accepted, policy_version = np.zeros(0, dtype=bool), filter_version(profile.filter)
            policy_json = filter_policy(profile.filter)
        else:
            rows = np.arange(len(synthetic_images["images"]))
            accepted, policy_version = shard_accept(scores, class_index, profile.filter)
            policy_json = filter_policy(profile.filter, scores.summary.get("duplicate_threshold"))
        images = synthetic_images["images"][rows]
        n = len(rows)
        fmt = profile.output.image_format
        table = build_shard_table(
            {
                "image": [encode_image(image, fmt) for image in images],
                "image_format": [fmt] * n,
                "height": [images.shape[1]] * n,
                "width": [images.shape[2]] * n,
                "channels": [images.shape[3]] * n,
                "class_id": [synthetic_images["class_id"]] * n,
                "class_index": [class_index] * n,
                "prompt": _per_row(synthetic_images, "prompts", rows),
                "negative_prompt": _per_row(synthetic_images, "negative_prompts", rows),
                "conditioning_image_id": _per_row(synthetic_images, "conditioning_image_ids", rows),
                "generator_id": [synthetic_images["generator_id"]] * n,
                "generator_version": [synthetic_images["generator_version"]] * n,
                "sampler": [synthetic_images["sampler"]] * n,
                "steps": [synthetic_images["steps"]] * n,
                "guidance_scale": [synthetic_images["guidance_scale"]] * n,
                "seed": [synthetic_images["seeds"][i] for i in rows],
                "image_index": rows.tolist(),
                "judge_confidence": scores.judge_confidence if scores is not None else [],
                "judge_top1": scores.judge_top1 if scores is not None else [],
                "clip_score": scores.clip_score if scores is not None and scores.clip_score is not None else [None] * n,
                "nearest_real_distance": scores.nearest_real_distance if scores is not None else [],
                "accepted": accepted,
                "filter_version": [policy_version] * n,
                "filter_policy": [policy_json] * n,
                "run_id": [context.run_id] * n,
                "created_at": [dt.datetime.now(dt.timezone.utc)] * n,
            }
        )
        shard = write_class_shard(
            f"{profile.output_url.rstrip('/')}/synthetic_shards", synthetic_images["class_id"], table, stale_temp_after_s=profile.output.stale_temp_after_s
        )
        written = read_shards([shard.uri], accepted_only=False)
        error = synthetic_scores.get("error")
        error_metadata = {"error": error} if error else {}

        # The blocking checks, decided before the output so it can carry their outcome downstream.
        minimum = profile.filter.min_accepted_per_class
        leak_free, leak_metadata = accepted_test_leak_check(scores, accepted)
        bad = ["not scored"] if scores is None else non_finite_scores(scores)
        computed, computed_metadata = metrics_computed_check(synthetic_images["class_id"], synthetic_scores["summary"])
        results = {
            "has_accepted_images": (
                shard.num_accepted >= minimum,
                {"accepted": shard.num_accepted, "required": minimum, **error_metadata},
            ),
            "no_test_leaks_accepted": (leak_free, leak_metadata),
            "scores_finite": (not bad, {"non_finite": ", ".join(bad) or "none", **error_metadata}),
            "metrics_computed": (computed, computed_metadata),
            "schema_matches_contract": (
                written.schema.remove_metadata().equals(SHARD_SCHEMA.remove_metadata()),
                {"columns": len(written.schema)},
            ),
        }
        assert tuple(results) == SHARD_CHECKS
        checks = {name: bool(passed) for name, (passed, _) in results.items()}
        if not computed:
            log_warning(context, computed_metadata["message"])

        flagged = flagged_rows(scores)
        near_duplicates = near_duplicates_markdown(scores)
        if len(flagged):
            near_duplicates = grid_markdown(images[flagged], "flagged synthetic images (table order)") + "\n\n" + near_duplicates
        metadata = {
            "uri": redact_url(shard.uri),
            "sha256": shard.sha256,
            "rows": shard.num_rows,
            "accepted": shard.num_accepted,
            "bytes": shard.num_bytes,
            "filter_version": policy_version,
            "filter_policy": policy_json,
            "duplicate_threshold": synthetic_scores.get("duplicate_threshold"),
            "checks": ", ".join(f"{name} {'passed' if ok else 'FAILED'}" for name, ok in checks.items()),
            "near_duplicates": dg.MetadataValue.md(near_duplicates),
            "accepted_preview": dg.MetadataValue.md(
                grid_markdown(images[accepted], "accepted") if accepted.any() else "**accepted**: none"
            ),
            "rejected_preview": dg.MetadataValue.md(
                grid_markdown(images[~accepted], "rejected") if (~accepted).any() else "**rejected**: none"
            ),
        }
        if error:
            metadata["error"] = error
        metadata["seconds"] = round(time.perf_counter() - started, 2)
        cost = class_cost(
            synthetic_images.get("device"),
            {"sampling": synthetic_images.get("seconds"), "scoring": synthetic_scores.get("seconds"), "shard": metadata["seconds"]},
            len(synthetic_images["images"]),
            shard.num_accepted,
        )
        metadata.update(cost_metadata(cost))
        yield dg.Output(
            {
                "class_id": synthetic_images["class_id"],
                "uri": shard.uri,
                "sha256": shard.sha256,
                "num_rows": shard.num_rows,
                "num_accepted": shard.num_accepted,
                "filter_version": policy_version,
                "filter_policy": policy_json,
                "generator_version": synthetic_images["generator_version"],
                "run_id": context.run_id,
                "error": error,
                # blocking check name -> passed; training refuses shards with a failed check
                "checks": checks,
                "cost": cost,
            },
            metadata={k: v for k, v in metadata.items() if v is not None},
            data_version=dg.DataVersion(shard.sha256),  # the model's input data version follows the shard bytes
        )
        for name, (passed, check_metadata) in results.items():
            yield dg.AssetCheckResult(check_name=name, passed=bool(passed), metadata=check_metadata)

    return [judge, real_features, synthetic_scores, synthetic_shards]
