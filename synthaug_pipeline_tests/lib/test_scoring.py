"""Tests for synthaug_pipeline.lib.scoring against independent computations."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist, pdist

from synthaug_pipeline.lib import metrics
from synthaug_pipeline.lib.config import FilterConfig
from synthaug_pipeline.lib.shard_filtering import accept, filter_version, shard_accept
from synthaug_pipeline.lib.scoring import (
    ClassScores,
    frechet_distance,
    kernel_inception_distance,
    manifold_metrics,
    score_class,
)


def _fid_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook FID with scipy.linalg.sqrtm (well-conditioned inputs only)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def _fid_reference_eig(a: np.ndarray, b: np.ndarray) -> float:
    """FID for any N, D: ``Tr (S_a S_b)^{1/2}`` as the sum of square roots of the eigenvalues of ``S_a @ S_b``.

    Independent of frechet_distance's routes (no Gram matrix, no symmetric
    square root): ``S_a S_b`` is a product of PSD matrices, so its eigenvalues
    are real and >= 0 in exact arithmetic; a general (non-symmetric)
    eigensolver returns them with round-off, so the real parts are taken and
    the ones below round-off level (the ``D - rank`` zero eigenvalues when
    N < D) set to 0.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(cov_a @ cov_b).real
    eig[eig < 1e-10 * np.abs(eig).max()] = 0.0
    trace_sqrt = float(np.sqrt(eig).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def _kid_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3, written as plain loops."""
    d = x.shape[1]

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- #
# frechet_distance
# --------------------------------------------------------------------------- #


def test_frechet_matches_scipy_sqrtm_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(loc=0.3, size=(250, 12)) @ rng.normal(size=(12, 12))
    expected = _fid_reference(a, b)
    assert expected > 1.0  # the sets really differ
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n_a, n_b, dim", [(6, 8, 30), (20, 25, 64), (9, 40, 30), (3, 3, 16)])
def test_frechet_matches_eigenvalue_reference_when_n_below_d(n_a, n_b, dim):
    # The per-class regime (N < D, singular covariances) against a reference that
    # shares no code path with frechet_distance; correlated features and a mean shift.
    rng = np.random.default_rng(n_a * 100 + dim)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    a = rng.normal(size=(n_a, dim)) @ mix
    b = (rng.normal(size=(n_b, dim)) * 1.3 + 0.4) @ mix
    assert min(n_a, n_b) < dim
    expected = _fid_reference_eig(a, b)
    assert expected > 0.5  # the sets really differ
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    # The reference itself agrees with the sqrtm textbook formula where that one is reliable (N > D).
    big_a, big_b = rng.normal(size=(200, 8)), rng.normal(loc=0.3, size=(150, 8)) * 1.2
    assert _fid_reference_eig(big_a, big_b) == pytest.approx(_fid_reference(big_a, big_b), rel=1e-8)


def test_frechet_is_symmetric_and_float32_input_is_computed_in_float64():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 6)).astype(np.float32)
    b = (rng.normal(size=(120, 6)) * 1.5).astype(np.float32)
    ab = frechet_distance(a, b)
    assert frechet_distance(b, a) == pytest.approx(ab, rel=1e-9)
    assert ab == pytest.approx(_fid_reference(a.astype(np.float64), b.astype(np.float64)), rel=1e-6)


def test_frechet_identical_sets_is_zero():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200, 10))
    assert abs(frechet_distance(a, a.copy())) < 1e-6


def test_frechet_identical_rank_deficient_sets_is_zero():
    # N < D: singular covariances, where sqrtm(S_a S_b) is unreliable.
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 40))
    value = frechet_distance(a, a.copy())
    assert math.isfinite(value)
    assert abs(value) < 1e-6


def test_frechet_rank_deficient_different_sets_is_finite_and_positive():
    rng = np.random.default_rng(4)
    value = frechet_distance(rng.normal(size=(6, 30)), rng.normal(size=(8, 30)) + 1.0)
    assert math.isfinite(value) and value > 0


def test_frechet_mean_shift_gives_squared_norm():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(150, 7))
    v = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0, 0.25])
    assert frechet_distance(a, a + v) == pytest.approx(float(v @ v), rel=1e-7)


@pytest.mark.parametrize("shape_a, shape_b", [((300, 12), (250, 12)), ((20, 30), (25, 30)), ((9, 30), (40, 30))])
def test_frechet_gram_and_covariance_routes_agree(shape_a, shape_b):
    # frechet_distance takes the Gram/SVD route when min(N, M) < D; both routes
    # compute the same three traces, and match the sqrtm reference where it applies.
    rng = np.random.default_rng(14)
    a = rng.normal(size=shape_a) @ rng.normal(size=(shape_a[1], shape_a[1]))
    b = rng.normal(loc=0.2, size=shape_b) @ rng.normal(size=(shape_b[1], shape_b[1]))
    gram = metrics._fid_traces_gram(a - a.mean(0), b - b.mean(0))
    cov = metrics._fid_traces_cov(a, b)
    np.testing.assert_allclose(gram, cov, rtol=1e-7)
    diff = a.mean(0) - b.mean(0)
    via_gram = float(diff @ diff + gram[0] + gram[1] - 2 * gram[2])
    via_cov = float(diff @ diff + cov[0] + cov[1] - 2 * cov[2])
    assert via_gram == pytest.approx(via_cov, rel=1e-7)
    assert frechet_distance(a, b) == pytest.approx(via_cov, rel=1e-7)
    if min(shape_a[0], shape_b[0]) > shape_a[1]:  # sqrtm is reliable only for full-rank covariances
        assert via_gram == pytest.approx(_fid_reference(a, b), rel=1e-6)


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.zeros((1, 3)), np.zeros((5, 3)), "at least 2"),
        (np.zeros((5, 3)), np.zeros((1, 3)), "at least 2"),
        (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), np.ones((3, 2)), "NaN or inf"),
        (np.ones((3, 2)), np.array([[0.0, 1.0], [np.inf, 2.0], [1.0, 1.0]]), "NaN or inf"),
        (np.ones((3, 2)), np.ones((3, 3)), "dimensions"),
        (np.ones(3), np.ones((3, 3)), "2-D"),
    ],
)
def test_frechet_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


# --------------------------------------------------------------------------- #
# kernel_inception_distance
# --------------------------------------------------------------------------- #


def test_kid_matches_double_loop_reference():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(7, 3))
    y = rng.normal(loc=0.5, size=(9, 3))
    mean, std = kernel_inception_distance(x, y)
    assert mean == pytest.approx(_kid_reference(x, y), rel=1e-9, abs=1e-12)
    assert std == 0.0


def test_kid_same_distribution_near_zero_shifted_clearly_positive():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(400, 16))
    b = rng.normal(size=(400, 16))
    c = rng.normal(size=(400, 16)) + 0.5
    same, _ = kernel_inception_distance(a, b)
    shifted, _ = kernel_inception_distance(a, c)
    assert abs(same) < 0.02
    assert shifted > 0.5
    assert shifted > 50 * abs(same)


def test_kid_subsets_are_seeded_and_full_set_when_subset_is_large():
    rng = np.random.default_rng(8)
    a = rng.normal(size=(60, 4))
    b = rng.normal(size=(50, 4)) + 0.3
    first = kernel_inception_distance(a, b, subset_size=20, num_subsets=10, seed=3)
    again = kernel_inception_distance(a, b, subset_size=20, num_subsets=10, seed=3)
    other = kernel_inception_distance(a, b, subset_size=20, num_subsets=10, seed=4)
    assert first == again
    assert first != other
    assert first[1] > 0.0
    # One subset of 20 rows each equals the reference estimate on those rows.
    one = kernel_inception_distance(a, b, subset_size=20, num_subsets=1, seed=5)
    ref_rng = np.random.default_rng(5)
    ia = ref_rng.choice(60, 20, replace=False)
    ib = ref_rng.choice(50, 20, replace=False)
    assert one[0] == pytest.approx(_kid_reference(a[ia], b[ib]), rel=1e-9)
    assert one[1] == 0.0
    # subset_size >= the smaller set: one full-set estimate, std 0.
    full = kernel_inception_distance(a, b)
    assert kernel_inception_distance(a, b, subset_size=50) == full
    assert full[1] == 0.0


@pytest.mark.parametrize(
    "kwargs, a_rows, match",
    [
        ({}, 1, "at least 2"),
        ({"subset_size": 1}, 10, "subset_size"),
        ({"subset_size": 4, "num_subsets": 0}, 10, "num_subsets"),
    ],
)
def test_kid_rejects_bad_input(kwargs, a_rows, match):
    with pytest.raises(ValueError, match=match):
        kernel_inception_distance(np.ones((a_rows, 3)), np.arange(30, dtype=float).reshape(10, 3), **kwargs)


def test_kid_rejects_nan():
    a = np.ones((4, 2))
    a[2, 1] = np.nan
    with pytest.raises(ValueError, match="1 of 4 rows"):
        kernel_inception_distance(a, np.ones((4, 2)))


# --------------------------------------------------------------------------- #
# score_class
# --------------------------------------------------------------------------- #

REAL = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
SYN = np.array([[0.0, 0.0], [3.0, 0.0], [10.0, 1.0]])
PROBS = np.array(
    [
        [0.1, 0.7, 0.2],
        [0.6, 0.3, 0.1],
        [0.25, 0.5, 0.25],
    ]
)


def test_score_class_hand_made_values():
    scores = score_class(PROBS, SYN, 1, REAL, "judge:test/penultimate")
    assert isinstance(scores, ClassScores)
    np.testing.assert_array_equal(scores.judge_confidence, [0.7, 0.3, 0.5])
    np.testing.assert_array_equal(scores.judge_top1, [1, 0, 1])
    np.testing.assert_allclose(scores.nearest_real_distance, [0.0, 3.0, 1.0], rtol=0, atol=1e-12)

    s = scores.summary
    assert s["n_synthetic"] == 3 and s["n_real"] == 3
    assert s["feature_extractor"] == "judge:test/penultimate"
    assert s["mean_judge_confidence"] == pytest.approx(0.5)
    assert s["label_match_rate"] == pytest.approx(2 / 3)
    assert s["mean_nearest_real_distance"] == pytest.approx(4 / 3)
    # Real nearest neighbours: 5, 5, sqrt(65) -> median 5.
    assert s["real_nn_distance"] == pytest.approx(5.0)
    assert s["diversity"] == pytest.approx((3 + math.sqrt(101) + math.sqrt(50)) / 3)
    assert s["real_diversity"] == pytest.approx((5 + 10 + math.sqrt(65)) / 3)
    assert s["fid"] == pytest.approx(frechet_distance(SYN, REAL))
    kid_mean, kid_std = kernel_inception_distance(SYN, REAL)
    assert s["kid_mean"] == pytest.approx(kid_mean) and s["kid_std"] == 0.0
    # 3 images per set are too few for the default k=5 neighbourhoods: the
    # only warning is about the PRDC fields, which are None.
    assert len(s["warnings"]) == 1 and s["warnings"][0].startswith("precision/recall/density/coverage")
    assert s["precision"] is None and s["recall"] is None and s["density"] is None and s["coverage"] is None
    # Duplicate flags at the default threshold 0.5 x real_nn_distance = 2.5.
    assert s["duplicate_threshold"] == pytest.approx(2.5)
    np.testing.assert_array_equal(scores.is_train_copy, [True, False, True])
    assert s["train_copies"] == 2
    assert scores.nearest_test_distance is None and scores.is_test_leak is None and s["test_leaks"] is None
    json.dumps(s)  # metadata-ready: plain Python types only


def test_score_class_matches_cdist_across_chunks(monkeypatch):
    # Small chunk size so the chunked paths (several blocks, self-exclusion
    # offsets) are exercised on small data.
    monkeypatch.setattr(metrics, "_CHUNK_ROWS", 4)
    rng = np.random.default_rng(9)
    syn = rng.normal(size=(11, 5))
    real = rng.normal(size=(13, 5))
    probs = _softmax(rng.normal(size=(11, 4)))
    scores = score_class(probs, syn, 2, real, "x")
    np.testing.assert_allclose(scores.nearest_real_distance, cdist(syn, real).min(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(scores.nearest_real_index, cdist(syn, real).argmin(axis=1))
    assert scores.nearest_real_index.dtype == np.int64
    real_d = cdist(real, real)
    np.fill_diagonal(real_d, np.inf)
    assert scores.summary["real_nn_distance"] == pytest.approx(float(np.median(real_d.min(axis=1))), rel=1e-12)
    assert scores.summary["diversity"] == pytest.approx(float(pdist(syn).mean()), rel=1e-12)
    assert scores.summary["real_diversity"] == pytest.approx(float(pdist(real).mean()), rel=1e-12)
    np.testing.assert_array_equal(scores.judge_top1, probs.argmax(axis=1))


def test_score_class_single_image_gives_none_with_warnings():
    scores = score_class(PROBS[:1], SYN[:1], 1, REAL, "x")
    s = scores.summary
    assert s["n_synthetic"] == 1
    assert s["fid"] is None and s["kid_mean"] is None and s["kid_std"] is None
    assert s["diversity"] is None
    assert any("fid" in w for w in s["warnings"])
    assert any("diversity" in w for w in s["warnings"])
    # What can be computed still is.
    assert s["mean_judge_confidence"] == pytest.approx(0.7)
    assert s["real_nn_distance"] == pytest.approx(5.0)
    np.testing.assert_allclose(scores.nearest_real_distance, [0.0], atol=1e-12)


def test_score_class_single_real_image_gives_none_real_scale():
    scores = score_class(PROBS, SYN, 1, REAL[:1], "x")
    s = scores.summary
    assert s["real_nn_distance"] is None and s["real_diversity"] is None and s["fid"] is None
    assert any("real" in w for w in s["warnings"])
    np.testing.assert_allclose(scores.nearest_real_distance, [0.0, 3.0, math.sqrt(101)], rtol=1e-12)


def test_score_class_empty_class_does_not_crash():
    scores = score_class(np.zeros((0, 3)), np.zeros((0, 2)), 0, REAL, "x")
    assert scores.judge_confidence.shape == (0,)
    assert scores.summary["n_synthetic"] == 0
    assert scores.summary["mean_judge_confidence"] is None
    assert scores.summary["warnings"]


@pytest.mark.parametrize("where", ["probs", "features", "real_features"])
def test_score_class_rejects_non_finite_naming_rows(where):
    probs, syn, real = PROBS.copy(), SYN.copy(), REAL.copy()
    target = {"probs": probs, "features": syn, "real_features": real}[where]
    target[0, 0] = np.nan
    target[2, 1] = np.inf
    with pytest.raises(ValueError, match=rf"{where} has 2 of 3 rows"):
        score_class(probs, syn, 1, real, "x")


def test_score_class_rejects_logits_and_bad_shapes():
    with pytest.raises(ValueError, match="softmax"):
        score_class(PROBS * 5 - 1, SYN, 1, REAL, "x")
    with pytest.raises(ValueError, match="same images"):
        score_class(PROBS[:2], SYN, 1, REAL, "x")
    with pytest.raises(ValueError, match="dimensions"):
        score_class(PROBS, SYN, 1, np.zeros((3, 5)), "x")
    with pytest.raises(ValueError, match="class_index"):
        score_class(PROBS, SYN, 3, REAL, "x")
    with pytest.raises(ValueError, match="real_features is empty"):
        score_class(PROBS, SYN, 1, np.zeros((0, 2)), "x")


# --------------------------------------------------------------------------- #
# filter_version / accept
# --------------------------------------------------------------------------- #


def test_filter_version_is_pinned_canonical_hash():
    # Pinned literally: a change in canonicalisation would silently re-version every shard.
    canonical = b'{"drop_test_leaks":true,"drop_train_copies":true,"min_confidence":0.5,"require_label_match":true}'
    assert filter_version(FilterConfig()) == "v1-" + hashlib.sha256(canonical).hexdigest()[:12] == "v1-1e6275e835a9"
    with_threshold = canonical.replace(b'"min_confidence"', b'"duplicate_threshold":2.5,"min_confidence"')
    assert filter_version(FilterConfig(), duplicate_threshold=2.5) == "v1-" + hashlib.sha256(with_threshold).hexdigest()[:12]
    assert filter_version(FilterConfig(), duplicate_threshold=2.5) == "v1-d4104c5e853a"
    # Duplicate rules off: the identifier of the two-threshold policy, as before those rules existed.
    legacy = FilterConfig(min_confidence=0.5, require_label_match=True, drop_train_copies=False, drop_test_leaks=False)
    assert filter_version(legacy) == "v1-" + hashlib.sha256(b'{"min_confidence":0.5,"require_label_match":true}').hexdigest()[:12]
    assert filter_version(legacy) == "v1-e7d13883f612"


def test_filter_version_changes_with_row_policy_only():
    base = filter_version(FilterConfig())
    assert base.startswith("v1-") and len(base) == 15
    assert filter_version(FilterConfig()) == base
    assert filter_version(FilterConfig(min_confidence=0.6)) != base
    assert filter_version(FilterConfig(require_label_match=False)) != base
    assert filter_version(FilterConfig(top_k=5)) != base
    assert filter_version(FilterConfig(drop_test_leaks=False)) != base
    assert filter_version(FilterConfig(), duplicate_threshold=0.3) != filter_version(FilterConfig(), duplicate_threshold=0.4)
    # The per-class count is an asset-check threshold, not a row decision.
    assert filter_version(FilterConfig(min_accepted_per_class=50)) == base
    with pytest.raises(ValueError, match="duplicate_threshold"):
        filter_version(FilterConfig(), duplicate_threshold=float("nan"))


def _scores(conf, top1) -> ClassScores:
    # No duplicate flags: accept() then applies the two thresholds only, whatever drop_* says.
    return ClassScores(
        judge_confidence=np.asarray(conf, dtype=np.float64),
        judge_top1=np.asarray(top1, dtype=np.int64),
        nearest_real_distance=np.zeros(len(conf)),
    )


def test_accept_applies_thresholds_exactly():
    scores = _scores([0.49, 0.5, 0.51, 0.9, 1.0], [2, 2, 1, 2, 0])
    strict = accept(scores, 2, FilterConfig(min_confidence=0.5, require_label_match=True))
    assert strict.dtype == np.bool_
    np.testing.assert_array_equal(strict, [False, True, False, True, False])
    loose = accept(scores, 2, FilterConfig(min_confidence=0.5, require_label_match=False))
    np.testing.assert_array_equal(loose, [False, True, True, True, True])
    everything = accept(scores, 2, FilterConfig(min_confidence=0.0, require_label_match=False))
    assert everything.all()
    nothing = accept(scores, 7, FilterConfig(min_confidence=0.0, require_label_match=True))
    assert not nothing.any()


def test_accept_on_score_class_output():
    scores = score_class(PROBS, SYN, 1, REAL, "x")
    # Rows 0 and 2 pass the thresholds but lie within 2.5 (0.5 x real_nn_distance) of a training
    # image: the default policy drops them as copies.
    assert scores.is_train_copy.tolist() == [True, False, True]
    np.testing.assert_array_equal(accept(scores, 1, FilterConfig(min_confidence=0.5)), [False, False, False])
    keep_copies = FilterConfig(min_confidence=0.5, drop_train_copies=False)
    np.testing.assert_array_equal(accept(scores, 1, keep_copies), [True, False, True])
    # The shard path agrees here (no value near a threshold) and versions the threshold it used.
    accepted, version = shard_accept(scores, 1, keep_copies)
    np.testing.assert_array_equal(accepted, [True, False, True])
    assert version == filter_version(keep_copies, duplicate_threshold=2.5)


# --------------------------------------------------------------------------- #
# manifold_metrics (precision / recall / density / coverage)
# --------------------------------------------------------------------------- #


def _prdc_reference(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    """Naeem et al. (2020) written out with full distance matrices, following
    the authors' reference code (open balls, radius = k-th other neighbour)."""

    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))

    d_rf = dist(real, fake)
    r_real = np.sort(dist(real, real), axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    return {
        "precision": (d_rf < r_real[:, None]).any(axis=0).mean(),
        "recall": (d_rf < r_fake[None, :]).any(axis=1).mean(),
        "density": (1.0 / k) * (d_rf < r_real[:, None]).sum(axis=0).mean(),
        "coverage": (d_rf.min(axis=1) < r_real).mean(),
    }


@pytest.mark.parametrize("k", [1, 3, 5])
def test_manifold_metrics_match_reference_across_chunks(monkeypatch, k):
    monkeypatch.setattr(metrics, "_CHUNK_ROWS", 7)  # several blocks, self-exclusion offsets
    rng = np.random.default_rng(10 + k)
    real = rng.normal(size=(40, 6)) + 5.0  # offset: exercises the centring
    fake = rng.normal(loc=0.4, scale=1.3, size=(33, 6)) + 5.0
    got = manifold_metrics(real, fake, k=k)
    ref = _prdc_reference(real, fake, k)
    assert got["precision"] == ref["precision"]
    assert got["recall"] == ref["recall"]
    assert got["coverage"] == ref["coverage"]
    assert got["density"] == pytest.approx(ref["density"], rel=1e-12)  # same count; only the division order differs
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1  # a non-trivial case
    assert got["k"] == k and got["n_real"] == 40 and got["n_fake"] == 33 and got["reason"] is None


def test_manifold_metrics_hand_made_open_balls():
    # k=1 radii: real 5, 5, sqrt(65); fake 3, 3, sqrt(50). REAL[1]-SYN[0] is at
    # exactly 5 = REAL[1]'s radius: open balls do not count it.
    got = manifold_metrics(REAL, SYN, k=1)
    assert got["precision"] == 1.0
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["density"] == pytest.approx(5 / 3)
    assert got["coverage"] == 1.0


def test_manifold_metrics_identical_and_disjoint_sets():
    rng = np.random.default_rng(11)
    real = rng.normal(size=(50, 8))
    same = manifold_metrics(real, real.copy(), k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert same["density"] > 0.5
    far = manifold_metrics(real, rng.normal(size=(40, 8)) + 1000.0, k=5)
    assert far["precision"] == 0.0 and far["recall"] == 0.0 and far["density"] == 0.0 and far["coverage"] == 0.0


def test_manifold_metrics_too_few_samples_gives_none_with_reason():
    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(5, 3)), rng.normal(size=(20, 3))
    few_real = manifold_metrics(real, fake, k=5)  # k >= M: no real balls
    assert few_real["precision"] is None and few_real["density"] is None and few_real["coverage"] is None
    assert few_real["recall"] is not None
    assert "real" in few_real["reason"]
    few_fake = manifold_metrics(fake, real, k=5)  # k >= N: no fake balls
    assert few_fake["recall"] is None and few_fake["precision"] is not None
    assert "fake" in few_fake["reason"]
    empty = manifold_metrics(real, np.zeros((0, 3)), k=1)
    assert all(empty[key] is None for key in ("precision", "recall", "density", "coverage")) and empty["reason"]


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_manifold_metrics_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        manifold_metrics(np.ones((4, 2)), np.ones((4, 2)), k=k)


def test_manifold_metrics_rejects_nan_and_dims():
    bad = np.ones((4, 2))
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="fake_features has 1 of 4 rows"):
        manifold_metrics(np.ones((4, 2)), bad)
    with pytest.raises(ValueError, match="dimensions"):
        manifold_metrics(np.ones((4, 2)), np.ones((4, 3)))


