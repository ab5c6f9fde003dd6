"""Tests for synthaug_pipeline.lib.classifier: the timm-registered CNN, training, prediction, storage."""

from __future__ import annotations

import json
import uuid

import fsspec
import numpy as np
import pytest
import timm
import torch

from synthaug_pipeline.lib.classifier import models as classifier_models
from synthaug_pipeline.lib.classifier import training as classifier_training
from synthaug_pipeline.lib.aux_bn import DualBatchNorm
from synthaug_pipeline.lib.classifier import (
    BalancedMixSampler,
    SynthaugCNN,
    TrainedClassifier,
    autocast_dtype,
    check_synthetic_supply,
    create_classifier,
    load_classifier,
    lr_factor,
    make_optimizer,
    predict,
    random_translate,
    reached_ratios,
    save_classifier,
    synthetic_images_needed,
    train_classifier,
    train_classifier_synthetic_only,
)
from synthaug_pipeline.lib.config import ClassifierConfig
from synthaug_pipeline.lib.regimes import select_regime

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


def test_reached_ratios_lower_only_the_short_classes() -> None:
    assert reached_ratios([100, 100, 50], [100, 100, 50], 1.0) is None  # everyone reaches the ratio
    assert reached_ratios([100, 100, 100], [100, 40, 0], 1.0).tolist() == [1.0, 0.4, 0.0]
    assert reached_ratios([10, 10], [3, 1], 0.25).tolist() == [0.25, 0.1]  # ceil(2.5) = 3 is enough for class 0


def test_sampler_with_class_ratios_gives_each_class_its_own_ratio() -> None:
    real_labels = np.repeat(np.arange(3), 100)
    synthetic_labels = np.concatenate([np.zeros(100, int), np.ones(100, int), np.full(20, 2)])
    ratios = np.array([1.0, 1.0, 0.2])
    sampler = BalancedMixSampler(real_labels, 3, synthetic_labels, 1.0, np.random.default_rng(0), ratios)
    real, synthetic = map(np.concatenate, zip(*[sampler.draw(64) for _ in range(1500)]))
    per_class = np.bincount(synthetic_labels[synthetic], minlength=3) / np.bincount(real_labels[real], minlength=3)
    assert per_class == pytest.approx(ratios, abs=0.03)


