"""Tests for synthaug_pipeline.lib.evaluation: corruptions, accuracy reports, shift robustness, deltas."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from synthaug_pipeline.lib.evaluation import CORRUPTIONS, compare, corrupt, evaluate, evaluate_under_shift


class MeanDecoder(nn.Module):
    """A fake classifier: image mean pixel value v (0..255) encodes class round((v - 10) / 20).

    Logits rank the decoded class first, then the next four classes (mod K) in order, so the
    top-5 set of a class c image is {c, c+1, c+2, c+3, c+4}.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = (x.mean(dim=(1, 2, 3)) + 1.0) * 127.5
        decoded = ((value - 10.0) / 20.0).round().long().clamp(0, self.num_classes - 1)
        logits = torch.zeros(len(x), self.num_classes)
        for rank, score in enumerate([10.0, 5.0, 4.0, 3.0, 2.0][: self.num_classes]):
            logits[torch.arange(len(x)), (decoded + rank) % self.num_classes] = score
        return logits + self.dummy


def _encoded(classes: list[int], size: int = 8) -> np.ndarray:
    """Constant images whose value encodes each class for MeanDecoder."""
    values = np.array(classes) * 20 + 10
    return np.broadcast_to(values[:, None, None, None], (len(classes), size, size, 1)).astype(np.uint8)


