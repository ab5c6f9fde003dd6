"""Prompts: each class's unambiguous name and its diversified text prompts."""

import functools

import dagster as dg

from synthaug_pipeline.defs.resources import SynthaugSettings, default_device, log_warning
from synthaug_pipeline.lib.class_prompts import make_class_prompts
from synthaug_pipeline.lib.clip_score import load_clip_scorer
from synthaug_pipeline.lib.prompt_llm import ChatFn, http_chat, local_chat
from synthaug_pipeline.lib.prompts import Prompt, describe_class


def prompts_markdown(prompts: list[Prompt]) -> str:
    """Prompts as a markdown table (text, template, context, style, source)."""

    def cell(value: str | None) -> str:
        return "" if value is None else value.replace("|", "\\|").replace("\n", " ")

    rows = [
        f"| {i} | {cell(p.text)} | {cell(p.template)} | {cell(p.context)} | {cell(p.style)} | {p.source} |" for i, p in enumerate(prompts)
    ]
    return "| # | prompt | template | context | style | source |\n|---|---|---|---|---|---|\n" + "\n".join(rows)


@functools.lru_cache(maxsize=1)
def cached_chat(model: str | None, url: str | None, api_key_env: str | None, timeout_s: float, seed: int) -> tuple[ChatFn, str]:
    # one language-model load (or endpoint client) per process serves every class partition of a run
    if url:
        return http_chat(url, model, api_key_env=api_key_env, timeout_s=timeout_s, seed=seed), f"llm:{url}#{model or 'default'}"
    return local_chat(model, seed=seed, device=default_device()), f"llm:{model}"


def build_prompt_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(partitions_def=partitions, group_name="prompts", kinds={"python"})
    def class_prompts(context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict, real_images: dict) -> dict:
        """One class's name (WordNet, or the candidate CLIP matches best to its real images, with every candidate's score)
        and its prompts: an LLM's variations when prompts.llm is set, templates x contexts x styles for the rest."""
        profile = settings.load()
        cfg = profile.prompts
        class_id = context.partition_key
        class_index = class_catalog["class_ids"].index(class_id)
        description = describe_class(class_id, class_catalog["class_names"][class_index], profile.data.source, use_glosses=cfg.use_glosses)
        chat, source = None, None
        if cfg.llm or cfg.llm_url:
            chat, source = cached_chat(cfg.llm, cfg.llm_url, cfg.llm_api_key_env, cfg.llm_timeout_s, cfg.seed)
        clip = None
        if cfg.clip_model:
            clip = load_clip_scorer(cfg.clip_model, cfg.clip_pretrained, 256, default_device(), section="prompts")
        made = make_class_prompts(
            description,
            cfg,
            chat=chat,
            chat_source=source,
            cache_url=cfg.llm_cache or f"{profile.output_url.rstrip('/')}/prompt_cache",
            clip=clip,
            real_images=real_images.get("train"),
        )
        if made.llm_fallback:
            log_warning(context, f"class {class_id}: {made.llm_fallback}")
        prompts = made.prompts
        context.add_output_metadata(
            {
                "disambiguated_name": made.description.disambiguated_name,
                "name_reason": made.choice.reason,
                "name_candidates": dg.MetadataValue.json(made.choice.as_dict()["candidates"]),
                "gloss": description.gloss or "",
                "name_source": description.name_source,
                "clip_prompt": made.clip_prompt,
                "wordnet_full_index": made.record()["wordnet_full_index"],
                "num_prompts": len(prompts),
                "unique_prompts": len({p.text for p in prompts}),
                "llm_prompts": sum(p.source != "template" for p in prompts),
                **({"llm": dg.MetadataValue.json(made.llm)} if made.llm else {}),
                **({"llm_fallback": made.llm_fallback} if made.llm_fallback else {}),
                "prompts": dg.MetadataValue.md(prompts_markdown(prompts)),
            }
        )
        return {**made.record(), "class_index": class_index, "seed": cfg.seed, "llm": cfg.llm}

    return [class_prompts]
