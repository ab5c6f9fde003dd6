"""Pretrained diffusion generators: DiT class labels, Stable Diffusion text-to-image, img2img and image variation.

:func:`load_pretrained` loads a diffusers pipeline with ``from_pretrained(local folder or hub id)``:

* weights in ``generator.dtype`` (diffusers' ``dtype`` keyword, and checked after loading: a diffusers that
  ignored it must not leave float32 weights labelled float16), from the ``fp16``/``bf16`` weight variant
  when the folder or hub repo has one (:func:`~.model_files.weight_variant`), then moved to the device;
* hub ids at ``generator.revision``; the snapshot's commit, the content hash (cached beside the folder,
  :func:`~.model_files.model_version`) and the id travel with every image (:meth:`PretrainedGenerator.identity`);
* the checkpoint's safety checker detached from the pipeline (which would black out flagged images and,
  with tensor output, drop the flags) and run by :func:`generate_class` on the real pixels when
  ``generator.safety_checker`` is record or drop; ``off`` does not load it;
* the model family (:mod:`~.pretrained_defaults`) whose card's sampler, steps, guidance and size fill the
  settings left unset.

One pipeline per (kind, model, revision, dtype, device, compile, checker) stays in a small per-process
cache (reloaded when the folder's content changes); a model-store resource can call :func:`load_pretrained`
once instead. :func:`generate_class` samples one class and returns uint8 ``[N, H, W, C]`` images at the
profile's size and channel count, the format of the DDPM backend's :func:`~.diffusion.sample_images`, with
each image's batch size and safety flag.

Reproducibility: image ``i`` draws all its randomness (initial latents, img2img's VAE posterior sample and
added noise, ancestral scheduler noise) from its own CPU ``torch.Generator`` seeded with ``seeds[i]`` (the
callers use :func:`~.diffusion.image_seed`), so on a CPU the same settings reproduce the same pixels at any
batch size. On CUDA, kernels may reduce in another order at another batch size (after an out-of-memory
retry, say): each image's batch size is returned and recorded on its shard row.

Speed: attention runs through PyTorch's fused ``scaled_dot_product_attention`` (diffusers' default
``AttnProcessor2_0`` on torch 2; :attr:`PretrainedGenerator.attention` reports it), the denoiser and the VAE
use ``channels_last``, and ``compile=True`` wraps the denoiser in ``torch.compile``.
Pure module: no Dagster here.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForText2Image,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImageVariationPipeline,
)
from diffusers import __version__ as diffusers_version
from packaging.version import Version
from PIL import Image

from . import model_files
from .config import GeneratorConfig
from .pretrained_defaults import FAMILY_DEFAULTS, ResolvedSampling, model_family, resolve_sampling

PIPELINE_KINDS = ("dit", "text2img", "img2img", "image_variation")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L"), for grayscale profiles
PIPELINE_CACHE_SIZE = 2  # pipelines kept per process (each may hold GBs of GPU memory)
BATCH_PIXELS = 8 * 512 * 512  # default batch: 8 images at 512 px (16 UNet inputs with guidance), more when smaller
MAX_DEFAULT_BATCH = 32
logger = logging.getLogger(__name__)


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
    it is detached from the pipeline (which would black out flagged images) and run by :func:`generate_class`.
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


# --------------------------------------------------------------------------- #
# DiT: ImageNet wnids -> the model's class indices
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=1)
def imagenet_1k_wnids() -> tuple[str, ...]:
    """The standard ImageNet-1k class order (index -> wnid), as timm ships it."""
    text = (resources.files("timm.data") / "_info" / "imagenet_synsets.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def dit_class_indices(class_ids: Sequence[str], num_labels: int, class_index_map: str | None = None) -> dict[str, int]:
    """Each class id's label index in a DiT model with ``num_labels`` classes.

    ``class_index_map`` (``generator.class_index_map``) is a JSON file ``{class_id: index}``; without it,
    class ids must be ImageNet-1k wnids and map by the standard order (``n01440764`` -> 0).
    """
    if class_index_map:
        try:
            mapping = json.loads(Path(class_index_map).read_text())
        except (OSError, ValueError) as exc:
            raise GeneratorSettingError(f"generator.class_index_map {class_index_map!r} is not a readable JSON file: {exc}") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in mapping.values()):
            raise GeneratorSettingError(
                f"generator.class_index_map {class_index_map!r} must hold a JSON object {{class_id: integer index}}"
            )
        source = f"generator.class_index_map {class_index_map!r}"
    else:
        mapping = {wnid: i for i, wnid in enumerate(imagenet_1k_wnids())}
        source = "the ImageNet-1k wnid order (set generator.class_index_map for other class ids)"
    indices = {}
    for class_id in class_ids:
        if class_id not in mapping:
            raise GeneratorSettingError(f"class {class_id!r} has no DiT class index in {source}")
        index = mapping[class_id]
        if not 0 <= index < num_labels:
            raise GeneratorSettingError(
                f"class {class_id!r} maps to DiT class index {index} in {source}, but generator.model knows classes 0..{num_labels - 1}"
            )
        indices[class_id] = index
    return indices


def dit_num_labels(generator: PretrainedGenerator) -> int:
    return int(generator.pipeline.transformer.config.num_embeds_ada_norm)


# --------------------------------------------------------------------------- #
# Schedulers and sampling settings
# --------------------------------------------------------------------------- #

# The DDPM backend's sampler names (diffusion.SAMPLERS), but built from the model's own scheduler config
# (betas, timestep count, prediction type, no sample clipping for latents): only the solver changes.
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "sde-dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
}


def make_pretrained_scheduler(name: str, model_scheduler_config: dict):
    """A fresh scheduler ``name`` with the model's noise schedule (schedulers carry state: one per batch)."""
    if name not in SCHEDULERS:
        raise GeneratorSettingError(f"generator.sampler {name!r} is unknown: choose one of {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    config = {k: v for k, v in model_scheduler_config.items() if not k.startswith("_")}
    return cls.from_config(config, **extra)


@dataclass(frozen=True)
class SamplingSettings:
    sampler: str = "ddim"
    steps: int = 20
    guidance_scale: float = 7.5
    batch_size: int | None = None  # images per pipeline call; None: default_batch_size(generated size)
    strength: float = 0.6  # img2img: share of the noise schedule applied to the conditioning image
    negative_prompt: str | None = None
    output_size: int | None = None  # generated size before resizing; None: the model's native size
    safety_checker: str = "record"  # record | drop | off (see GeneratorConfig.safety_checker)
    family: str | None = None  # the model family whose defaults filled unset values
    defaulted: tuple[str, ...] = ()  # settings that took the family default

    @classmethod
    def from_config(cls, cfg: GeneratorConfig, family: str | None = None) -> SamplingSettings:
        """The settings of ``cfg``, with unset (None) sampler/steps/guidance/size taken from ``family``'s defaults
        (the loaded model's :attr:`PretrainedGenerator.family`; None: dit for the dit backend, else sd1)."""
        kind = "image_variation" if cfg.image_variation else cfg.backend
        family = family or ("dit" if cfg.backend == "dit" else "image-variation" if cfg.image_variation else "sd1")
        resolved: ResolvedSampling = resolve_sampling(
            family, kind, sampler=cfg.sampler, steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale, output_size=cfg.output_size
        )
        return cls(
            sampler=resolved.sampler,
            steps=resolved.steps,
            guidance_scale=resolved.guidance_scale,
            batch_size=cfg.pretrained_batch_size,  # generator.sample_batch_size is the ddpm backend's
            strength=cfg.strength,
            negative_prompt=cfg.negative_prompt,
            output_size=resolved.output_size,
            safety_checker=cfg.safety_checker,
            family=family,
            defaulted=resolved.defaulted,
        )

    def describe(self) -> dict[str, Any]:
        """The values sampling uses, and which came from the family's defaults (for metadata)."""
        facts = {
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "output_size": self.output_size,
            "strength": self.strength,
            "safety_checker": self.safety_checker,
            "family": self.family,
            "from_family_defaults": list(self.defaulted),
        }
        if self.family in FAMILY_DEFAULTS:
            facts["defaults_source"] = FAMILY_DEFAULTS[self.family].source
        return facts


def validate_settings(generator: PretrainedGenerator, settings: SamplingSettings) -> None:
    """Raise :class:`GeneratorSettingError` naming the setting when sampling could not work."""
    if settings.safety_checker not in SAFETY_MODES:
        raise GeneratorSettingError(
            f"generator.safety_checker {settings.safety_checker!r} is unknown: choose one of {', '.join(SAFETY_MODES)}"
        )
    make_pretrained_scheduler(settings.sampler, generator.scheduler_config)
    train_steps = int(generator.scheduler_config.get("num_train_timesteps", 1000))
    steps = settings.steps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= train_steps:
        raise GeneratorSettingError(
            f"generator.sample_steps must be an integer from 1 to {train_steps} (the model's timesteps), got {steps!r}"
        )
    w = settings.guidance_scale
    if not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 <= w <= 50:
        raise GeneratorSettingError(f"generator.guidance_scale must be a finite number from 0 to 50 (<= 1: no guidance), got {w!r}")
    batch = settings.batch_size
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1):
        raise GeneratorSettingError(f"generator.pretrained_batch_size must be an integer >= 1 (or unset: sized to memory), got {batch!r}")
    if generator.kind == "img2img":
        if not 0 < settings.strength <= 1:
            raise GeneratorSettingError(f"generator.strength must be in (0, 1], got {settings.strength!r}")
        if int(steps * settings.strength) < 1:
            raise GeneratorSettingError(
                f"generator.strength {settings.strength} x generator.sample_steps {steps} leaves no denoising step: "
                "raise one of them so that strength x steps >= 1"
            )
    size = settings.output_size
    if generator.kind == "dit":
        if size is not None and size != generator.native_size:
            raise GeneratorSettingError(
                f"generator.output_size {size}: DiT generates at its native {generator.native_size} px; leave it unset"
            )
    elif size is not None and (size < 8 or size % 8):
        raise GeneratorSettingError(f"generator.output_size must be a multiple of 8 (Stable Diffusion's rule), got {size}")


