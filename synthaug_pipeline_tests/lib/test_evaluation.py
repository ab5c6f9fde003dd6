"""Tests for synthaug_pipeline.lib.evaluation: corruptions, accuracy reports, shift robustness, deltas."""

from __future__ import annotations

import colorsys
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import nn

from synthaug_pipeline.lib.config import ProfileError
from synthaug_pipeline.lib.evaluation import (
    CORRUPTIONS,
    compare,
    corrupt,
    evaluate,
    evaluate_under_shift,
    pixelate_size,
)
from synthaug_pipeline.lib.shift_sets import check_shift_folders, load_shift_set


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


def _digits(size: int) -> np.ndarray:
    """200 scikit-learn digits as uint8 [N, size, size, 1] (bicubic upscaling from 8x8)."""
    from sklearn.datasets import load_digits

    digits = np.clip(load_digits().images[:200] * 16, 0, 255).astype(np.uint8)
    if size != 8:
        digits = np.stack([np.asarray(Image.fromarray(d).resize((size, size), Image.BICUBIC)) for d in digits])
    return digits[..., None]


def _smooth_rgb(size: int = 28) -> np.ndarray:
    """Photo-like RGB images: blurred noise with large flat areas and edges."""
    noise = np.random.default_rng(1).normal(128, 80, size=(24, size, size, 3))
    return np.clip(gaussian_filter(noise, (0, 2, 2, 0)) * 3 - 256, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", CORRUPTIONS)
@pytest.mark.parametrize("images", ["digits8", "digits28", "rgb28"])
def test_distortion_grows_with_severity_down_to_tiny_images(kind: str, images: str) -> None:
    # MSE to the clean images, over a test set, never decreases with severity, even at 8x8 where
    # ImageNet-C's pixelation sizes repeat and JPEG blocks cover the whole image.
    clean = {"digits8": lambda: _digits(8), "digits28": lambda: _digits(28), "rgb28": _smooth_rgb}[images]()
    mse = [float(((corrupt(clean, kind, s).astype(float) - clean) ** 2).mean()) for s in range(1, 6)]
    assert all(a <= b for a, b in zip(mse, mse[1:])), mse
    assert mse[0] > 0


def test_pixelate_sizes_are_distinct_per_severity() -> None:
    assert [pixelate_size(8, s) for s in range(1, 6)] == [5, 4, 3, 2, 1]
    assert [pixelate_size(28, s) for s in range(1, 6)] == [17, 14, 11, 8, 7]
    assert [pixelate_size(224, s) for s in range(1, 6)] == [134, 112, 90, 67, 56]  # ImageNet-C's own sizes
    assert [pixelate_size(2, s) for s in range(1, 6)] == [1, 1, 1, 1, 1]


def test_pixelate_makes_blocks() -> None:
    images = _textured(4, 28, 1)
    coarse = corrupt(images, "pixelate", 4)  # an 8x8 grid
    assert all(len(np.unique(image)) <= 64 for image in coarse)
    flat = corrupt(_textured(3, 8, 3), "pixelate", 5)  # a 1x1 grid: each channel is its mean
    assert np.all(flat == flat[:, :1, :1, :])
    assert np.abs(flat[:, 0, 0, :].astype(float) - _textured(3, 8, 3).mean(axis=(1, 2))).max() <= 0.5 + 1e-6


def test_brightness_raises_value_and_keeps_hue_and_saturation() -> None:
    gray = np.array([0, 100, 250], np.uint8).reshape(1, 1, 3, 1)
    assert corrupt(gray, "brightness", 1)[0, 0, :, 0].tolist() == [26, 126, 255]  # + 0.1 * 255, clipped at white
    pixel = np.array([[[[40, 80, 120]]]], np.uint8)
    out = corrupt(pixel, "brightness", 3)[0, 0, 0] / 255.0
    hue, saturation, value = colorsys.rgb_to_hsv(*(pixel[0, 0, 0] / 255.0))
    out_hue, out_saturation, out_value = colorsys.rgb_to_hsv(*out)
    assert out_value == pytest.approx(value + 0.3, abs=1 / 255)
    assert (out_hue, out_saturation) == pytest.approx((hue, saturation), abs=0.01)
    black = corrupt(np.zeros((1, 2, 2, 3), np.uint8), "brightness", 5)
    assert np.all(black == 128)  # black becomes gray (value 0.5), as hsv2rgb gives


def test_jpeg_is_a_pil_roundtrip_at_decreasing_quality() -> None:
    images = _textured(2, 16, 3)
    buffer = io.BytesIO()
    Image.fromarray(images[1]).save(buffer, format="JPEG", quality=25)
    assert np.array_equal(corrupt(images, "jpeg", 1)[1], np.asarray(Image.open(buffer)))
    gray = corrupt(_digits(8), "jpeg", 5)
    assert gray.shape == (200, 8, 8, 1)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        corrupt(_textured(1, 8, 2), "jpeg", 1)


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


def test_shift_by_kind_and_extra_shift_sets() -> None:
    labels = np.repeat(np.arange(12), 2)
    class_ids = [f"c{i}" for i in range(12)]
    images = _encoded(labels.tolist())
    sketches = _encoded([0, 0, 5, 3])  # predicted 0, 0, 5, 3 (values encode the prediction)
    sketch_labels = np.array([0, 1, 5, 11])  # right, wrong (class 1 in top-5), right, wrong (not in top-5)
    report = evaluate_under_shift(
        MeanDecoder(12), images, labels, class_ids, ["contrast", "brightness"], [1, 5], shift_sets={"sketch": (sketches, sketch_labels)}
    )
    assert set(report["shifted_by_kind"]) == {"contrast", "brightness"}
    assert report["shifted_by_kind"]["contrast"] == pytest.approx(
        np.mean([report["shifted"]["contrast@1"], report["shifted"]["contrast@5"]])
    )
    assert report["shifted"]["brightness@5"] < 1.0  # brighter images decode as other classes
    sketch = report["shift_sets"]["sketch"]
    assert sketch["top1"] == 0.5 and sketch["top5"] == 0.75 and sketch["n"] == 4
    assert sketch["per_class"]["c0"] == 1.0 and sketch["per_class"]["c1"] == 0.0 and sketch["per_class"]["c2"] is None
    assert "confusion" not in sketch
    assert sketch["drop"] == pytest.approx(report["in_domain"]["top1"] - 0.5)
    json.dumps(report)
    assert evaluate_under_shift(MeanDecoder(12), images, labels, class_ids, [], [1])["shift_sets"] == {}


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
    assert delta["shift_drop_delta"] == pytest.approx((0.85 - 0.65) - (0.8 - 0.5))  # the augmented model drops less
    assert delta["top5_delta"] is None
    assert compare(baseline["in_domain"], augmented["in_domain"])["shifted_mean_top1_delta"] is None
    with pytest.raises(ValueError, match="same classes"):
        compare(baseline, result(0.8, {"a": 1.0}, {"contrast@1": 0.5}))


def test_compare_kinds_top5_and_shift_sets() -> None:
    labels = np.repeat(np.arange(12), 2)
    class_ids = [str(i) for i in range(12)]
    images = _encoded(labels.tolist())
    sets = {"sketch": (_encoded([0, 0, 5, 3]), np.array([0, 1, 5, 11]))}
    baseline = evaluate_under_shift(MeanDecoder(12), images, labels, class_ids, ["gaussian_noise"], [5], shift_sets=sets)
    shifted_labels = (labels + 1) % 12  # a model that is wrong in-domain, one class off
    augmented = evaluate_under_shift(MeanDecoder(12), images, shifted_labels, class_ids, ["gaussian_noise"], [5], shift_sets=sets)
    delta = compare(baseline, augmented)
    assert delta["top1_delta"] == -1.0 and delta["top5_delta"] == 0.0  # the true class is second: still in the top-5
    assert delta["shifted_by_kind_delta"] == pytest.approx(
        {"gaussian_noise": augmented["shifted_mean_top1"] - baseline["shifted_mean_top1"]}
    )
    assert delta["shift_sets_delta"] == {"sketch": {"top1_delta": 0.0, "drop_delta": -1.0}}
    assert delta["shift_drop_delta"] == pytest.approx(augmented["shift_drop"] - baseline["shift_drop"])


# -- shifted test sets from folders ------------------------------------------------------------------


def _write_folder(root, classes: dict[str, np.ndarray]) -> str:
    """An ImageFolder tree: root/<class>/<i>.png from uint8 [N, H, W, C] images."""
    for class_id, images in classes.items():
        (root / class_id).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(root / class_id / f"{i}.png")
    return str(root)


def _write_parquet(path, images: np.ndarray, labels: list[str]) -> str:
    data = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0]).save(buffer, format="PNG")
        data.append(buffer.getvalue())
    pq.write_table(pa.table({"image": data, "label": labels}), path)
    return str(path)


