"""Prompts: each class's unambiguous name and its diversified text prompts."""

import functools

import dagster as dg

from synthaug_pipeline.defs.metadata import add_metadata
from synthaug_pipeline.defs.resources import SynthaugSettings, default_device
from synthaug_pipeline.lib.prompts import Prompt, TextGenerator, build_class_prompts, describe_class, load_text_generator


def prompts_markdown(prompts: list[Prompt]) -> str:
    """Prompts as a markdown table (text, template, context, style, source)."""

    def cell(value: str | None) -> str:
        return "" if value is None else value.replace("|", "\\|").replace("\n", " ")

    rows = [
        f"| {i} | {cell(p.text)} | {cell(p.template)} | {cell(p.context)} | {cell(p.style)} | {p.source} |" for i, p in enumerate(prompts)
    ]
    return "| # | prompt | template | context | style | source |\n|---|---|---|---|---|---|\n" + "\n".join(rows)


@functools.lru_cache(maxsize=1)
def cached_text_generator(model: str, seed: int) -> TextGenerator:
    # one language-model load per process serves every class partition of a run
    return load_text_generator(model, seed=seed, device=default_device())


def build_prompt_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(partitions_def=partitions, group_name="prompts", kinds={"python"})
    def class_prompts(context: dg.AssetExecutionContext, settings: SynthaugSettings, class_catalog: dict) -> dict:
        """One class's disambiguated name (WordNet gloss for ImageNet wnids) and prompts from templates x contexts x styles."""
        profile = settings.load()
        cfg = profile.prompts
        class_id = context.partition_key
        class_index = class_catalog["class_ids"].index(class_id)
        description = describe_class(class_id, class_catalog["class_names"][class_index], profile.data.source, use_glosses=cfg.use_glosses)
        generate = cached_text_generator(cfg.llm, cfg.seed) if cfg.llm else None
        prompts = build_class_prompts(description, cfg, generate)
        add_metadata(context,
            {
                "disambiguated_name": description.disambiguated_name,
                "gloss": description.gloss or "",
                "name_source": description.name_source,
                "num_prompts": len(prompts),
                "unique_prompts": len({p.text for p in prompts}),
                "llm_rewritten": sum(p.source != "template" for p in prompts),
                "prompts": dg.MetadataValue.md(prompts_markdown(prompts)),
            }
        )
        return {
            **description.as_dict(),
            "class_index": class_index,
            "prompts": [p.as_dict() for p in prompts],
            "seed": cfg.seed,
            "llm": cfg.llm,
        }

    return [class_prompts]
