"""Pretrained diffusion generators: loading DiT class-label, Stable Diffusion text-to-image, img2img and image variation pipelines.

:func:`load_pretrained` loads a diffusers pipeline with ``from_pretrained(local folder or hub id)``:

* weights in ``generator.dtype`` (diffusers' ``dtype`` keyword, and checked after loading: a diffusers that
  ignored it must not leave float32 weights labelled float16), from the ``fp16``/``bf16`` weight variant
  when the folder or hub repo has one (:func:`~.model_files.weight_variant`), then moved to the device;
* hub ids at ``generator.revision``; the snapshot's commit, the content hash (cached beside the folder,
  :func:`~.model_files.model_version`) and the id travel with every image (:meth:`PretrainedGenerator.identity`);
* the checkpoint's safety checker detached from the pipeline (which would black out flagged images and,
  with tensor output, drop the flags) and run by :func:`~.pretrained_sampling.generate_class` on the real pixels when
  ``generator.safety_checker`` is record or drop; ``off`` does not load it;
* the model family (:mod:`~.pretrained_defaults`) whose card's sampler, steps, guidance and size fill the
  settings left unset.

One pipeline per (kind, model, revision, dtype, device, compile, checker) stays in a small per-process
cache (reloaded when the folder's content changes); a model-store resource can call :func:`load_pretrained`
once instead. DiT class indices, samplers and sampling settings are in :mod:`~.pretrained_settings`;
sampling a class is :mod:`~.pretrained_sampling`.

Speed: attention runs through PyTorch's fused ``scaled_dot_product_attention`` (diffusers' default
``AttnProcessor2_0`` on torch 2; :attr:`PretrainedGenerator.attention` reports it), the denoiser and the VAE
use ``channels_last``, and ``compile=True`` wraps the denoiser in ``torch.compile``.
Pure module: no Dagster here.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForText2Image,
    DiffusionPipeline,
    DiTPipeline,
    StableDiffusionImageVariationPipeline,
)
from diffusers import __version__ as diffusers_version
from packaging.version import Version

from . import model_files
from .config import GeneratorConfig
from .pretrained_defaults import model_family

PIPELINE_KINDS = ("dit", "text2img", "img2img", "image_variation")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PIPELINE_CACHE_SIZE = 2  # pipelines kept per process (each may hold GBs of GPU memory)


class GeneratorSettingError(ValueError):
    """A generator setting (or input) that cannot be used; the message names the setting and the fix."""


class NonFiniteImagesError(GeneratorSettingError):
    """The model produced NaN or Inf while sampling a class."""


# --------------------------------------------------------------------------- #
# Loading: one pipeline per (kind, model, revision, dtype, device, compile, safety) and process
# --------------------------------------------------------------------------- #

_LOADERS = {
    "dit": DiTPipeline,
    "text2img": AutoPipelineForText2Image,
    "img2img": AutoPipelineForImage2Image,
    "image_variation": StableDiffusionImageVariationPipeline,
}
SAFETY_MODES = ("record", "drop", "off")
# diffusers' from_pretrained reads `dtype` from 0.40 on and silently ignored it before (it took `torch_dtype`);
# pyproject requires >= 0.40, and the loaded weights are checked against the asked dtype either way.
_DTYPE_KEYWORD = "dtype" if Version(diffusers_version).release >= (0, 40) else "torch_dtype"


@dataclass
class PretrainedGenerator:
    pipeline: DiffusionPipeline  # on ``device``, in ``dtype``, progress bars off, safety checker detached
    kind: str  # one of PIPELINE_KINDS
    model: str  # generator.model as given (folder or hub id)
    path: str  # the local folder it was loaded from
    version: str  # first 16 hex digits of sha256 over the folder's files
    dtype: str
    device: str
    num_parameters: int
    load_seconds: float
    compiled: bool
    scheduler_config: dict  # the model's own scheduler settings; samplers are built from them
    revision: str | None = None  # the hub snapshot's commit (None for a local folder)
    variant: str | None = None  # weight files read: fp16 / bf16 variant, or None for the full-precision ones
    family: str = "sd1"  # pretrained_defaults.FAMILY_DEFAULTS key
    family_reason: str = ""
    safety_checker: torch.nn.Module | None = None  # the checkpoint's NSFW checker, run by generate_class (never blacks pixels)
    safety_feature_extractor: Any = None

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.transformer if self.kind == "dit" else self.pipeline.unet

    @property
    def native_size(self) -> int:
        """The image size the model was trained at (latent size x VAE downsampling)."""
        return int(self.denoiser.config.sample_size) * _vae_scale_factor(self.pipeline)

    @property
    def attention(self) -> str:
        """Attention implementations in the denoiser, e.g. ``AttnProcessor2_0`` (PyTorch SDPA)."""
        processors = {type(m.processor).__name__ for m in self.denoiser.modules() if hasattr(m, "processor")}
        return ",".join(sorted(processors)) or "none"

    def identity(self) -> dict[str, Any]:
        """What names these weights on a shard row: the id as given, the hub revision and the content hash."""
        return {"generator_id": self.model, "generator_revision": self.revision, "generator_version": self.version}

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for metadata and lineage."""
        return {
            "kind": self.kind,
            "model": self.model,
            "path": self.path,
            "version": self.version,
            "revision": self.revision,
            "variant": self.variant,
            "family": self.family,
            "family_reason": self.family_reason,
            "pipeline": type(self.pipeline).__name__,
            "dtype": self.dtype,
            "device": self.device,
            "num_parameters": self.num_parameters,
            "load_seconds": round(self.load_seconds, 3),
            "compiled": self.compiled,
            "attention": self.attention,
            "native_size": self.native_size,
            "safety_checker": type(self.safety_checker).__name__ if self.safety_checker is not None else None,
        }


