"""An LLM that names a class unambiguously and writes contextual and stylistic prompt variations for it.

One chat exchange per class: the system message says what the prompts are for, the user message gives
the class's candidate names, WordNet gloss and genus term, and asks for a JSON object
``{"name": ..., "description": ..., "prompts": [...]}``. Two ways to reach a model, both plain functions
returning a :data:`ChatFn` (messages in, reply text out):

* :func:`local_chat`: a transformers causal LM by path or hub id, prompted through its own chat template
  (``tokenizer.apply_chat_template``); a model without one is refused, since raw text would not be the
  format it was tuned on.
* :func:`http_chat`: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, Ollama,
  hosted APIs), the API key read from the environment variable the profile names.

:func:`ask_llm` caches each raw reply per (class, prompt version, model, messages) under a folder or fsspec
URL, parses it (:func:`parse_reply`) and accepts only clean prompts that name the class. A timeout, an HTTP
error or a malformed reply is not fatal: the result says why, and the caller keeps the WordNet prompts.
Pure module: no Dagster.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from synthaug_pipeline.lib.class_names import ClassDescription
from synthaug_pipeline.lib.name_ranking import gloss_genus
from synthaug_pipeline.lib.prompts import Prompt, PromptError, tidy

LLM_PROMPT_VERSION = "class-prompts/1"  # bump when the messages change: cached replies are keyed by it
ChatFn = Callable[[list[dict[str, str]]], str]
SYSTEM_MESSAGE = (
    "You write prompts for a text-to-image model that generates training images of one ImageNet class. "
    "Every prompt must make the class unmistakable: never let a name be read in another sense "
    "(a crane the bird is not a crane the machine). Answer with one JSON object and nothing else."
)
MAX_PROMPT_WORDS = 40


class LlmUnavailable(RuntimeError):
    """The model could not answer (timeout, connection or HTTP error): the caller falls back to WordNet prompts."""


class LlmReplyError(ValueError):
    """A reply that is not the asked JSON: the caller falls back to WordNet prompts."""


def class_messages(description: ClassDescription, candidates: Sequence[str], count: int) -> list[dict[str, str]]:
    """The chat messages asking for one class's name, description and ``count`` prompt variations."""
    facts = {
        "class_id": description.class_id,
        "candidate_names": list(candidates),
        "wordnet_definition": description.gloss,
        "kind_of": gloss_genus(description.gloss),
    }
    ask = (
        f"Class: {json.dumps(facts, ensure_ascii=False)}\n"
        'Reply with JSON: {"name": a short name that singles out this sense (2-5 words, contains one of the candidate names), '
        '"description": one sentence saying what it looks like, '
        f'"prompts": {count} different image prompts, each naming the class, varying the setting, viewpoint, lighting and '
        f"photographic style, at most {MAX_PROMPT_WORDS} words each}}."
    )
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": ask}]


# --- reaching a model ---------------------------------------------------------------------------


def local_chat(model: str, *, seed: int = 0, max_new_tokens: int = 512, device: str = "cpu") -> ChatFn:
    """A seeded sampler over a local transformers chat model (path or hub id), prompted through its chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except Exception as exc:  # not a folder, not in the hub cache, offline
        raise PromptError(f"prompts.llm {model!r} cannot be loaded ({type(exc).__name__}: {_first_line(exc)})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            f"prompts.llm {model!r} has no chat template (tokenizer_config.json chat_template): use an instruction-tuned chat model"
        )
    try:
        lm = AutoModelForCausalLM.from_pretrained(model).to(device).eval()
    except Exception as exc:
        raise PromptError(f"prompts.llm {model!r} cannot be loaded ({type(exc).__name__}: {_first_line(exc)})") from None

    def chat(messages: list[dict[str, str]]) -> str:
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True).to(device)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            tokens = lm.generate(
                **inputs,
                do_sample=True,
                top_p=0.9,
                temperature=0.7,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        return tokenizer.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    return chat


def http_chat(url: str, model: str | None, *, api_key_env: str | None = None, timeout_s: float = 60.0, seed: int = 0) -> ChatFn:
    """A client of an OpenAI-compatible chat endpoint (``url`` is the API base, e.g. ``http://host:8000/v1``)."""
    if not url.startswith(("http://", "https://")):
        raise PromptError(f"prompts.llm_url must start with http:// or https://, got {url!r}")
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise PromptError(f"prompts.llm_api_key_env names {api_key_env!r}, but that environment variable is not set")
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/chat/completions"):
        endpoint += "/chat/completions"

    def chat(messages: list[dict[str, str]]) -> str:
        body = {"model": model or "default", "messages": messages, "temperature": 0.7, "seed": seed}
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except (TimeoutError, urllib.error.URLError, OSError) as exc:  # urlopen raises bare TimeoutError on read timeouts
            raise LlmUnavailable(f"prompts.llm_url {url!r} did not answer within {timeout_s:g} s or failed ({_first_line(exc)})") from None
        except ValueError:
            raise LlmReplyError(f"prompts.llm_url {url!r} answered with a body that is not JSON") from None
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise LlmReplyError(f"prompts.llm_url {url!r} answered without choices[0].message.content") from None

    return chat


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --- parsing and accepting a reply --------------------------------------------------------------


@dataclass(frozen=True)
class LlmAnswer:
    """What was accepted from one reply, and what was not and why."""

    name: str | None
    description: str | None
    prompts: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...] = ()  # (text, reason)


