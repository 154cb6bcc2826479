"""``--config FILE`` for every command: a TOML or JSON file of the command's options.

The file's keys are the command's option names, with underscores or dashes (``max_history`` or
``max-history``; a flag spelled otherwise is also known by its spelling: ``set`` for ``--set``). Every
key is checked before the command runs: an unknown key, or a value of the wrong type (``epochs = "5"``),
is a :class:`~agentrec.core.errors.UsageError` naming the file and the key. One precedence: a flag given
on the command line > the file > the option's default. A value from the file that a range check refuses
is named by the file and its key (``cfg.toml: epochs must be >= 1, got 0``).

Relative paths in a file are taken from the current folder, as on the command line. Positional
arguments (``agentrec evaluate RUN``) stay on the command line.

Example (``agentrec train --config niser.toml``)::

    model = "niser"
    data = "data/ml-100k"
    out = "runs/niser"
    epochs = 10
    [model_settings]   # train only: the model's Config fields, as --set NAME=VALUE
    sigma = 16

``agentrec train`` also reads its older layout, ``{"train": {...}, "model": {...}}``: the ``train``
table holds options (named ``train.epochs`` in errors), the ``model`` table the model's settings.
"""

from __future__ import annotations

import functools
import inspect
import json
import tomllib
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from agentrec.cli.options import with_signature
from agentrec.core.errors import DataFormatError, NotFoundError, UsageError
from agentrec.core.options import OptionError, flag

ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", help="A TOML or JSON file of this command's options (keys as the option names, with _ or -); "
                     "flags given here win over it.", rich_help_panel="Configuration")]


@dataclass
class ConfigFile:
    """A config file as read: the option values it sets, and the sections a command reads itself.

    Attributes:
        path: the file.
        values: option name (as the file spells it, dashes made underscores) -> value.
        labels: option name -> how an error names it (``cfg.toml: epochs``, ``cfg.json: train.epochs``).
        sections: table name -> table, for the tables a command asked to keep (train's ``model``).
    """

    path: Path
    values: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)

    def label(self, key: str) -> str:
        return self.labels.get(key, f"{self.path}: {key}")


