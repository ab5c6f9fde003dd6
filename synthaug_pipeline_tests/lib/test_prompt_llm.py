"""LLM-written class prompts and CLIP-ranked class names, offline: a tiny chat model whose reply is planted in its
weights (so it reaches the accepted branch through its chat template), an OpenAI-compatible endpoint served on
127.0.0.1, and a CLIP stand-in with planted embeddings."""

from __future__ import annotations

import http.server
import json
import threading
import time

import numpy as np
import pytest
import torch

from synthaug_pipeline.lib.class_names import describe_class
from synthaug_pipeline.lib.class_prompts import make_class_prompts
from synthaug_pipeline.lib.clip_score import ClipScorer
from synthaug_pipeline.lib.config import PromptsConfig
from synthaug_pipeline.lib.name_ranking import name_candidates
from synthaug_pipeline.lib.prompt_llm import (
    LLM_PROMPT_VERSION,
    LlmReplyError,
    ask_llm,
    class_messages,
    http_chat,
    local_chat,
    parse_reply,
)
from synthaug_pipeline.lib.prompts import PromptError

CRANE_BIRD = "n02012849"
GOOD_REPLY = json.dumps(
    {
        "name": "crane bird",
        "description": "A tall grey crane bird with a long neck and long legs",
        "prompts": [
            "a crane bird wading in a misty marsh at dawn",
            "a close-up photo of a crane bird preening, soft light",
            "a heron in a pond",  # does not name the class
            "a crane bird wading in a misty marsh at dawn",  # duplicate
            "crane",  # too short
        ],
    }
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def crane():
    return describe_class(CRANE_BIRD, CRANE_BIRD, "folder", curated_names=False)


def keep_terms(description) -> list[str]:
    return [description.disambiguated_name.split(",")[0], *description.lemmas]


# --- parsing and accepting ---------------------------------------------------------------------------


def test_a_good_reply_is_accepted_and_its_rejects_say_why(crane):
    answer = parse_reply("Sure! ```json\n" + GOOD_REPLY + "\n```", keep_terms(crane), count=8)
    assert answer.name == "crane bird" and answer.description.startswith("A tall grey crane bird")
    assert answer.prompts == ("a crane bird wading in a misty marsh at dawn", "a close-up photo of a crane bird preening, soft light")
    assert [reason for _, reason in answer.rejected] == ["does not name the class", "duplicate", "fewer than 3 words"]
    assert parse_reply(GOOD_REPLY, keep_terms(crane), count=1).prompts == answer.prompts[:1]


@pytest.mark.parametrize(
    "reply, message",
    [
        ("I cannot help with that.", "no JSON object"),
        ('{"prompts": "a crane bird"}', "no list of prompts"),
        ('{"prompts": ["a heron in a pond"]}', "none of the reply's 1 prompts was usable"),
        ('{"prompts": [1, 2', "no JSON object"),
        ('{"prompts": [1, 2}', "does not parse"),
    ],
)
def test_malformed_replies_are_refused(crane, reply, message):
    with pytest.raises(LlmReplyError, match=message):
        parse_reply(reply, keep_terms(crane), count=4)


def test_answers_are_cached_per_class_and_prompt_version(crane, tmp_path):
    calls = []

    def fake_chat(messages):
        calls.append(messages)
        return GOOD_REPLY

    candidates = [c.name for c in name_candidates(crane)]
    first = ask_llm(fake_chat, "llm:fake", crane, candidates, keep_terms(crane), 4, str(tmp_path))
    again = ask_llm(fake_chat, "llm:fake", crane, candidates, keep_terms(crane), 4, str(tmp_path))
    assert len(calls) == 1 and not first.cached and again.cached and again.answer == first.answer
    assert [p.source for p in again.prompts] == ["llm:fake", "llm:fake"]
    (cached,) = tmp_path.glob(f"{CRANE_BIRD}-*.json")
    assert json.loads(cached.read_text())["prompt_version"] == LLM_PROMPT_VERSION
    assert first.describe()["rejected"][0] == {"text": "a heron in a pond", "reason": "does not name the class"}


def test_a_failed_exchange_falls_back_to_wordnet_prompts_and_says_so(crane):
    cfg = PromptsConfig(templates=["a photo of a {name}"], prompts_per_class=3, llm="tiny")
    made = make_class_prompts(crane, cfg, chat=lambda messages: "no json here", chat_source="llm:tiny")
    assert all(p.source == "template" for p in made.prompts)
    assert made.llm_fallback.startswith("LLM failed, WordNet prompts kept: llm:tiny: the reply holds no JSON object")
    assert made.record()["llm_fallback"] == made.llm_fallback

    good = make_class_prompts(crane, cfg, chat=lambda messages: GOOD_REPLY, chat_source="llm:tiny")
    assert [p.source for p in good.prompts] == ["llm:tiny", "llm:tiny", "template"] and good.llm_fallback is None
    assert good.description.disambiguated_name == "crane, a large long-necked wading bird"  # no CLIP: the WordNet rule
    assert {c["name"]: c["origin"] for c in good.choice.as_dict()["candidates"]}["crane bird"] in ("lemma+genus", "llm")


# --- a tiny local chat model, through its chat template ---------------------------------------------------


def _planted_chat_model(folder, messages: list[dict], reply: str, chat_template: str | None = CHAT_TEMPLATE) -> None:
    """A GPT-2 whose greedy and sampled output after exactly the chat-templated ``messages`` is ``reply``.

    Token embeddings are zero and the block adds nothing, so the last hidden state is the one-hot position
    embedding; the LM head maps position p to the reply's token p (with a large margin). A prompt rendered any
    other way (no template, another template) ends at another position, and the reply comes out garbled.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([reply, *(m["content"] for m in messages)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    prompt_length = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    if chat_template is None:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    targets = tokenizer(reply)["input_ids"] + [tokenizer.eos_token_id]
    positions = prompt_length + len(targets) + 1
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=positions,
        n_embd=positions,
        n_layer=1,
        n_head=1,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.transformer.wpe.weight.copy_(torch.eye(positions))
        model.transformer.ln_f.weight.fill_(1.0)
        for k, token in enumerate(targets):  # the token after the prompt's last position p is targets[p - prompt_length + 1]
            model.lm_head.weight[token, prompt_length - 1 + k] = 50.0
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)


def test_a_local_chat_model_answers_through_its_chat_template(crane, tmp_path):
    candidates = [c.name for c in name_candidates(crane)]
    messages = class_messages(crane, candidates, 4)
    _planted_chat_model(tmp_path / "chat", messages, GOOD_REPLY)
    chat = local_chat(str(tmp_path / "chat"), seed=0, max_new_tokens=400)
    assert chat(messages).strip() == GOOD_REPLY
    result = ask_llm(chat, f"llm:{tmp_path / 'chat'}", crane, candidates, keep_terms(crane), 4)
    assert result.error is None and result.answer.prompts[0] == "a crane bird wading in a misty marsh at dawn"
    assert all(p.source == f"llm:{tmp_path / 'chat'}" for p in result.prompts)


def test_a_local_model_without_a_chat_template_is_refused(crane, tmp_path):
    _planted_chat_model(tmp_path / "raw", class_messages(crane, ["crane"], 1), "{}", chat_template=None)
    with pytest.raises(PromptError, match=r"^prompts.llm '.*raw' has no chat template"):
        local_chat(str(tmp_path / "raw"))
    with pytest.raises(PromptError, match=r"^prompts.llm '/no/such/model' cannot be loaded"):
        local_chat("/no/such/model")


# --- an OpenAI-compatible endpoint on 127.0.0.1 ------------------------------------------------------------


class _Endpoint(http.server.BaseHTTPRequestHandler):
    reply = GOOD_REPLY
    delay_s = 0.0
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        time.sleep(self.delay_s)
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": type(self).reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    _Endpoint.reply, _Endpoint.delay_s, _Endpoint.seen = GOOD_REPLY, 0.0, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_an_openai_compatible_endpoint_answers(crane, endpoint, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    chat = http_chat(endpoint, "tiny-chat", api_key_env="TEST_LLM_KEY", timeout_s=10)
    cfg = PromptsConfig(templates=["a photo of a {name}"], prompts_per_class=2, llm="tiny-chat", llm_url=endpoint)
    made = make_class_prompts(crane, cfg, chat=chat, chat_source=f"llm:{endpoint}#tiny-chat")
    assert [p.text for p in made.prompts] == [
        "a crane bird wading in a misty marsh at dawn",
        "a close-up photo of a crane bird preening, soft light",
    ]
    assert made.llm["error"] is None and made.llm["accepted_prompts"] == 2
    path, auth, body = _Endpoint.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "tiny-chat"
    assert [m["role"] for m in body["messages"]] == ["system", "user"] and CRANE_BIRD in body["messages"][1]["content"]


def test_an_endpoint_that_times_out_or_talks_nonsense_leaves_the_wordnet_prompts(crane, endpoint):
    cfg = PromptsConfig(templates=["a photo of a {name}"], prompts_per_class=2, llm="m", llm_url=endpoint)
    _Endpoint.delay_s = 1.0
    slow = make_class_prompts(crane, cfg, chat=http_chat(endpoint, "m", timeout_s=0.2), chat_source="llm:endpoint")
    assert all(p.source == "template" for p in slow.prompts)
    assert "did not answer within 0.2 s" in slow.llm_fallback and "prompts.llm_url" in slow.llm_fallback
    _Endpoint.delay_s, _Endpoint.reply = 0.0, "Here are some prompts: crane, crane, crane"
    nonsense = make_class_prompts(crane, cfg, chat=http_chat(endpoint, "m"), chat_source="llm:endpoint")
    assert "no JSON object" in nonsense.llm_fallback and all(p.source == "template" for p in nonsense.prompts)


def test_endpoint_settings_errors_name_the_setting(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(PromptError, match="prompts.llm_api_key_env names 'NO_SUCH_KEY_VAR'"):
        http_chat("http://127.0.0.1:1/v1", "m", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(ValueError, match="prompts.llm_url must start with http"):
        PromptsConfig(llm_url="ftp://host")


# --- CLIP ranking of candidate names ------------------------------------------------------------------------


class _PlantedClip(torch.nn.Module):
    """open_clip's interface with planted embeddings: every image embeds to ``image``, text i to ``texts[i]``."""

    def __init__(self, image: list[float], texts: dict[str, list[float]]):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.image_size = 8
        self.names = list(texts)
        self.register_buffer("image", torch.nn.functional.normalize(torch.tensor(image), dim=0))
        self.register_buffer("table", torch.nn.functional.normalize(torch.tensor(list(texts.values())), dim=1))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([self.names.index(t) for t in texts])

    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.image.expand(len(x), -1)

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.table[ids]


def test_clip_ranking_picks_the_candidate_the_planted_clip_prefers_among_unambiguous_ones(crane):
    names = [c.name for c in name_candidates(crane)]
    assert "crane" in names and "crane bird" in names
    texts = {f"a photo of a {n}": [0.0, 1.0, 0.0] for n in names}
    texts["a photo of a crane bird"] = [1.0, 0.2, 0.0]  # closest to the images
    texts["a photo of a crane"] = [1.0, 0.0, 0.0]  # even closer, but 'crane' is also the machine
    model = _PlantedClip([1.0, 0.0, 0.0], texts)
    clip = ClipScorer(model, model.tokenize, "planted")
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    cfg = PromptsConfig(templates=["a photo of a {name}"], prompts_per_class=2, clip_model="planted", rank_images=2)
    made = make_class_prompts(crane, cfg, clip=clip, real_images=images)
    assert made.description.disambiguated_name == "crane bird"
    assert all("crane bird" in p.text for p in made.prompts) and made.clip_prompt == "a photo of a crane bird"
    scores = {c["name"]: c["score"] for c in made.choice.as_dict()["candidates"]}
    assert scores["crane"] == pytest.approx(1.0) and scores["crane bird"] == pytest.approx(1 / np.sqrt(1.04))
    assert "highest mean CLIP similarity" in made.choice.reason and "'crane'" in made.choice.reason  # the skipped ambiguous one
    assert "planted on 2 real images" in made.choice.scorer
