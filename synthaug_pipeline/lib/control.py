"""The same-data control generator: a DDPM trained only on the few-shot images of one seed.

The headline asks whether synthetic images help *because the generator learned from more data* than the
classifier sees. A generator that saw exactly the classifier's few-shot images answers the other half: the
gain it gives is what diffusion sampling adds as an augmentation. It is trained with the profile's generator
settings (architecture, schedule, sampler, guidance) for ``experiments.control_train_steps`` steps, on the
real subset :func:`~synthaug_pipeline.lib.experiments.few_shot_subset` draws for that seed (the same one every
arm of the seed trains on), and samples :func:`~synthaug_pipeline.lib.experiments.control_images_per_class` images
per class (what the grid draws, unless set) with the pipeline's per-image seeds. Its samples are not filtered: the pipeline's judge saw the full training split,
and filtering with it would hand the control the knowledge it is meant to lack.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from synthaug_pipeline.lib.config import Profile
from synthaug_pipeline.lib.diffusion import TrainedGenerator, resolve_device, train_generator
from synthaug_pipeline.lib.diffusion_sampling import image_seed, sample_images
from synthaug_pipeline.lib.experiments import control_images_per_class


@dataclass
class ControlSamples:
    """A control generator's images (uint8 ``[N, H, W, C]``), their class indices and what it cost."""

    images: np.ndarray
    labels: np.ndarray
    real_indices: np.ndarray  # the training images it saw (rows of the stacked real training split)
    generator: TrainedGenerator
    train_seconds: float
    sample_seconds: float


def train_control(
    profile: Profile,
    images: np.ndarray,
    labels: np.ndarray,
    real_indices: np.ndarray,
    class_ids: list[str],
    save: Callable[[TrainedGenerator], str],
    progress: Callable[[str], None] | None = None,
) -> ControlSamples:
    """Train the control generator on ``images[real_indices]``, ``save`` it (which sets the version every image
    seed derives from, as for the pipeline's generator) and sample its images for every class."""
    if profile.generator.backend != "ddpm":
        raise ValueError(f"the control arm trains a DDPM on the few-shot images; generator.backend={profile.generator.backend} is not one")
    cfg = profile.generator.model_copy(update={"train_steps": profile.experiments.control_train_steps, "init_from": None})
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    generator = train_generator(
        images[real_indices],
        labels[real_indices],
        len(class_ids),
        cfg,
        progress=(lambda step, loss: progress(f"control generator step {step}/{cfg.train_steps}, loss {loss:.4f}")) if progress else None,
        device=device,
    )
    generator.config["class_ids"] = list(class_ids)
    save(generator)
    train_seconds = time.perf_counter() - started
    per_class = control_images_per_class(profile.experiments)
    started = time.perf_counter()
    samples, sample_labels = [], []
    for index, class_id in enumerate(class_ids):
        seeds = [image_seed(class_id, i, generator.version) for i in range(per_class)]
        samples.append(
            sample_images(
                generator,
                index,
                seeds,
                sampler=cfg.sampler,
                steps=cfg.sample_steps,
                guidance_scale=cfg.guidance_scale,
                batch_size=cfg.sample_batch_size,
                device=device,
                class_id=class_id,
            )
        )
        sample_labels.append(np.full(per_class, index, dtype=np.int64))
        if progress:
            progress(f"control generator: class {class_id} sampled ({per_class} images)")
    return ControlSamples(
        np.concatenate(samples), np.concatenate(sample_labels), np.asarray(real_indices, np.int64), generator, train_seconds,
        time.perf_counter() - started,
    )