# --------------------------------------------------------------------------- #
# score_class: PRDC summary, memorization and test-leak flags
# --------------------------------------------------------------------------- #


def _class_data(seed: int = 13):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(30, 4))
    test = rng.normal(size=(10, 4))
    syn = rng.normal(size=(12, 4)) + 0.2
    syn[3] = real[7]  # an exact copy of a training image
    syn[8] = test[2]  # an exact copy of a test image
    syn[10] = real[0] + 50.0  # far from everything
    probs = _softmax(rng.normal(size=(12, 3)))
    return probs, syn, real, test


def test_score_class_flags_training_copies_and_test_leaks():
    probs, syn, real, test = _class_data()
    scores = score_class(probs, syn, 1, real, "x", test_features=test)
    s = scores.summary
    real_d = cdist(real, real)
    np.fill_diagonal(real_d, np.inf)
    threshold = 0.5 * float(np.median(real_d.min(axis=1)))
    assert s["duplicate_threshold"] == pytest.approx(threshold, rel=1e-12)
    assert "median real nearest-neighbour" in s["duplicate_threshold_rule"]
    np.testing.assert_allclose(scores.nearest_test_distance, cdist(syn, test).min(axis=1), rtol=1e-12)
    assert scores.nearest_real_distance[3] == 0.0 and scores.nearest_test_distance[8] == 0.0
    # Which real image each flagged one copies: the copies point at the very rows they were made from.
    assert scores.nearest_real_index[3] == 7 and scores.nearest_test_index[8] == 2
    np.testing.assert_array_equal(scores.nearest_real_index, cdist(syn, real).argmin(axis=1))
    np.testing.assert_array_equal(scores.nearest_test_index, cdist(syn, test).argmin(axis=1))
    assert scores.nearest_real_index.dtype == scores.nearest_test_index.dtype == np.int64
    assert scores.is_train_copy[3] and scores.is_test_leak[8]
    assert not scores.is_train_copy[10] and not scores.is_test_leak[10]
    np.testing.assert_array_equal(scores.is_train_copy, cdist(syn, real).min(axis=1) <= threshold)
    np.testing.assert_array_equal(scores.is_test_leak, cdist(syn, test).min(axis=1) <= threshold)
    assert s["train_copies"] == int(scores.is_train_copy.sum()) >= 1
    assert s["test_leaks"] == int(scores.is_test_leak.sum()) >= 1
    assert s["n_test"] == 10 and s["n_synthetic"] == 12 and s["n_real"] == 30
    assert scores.is_train_copy.dtype == np.bool_ and scores.is_test_leak.dtype == np.bool_
    json.dumps(s)


