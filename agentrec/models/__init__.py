"""Session recommenders. ``MODELS`` maps a name to ``module:Class``; each is imported when asked for."""

from __future__ import annotations

import importlib

MODELS: dict[str, str] = {
    "pop": "agentrec.models.popularity:Popularity",
    "gru4rec": "agentrec.models.gru4rec:GRU4Rec",
    "narm": "agentrec.models.narm:NARM",
    "srgnn": "agentrec.models.srgnn:SRGNN",
    "niser": "agentrec.models.niser:NISER",
    "msgat": "agentrec.models.msgat:MSGAT",
}


def model_class(name: str):
    try:
        module, cls = MODELS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
    return getattr(importlib.import_module(module), cls)
