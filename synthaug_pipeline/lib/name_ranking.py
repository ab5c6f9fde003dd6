"""Candidate names of a class and choosing one, by the WordNet rule or by how well it matches real images.

:func:`name_candidates` lists the ways to name a class (WordNet lemmas, lemma + genus term
of the gloss, lemma + gloss head, an LLM's name) and :func:`choose_name` picks one: the
WordNet rule (:func:`~synthaug_pipeline.lib.class_names.describe_class`), or with CLIP scores
from :func:`rank_names` the best unambiguous candidate, recording every candidate's score and
why the winner won.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from synthaug_pipeline.lib.class_names import (
    _DETERMINERS,
    _GLOSS_BREAKS,
    EVERYDAY_AMBIGUOUS,
    ClassDescription,
    _plural_twin,
    imagenet_wordnet,
    is_wnid,
    short_gloss,
    with_article,
    wordnet_noun_senses,
)
from synthaug_pipeline.lib.prompts import PromptError, tidy

# --- candidate names -------------------------------------------------------------------------

_GENUS_OF = re.compile(r"\b(?:variety|breed|kind|type|species|genus|form|member|any|male|female|young)\s+of\s+(.*)")


def gloss_genus(gloss: str | None) -> str | None:
    """The genus term of a WordNet gloss (what the class is a kind of): 'large long-necked wading bird ...' -> 'bird',
    'slightly bowlegged variety of corgi ...' -> 'corgi'. Glosses are written genus + differentia."""
    if not gloss:
        return None
    clause = gloss.split(";")[0].split("(")[0]
    match = _GENUS_OF.search(clause)
    words = (match.group(1) if match else clause).replace(",", " ").split()
    if len(words) > 1 and words[1].lower() == "and":  # a verb-headed gloss ('lifts and moves heavy objects') names no genus
        return None
    cut = next((i for i, w in enumerate(words) if i >= 1 and w.lower() in _GLOSS_BREAKS), len(words))
    if not words[:cut]:
        return None
    word = words[:cut][-1].strip(",.").lower()
    return word if word.isalpha() and word not in _GLOSS_BREAKS and word not in _DETERMINERS and len(word) > 2 else None


@dataclass(frozen=True)
class NameCandidate:
    """One way to name a class in prompts, where it came from, and whether it also names something else."""

    name: str
    origin: str  # wordnet-rule | lemma | lemma+genus | lemma+gloss | llm | curated
    ambiguous: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def name_candidates(description: ClassDescription, llm_name: str | None = None) -> list[NameCandidate]:
    """Candidate prompt names of a class: the WordNet rule's choice, each lemma, lemma + genus term, lemma + gloss head,
    and the LLM's name when one was written. Ambiguous ones (a lemma of another synset, or an everyday second sense)
    are listed but never chosen."""
    tables = imagenet_wordnet()
    wnid = next((c for c in (description.class_id, description.class_name) if is_wnid(c)), None)

    senses = wordnet_noun_senses()

    def shared(name: str) -> bool:
        lower = name.lower()
        if lower in EVERYDAY_AMBIGUOUS or tables.lemma_index.get(lower, frozenset()) - {wnid} or _plural_twin(lower, wnid, tables):
            return True
        return bool(wnid and senses and senses.get(lower) and senses[lower][0] != wnid[1:])

    out: dict[str, NameCandidate] = {}

    def add(name: str | None, origin: str, ambiguous: bool | None = None) -> None:
        name = tidy(name or "")
        if name and name.lower() not in {k.lower() for k in out}:
            out[name] = NameCandidate(name, origin, shared(name) if ambiguous is None else ambiguous)

    add(description.disambiguated_name, "wordnet-rule")
    genus = gloss_genus(description.gloss)
    for lemma in description.lemmas:
        add(lemma, "lemma")
    for lemma in description.lemmas:
        if genus and genus not in lemma.lower().split():
            add(f"{lemma} {genus}", "lemma+genus", ambiguous=False)
    if description.gloss:
        for lemma in description.lemmas[:1]:
            add(f"{lemma}, {with_article(short_gloss(description.gloss))}", "lemma+gloss", ambiguous=False)
    if llm_name:
        add(llm_name, "llm", ambiguous=shared(llm_name))
    return list(out.values())


@dataclass(frozen=True)
class NameChoice:
    """The name that goes into prompts, every candidate's score and why the winner won."""

    name: str
    reason: str
    candidates: tuple[NameCandidate, ...]
    scores: dict[str, float] | None = None  # candidate -> mean CLIP similarity over the class's real images
    scorer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reason": self.reason,
            "scorer": self.scorer,
            "candidates": [{**c.as_dict(), "score": None if self.scores is None else self.scores.get(c.name)} for c in self.candidates],
        }