def test_train_classifier_use_available_records_the_ratio_reached() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(2), 20)
    synthetic, synthetic_labels = images[:25], np.concatenate([np.zeros(20, int), np.ones(5, int)])
    cfg = ClassifierConfig(model="synthaug_cnn_small", steps=2, batch_size=8)
    with pytest.raises(ValueError, match="needs 20 synthetic images of class 1"):
        train_classifier(images, labels, 2, cfg, synthetic, synthetic_labels, 1.0)
    trained = train_classifier(images, labels, 2, cfg, synthetic, synthetic_labels, 1.0, use_available=True)
    assert trained.config["synthetic_ratio_by_class"] == [1.0, 0.25]


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
    real_images, real_labels = _noise(5, seed=3)
    synthetic_images, synthetic_labels = _patterns(15, seed=4)  # ratio 3 x 5 real = 15 per class
    test_images, test_labels = _patterns(30, seed=5)
    mixed = train_classifier(real_images, real_labels, 3, FAST, synthetic_images, synthetic_labels, synthetic_ratio=3.0)
    assert _accuracy(mixed.model, test_images, test_labels) > 0.9
    assert mixed.num_synthetic == 45 and mixed.config["synthetic_ratio"] == 3.0

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
        (
            "ratio beyond the pool",
            dict(synthetic_images=images[::2], synthetic_labels=labels[::2], synthetic_ratio=1.0),
            r"ratio 1 needs 4 synthetic images of class 0 \(1 x 4 real\) but only 2 are available .*up to 0.5",
        ),
        (
            "class missing from the pool",
            dict(synthetic_images=images[labels < 2], synthetic_labels=labels[labels < 2], synthetic_ratio=0.5),
            r"needs 2 synthetic images of class 2 .* but only 0",
        ),
    ]


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize("name,override,message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_training_input_validation(name: str, override: dict, message: str) -> None:
    images, labels = _patterns(4, seed=0)
    kwargs = dict(images=images, labels=labels, num_classes=3, cfg=FAST)
    kwargs.update(override)
    with pytest.raises(ValueError, match=message):
        train_classifier(**kwargs)


# -- the synthetic ratio's supply rule ---------------------------------------------------------------


def test_synthetic_images_needed() -> None:
    assert synthetic_images_needed([10, 7, 1], 1.0).tolist() == [10, 7, 1]
    assert synthetic_images_needed([10, 7, 1], 0.5).tolist() == [5, 4, 1]  # ceil
    assert synthetic_images_needed([30, 20], 0.1).tolist() == [3, 2]  # 0.1 * 30 is 3.0000000000000004, still 3
    assert synthetic_images_needed([30, 20], 0.0).tolist() == [0, 0]
    with pytest.raises(ValueError, match="finite number >= 0"):
        synthetic_images_needed([3], float("nan"))


def test_check_synthetic_supply_names_the_class_and_the_fix() -> None:
    check_synthetic_supply([10, 20], [5, 10], 0.5)  # exactly enough
    check_synthetic_supply([10, 20], [0, 0], 0.0)  # no ratio, nothing needed
    with pytest.raises(ValueError) as error:
        check_synthetic_supply([10, 20, 30], [10, 12, 60], 1.0, class_ids=["cat", "dog", "emu"], available="were accepted", hint="do X")
    message = str(error.value)
    assert "needs 20 synthetic images of class 'dog' (1 x 20 real) but only 12 were accepted" in message
    assert "1 of 3 classes fall short" in message and "a ratio up to 0.6 would fit" in message and message.endswith("do X")
    with pytest.raises(ValueError, match="2 real class counts but 3"):
        check_synthetic_supply([1, 2], [1, 2, 3], 1.0)


def test_too_few_synthetic_images_fail_before_any_training(monkeypatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(classifier_models, "create_classifier", no_training)
    images, labels = _patterns(10, seed=0)
    with pytest.raises(ValueError, match="needs 10 synthetic images of class 0"):
        train_classifier(images, labels, 3, FAST, images[::2], labels[::2], synthetic_ratio=1.0)


def test_allow_synthetic_reuse_oversamples_a_small_pool() -> None:
    images, labels = _patterns(10, seed=0)
    small_pool = labels < 2  # class 2 has no synthetic image at all
    cfg = FAST.model_copy(update={"steps": 3})
    trained = train_classifier(images, labels, 3, cfg, images[small_pool][::5], labels[small_pool][::5], 2.0, allow_synthetic_reuse=True)
    assert trained.num_synthetic == 4 and trained.config["synthetic_reuse"] is True
    plain = train_classifier(images, labels, 3, cfg, images, labels, 1.0)
    assert plain.config["synthetic_reuse"] is False


def test_a_regime_that_leaves_a_class_empty_is_refused_before_training(monkeypatch) -> None:
    images, labels = _patterns(4, seed=0)
    labels = labels.copy()
    labels[labels == 2] = 1  # the training split has no image of class 2
    with pytest.raises(ValueError, match="class 2 has no images"):
        select_regime(labels, "few_shot", k=2, num_classes=3)
    monkeypatch.setattr(classifier_models, "create_classifier", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=r"classes \[2\] have no real training images"):
        train_classifier(images, labels, 3, FAST)


# -- ablations and training options ------------------------------------------------------------------


def test_defaults_are_the_plain_recipe() -> None:
    images, labels = _patterns(5, seed=1)
    synthetic, synthetic_labels = _patterns(5, seed=2)
    cfg = FAST.model_copy(update={"steps": 4, "batch_size": 8})
    default = train_classifier(images, labels, 3, cfg, synthetic, synthetic_labels, 1.0)
    explicit = train_classifier(
        images, labels, 3, cfg, synthetic, synthetic_labels, 1.0, aux_bn=False, augment=True, allow_synthetic_reuse=False, amp=True
    )
    assert _same_weights(default.model, explicit.model)
    assert default.config["aux_bn"] is False and default.config["augment"] is True and default.config["optimizer"] == "adamw"
    assert default.config["amp"] is None  # CPU: float32
    assert default.config["max_translate"] == 1


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return list(first) == list(second) and all(torch.equal(first[k], second[k]) for k in first)


def test_augment_false_never_translates(monkeypatch) -> None:
    images, labels = _patterns(5, seed=1)
    cfg = FAST.model_copy(update={"steps": 3, "batch_size": 8})
    augmented = train_classifier(images, labels, 3, cfg)

    def no_translate(*args, **kwargs):
        raise AssertionError("random_translate called with augment=False")

    monkeypatch.setattr(classifier_training, "random_translate", no_translate)
    plain = train_classifier(images, labels, 3, cfg, augment=False)
    assert plain.config["augment"] is False and plain.config["max_translate"] == 0
    assert not _same_weights(plain.model, augmented.model)
    assert _same_weights(plain.model, train_classifier(images, labels, 3, cfg, augment=False).model)
    with pytest.raises(AssertionError, match="augment=False"):
        train_classifier(images, labels, 3, cfg)  # and the default does translate


def test_aux_bn_returns_a_plain_model_that_saves_and_loads(tmp_path) -> None:
    real, real_labels = _patterns(10, seed=1)
    synthetic, synthetic_labels = _patterns(10, seed=2)
    synthetic = (255 - synthetic).copy()  # other low-level statistics than the real images
    cfg = FAST.model_copy(update={"steps": 6, "batch_size": 12})
    trained = train_classifier(real, real_labels, 3, cfg, synthetic, synthetic_labels, 1.0, aux_bn=True)
    plain = train_classifier(real, real_labels, 3, cfg, synthetic, synthetic_labels, 1.0)
    assert trained.config["aux_bn"] is True
    assert not any(isinstance(m, DualBatchNorm) for m in trained.model.modules())
    assert list(trained.model.state_dict()) == list(plain.model.state_dict())
    assert not _same_weights(trained.model, plain.model)  # the aux layers changed what the main ones saw

    url = str(tmp_path / "aux_bn_model")
    save_classifier(trained, url)
    loaded = load_classifier(url)  # rebuilt as a plain synthaug_cnn_small, strict state_dict load
    assert type(loaded.model) is SynthaugCNN and loaded.config["aux_bn"] is True
    test_images, _ = _patterns(4, seed=3)
    assert np.array_equal(predict(trained.model, test_images)[0], predict(loaded.model, test_images)[0])


def test_aux_bn_main_statistics_see_only_real_images() -> None:
    # Constant real images (0) and synthetic images (255): after one step the first BatchNorm's running
    # mean is 0.1 (momentum) x the mean of the first conv's output over the real images alone.
    cfg = FAST.model_copy(update={"steps": 1, "batch_size": 16})
    labels = np.repeat(np.arange(3), 4)
    real = np.zeros((12, 8, 8, 1), np.uint8)
    synthetic = np.full((12, 8, 8, 1), 255, np.uint8)
    torch.manual_seed(cfg.seed)  # the initial weights _fit starts from
    first_conv = create_classifier(cfg.model, 3, 1).stages[0][1][0]
    with torch.no_grad():
        expected = 0.1 * first_conv(torch.full((1, 1, 8, 8), -1.0)).mean(dim=(0, 2, 3))

    with_aux = train_classifier(real, labels, 3, cfg, synthetic, labels, 1.0, aux_bn=True)
    without = train_classifier(real, labels, 3, cfg, synthetic, labels, 1.0)
    assert torch.allclose(with_aux.model.stages[0][1][1].running_mean, expected, atol=1e-6)
    assert not torch.allclose(without.model.stages[0][1][1].running_mean, expected, atol=1e-3)


def test_aux_bn_without_synthetic_images_changes_nothing() -> None:
    images, labels = _patterns(5, seed=1)
    cfg = FAST.model_copy(update={"steps": 4, "batch_size": 8})
    assert _same_weights(train_classifier(images, labels, 3, cfg, aux_bn=True).model, train_classifier(images, labels, 3, cfg).model)


def test_sgd_optimizer_is_nesterov_and_learns() -> None:
    model = create_classifier("synthaug_cnn_small", 3, 1)
    sgd_cfg = FAST.model_copy(update={"optimizer": "sgd", "learning_rate": 0.05})
    optimizer = make_optimizer(model, sgd_cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["nesterov"] is True and optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["lr"] == 0.05
    decays = sorted(group["weight_decay"] for group in optimizer.param_groups)
    assert decays == [0.0, FAST.weight_decay]  # no decay on biases and norms
    assert isinstance(make_optimizer(model, FAST), torch.optim.AdamW)

    images, labels = _patterns(20, seed=1)
    trained = train_classifier(images, labels, 3, sgd_cfg)
    test_images, test_labels = _patterns(30, seed=2)
    assert _accuracy(trained.model, test_images, test_labels) > 0.9
    assert trained.config["optimizer"] == "sgd"
    assert trained.history[-1]["lr"] < 0.1 * sgd_cfg.learning_rate  # the same cosine schedule
    with pytest.raises(ValueError, match="optimizer"):
        ClassifierConfig(optimizer="lion")


def test_autocast_only_on_cuda() -> None:
    assert autocast_dtype("cpu") is None
    assert autocast_dtype(torch.device("cpu")) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_uses_bf16_autocast() -> None:
    images, labels = _patterns(20, seed=1)
    synthetic, synthetic_labels = _patterns(20, seed=4)
    trained = train_classifier(images, labels, 3, FAST, synthetic, synthetic_labels, 1.0, device="cuda", aux_bn=True)
    assert trained.config["amp"] == "bfloat16"
    assert next(trained.model.parameters()).dtype == torch.float32  # autocast leaves the weights in float32
    test_images, test_labels = _patterns(30, seed=2)
    assert _accuracy(trained.model, test_images, test_labels) > 0.9
    assert train_classifier(images, labels, 3, FAST.model_copy(update={"steps": 2}), device="cuda", amp=False).config["amp"] is None


# -- synthetic-only training (Classification Accuracy Score) -----------------------------------------


def test_cas_trains_on_synthetic_images_only() -> None:
    synthetic, synthetic_labels = _patterns(20, seed=4)
    trained = train_classifier_synthetic_only(synthetic, synthetic_labels, 3, FAST)
    test_images, test_labels = _patterns(30, seed=5)
    assert _accuracy(trained.model, test_images, test_labels) > 0.9
    assert trained.num_real == 0 and trained.num_synthetic == 60
    assert trained.config["synthetic_only"] is True and trained.config["synthetic_ratio"] is None
    assert trained.config["aux_bn"] is False
    # the same recipe as train_classifier with the pool as the real images
    cfg = FAST.model_copy(update={"steps": 3})
    assert _same_weights(
        train_classifier_synthetic_only(synthetic, synthetic_labels, 3, cfg).model,
        train_classifier(synthetic, synthetic_labels, 3, cfg).model,
    )


def test_cas_refuses_a_class_without_synthetic_images() -> None:
    synthetic, synthetic_labels = _patterns(4, seed=4)
    keep = synthetic_labels != 1
    with pytest.raises(ValueError, match=r"classes \[1\] have no synthetic images; synthetic-only training \(CAS\)"):
        train_classifier_synthetic_only(synthetic[keep], synthetic_labels[keep], 3, FAST)
    with pytest.raises(ValueError, match="no synthetic training images"):
        train_classifier_synthetic_only(synthetic[:0], synthetic_labels[:0], 3, FAST)
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_classifier_synthetic_only(synthetic, synthetic_labels, 1, FAST)


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


def _top1(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    probabilities, _ = predict(model, images)
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def test_early_stopping_keeps_the_best_validation_weights_and_trains_the_same_steps() -> None:
    images, labels = _patterns(6, seed=0)
    held_images, held_labels = _patterns(20, seed=1)
    cfg = FAST.model_copy(update={"steps": 40, "learning_rate": 3e-2})  # a rate high enough to wobble on validation
    plain = train_classifier(images, labels, 3, cfg)
    early = train_classifier(images, labels, 3, cfg.model_copy(update={"early_stopping_every": 5}), validation=(held_images, held_labels))
    assert early.history == plain.history  # the same steps, losses and rates: the checks draw no random numbers
    record = early.config["early_stopping"]
    curve = record["curve"]
    assert [p["step"] for p in curve] == list(range(5, 41, 5))
    best = max(p["top1"] for p in curve)
    assert record["best_validation_top1"] == best
    assert record["best_step"] == next(p["step"] for p in curve if p["top1"] == best)  # the earliest of equal scores
    assert record["validation_images"] == len(held_images)
    assert _top1(early.model, held_images, held_labels) == pytest.approx(best, abs=1e-9)
    final = curve[-1]["top1"]
    assert _top1(plain.model, held_images, held_labels) == pytest.approx(final, abs=1e-9)  # the last check is the plain model
    if record["best_step"] != 40:
        assert not all(torch.equal(a, b) for a, b in zip(early.model.state_dict().values(), plain.model.state_dict().values()))
    assert "early_stopping" not in plain.config


def test_early_stopping_without_a_validation_split_is_refused_before_training() -> None:
    images, labels = _patterns(4, seed=0)
    cfg = FAST.model_copy(update={"early_stopping_every": 5})
    with pytest.raises(ValueError, match="early_stopping_every=5 selects weights on the validation split, and there is none"):
        train_classifier(images, labels, 3, cfg)
    with pytest.raises(ValueError, match="validation: labels must lie in"):
        train_classifier(images, labels, 3, cfg, validation=(images, labels + 5))
    cas = train_classifier_synthetic_only(images, labels, 3, cfg, validation=(images, labels))
    assert cas.config["early_stopping"]["validation_images"] == len(images)
