"""Generation: the generator (a DDPM trained here, or a pretrained diffusers pipeline), then each class's samples.

``generator.backend`` picks the generator: ``ddpm`` trains a class-conditional DDPM on the real images;
``dit``, ``text2img`` and ``img2img`` (``image_variation`` for its image-embedding variant) load a
pretrained pipeline from ``generator.model`` once per process (see :mod:`synthaug_pipeline.lib.pretrained`) and samples
it with :mod:`synthaug_pipeline.lib.pretrained_sampling`.
"""

import time

import dagster as dg
import numpy as np
from pydantic import Field

from synthaug_pipeline.defs.io_managers import PerPartition, Partitions
from synthaug_pipeline.defs.metadata import add_metadata
from synthaug_pipeline.defs.resources import (
    ModelsResource,
    SynthaugSettings,
    add_partition_metadata,
    log_progress,
    log_warning,
    model_url,
)
from synthaug_pipeline.lib.conditioning import conditioning_images, pixel_ids
from synthaug_pipeline.lib.config import GeneratorConfig, Profile
from synthaug_pipeline.lib.class_splits import spill_classes
from synthaug_pipeline.lib.datasets import RealClass
from synthaug_pipeline.lib.diffusion import SyntheticClass, resolve_device, train_generator
from synthaug_pipeline.lib.diffusion_sampling import image_seed, sample_images
from synthaug_pipeline.lib.diffusion_store import load_generator, save_generator
from synthaug_pipeline.lib.faults import failpoint
from synthaug_pipeline.lib.images import grid_markdown
from synthaug_pipeline.lib.plots import line_chart_markdown
from synthaug_pipeline.lib.pretrained import pipeline_kind
from synthaug_pipeline.lib.pretrained_sampling import generate_class, per_image
from synthaug_pipeline.lib.pretrained_settings import (
    SamplingSettings,
    dit_class_indices,
    dit_num_labels,
    make_pretrained_scheduler,
    validate_settings,
)
from synthaug_pipeline.lib.model_store import ModelRef
from synthaug_pipeline.lib.progress import Eta
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