def pipeline_kind(cfg: GeneratorConfig) -> str:
    """Which pretrained pipeline a generator config asks for (``image_variation`` is img2img's embedding variant)."""
    if cfg.backend == "ddpm":
        raise GeneratorSettingError("generator.backend 'ddpm' is trained by the pipeline, not loaded: use dit, text2img or img2img")
    if cfg.image_variation and cfg.backend != "img2img":
        raise GeneratorSettingError(f"generator.image_variation needs generator.backend=img2img, got {cfg.backend!r}")
    return "image_variation" if cfg.image_variation else cfg.backend


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise GeneratorSettingError("generator.device is 'cuda' but torch sees no CUDA device: use auto or cpu")
    if device not in ("cpu", "cuda"):
        raise GeneratorSettingError(f"generator.device {device!r} is unknown: use auto, cpu or cuda")
    return device


def resolve_model_path(model: str | None, revision: str | None = None, variant: str | None = None) -> Path:
    """The local folder of ``generator.model``: the folder itself, or the hub id's snapshot in the HF cache."""
    try:
        return model_files.resolve_model_path(model, revision=revision, variant=variant)
    except model_files.ModelFilesError as exc:
        raise GeneratorSettingError(str(exc)) from None


def model_version(path: str | Path) -> str:
    """First 16 hex digits of sha256 over every file's relative path and bytes, cached beside the folder."""
    return model_files.model_version(path)


def load_pretrained(
    kind: str,
    model: str | None,
    dtype: str = "float32",
    device: str = "auto",
    compile: bool = False,
    *,
    revision: str | None = None,
    safety_checker: str = "record",
) -> PretrainedGenerator:
    """Load (or reuse this process's) pipeline of ``kind`` from ``generator.model``.

    Weights load in ``dtype`` (the ``fp16``/``bf16`` variant files when the folder or hub repo has them),
    then move to ``device``. ``safety_checker="off"`` does not load the checkpoint's safety checker; otherwise
    it is detached from the pipeline (which would black out flagged images) and run by :func:`~.pretrained_sampling.generate_class`.
    The cache is keyed by the folder's content version too (:func:`model_version`: file names, sizes and
    mtimes, hashed once per change), so a folder rewritten mid-process is reloaded, never silently reused.
    Raises :class:`GeneratorSettingError` naming the setting when the path is not a model of that kind.
    """
    if kind not in PIPELINE_KINDS:
        raise GeneratorSettingError(f"unknown pipeline kind {kind!r}: choose one of {', '.join(PIPELINE_KINDS)}")
    if dtype not in TORCH_DTYPES:
        raise GeneratorSettingError(f"generator.dtype {dtype!r} is unknown: choose one of {', '.join(TORCH_DTYPES)}")
    if safety_checker not in SAFETY_MODES:
        raise GeneratorSettingError(f"generator.safety_checker {safety_checker!r} is unknown: choose one of {', '.join(SAFETY_MODES)}")
    device = resolve_device(device)
    wanted_variant = model_files.VARIANT_FOR_DTYPE[dtype][0] if dtype != "float32" else None
    path = resolve_model_path(model, revision, wanted_variant)
    version = model_version(path)
    with_checker = safety_checker != "off"
    key = (kind, model, revision, dtype, device, bool(compile), with_checker)
    cached = _PIPELINES.get(key)
    if cached is not None and (cached.path, cached.version) == (str(path), version):
        _PIPELINES.move_to_end(key)
        return cached
    _PIPELINES.pop(key, None)  # a stale version: drop it before loading, so two copies never share the GPU
    loaded = _load(kind, model, path, version, dtype, device, bool(compile), with_checker)
    loaded.revision = model_files.snapshot_revision(path) or revision
    _PIPELINES[key] = loaded
    while len(_PIPELINES) > PIPELINE_CACHE_SIZE:
        _PIPELINES.popitem(last=False)
    return loaded


