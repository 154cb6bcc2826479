"""Typed settings from three places, one precedence: command-line flag > config file > default.

Every value is range-checked when its dataclass is made, before any work; an out-of-range value is an
:class:`~agentrec.core.options.OptionError` naming it as the user gave it: ``cfg.json: train.epochs`` for a
config-file value, ``--set dropout`` for a model setting, and the field name for a flag (the CLI spells
it ``--epochs``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

from agentrec.core.errors import DataFormatError, NotFoundError, UsageError
from agentrec.core.options import COUNT, DROPOUT, POSITIVE, OptionError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def read_config_file(path: str | Path | None) -> dict:
    if path is None:
        return {}
    if not Path(path).is_file():
        raise NotFoundError(f"--config {path}: no such file")
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise DataFormatError(path, error.lineno, f"not valid JSON ({error.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"{path}: expected an object with 'train' and 'model' objects, e.g. "
                         '{"train": {"epochs": 10}, "model": {"embedding_size": 64}}')
    unknown = sorted(set(data) - {"train", "model"})
    if unknown:
        raise UsageError(f"{path}: unknown sections {unknown}; expected 'train' and 'model'")
    return data


def merge_into(cls, defaults_from: dict, flags: dict, *, where: str, source: str | None = None,
               spelled: dict[str, str] | None = None, check=None):
    """Build dataclass ``cls`` from a config-file section, then flags that are not None.

    Args:
        cls: the settings dataclass; its ``__post_init__`` range-checks the fields.
        defaults_from: the config file's section for ``cls``.
        flags: values given on the command line (None: not given).
        where: what the settings are, for an unknown-setting error (``train settings``).
        source: how config-file values are named in an error (``cfg.json: train``).
        spelled: how some flags were typed (``{"dropout": "--set dropout"}``); the rest keep their
            field name, which the CLI spells as ``--name``.
        check: an extra check of the built object (the model settings' ranges).

    Raises:
        OptionError: a value is out of range; it names the value as the user gave it.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    given = {k: v for k, v in flags.items() if v is not None}
    values = {**defaults_from, **given}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(f"{where}: unknown settings {unknown}; known: {sorted(fields)}")
    try:
        made = cls(**values)
        if check is not None:
            check(made)
        return made
    except OptionError as error:
        if error.typed:
            raise
        if error.option in given and (spelled or {}).get(error.option):
            raise error.as_typed(spelled[error.option]) from None
        if error.option not in given and error.option in defaults_from and source:
            raise error.as_typed(f"{source}.{error.option}") from None
        raise


def check_model_config(config) -> None:
    """Range-check a model's settings by their kind, so every model's Config is covered as it is written.

    A whole number is a size or a count (>= 1), a ``*dropout`` a probability in [0, 1), any other
    number a scale (> 0); booleans and strings are left alone.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        kinds = set(typing.get_args(hints[f.name])) - {type(None)} or {hints[f.name]}
        value = getattr(config, f.name)
        if f.name.endswith("dropout"):
            DROPOUT.check(f.name, value)
        elif kinds == {int}:
            COUNT.check(f.name, value)
        elif kinds == {float}:
            POSITIVE.check(f.name, value)


def parse_setting(text: str, cls) -> tuple[str, object]:
    """``NAME=VALUE`` converted to the type of field NAME of dataclass ``cls``."""
    name, sep, raw = text.partition("=")
    if not sep:
        raise UsageError(f"--set {text!r}: expected NAME=VALUE")
    hints = typing.get_type_hints(cls)
    if name not in hints:
        raise UsageError(f"--set {name}: {cls.__name__} has no such setting; it has {sorted(hints)}")
    kind = hints[name]
    if kind is bool:
        if raw.lower() not in TRUE + FALSE:
            raise OptionError(f"--set {name}", f"takes true or false, got {raw!r}", typed=True)
        return name, raw.lower() in TRUE
    kinds = set(typing.get_args(kind)) - {type(None)} or {kind}
    kind = kinds.pop() if len(kinds) == 1 else kind
    try:
        return name, kind(raw) if kind in (int, float, str) else json.loads(raw)
    except (ValueError, json.JSONDecodeError):
        raise OptionError(f"--set {name}", f"takes {getattr(kind, '__name__', kind)}, got {raw!r}",
                          typed=True) from None


def jsonable(value):
    """``value`` with tuples turned into lists, recursively (what ``json`` writes and reads back)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