# --------------------------------------------------------------------------- #
# Sampling one class
# --------------------------------------------------------------------------- #


def default_batch_size(size: int) -> int:
    """Images per pipeline call at ``size`` px when generator.pretrained_batch_size is unset: 8 at 512 px
    (16 UNet inputs with guidance), 2 at 1024 px, at most 32 for small models."""
    return max(1, min(MAX_DEFAULT_BATCH, BATCH_PIXELS // (int(size) * int(size))))


@dataclass
class GeneratedClass:
    """One class's samples and what decided them beyond the settings."""

    images: np.ndarray  # uint8 [N, H, W, C]
    batch_sizes: list[int]  # images per pipeline call that produced each image (CUDA kernels may differ with it)
    safety_flagged: np.ndarray | None  # bool [N] from the checkpoint's safety checker; None when none ran
    oom_retries: int  # batches retried at half size after CUDA out-of-memory


def generate_images(generator: PretrainedGenerator, class_id: str, seeds: Sequence[int], settings: SamplingSettings,
                    image_shape: Sequence[int], **inputs: Any) -> np.ndarray:
    """The images of :func:`generate_class` (same arguments)."""
    return generate_class(generator, class_id, seeds, settings, image_shape, **inputs).images


def generate_class(
    generator: PretrainedGenerator,
    class_id: str,
    seeds: Sequence[int],
    settings: SamplingSettings,
    image_shape: Sequence[int],
    *,
    class_index: int | None = None,
    prompts: Sequence[str] | None = None,
    conditioning: Sequence[np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> GeneratedClass:
    """One uint8 image per seed, shaped ``[len(seeds), *image_shape]`` (``image_shape`` = (H, W, C), C = 1 or 3).

    Per-image inputs, by kind: ``dit`` needs ``class_index`` (see :func:`dit_class_indices`); ``text2img``
    ``prompts``; ``img2img`` ``prompts`` and ``conditioning`` (uint8 ``[h, w, c]`` real images, any size);
    ``image_variation`` ``conditioning``. ``progress(done, total)`` is called once per batch.
    Batches hold ``settings.batch_size`` images (None: :func:`default_batch_size`); a batch that runs out of
    CUDA memory is halved and retried (reported through ``log``, default: this module's logger) and later
    batches keep the smaller size. Every image draws from its own seed, so on CPU the pixels do not depend on
    the batch; on CUDA, kernels may reduce in another order at another batch size, so each image's batch size is
    returned (and recorded on its shard row).
    With a safety checker in the checkpoint and ``settings.safety_checker`` record or drop, each decoded
    image is checked on its real pixels (never replaced by a black image) and flagged in ``safety_flagged``.
    Raises :class:`NonFiniteImagesError` naming the class and settings when the model yields NaN/Inf.
    """
    validate_settings(generator, settings)
    n = len(seeds)
    height, width, channels = (int(v) for v in image_shape)
    if channels not in (1, 3):
        raise GeneratorSettingError(f"image_shape must end in 1 or 3 channels, got {tuple(image_shape)}")
    needs = {
        "dit": ("class_index",),
        "text2img": ("prompts",),
        "img2img": ("prompts", "conditioning"),
        "image_variation": ("conditioning",),
    }
    given = {"class_index": class_index, "prompts": prompts, "conditioning": conditioning}
    for name in needs[generator.kind]:
        value = given[name]
        if value is None or (name != "class_index" and len(value) != n):
            raise GeneratorSettingError(f"class {class_id!r}: a {generator.kind} generator needs {name} for each of the {n} seeds")
    if generator.kind == "dit" and not 0 <= int(class_index) < dit_num_labels(generator):
        raise GeneratorSettingError(f"class {class_id!r}: DiT class index {class_index} is outside 0..{dit_num_labels(generator) - 1}")

    def check(tensor: torch.Tensor, where: str) -> None:
        if not torch.isfinite(tensor).all():
            raise NonFiniteImagesError(
                f"class {class_id!r}: generator.model {generator.model!r} produced non-finite values {where} "
                f"(generator.dtype={generator.dtype}, generator.sampler={settings.sampler}, generator.sample_steps={settings.steps}); "
                "float16 overflows in some VAEs: try generator.dtype=bfloat16 or float32, otherwise the weights are broken"
            )

    def one_batch(begin: int, end: int) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[begin:end]]  # fresh per try: a retry redraws the same noise
        scheduler = make_pretrained_scheduler(settings.sampler, generator.scheduler_config)
        if generator.kind == "dit":
            return _sample_dit(generator, int(class_index), gens, scheduler, settings, check)
        batch_prompts = list(prompts[begin:end]) if prompts is not None else None
        batch_images = list(conditioning[begin:end]) if conditioning is not None else None
        return _sample_stable_diffusion(generator, gens, scheduler, settings, check, batch_prompts, batch_images)

    checking = generator.safety_checker is not None and settings.safety_checker != "off"
    size = settings.output_size or generator.native_size
    batch = int(settings.batch_size or default_batch_size(size))
    log = log or logger.warning
    out = np.empty((n, height, width, channels), dtype=np.uint8)
    flagged = np.zeros(n, dtype=bool) if checking else None
    batch_sizes = [0] * n
    retries = 0
    begin = 0
    while begin < n:
        end = min(n, begin + batch)
        try:
            pixels = one_batch(begin, end)
        except torch.cuda.OutOfMemoryError:
            if end - begin == 1:
                raise GeneratorSettingError(
                    f"class {class_id!r}: one {size} px image of generator.model {generator.model!r} does not fit in "
                    f"{generator.device} memory (generator.dtype={generator.dtype}): "
                    "use float16/bfloat16 or a smaller generator.output_size"
                ) from None
            pixels = None
        if pixels is None:  # outside the except block, so the failed batch's tensors are already released
            batch = max(1, (end - begin) // 2)
            retries += 1
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log(f"class {class_id!r}: a batch of {end - begin} images ran out of {generator.device} memory; retrying with {batch}")
            continue
        check(pixels, "in the decoded images")
        if checking:
            flagged[begin:end] = safety_flags(generator, pixels)
        out[begin:end] = to_profile_images(pixels, (height, width), channels)
        batch_sizes[begin:end] = [end - begin] * (end - begin)
        if progress is not None:
            progress(end, n)
        begin = end
    return GeneratedClass(images=out, batch_sizes=batch_sizes, safety_flagged=flagged, oom_retries=retries)


@torch.no_grad()
def safety_flags(generator: PretrainedGenerator, pixels: torch.Tensor) -> np.ndarray:
    """The checkpoint's safety checker on float ``[N, 3, h, w]`` images in ``[0, 1]``: one bool per image.

    The checker blacks out what it flags in the ``images`` it is given; it gets placeholders, so the real
    pixels stay and only the flags are kept.
    """
    checker, extractor = generator.safety_checker, generator.safety_feature_extractor
    rgb = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    clip_input = extractor([Image.fromarray(image) for image in rgb], return_tensors="pt").pixel_values
    parameter = next(checker.parameters())
    _, flags = checker(images=np.zeros((len(rgb), 1)), clip_input=clip_input.to(device=parameter.device, dtype=parameter.dtype))
    return np.asarray([bool(f) for f in flags], dtype=bool)


@torch.no_grad()
def _sample_dit(
    generator: PretrainedGenerator,
    class_index: int,
    gens: list[torch.Generator],
    scheduler,
    settings: SamplingSettings,
    check: Callable[[torch.Tensor, str], None],
) -> torch.Tensor:
    """DiTPipeline's loop, with two changes: each image's noise (ancestral steps too) comes from its own
    generator, and the null class is the model's ``num_embeds_ada_norm`` rather than a fixed 1000."""
    pipeline = generator.pipeline
    transformer, vae = pipeline.transformer, pipeline.vae
    config = transformer.config
    device, dtype = torch.device(generator.device), TORCH_DTYPES[generator.dtype]
    shape = (config.in_channels, config.sample_size, config.sample_size)
    x = torch.cat([torch.randn((1, *shape), generator=g) for g in gens]).to(device=device, dtype=dtype)
    scheduler.set_timesteps(settings.steps, device=device)
    x = x * scheduler.init_noise_sigma
    guided = settings.guidance_scale > 1.0
    labels = torch.full((len(gens),), class_index, dtype=torch.long, device=device)
    if guided:  # classifier-free guidance: one forward on [x, x] with [class, null]
        labels = torch.cat([labels, torch.full_like(labels, config.num_embeds_ada_norm)])
    for step, t in enumerate(scheduler.timesteps):
        inp = scheduler.scale_model_input(x, t)
        inp = torch.cat([inp, inp]) if guided else inp
        timesteps = t.reshape(1).to(device).expand(len(inp))
        output = transformer(inp, timestep=timesteps, class_labels=labels).sample
        eps = output[:, : config.in_channels]  # learned-sigma models also predict a variance; these samplers do not use it
        if guided:
            eps_cond, eps_uncond = eps.chunk(2)
            eps = eps_uncond + settings.guidance_scale * (eps_cond - eps_uncond)
        check(eps, f"at denoising step {step}")
        x = scheduler.step(eps, t, x, generator=gens).prev_sample
    images = vae.decode(x / vae.config.scaling_factor).sample
    return images.float() / 2 + 0.5


def _sample_stable_diffusion(
    generator: PretrainedGenerator,
    gens: list[torch.Generator],
    scheduler,
    settings: SamplingSettings,
    check: Callable[[torch.Tensor, str], None],
    prompts: list[str] | None,
    conditioning: list[np.ndarray] | None,
) -> torch.Tensor:
    """One batch through the diffusers pipeline; per-image generators make every image independent of the batch."""
    pipeline = generator.pipeline
    pipeline.scheduler = scheduler
    size = settings.output_size or generator.native_size
    common = {"num_inference_steps": settings.steps, "guidance_scale": settings.guidance_scale, "generator": gens, "output_type": "pt"}

    def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
        check(tensors["latents"], f"at denoising step {step}")
        return tensors

    if generator.kind == "image_variation":  # this pipeline still has the older per-step callback
        result = pipeline(
            image=_conditioning_pil(conditioning, size),
            height=size,
            width=size,
            callback=lambda step, t, latents: check(latents, f"at denoising step {step}"),
            **common,
        )
    else:
        negative = [settings.negative_prompt] * len(prompts) if settings.negative_prompt else None
        text = {"prompt": prompts, "negative_prompt": negative, "callback_on_step_end": on_step_end}
        if generator.kind == "img2img":
            result = pipeline(image=_conditioning_pil(conditioning, size), strength=settings.strength, **text, **common)
        else:
            result = pipeline(height=size, width=size, **text, **common)
    return result.images.float()


def _conditioning_pil(images: Sequence[np.ndarray], size: int) -> list[Image.Image]:
    """Real uint8 ``[h, w, c]`` images as RGB PIL images at the generation size."""
    out = []
    for image in images:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise GeneratorSettingError(f"conditioning images must be uint8 [H, W, 1 or 3], got {getattr(image, 'shape', type(image))}")
        rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
        out.append(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
    return out


def to_profile_images(pixels: torch.Tensor, size: tuple[int, int], channels: int) -> np.ndarray:
    """Float ``[N, 3, h, w]`` in ``[0, 1]`` -> uint8 ``[N, H, W, channels]`` (antialiased bicubic, luma for grayscale)."""
    x = pixels.detach().float().cpu().clamp(0, 1)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    if channels == 1:
        x = sum(w * x[:, i : i + 1] for i, w in enumerate(LUMA))
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def per_image(values: Sequence[Any], count: int) -> list[Any]:
    """``count`` values cycling through ``values`` (prompts or conditioning images -> one per image)."""
    if not values:
        raise GeneratorSettingError("need at least one value to assign to images")
    return [values[i % len(values)] for i in range(count)]