def test_check_shift_folders(tmp_path) -> None:
    images = _digits(8)
    good = _write_folder(tmp_path / "good", {"0": images[:2], "1": images[2:4]})
    partial = _write_folder(tmp_path / "partial", {"1": images[:2]})
    foreign = _write_folder(tmp_path / "foreign", {"1": images[:2], "cat": images[2:3]})
    parquet = _write_parquet(tmp_path / "shift.parquet", images[:3], ["0", "2", "2"])
    class_ids = ["0", "1", "2"]
    found = check_shift_folders({"good": good, "partial": partial, "parquet": parquet}, class_ids)
    assert found == {"good": ["0", "1"], "partial": ["1"], "parquet": ["0", "2"]}
    assert check_shift_folders({}, class_ids) == {}
    with pytest.raises(ProfileError, match=r"evaluation.shift_folders.foreign .* has classes \['cat'\] that this profile does not have"):
        check_shift_folders({"good": good, "foreign": foreign}, class_ids)
    with pytest.raises(ProfileError, match=r"evaluation.shift_folders.gone .*does not exist"):
        check_shift_folders({"gone": str(tmp_path / "nothing")}, class_ids)


def test_load_shift_set_maps_labels_and_fits_the_profile_images(tmp_path) -> None:
    rgb16 = _textured(5, 16, 3)
    folder = _write_folder(tmp_path / "sketch", {"a": rgb16[:2], "c": rgb16[2:]})
    images, labels = load_shift_set("sketch", folder, ["c", "b", "a"], (8, 8, 1))  # profile order differs from the folder's
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    assert sorted(labels.tolist()) == [0, 0, 0, 2, 2]
    expected = np.asarray(Image.fromarray(rgb16[0]).convert("L").resize((8, 8), Image.BICUBIC))  # the folder loader's recipe
    assert any(np.array_equal(image[..., 0], expected) for image in images[labels == 2])  # folder "a" is class index 2

    parquet = _write_parquet(tmp_path / "shift.parquet", _digits(8)[:4], ["1", "1", "0", "1"])
    images, labels = load_shift_set("p", parquet, ["0", "1"], (8, 8, 3))
    assert images.shape == (4, 8, 8, 3) and sorted(labels.tolist()) == [0, 1, 1, 1]
    with pytest.raises(ProfileError, match="does not have"):
        load_shift_set("p", parquet, ["1", "2"], (8, 8, 1))


