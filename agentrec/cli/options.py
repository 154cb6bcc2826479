"""What every command group shares: choices generated from the registries, option types, range checks,
the LLM engine options, logging verbosity.

**One source of truth.** The choices of ``--model``, ``--engine``, ``--strategy``, the dataset name of
``data prepare`` and ``--protocol`` are Enums built here, at import, from the registries
(:data:`agentrec.models.MODELS`, :data:`agentrec.llm.ENGINES`, :data:`agentrec.llm.prompts.STRATEGIES`,
:data:`agentrec.data.sources.SOURCES`, :data:`agentrec.data.protocols.PROTOCOLS`); their help lists each
entry's help line. A registry entry added before this module is imported is a choice of every command.

**One set of engine options.** :func:`engine_options` gives a command every field of
:class:`~agentrec.llm.EngineConfig` as an option (``--model``, ``--llm-device``, ``--batch-size``, ...,
``--context-tokens``), plus ``--engine``, and hands the command the engine name and the
:class:`~agentrec.llm.EngineConfig` built by :func:`engine_config_from`. ``predict``, ``compare`` and
``signals generate`` use it, so they accept the same options with the same help.

Nothing here imports torch, chromadb, transformers or vllm: ``agentrec --help`` stays light.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from agentrec.core.options import (
    COUNT,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    OptionError,
    Range,
    flag,
)
from agentrec.core.registry import Registry
from agentrec.data.protocols import PROTOCOLS
from agentrec.data.sources import SOURCES
from agentrec.llm import DEFAULT_ENGINE, ENGINES, EngineConfig
from agentrec.llm.prompts import STRATEGIES
from agentrec.models import MODELS

# The engine table. It moved from a dict in agentrec.llm.engines to this Registry; were it to move
# again, this is the one line to change.
ENGINE_TABLE = ENGINES


# ---------------------------------------------------------------------------------------------- choices
def entries(table) -> list[tuple[str, str]]:
    """``(name, help)`` for each entry of a registry, or of a name -> spec dict, in table order.

    A :class:`~agentrec.core.registry.Registry` gives its help lines; a dict value gives its ``help``
    attribute, or the first line of its class docstring, or nothing.
    """
    if isinstance(table, Registry):
        return [(entry.name, entry.help) for entry in table.entries()]
    found = []
    for name, value in table.items():
        text = getattr(value, "help", None)
        if text is None and isinstance(value, type):
            text = (inspect.getdoc(value) or "").split("\n")[0].rstrip(".")
        elif text is None and hasattr(value, "steps"):  # a prompting strategy: its steps are its description
            steps = " then ".join(step.output for step in value.steps)
            text = f"{'few-shot' if getattr(value, 'few_shot', False) else 'zero-shot'}, {steps}"
        found.append((name, text or ""))
    return found


def choice_enum(name: str, table) -> type[Enum]:
    """A str Enum whose members are the table's names (value = name), for typer's choices."""
    return Enum(name, [(entry, entry) for entry, _ in entries(table)], type=str)


def choices_help(table) -> str:
    """``name: help | name: help`` for ``--help``."""
    return " | ".join(f"{name}: {text}" if text else name for name, text in entries(table))


ModelName = choice_enum("ModelName", MODELS)
EngineName = choice_enum("EngineName", ENGINE_TABLE)
StrategyName = choice_enum("StrategyName", STRATEGIES)
SourceName = choice_enum("SourceName", SOURCES)
ProtocolName = choice_enum("ProtocolName", PROTOCOLS)


# Choices whose tables live in modules that import torch (agentrec.pipelines): spelled here, checked
# against the library by tests/test_cli_config.py.
class SemanticMode(str, Enum):
    init = "init"  # SemSR-I (agentrec.pipelines.train.VARIANTS)
    fusion = "fusion"  # SemSR-F


class FusionName(str, Enum):
    rrf = "rrf"  # agentrec.pipelines.hybrid.FUSIONS: weighted reciprocal-rank fusion


class Split(str, Enum):
    valid = "valid"
    test = "test"


# ---------------------------------------------------------------------------------------------- shared options
EMBEDDER_HELP = ("Item-text embedder: minilm (offline default), smollm2, st:HUB_ID_OR_PATH, hf:HUB_ID_OR_PATH; add +bf16 "
                 "(minilm+bf16) to embed under bf16 autocast, faster on CPUs with native bf16.")
STORE_HELP = "Folder of the on-disk Chroma store (ignored with --chroma-host)."
HOST_HELP = "HOST:PORT of a Chroma server (started with 'chroma run --path DIR --port 8000') to use instead of --store."
SIGNALS_HELP = ("LaMAR signals in the item texts, SET or SET:aspect,aspect (a signal set from 'agentrec signals "
                "generate', e.g. signals/ml:usage,intent).")
REQUIRED = " Required: on the command line or in --config."
# where the root group keeps the arguments as typed (click context meta): agentrec train --nproc runs them again
ARGV_KEY = "agentrec.argv"

EmbedderOption = Annotated[str, typer.Option(help=EMBEDDER_HELP)]
StoreOption = Annotated[Path, typer.Option(help=STORE_HELP)]
ChromaHostOption = Annotated[Optional[str], typer.Option(help=HOST_HELP)]
ThreadsOption = Annotated[int, typer.Option(help="Torch threads (default 1: often fastest on a small shared machine).")]
DEVICE_HELP = ("Where torch work runs: auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N. "
               "The CUDA paths are untested here (no GPU was available).")
DeviceOption = Annotated[str, typer.Option(help=DEVICE_HELP)]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or progress lines.")]
FIELDS_HELP = "Item text fields shown in prompts, comma-separated: title, year, genres, brand, categories, price, description."


# ---------------------------------------------------------------------------------------------- range checks
def checked(**rules):
    """Check the named options against their rules (a :class:`~agentrec.core.options.Range`,
    :class:`~agentrec.core.options.Names`, or :class:`~agentrec.core.options.Writable` for an output)
    before the command does anything.

    Settings whose library config range-checks them (train, protocol and compare settings) need no
    rule here; these are the options of commands whose work starts before a config would object
    (a model loads, a dataset is read), and outputs that would otherwise fail after the work. An error
    names the option by its field name; the error handler spells it as typed (``--max-history``), or a
    config file's key when the value came from ``--config``.
    """

    def decorate(func):
        signature = inspect.signature(func)
        unknown = sorted(set(rules) - set(signature.parameters))
        if unknown:  # a typo here would silently check nothing
            raise TypeError(f"{func.__name__} has no option {unknown}")
        hints = typing.get_type_hints(func, include_extras=True)
        arguments = {name for name in rules  # positional arguments are named by their metavar (RUN), not --run
                     if any(isinstance(m, typer.models.ArgumentInfo) for m in getattr(hints[name], "__metadata__", ()))}

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            given = signature.bind(*args, **kwargs)
            given.apply_defaults()
            for name, rule in rules.items():
                if name in arguments:
                    check_argument(name.upper(), rule, given.arguments[name])
                else:
                    rule.check(name, given.arguments[name])
            return func(*args, **kwargs)

        return wrapper

    return decorate


def check_argument(metavar: str, rule, value) -> None:
    """Check a positional argument; an error names it by its metavar (``RUN``), as ``--help`` shows it."""
    try:
        rule.check(metavar, value)
    except OptionError as error:
        raise error.as_typed(metavar) from None


def split_names(text: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


# ---------------------------------------------------------------------------------------------- engine options
ENGINE_PANEL = "LLM engine options"
# How a field is typed when it is not --field-name. --device means where torch work runs (CLARIFICATIONS);
# the hf engine's device is --llm-device. The old spelling --device stays a hidden alias of --llm-device only on
# a command without a --device of its own (signals generate, whose only torch work is the LLM); predict and
# compare have their own --device (session models, embedders, full ranking) since the release after the rename.
ENGINE_FLAGS = {"device": "--llm-device"}
ENGINE_ALIASES = {"device": "--device"}
ENGINE_SHARED = ("threads",)  # fields fed by the command's own option of that name (torch threads of this process)
ENGINE_HELP = {
    "model": "LLM: smollm2 (shipped, the default for hf and vllm), a hub id or a local folder; openai: the served "
             "model name (default: the server's first); langchain: PROVIDER:MODEL.",
    "device": "hf: where the LLM runs: cpu, cuda, cuda:N or auto.",
    "dtype": "hf, vllm: auto (float32 on CPU; on GPU bfloat16 for hf, the model's own for vllm), float32, "
             "bfloat16, float16.",
    "batch_size": "hf: chats per generate call.",
    "base_url": "openai: server URL, e.g. http://127.0.0.1:8000/v1.",
    "api_key": "openai: API key (default $OPENAI_API_KEY; local servers ignore it).",
    "concurrency": "openai, langchain: requests in flight at once.",
    "timeout_s": "openai: seconds per request.",
    "retries": "openai: retries on connection errors, 429 and 5xx, with exponential backoff.",
    "backoff_s": "openai: first wait before a retry, in seconds, doubled each time.",
    "backoff_max_s": "openai: longest wait between retries, in seconds.",
    "tensor_parallel_size": "vllm: GPUs per model.",
    "data_parallel_size": "vllm: replicas of the model, one process each on its own --tensor-parallel-size GPUs "
                          "(data parallel x tensor parallel GPUs in all); each generates a share of the chats.",
    "prefix_caching": "vllm: reuse the KV cache of shared prompt prefixes.",
    "max_model_len": "vllm: context length (default: the model's).",
    "gpu_memory_utilization": "vllm: share of GPU memory to use (default: vLLM's).",
    "enforce_eager": "vllm: skip compilation and graph capture (starts much sooner, generates slower).",
    "context_tokens": "all engines: context length (prompt + answer) prompts are cut to (default: the model's, "
                      "or the server's; else 8192).",
}
ENGINE_RULES = {
    "batch_size": COUNT, "threads": COUNT, "concurrency": COUNT, "timeout_s": POSITIVE, "retries": NON_NEGATIVE_INT,
    "backoff_s": NON_NEGATIVE, "backoff_max_s": NON_NEGATIVE, "tensor_parallel_size": COUNT, "data_parallel_size": COUNT,
    "max_model_len": COUNT,
    "gpu_memory_utilization": Range(0, 1, low_open=True), "context_tokens": Range(16, integer=True),
}


def _field_kind(hint) -> tuple[type, bool]:
    """``int | None`` -> ``(int, True)``; ``float`` -> ``(float, False)``."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        (base,) = [a for a in args if a is not type(None)]
        return base, True
    return hint, False


