"""The classifier architectures: ``synthaug_cnn`` (and ``_small``) registered with timm, and how a profile's model
name becomes a network (any timm name works; pretrained weights through :mod:`~synthaug_pipeline.lib.pretrained_classifiers`)."""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from synthaug_pipeline.lib.config import ClassifierConfig


def _conv_block(in_chs: int, out_chs: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers at one resolution."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


class SynthaugCNN(nn.Module):
    """A small VGG-style CNN for tiny images (8x8 digits up to 32x32 and beyond).

    ``stages`` are conv blocks whose widths come from ``widths``; every stage after the first
    halves the resolution with a max-pool first. The head average-pools globally, then an MLP
    (hidden Linear + ReLU = the pre-logits features) and a final Linear ``fc``.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128),
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"synthaug_cnn supports only global_pool='avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        stages, prev = [], in_chans
        for i, width in enumerate(widths):
            # Pool before every stage but the first: the total stride is 2**(len(widths)-1), so an
            # 8x8 digit still has a 2x2 map in the last stage. ceil_mode keeps odd sizes (7 -> 4)
            # and never shrinks a 1x1 map to nothing.
            pool = nn.MaxPool2d(2, ceil_mode=True) if i else nn.Identity()
            stages.append(nn.Sequential(pool, _conv_block(prev, width)))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=w, reduction=2**i, module=f"stages.{i}") for i, w in enumerate(widths)]

        # The MLP's hidden layer keeps the width, so pre-logits features have num_features dims
        # (timm's head_hidden_size == num_features for this model).
        self.num_features = self.head_hidden_size = prev
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.pre_logits = nn.Sequential(nn.Linear(prev, prev), nn.ReLU(inplace=True))
        self.fc = nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input ``[N, C, H, W]`` -> unpooled feature map ``[N, num_features, H', W']``."""
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits ``[N, num_classes]``, or the MLP features ``[N, num_features]``."""
        x = self.pre_logits(self.global_pool(x))
        if pre_logits:
            return x
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self, name_only: bool = False) -> str | nn.Module:
        """The final linear layer (timm convention), or its name."""
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the final layer with a fresh one for ``num_classes`` (0 -> identity, features out)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"synthaug_cnn supports only global_pool='avg', got {global_pool!r}")
        device = self.pre_logits[0].weight.device
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        self.fc.train(self.training)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No url / hf_hub_id: there are no pretrained weights. Mean/std 0.5 match to_model_tensor's [-1, 1].
    return {
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": (7, 7),
        "mean": (0.5,),
        "std": (0.5,),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "first_conv": "stages.0.1.0",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"synthaug_cnn": _cfg(), "synthaug_cnn_small": _cfg()})


def _create_synthaug_cnn(variant: str, widths: tuple[int, ...], pretrained: bool, **kwargs: Any) -> SynthaugCNN:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights: create it with pretrained=False")
    return build_model_with_cfg(
        SynthaugCNN,
        variant,
        pretrained=False,
        widths=widths,
        # features_only=True returns the output of each stage (timm's default asks for 5 stages).
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(len(widths)))),
        **kwargs,
    )


@register_model
def synthaug_cnn(pretrained: bool = False, **kwargs: Any) -> SynthaugCNN:
    """Small CNN, stage widths 32-64-128 (about 0.3 M parameters)."""
    return _create_synthaug_cnn("synthaug_cnn", (32, 64, 128), pretrained, **kwargs)


@register_model
def synthaug_cnn_small(pretrained: bool = False, **kwargs: Any) -> SynthaugCNN:
    """Tiny CNN, stage widths 16-32-64, for tests and smoke runs."""
    return _create_synthaug_cnn("synthaug_cnn_small", (16, 32, 64), pretrained, **kwargs)


def create_classifier(name: str, num_classes: int, in_chans: int) -> nn.Module:
    """A freshly initialised timm model (never pretrained: nothing is downloaded).

    Raises ValueError for an unknown name, suggesting close matches from ``timm.list_models()``.
    """
    if not timm.is_model(name):
        matches = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(matches)}?" if matches else "; see timm.list_models()"
        raise ValueError(f"unknown classifier model {name!r}{hint}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _initial_model(cfg: ClassifierConfig, num_classes: int, in_chans: int) -> nn.Module:
    """``cfg.model`` freshly initialised, or with ``cfg.pretrained`` weights and a new head (fine-tuning)."""
    if not cfg.pretrained:
        return create_classifier(cfg.model, num_classes, in_chans)
    from synthaug_pipeline.lib.pretrained_classifiers import pretrained_classifier

    return pretrained_classifier(cfg, num_classes)


def _adapter_config(model: nn.Module) -> dict[str, Any]:
    from synthaug_pipeline.lib.pretrained_classifiers import CONFIG_KEY, adapter_facts

    facts = adapter_facts(model)
    return {CONFIG_KEY: facts} if facts is not None else {}
