"""Prompts: each class's unambiguous name and its diversified text prompts."""

import dagster as dg

from synthaug_pipeline.defs.io_managers import Partitions, PerPartition
from synthaug_pipeline.defs.resources import ModelsResource, SynthaugSettings, add_partition_metadata, default_device, log_warning
from synthaug_pipeline.lib.class_names import describe_class
from synthaug_pipeline.lib.class_prompts import make_class_prompts
from synthaug_pipeline.lib.prompts import Prompt


def prompts_markdown(prompts: list[Prompt]) -> str:
    """Prompts as a markdown table (text, template, context, style, source)."""

    def cell(value: str | None) -> str:
        return "" if value is None else value.replace("|", "\\|").replace("\n", " ")

    rows = [
        f"| {i} | {cell(p.text)} | {cell(p.template)} | {cell(p.context)} | {cell(p.style)} | {p.source} |" for i, p in enumerate(prompts)
    ]
    return "| # | prompt | template | context | style | source |\n|---|---|---|---|---|---|\n" + "\n".join(rows)


def build_prompt_assets(partitions: dg.PartitionsDefinition, backfill_policy: dg.BackfillPolicy | None = None) -> list[dg.AssetsDefinition]:
    @dg.asset(partitions_def=partitions, group_name="prompts", kinds={"python"}, backfill_policy=backfill_policy)
    def class_prompts(
        context: dg.AssetExecutionContext,
        settings: SynthaugSettings,
        models: ModelsResource,
        class_catalog: dict,
        real_images: Partitions,
    ) -> PerPartition:
        """Each class's name (WordNet, or the candidate CLIP matches best to its real images, with every candidate's score)
        and its prompts: an LLM's variations when prompts.llm is set, templates x contexts x styles for the rest."""
        profile = settings.load()
        cfg = profile.prompts
        chat, source = None, None
        if cfg.llm or cfg.llm_url:
            chat, source = models.chat(cfg.llm, cfg.llm_url, cfg.llm_api_key_env, cfg.llm_timeout_s, cfg.seed)
        clip = models.clip(cfg.clip_model, cfg.clip_pretrained, 256, default_device(), section="prompts") if cfg.clip_model else None
        values = PerPartition()
        for class_id in context.partition_keys:
            class_index = class_catalog["class_ids"].index(class_id)
            description = describe_class(
                class_id, class_catalog["class_names"][class_index], profile.data.source, use_glosses=cfg.use_glosses
            )
            made = make_class_prompts(
                description,
                cfg,
                chat=chat,
                chat_source=source,
                cache_url=cfg.llm_cache or f"{profile.output_url.rstrip('/')}/prompt_cache",
                clip=clip,
                real_images=real_images[class_id].train if clip is not None and class_id in real_images else None,
            )
            if made.llm_fallback:
                log_warning(context, f"class {class_id}: {made.llm_fallback}")
            prompts = made.prompts
            add_partition_metadata(
                context,
                class_id,
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
                },
            )
            values[class_id] = {**made.record(), "class_index": class_index, "seed": cfg.seed, "llm": cfg.llm}
        return values

    return [class_prompts]