def _engine_parameters(defaults: dict, *, taken: frozenset = frozenset()) -> tuple[list[inspect.Parameter],
                                                                                     dict[str, str]]:
    """The options of :class:`EngineConfig`'s fields, and their parameter name -> field name; a hidden old
    spelling (:data:`ENGINE_ALIASES`) is left out where the command has an option of that name (``taken``)."""
    hints = typing.get_type_hints(EngineConfig)
    params, fields = [], {}
    for field in dataclasses.fields(EngineConfig):
        if field.name in ENGINE_SHARED:
            continue
        base, optional = _field_kind(hints[field.name])
        default = defaults.get(field.name, field.default)
        spelled = ENGINE_FLAGS.get(field.name, flag(field.name))
        decls = (f"{spelled}/--no-{spelled[2:]}",) if base is bool else (spelled,)
        text = field.metadata.get("help") or ENGINE_HELP.get(field.name) or f"EngineConfig.{field.name}."
        info = typer.Option(*decls, help=text, rich_help_panel=ENGINE_PANEL,
                            envvar="OPENAI_API_KEY" if field.name == "api_key" else None,
                            show_envvar=False)
        kind = Optional[base] if optional or default is None else base
        name = spelled[2:].replace("-", "_")
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[kind, info]))
        fields[name] = field.name
        if field.name in ENGINE_ALIASES and ENGINE_ALIASES[field.name][2:].replace("-", "_") not in taken:
            alias = ENGINE_ALIASES[field.name]
            hidden = typer.Option(alias, hidden=True, help=f"Old spelling of {spelled}.")
            params.append(inspect.Parameter(alias[2:].replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[base], hidden]))
    return params, fields


