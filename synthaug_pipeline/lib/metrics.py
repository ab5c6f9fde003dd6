"""Distribution metrics and distances between feature sets (pure NumPy, float64).

FID, KID (unbiased MMD with the cubic polynomial kernel), precision / recall / density / coverage
(Naeem et al. 2020), nearest neighbours and mean pairwise distance, chunked so memory stays bounded for
large classes. Feature sums over thousands of images in float32 lose enough precision to move FID in the
second digit, so everything here is float64. :mod:`synthaug_pipeline.lib.scoring` turns them into a class's scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Rows per block when computing pairwise distances, so memory stays at
# ``_CHUNK_ROWS * M`` floats instead of ``N * M`` for large classes.
_CHUNK_ROWS = 1024

# Neighbourhood size of precision/recall/density/coverage (Naeem et al. 2020
# recommend k = 5).
DEFAULT_PRDC_K = 5


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
