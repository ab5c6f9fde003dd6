"""Generation: the generator (a DDPM trained here, or a pretrained diffusers pipeline), then each class's samples.

``generator.backend`` picks the generator: ``ddpm`` trains a class-conditional DDPM on the real images;
``dit``, ``text2img`` and ``img2img`` (``image_variation`` for its image-embedding variant) load a
pretrained pipeline from ``generator.model`` once per process (see :mod:`synthaug_pipeline.lib.pretrained`).
"""

import time

import dagster as dg
import numpy as np
from pydantic import Field

from synthaug_pipeline.defs.data.assets import stack_real
from synthaug_pipeline.defs.resources import SynthaugSettings, cached_generator, log_progress, log_warning, model_url
from synthaug_pipeline.lib.conditioning import conditioning_images, pixel_ids
from synthaug_pipeline.lib.config import GeneratorConfig, Profile
from synthaug_pipeline.lib.diffusion import (
    image_seed,
    load_generator,
    resolve_device,
    sample_images,
    save_generator,
    train_generator,
)
from synthaug_pipeline.lib.faults import failpoint
from synthaug_pipeline.lib.images import grid_markdown
from synthaug_pipeline.lib.plots import line_chart_markdown
from synthaug_pipeline.lib.progress import Eta
from synthaug_pipeline.lib.pretrained import (
    SamplingSettings,
    dit_class_indices,
    dit_num_labels,
    generate_images,
    load_pretrained,
    make_pretrained_scheduler,
    per_image,
    pipeline_kind,
    validate_settings,
)
from synthaug_pipeline.lib.redaction import redact_url, redact_urls


def load_init_generator(cfg: GeneratorConfig, class_ids: list[str]):
    """The generator ``generator.init_from`` names, checked to know the same classes (in the same order) as this run."""
    try:
        previous = load_generator(cfg.init_from)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"generator.init_from {cfg.init_from!r} is not a generator saved by a previous run: {exc}") from None
    theirs = previous.config.get("class_ids")
    if theirs is not None and list(theirs) != list(class_ids):
        raise ValueError(
            f"generator.init_from {cfg.init_from!r} (version {previous.version}) was trained on classes {theirs}, this run has "
            f"{class_ids}: its label embeddings would mean other classes; use the same data.classes or unset generator.init_from"
        )
    return previous


def train_ddpm_generator(context: dg.AssetExecutionContext, profile: Profile, class_ids: list[str], real_images: dict[str, dict]) -> dict:
    """Train (or, with ``generator.init_from``, fine-tune) the class-conditional DDPM on every class's real
    training images and save it under the run's id."""
    cfg = profile.generator
    init_from = load_init_generator(cfg, class_ids) if cfg.init_from else None  # fail before reading images
    images, labels = stack_real(real_images, "train")

    eta = Eta(cfg.train_steps)

    def progress(step: int, loss: float) -> None:
        log_progress(context, f"generator step {step}/{cfg.train_steps}, loss {loss:.4f}, {eta.text(step)}")

    if init_from is not None:
        log_progress(context, f"generator: fine-tuning {cfg.init_from} (version {init_from.version})")
    trained = train_generator(
        images, labels, len(class_ids), cfg, progress=progress, device=resolve_device(cfg.device), init_from=init_from
    )
    trained.config["class_ids"] = list(class_ids)  # lets a later generator.init_from check the label order
    url = model_url(profile.output_url, "generator", context.run_id)
    version = save_generator(trained, url)
    lineage = {"init_from": cfg.init_from, "init_from_version": init_from.version if init_from is not None else None}
    context.add_output_metadata(
        {
            "backend": "ddpm",
            "url": redact_url(url),
            "version": version,
            **(redact_urls(lineage) if init_from is not None else {}),
            "total_train_steps": trained.config["total_train_steps"],
            "train_steps": cfg.train_steps,
            "final_loss": float(np.mean(trained.losses[-5:])),
            "num_parameters": trained.num_parameters,
            "seconds": round(trained.seconds, 1),
            "train_images": len(images),
            "loss_curve": dg.MetadataValue.md(line_chart_markdown(trained.losses, "training loss")),
        }
    )
    return {
        "url": url,
        "version": version,
        "backend": "ddpm",
        "num_parameters": trained.num_parameters,
        **lineage,
        "seconds": trained.seconds,  # the generator's share of the run's cost (lib.cost)
        "device": resolve_device(cfg.device),
    }