def _json_object(text: str) -> dict[str, Any]:
    # chat models wrap JSON in prose or ``` fences: take the outermost {...}
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise LlmReplyError("the reply holds no JSON object")
    try:
        value = json.loads(text[start : end + 1])
    except ValueError as exc:
        raise LlmReplyError(f"the reply's JSON does not parse ({exc})") from None
    if not isinstance(value, dict):
        raise LlmReplyError("the reply's JSON is not an object")
    return value


def clean_caption(text: str, max_words: int = MAX_PROMPT_WORDS) -> str:
    """One line of plain caption text: no quotes, markup or odd symbols, at most ``max_words`` words."""
    line = next((part for part in str(text).strip().splitlines() if part.strip()), "")
    line = re.sub(r"[^\w\s,.;:'()/&-]", " ", line)
    return tidy(" ".join(line.split()[:max_words]).strip(" '\"")).rstrip(".")


def names_class(text: str, keep_terms: Sequence[str]) -> bool:
    lower = text.lower()
    return any(re.search(rf"(?<!\w){re.escape(term.lower())}(?!\w)", lower) for term in keep_terms if term.strip())


def parse_reply(text: str, keep_terms: Sequence[str], count: int) -> LlmAnswer:
    """The accepted name, description and prompts of a reply; raises :class:`LlmReplyError` when nothing usable is in it.

    A prompt is accepted when, cleaned, it has at least 3 words, names the class (one of ``keep_terms``) and
    is new; at most ``count`` are kept. The name must contain a keep term too.
    """
    value = _json_object(text)
    raw_prompts = value.get("prompts")
    if not isinstance(raw_prompts, list) or not raw_prompts:
        raise LlmReplyError("the reply's JSON has no list of prompts")
    accepted: list[str] = []
    rejected: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in raw_prompts:
        if not isinstance(raw, str):
            rejected.append((repr(raw)[:80], "not a string"))
            continue
        caption = clean_caption(raw)
        if len(caption.split()) < 3:
            rejected.append((raw[:80], "fewer than 3 words"))
        elif not names_class(caption, keep_terms):
            rejected.append((raw[:80], "does not name the class"))
        elif caption.lower() in seen:
            rejected.append((raw[:80], "duplicate"))
        elif len(accepted) >= count:
            rejected.append((raw[:80], "more than asked"))
        else:
            seen.add(caption.lower())
            accepted.append(caption)
    if not accepted:
        raise LlmReplyError(f"none of the reply's {len(raw_prompts)} prompts was usable ({rejected[0][1] if rejected else 'empty'})")
    name = clean_caption(value.get("name") or "", max_words=8) or None
    if name is not None and not names_class(name, keep_terms):
        rejected.append((name, "name does not contain a candidate name"))
        name = None
    description = clean_caption(value.get("description") or "") or None
    return LlmAnswer(name, description, tuple(accepted), tuple(rejected))


# --- asking, with a cache -------------------------------------------------------------------------


@dataclass
class LlmResult:
    """One class's exchange: the accepted answer, or why there is none (the caller then keeps WordNet prompts)."""

    source: str  # llm:<model> or llm:<url>
    answer: LlmAnswer | None = None
    error: str | None = None
    cached: bool = False
    cache_key: str | None = None
    prompts: list[Prompt] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "prompt_version": LLM_PROMPT_VERSION,
            "cached": self.cached,
            "cache_key": self.cache_key,
            "error": self.error,
            "name": self.answer.name if self.answer else None,
            "description": self.answer.description if self.answer else None,
            "accepted_prompts": len(self.answer.prompts) if self.answer else 0,
            "rejected": [{"text": t, "reason": r} for t, r in self.answer.rejected] if self.answer else [],
        }


def cache_key(source: str, class_id: str, messages: list[dict[str, str]]) -> str:
    blob = json.dumps([LLM_PROMPT_VERSION, source, class_id, messages], sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def ask_llm(
    chat: ChatFn,
    source: str,
    description: ClassDescription,
    candidates: Sequence[str],
    keep_terms: Sequence[str],
    count: int,
    cache_url: str | None = None,
) -> LlmResult:
    """Ask ``chat`` about one class (or read the cached reply), parse and accept; never raises for a bad exchange."""
    import fsspec

    messages = class_messages(description, candidates, count)
    key = cache_key(source, description.class_id, messages)
    result = LlmResult(source=source, cache_key=key)
    path = f"{cache_url.rstrip('/')}/{re.sub(r'[^A-Za-z0-9_.-]', '_', description.class_id)}-{key}.json" if cache_url else None
    reply = None
    if path is not None:
        try:
            with fsspec.open(path, "r") as handle:
                reply = json.load(handle)["reply"]
            result.cached = True
        except (OSError, ValueError, KeyError, TypeError):
            reply = None
    if reply is None:
        try:
            reply = chat(messages)
        except (LlmUnavailable, LlmReplyError) as exc:
            result.error = str(exc)
            return result
    try:
        result.answer = parse_reply(reply, keep_terms, count)
    except LlmReplyError as exc:
        result.error = f"{source}: {exc}"
        return result
    if path is not None and not result.cached:
        try:
            fs, fs_path = fsspec.core.url_to_fs(path)
            fs.makedirs(fs_path.rsplit("/", 1)[0], exist_ok=True)
            with fs.open(fs_path, "w") as handle:
                json.dump(
                    {"reply": reply, "prompt_version": LLM_PROMPT_VERSION, "source": source, "class_id": description.class_id}, handle
                )
        except OSError:
            pass  # a cache that cannot be written only costs a later call
    result.prompts = [Prompt(text, template="llm", source=source) for text in result.answer.prompts]
    return result