# A plain per-process cache (kind, model, revision, dtype, device, compile, safety checker loaded) -> pipeline;
# a model-store resource can own it instead by calling load_pretrained once in setup_for_execution.
_PIPELINES: OrderedDict[tuple, PretrainedGenerator] = OrderedDict()


def _load(
    kind: str, model: str | None, path: Path, version: str, dtype: str, device: str, compile: bool, with_checker: bool
) -> PretrainedGenerator:
    loader = _LOADERS[kind]
    _check_scheduler_config(model, path)
    variant = model_files.weight_variant(path, dtype)
    started = time.perf_counter()
    kwargs: dict[str, Any] = {_DTYPE_KEYWORD: TORCH_DTYPES[dtype]}
    if variant is not None:
        kwargs["variant"] = variant
    if not with_checker and _declares_component(path, "safety_checker"):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipeline = loader.from_pretrained(path, **kwargs)
    except Exception as exc:  # wrong pipeline family, missing component, corrupt weights
        raise GeneratorSettingError(
            f"generator.model {model!r} could not be loaded as a {kind} pipeline ({loader.__name__}.from_pretrained): "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        ) from None
    denoiser_name = "transformer" if kind == "dit" else "unet"
    if getattr(pipeline, denoiser_name, None) is None or getattr(pipeline, "vae", None) is None:
        raise GeneratorSettingError(
            f"generator.model {model!r} loaded as {type(pipeline).__name__}, which has no {denoiser_name} + vae: "
            f"it is not a {kind} model (check generator.backend)"
        )
    checker = getattr(pipeline, "safety_checker", None)
    extractor = getattr(pipeline, "feature_extractor", None)
    if checker is not None:
        # the pipeline would replace flagged images by black ones and drop the flags with output_type="pt"
        pipeline.safety_checker = None
        if extractor is None:
            raise GeneratorSettingError(
                f"generator.model {model!r} has a safety_checker but no feature_extractor to prepare its input: "
                "add the feature_extractor folder, or set generator.safety_checker=off"
            )
    _ensure_dtype(pipeline, checker, TORCH_DTYPES[dtype])
    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(device)
    if checker is not None:
        checker.to(device)
    for name in (denoiser_name, "vae"):
        getattr(pipeline, name).to(memory_format=torch.channels_last)
    modules = [m for m in pipeline.components.values() if isinstance(m, torch.nn.Module)] + ([checker] if checker is not None else [])
    num_parameters = sum(p.numel() for m in modules for p in m.parameters())
    denoiser_config = getattr(pipeline, denoiser_name).config
    family, reason = model_family(kind, str(model), denoiser_config)
    if compile:
        setattr(pipeline, denoiser_name, torch.compile(getattr(pipeline, denoiser_name)))
    return PretrainedGenerator(
        pipeline=pipeline,
        kind=kind,
        model=str(model),
        path=str(path),
        version=version,
        dtype=dtype,
        device=device,
        num_parameters=num_parameters,
        load_seconds=time.perf_counter() - started,
        compiled=compile,
        scheduler_config=dict(pipeline.scheduler.config),
        variant=variant,
        family=family,
        family_reason=reason,
        safety_checker=checker,
        safety_feature_extractor=extractor if checker is not None else None,
    )


def _declares_component(path: Path, name: str) -> bool:
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    entry = index.get(name)
    return isinstance(entry, list) and entry[0] is not None


def _check_scheduler_config(model: str | None, path: Path) -> None:
    """Samplers are built from the model's own noise schedule: refuse a folder without one, before loading weights."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise GeneratorSettingError(f"generator.model {model!r}: model_index.json is not readable JSON ({type(exc).__name__})") from None
    if "scheduler" not in index or not (path / "scheduler" / "scheduler_config.json").is_file():
        raise GeneratorSettingError(
            f"generator.model {model!r} has no scheduler/scheduler_config.json: the samplers take the model's noise schedule "
            "from it; copy the scheduler folder of the checkpoint this model was trained from"
        )


def _ensure_dtype(pipeline: DiffusionPipeline, checker: torch.nn.Module | None, dtype: torch.dtype) -> None:
    """Every floating weight in ``dtype``: a diffusers that ignored the dtype keyword must not leave fp32 labelled fp16."""
    modules = [m for m in pipeline.components.values() if isinstance(m, torch.nn.Module)] + ([checker] if checker is not None else [])
    for module in modules:
        if any(p.is_floating_point() and p.dtype != dtype for p in module.parameters()):
            module.to(dtype=dtype)


def _vae_scale_factor(pipeline: DiffusionPipeline) -> int:
    return 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
