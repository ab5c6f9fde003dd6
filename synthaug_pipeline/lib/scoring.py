"""Per-class quality scores for synthetic images, and the acceptance policy.

Everything here works on plain NumPy arrays that earlier stages produced:

* ``probs``    ``[N, K]`` judge class probabilities of the synthetic images,
* ``features`` ``[N, D]`` feature vectors of the synthetic images,
* ``real_features`` ``[M, D]`` features of the real images of the same class,
  taken from the *same* extractor (the caller names it, so reports say which).

Distribution metrics (FID, KID) and distances are computed in float64: feature
sums over thousands of images in float32 lose enough precision to move FID in
the second digit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthaug_pipeline.lib.config import FilterConfig

# Rows per block when computing pairwise distances, so memory stays at
# ``_CHUNK_ROWS * M`` floats instead of ``N * M`` for large classes.
_CHUNK_ROWS = 1024

# FilterConfig fields that do NOT decide whether a single row is accepted.
# They are left out of filter_version so that changing, e.g., the asset-check
# threshold does not make identical accept decisions look like a new policy.
# Any field added to FilterConfig later is included by default (safer: a new
# row-level rule must change the version).
_NON_ROW_POLICY_FIELDS = frozenset({"min_accepted_per_class"})


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #


def _as_features(x: Any, name: str, min_rows: int = 0) -> np.ndarray:
    """Validate an ``[N, D]`` feature matrix and return it as float64."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    bad_rows = int((~np.isfinite(arr)).any(axis=1).sum())
    if bad_rows:
        raise ValueError(f"{name} has {bad_rows} of {arr.shape[0]} rows with NaN or inf values")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} samples, got {arr.shape[0]}")
    return arr


def _check_same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} has {a.shape[1]} feature dimensions but {name_b} has {b.shape[1]}")


