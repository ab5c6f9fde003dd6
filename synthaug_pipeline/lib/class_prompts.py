"""One class's prompts end to end: candidate names, an optional LLM, optional CLIP ranking, the prompts.

:func:`make_class_prompts` is what the ``class_prompts`` asset runs. Inputs are explicit (a chat function,
a CLIP scorer, real images), so a model-store resource can own the models. Every prompt records what
produced it (``template`` or ``llm:<model>``); the chosen name records every candidate's score and why it
won; an LLM that failed leaves the WordNet prompts and says why in :attr:`ClassPrompts.llm`.
Pure module: no Dagster.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from synthaug_pipeline.lib.class_names import ClassDescription, wordnet_noun_senses
from synthaug_pipeline.lib.clip_score import ClipScorer
from synthaug_pipeline.lib.config import PromptsConfig
from synthaug_pipeline.lib.name_ranking import NameChoice, choose_name, name_candidates, rank_names
from synthaug_pipeline.lib.prompt_llm import ChatFn, LlmResult, ask_llm
from synthaug_pipeline.lib.prompts import Prompt, build_class_prompts, clip_prompt


@dataclass
class ClassPrompts:
    description: ClassDescription  # disambiguated_name is the chosen name
    choice: NameChoice
    prompts: list[Prompt]
    clip_prompt: str  # what CLIP compares prompt-less images (ddpm, DiT) with
    llm: dict[str, Any] | None  # LlmResult.describe(), None without prompts.llm

    @property
    def llm_fallback(self) -> str | None:
        """Why the LLM's prompts are not used, when it was asked and failed."""
        if self.llm and self.llm.get("error"):
            return f"LLM failed, WordNet prompts kept: {self.llm['error']}"
        return None

    def record(self) -> dict[str, Any]:
        """The JSON-able record the asset returns (the description's keys, as before, plus how the name was chosen)."""
        return {
            **self.description.as_dict(),
            "prompts": [p.as_dict() for p in self.prompts],
            "clip_prompt": self.clip_prompt,
            "name_choice": self.choice.as_dict(),
            "llm_exchange": self.llm,
            # the full WordNet noun index (Debian wordnet-base) changes which names count as ambiguous
            "wordnet_full_index": wordnet_noun_senses() is not None,
            "llm_fallback": self.llm_fallback,
        }


def make_class_prompts(
    description: ClassDescription,
    cfg: PromptsConfig,
    *,
    chat: ChatFn | None = None,
    chat_source: str | None = None,
    cache_url: str | None = None,
    clip: ClipScorer | None = None,
    real_images: np.ndarray | None = None,
) -> ClassPrompts:
    """Name one class and write its prompts (see the module docstring).

    ``chat`` (with ``chat_source``, e.g. ``llm:org/model``) asks an LLM for a name, a description and
    ``cfg.llm_prompts`` variations; ``clip`` with ``real_images`` (uint8 ``[N, H, W, C]``) ranks the candidate
    names, each put into the first template, against up to ``cfg.rank_images`` real images.
    """
    llm_result: LlmResult | None = None
    if chat is not None:
        keep = list(dict.fromkeys([description.disambiguated_name.split(",")[0], *description.lemmas]))
        llm_result = ask_llm(
            chat,
            chat_source or "llm:custom",
            description,
            [c.name for c in name_candidates(description)],
            keep,
            cfg.llm_prompts,
            cache_url,
        )
    answer = llm_result.answer if llm_result is not None else None
    candidates = name_candidates(description, answer.name if answer else None)
    ranked, scorer = None, None
    if clip is not None and real_images is not None and len(real_images):
        images = real_images[: cfg.rank_images]
        ranked = rank_names(
            [c.name for c in candidates],
            images,
            lambda names, batch: clip.similarity_matrix([clip_prompt(cfg.templates, n) for n in names], batch),
        )
        scorer = f"{clip.name} on {len(images)} real images, text '{cfg.templates[0]}'"
    choice = choose_name(description, candidates, ranked, scorer)
    chosen = dataclasses.replace(description, disambiguated_name=choice.name)
    prompts = build_class_prompts(chosen, cfg, llm_result.prompts if llm_result is not None else ())
    return ClassPrompts(
        description=chosen,
        choice=choice,
        prompts=prompts,
        clip_prompt=clip_prompt(cfg.templates, choice.name),
        llm=llm_result.describe() if llm_result is not None else None,
    )