def _textured(n: int = 16, size: int = 16, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


# -- corruptions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_shape_dtype_determinism(kind: str) -> None:
    images = _textured()
    out = corrupt(images, kind, 3, seed=7)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(out, corrupt(images, kind, 3, seed=7))
    assert not np.array_equal(out, images)
    assert np.array_equal(images, _textured())  # input untouched


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_severity_is_monotone(kind: str) -> None:
    images = _textured()
    distances = [np.abs(corrupt(images, kind, s).astype(float) - images).mean() for s in range(1, 6)]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_noise_depends_on_seed_and_has_the_right_scale() -> None:
    gray = np.full((4, 32, 32, 1), 128, np.uint8)
    assert not np.array_equal(corrupt(gray, "gaussian_noise", 1, seed=0), corrupt(gray, "gaussian_noise", 1, seed=1))
    std = corrupt(gray, "gaussian_noise", 1).astype(float).std()
    assert std == pytest.approx(0.08 * 255, rel=0.05)


def test_blur_on_8x8_keeps_then_wipes_out_the_digit() -> None:
    digit = np.zeros((1, 8, 8, 1), np.uint8)
    digit[0, 1:7, 3:5] = 255  # a vertical stroke, like a "1"
    contrast = [corrupt(digit, "gaussian_blur", s).astype(float).std() / digit.std() for s in (1, 5)]
    assert contrast[0] > 0.8  # severity 1: still clearly a stroke
    assert contrast[1] < 0.25  # severity 5: a faint blob


def test_contrast_keeps_the_mean_and_shrinks_the_spread() -> None:
    images = _textured()
    low = corrupt(images, "contrast", 5).astype(float)
    assert low.mean(axis=(1, 2, 3)) == pytest.approx(images.astype(float).mean(axis=(1, 2, 3)), abs=0.6)
    spread = images.astype(float).std(axis=(1, 2, 3))
    assert low.std(axis=(1, 2, 3)) == pytest.approx(0.05 * spread, rel=0.1)


@pytest.mark.parametrize("kind,severity", [("motion_blur", 1), ("contrast", 0), ("contrast", 6), ("contrast", 2.5)])
def test_corrupt_rejects_bad_arguments(kind: str, severity) -> None:
    with pytest.raises(ValueError, match="corruption"):
        corrupt(_textured(2), kind, severity)


# -- evaluate ----------------------------------------------------------------------------------------


def test_evaluate_perfect_model() -> None:
    labels = np.array([0, 1, 2, 3, 1, 2, 0, 0])
    report = evaluate(MeanDecoder(4), _encoded(labels.tolist()), labels, ["a", "b", "c", "d"], batch_size=3)
    assert report["top1"] == 1.0 and report["top5"] is None and report["n"] == 8
    assert report["per_class"] == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    assert report["confusion"] == [[3, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]
    json.dumps(report)


def test_evaluate_known_confusion() -> None:
    predicted = [0, 0, 1, 1, 1, 2, 0]
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    report = evaluate(MeanDecoder(3), _encoded(predicted), labels, ["x", "y", "z"])
    assert report["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["top1"] == pytest.approx(5 / 7)
    assert report["per_class"] == pytest.approx({"x": 2 / 3, "y": 1.0, "z": 0.5})


def test_evaluate_top5_only_with_many_classes() -> None:
    class_ids = [f"c{i}" for i in range(12)]
    predicted = [0, 0, 5, 5]
    labels = np.array([0, 3, 9, 11])  # top-5 of class 5 is {5..9}; 11 is outside
    report = evaluate(MeanDecoder(12), _encoded(predicted), labels, class_ids)
    assert report["top1"] == 0.25
    assert report["top5"] == 0.75
    assert report["per_class"]["c1"] is None  # no images of that class


def test_evaluate_restores_train_mode_and_validates() -> None:
    model = MeanDecoder(3).train()
    evaluate(model, _encoded([0, 1]), np.array([0, 1]), ["a", "b", "c"])
    assert model.training
    with pytest.raises(ValueError, match="predicts 3 classes but 2"):
        evaluate(model, _encoded([0, 1]), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie"):
        evaluate(model, _encoded([0, 1]), np.array([0, 3]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="at least one"):
        evaluate(model, _encoded([])[:0], np.array([], dtype=np.int64), ["a", "b", "c"])


# -- shift and comparison ----------------------------------------------------------------------------


def test_evaluate_under_shift() -> None:
    # Blur and contrast keep a constant image's mean (what MeanDecoder reads); strong noise does not.
    labels = np.repeat(np.arange(10), 20)
    class_ids = [str(i) for i in range(10)]
    report = evaluate_under_shift(MeanDecoder(10), _encoded(labels.tolist()), labels, class_ids, CORRUPTIONS, [1, 5])
    assert report["in_domain"]["top1"] == 1.0
    assert set(report["shifted"]) == {f"{k}@{s}" for k in CORRUPTIONS for s in (1, 5)}
    assert report["shifted"]["gaussian_blur@5"] == 1.0 and report["shifted"]["contrast@5"] == 1.0
    assert report["shifted"]["gaussian_noise@5"] < report["shifted"]["gaussian_noise@1"] <= 1.0
    assert report["shifted_mean_top1"] == pytest.approx(np.mean(list(report["shifted"].values())))
    assert report["shift_drop"] == pytest.approx(1.0 - report["shifted_mean_top1"])
    again = evaluate_under_shift(MeanDecoder(10), _encoded(labels.tolist()), labels, class_ids, CORRUPTIONS, [1, 5])
    assert again == report
    none = evaluate_under_shift(MeanDecoder(10), _encoded([1]), np.array([1]), class_ids, [], [1])
    assert none["shifted"] == {} and none["shifted_mean_top1"] is None and none["shift_drop"] is None


def test_compare() -> None:
    def result(top1, per_class, shifted):
        return {
            "in_domain": {"top1": top1, "top5": None, "n": 10, "per_class": per_class, "confusion": []},
            "shifted": shifted,
            "shifted_mean_top1": float(np.mean(list(shifted.values()))),
            "shift_drop": top1 - float(np.mean(list(shifted.values()))),
        }

    baseline = result(0.8, {"a": 0.9, "b": 0.7, "c": None}, {"contrast@1": 0.6, "gaussian_blur@1": 0.4})
    augmented = result(0.85, {"a": 0.85, "b": 0.85, "c": None}, {"contrast@1": 0.7, "gaussian_blur@1": 0.6})
    delta = compare(baseline, augmented)
    assert delta["top1_delta"] == pytest.approx(0.05)
    assert delta["shifted_mean_top1_delta"] == pytest.approx(0.15)
    assert delta["per_class_delta"]["a"] == pytest.approx(-0.05)
    assert delta["per_class_delta"]["b"] == pytest.approx(0.15)
    assert delta["per_class_delta"]["c"] is None
    assert delta["shifted_delta"] == pytest.approx({"contrast@1": 0.1, "gaussian_blur@1": 0.2})
    assert compare(baseline["in_domain"], augmented["in_domain"])["shifted_mean_top1_delta"] is None
    with pytest.raises(ValueError, match="same classes"):
        compare(baseline, result(0.8, {"a": 1.0}, {"contrast@1": 0.5}))
