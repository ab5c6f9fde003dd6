"""How long a run will take on this machine, measured before it starts: a few timed steps of each model.

The generator, the judge and the classifiers train for a fixed number of steps, and sampling costs a
fixed amount per image, so a handful of real steps on images of the run's shape, scaled by the
profile's step and image counts, predicts the expensive stages well; the experiment grid that follows the
pipeline (``synthaug run`` with ``experiments.in_run``, ``synthaug experiment``) is priced at the classifier's
step. Scoring, evaluation and Dagster's own overhead are not included (seconds on the small profiles).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from synthaug_pipeline.lib.config import Profile
from synthaug_pipeline.lib.faults import suspended
from synthaug_pipeline.lib.progress import duration

TIMED_STEPS = 3


@dataclass
class RunEstimate:
    parts: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> (what, seconds)
    measured_in: float = 0.0

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds in self.parts.values())

    def describe(self) -> str:
        if not self.parts:
            return "estimate: nothing left to train or sample"
        parts = ", ".join(f"{name} {what} ~{duration(seconds)}" for name, (what, seconds) in self.parts.items())
        return f"estimate: ~{duration(self.total)} on this machine ({parts}; timed in {self.measured_in:.0f}s; scoring not included)"


def _fake_images(n: int, shape: tuple[int, int, int], num_classes: int, rng: np.random.Generator):
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return images, np.arange(n, dtype=np.int64) % num_classes


def _per_step(train) -> tuple[float, object]:
    """Seconds per step of ``train(steps)``: a one-step run (start-up costs) subtracted from a ``1 + TIMED_STEPS`` run.

    A discarded one-step run goes first: the first call in a process pays one-off costs (kernel selection, lazy
    imports, allocator growth) that the later runs do not, and subtracting it made the estimate ~0 s per step.
    Should the difference still come out at or below 0 (a noisy machine), the longer run's mean step is used.
    """
    train(1)
    first = train(1)
    timed = train(1 + TIMED_STEPS)
    difference = timed.seconds - first.seconds
    per_step = difference / TIMED_STEPS if difference > 0 else timed.seconds / (1 + TIMED_STEPS)
    return per_step, timed


def estimate_run(
    profile: Profile,
    num_classes: int,
    image_shape: tuple[int, int, int],
    device: str = "cpu",
    *,
    generator: bool = True,
    judge: bool = True,
    sample_classes: int | None = None,
    classifiers: bool = True,
    experiment_runs: int = 0,
) -> RunEstimate:
    """Time ``TIMED_STEPS`` steps of every model the run will train (the flags drop what is reused) and scale them.

    ``experiment_runs``: grid points (``experiments.*``) trained after the pipeline, each a classifier of
    ``profile.classifier``'s steps (a control arm's own generator is not included).
    """
    with suspended():
        estimate = _estimate(profile, num_classes, image_shape, device, generator, judge, sample_classes, classifiers, experiment_runs)
    return estimate


def _estimate(profile, num_classes, image_shape, device, generator, judge, sample_classes, classifiers, experiment_runs) -> RunEstimate:
    from synthaug_pipeline.lib.classifier import train_classifier
    from synthaug_pipeline.lib.diffusion import train_generator
    from synthaug_pipeline.lib.diffusion_sampling import sample_images

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    estimate = RunEstimate()
    gen = profile.generator
    sample_classes = num_classes if sample_classes is None else sample_classes
    if gen.backend == "ddpm" and (generator or sample_classes):
        images, labels = _fake_images(min(gen.batch_size, 256), tuple(image_shape), num_classes, rng)
        per_step, timed = _per_step(
            lambda steps: train_generator(
                images, labels, num_classes, gen.model_copy(update={"train_steps": steps, "warmup_steps": 0}), device=device
            )
        )
        if generator:
            estimate.parts["generator"] = (f"{gen.train_steps} steps", per_step * gen.train_steps)
        if sample_classes:
            count = min(gen.images_per_class, gen.sample_batch_size, 16)
            sample_images(timed, 0, [0], gen.sampler, gen.sample_steps, gen.guidance_scale, device=device)  # warm-up
            begin = time.perf_counter()
            seeds = list(range(count))
            sample_images(timed, 0, seeds, gen.sampler, gen.sample_steps, gen.guidance_scale, gen.sample_batch_size, device=device)
            per_image = (time.perf_counter() - begin) / count
            total_images = gen.images_per_class * sample_classes
            estimate.parts["sampling"] = (f"{total_images} images", per_image * total_images)

    def classifier_step(cfg) -> float:  # the judge and every classifier train with lib.classifier
        images, labels = _fake_images(max(num_classes, 2 * cfg.batch_size), tuple(image_shape), num_classes, rng)
        per_step, _ = _per_step(
            lambda steps: train_classifier(images, labels, num_classes, cfg.model_copy(update={"steps": steps, "early_stopping_every": None}), device=device)
        )
        return per_step

    if num_classes >= 2:  # one class trains no judge and no classifier
        if judge and not profile.judge.pretrained:  # a pretrained judge is not trained
            estimate.parts["judge"] = (f"{profile.judge.steps} steps", classifier_step(profile.judge) * profile.judge.steps)
        runs = {"classifiers": 2 if classifiers else 0, "experiments": experiment_runs}  # one timed step prices both
        if any(runs.values()):
            steps = profile.classifier.steps
            seconds = classifier_step(profile.classifier) * steps
            estimate.parts.update({name: (f"{count} x {steps} steps", seconds * count) for name, count in runs.items() if count})
    estimate.measured_in = time.perf_counter() - started
    return estimate