def test_score_class_explicit_threshold_and_prdc_summary():
    probs, syn, real, test = _class_data()
    scores = score_class(probs, syn, 1, real, "x", test_features=test, duplicate_threshold=0.0, prdc_k=3)
    s = scores.summary
    assert s["duplicate_threshold"] == 0.0 and s["duplicate_threshold_rule"] == "given"
    # Threshold 0: only the exact copies.
    np.testing.assert_array_equal(np.flatnonzero(scores.is_train_copy), [3])
    np.testing.assert_array_equal(np.flatnonzero(scores.is_test_leak), [8])
    expected = manifold_metrics(real, syn, k=3)
    assert {key: s[key] for key in ("precision", "recall", "density", "coverage")} == {
        key: expected[key] for key in ("precision", "recall", "density", "coverage")
    }
    assert s["prdc_k"] == 3 and s["warnings"] == []


def test_score_class_without_test_features_or_threshold():
    probs, syn, real, _ = _class_data()
    scores = score_class(probs, syn, 1, real[:1], "x")
    assert scores.is_train_copy is None and scores.is_test_leak is None and scores.nearest_test_distance is None
    assert scores.nearest_test_index is None and scores.nearest_real_index.tolist() == [0] * len(syn)
    assert scores.summary["duplicate_threshold"] is None and scores.summary["train_copies"] is None
    assert any("duplicate_threshold" in w for w in scores.summary["warnings"])
    # An explicit threshold works with a single real image.
    given = score_class(probs, syn, 1, real[:1], "x", duplicate_threshold=1e-9)
    assert given.is_train_copy.sum() == 0
    empty_test = score_class(probs, syn, 1, real, "x", test_features=np.zeros((0, 4)))
    assert empty_test.is_test_leak is None and empty_test.summary["n_test"] == 0
    assert any("test_features is empty" in w for w in empty_test.summary["warnings"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"duplicate_threshold": -1.0}, "duplicate_threshold"),
        ({"duplicate_threshold": float("nan")}, "duplicate_threshold"),
        ({"test_features": np.zeros((3, 5))}, "dimensions"),
        ({"test_features": np.array([[np.nan, 0.0]])}, "test_features has 1 of 1 rows"),
        ({"prdc_k": 0}, "prdc_k"),
    ],
)
def test_score_class_rejects_bad_duplicate_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        score_class(PROBS, SYN, 1, REAL, "x", **kwargs)


