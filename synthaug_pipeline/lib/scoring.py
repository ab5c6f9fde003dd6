"""Per-class quality scores for synthetic images.

Everything here works on plain NumPy arrays that earlier stages produced:

* ``probs``    ``[N, K]`` judge class probabilities of the synthetic images,
* ``features`` ``[N, D]`` feature vectors of the synthetic images,
* ``real_features`` ``[M, D]`` features of the real images of the same class,
  taken from the *same* extractor (the caller names it, so reports say which).

Distribution metrics (FID, KID, precision/recall/density/coverage) and
distances are computed in float64: feature sums over thousands of images in
float32 lose enough precision to move FID in the second digit.

Optional ``test_features`` (held-out real images of the class) let
:func:`score_class` flag synthetic images that copy a training image
(memorization) or a test image (leakage that would inflate test accuracy).
Which images are accepted is decided in :mod:`synthaug_pipeline.lib.filtering`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthaug_pipeline.lib.metrics import (
    DEFAULT_PRDC_K,
    _as_features,
    _check_same_dim,
    _nearest,
    frechet_distance,
    kernel_inception_distance,
    manifold_metrics,
    mean_pairwise_distance,
)
from synthaug_pipeline.lib.records import record

# Default near-duplicate threshold of score_class (ScoringConfig.duplicate_fraction
# in a profile), as a fraction of the class's median real nearest-neighbour distance (``summary["real_nn_distance"]``): a
# synthetic image closer than half the typical distance between two *distinct*
# real training images of its class is treated as a copy of that image. A
# heuristic scale, not a calibrated one: inspect flagged pairs and pass
# ``duplicate_threshold`` explicitly once a dataset's copies are known.
DEFAULT_DUPLICATE_FRACTION = 0.5

# The class-level number to rank classes by (e.g. which to regenerate first). KID's
# estimator is unbiased, so classes scored with different sample counts compare
# fairly; FID on ~100 images per class is biased upward by an amount that depends
# on N and D (Binkowski et al. 2018, "Demystifying MMD GANs").
RANKING_METRIC = "kid_mean"


# --------------------------------------------------------------------------- #
# Per-class scores
# --------------------------------------------------------------------------- #


@record("class_scores")
@dataclass
class ClassScores:
    """Scores of one class's synthetic images.

    Per-image arrays (length N, aligned with the input rows):

    * ``judge_confidence`` float64: judge probability of the intended class,
    * ``judge_top1`` int64: judge argmax class index,
    * ``nearest_real_distance`` float64: L2 distance in feature space to the
      nearest real (training) image of the same class,
    * ``nearest_test_distance`` float64: the same to the nearest held-out test
      image of the class; None when no test features were given,
    * ``is_train_copy`` bool: ``nearest_real_distance <= duplicate_threshold``,
      a near-copy of a training image (memorization); None when no threshold
      could be set (see :func:`score_class`),
    * ``is_test_leak`` bool: ``nearest_test_distance <= duplicate_threshold``,
      a near-copy of a test image (training on it would leak the test set);
      None without test features or threshold,
    * ``clip_score`` float64: cosine similarity of image and prompt embeddings
      (:mod:`synthaug_pipeline.lib.clip_score`); None without a CLIP model,
    * ``nearest_real_index`` int64: row of ``real_features`` (the class's real
      training images, in their order) nearest to each image, i.e. the
      training image a flagged copy duplicates,
    * ``nearest_test_index`` int64: the same row of ``test_features``; None
      without test features,
    * ``features`` float64 ``[N, D]``: the images' features (what the
      ``k_center`` diversity selection of the filter covers); None in scores
      built before it existed.

    The last seven default to None so hand-built scores (and scores pickled
    before they existed) stay valid; filters treat None as "not checked".

    ``summary`` is a JSON-serialisable dict of class-level numbers (see
    :func:`score_class`); values that cannot be computed are None and the
    reason is in ``summary["warnings"]``.
    """

    judge_confidence: np.ndarray
    judge_top1: np.ndarray
    nearest_real_distance: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)
    nearest_test_distance: np.ndarray | None = None
    is_train_copy: np.ndarray | None = None
    is_test_leak: np.ndarray | None = None
    clip_score: np.ndarray | None = None
    nearest_real_index: np.ndarray | None = None
    nearest_test_index: np.ndarray | None = None
    safety_flagged: np.ndarray | None = None  # bool [N]: the generator's safety checker flagged it; None when none ran
    features: np.ndarray | None = None


@record("scored_class")
@dataclass
class ScoredClass:
    """One class's scores as ``synthetic_scores`` hands them on. A class that could not be scored has
    ``scores=None`` and the reason in ``error``; ``summary`` holds the class-level numbers either way."""

    class_id: str
    class_index: int
    scores: ClassScores | None
    summary: dict[str, Any]
    error: str | None = None
    seconds: float | None = None  # scoring time: part of the class's cost (lib.cost)

    @property
    def duplicate_threshold(self) -> float | None:
        return self.summary.get("duplicate_threshold")


def _check_probs(probs: Any) -> np.ndarray:
    arr = np.asarray(probs)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"probs must be a 2-D [N, K] array with K >= 1, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"probs must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    bad_rows = int((~np.isfinite(arr)).any(axis=1).sum())
    if bad_rows:
        raise ValueError(f"probs has {bad_rows} of {arr.shape[0]} rows with NaN or inf values")
    if arr.size:
        # Thresholds in FilterConfig are probabilities; logits passed by
        # mistake would silently accept/reject everything, so refuse them.
        # Tolerances allow float16 softmax outputs.
        if arr.min() < -1e-6 or arr.max() > 1 + 1e-6:
            raise ValueError(
                f"probs must be probabilities in [0, 1] (got values in [{arr.min():.4g}, {arr.max():.4g}]); apply softmax to logits first"
            )
        row_sums = arr.sum(axis=1)
        off = int((np.abs(row_sums - 1.0) > 1e-2).sum())
        if off:
            raise ValueError(f"probs has {off} of {arr.shape[0]} rows that do not sum to 1; apply softmax to logits first")
    return arr


def score_class(
    probs: np.ndarray,
    features: np.ndarray,
    class_index: int,
    real_features: np.ndarray,
    feature_extractor: str,
    *,
    kid_subset_size: int | None = None,
    kid_num_subsets: int = 100,
    seed: int = 0,
    test_features: np.ndarray | None = None,
    duplicate_threshold: float | None = None,
    duplicate_fraction: float = DEFAULT_DUPLICATE_FRACTION,
    prdc_k: int = DEFAULT_PRDC_K,
    clip_score: np.ndarray | None = None,
    clip_model: str | None = None,
    safety_flagged: np.ndarray | None = None,
) -> ClassScores:
    """Score the N synthetic images of one class against its M real images.

    ``probs`` ``[N, K]`` are judge probabilities, ``features`` ``[N, D]`` and
    ``real_features`` ``[M, D]`` come from the extractor named by
    ``feature_extractor`` (recorded in the summary, e.g.
    ``"judge:synthaug_cnn/penultimate"``). ``class_index`` is the intended class.

    ``summary`` keys: n_synthetic, n_real, mean_judge_confidence,
    label_match_rate, fid, kid_mean, kid_std, kid_subset_size and
    kid_num_subsets (rows per set and subsets actually drawn; None and 1 for
    one estimate on the full sets), ranking_metric
    (:data:`RANKING_METRIC`), feature_extractor,
    mean_nearest_real_distance, real_nn_distance (median nearest-neighbour
    distance among the real images: the scale to read distances against),
    diversity (mean pairwise distance among synthetic features), real_diversity,
    diversity_ratio (diversity / real_diversity: well below 1 means the
    generator collapsed onto few modes),
    precision, recall, density, coverage, prdc_k (see :func:`manifold_metrics`,
    real = the training features), n_test, mean_nearest_test_distance,
    duplicate_threshold, duplicate_threshold_rule (how it was set),
    train_copies, test_leaks (counts of flagged images), clip_model,
    mean_clip_score, warnings (list of str). Fields needing more images than the class has are None with a
    warning; a 1-image class never raises.

    KID uses the full sets unless ``kid_subset_size`` is given (see
    :func:`kernel_inception_distance`).

    Near-duplicates: ``test_features`` ``[T, D]`` (optional, same extractor)
    are held-out real images of the class. An image is a training copy if its
    nearest-real distance is ``<= duplicate_threshold`` and a test leak if its
    nearest-test distance is. ``duplicate_threshold=None`` (default) uses
    :data:`DEFAULT_DUPLICATE_FRACTION` (0.5) x ``real_nn_distance``; with fewer
    than 2 real images there is no such scale and the flags are None with a
    warning. Without test features (or with an empty ``[0, D]`` array)
    ``nearest_test_distance``, ``is_test_leak`` and ``test_leaks`` are None.
    ``duplicate_fraction`` replaces the 0.5 of the default rule. For review
    of flagged pairs, ``nearest_real_index`` / ``nearest_test_index`` give the
    row of ``real_features`` / ``test_features`` each image is nearest to.

    ``clip_score`` ``[N]`` (optional): image-prompt similarities computed by
    the caller with the CLIP model named ``clip_model``; kept per image and
    averaged into the summary.

    ``safety_flagged`` ``[N]`` bool (optional): the generator's safety checker
    verdicts, kept per image (the filter drops flagged images by default) and
    counted in the summary (``safety_flagged``).

    Raises ``ValueError`` for non-finite probs/features (naming how many rows),
    shape mismatches, probabilities outside [0, 1] or rows not summing to 1,
    ``class_index`` out of range, no real images (nearest-real distances
    need at least one), a negative or non-finite ``duplicate_threshold``,
    a non-positive ``duplicate_fraction``, ``prdc_k < 1``, or ``clip_score``
    that is not one finite value per image.
    """
    p = _check_probs(probs)
    x = _as_features(features, "features")
    r = _as_features(real_features, "real_features")
    if p.shape[0] != x.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows but features has {x.shape[0]}: they must describe the same images")
    _check_same_dim(x, r, "features", "real_features")
    if not 0 <= int(class_index) < p.shape[1]:
        raise ValueError(f"class_index {class_index} is out of range for probs with {p.shape[1]} classes")
    class_index = int(class_index)
    if r.shape[0] == 0:
        raise ValueError("real_features is empty: nearest-real distances need at least one real image of the class")
    t = None
    if test_features is not None:
        t = _as_features(test_features, "test_features")
        _check_same_dim(x, t, "features", "test_features")
    if duplicate_threshold is not None:
        if isinstance(duplicate_threshold, bool) or not np.isfinite(duplicate_threshold) or duplicate_threshold < 0:
            raise ValueError(f"duplicate_threshold must be a finite distance >= 0, got {duplicate_threshold!r}")
        duplicate_threshold = float(duplicate_threshold)
    if isinstance(prdc_k, bool) or not isinstance(prdc_k, (int, np.integer)) or prdc_k < 1:
        raise ValueError(f"prdc_k must be a positive integer, got {prdc_k!r}")
    if isinstance(duplicate_fraction, bool) or not np.isfinite(duplicate_fraction) or duplicate_fraction <= 0:
        raise ValueError(f"duplicate_fraction must be a finite number > 0, got {duplicate_fraction!r}")
    clip = None
    if clip_score is not None:
        clip = np.asarray(clip_score, dtype=np.float64)
        if clip.shape != (x.shape[0],):
            raise ValueError(f"clip_score has shape {clip.shape} but there are {x.shape[0]} images")
        bad = int((~np.isfinite(clip)).sum())
        if bad:
            raise ValueError(f"clip_score has {bad} of {clip.shape[0]} values that are NaN or inf")
    flagged = None
    if safety_flagged is not None:
        flagged = np.asarray(safety_flagged)
        if flagged.shape != (x.shape[0],) or flagged.dtype != np.bool_:
            raise ValueError(f"safety_flagged must be one bool per image ({x.shape[0]}), got dtype {flagged.dtype} shape {flagged.shape}")

    n, m = x.shape[0], r.shape[0]
    warnings: list[str] = []

    confidence = p[:, class_index].copy()
    top1 = p.argmax(axis=1).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    if n:
        nearest, nearest_index = _nearest(x, r)
    else:
        nearest, nearest_index = np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)

    summary: dict[str, Any] = {
        "n_synthetic": n,
        "n_real": m,
        "feature_extractor": feature_extractor,
        "mean_judge_confidence": float(confidence.mean()) if n else None,
        "label_match_rate": float((top1 == class_index).mean()) if n else None,
        "mean_nearest_real_distance": float(nearest.mean()) if n else None,
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "kid_subset_size": None,
        "kid_num_subsets": None,
        "ranking_metric": RANKING_METRIC,
        "real_nn_distance": None,
        "diversity": None,
        "real_diversity": None,
        "diversity_ratio": None,
        "precision": None,
        "recall": None,
        "density": None,
        "coverage": None,
        "prdc_k": int(prdc_k),
        "n_test": None if t is None else int(t.shape[0]),
        "mean_nearest_test_distance": None,
        "duplicate_threshold": None,
        "duplicate_threshold_rule": None,
        "train_copies": None,
        "test_leaks": None,
        "clip_model": clip_model if clip is not None else None,
        "mean_clip_score": float(clip.mean()) if clip is not None and n else None,
    }
    if n == 0:
        warnings.append("no synthetic images: per-image scores and all class metrics are empty")

    if n >= 2 and m >= 2:
        summary["fid"] = frechet_distance(x, r)
        summary["kid_mean"], summary["kid_std"] = kernel_inception_distance(
            x, r, subset_size=kid_subset_size, num_subsets=kid_num_subsets, seed=seed
        )
        subsampled = kid_subset_size is not None and kid_subset_size < min(n, m)
        summary["kid_subset_size"] = int(kid_subset_size) if subsampled else None
        summary["kid_num_subsets"] = int(kid_num_subsets) if subsampled else 1
    else:
        warnings.append(f"fid/kid need at least 2 synthetic and 2 real images, got {n} synthetic and {m} real")

    if n >= 2:
        summary["diversity"] = mean_pairwise_distance(x)
    elif n == 1:
        warnings.append("diversity needs at least 2 synthetic images, got 1")

    if m >= 2:
        summary["real_nn_distance"] = float(np.median(_nearest(r, r, exclude_self=True)[0]))
        summary["real_diversity"] = mean_pairwise_distance(r)
    else:
        warnings.append(f"real_nn_distance and real_diversity need at least 2 real images, got {m}")
    if summary["diversity"] is not None and summary["real_diversity"]:
        summary["diversity_ratio"] = summary["diversity"] / summary["real_diversity"]

    prdc = manifold_metrics(r, x, k=int(prdc_k))
    for key in ("precision", "recall", "density", "coverage"):
        summary[key] = prdc[key]
    if prdc["reason"]:
        warnings.append(f"precision/recall/density/coverage: {prdc['reason']}")

    nearest_test = nearest_test_index = None
    if t is not None and t.shape[0] == 0:
        warnings.append("test_features is empty: test-leak check skipped")
        summary["n_test"] = 0
    elif t is not None:
        if n:
            nearest_test, nearest_test_index = _nearest(x, t)
        else:
            nearest_test, nearest_test_index = np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
        summary["mean_nearest_test_distance"] = float(nearest_test.mean()) if n else None

    threshold = duplicate_threshold
    if threshold is not None:
        summary["duplicate_threshold_rule"] = "given"
    elif summary["real_nn_distance"] is not None:
        threshold = float(duplicate_fraction) * summary["real_nn_distance"]
        summary["duplicate_threshold_rule"] = f"{float(duplicate_fraction):g} x median real nearest-neighbour distance"
        if threshold == 0.0:
            warnings.append("median real nearest-neighbour distance is 0 (duplicate real images): only exact copies are flagged")
    else:
        warnings.append("train-copy/test-leak flags need a duplicate_threshold: pass one, or give at least 2 real images to derive it")

    is_train_copy = is_test_leak = None
    if threshold is not None:
        summary["duplicate_threshold"] = threshold
        is_train_copy = nearest <= threshold
        summary["train_copies"] = int(is_train_copy.sum())
        if nearest_test is not None:
            is_test_leak = nearest_test <= threshold
            summary["test_leaks"] = int(is_test_leak.sum())

    summary["safety_flagged"] = int(flagged.sum()) if flagged is not None else None
    summary["warnings"] = warnings
    return ClassScores(
        judge_confidence=confidence,
        judge_top1=top1,
        nearest_real_distance=nearest,
        summary=summary,
        nearest_test_distance=nearest_test,
        is_train_copy=is_train_copy,
        is_test_leak=is_test_leak,
        clip_score=clip,
        nearest_real_index=nearest_index,
        nearest_test_index=nearest_test_index,
        safety_flagged=flagged,
        features=x,
    )
