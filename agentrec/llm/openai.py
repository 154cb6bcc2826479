"""The ``openai`` engine: any OpenAI-compatible server by base URL (``vllm serve``, llama.cpp, OpenAI, ...).

A bounded thread pool, timeouts, tenacity retries with exponential backoff on connection errors, 429
and 5xx; then an :class:`~agentrec.llm.base.EngineError` naming the server that keeps the results
already received. The ``openai`` client and tenacity are imported when the engine is made; with
absolute imports, ``import openai`` here is the client library, not this module.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from agentrec.core.errors import ServiceError, UsageError
from agentrec.llm.base import (
    DEFAULT_CONTEXT_TOKENS,
    Engine,
    EngineConfig,
    EngineError,
    Generation,
    SamplingParams,
    content_text,
    describe_error,
    model_label,
)

logger = logging.getLogger(__name__)


def normalise_base_url(base_url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1``; a URL with a path is kept as it is."""
    from urllib.parse import urlparse

    url = base_url.strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UsageError(f"base URL {base_url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
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
                                                      describe_error(state.outcome.exception()), state.attempt_number,
                                                      self.retries),
            reraise=True,
        )
        try:
            return retrying(call)
        except Exception as error:
            attempts = f"after {self.retries + 1} attempts" if _retryable(error) else "(not retried)"
            raise ServiceError(f"the OpenAI-compatible server at {self.base_url} failed to {what} {attempts}: "
                               f"{describe_error(error)}") from error

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
            content = content_text(content)
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
                return
            self.report_batch(1, out[i].tokens_out or 0)  # each completed request moves a progress bar

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="agentrec-openai") as pool:
            list(pool.map(one, range(len(chats))))
        if errors:
            done = sum(g is not None for g in out)
            raise EngineError(f"{errors[0]} ({done} of {len(chats)} chats completed and kept; "
                              f"{len(chats) - done} not done)", partial=out)
        return out


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


def make_engine(config: EngineConfig) -> OpenAIEngine:
    """The factory registered as ``openai`` in :data:`agentrec.llm.ENGINES`."""
    if not config.base_url:
        raise UsageError("the openai engine needs the server's base URL (--base-url http://HOST:PORT/v1)")
    return OpenAIEngine(config.base_url, model=config.model, api_key=config.api_key, concurrency=config.concurrency,
                        timeout_s=config.timeout_s, retries=config.retries, backoff_s=config.backoff_s,
                        backoff_max_s=config.backoff_max_s, context_tokens=config.context_tokens)