def load_pretrained_generator(context: dg.AssetExecutionContext, cfg: GeneratorConfig, class_ids: list[str]) -> dict:
    """Load ``generator.model`` and check, before any class is sampled, that the settings and every class work."""
    kind = pipeline_kind(cfg)
    loaded = load_pretrained(kind, cfg.model, cfg.dtype, cfg.device, cfg.compile)
    validate_settings(loaded, SamplingSettings.from_config(cfg))
    class_indices = dit_class_indices(class_ids, dit_num_labels(loaded), cfg.class_index_map) if kind == "dit" else None
    scheduler = make_pretrained_scheduler(cfg.sampler, loaded.scheduler_config)
    facts = loaded.describe()
    context.add_output_metadata(
        {
            "backend": cfg.backend,
            **{k: v for k, v in facts.items() if k != "load_seconds"},
            "scheduler": f"{cfg.sampler} ({type(scheduler).__name__}, from the model's scheduler config)",
            "load_seconds": round(loaded.load_seconds, 2),
            **({"class_indices": dg.MetadataValue.json(class_indices)} if class_indices else {}),
        }
    )
    return {
        "url": cfg.model,
        "version": loaded.version,
        "backend": cfg.backend,
        "kind": kind,
        "dtype": cfg.dtype,
        "num_parameters": loaded.num_parameters,
        "class_indices": class_indices,
        "seconds": loaded.load_seconds,
        "device": resolve_device(cfg.device),
    }


def sample_pretrained(
    context: dg.AssetExecutionContext,
    cfg: GeneratorConfig,
    generator: dict,
    class_id: str,
    seeds: list[int],
    image_shape: list[int],
    class_prompts: dict,
    real_images: dict,
) -> dict:
    """One class from a pretrained pipeline, with each image's prompt and conditioning image id for the shard."""
    kind = generator["kind"]
    loaded = load_pretrained(kind, generator["url"], generator["dtype"], cfg.device, cfg.compile)
    if loaded.version != generator["version"]:
        raise ValueError(
            f"generator.model {generator['url']!r} changed since the generator asset loaded it "
            f"(version {generator['version']} -> {loaded.version}): re-materialize generator"
        )
    n = len(seeds)
    prompts = per_image([p["text"] for p in class_prompts["prompts"]], n) if kind in ("text2img", "img2img") else None
    conditioning = None
    if kind in ("img2img", "image_variation"):
        # Provenance names the real image stably: the data asset's ids when it has them, else a pixel hash
        # (a position in the class array shifts when data.train_per_class changes).
        image_ids = real_images.get("train_ids")
        if image_ids is None:
            image_ids = pixel_ids(real_images["train"], "train")
        conditioning = conditioning_images(
            real_images["train"], class_id, n, cfg.seed, cfg.conditioning_augmentations, image_ids=list(image_ids)
        )
    images = generate_images(
        loaded,
        class_id,
        seeds,
        SamplingSettings.from_config(cfg),
        image_shape,
        class_index=generator["class_indices"][class_id] if kind == "dit" else None,
        prompts=prompts,
        conditioning=[c.image for c in conditioning] if conditioning else None,
        progress=lambda done, total: context.log.info(f"class {class_id}: {done}/{total} images"),
        log=lambda message: log_warning(context, message),
    )
    return {
        "images": images,
        "prompts": prompts,
        "negative_prompts": [cfg.negative_prompt] * n if prompts else None,
        "conditioning_image_ids": [c.provenance for c in conditioning] if conditioning else None,
    }


