"""Per-class quality scores for synthetic images, and the acceptance policy.

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

from synthaug_pipeline.lib.config import FilterConfig
from synthaug_pipeline.lib.records import record
from synthaug_pipeline.lib.filtering import FilterPolicy, policy_json_version, safety_extra, shard_decisions

# Rows per block when computing pairwise distances, so memory stays at
# ``_CHUNK_ROWS * M`` floats instead of ``N * M`` for large classes.
_CHUNK_ROWS = 1024

# FilterConfig fields that do NOT decide whether a single row is accepted.
# They are left out of filter_version so that changing, e.g., the asset-check
# threshold does not make identical accept decisions look like a new policy.
# Any field added to FilterConfig later is included by default (safer: a new
# row-level rule must change the version).
_NON_ROW_POLICY_FIELDS = frozenset({"min_accepted_per_class"})

# Default near-duplicate threshold of score_class (ScoringConfig.duplicate_fraction
# in a profile), as a fraction of the class's median real nearest-neighbour distance (``summary["real_nn_distance"]``): a
# synthetic image closer than half the typical distance between two *distinct*
# real training images of its class is treated as a copy of that image. A
# heuristic scale, not a calibrated one: inspect flagged pairs and pass
# ``duplicate_threshold`` explicitly once a dataset's copies are known.
DEFAULT_DUPLICATE_FRACTION = 0.5

# Neighbourhood size of precision/recall/density/coverage (Naeem et al. 2020
# recommend k = 5).
DEFAULT_PRDC_K = 5

# The class-level number to rank classes by (e.g. which to regenerate first). KID's
# estimator is unbiased, so classes scored with different sample counts compare
# fairly; FID on ~100 images per class is biased upward by an amount that depends
# on N and D (Binkowski et al. 2018, "Demystifying MMD GANs").
RANKING_METRIC = "kid_mean"


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


def _fid_traces_cov(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """``Tr S_a``, ``Tr S_b``, ``Tr (S_a S_b)^{1/2}`` via ``D x D`` covariances."""
    cov_a = np.atleast_2d(np.cov(a, rowvar=False, ddof=1))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False, ddof=1))
    sqrt_a = _sqrt_psd(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a
    middle = (middle + middle.T) / 2.0  # remove round-off asymmetry before eigvalsh
    eig_middle = np.clip(np.linalg.eigvalsh(middle), 0.0, None)
    return float(np.trace(cov_a)), float(np.trace(cov_b)), float(np.sqrt(eig_middle).sum())


def _fid_traces_gram(a_centred: np.ndarray, b_centred: np.ndarray) -> tuple[float, float, float]:
    """The same three traces from centred ``[N, D]``, ``[M, D]`` data (no ``D x D`` work).

    ``Tr (S_a S_b)^{1/2}`` is the nuclear norm of ``A B^T / sqrt((N-1)(M-1))``
    (see :func:`frechet_distance`); singular values are >= 0 by construction.
    """
    n_a, n_b = a_centred.shape[0], b_centred.shape[0]
    trace_a = float(np.einsum("ij,ij->", a_centred, a_centred) / (n_a - 1))
    trace_b = float(np.einsum("ij,ij->", b_centred, b_centred) / (n_b - 1))
    singular = np.linalg.svd(a_centred @ b_centred.T, compute_uv=False)
    return trace_a, trace_b, float(singular.sum() / np.sqrt((n_a - 1) * (n_b - 1)))


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

    When either set has fewer samples than dimensions (``min(N, M) < D``, the
    usual per-class case) the same trace is computed without any ``D x D``
    decomposition: with centred data matrices ``A`` ``[N, D]`` and ``B``
    ``[M, D]``, the non-zero eigenvalues of ``S_a S_b`` are the squared
    singular values of ``A B^T / sqrt((N-1)(M-1))``, so the trace is that
    matrix's nuclear norm (one SVD of an ``N x M`` matrix; exact, and cheaper
    because ``N M min(N, M) < N M D``).

    Raises ``ValueError`` for fewer than 2 samples in either set, NaN/inf
    features, non-2-D input, or mismatched feature dimensions. Tiny negative
    results from round-off are clipped to 0.0.
    """
    a = _as_features(features_a, "features_a", min_rows=2)
    b = _as_features(features_b, "features_b", min_rows=2)
    _check_same_dim(a, b, "features_a", "features_b")

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    if min(a.shape[0], b.shape[0]) < a.shape[1]:
        trace_a, trace_b, trace_sqrt = _fid_traces_gram(a - mu_a, b - mu_b)
    else:
        trace_a, trace_b, trace_sqrt = _fid_traces_cov(a, b)

    diff = mu_a - mu_b
    value = float(diff @ diff + trace_a + trace_b - 2.0 * trace_sqrt)
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


