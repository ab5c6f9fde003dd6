"""CLIP score: how well each synthetic image matches its prompt, by an open_clip model.

``clip_score = cos(image_embedding, prompt_embedding)``, in [-1, 1]. This is the
raw cosine: torchmetrics' ``CLIPScore`` reports ``100 * max(cos, 0)`` instead,
which hides images that match their prompt *less* than an unrelated one does.

A model is named as in open_clip: a built-in architecture with a pretrained tag
or checkpoint path (``ViT-B-32`` + ``laion2b_s34b_b79k`` or ``/models/clip.pt``),
``local-dir:/path`` (a folder with ``open_clip_config.json`` and weights) or
``hf-hub:org/name``. Pretrained weights are required: a randomly initialised
CLIP gives numbers that look like scores and mean nothing, so
:meth:`ClipScorer.load` refuses to build one.

Images are preprocessed as tensors, in batches: bicubic (antialiased) resize
as the model's ``preprocess_cfg`` says (``shortest`` side + centre crop,
``longest`` side + padding, or ``squash``), grey repeated to RGB, then the
model's mean/std. Identical prompts are encoded once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ClipModelError(RuntimeError):
    """A CLIP model that cannot be loaded with weights; the message names the setting to fix."""


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str, interpolation: str, fill: float) -> torch.Tensor:
    """Resize float ``[B, 3, H, W]`` to ``size`` as open_clip's eval transform does (tensor version)."""
    interp = "bicubic" if interpolation == "bicubic" else "bilinear"
    h, w = x.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if mode == "squash":
        return F.interpolate(x, size=size, mode=interp, align_corners=False, antialias=True)
    if mode == "longest":
        scale = min(th / h, tw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode=interp, align_corners=False, antialias=True)
        top, left = (th - nh) // 2, (tw - nw) // 2
        return F.pad(x, (left, tw - nw - left, top, th - nh - top), value=fill)
    # "shortest": scale the shorter side to the target, then centre-crop
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode=interp, align_corners=False, antialias=True)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[..., top : top + th, left : left + tw]


class ClipScorer:
    """Image-prompt cosine similarity with one open_clip model (see the module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, batch_size: int = 256, device: str | torch.device = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = int(batch_size)
        self.device = device
        cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=device).view(1, 3, 1, 1)
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.interpolation = cfg.get("interpolation", "bicubic")
        fill = cfg.get("fill_color", 0)
        self.fill = float(fill) / 255.0 if isinstance(fill, (int, float)) else 0.0

    @classmethod
    def load(
        cls, model_name: str, pretrained: str | None = None, *, batch_size: int = 256, device: str = "cpu", section: str = "scoring"
    ) -> ClipScorer:
        """Load ``model_name`` (+ ``pretrained`` tag or path) with open_clip; weights are required.
        Errors name ``<section>.clip_model`` (scoring, or prompts for name ranking)."""
        import open_clip

        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, device=device, require_pretrained=True)
        except (RuntimeError, ValueError, OSError) as exc:
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise ClipModelError(
                f"{section}.clip_model={model_name!r} with {section}.clip_pretrained={pretrained!r} cannot be loaded with weights "
                f"({reason}); point clip_pretrained at a local checkpoint or use clip_model='local-dir:/path', "
                f"or set {section}.clip_model=null to skip CLIP scores"
            ) from None
        try:
            tokenizer = open_clip.get_tokenizer(model_name)
            tokenizer(["a photo"])  # some tokenizers load their files lazily
        except Exception as exc:  # noqa: BLE001 - HF tokenizers raise OSError, ValueError, EnvironmentError, ...
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ClipModelError(
                f"{section}.clip_model={model_name!r}: its tokenizer cannot be loaded ({type(exc).__name__}: {reason}); "
                "put the tokenizer files beside the model (open_clip_config.json text_cfg.hf_tokenizer_name) "
                f"or set {section}.clip_model=null"
            ) from None
        name = f"open_clip:{model_name}" + (f"/{pretrained}" if pretrained else "")
        return cls(model, tokenizer, name, batch_size=batch_size, device=device)

    def _image_tensor(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = _resize(x, self.size, self.resize_mode, self.interpolation, self.fill).clamp_(0.0, 1.0)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def image_embeddings(self, images: np.ndarray) -> torch.Tensor:
        """L2-normalised image embeddings ``[N, E]`` (float32)."""
        parts = [
            self.model.encode_image(self._image_tensor(images[i : i + self.batch_size]), normalize=True).float()
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(parts)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[P, E]`` (float32)."""
        parts = [
            self.model.encode_text(self.tokenizer(list(prompts[i : i + self.batch_size])).to(self.device), normalize=True).float()
            for i in range(0, len(prompts), self.batch_size)
        ]
        return torch.cat(parts)

    def similarity_matrix(self, texts: Sequence[str], images: np.ndarray) -> np.ndarray:
        """Cosine similarity ``[len(texts), N]`` (float64) of every text with every image (ranking candidate names)."""
        if len(texts) == 0 or len(images) == 0:
            return np.zeros((len(texts), len(images)), dtype=np.float64)
        return (self.text_embeddings(list(texts)) @ self.image_embeddings(images).T).double().cpu().numpy()

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """Cosine similarity ``[N]`` (float64) of each image with its prompt (one prompt per image)."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected uint8 images shaped [N, H, W, C] with C 1 or 3, got {getattr(images, 'shape', type(images))}")
        if isinstance(prompts, str) or len(prompts) != len(images):
            raise ValueError(
                f"need one prompt per image: {len(images)} images, got {1 if isinstance(prompts, str) else len(prompts)} prompts"
            )
        if any(not isinstance(p, str) for p in prompts):
            raise ValueError("every prompt must be a string")
        if len(images) == 0:
            return np.zeros(0, dtype=np.float64)
        unique = sorted(set(prompts))
        index = {p: i for i, p in enumerate(unique)}
        text = self.text_embeddings(unique)
        image = self.image_embeddings(images)
        rows = torch.tensor([index[p] for p in prompts], device=text.device)
        return (image * text[rows]).sum(dim=1).double().cpu().numpy()


@functools.lru_cache(maxsize=2)
def load_clip_scorer(
    model_name: str, pretrained: str | None, batch_size: int = 256, device: str = "cpu", section: str = "scoring"
) -> ClipScorer:
    """:meth:`ClipScorer.load`, once per process (one model serves every class partition)."""
    return ClipScorer.load(model_name, pretrained, batch_size=batch_size, device=device, section=section)
