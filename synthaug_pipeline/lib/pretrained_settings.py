"""What one pretrained sampling run asks of a loaded pipeline: DiT class indices, the sampler and the settings.

* DiT: ImageNet wnids (or ``generator.class_index_map``) -> the model's class label indices
  (:func:`dit_class_indices`);
* schedulers: the DDPM backend's sampler names built from the model's own noise schedule
  (:func:`make_pretrained_scheduler`);
* :class:`SamplingSettings`: the profile's sampler, steps, guidance and size, unset ones filled from the
  model family's defaults (:mod:`~.pretrained_defaults`), checked against the loaded model by
  :func:`validate_settings`.

The pipeline itself is loaded by :mod:`~.pretrained`; :mod:`~.pretrained_sampling` samples with these.
Pure module: no Dagster here.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from .config import GeneratorConfig
from .pretrained import SAFETY_MODES, GeneratorSettingError, PretrainedGenerator
from .pretrained_defaults import FAMILY_DEFAULTS, ResolvedSampling, resolve_sampling

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

# The DDPM backend's sampler names (diffusion_sampling.SAMPLERS), but built from the model's own scheduler config
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
        (the loaded model's :attr:`~.pretrained.PretrainedGenerator.family`; None: dit for the dit backend, else sd1)."""
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
    """Raise :class:`~.pretrained.GeneratorSettingError` naming the setting when sampling could not work."""
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
