"""Session recommenders. :data:`MODELS` is the registry: a name, its class's dotted path and one line of help.

A new model is one file (its session encoder, on :class:`~agentrec.models.base.SessionModel`) and one
``MODELS.add`` line here; the CLI's ``--model`` choices come from this table.
"""

from __future__ import annotations

from agentrec.core.registry import Registry

MODELS = Registry("model", "--model")
MODELS.add("pop", "agentrec.models.popularity:Popularity", "most-popular floor (training-target counts)")
MODELS.add("gru4rec", "agentrec.models.gru4rec:GRU4Rec", "GRU4Rec, Hidasi et al. 2016")
MODELS.add("narm", "agentrec.models.narm:NARM", "NARM, Li et al. 2017")
MODELS.add("srgnn", "agentrec.models.srgnn:SRGNN", "SR-GNN, Wu et al. 2019")
MODELS.add("niser", "agentrec.models.niser:NISER", "NISER+, Gupta et al. 2019")
MODELS.add("msgat", "agentrec.models.msgat:MSGAT", "MSGAT, Qiao et al. 2023")


def model_class(name: str):
    """The class registered as ``name``; an unknown name is a UsageError listing the known ones."""
    return MODELS.load(name)