def train_ddpm_generator(
    context: dg.AssetExecutionContext, profile: Profile, class_ids: list[str], real_images: Partitions
) -> ModelRef:
    """Train (or, with ``generator.init_from``, fine-tune) the class-conditional DDPM on every class's real
    training images and save it under the run's id."""
    cfg = profile.generator
    init_from = load_init_generator(cfg, class_ids) if cfg.init_from else None  # fail before reading images
    # read one class at a time into a spill file (lib.class_splits); the DDPM trainer (tiny images only) then holds its
    # training set on the device
    real = spill_classes(real_images, ("train",))["train"]
    images, labels = np.array(real.images), real.labels

    eta = Eta(cfg.train_steps)

    def progress(step: int, loss: float) -> None:
        log_progress(context, f"generator step {step}/{cfg.train_steps}, loss {loss:.4f}, {eta.text(step)}")

    if init_from is not None:
        log_progress(context, f"generator: fine-tuning {cfg.init_from} (version {init_from.version})")
    trained = train_generator(
        images, labels, len(class_ids), cfg, progress=progress, device=str(resolve_device(cfg.device)), init_from=init_from
    )
    trained.config["class_ids"] = list(class_ids)  # lets a later generator.init_from check the label order
    url = model_url(profile.output_url, "generator", context.run_id)
    version = save_generator(trained, url)
    lineage = {"init_from": cfg.init_from, "init_from_version": init_from.version if init_from is not None else None}
    add_metadata(context,
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
    return ModelRef(
        role="generator",
        url=url,
        version=version,
        model="ddpm",
        num_parameters=trained.num_parameters,
        # seconds and device: the generator's share of the run's cost (lib.cost)
        details={"backend": "ddpm", "kind": "ddpm", **lineage, "seconds": trained.seconds, "device": str(resolve_device(cfg.device))},
    )


def load_pretrained_generator(
    context: dg.AssetExecutionContext, models: ModelsResource, cfg: GeneratorConfig, class_ids: list[str]
) -> ModelRef:
    """Load ``generator.model`` and check, before any class is sampled, that the settings and every class work."""
    kind = pipeline_kind(cfg)
    loaded = models.pretrained(kind, cfg.model, cfg.dtype, cfg.device, cfg.compile, revision=cfg.revision, safety_checker=cfg.safety_checker)
    settings = SamplingSettings.from_config(cfg, loaded.family)
    validate_settings(loaded, settings)
    class_indices = dit_class_indices(class_ids, dit_num_labels(loaded), cfg.class_index_map) if kind == "dit" else None
    scheduler = make_pretrained_scheduler(settings.sampler, loaded.scheduler_config)
    facts = loaded.describe()
    add_metadata(context,
        {
            "backend": cfg.backend,
            **{k: v for k, v in facts.items() if k != "load_seconds" and v is not None},
            "scheduler": f"{settings.sampler} ({type(scheduler).__name__}, from the model's scheduler config)",
            "sampling": dg.MetadataValue.json(settings.describe()),
            "load_seconds": round(loaded.load_seconds, 2),
            **({"class_indices": dg.MetadataValue.json(class_indices)} if class_indices else {}),
        }
    )
    return ModelRef(
        role="generator",
        url=str(cfg.model),
        version=loaded.version,
        model=cfg.backend,
        num_parameters=loaded.num_parameters,
        details={
            "backend": cfg.backend,
            "kind": kind,
            "dtype": cfg.dtype,
            "revision": loaded.revision,
            "family": loaded.family,
            "class_indices": class_indices,
            "seconds": loaded.load_seconds,
            "device": str(resolve_device(cfg.device)),
        },
    )


PER_IMAGE_KEYS = ("images", "seeds", "prompts", "negative_prompts", "conditioning_image_ids", "batch_sizes", "safety_flagged")


def drop_flagged(record: dict, flagged: np.ndarray) -> dict:
    """``record`` without the images the safety checker flagged (generator.safety_checker=drop); their seeds are kept aside."""
    keep = np.flatnonzero(~np.asarray(flagged, dtype=bool))
    out = dict(record)
    for key in PER_IMAGE_KEYS:
        values = record.get(key)
        if values is not None:
            out[key] = values[keep] if isinstance(values, np.ndarray) else [values[i] for i in keep]
    out["safety_dropped_seeds"] = [int(record["seeds"][i]) for i in np.flatnonzero(flagged)]
    return out


def sample_pretrained(
    context: dg.AssetExecutionContext,
    models: ModelsResource,
    cfg: GeneratorConfig,
    generator: ModelRef,
    class_id: str,
    seeds: list[int],
    image_shape: list[int],
    class_prompts: dict,
    real: RealClass,
) -> dict:
    """One class from a pretrained pipeline, with each image's prompt, conditioning image id, batch size and
    safety flag for the shard, and the sampling values used (unset ones from the model family's defaults)."""
    kind = generator.get("kind")
    loaded = models.pretrained(
        kind, generator.url, generator.get("dtype"), cfg.device, cfg.compile, revision=cfg.revision, safety_checker=cfg.safety_checker
    )
    if loaded.version != generator.version:
        raise ValueError(
            f"generator.model {generator.url!r} changed since the generator asset loaded it "
            f"(version {generator.version} -> {loaded.version}): re-materialize generator"
        )
    settings = SamplingSettings.from_config(cfg, loaded.family)
    n = len(seeds)
    prompts = per_image([p["text"] for p in class_prompts["prompts"]], n) if kind in ("text2img", "img2img") else None
    conditioning = None
    if kind in ("img2img", "image_variation"):
        # Provenance names the real image stably: the data asset's ids when it has them, else a pixel hash
        # (a position in the class array shifts when data.train_per_class changes).
        image_ids = real.train_ids
        if image_ids is None:
            image_ids = pixel_ids(real.train, "train")
        conditioning = conditioning_images(
            real.train, class_id, n, cfg.seed, cfg.conditioning_augmentations, image_ids=list(image_ids)
        )
    generated = generate_class(
        loaded,
        class_id,
        seeds,
        settings,
        image_shape,
        class_index=generator.get("class_indices")[class_id] if kind == "dit" else None,
        prompts=prompts,
        conditioning=[c.image for c in conditioning] if conditioning else None,
        progress=lambda done, total: context.log.info(f"class {class_id}: {done}/{total} images"),
        log=lambda message: log_warning(context, message),
    )
    record = {
        "images": generated.images,
        "seeds": list(seeds),
        "prompts": prompts,
        "negative_prompts": [settings.negative_prompt] * n if prompts else None,
        "conditioning_image_ids": [c.provenance for c in conditioning] if conditioning else None,
        "batch_sizes": generated.batch_sizes,
        "safety_flagged": generated.safety_flagged.tolist() if generated.safety_flagged is not None else None,
        "safety_dropped_seeds": [],
        "oom_retries": generated.oom_retries,
        "sampling": settings.describe(),
    }
    if cfg.safety_checker == "drop" and generated.safety_flagged is not None and generated.safety_flagged.any():
        record = drop_flagged(record, generated.safety_flagged)
        log_warning(context, f"class {class_id}: the safety checker flagged {len(record['safety_dropped_seeds'])} images; dropped them")
    return record


class SamplingRunConfig(dg.Config):
    """Launchpad settings of ``synthetic_images`` (the profile holds everything else)."""

    regeneration_round: int = Field(
        0,
        ge=0,
        description="0: the class's first seeds. r > 0: a fresh, reproducible seed set for regenerating the class "
        "with the same generator (the regenerate_worst_classes schedule sets it).",
    )


def _sample_ddpm(context: dg.AssetExecutionContext, models: ModelsResource, cfg: GeneratorConfig, generator: ModelRef,
                 class_id: str, class_index: int, seeds: list[int]) -> dict:
    trained = models.generator(generator)
    timesteps = trained.config["num_train_timesteps"]
    if cfg.sample_steps > timesteps:  # before any sampling: the generator may predate the current settings
        raise ValueError(
            f"generator.sample_steps {cfg.sample_steps} exceeds the num_train_timesteps {timesteps} the generator "
            f"{generator.url} was trained with: set generator.sample_steps <= {timesteps}"
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
    return {
        "images": images,
        "seeds": list(seeds),
        "prompts": None,
        "negative_prompts": None,
        "conditioning_image_ids": None,
        "sampling": {"sampler": cfg.sampler, "steps": cfg.sample_steps, "guidance_scale": cfg.guidance_scale},
    }


def build_generation_assets(
    partitions: dg.PartitionsDefinition, backfill_policy: dg.BackfillPolicy | None = None
) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="generation", pool="gpu", kinds={"pytorch", "diffusers"})
    def generator(
        context: dg.AssetExecutionContext,
        settings: SynthaugSettings,
        models: ModelsResource,
        class_catalog: dict,
        real_images: Partitions,  # of RealClass: read only by the ddpm backend
    ) -> ModelRef:
        """The generator: a class-conditional DDPM trained on the real images (backend ddpm), or a pretrained
        DiT / Stable Diffusion pipeline loaded from generator.model (backends dit, text2img, img2img)."""
        profile = settings.load()
        if profile.generator.backend == "ddpm":
            return train_ddpm_generator(context, profile, class_catalog["class_ids"], real_images)
        return load_pretrained_generator(context, models, profile.generator, class_catalog["class_ids"])

    @dg.asset(
        partitions_def=partitions,
        group_name="generation",
        pool="gpu",
        kinds={"pytorch", "diffusers"},
        backfill_policy=backfill_policy,
    )
    def synthetic_images(
        context: dg.AssetExecutionContext,
        config: SamplingRunConfig,
        settings: SynthaugSettings,
        models: ModelsResource,
        class_catalog: dict,
        generator: ModelRef,
        class_prompts: Partitions,
        real_images: Partitions,
    ) -> PerPartition:
        """Sampled images of each class, each with a seed derived from (class, index, generator version);
        text backends use the class's prompts, img2img augmented real images of the class."""
        cfg = settings.load().generator
        round_ = config.regeneration_round
        values = PerPartition()
        for class_id in context.partition_keys:
            class_index = class_catalog["class_ids"].index(class_id)
            seeds = [image_seed(class_id, i, generator.version, round_) for i in range(cfg.images_per_class)]
            started = time.perf_counter()
            if generator.get("backend") == "ddpm":
                provenance = _sample_ddpm(context, models, cfg, generator, class_id, class_index, seeds)
            else:
                provenance = sample_pretrained(
                    context,
                    models,
                    cfg,
                    generator,
                    class_id,
                    seeds,
                    class_catalog["image_shape"],
                    class_prompts[class_id],
                    real_images[class_id],
                )
            images, sampling = provenance["images"], provenance["sampling"]
            failpoint("synthetic_images")
            seconds = time.perf_counter() - started
            flagged = provenance.get("safety_flagged")
            add_partition_metadata(
                context,
                class_id,
                {
                    "backend": generator.get("backend"),
                    "images": len(images),
                    "seconds": round(seconds, 2),
                    "images_per_second": round(len(images) / max(seconds, 1e-9), 1),
                    "sampler": f"{sampling['sampler']} {sampling['steps']} steps, guidance {sampling['guidance_scale']}",
                    **({"sampling": dg.MetadataValue.json(sampling)} if "family" in sampling else {}),
                    "regeneration_round": round_,
                    **({"first_prompt": provenance["prompts"][0]} if provenance["prompts"] else {}),
                    **({"safety_flagged": int(sum(flagged))} if flagged is not None else {}),
                    **({"safety_dropped_seeds": provenance["safety_dropped_seeds"]} if provenance.get("safety_dropped_seeds") else {}),
                    **({"oom_retries": provenance["oom_retries"]} if provenance.get("oom_retries") else {}),
                    "preview": dg.MetadataValue.md(grid_markdown(images, f"synthetic {class_id}")),
                },
            )
            values[class_id] = SyntheticClass(
                class_id=class_id,
                class_index=class_index,
                images=images,
                seeds=list(provenance["seeds"]),
                backend=generator.get("backend"),
                generator_id=generator.url,
                generator_version=generator.version,
                sampler=sampling["sampler"],
                steps=sampling["steps"],
                guidance_scale=sampling["guidance_scale"],
                regeneration_round=round_,
                prompts=provenance["prompts"],
                negative_prompts=provenance["negative_prompts"],
                conditioning_image_ids=provenance["conditioning_image_ids"],
                seconds=seconds,  # sampling time on `device`: the class's cost (lib.cost)
                device=str(resolve_device(cfg.device)),
                generator_revision=generator.get("revision"),
                generator_dtype=generator.get("dtype", cfg.dtype),
                # the text CLIP compares images with when they had no prompt (ddpm, DiT): the class's disambiguated name
                clip_prompt=class_prompts[class_id].get("clip_prompt") if class_id in class_prompts else None,
                batch_sizes=provenance.get("batch_sizes"),
                safety_flagged=provenance.get("safety_flagged"),
                safety_dropped_seeds=provenance.get("safety_dropped_seeds") or [],
                oom_retries=provenance.get("oom_retries") or 0,
            )
        return values

    return [generator, synthetic_images]