def read_file(path: Path) -> dict:
    """The file's top-level table: TOML (``.toml``) or JSON (``.json``), chosen by the extension."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"--config {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise DataFormatError(path, None, f"not valid TOML ({error})") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataFormatError(path, error.lineno, f"not valid JSON ({error.msg})") from None
    else:
        raise UsageError(f"--config {path}: give a .toml or a .json file")
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a table of options (key = value), got {type(data).__name__}")
    return data


def load(path: Path, *, sections: tuple[str, ...] = (), keep: tuple[str, ...] = (),
         reader: Callable[[dict, Path], dict] | None = None) -> ConfigFile:
    """Read ``path`` into a :class:`ConfigFile`.

    Args:
        sections: tables whose keys are options too (train's legacy ``[train]``), named ``section.key``.
        keep: tables kept whole for the command (train's ``[model]``), when their value is a table.
        reader: turns a file of another layout into options (compare's ``manifest.json``).
    """
    data = read_file(path)
    if reader is not None:
        data = reader(data, path)
    found = ConfigFile(Path(path))
    for key, value in data.items():
        if key in sections and isinstance(value, dict):
            for inner, inner_value in value.items():
                name = _key(inner)
                found.values[name] = inner_value
                found.labels[name] = f"{path}: {key}.{inner}"
        elif key in keep and isinstance(value, dict):
            found.sections[key] = value
        else:
            name = _key(key)
            found.values[name] = value
            found.labels[name] = f"{path}: {key}"
    return found


def _key(key: str) -> str:
    return str(key).strip().lstrip("-").replace("-", "_")


# ---------------------------------------------------------------------------------------------- values
def convert(value, hint, label: str):
    """``value`` from a file as the type option ``hint`` takes; a wrong type is a UsageError naming ``label``."""
    hint = _strip_annotated(hint)
    args = typing.get_args(hint)
    if args and type(None) in args:  # Optional[X]: null (JSON) leaves it unset
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        hint = _strip_annotated(hint)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        (inner,) = typing.get_args(hint)[:1]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise UsageError(f"{label} must be a list, got {value!r}")
        return [convert(v, inner, label) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{label} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{label} must be a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{label} must be a number, got {value!r}")
        return float(value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        values = [member.value for member in hint]
        if value not in values:
            raise UsageError(f"{label} must be one of {', '.join(map(str, values))}; got {value!r}")
        return hint(value)
    if hint is Path:
        if not isinstance(value, str):
            raise UsageError(f"{label} must be a path (a string), got {value!r}")
        return Path(value)
    if hint is str:
        if not isinstance(value, str):
            raise UsageError(f"{label} must be a string, got {value!r}")
        return value
    raise TypeError(f"no config-file conversion for {hint!r} ({label})")


def _strip_annotated(hint):
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def option_keys(params: dict[str, inspect.Parameter]) -> tuple[dict[str, str], dict[str, str]]:
    """(key -> parameter name for options, key -> metavar for positional arguments).

    An option is known by its parameter name and by its flags' spellings (``--set`` -> ``set``,
    ``--json`` -> ``json``); the first spelling of an on/off pair (``--fill/--no-fill`` -> ``fill``).
    """
    options, arguments = {}, {}
    for name, param in params.items():
        infos = [m for m in getattr(param.annotation, "__metadata__", ()) if isinstance(m, typer.models.ParameterInfo)]
        if any(isinstance(info, typer.models.ArgumentInfo) for info in infos):
            arguments[name] = name.upper()
            continue
        options[name] = name
        for info in infos:
            decls = list(info.param_decls or ())
            if isinstance(info.default, str) and info.default.startswith("-"):
                decls.insert(0, info.default)  # Annotated style: Option("--k", "-k"): the first name sits in default
            for decl in decls:
                first = decl.split("/")[0].strip()
                if first.startswith("--"):
                    options.setdefault(_key(first), name)
    return options, arguments


# ---------------------------------------------------------------------------------------------- the decorator
def with_config(*, required: tuple[str, ...] = (), sections: tuple[str, ...] = (), keep: tuple[str, ...] = (),
                reader: Callable[[dict, Path], dict] | None = None, help: str | None = None):
    """Give a command ``--config FILE`` and merge the file under the flags; check required options after.

    Args:
        required: options the command needs, from the command line or the file (a missing one is a
            click usage error, exit code 2, as click reports its own required options).
        sections, keep, reader: how the file is read (:func:`load`).
        help: the ``--config`` help, when the command reads more than its options.

    A command that declares ``config_file`` (not an option) receives the :class:`ConfigFile` (or None); one that
    declares ``typer_context`` receives the command's context.
    An untyped :class:`~agentrec.core.options.OptionError` about an option whose value came from the
    file is re-labelled with the file and key.
    """

    def decorate(func):
        signature = inspect.signature(func)
        hints = typing.get_type_hints(func, include_extras=True)
        params = {name: p.replace(annotation=hints.get(name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
                  for name, p in signature.parameters.items() if name not in ("config_file", "typer_context")}
        unknown = set(required) - set(params)
        if unknown:
            raise TypeError(f"{func.__name__} has no option {sorted(unknown)}")
        keys, arguments = option_keys(params)
        wants_file = "config_file" in signature.parameters
        wants_context = "typer_context" in signature.parameters
        option = ConfigOption
        if help:
            option = Annotated[Optional[Path], typer.Option("--config", help=help, rich_help_panel="Configuration")]

        @functools.wraps(func)
        def wrapper(*args, config: Path | None = None, typer_context: typer.Context | None = None, **kwargs):
            file = load(config, sections=sections, keep=keep, reader=reader) if config is not None else None
            from_file = {}
            if file is not None:
                for key, value in file.values.items():
                    if key in arguments:
                        raise UsageError(f"{file.label(key)}: {arguments[key]} is a positional argument; give it on "
                                         "the command line")
                    if key not in keys:
                        raise UsageError(f"{file.label(key)}: unknown option; this command takes "
                                         f"{', '.join(sorted(set(keys.values())))}")
                    name = keys[key]
                    if typer_context is not None and _given(typer_context, name):
                        continue  # the flag wins over the file
                    kwargs[name] = convert(value, params[name].annotation, file.label(key))
                    from_file[name] = file.label(key)
            missing = [name for name in required if kwargs.get(name) is None]
            if missing and typer_context is not None:  # a usage error, exit code 2, as for click's own options
                typer_context.fail(f"Missing option '{flag(missing[0])}' (give it here or in --config).")
            if missing:
                raise UsageError(f"missing option {flag(missing[0])}")
            if wants_file:
                kwargs["config_file"] = file
            if wants_context:
                kwargs["typer_context"] = typer_context
            try:
                return func(*args, **kwargs)
            except OptionError as error:
                if error.typed or error.option not in from_file:
                    raise
                raise error.as_typed(from_file[error.option]) from None

        config_param = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=option)
        # typer hands a parameter annotated typer.Context the command's context: it tells typed flags from defaults
        context_param = inspect.Parameter("typer_context", inspect.Parameter.KEYWORD_ONLY, default=None,
                                          annotation=typer.Context)
        return with_signature(wrapper, [*params.values(), config_param, context_param])

    return decorate


def _given(context: typer.Context, name: str) -> bool:
    """Whether option ``name`` was typed (or came from its environment variable), not defaulted."""
    source = context.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