def _nearest(a: np.ndarray, b: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(distance, index)``: L2 distance from each row of ``a`` to its nearest row of ``b``, and that row's index (int64).

    With ``exclude_self`` (``a`` is ``b``), row i is not matched with itself.
    Ties go to the lowest index of ``b``.
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
    return np.linalg.norm(a - b[nearest_idx], axis=1), nearest_idx


def mean_pairwise_distance(x: np.ndarray) -> float:
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


def _kth_neighbour_sq(x: np.ndarray, k: int) -> np.ndarray:
    """Squared L2 distance from each row of ``x`` to its k-th nearest *other* row.

    Needs ``len(x) > k``. Blocked like :func:`_nearest`; the row itself is
    excluded by giving it distance -1 so it sorts first.
    """
    x_sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(x.shape[0], dtype=np.float64)
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, x.shape[0])
        d2 = _sq_dists(x[start:stop], x, x_sq)
        rows = np.arange(stop - start)
        d2[rows, rows + start] = -1.0
        out[start:stop] = np.partition(d2, k, axis=1)[:, k]
    return out


def manifold_metrics(real_features: np.ndarray, fake_features: np.ndarray, k: int = DEFAULT_PRDC_K) -> dict[str, Any]:
    """Precision, recall, density and coverage of Naeem et al. (2020).

    "Reliable Fidelity and Diversity Metrics for Generative Models" (ICML 2020).
    Each real sample ``X_i`` gets a ball ``B(X_i, NND_k(X_i))`` whose radius is
    the distance to its k-th nearest *other* real sample; fake samples ``Y_j``
    get balls from their k-th nearest other fake sample. With M real and N fake
    samples:

    * precision = share of fake samples inside at least one real ball,
    * recall    = share of real samples inside at least one fake ball,
    * density   = ``1/(k N) * sum_j #{i : Y_j in B(X_i)}`` (can exceed 1),
    * coverage  = share of real samples whose ball holds at least one fake sample.

    Balls are open (``distance < radius``), as in the authors' reference code
    (clovaai/generative-evaluation-prdc), so numbers are comparable with
    published ones. L2 distances in float64, computed in blocks of rows (memory
    ``O(block * max(M, N))``) after centring both sets on the real mean (fewer
    rounding errors in ``|a|^2 + |b|^2 - 2 a.b``; distances are unchanged).

    Returns a dict: ``precision``, ``recall``, ``density``, ``coverage``
    (float or None), ``k``, ``n_real``, ``n_fake`` and ``reason`` (None, or why
    some values are None). Too few samples never raise: real balls need
    ``M > k`` (else precision, density and coverage are None), fake balls need
    ``N > k`` (else recall is None), and an empty set gives None throughout.

    Raises ``ValueError`` for ``k < 1``, NaN/inf features, non-2-D input or
    mismatched feature dimensions.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    real = _as_features(real_features, "real_features")
    fake = _as_features(fake_features, "fake_features")
    _check_same_dim(real, fake, "real_features", "fake_features")
    m, n = real.shape[0], fake.shape[0]
    result: dict[str, Any] = {
        "precision": None,
        "recall": None,
        "density": None,
        "coverage": None,
        "k": k,
        "n_real": m,
        "n_fake": n,
        "reason": None,
    }
    reasons = []
    if m == 0 or n == 0:
        result["reason"] = f"needs real and fake samples, got {m} real and {n} fake"
        return result
    real_ok, fake_ok = m > k, n > k
    if not real_ok:
        reasons.append(f"precision, density and coverage need more than k={k} real samples, got {m}")
    if not fake_ok:
        reasons.append(f"recall needs more than k={k} fake samples, got {n}")
    result["reason"] = "; ".join(reasons) or None
    if not (real_ok or fake_ok):
        return result

    center = real.mean(axis=0)
    real = real - center
    fake = fake - center
    real_r2 = _kth_neighbour_sq(real, k) if real_ok else None
    fake_r2 = _kth_neighbour_sq(fake, k) if fake_ok else None

    real_sq = np.einsum("ij,ij->i", real, real)
    counts = np.zeros(n, dtype=np.int64)  # real balls holding each fake sample
    real_min_d2 = np.full(m, np.inf)  # squared distance of each real sample to its nearest fake
    real_in_fake = np.zeros(m, dtype=bool)
    for start in range(0, n, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, n)
        d2 = _sq_dists(fake[start:stop], real, real_sq)  # [block of fake, M]
        if real_r2 is not None:
            counts[start:stop] = (d2 < real_r2[None, :]).sum(axis=1)
            np.minimum(real_min_d2, d2.min(axis=0), out=real_min_d2)
        if fake_r2 is not None:
            real_in_fake |= (d2 < fake_r2[start:stop, None]).any(axis=0)

    if real_r2 is not None:
        result["precision"] = float((counts > 0).mean())
        result["density"] = float(counts.sum() / (k * n))
        result["coverage"] = float((real_min_d2 < real_r2).mean())
    if fake_r2 is not None:
        result["recall"] = float(real_in_fake.mean())
    return result


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


# --------------------------------------------------------------------------- #
# Acceptance policy
# --------------------------------------------------------------------------- #


def _config_extra(cfg: FilterConfig) -> dict[str, Any]:
    """FilterConfig fields beyond :class:`FilterPolicy` that still decide rows (e.g. a subclass's new rule)."""
    dumped = cfg.model_dump(mode="json")
    return {k: v for k, v in dumped.items() if k not in _NON_ROW_POLICY_FIELDS and k not in FilterPolicy.field_names()}


def filter_policy(cfg: FilterConfig, duplicate_threshold: float | None = None, safety_checked: bool = False) -> str:
    """The row-acceptance policy of ``cfg`` as canonical JSON (sorted keys, no whitespace).

    The exact string :func:`filter_version` hashes (see there for what it
    contains), stored per shard row in the ``filter_policy`` column so a
    shard says which rules accepted its rows, not only their hash:
    ``policy_json_version(filter_policy(cfg, t)) == filter_version(cfg, t)``.
    """
    policy = FilterPolicy.from_config(cfg)
    extra = _config_extra(cfg)
    if duplicate_threshold is not None and (policy.drop_train_copies or policy.drop_test_leaks):
        if isinstance(duplicate_threshold, bool) or not np.isfinite(duplicate_threshold) or duplicate_threshold < 0:
            raise ValueError(f"duplicate_threshold must be a finite distance >= 0 or None, got {duplicate_threshold!r}")
        extra["duplicate_threshold"] = float(duplicate_threshold)
    return policy.canonical_json(extra={**extra, **safety_extra(policy, safety_checked)})


def filter_version(cfg: FilterConfig, duplicate_threshold: float | None = None, safety_checked: bool = False) -> str:
    """Identifier of the row-acceptance policy: ``"v1-"`` + 12 hex of a sha256.

    Hashes the canonical JSON (sorted keys, no whitespace; :func:`filter_policy`) of the policy that
    :func:`accept` applies for ``cfg`` (see
    :meth:`~synthaug_pipeline.lib.filtering.FilterPolicy.canonical`), plus
    ``duplicate_threshold`` (the class's near-duplicate distance,
    ``summary["duplicate_threshold"]``) when a duplicate rule is on, so every
    shard row records which policy accepted it and a policy change is visible
    in the data. It equals
    :func:`~synthaug_pipeline.lib.filtering.policy_version` of the same
    settings. Rules at their no-op value (no top_k/quantile, duplicates kept)
    are left out, so a two-threshold policy keeps the identifier it had before
    the other rules existed. Any other FilterConfig field is included as
    dumped (a new row-level rule must change the version), except
    ``min_accepted_per_class``: it gates a whole class in an asset check and
    never changes a row's accepted flag.
    """
    return policy_json_version(filter_policy(cfg, duplicate_threshold, safety_checked))


def accept(scores: ClassScores, class_index: int, cfg: FilterConfig) -> np.ndarray:
    """Boolean accept mask of ``cfg``'s policy on in-memory float64 scores (see
    :func:`synthaug_pipeline.lib.filtering.apply_policy`): ``confidence >=
    min_confidence`` and, if ``require_label_match``, judge top-1 equals
    ``class_index``; then ``scores.is_train_copy`` / ``scores.is_test_leak``
    dropped if ``drop_train_copies`` / ``drop_test_leaks`` (flags that are None
    were not computed and drop nothing); then ``top_k`` or ``quantile``.
    Shards are written with :func:`shard_accept`, which makes the same
    decisions on the float32 values a shard stores."""
    return FilterPolicy.from_config(cfg).apply(scores, class_index)


def shard_accept(scores: ClassScores, class_index: int, cfg: FilterConfig) -> tuple[np.ndarray, str]:
    """``(accepted, filter_version)`` of the shard rows of ``scores`` under ``cfg``.

    The decisions of :func:`accept`, taken on the values as a shard stores them
    (float32, see :func:`~synthaug_pipeline.lib.filtering.shard_decisions`):
    training copies are rows with ``nearest_real_distance <=
    summary["duplicate_threshold"]``, test leaks come from
    ``scores.is_test_leak``. :func:`~synthaug_pipeline.lib.filtering.refilter_table`
    given the same policy, that ``duplicate_threshold`` and
    ``test_leak=scores.is_test_leak`` reproduces both columns exactly. The
    version is :func:`filter_version` of ``cfg`` and the threshold.
    """
    return shard_decisions(
        FilterPolicy.from_config(cfg),
        class_index,
        scores.judge_confidence,
        scores.judge_top1,
        scores.nearest_real_distance,
        duplicate_threshold=scores.summary.get("duplicate_threshold"),
        test_leak=scores.is_test_leak,
        extra=_config_extra(cfg),
        safety_flagged=getattr(scores, "safety_flagged", None),
        features=scores.features,
    )
