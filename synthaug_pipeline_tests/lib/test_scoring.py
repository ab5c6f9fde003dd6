"""Tests for synthaug_pipeline.lib.scoring against independent computations."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist, pdist

from synthaug_pipeline.lib import scoring
from synthaug_pipeline.lib.config import FilterConfig
from synthaug_pipeline.lib.scoring import (
    ClassScores,
    accept,
    filter_version,
    frechet_distance,
    kernel_inception_distance,
    score_class,
)


def _fid_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook FID with scipy.linalg.sqrtm (well-conditioned inputs only)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


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
    assert s["warnings"] == []
    json.dumps(s)  # metadata-ready: plain Python types only


def test_score_class_matches_cdist_across_chunks(monkeypatch):
    # Small chunk size so the chunked paths (several blocks, self-exclusion
    # offsets) are exercised on small data.
    monkeypatch.setattr(scoring, "_CHUNK_ROWS", 4)
    rng = np.random.default_rng(9)
    syn = rng.normal(size=(11, 5))
    real = rng.normal(size=(13, 5))
    probs = _softmax(rng.normal(size=(11, 4)))
    scores = score_class(probs, syn, 2, real, "x")
    np.testing.assert_allclose(scores.nearest_real_distance, cdist(syn, real).min(axis=1), rtol=1e-12)
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
    cfg = FilterConfig(min_confidence=0.5, require_label_match=True)
    canonical = b'{"min_confidence":0.5,"require_label_match":true}'
    assert filter_version(cfg) == "v1-" + hashlib.sha256(canonical).hexdigest()[:12]


def test_filter_version_changes_with_row_policy_only():
    base = filter_version(FilterConfig())
    assert base.startswith("v1-") and len(base) == 15
    assert filter_version(FilterConfig()) == base
    assert filter_version(FilterConfig(min_confidence=0.6)) != base
    assert filter_version(FilterConfig(require_label_match=False)) != base
    # The per-class count is an asset-check threshold, not a row decision.
    assert filter_version(FilterConfig(min_accepted_per_class=50)) == base


def _scores(conf, top1) -> ClassScores:
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
    np.testing.assert_array_equal(accept(scores, 1, FilterConfig(min_confidence=0.5)), [True, False, True])