def test_score_class_empty_class_has_empty_flags():
    scores = score_class(np.zeros((0, 3)), np.zeros((0, 2)), 0, REAL, "x", test_features=REAL)
    assert scores.is_train_copy.shape == (0,) and scores.is_test_leak.shape == (0,)
    assert scores.nearest_real_index.shape == scores.nearest_test_index.shape == (0,)
    assert scores.summary["train_copies"] == 0 and scores.summary["precision"] is None


# --------------------------------------------------------------------------- #
# score_class: profile settings, CLIP scores, KID bookkeeping
# --------------------------------------------------------------------------- #


def test_score_class_fid_and_kid_match_independent_references_on_float32_features():
    # What the pipeline passes: float32 extractor output, N > D so the covariance route runs.
    rng = np.random.default_rng(21)
    real = (rng.normal(size=(120, 8)) @ rng.normal(size=(8, 8))).astype(np.float32)
    syn = (rng.normal(loc=0.3, size=(90, 8)) @ rng.normal(size=(8, 8))).astype(np.float32)
    probs = _softmax(rng.normal(size=(90, 4)))
    s = score_class(probs, syn, 0, real, "x").summary
    real64, syn64 = real.astype(np.float64), syn.astype(np.float64)
    assert s["fid"] == pytest.approx(_fid_reference(syn64, real64), rel=1e-6)
    assert s["kid_mean"] == pytest.approx(_kid_reference(syn64, real64), rel=1e-6)
    assert s["kid_subset_size"] is None and s["kid_num_subsets"] == 1 and s["ranking_metric"] == "kid_mean"
    identical = score_class(_softmax(rng.normal(size=(120, 4))), real, 0, real.copy(), "x").summary
    assert identical["fid"] == pytest.approx(0.0, abs=1e-6)


