"""The ``langchain`` engine: any LangChain chat model.

Pass the object to :class:`LangChainEngine`, or name one as ``provider:model``
(``langchain.chat_models.init_chat_model``, imported when a model is made by name).
"""

from __future__ import annotations

import json

from agentrec.core.errors import UsageError
from agentrec.llm.base import (
    DEFAULT_CONTEXT_TOKENS,
    Engine,
    EngineConfig,
    EngineError,
    Generation,
    content_text,
    describe_error,
)


class LangChainEngine(Engine):
    """Any LangChain chat model (``BaseChatModel``), called with ``batch_as_completed`` (``batch`` that hands
    each reply over as it arrives; each is reported to a progress bar).

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
        # batch_as_completed is batch (the same threads, max_concurrency, per-input exceptions) that hands each
        # reply over as it arrives, so a progress bar moves per completed request
        replies = self.chat_model.batch_as_completed([list(chat) for chat in chats],
                                                     config={"max_concurrency": self.concurrency},
                                                     return_exceptions=True, stop=list(params.stop) or None)
        out: list[Generation | None] = [None] * len(chats)
        errors = []
        for i, reply in replies:
            if isinstance(reply, Exception):
                errors.append((i, reply))
                continue
            usage = getattr(reply, "usage_metadata", None) or {}
            text = reply.content if isinstance(reply.content, str) else content_text(reply.content)
            metadata = getattr(reply, "response_metadata", None) or {}
            out[i] = Generation(text=text, tokens_in=usage.get("input_tokens"), tokens_out=usage.get("output_tokens"),
                                finish_reason=metadata.get("finish_reason"))
            self.report_batch(1, out[i].tokens_out or 0)
        if errors:
            errors = [error for _, error in sorted(errors, key=lambda pair: pair[0])]  # the first chat's first
            raise EngineError(f"the LangChain chat model {type(self.chat_model).__name__} failed on {len(errors)} of "
                              f"{len(chats)} chats: {describe_error(errors[0])}", partial=out)
        return out


def make_engine(config: EngineConfig) -> LangChainEngine:
    """The factory registered as ``langchain`` in :data:`agentrec.llm.ENGINES`."""
    if not config.model:
        raise UsageError("the langchain engine needs --model PROVIDER:MODEL (e.g. openai:gpt-4o-mini), or pass a "
                         "chat model object to agentrec.llm.langchain.LangChainEngine")
    return LangChainEngine.from_name(config.model, concurrency=config.concurrency,
                                     context_tokens=config.context_tokens)
