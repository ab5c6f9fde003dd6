"""Per-family sampling defaults of pretrained generators, as each model card (or its pipeline's defaults) uses them.

``generator.sampler``, ``sample_steps``, ``guidance_scale`` and ``output_size`` left unset (None) take the
loaded model's family default; set ones win. :func:`model_family` names the family from the pipeline
kind, the denoiser's config and the model id, and says how it decided; :func:`resolve_sampling` returns
the values used and which of them came from the family, for the metadata.

| family | detected by | sampler | steps | guidance | size | source |
|---|---|---|---|---|---|---|
| dit | DiT transformer | dpmsolver++ | 25 | 4.0 | native (256/512) | DiT-XL-2-256 card (DPM-Solver, 25 steps), DiTPipeline |
| sd1 | UNet cross-attention 768 | dpmsolver++ | 25 | 7.5 | native (512) | SD 1.5 card (7.5); DPM-Solver++ 25 ~ PNDM 50 |
| sd2 | UNet cross-attention 1024 | dpmsolver++ | 25 | 7.5 | native (768; -base 512) | SD 2.1 card (DPM-Solver) |
| sdxl | UNet ``addition_embed_type: text_time`` | euler | 50 | 5.0 | native (1024) | SDXL base card: StableDiffusionXLPipeline defaults |
| sd-turbo / sdxl-turbo | ``turbo`` in the model id | euler | 1 (img2img 2) | 0.0 | 512 | SD-Turbo / SDXL-Turbo cards |
| image-variation | image-variation pipeline | dpmsolver++ | 50 | 3.0 | native | lambdalabs sd-image-variations card |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FamilyDefaults:
    sampler: str
    steps: int
    guidance_scale: float
    output_size: int | None  # None: the model's native size
    source: str
    img2img_steps: int | None = None  # img2img needs strength x steps >= 1


FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "dit": FamilyDefaults("dpmsolver++", 25, 4.0, None, "facebook/DiT-XL-2-256 card (DPM-Solver, 25 steps), DiTPipeline guidance 4.0"),
    "sd1": FamilyDefaults("dpmsolver++", 25, 7.5, None, "Stable Diffusion 1.x card (guidance 7.5); DPM-Solver++ 25 steps"),
    "sd2": FamilyDefaults("dpmsolver++", 25, 7.5, None, "Stable Diffusion 2.x card (DPMSolverMultistepScheduler, guidance 7.5)"),
    "sdxl": FamilyDefaults("euler", 50, 5.0, None, "SDXL base card (StableDiffusionXLPipeline defaults: Euler, 50 steps, guidance 5.0)"),
    "sd-turbo": FamilyDefaults("euler", 1, 0.0, 512, "SD-Turbo card: 1 step, guidance 0, 512 px", img2img_steps=2),
    "sdxl-turbo": FamilyDefaults("euler", 1, 0.0, 512, "SDXL-Turbo card: 1 step, guidance 0, 512 px", img2img_steps=2),
    "image-variation": FamilyDefaults("dpmsolver++", 50, 3.0, None, "lambdalabs/sd-image-variations-diffusers card (guidance 3)"),
}


def model_family(kind: str, model: str, denoiser_config: Any) -> tuple[str, str]:
    """``(family, how it was decided)`` of a loaded pretrained model (see the module table)."""
    name = str(model).lower()
    if kind == "dit":
        return "dit", "DiT transformer"
    if kind == "image_variation":
        return "image-variation", "image-variation pipeline"
    sdxl = getattr(denoiser_config, "addition_embed_type", None) == "text_time"
    if "turbo" in name:
        return ("sdxl-turbo" if sdxl else "sd-turbo"), "'turbo' in generator.model" + (" + SDXL UNet" if sdxl else "")
    if sdxl:
        return "sdxl", "UNet addition_embed_type text_time (SDXL)"
    cross = getattr(denoiser_config, "cross_attention_dim", None)
    if cross == 1024:
        return "sd2", "UNet cross_attention_dim 1024 (OpenCLIP-H text encoder, SD 2.x)"
    return "sd1", f"UNet cross_attention_dim {cross} (SD 1.x and look-alikes)"


@dataclass(frozen=True)
class ResolvedSampling:
    sampler: str
    steps: int
    guidance_scale: float
    output_size: int | None
    family: str
    defaulted: tuple[str, ...]  # settings that took the family default

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "output_size": self.output_size,
            "from_family_defaults": list(self.defaulted),
            "defaults_source": FAMILY_DEFAULTS[self.family].source,
        }


def resolve_sampling(
    family: str, kind: str, *, sampler: str | None, steps: int | None, guidance_scale: float | None, output_size: int | None
) -> ResolvedSampling:
    """The values a pretrained generator samples with: each None setting takes ``family``'s default."""
    defaults = FAMILY_DEFAULTS[family]
    family_steps = defaults.img2img_steps if kind == "img2img" and defaults.img2img_steps else defaults.steps
    chosen = {
        "sampler": (sampler, defaults.sampler),
        "sample_steps": (steps, family_steps),
        "guidance_scale": (guidance_scale, defaults.guidance_scale),
        "output_size": (output_size, defaults.output_size if kind != "dit" else None),
    }
    defaulted = tuple(name for name, (given, _) in chosen.items() if given is None)
    value = {name: (given if given is not None else default) for name, (given, default) in chosen.items()}
    return ResolvedSampling(
        sampler=value["sampler"],
        steps=int(value["sample_steps"]),
        guidance_scale=float(value["guidance_scale"]),
        output_size=value["output_size"],
        family=family,
        defaulted=defaulted,
    )
