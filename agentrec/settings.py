"""Typed settings from three places, one precedence: command-line flag > config file > default."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path


def read_config_file(path: str | Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    unknown = sorted(set(data) - {"train", "model"})
    if unknown:
        raise ValueError(f"{path}: unknown sections {unknown}; expected 'train' and 'model'")
    return data


def merge_into(cls, defaults_from: dict, flags: dict, *, where: str):
    """Build dataclass ``cls`` from a config-file section, then flags that are not None."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = dict(defaults_from)
    values.update({k: v for k, v in flags.items() if v is not None})
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown settings {unknown}; known: {sorted(fields)}")
    return cls(**values)


def build_train_config(config_path, flags: dict):
    from agentrec.training import TrainConfig

    section = read_config_file(config_path).get("train", {})
    return merge_into(TrainConfig, section, flags, where="train settings")


def parse_setting(text: str, cls) -> tuple[str, object]:
    """``NAME=VALUE`` converted to the type of field NAME of dataclass ``cls``."""
    name, sep, raw = text.partition("=")
    if not sep:
        raise ValueError(f"--set {text!r}: expected NAME=VALUE")
    hints = typing.get_type_hints(cls)
    if name not in hints:
        raise ValueError(f"--set {name}: {cls.__name__} has no such setting; it has {sorted(hints)}")
    kind = hints[name]
    if kind is bool:
        return name, raw.lower() in ("1", "true", "yes", "on")
    try:
        return name, kind(raw) if kind in (int, float, str) else json.loads(raw)
    except (ValueError, json.JSONDecodeError):
        raise ValueError(f"--set {name}={raw}: not a valid {getattr(kind, '__name__', kind)}") from None


def build_model(name: str, dataset, config_path=None, *, embedding_size: int | None = None, settings=()):
    from agentrec.models import model_class

    cls = model_class(name)
    section = read_config_file(config_path).get("model", {})
    flags = dict(parse_setting(s, cls.Config) for s in settings)
    if embedding_size is not None:
        flags["embedding_size"] = embedding_size
    model_config = merge_into(cls.Config, section, flags, where=f"{name} settings")
    return cls(dataset.n_items, model_config)
