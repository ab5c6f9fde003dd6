"""The pipeline's stages, derived from the asset graph, and one named job per stage.

A stage is a maximal run of assets, in dependency order, that share a partitioning: the unpartitioned
catalog, then the per-class real images and prompts, then the shared models, then the per-class
synthetic images, scores and shards, then the classifiers and the report. Nothing is typed twice: a new
asset joins the stage its dependencies and partitioning put it in. ``synthaug run`` launches these jobs
(``synthaug_<stage>``), so its runs are ordinary runs of named jobs in the UI (timeline, re-execute).
Assets partitioned otherwise (the experiment grid) have their own job and are not a stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

# What each stage does, for the terminal: the first of these assets a stage holds names it (a stage
# without one is described by its asset names).
_DESCRIPTIONS = {
    "class_catalog": ("catalog", "load the dataset and list classes"),
    "real_images": ("real images", "split real images per class"),
    "generator": ("models", "train the judge and the diffusion generator"),
    "synthetic_shards": ("synthetic", "write prompts, sample, score, filter and write shards per class"),
    "report": ("classifiers", "train, evaluate, report"),
}


@dataclass(frozen=True)
class Stage:
    """Assets materialized together; ``per_class`` stages run once per batch of class partitions."""

    name: str
    assets: tuple[str, ...]
    per_class: bool
    description: str

    @property
    def job_name(self) -> str:
        return "synthaug_" + self.name.replace(" ", "_")


def derive_stages(assets: list[dg.AssetsDefinition], partitions: dg.PartitionsDefinition) -> tuple[Stage, ...]:
    """Stages of the class pipeline (assets unpartitioned or partitioned by ``partitions``), in run order.

    Layers are built as early as dependencies allow, then each asset moves as late as its consumers allow
    (a model nothing per-class needs trains with the classifiers, prompts are written with the real images).
    """
    parents: dict[str, set[str]] = {}
    per_class: dict[str, bool] = {}
    order: list[str] = []
    for definition in assets:
        for key in definition.keys:
            name = key.to_user_string()
            order.append(name)
            per_class[name] = definition.partitions_def is not None
            parents[name] = {dep.to_user_string() for dep in definition.asset_deps[key]}
            if definition.partitions_def not in (None, partitions):
                per_class[name] = None  # partitioned otherwise: not a stage of the class pipeline
    # assets fed by something outside the class pipeline (the experiment summary) are not in it either
    inside = {a for a in order if per_class[a] is not None}
    changed = True
    while changed:
        changed = False
        for a in list(inside):
            if not parents[a] <= inside and parents[a] & set(order):
                inside.discard(a)
                changed = True
    order = [a for a in order if a in inside]
    children = {a: {b for b in order if a in parents[b]} for a in order}

    stage_of: dict[str, int] = {}
    kinds: list[bool] = []
    while len(stage_of) < len(order):
        ready = [a for a in order if a not in stage_of and parents[a] & inside <= set(stage_of)]
        if not ready:
            raise ValueError(f"the asset graph has a cycle among {sorted(inside - set(stage_of))}")
        kind, index = per_class[ready[0]], len(kinds)
        kinds.append(kind)
        grown = True
        while grown:  # absorb what depends only on earlier stages and this one, with the same partitioning
            grown = False
            for a in order:
                if a not in stage_of and per_class[a] == kind and all(p in stage_of for p in parents[a] & inside):
                    stage_of[a] = index
                    grown = True
    for a in reversed(order):  # as late as every consumer allows
        limit = min((stage_of[c] for c in children[a]), default=len(kinds) - 1)
        stage_of[a] = max(s for s in range(stage_of[a], limit + 1) if kinds[s] == per_class[a] and (s < limit or kinds[limit] == per_class[a]))
    stages = []
    for index, kind in enumerate(kinds):
        members = tuple(a for a in order if stage_of[a] == index)
        if not members:
            continue
        name, description = next(
            (_DESCRIPTIONS[a] for a in _DESCRIPTIONS if a in members), (members[0], "materialize " + ", ".join(members))
        )
        stages.append(Stage(name, members, kind, description))
    return tuple(stages)


def stage_jobs(
    assets: list[dg.AssetsDefinition], partitions: dg.PartitionsDefinition, retry_policy: dg.RetryPolicy | None = None
) -> list[dg.UnresolvedAssetJobDefinition]:
    """One job per stage, named ``synthaug_<stage>``; per-class stage jobs are partitioned by class. ``retry_policy``:
    the profile's step retries (execution.step_retries)."""
    return [
        dg.define_asset_job(
            stage.job_name,
            selection=dg.AssetSelection.assets(*stage.assets),
            partitions_def=partitions if stage.per_class else None,
            description=f"Stage '{stage.name}' of `synthaug run`: {stage.description}.",
            tags={"synthaug/stage": stage.name},
            op_retry_policy=retry_policy,
        )
        for stage in derive_stages(assets, partitions)
    ]
