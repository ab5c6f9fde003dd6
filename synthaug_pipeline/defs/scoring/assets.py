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

import time

import dagster as dg
import numpy as np

from synthaug_pipeline.defs.io_managers import Partitions, PerPartition
from synthaug_pipeline.defs.metadata import add_metadata
from synthaug_pipeline.defs.resources import (
    ModelsResource,
    SynthaugSettings,
    add_partition_metadata,
    default_device,
    log_progress,
    log_warning,
    model_url,
    training_progress,
)
from synthaug_pipeline.lib.classifier import save_classifier, train_classifier, untrained_classifier
from synthaug_pipeline.lib.clip_score import ClipModelError
from synthaug_pipeline.lib.config import Profile
from synthaug_pipeline.lib.cost import class_cost, cost_metadata
from synthaug_pipeline.lib.evaluation import evaluate
from synthaug_pipeline.lib.faults import failpoint
from synthaug_pipeline.lib.class_splits import spill_classes
from synthaug_pipeline.lib.datasets import RealClass
from synthaug_pipeline.lib.diffusion import SyntheticClass
from synthaug_pipeline.lib.features import (
    FeatureExtractor,
    RealFeatures,
    FeatureExtractorError,
    build_feature_extractor,
    judge_name,
    judge_probs_and_features,
)
from synthaug_pipeline.lib.images import grid_markdown
from synthaug_pipeline.lib.plots import histogram_markdown
from synthaug_pipeline.lib.prompts import clip_prompt
from synthaug_pipeline.lib.pretrained_classifiers import pretrained_judge
from synthaug_pipeline.lib.redaction import redact_url
from synthaug_pipeline.lib.model_store import ModelRef
from synthaug_pipeline.lib.shard_filtering import filter_policy, filter_version, shard_accept
from synthaug_pipeline.lib.scoring import ClassScores, ScoredClass, score_class
from synthaug_pipeline.lib.shard_checks import (
    SHARD_CHECKS,
    accepted_test_leak_check,
    flagged_rows,
    metrics_computed_check,
    metrics_markdown,
    near_duplicates_markdown,
    non_finite_scores,
)
from synthaug_pipeline.lib.shard_reading import read_shards
from synthaug_pipeline.lib.shard_schema import SHARD_SCHEMA, class_shard_table
from synthaug_pipeline.lib.shards import ShardRef, write_class_shard

SCORING_ERRORS = (FeatureExtractorError, ClipModelError, ValueError)  # bad input or setting of one class

def _extractor(profile: Profile, models: ModelsResource, judge: ModelRef) -> FeatureExtractor:
    model = models.classifier(judge).model
    name = judge_name(judge.model, judge.version)
    return build_feature_extractor(profile.scoring, judge_model=model, judge_features_name=name, device=default_device())


def _prompts(profile: Profile, synthetic: SyntheticClass, class_name: str) -> list[str]:
    """Each image's prompt; images generated without one (ddpm, DiT) get the class's CLIP prompt: the first
    prompts.templates entry filled with the disambiguated name (class_prompts' ``clip_prompt``)."""
    fallback = synthetic.clip_prompt or clip_prompt(profile.prompts.templates, class_name)
    given = synthetic.prompts or [None] * len(synthetic.images)
    return [prompt or fallback for prompt in given]


def _score(profile: Profile, models: ModelsResource, judge: ModelRef, synthetic: SyntheticClass, real: RealFeatures) -> ClassScores:
    cfg = profile.scoring
    images = synthetic.images
    extractor = _extractor(profile, models, judge)
    if extractor.name != real.extractor:
        raise ValueError(f"real features come from {real.extractor} but scoring uses {extractor.name}: re-materialize real_features")
    judge_model = models.classifier(judge).model
    probs, features = judge_probs_and_features(judge_model, extractor, images, device=default_device())
    clip_scores, clip_name = None, None
    if cfg.clip_model:
        clip = models.clip(cfg.clip_model, cfg.clip_pretrained, cfg.batch_size, default_device())
        clip_scores, clip_name = clip.score(images, _prompts(profile, synthetic, real.class_name)), clip.name
    return score_class(
        probs,
        features,
        synthetic.class_index,
        real.train,
        extractor.name,
        kid_subset_size=cfg.kid_subset_size,
        test_features=real.test,
        duplicate_fraction=cfg.duplicate_fraction,
        prdc_k=cfg.prdc_k,
        clip_score=clip_scores,
        clip_model=clip_name,
        safety_flagged=None if synthetic.safety_flagged is None else np.asarray(synthetic.safety_flagged, bool),
    )


