"""Prompts: each class's unambiguous name and its diversified text prompts."""

import dagster as dg

from synthaug_pipeline.defs.io_managers import PerPartition
from synthaug_pipeline.defs.resources import ModelsResource, SynthaugSettings, add_partition_metadata
from synthaug_pipeline.lib.prompts import Prompt, build_class_prompts, describe_class


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
        context: dg.AssetExecutionContext, settings: SynthaugSettings, models: ModelsResource, class_catalog: dict
    ) -> PerPartition:
        """Each class's disambiguated name (WordNet gloss for ImageNet wnids) and prompts from templates x contexts x styles."""
        profile = settings.load()
        cfg = profile.prompts
        generate = models.text_generator(cfg.llm, cfg.seed) if cfg.llm else None
        values = PerPartition()
        for class_id in context.partition_keys:
            class_index = class_catalog["class_ids"].index(class_id)
            description = describe_class(
                class_id, class_catalog["class_names"][class_index], profile.data.source, use_glosses=cfg.use_glosses
            )
            prompts = build_class_prompts(description, cfg, generate)
            add_partition_metadata(
                context,
                class_id,
                {
                    "disambiguated_name": description.disambiguated_name,
                    "gloss": description.gloss or "",
                    "name_source": description.name_source,
                    "num_prompts": len(prompts),
                    "unique_prompts": len({p.text for p in prompts}),
                    "llm_rewritten": sum(p.source != "template" for p in prompts),
                    "prompts": dg.MetadataValue.md(prompts_markdown(prompts)),
                },
            )
            values[class_id] = {
                **description.as_dict(),
                "class_index": class_index,
                "prompts": [p.as_dict() for p in prompts],
                "seed": cfg.seed,
                "llm": cfg.llm,
            }
        return values

    return [class_prompts]