def test_score_class_records_kid_subsets_actually_drawn():
    probs, syn, real, _ = _class_data()
    s = score_class(probs, syn, 1, real, "x", kid_subset_size=5, kid_num_subsets=7).summary
    assert s["kid_subset_size"] == 5 and s["kid_num_subsets"] == 7 and s["kid_std"] > 0
    full = score_class(probs, syn, 1, real, "x", kid_subset_size=50, kid_num_subsets=7).summary
    assert full["kid_subset_size"] is None and full["kid_num_subsets"] == 1 and full["kid_std"] == 0.0


def test_score_class_duplicate_fraction_and_diversity_ratio():
    probs, syn, real, test = _class_data()
    real_d = cdist(real, real)
    np.fill_diagonal(real_d, np.inf)
    median_nn = float(np.median(real_d.min(axis=1)))
    scores = score_class(probs, syn, 1, real, "x", test_features=test, duplicate_fraction=1.5)
    s = scores.summary
    assert s["duplicate_threshold"] == pytest.approx(1.5 * median_nn, rel=1e-12)
    assert s["duplicate_threshold_rule"] == "1.5 x median real nearest-neighbour distance"
    np.testing.assert_array_equal(scores.is_train_copy, cdist(syn, real).min(axis=1) <= 1.5 * median_nn)
    assert s["train_copies"] > score_class(probs, syn, 1, real, "x").summary["train_copies"]
    assert s["diversity_ratio"] == pytest.approx(float(pdist(syn).mean() / pdist(real).mean()), rel=1e-12)
    with pytest.raises(ValueError, match="duplicate_fraction"):
        score_class(probs, syn, 1, real, "x", duplicate_fraction=0.0)


def test_score_class_keeps_clip_scores():
    clip = np.array([0.31, 0.12, 0.25])
    scores = score_class(PROBS, SYN, 1, REAL, "x", clip_score=clip, clip_model="open_clip:tiny")
    np.testing.assert_array_equal(scores.clip_score, clip)
    assert scores.summary["mean_clip_score"] == pytest.approx(clip.mean())
    assert scores.summary["clip_model"] == "open_clip:tiny"
    plain = score_class(PROBS, SYN, 1, REAL, "x")
    assert plain.clip_score is None and plain.summary["mean_clip_score"] is None and plain.summary["clip_model"] is None
    with pytest.raises(ValueError, match="clip_score has shape"):
        score_class(PROBS, SYN, 1, REAL, "x", clip_score=clip[:2])
    with pytest.raises(ValueError, match="clip_score has 1 of 3"):
        score_class(PROBS, SYN, 1, REAL, "x", clip_score=[0.1, np.nan, 0.2])
