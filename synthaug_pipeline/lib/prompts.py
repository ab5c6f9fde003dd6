"""Class prompts: diversified text prompts for a class's name (:mod:`synthaug_pipeline.lib.class_names`).

``diversified_prompts`` crosses templates x contexts x styles into ``prompts_per_class``
prompts, deterministic for (seed, class), each recording what produced it.
The name itself comes from :func:`~synthaug_pipeline.lib.class_names.describe_class`, or is
chosen among candidates by :mod:`synthaug_pipeline.lib.name_ranking`. LLM-written descriptions and
variations come from :mod:`synthaug_pipeline.lib.prompt_llm`.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import product
from typing import Any

import numpy as np

from synthaug_pipeline.lib.class_names import ClassDescription, indefinite_article
from synthaug_pipeline.lib.config import PromptsConfig

TEMPLATE_FIELDS = frozenset({"name", "class_name", "gloss", "context", "style"})


class PromptError(ValueError):
    """Prompt settings or inputs that cannot be used; the message names the fix."""


# --- diversified prompts ------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """One text prompt and the template, context and style that produced it."""

    text: str
    template: str
    context: str | None = None
    style: str | None = None
    source: str = "template"  # template | llm:<model>

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_template(template: str) -> None:
    """Raise :class:`PromptError` unless ``template`` names the class and uses only known fields."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise PromptError(f"prompt template {template!r} is not a valid format string: {exc}") from None
    unknown = names - TEMPLATE_FIELDS
    if unknown:
        raise PromptError(f"prompt template {template!r} uses unknown fields {sorted(unknown)}; known: {sorted(TEMPLATE_FIELDS)}")
    if not names & {"name", "class_name"}:
        raise PromptError(f"prompt template {template!r} never names the class: add {{name}}, e.g. 'a photo of a {{name}}'")


def render_prompt(
    template: str,
    name: str,
    *,
    context: str | None = None,
    style: str | None = None,
    gloss: str | None = None,
    class_name: str | None = None,
) -> str:
    """Fill one template. A context the template does not place is appended ("... on a beach"), a style after a comma.

    "a {name}" gets the right article: "a photo of an African elephant".
    """
    check_template(template)
    text = re.sub(r"\b([Aa])n? (?=\{name\})", lambda m: ("A" if m.group(1) == "A" else "a") + "\x00 ", template)
    text = text.format(name=name, class_name=class_name or name, gloss=gloss or "", context=context or "", style=style or "")
    text = re.sub(r"\b([Aa])\x00 (\S+)", lambda m: _cased_article(m.group(1), m.group(2)) + " " + m.group(2), text)
    if context and "{context}" not in template:
        text = f"{text} {context}"
    if style and "{style}" not in template:
        text = f"{text}, {style}"
    return tidy(text)


def _cased_article(cased_a: str, word: str) -> str:
    article = indefinite_article(word)
    return article.capitalize() if cased_a == "A" else article


def tidy(text: str) -> str:
    """Collapse whitespace and stray commas left by empty fields."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    return text.strip(" ,;:")


def class_seed(seed: int, class_id: str, purpose: str = "prompts") -> int:
    """A 63-bit seed for (seed, class, purpose), stable across processes and machines."""
    digest = hashlib.sha256(f"{purpose}\x00{seed}\x00{class_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def diversified_prompts(
    description: ClassDescription,
    templates: Sequence[str],
    contexts: Sequence[str] = (),
    styles: Sequence[str] = (),
    *,
    count: int,
    seed: int = 0,
) -> list[Prompt]:
    """``count`` prompts drawn from templates x contexts x styles in a (seed, class)-shuffled order.

    Texts are unique while enough distinct combinations exist; past that the shuffled
    unique prompts repeat in order. No contexts (styles) means none is added.
    """
    if count < 1:
        raise PromptError(f"prompts_per_class must be at least 1, got {count}")
    templates = list(dict.fromkeys(templates))
    if not templates:
        raise PromptError("prompts.templates is empty: give at least one, e.g. ['a photo of a {name}']")
    for template in templates:
        check_template(template)
    combos = list(product(templates, list(dict.fromkeys(contexts)) or [None], list(dict.fromkeys(styles)) or [None]))
    order = np.random.default_rng(class_seed(seed, description.class_id)).permutation(len(combos))
    unique: dict[str, Prompt] = {}
    for i in order:
        template, context, style = combos[i]
        text = render_prompt(
            template,
            description.disambiguated_name,
            context=context,
            style=style,
            gloss=description.gloss,
            class_name=description.class_name,
        )
        if text not in unique:
            unique[text] = Prompt(text, template, context, style)
            if len(unique) == count:
                break
    distinct = list(unique.values())
    return [distinct[i % len(distinct)] for i in range(count)]


def clip_prompt(templates: Sequence[str], name: str) -> str:
    """The text CLIP compares a prompt-less image with (ddpm, DiT): the first template filled with the class's name."""
    template = next(iter(templates), "a photo of a {name}")
    return render_prompt(template, name)


def build_class_prompts(description: ClassDescription, cfg: PromptsConfig, llm_prompts: Sequence[Prompt] = ()) -> list[Prompt]:
    """The prompts of one class for a profile's ``prompts`` section.

    ``llm_prompts`` (accepted variations written by ``prompts.llm``, see :mod:`~synthaug_pipeline.lib.prompt_llm`)
    come first; template prompts fill the rest up to ``prompts_per_class``.
    """
    templated = diversified_prompts(description, cfg.templates, cfg.contexts, cfg.styles, count=cfg.prompts_per_class, seed=cfg.seed)
    if not llm_prompts:
        return templated
    first: dict[str, Prompt] = {}
    for prompt in llm_prompts:
        first.setdefault(prompt.text.lower(), prompt)
    unique, seen = list(first.values()), set(first)
    filler = [p for p in dict.fromkeys(templated) if p.text.lower() not in seen]
    distinct = unique + filler
    return [distinct[i % len(distinct)] for i in range(cfg.prompts_per_class)]