def _features(context: dg.AssetExecutionContext, profile: Profile, models: ModelsResource, judge: ModelRef, real: RealClass) -> RealFeatures:
    started = time.perf_counter()
    record = RealFeatures(real.class_id, real.class_index, real.class_name, extractor=profile.scoring.feature_extractor)
    try:
        extractor = _extractor(profile, models, judge)
        record.extractor, record.train, record.test = extractor.name, extractor.extract(real.train), extractor.extract(real.test)
    except SCORING_ERRORS as exc:
        record.error = f"class {real.class_id}: features from {record.extractor} failed: {exc}"
        context.log.error(record.error)
    metadata: dict = {"extractor": record.extractor}
    if record.error:
        metadata["error"] = record.error
    else:
        bad = {split: int((~np.isfinite(getattr(record, split))).any(axis=1).sum()) for split in ("train", "test")}
        metadata.update(
            train_images=len(record.train), test_images=len(record.test), dim=int(record.train.shape[1]), non_finite_rows=sum(bad.values())
        )
    metadata["seconds"] = round(time.perf_counter() - started, 2)
    add_partition_metadata(context, real.class_id, metadata)
    return record


def _scores(
    context: dg.AssetExecutionContext, profile: Profile, models: ModelsResource, judge: ModelRef, synthetic: SyntheticClass, real: RealFeatures
) -> ScoredClass:
    started = time.perf_counter()
    class_id = synthetic.class_id
    scores, error = None, real.error
    if error is None:
        try:
            scores = _score(profile, models, judge, synthetic, real)
        except SCORING_ERRORS as exc:
            error = f"class {class_id}: scoring failed: {exc}"
    if error:
        context.log.error(error)
        summary = {"n_synthetic": len(synthetic.images), "feature_extractor": real.extractor, "error": error, "warnings": [error]}
    else:
        summary = {**scores.summary, "error": None}
        for warning in summary["warnings"]:
            log_warning(context, f"class {class_id}: {warning}")
    metadata = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    metadata["regeneration_round"] = int(synthetic.regeneration_round)  # read back by the regenerate_worst_classes schedule
    metadata["metrics"] = dg.MetadataValue.md(metrics_markdown(summary))
    metadata["near_duplicates"] = dg.MetadataValue.md(near_duplicates_markdown(scores))
    if scores is not None:
        metadata["judge_confidence_histogram"] = dg.MetadataValue.md(histogram_markdown(scores.judge_confidence, "judge confidence"))
        metadata["nearest_real_distance_histogram"] = dg.MetadataValue.md(
            histogram_markdown(scores.nearest_real_distance, "nearest real distance")
        )
    metadata["seconds"] = round(time.perf_counter() - started, 2)
    failpoint("synthetic_scores")
    add_partition_metadata(context, class_id, metadata)
    return ScoredClass(class_id, synthetic.class_index, scores=scores, summary=summary, error=error, seconds=metadata["seconds"])


