"""Generation: train the class-conditional diffusion model, then sample each class."""

import time

import dagster as dg
import numpy as np

from synthaug_pipeline.defs.data.assets import stack_real
from synthaug_pipeline.defs.resources import SynthaugSettings, cached_generator, default_device, log_progress, model_url
from synthaug_pipeline.lib.diffusion import image_seed, sample_images, save_generator, train_generator
from synthaug_pipeline.lib.images import grid_markdown
from synthaug_pipeline.lib.plots import line_chart_markdown


def build_generation_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="generation", pool="gpu", kinds={"pytorch", "diffusers"})
    def generator(context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict, real_images: dict[str, dict]) -> dict:
        """A class-conditional DDPM (diffusers UNet2DModel + null class) trained on the real training images."""
        profile = settings.load()
        images, labels = stack_real(real_images, "train")
        cfg = profile.generator

        def progress(step: int, loss: float) -> None:
            log_progress(context, f"generator step {step}/{cfg.train_steps}, loss {loss:.4f}")

        trained = train_generator(images, labels, len(class_catalog["class_ids"]), cfg, progress=progress, device=default_device())
        url = model_url(profile.output_url, "generator", context.run_id)
        version = save_generator(trained, url)
        context.add_output_metadata(
            {
                "url": url,
                "version": version,
                "train_steps": cfg.train_steps,
                "final_loss": float(np.mean(trained.losses[-5:])),
                "num_parameters": trained.num_parameters,
                "seconds": round(trained.seconds, 1),
                "train_images": len(images),
                "loss_curve": dg.MetadataValue.md(line_chart_markdown(trained.losses, "training loss")),
            }
        )
        return {"url": url, "version": version, "backend": cfg.backend, "num_parameters": trained.num_parameters}

    @dg.asset(partitions_def=partitions, group_name="generation", pool="gpu", kinds={"pytorch", "diffusers"})
    def synthetic_images(context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict, generator: dict) -> dict:
        """Sampled images of one class, each with a seed derived from (class, index, generator version)."""
        cfg = settings.load().generator
        class_id = context.partition_key
        class_index = class_catalog["class_ids"].index(class_id)
        model = cached_generator(generator["url"], generator["version"])
        seeds = [image_seed(class_id, i, generator["version"]) for i in range(cfg.images_per_class)]
        started = time.perf_counter()
        images = sample_images(
            model,
            class_index,
            seeds,
            sampler=cfg.sampler,
            steps=cfg.sample_steps,
            guidance_scale=cfg.guidance_scale,
            batch_size=cfg.sample_batch_size,
            progress=lambda done, total: context.log.info(f"class {class_id}: {done}/{total} images"),
            device=default_device(),
        )
        seconds = time.perf_counter() - started
        context.add_output_metadata(
            {
                "images": len(images),
                "seconds": round(seconds, 2),
                "images_per_second": round(len(images) / max(seconds, 1e-9), 1),
                "sampler": f"{cfg.sampler} {cfg.sample_steps} steps, guidance {cfg.guidance_scale}",
                "preview": dg.MetadataValue.md(grid_markdown(images, f"synthetic {class_id}")),
            }
        )
        return {
            "class_id": class_id,
            "class_index": class_index,
            "images": images,
            "seeds": seeds,
            "generator_id": generator["url"],
            "generator_version": generator["version"],
            "sampler": cfg.sampler,
            "steps": cfg.sample_steps,
            "guidance_scale": cfg.guidance_scale,
        }

    return [generator, synthetic_images]
