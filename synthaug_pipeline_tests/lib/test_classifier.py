"""Tests for synthaug_pipeline.lib.classifier: the timm-registered CNN, training, prediction, storage."""

from __future__ import annotations

import json
import uuid

import fsspec
import numpy as np
import pytest
import timm
import torch

from synthaug_pipeline.lib.classifier import (
    BalancedMixSampler,
    SynthaugCNN,
    TrainedClassifier,
    create_classifier,
    load_classifier,
    lr_factor,
    predict,
    random_translate,
    save_classifier,
    train_classifier,
)
from synthaug_pipeline.lib.config import ClassifierConfig

FAST = ClassifierConfig(model="synthaug_cnn_small", steps=60, batch_size=32, learning_rate=3e-3, seed=0)


def _patterns(n_per_class: int, seed: int, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """3 separable classes of uint8 [N, size, size, 1] images: horizontal bar, vertical bar, diagonal."""
    rng = np.random.default_rng(seed)
    base = np.zeros((3, size, size), np.float32)
    mid = size // 2
    base[0, mid - 1 : mid + 1, :] = 1.0
    base[1, :, mid - 1 : mid + 1] = 1.0
    base[2] = np.clip(np.eye(size) + np.eye(size, k=1), 0, 1)
    labels = np.repeat(np.arange(3), n_per_class)
    images = base[labels] * 200 + rng.uniform(0, 55, size=(len(labels), size, size))
    return images.astype(np.uint8)[..., None], labels


def _noise(n_per_class: int, seed: int, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Labelled images that carry no class signal at all."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    return rng.integers(0, 256, size=(len(labels), size, size, 1), dtype=np.uint8), labels


def _accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    probabilities, _ = predict(model, images)
    return float((probabilities.argmax(axis=1) == labels).mean())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machine has 2 cores shared with other jobs; oversubscribed OpenMP threads can make
    # tiny training runs 100x slower, one thread keeps this file's runtime predictable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_trained() -> TrainedClassifier:
    images, labels = _patterns(10, seed=1)
    return train_classifier(images, labels, 3, FAST.model_copy(update={"steps": 3}))


# -- the model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 32])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_timm_create_model_any_size(size: int, in_chans: int) -> None:
    model = timm.create_model("synthaug_cnn", num_classes=3, in_chans=in_chans).eval()
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    assert isinstance(model, SynthaugCNN)
    assert logits.shape == (2, 3)
    assert model.num_features == 128
    assert features.shape == (2, model.num_features)
    assert torch.allclose(model.get_classifier()(features), logits, atol=1e-6)


def test_small_variant_and_timm_interface() -> None:
    model = timm.create_model("synthaug_cnn_small", num_classes=5, in_chans=1, drop_rate=0.2)
    assert model.num_features == 64
    assert model.drop_rate == 0.2
    assert model.get_classifier(name_only=True) == "fc"
    assert model.get_classifier().out_features == 5
    assert model.pretrained_cfg["classifier"] == "fc"
    model.reset_classifier(7)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    model.reset_classifier(0)  # timm convention: no classifier -> pooled features out
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 64)
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in timm.create_model("synthaug_cnn", num_classes=5, in_chans=1).parameters()
    )


def test_features_only_and_registry() -> None:
    assert {"synthaug_cnn", "synthaug_cnn_small"} <= set(timm.list_models("synthaug*"))
    backbone = timm.create_model("synthaug_cnn", features_only=True, in_chans=1)
    maps = backbone(torch.randn(2, 1, 8, 8))
    assert [m.shape[1] for m in maps] == [32, 64, 128]
    assert [m.shape[-1] for m in maps] == [8, 4, 2]


def test_pretrained_is_refused() -> None:
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("synthaug_cnn", pretrained=True)


def test_create_classifier_unknown_name_suggests() -> None:
    with pytest.raises(ValueError, match="synthaug_cnn_smal.*did you mean synthaug_cnn_small"):
        create_classifier("synthaug_cnn_smal", 3, 1)
    model = create_classifier("resnet18", num_classes=4, in_chans=1)  # any timm model, random init
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 4)


# -- training pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.5, 1.0, 3.0])
def test_sampler_synthetic_share(ratio: float) -> None:
    real_labels = np.repeat(np.arange(3), 20)
    synthetic_labels = np.repeat(np.arange(3), 5)
    sampler = BalancedMixSampler(real_labels, 3, synthetic_labels, ratio, np.random.default_rng(0))
    draws = [sampler.draw(50) for _ in range(400)]
    assert all(len(r) + len(s) == 50 for r, s in draws)
    share = sum(len(s) for _, s in draws) / (50 * len(draws))
    assert share == pytest.approx(ratio / (1 + ratio), abs=0.005)
    assert all(s.max() < len(synthetic_labels) and r.max() < len(real_labels) for r, s in draws if len(s))