def _shard(
    context: dg.AssetExecutionContext, profile: Profile, synthetic: SyntheticClass, scored: ScoredClass
) -> tuple[ShardRef, dict[str, tuple[bool, dict]]]:
    """Write one class's shard; returns its reference and the blocking checks' outcomes with their metadata."""
    started = time.perf_counter()
    scores = scored.scores
    class_index = scored.class_index
    if scores is None:  # not scored: no row may be trained on (see the module docstring)
        rows = np.zeros(0, dtype=np.int64)
        accepted, policy_version = np.zeros(0, dtype=bool), filter_version(profile.filter)
        policy_json = filter_policy(profile.filter)
    else:
        rows = np.arange(len(synthetic.images))
        accepted, policy_version = shard_accept(scores, class_index, profile.filter)
        policy_json = filter_policy(profile.filter, scored.duplicate_threshold, safety_checked=scores.safety_flagged is not None)
    images = synthetic.images[rows]
    table = class_shard_table(synthetic, scores, rows, accepted, policy_version, policy_json, profile.output.image_format, context.run_id)
    shard = write_class_shard(
        f"{profile.output_url.rstrip('/')}/synthetic_shards", synthetic.class_id, table, stale_temp_after_s=profile.output.stale_temp_after_s
    )
    written = read_shards([shard.uri], accepted_only=False)
    error = scored.error
    error_metadata = {"error": error} if error else {}

    # The blocking checks, decided before the output so it can carry their outcome downstream.
    minimum = profile.filter.min_accepted_per_class
    leak_free, leak_metadata = accepted_test_leak_check(scores, accepted)
    bad = ["not scored"] if scores is None else non_finite_scores(scores)
    computed, computed_metadata = metrics_computed_check(synthetic.class_id, scored.summary)
    results = {
        "has_accepted_images": (shard.num_accepted >= minimum, {"accepted": shard.num_accepted, "required": minimum, **error_metadata}),
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
        "duplicate_threshold": scored.duplicate_threshold,
        "checks": ", ".join(f"{name} {'passed' if ok else 'FAILED'}" for name, ok in checks.items()),
        "near_duplicates": dg.MetadataValue.md(near_duplicates),
        "accepted_preview": dg.MetadataValue.md(grid_markdown(images[accepted], "accepted") if accepted.any() else "**accepted**: none"),
        "rejected_preview": dg.MetadataValue.md(
            grid_markdown(images[~accepted], "rejected") if (~accepted).any() else "**rejected**: none"
        ),
        "error": error,
        "seconds": round(time.perf_counter() - started, 2),
    }
    cost = class_cost(
        synthetic.device,
        {"sampling": synthetic.seconds, "scoring": scored.seconds, "shard": metadata["seconds"]},
        len(synthetic.images),
        shard.num_accepted,
    )
    metadata.update(cost_metadata(cost))
    add_partition_metadata(context, synthetic.class_id, {k: v for k, v in metadata.items() if v is not None})
    ref = ShardRef(
        class_id=synthetic.class_id,
        uri=shard.uri,
        sha256=shard.sha256,
        num_rows=shard.num_rows,
        num_accepted=shard.num_accepted,
        filter_version=policy_version,
        filter_policy=policy_json,
        generator_version=synthetic.generator_version,
        run_id=context.run_id,
        checks=checks,
        error=error,
        cost=cost,
    )
    return ref, results