# --------------------------------------------------------------------------- #
# Distribution distances
# --------------------------------------------------------------------------- #


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via its eigendecomposition."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    # Round-off makes zero eigenvalues of rank-deficient covariances (N <= D is
    # common per class) come out as tiny negatives; they are zero in exact math.
    eigvals = np.clip(eigvals, 0.0, None)
    return (eigvecs * np.sqrt(eigvals)) @ eigvecs.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` with unbiased
    covariances (``ddof=1``), computed in float64 on ``[N, D]`` features.

    The trace of ``(S_a S_b)^{1/2}`` is computed as the sum of square roots of
    the eigenvalues of ``sqrt(S_a) S_b sqrt(S_a)``. That matrix is similar to
    ``S_a S_b`` (same eigenvalues) but, unlike ``S_a S_b``, symmetric PSD, so a
    symmetric eigensolver applies and its eigenvalues are real and >= 0 up to
    round-off (clipped). The usual ``scipy.linalg.sqrtm(S_a @ S_b)`` works on a
    non-symmetric, often singular matrix (per-class sets have N < D) and
    returns complex values or NaN there.

    Raises ``ValueError`` for fewer than 2 samples in either set, NaN/inf
    features, non-2-D input, or mismatched feature dimensions. Tiny negative
    results from round-off are clipped to 0.0.
    """
    a = _as_features(features_a, "features_a", min_rows=2)
    b = _as_features(features_b, "features_b", min_rows=2)
    _check_same_dim(a, b, "features_a", "features_b")

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False, ddof=1))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False, ddof=1))

    sqrt_a = _sqrt_psd(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a
    middle = (middle + middle.T) / 2.0  # remove round-off asymmetry before eigvalsh
    eig_middle = np.clip(np.linalg.eigvalsh(middle), 0.0, None)
    trace_sqrt = float(np.sqrt(eig_middle).sum())

    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)
    # The distance is >= 0 in exact arithmetic; identical sets give ~ -1e-13.
    return max(value, 0.0)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID kernel ``k(x, y) = (x . y / d + 1) ** 3`` for all row pairs."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 estimate with the polynomial kernel (diagonals excluded)."""
    m, n = x.shape[0], y.shape[0]
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float(sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2.0 * k_xy.sum() / (m * n))


def kernel_inception_distance(
    features_a: np.ndarray,
    features_b: np.ndarray,
    subset_size: int | None = None,
    num_subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with a cubic polynomial kernel.

    Kernel ``k(x, y) = (x . y / d + 1) ** 3``. Returns ``(mean, std)`` over
    ``num_subsets`` random subsets of ``subset_size`` rows drawn without
    replacement from each set (seeded, so reruns agree). The std is the
    population std (``ddof=0``, as torchmetrics reports it).

    If ``subset_size`` is None or >= the smaller set size, one estimate on the
    full sets is returned with std 0.0 (subsampling would only add noise).
    Unlike FID the estimate is unbiased, so it can be slightly negative for two
    samples of the same distribution; it is not clipped.

    Raises ``ValueError`` for fewer than 2 samples in either set, NaN/inf
    features, mismatched dimensions, ``subset_size < 2`` or ``num_subsets < 1``.
    """
    a = _as_features(features_a, "features_a", min_rows=2)
    b = _as_features(features_b, "features_b", min_rows=2)
    _check_same_dim(a, b, "features_a", "features_b")

    if num_subsets < 1:
        raise ValueError(f"num_subsets must be at least 1, got {num_subsets}")
    if subset_size is not None and subset_size < 2:
        raise ValueError(f"subset_size must be at least 2 (the unbiased estimator excludes the diagonal), got {subset_size}")
    if subset_size is None or subset_size >= min(a.shape[0], b.shape[0]):
        return _mmd2_unbiased(a, b), 0.0

    rng = np.random.default_rng(seed)
    # A loop over subsets (not images): each iteration is one vectorised
    # kernel computation of size subset_size^2.
    estimates = np.array(
        [
            _mmd2_unbiased(
                a[rng.choice(a.shape[0], subset_size, replace=False)],
                b[rng.choice(b.shape[0], subset_size, replace=False)],
            )
            for _ in range(num_subsets)
        ]
    )
    return float(estimates.mean()), float(estimates.std(ddof=0))


# --------------------------------------------------------------------------- #
# Pairwise distances (chunked, vectorised)
# --------------------------------------------------------------------------- #


def _sq_dists(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared L2 distances ``[len(a), len(b)]`` via ``|a|^2 + |b|^2 - 2 a.b``."""
    a_sq = np.einsum("ij,ij->i", a, a)
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    # The expansion can go slightly negative for (near-)identical points.
    return np.clip(d2, 0.0, None)


def _nearest(a: np.ndarray, b: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """L2 distance from each row of ``a`` to its nearest row of ``b``.

    With ``exclude_self`` (``a`` is ``b``), row i is not matched with itself.
    The argmin is found with the fast expansion; the returned distance is then
    recomputed directly for the chosen pair, because the expansion loses
    precision for close points (cancellation of large norms).
    """
    b_sq = np.einsum("ij,ij->i", b, b)
    nearest_idx = np.empty(a.shape[0], dtype=np.int64)
    for start in range(0, a.shape[0], _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, a.shape[0])
        d2 = _sq_dists(a[start:stop], b, b_sq)
        if exclude_self:
            rows = np.arange(stop - start)
            d2[rows, rows + start] = np.inf
        nearest_idx[start:stop] = d2.argmin(axis=1)
    return np.linalg.norm(a - b[nearest_idx], axis=1)


def _mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean L2 distance over all unordered pairs of distinct rows (needs >= 2 rows)."""
    n = x.shape[0]
    x_sq = np.einsum("ij,ij->i", x, x)
    total = 0.0
    for start in range(0, n, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, n)
        d = np.sqrt(_sq_dists(x[start:stop], x, x_sq))
        rows = np.arange(stop - start)
        d[rows, rows + start] = 0.0  # self-distance is 0 exactly, not round-off
        total += float(d.sum())
    return total / (n * (n - 1))


# --------------------------------------------------------------------------- #
# Per-class scores
# --------------------------------------------------------------------------- #


@dataclass
class ClassScores:
    """Scores of one class's synthetic images.

    Per-image arrays (length N, aligned with the input rows):

    * ``judge_confidence`` float64: judge probability of the intended class,
    * ``judge_top1`` int64: judge argmax class index,
    * ``nearest_real_distance`` float64: L2 distance in feature space to the
      nearest real image of the same class.

    ``summary`` is a JSON-serialisable dict of class-level numbers (see
    :func:`score_class`); values that cannot be computed are None and the
    reason is in ``summary["warnings"]``.
    """

    judge_confidence: np.ndarray
    judge_top1: np.ndarray
    nearest_real_distance: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


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
) -> ClassScores:
    """Score the N synthetic images of one class against its M real images.

    ``probs`` ``[N, K]`` are judge probabilities, ``features`` ``[N, D]`` and
    ``real_features`` ``[M, D]`` come from the extractor named by
    ``feature_extractor`` (recorded in the summary, e.g.
    ``"judge:synthaug_cnn/penultimate"``). ``class_index`` is the intended class.

    ``summary`` keys: n_synthetic, n_real, mean_judge_confidence,
    label_match_rate, fid, kid_mean, kid_std, feature_extractor,
    mean_nearest_real_distance, real_nn_distance (median nearest-neighbour
    distance among the real images: the scale to read distances against),
    diversity (mean pairwise distance among synthetic features), real_diversity,
    warnings (list of str). Fields needing more images than the class has are
    None with a warning; a 1-image class never raises.

    KID uses the full sets unless ``kid_subset_size`` is given (see
    :func:`kernel_inception_distance`).

    Raises ``ValueError`` for non-finite probs/features (naming how many rows),
    shape mismatches, probabilities outside [0, 1] or rows not summing to 1,
    ``class_index`` out of range, or no real images (nearest-real distances
    need at least one).
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

    n, m = x.shape[0], r.shape[0]
    warnings: list[str] = []

    confidence = p[:, class_index].copy()
    top1 = p.argmax(axis=1).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    nearest = _nearest(x, r) if n else np.zeros(0, dtype=np.float64)

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
        "real_nn_distance": None,
        "diversity": None,
        "real_diversity": None,
    }
    if n == 0:
        warnings.append("no synthetic images: per-image scores and all class metrics are empty")

    if n >= 2 and m >= 2:
        summary["fid"] = frechet_distance(x, r)
        summary["kid_mean"], summary["kid_std"] = kernel_inception_distance(
            x, r, subset_size=kid_subset_size, num_subsets=kid_num_subsets, seed=seed
        )
    else:
        warnings.append(f"fid/kid need at least 2 synthetic and 2 real images, got {n} synthetic and {m} real")

    if n >= 2:
        summary["diversity"] = _mean_pairwise_distance(x)
    elif n == 1:
        warnings.append("diversity needs at least 2 synthetic images, got 1")

    if m >= 2:
        summary["real_nn_distance"] = float(np.median(_nearest(r, r, exclude_self=True)))
        summary["real_diversity"] = _mean_pairwise_distance(r)
    else:
        warnings.append(f"real_nn_distance and real_diversity need at least 2 real images, got {m}")

    summary["warnings"] = warnings
    return ClassScores(judge_confidence=confidence, judge_top1=top1, nearest_real_distance=nearest, summary=summary)


# --------------------------------------------------------------------------- #
# Acceptance policy
# --------------------------------------------------------------------------- #


def filter_version(cfg: FilterConfig) -> str:
    """Identifier of the row-acceptance policy: ``"v1-"`` + 12 hex of a sha256.

    Hashes the canonical JSON (sorted keys, no whitespace) of the FilterConfig
    fields that decide per-row acceptance, so every shard row records which
    policy accepted it and a policy change is visible in the data.
    ``min_accepted_per_class`` is excluded: it gates a whole class in an asset
    check and never changes a row's accepted flag.
    """
    policy = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NON_ROW_POLICY_FIELDS}
    canonical = json.dumps(policy, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "v1-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def accept(scores: ClassScores, class_index: int, cfg: FilterConfig) -> np.ndarray:
    """Boolean accept mask: ``confidence >= min_confidence`` and, if
    ``require_label_match``, judge top-1 equals ``class_index``."""
    mask = np.asarray(scores.judge_confidence) >= cfg.min_confidence
    if cfg.require_label_match:
        mask &= np.asarray(scores.judge_top1) == int(class_index)
    return mask.astype(bool, copy=False)