class SamplingRunConfig(dg.Config):
    """Launchpad settings of ``synthetic_images`` (the profile holds everything else)."""

    regeneration_round: int = Field(
        0,
        ge=0,
        description="0: the class's first seeds. r > 0: a fresh, reproducible seed set for regenerating the class "
        "with the same generator (the regenerate_worst_classes schedule sets it).",
    )


def build_generation_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="generation", pool="gpu", kinds={"pytorch", "diffusers"})
    def generator(context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict, real_images: dict[str, dict]) -> dict:
        """The generator: a class-conditional DDPM trained on the real images (backend ddpm), or a pretrained
        DiT / Stable Diffusion pipeline loaded from generator.model (backends dit, text2img, img2img)."""
        profile = settings.load()
        if profile.generator.backend == "ddpm":
            return train_ddpm_generator(context, profile, class_catalog["class_ids"], real_images)
        return load_pretrained_generator(context, profile.generator, class_catalog["class_ids"])

    @dg.asset(partitions_def=partitions, group_name="generation", pool="gpu", kinds={"pytorch", "diffusers"})
    def synthetic_images(
        context: dg.AssetExecutionContext,
        config: SamplingRunConfig,
        settings: SynthaugSettings,
        class_catalog: dict,
        generator: dict,
        class_prompts: dict,
        real_images: dict,
    ) -> dict:
        """Sampled images of one class, each with a seed derived from (class, index, generator version);
        text backends use the class's prompts, img2img augmented real images of the class."""
        cfg = settings.load().generator
        class_id = context.partition_key
        class_index = class_catalog["class_ids"].index(class_id)
        round_ = config.regeneration_round
        seeds = [image_seed(class_id, i, generator["version"], round_) for i in range(cfg.images_per_class)]
        started = time.perf_counter()
        if generator["backend"] == "ddpm":
            trained = cached_generator(generator["url"], generator["version"])
            timesteps = trained.config["num_train_timesteps"]
            if cfg.sample_steps > timesteps:  # before any sampling: the generator may predate the current settings
                raise ValueError(
                    f"generator.sample_steps {cfg.sample_steps} exceeds the num_train_timesteps {timesteps} the generator "
                    f"{generator['url']} was trained with: set generator.sample_steps <= {timesteps}"
                )
            images = sample_images(
                trained,
                class_index,
                seeds,
                sampler=cfg.sampler,
                steps=cfg.sample_steps,
                guidance_scale=cfg.guidance_scale,
                batch_size=cfg.sample_batch_size,
                progress=lambda done, total: context.log.info(f"class {class_id}: {done}/{total} images"),
                device=cfg.device,
                dtype=cfg.dtype,
                compile=cfg.compile,
                class_id=class_id,
            )
            provenance = {"images": images, "prompts": None, "negative_prompts": None, "conditioning_image_ids": None}
        else:
            provenance = sample_pretrained(
                context, cfg, generator, class_id, seeds, class_catalog["image_shape"], class_prompts, real_images
            )
            images = provenance["images"]
        failpoint("synthetic_images")
        seconds = time.perf_counter() - started
        context.add_output_metadata(
            {
                "backend": generator["backend"],
                "images": len(images),
                "seconds": round(seconds, 2),
                "images_per_second": round(len(images) / max(seconds, 1e-9), 1),
                "sampler": f"{cfg.sampler} {cfg.sample_steps} steps, guidance {cfg.guidance_scale}",
                "regeneration_round": round_,
                **({"first_prompt": provenance["prompts"][0]} if provenance["prompts"] else {}),
                "preview": dg.MetadataValue.md(grid_markdown(images, f"synthetic {class_id}")),
            }
        )
        return {
            **provenance,
            "class_id": class_id,
            "class_index": class_index,
            "seeds": seeds,
            "generator_id": generator["url"],
            "generator_version": generator["version"],
            "sampler": cfg.sampler,
            "steps": cfg.sample_steps,
            "guidance_scale": cfg.guidance_scale,
            "regeneration_round": round_,
            "seconds": seconds,  # sampling time on `device`: the class's cost (lib.cost)
            "device": resolve_device(cfg.device),
        }

    return [generator, synthetic_images]