def build_scoring_assets(partitions: dg.PartitionsDefinition, backfill_policy: dg.BackfillPolicy | None = None) -> list[dg.AssetsDefinition]:
    per_class = {"partitions_def": partitions, "group_name": "scoring", "backfill_policy": backfill_policy}

    @dg.asset(group_name="scoring", pool="gpu", kinds={"pytorch", "timm"})
    def judge(
        context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict, real_images: Partitions
    ) -> ModelRef:
        """A classifier trained on the real training split; it scores synthetic images and provides features."""
        profile = settings.load()
        # one class in RAM at a time (lib.class_splits); the validation split too when the judge selects weights on it
        early = profile.judge.early_stopping_every and profile.data.validation_fraction
        spilled = spill_classes(real_images, ("train", "validation", "test") if early else ("train", "test"))
        images, labels = spilled["train"].images, spilled["train"].labels
        num_classes = len(class_catalog["class_ids"])
        model_name = profile.judge.model
        if profile.judge.pretrained:  # ImageNet weights used as-is: the run's classes pick their logits by wnid
            trained = pretrained_judge(profile.judge, class_catalog["class_ids"], images)
            model_name = f"{profile.judge.model}-pretrained"
            log_progress(
                context, f"judge: {profile.judge.model} with pretrained weights {profile.judge.pretrained!r}, used as-is (not trained)"
            )
        elif num_classes < 2:  # nothing to learn: confidence is 1 by definition, features come from a seeded random network
            trained = untrained_classifier(images, num_classes, profile.judge)
            model_name = f"{profile.judge.model}-untrained"
            log_progress(context, "one class: the judge is an untrained network (confidence 1 for every image; random features)")
        else:
            trained = train_classifier(
                images,
                labels,
                num_classes,
                profile.judge,
                progress=training_progress(context, "judge"),
                device=default_device(),
                validation=spilled.validation(),
            )
        del images, labels
        url = model_url(profile.output_url, "judge", context.run_id)
        version = save_classifier(trained, url)
        test_images, test_labels = spilled["test"].images, spilled["test"].labels
        # no held-out image (one image per class): no accuracy to report
        accuracy = evaluate(trained.model, test_images, test_labels, class_catalog["class_ids"])["top1"] if len(test_images) else None
        add_metadata(
            context,
            {
                "url": redact_url(url),
                "version": version,
                "model": model_name,
                "test_top1": round(accuracy, 4) if accuracy is not None else "n/a (no test images)",
                "seconds": round(trained.seconds, 1),
            },
        )
        return ModelRef(role="judge", url=url, version=version, model=model_name, details={"test_top1": accuracy})

    @dg.asset(**per_class, kinds={"numpy"})
    def real_features(
        context: dg.AssetExecutionContext, settings: SynthaugSettings, models: ModelsResource, judge: ModelRef, real_images: Partitions
    ) -> PerPartition:
        """Features of each class's real train and test images, from the profile's extractor (named), computed once."""
        profile = settings.load()
        return PerPartition({c: _features(context, profile, models, judge, real_images[c]) for c in context.partition_keys})

    @dg.asset(**per_class, kinds={"numpy"})
    def synthetic_scores(
        context: dg.AssetExecutionContext,
        settings: SynthaugSettings,
        models: ModelsResource,
        judge: ModelRef,
        synthetic_images: Partitions,
        real_features: Partitions,
    ) -> PerPartition:
        """Judge confidence/top-1, FID, KID, PRDC, diversity, nearest real/test distances, copies/leaks, CLIP score.

        Scores are cached here; the filter policy is applied by ``synthetic_shards``, so a new policy
        re-materializes shards without regenerating or re-scoring any image. A class that cannot be
        scored gets ``scores=None`` and the reason in ``error`` (see the module docstring).
        """
        profile = settings.load()
        return PerPartition(
            {c: _scores(context, profile, models, judge, synthetic_images[c], real_features[c]) for c in context.partition_keys}
        )

    @dg.asset(
        **per_class,
        kinds={"parquet"},
        check_specs=[dg.AssetCheckSpec(name, asset="synthetic_shards", blocking=True) for name in SHARD_CHECKS],
    )
    def synthetic_shards(context: dg.AssetExecutionContext, settings: SynthaugSettings, synthetic_images: Partitions, synthetic_scores: Partitions):
        """Every scored image of each class as a Parquet shard, with provenance, the policy's accepted flag and version.

        Decisions come from :func:`~synthaug_pipeline.lib.scoring.shard_accept` (thresholds, copies, test
        leaks, top_k/quantile), so ``refilter_table`` with the cached threshold and leak flags reproduces them.
        Each ``ShardRef.checks`` maps a blocking check to whether it passed for that class; a step of several
        classes reports each check once, passed only when it passed for every class (failures name the classes).
        """
        profile = settings.load()
        refs, outcomes = PerPartition(), {}
        for class_id in context.partition_keys:
            refs[class_id], outcomes[class_id] = _shard(context, profile, synthetic_images[class_id], synthetic_scores[class_id])
        # a one-class run gives the class its shard's sha256 as data version (a model's input data version follows the
        # shard bytes); Output takes one version per step, so a batch of classes records the sha256 in each class's metadata
        (only,) = refs.values() if len(refs) == 1 else (None,)
        yield dg.Output(refs, data_version=dg.DataVersion(only.sha256) if only is not None else None)
        for name in SHARD_CHECKS:
            if len(outcomes) == 1:
                (passed, check_metadata), = [results[name] for results in outcomes.values()]
            else:
                failed = sorted(c for c, results in outcomes.items() if not results[name][0])
                passed = not failed
                check_metadata = {"classes": len(outcomes), "failed_classes": ", ".join(failed) or "none"}
                check_metadata.update({f"{c}: {k}": v for c in failed[:20] for k, v in outcomes[c][name][1].items()})
            yield dg.AssetCheckResult(check_name=name, passed=bool(passed), metadata=check_metadata)

    return [judge, real_features, synthetic_scores, synthetic_shards]