def test_sampler_is_class_balanced() -> None:
    real_labels = np.array([0] * 90 + [1] * 10)
    synthetic_labels = np.array([1] * 7)  # the synthetic pool holds class 1 only
    sampler = BalancedMixSampler(real_labels, 2, synthetic_labels, 1.0, np.random.default_rng(0))
    real, synthetic = map(np.concatenate, zip(*[sampler.draw(64) for _ in range(200)]))
    assert np.bincount(real_labels[real], minlength=2) / len(real) == pytest.approx([0.5, 0.5], abs=0.03)
    assert set(synthetic_labels[synthetic].tolist()) == {1}
    assert set(synthetic.tolist()) == set(range(7))  # every synthetic image gets used


def test_sampler_without_synthetic_draws_real_only() -> None:
    sampler = BalancedMixSampler(np.array([0, 1, 1]), 2, None, 1.0, np.random.default_rng(0))
    real, synthetic = sampler.draw(16)
    assert len(real) == 16 and len(synthetic) == 0


def test_lr_schedule_warmup_then_cosine() -> None:
    factors = [lr_factor(step, 100, 5) for step in range(100)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factors[5] == 1.0
    assert all(a >= b for a, b in zip(factors[5:], factors[6:]))
    assert factors[-1] < 0.001


def test_random_translate_moves_by_at_most_max_shift() -> None:
    x = -torch.ones(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0  # one bright pixel in the middle
    out = random_translate(x, 2, np.random.default_rng(0))
    assert out.shape == x.shape
    positions = torch.nonzero(out[:, 0] > 0)  # (image, row, col)
    assert len(positions) == 64  # still exactly one bright pixel per image
    assert (positions[:, 1:] - 8).abs().max() <= 2
    assert len({tuple(p) for p in positions[:, 1:].tolist()}) > 5  # and the shifts vary
    assert torch.equal(random_translate(x, 0, np.random.default_rng(0)), x)


# -- training ----------------------------------------------------------------------------------------


def test_learns_a_separable_problem() -> None:
    images, labels = _patterns(20, seed=1)
    progress_calls = []
    trained = train_classifier(images, labels, 3, FAST, progress=lambda *a: progress_calls.append(a))
    test_images, test_labels = _patterns(30, seed=2)
    assert _accuracy(trained.model, images, labels) > 0.9
    assert _accuracy(trained.model, test_images, test_labels) > 0.9
    assert not trained.model.training
    assert next(trained.model.parameters()).device.type == "cpu"
    # history: ~20 entries over the run, lr warms up then decays, loss goes down
    steps = [h["step"] for h in trained.history]
    assert len(steps) == 20 and steps[-1] == FAST.steps and steps == sorted(steps)
    assert trained.history[-1]["loss"] < trained.history[0]["loss"]
    assert trained.history[-1]["lr"] < 0.1 * FAST.learning_rate
    assert [c[0] for c in progress_calls] == steps
    assert trained.num_real == 60 and trained.num_synthetic == 0
    assert trained.num_parameters == sum(p.numel() for p in trained.model.parameters())
    json.dumps(trained.config)
    assert trained.config["model"] == "synthaug_cnn_small"
    assert trained.config["num_classes"] == 3 and trained.config["in_chans"] == 1
    assert trained.config["image_size"] == [8, 8]


def test_synthetic_images_are_really_used() -> None:
    # Real images carry no signal; only the synthetic pool shows the classes. A model that ends up
    # recognising the patterns must have been trained on synthetic images.
    real_images, real_labels = _noise(20, seed=3)
    synthetic_images, synthetic_labels = _patterns(10, seed=4)
    test_images, test_labels = _patterns(30, seed=5)
    mixed = train_classifier(real_images, real_labels, 3, FAST, synthetic_images, synthetic_labels, synthetic_ratio=3.0)
    assert _accuracy(mixed.model, test_images, test_labels) > 0.9
    assert mixed.num_synthetic == 30 and mixed.config["synthetic_ratio"] == 3.0

    real_only = train_classifier(real_images, real_labels, 3, FAST, synthetic_images, synthetic_labels, 0.0)
    assert _accuracy(real_only.model, test_images, test_labels) < 0.7
    assert real_only.num_synthetic == 0


def test_training_is_deterministic() -> None:
    images, labels = _patterns(5, seed=1)
    cfg = FAST.model_copy(update={"steps": 4, "batch_size": 8})
    rng_state = torch.get_rng_state()
    first = train_classifier(images, labels, 3, cfg).model.state_dict()
    second = train_classifier(images, labels, 3, cfg).model.state_dict()
    other = train_classifier(images, labels, 3, cfg.model_copy(update={"seed": 1})).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is left alone


def _bad_inputs():
    images, labels = _patterns(4, seed=0)
    return [
        ("empty", dict(images=images[:0], labels=labels[:0]), "no real training images"),
        ("label range", dict(labels=np.where(labels == 2, 3, labels)), r"labels must lie in \[0, 3\)"),
        ("lengths", dict(labels=labels[:-1]), "12 images but labels shaped"),
        ("missing class", dict(labels=np.where(labels == 2, 1, labels)), r"classes \[2\] have no real"),
        ("ratio without pool", dict(synthetic_ratio=1.0), "no synthetic images"),
        ("empty pool", dict(synthetic_images=images[:0], synthetic_labels=labels[:0], synthetic_ratio=1.0), "empty"),
        ("pool labels", dict(synthetic_images=images, synthetic_labels=labels[:3], synthetic_ratio=1.0), "synthetic"),
        ("pool size", dict(synthetic_images=images[:, :4], synthetic_labels=labels, synthetic_ratio=1.0), "real images are"),
        ("negative ratio", dict(synthetic_ratio=-1.0), ">= 0"),
        ("float images", dict(images=images.astype(np.float32)), "uint8"),
    ]


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize("name,override,message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_training_input_validation(name: str, override: dict, message: str) -> None:
    images, labels = _patterns(4, seed=0)
    kwargs = dict(images=images, labels=labels, num_classes=3, cfg=FAST)
    kwargs.update(override)
    with pytest.raises(ValueError, match=message):
        train_classifier(**kwargs)


# -- prediction and storage --------------------------------------------------------------------------


def test_predict_shapes_and_values(tiny_trained: TrainedClassifier) -> None:
    images, _ = _patterns(7, seed=9)
    probabilities, features = predict(tiny_trained.model, images, batch_size=4)
    assert probabilities.shape == (21, 3) and probabilities.dtype == np.float32
    assert features.shape == (21, 64) and features.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    model = tiny_trained.model
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        expected = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    assert np.allclose(features, expected, atol=1e-5)
    empty_p, empty_f = predict(model, images[:0])
    assert empty_p.shape == (0, 3) and empty_f.shape == (0, 64)


def test_predict_restores_train_mode(tiny_trained: TrainedClassifier) -> None:
    model = tiny_trained.model.train()
    images, _ = _patterns(2, seed=0)
    first, _ = predict(model, images)
    second, _ = predict(model, images)  # BatchNorm in eval mode: same answer twice
    assert model.training
    model.eval()
    assert np.array_equal(first, second)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_save_load_roundtrip(tiny_trained: TrainedClassifier, tmp_path, where: str) -> None:
    url = str(tmp_path / "judge") if where == "local" else f"memory://classifiers/{uuid.uuid4().hex}"
    version = save_classifier(tiny_trained, url)
    assert len(version) == 16 and int(version, 16) >= 0 and tiny_trained.version == version
    loaded = load_classifier(url)
    images, _ = _patterns(5, seed=11)
    for before, after in zip(predict(tiny_trained.model, images), predict(loaded.model, images)):
        assert np.array_equal(before, after)
    assert loaded.version == version
    assert loaded.config == tiny_trained.config and loaded.history == tiny_trained.history
    assert (loaded.num_real, loaded.num_parameters) == (tiny_trained.num_real, tiny_trained.num_parameters)
    assert save_classifier(loaded, url + "_again") == version  # same weights, same version


def test_load_errors(tiny_trained: TrainedClassifier, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no saved classifier"):
        load_classifier(str(tmp_path / "nothing"))
    url = f"memory://classifiers/{uuid.uuid4().hex}"
    save_classifier(tiny_trained, url)
    fs, root = fsspec.core.url_to_fs(url)
    record = json.loads(fs.cat_file(f"{root}/config.json"))
    record["version"] = "0" * 16
    fs.pipe_file(f"{root}/config.json", json.dumps(record).encode())
    with pytest.raises(ValueError, match="does not match"):
        load_classifier(url)
