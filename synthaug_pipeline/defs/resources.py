"""Resources shared by every stage: the active profile and in-process caches."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import dagster as dg
from pydantic import Field

from synthaug_pipeline.lib.config import DEFAULT_PROFILE, Profile, load_profile
from synthaug_pipeline.lib.datasets import EMBEDDED_SOURCES, Dataset, load_dataset
from synthaug_pipeline.lib.model_store import PROCESS_STORE, ModelRef
from synthaug_pipeline.lib.progress import Eta
from synthaug_pipeline.lib.redaction import redact_url
from synthaug_pipeline.lib.storage import configure_output_storage


class SynthaugSettings(dg.ConfigurableResource):
    """The active profile: a packaged profile name (or a YAML path) plus key=value overrides."""

    profile: str = Field(default=DEFAULT_PROFILE, description="Profile name (digits, fashion, folder) or path to a profile YAML.")
    overrides: list[str] = Field(default_factory=list, description="key=value settings applied on top of the profile.")

    def load(self) -> Profile:
        profile = _profile(self.profile, tuple(self.overrides))
        configure_output_storage(profile.output)  # S3 endpoint, timeouts, retries for every URL this run opens
        return profile

    def dataset(self, classes: list[str] | None = None) -> Dataset:
        """The profile's dataset with the pixels of ``classes`` (None: every class; ``[]``: the listing only).

        A folder, Parquet or ImageNet source decodes only those classes, so a step holds its batch's images, not the
        dataset's; digits and Fashion-MNIST are small and decoded whole once per process whatever is asked.
        """
        data = self.load().data
        decode = None if classes is None or data.source in EMBEDDED_SOURCES else tuple(classes)
        return _dataset(data.model_dump_json(), decode)


@functools.lru_cache(maxsize=8)
def _profile(name: str, overrides: tuple[str, ...]) -> Profile:
    return load_profile(name, list(overrides))


@functools.lru_cache(maxsize=2)
def _dataset(data_json: str, decode: tuple[str, ...] | None) -> Dataset:
    # one decode per process and class batch serves every class partition of the step
    from synthaug_pipeline.lib.config import DataConfig

    return load_dataset(DataConfig.model_validate(json.loads(data_json)), None if decode is None else list(decode))


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelsResource(dg.ConfigurableResource):
    """Every model a step uses, loaded once per process (see :mod:`synthaug_pipeline.lib.model_store`).

    With the in-process executor (the default) a run is one process, so a batched backfill of N classes
    loads the generator, judge, CLIP model and language model once each.
    """

    def generator(self, ref: ModelRef):
        """The DDPM a ``generator`` asset trained (``ref``)."""
        from synthaug_pipeline.lib.diffusion_store import load_generator

        return PROCESS_STORE.versioned("generator", ref.url, ref.version, load_generator)

    def classifier(self, ref: ModelRef):
        """A judge or classifier an asset trained (``ref``)."""
        from synthaug_pipeline.lib.classifier import load_classifier

        return PROCESS_STORE.versioned(ref.role, ref.url, ref.version, load_classifier)

    def pretrained(
        self, kind: str, model: str | None, dtype: str, device: str, compile: bool, revision: str | None = None, safety_checker: str = "record"
    ):
        """A pretrained diffusers pipeline (``generator.model`` at ``generator.revision``). The lib loader checks the
        folder's content version on every call (cached beside the folder), so a rewritten folder is reloaded."""
        from synthaug_pipeline.lib.pretrained import load_pretrained

        loaded = load_pretrained(kind, model, dtype, device, compile, revision=revision, safety_checker=safety_checker)
        # counted once per (pipeline, version); the lib's own cache holds it, so a replaced version is freed there
        PROCESS_STORE.record_load("pretrained_generator", (kind, model, revision, loaded.version, dtype, device, bool(compile)))
        return loaded

    def clip(self, model: str, pretrained: str | None, batch_size: int, device: str, section: str = "scoring"):
        """An open_clip scorer (``section`` names the settings in errors: scoring.clip_model or prompts.clip_model)."""
        from synthaug_pipeline.lib.clip_score import load_clip_scorer

        key = (model, pretrained, batch_size, device)
        return PROCESS_STORE.get("clip", key, lambda: load_clip_scorer(model, pretrained, batch_size, device, section=section))

    def chat(self, model: str | None, url: str | None, api_key_env: str | None, timeout_s: float, seed: int):
        """``(chat function, source name)``: an OpenAI-compatible endpoint when ``url`` is set, else a local chat model."""
        from synthaug_pipeline.lib.prompt_llm import http_chat, local_chat

        def load():
            if url:
                return http_chat(url, model, api_key_env=api_key_env, timeout_s=timeout_s, seed=seed), f"llm:{url}#{model or 'default'}"
            return local_chat(model, seed=seed, device=default_device()), f"llm:{model}"

        return PROCESS_STORE.get("llm", (model, url, api_key_env, timeout_s, seed), load)


def latest_materialization(instance: dg.DagsterInstance, asset: str, partition: str | None = None):
    """The newest materialization record of ``asset`` (of one ``partition`` when given), or None."""
    key = dg.AssetKey(asset)
    records_filter = key if partition is None else dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition])
    records = instance.fetch_materializations(records_filter, limit=1).records
    return records[0] if records else None


def add_partition_metadata(context: dg.AssetExecutionContext, partition: str, metadata: dict) -> None:
    """Metadata of one class partition's materialization (a batched step materializes several): floats rounded,
    at most 256 KB (:func:`~synthaug_pipeline.lib.metadata.bounded_metadata`)."""
    from synthaug_pipeline.lib.metadata import bounded_metadata

    if list(context.partition_keys) == [partition]:  # a one-class step (also a direct invocation in tests)
        context.add_output_metadata(bounded_metadata(metadata), output_name="result")  # "result": an asset's one output
    else:
        context.add_asset_metadata(bounded_metadata(metadata), partition_key=partition)


def model_url(output_url: str, name: str, run_id: str) -> str:
    """Where a model trained by run ``run_id`` lives: never overwritten by a later run."""
    return f"{output_url.rstrip('/')}/models/{name}/{run_id[:8]}"


# A listener for progress lines, set by `synthaug run` so long stages are not silent in the
# terminal; Dagster's own logs (the UI) get every line either way.
_progress_listener: Callable[[str], None] | None = None


def set_progress_listener(listener: Callable[[str], None] | None) -> None:
    global _progress_listener
    _progress_listener = listener


def log_progress(context: dg.AssetExecutionContext, message: str) -> None:
    """Log a progress line to the run's logs and, under `synthaug run`, to the terminal."""
    message = redact_url(message)
    context.log.info(message)
    if _progress_listener is not None:
        _progress_listener(message)


def log_warning(context: dg.AssetExecutionContext, message: str) -> None:
    """A warning in the run's logs and, under `synthaug run`, in the terminal (whose Dagster console logger is silent)."""
    context.log.warning(message)
    if _progress_listener is not None:
        _progress_listener(f"warning: {message}")


def training_progress(context: dg.AssetExecutionContext, name: str) -> Callable[[int, int, float], None]:
    """A ``progress(step, total, loss)`` callback that logs the first call, about four lines per training run,
    and a line at least every 30 s, each with the time left."""
    eta: Eta | None = None

    def report(step: int, total: int, loss: float) -> None:
        nonlocal eta
        first = eta is None
        eta = eta or Eta(total, first_done=step)
        if first or eta.due(step, max(1, total // 4)) or step == total:
            log_progress(context, f"{name} step {step}/{total}, loss {loss:.4f}, {eta.text(step)}")

    return report