_, ENGINE_FIELDS = _engine_parameters({})  # option name -> EngineConfig field, e.g. llm_device -> device
_ALIASES = {ENGINE_ALIASES[field][2:].replace("-", "_"): field for field in ENGINE_ALIASES}  # device -> device


def engine_config_from(*, threads: int | None = None, **flags) -> EngineConfig:
    """An :class:`EngineConfig` from the engine options as the command received them.

    Args:
        threads: the command's ``--threads`` (the engine's torch threads).
        **flags: the options :func:`engine_options` adds, by parameter name (``llm_device``, ``batch_size``,
            ...; ``device`` is the hidden old spelling of ``--llm-device``, and wins when given).

    Raises:
        OptionError: a value out of range, named by its option.
    """
    values = {"threads": threads}
    for name, value in flags.items():
        if name in _ALIASES:
            if value is not None:
                values[_ALIASES[name]] = value
            continue
        if name not in ENGINE_FIELDS:
            raise TypeError(f"engine_config_from() got an unknown option {name!r}")
        values.setdefault(ENGINE_FIELDS[name], value)
    for name, rule in ENGINE_RULES.items():
        rule.check(name, values.get(name))
    return EngineConfig(**values)


def engine_options(*, defaults: dict | None = None):
    """Give a command ``--engine`` and one option per :class:`EngineConfig` field.

    The command declares ``engine: str`` and ``engine_config: EngineConfig`` (not options): it receives
    the engine's name and the config built by :func:`engine_config_from` from the options, its own
    ``threads`` included. ``defaults`` changes a field's default for this command (``{"batch_size": 16}``).
    A command that declares ``device`` itself keeps it (where its torch work runs): it then has no hidden
    ``--device`` alias of ``--llm-device``.
    """
    engine_param = inspect.Parameter(
        "engine", inspect.Parameter.KEYWORD_ONLY, default=EngineName(DEFAULT_ENGINE),
        annotation=Annotated[EngineName, typer.Option(help="LLM engine. " + choices_help(ENGINE_TABLE) + ".",
                                                      rich_help_panel=ENGINE_PANEL)])

    def decorate(func):
        signature = inspect.signature(func)
        missing = {"engine", "engine_config", "threads"} - set(signature.parameters)
        if missing:
            raise TypeError(f"{func.__name__} must declare {sorted(missing)} to take the engine options")
        engine_params, _ = _engine_parameters(defaults or {}, taken=frozenset(signature.parameters))
        names = [p.name for p in engine_params]
        hints = typing.get_type_hints(func, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
               for p in signature.parameters.values() if p.name not in ("engine", "engine_config")]

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            flags = {name: kwargs.pop(name) for name in names if name in kwargs}
            engine = kwargs.pop("engine", engine_param.default)
            kwargs["engine_config"] = engine_config_from(threads=kwargs.get("threads"), **flags)
            kwargs["engine"] = engine.value if isinstance(engine, Enum) else engine
            return func(*args, **kwargs)

        return with_signature(wrapper, own + [engine_param] + engine_params)

    return decorate


def with_signature(wrapper, params: list[inspect.Parameter]):
    """Give ``wrapper`` the signature (and evaluated annotations) typer reads to make its options."""
    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


# ---------------------------------------------------------------------------------------------- logging, threads
def set_verbosity(*, quiet: bool = False, verbose: bool = False) -> None:
    """agentrec's log level for this command: INFO, WARNING with ``--quiet``, DEBUG with ``--verbose``."""
    logging.getLogger("agentrec").setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def torch_threads(threads: int) -> None:
    """Torch's CPU threads for this process (imports torch: call it only when the work starts)."""
    import torch

    torch.set_num_threads(threads)