def test_shift_folders_named_by_class_index_map_onto_the_profile_classes(tmp_path) -> None:
    images = _textured(6, 8, 1)
    folder = _write_folder(tmp_path / "v2", {"0": images[:2], "2": images[2:6]})  # ImageNet-V2 style: folder = class index
    class_ids = ["n01", "n02", "n03"]
    with pytest.raises(ProfileError, match=r"has classes \['0', '2'\] .*set evaluation.shift_folder_labels.v2=class_index"):
        check_shift_folders({"v2": folder}, class_ids)  # read as class ids they are foreign, and the message says what to set
    assert check_shift_folders({"v2": folder}, class_ids, {"v2": "class_index"}) == {"v2": ["n01", "n03"]}
    loaded, labels = load_shift_set("v2", folder, class_ids, (8, 8, 1), label_mode="class_index")
    assert loaded.shape == (6, 8, 8, 1) and sorted(labels.tolist()) == [0, 0, 2, 2, 2, 2]
    with pytest.raises(ProfileError, match=r"shift_folder_labels.v2=class_index, but \['2'\] are not integer indices into the profile's 2 classes"):
        check_shift_folders({"v2": folder}, ["n01", "n02"], {"v2": "class_index"})
    named = _write_folder(tmp_path / "named", {"n01": images[:1], "cat": images[1:2]})
    with pytest.raises(ProfileError, match=r"\['cat', 'n01'\] are not integer indices"):
        check_shift_folders({"named": named}, class_ids, {"named": "class_index"})


def test_a_root_holding_only_split_folders_is_read_from_them(tmp_path) -> None:
    images = _textured(5, 8, 1)
    _write_folder(tmp_path / "objectnet" / "val", {"a": images[:2], "b": images[2:3]})
    _write_folder(tmp_path / "objectnet" / "test", {"b": images[3:5]})
    root = str(tmp_path / "objectnet")
    assert check_shift_folders({"obj": root}, ["a", "b"]) == {"obj": ["a", "b"]}  # not one class named "test" or "val"
    loaded, labels = load_shift_set("obj", root, ["a", "b"], (8, 8, 1))
    assert loaded.shape == (5, 8, 8, 1) and sorted(labels.tolist()) == [0, 0, 1, 1, 1]


def test_default_corruption_suite_is_all_six_and_labels_must_name_a_shift_folder() -> None:
    from synthaug_pipeline.lib.config import EvaluationConfig
    from synthaug_pipeline.lib.evaluation import CORRUPTIONS

    assert EvaluationConfig().corruptions == list(CORRUPTIONS)
    with pytest.raises(ValueError, match=r"shift_folder_labels names \['v2'\], which are not in shift_folders"):
        EvaluationConfig(shift_folder_labels={"v2": "class_index"})
