"""The blocking checks of a class's shard, and the tables that explain its scores (pure: no Dagster here).

``synthetic_shards`` decides each check with these functions before it hands the shard on, so the outcome
travels with the ``ShardRef`` (``checks``) and training refuses a failed shard even in a later run.
"""

from __future__ import annotations

import math

import numpy as np

from synthaug_pipeline.lib.scoring import ClassScores

SHARD_CHECKS = ("has_accepted_images", "no_test_leaks_accepted", "scores_finite", "metrics_computed", "schema_matches_contract")

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