def choose_name(
    description: ClassDescription,
    candidates: Sequence[NameCandidate],
    ranked: Sequence[RankedName] | None = None,
    scorer: str | None = None,
) -> NameChoice:
    """The WordNet rule's name, or with ``ranked`` (CLIP scores of the candidates) the best-scoring unambiguous one."""
    candidates = tuple(candidates)
    if not ranked:
        rule = description.disambiguated_name
        why = (
            "WordNet rule: the plain name is unambiguous"
            if not description.ambiguous
            else "WordNet rule: the plain name has other senses, so the first lemma no other synset uses, else the name with its gloss"
        )
        return NameChoice(rule, why + " (no CLIP model set to rank candidates against real images)", candidates)
    scores = {r.name: r.score for r in ranked}
    eligible = [r for r in ranked if not next((c.ambiguous for c in candidates if c.name == r.name), True)]
    if not eligible:
        return NameChoice(description.disambiguated_name, "every ranked candidate is ambiguous: WordNet rule", candidates, scores, scorer)
    best = eligible[0]
    runner_up = eligible[1] if len(eligible) > 1 else None
    margin = f", {best.score - runner_up.score:+.4f} over {runner_up.name!r}" if runner_up else ", the only unambiguous candidate"
    skipped = [r.name for r in ranked if r not in eligible and r.score > best.score]
    note = f"; higher but ambiguous (not chosen): {', '.join(map(repr, skipped))}" if skipped else ""
    reason = f"highest mean CLIP similarity to the class's real images among unambiguous candidates ({best.score:.4f}{margin}){note}"
    return NameChoice(best.name, reason, candidates, scores, scorer)


# --- choosing a name by how well it matches real images -----------------------------------

NameScorer = Callable[[list[str], np.ndarray], Any]  # (texts, images [N,H,W,C]) -> scores [len(texts), N]


@dataclass(frozen=True)
class RankedName:
    name: str
    score: float  # mean scorer value over the real images


def rank_names(candidates: Sequence[str], real_images: np.ndarray, scorer: NameScorer) -> list[RankedName]:
    """Candidates ordered by mean text-image score against real images of the class, best first (ties keep input order).

    ``scorer`` is any text-image similarity, e.g. CLIP cosine similarity.
    """
    names = list(dict.fromkeys(c.strip() for c in candidates if c and c.strip()))
    if not names:
        raise PromptError("rank_names needs at least one non-empty candidate name")
    if len(real_images) == 0:
        raise PromptError("rank_names needs at least one real image of the class")
    scores = np.asarray(scorer(names, real_images), dtype=np.float64)
    if scores.shape != (len(names), len(real_images)):
        raise PromptError(f"scorer returned shape {scores.shape}; expected (candidates, images) = {(len(names), len(real_images))}")
    if not np.all(np.isfinite(scores)):
        raise PromptError("scorer returned non-finite scores")
    means = scores.mean(axis=1)
    order = sorted(range(len(names)), key=lambda i: -means[i])
    return [RankedName(names[i], float(means[i])) for i in order]
