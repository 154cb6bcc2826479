"""Turn a loaded source into a prepared dataset: protocol, stable item ids, item table, stats."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from agentrec.core import __version__
from agentrec.core.errors import DataFormatError, UsageError
from agentrec.data import protocols as P
from agentrec.data.dataset import SPLITS, PreparedDataset, Samples
from agentrec.data.raw import TEXT_FIELDS, RawData

logger = logging.getLogger(__name__)

ID_RULE = "item ids 1..n follow the sorted original ids (numeric order when every id is an integer); 0 is padding"
# the options that decide how much survives each protocol, named in the error for an empty split
FILTER_OPTIONS = {
    "leave-one-out": "--min-user-interactions",
    "semsr": "--min-user-interactions, --min-item-count, --valid-fraction, --test-fraction",
    "gap": "--gap-s, --min-item-count, --valid-fraction, --test-fraction",
    "m2": "--valid-fraction, --test-fraction, --test-sessions",
}


def prepare(raw: RawData, protocol) -> PreparedDataset:
    """Apply ``protocol`` to ``raw`` and build the canonical dataset (not yet written to disk).

    Raises:
        DataFormatError: the source holds no interaction (a header-only file, or every line skipped).
        UsageError: the protocol leaves no item, or an empty valid or test split (an empty train
            split is logged as a warning: zero-shot LLMs need none).
    """
    started = time.perf_counter()
    if raw.events.empty:
        skipped = raw.report.counts.get("bad_lines", 0)
        why = f"all {skipped:,} lines were malformed and skipped" if skipped else "the source holds no event rows (a header only?)"
        raise DataFormatError(", ".join(raw.sources) or raw.name, None, f"no interactions to prepare: {why}")
    raw_counts = {
        "events": len(raw.events),
        "users_or_sessions": int(raw.events["user"].nunique()),
        "items_interacted": int(raw.events["item"].nunique()),
        "items_in_metadata": len(raw.items),
    }
    metadata_only = len(set(raw.items["item"].to_numpy()) - set(raw.events["item"].to_numpy()))
    raw.resolve_items()
    steps = P.Steps()
    seqs, originals = P.events_to_sequences(raw.events)
    seqs, splits = P.apply(protocol, seqs, steps)
    _refuse_empty(raw, protocol, seqs, splits)

    # Stable ids: the surviving items, sorted by original id.
    surviving = np.unique(seqs.items)
    surviving_ids = originals[surviving]
    order = _id_order(surviving_ids)
    code_to_id = np.zeros(len(originals), dtype=np.int32)
    code_to_id[surviving[order]] = np.arange(1, len(surviving) + 1, dtype=np.int32)
    splits = {name: _remap(samples, code_to_id) for name, samples in splits.items()}
    items = _item_table(raw, surviving_ids[order])

    interacted_but_dropped = raw_counts["items_interacted"] - len(items)
    stats = {
        "dataset": raw.name,
        "created_by": f"agentrec {__version__}",
        "protocol": P.describe(protocol),
        "id_rule": ID_RULE,
        "time_note": raw.time_note,
        "raw": raw_counts,
        "load_report": raw.report.to_dict(),
        "filtering": steps.rows
        + [
            {"step": "catalogue", "reason": "items left without any interaction after filtering",
             "items_removed": int(interacted_but_dropped)},
            {"step": "catalogue", "reason": "metadata rows of items nobody interacted with (not in the catalogue)",
             "items_removed": int(metadata_only)},
        ],
        "counts": _counts(seqs, splits, items),
        "sources": raw.sources,
        "prepare_seconds": round(time.perf_counter() - started, 3),
    }
    return PreparedDataset(items=items, stats=stats, **splits)


def _refuse_empty(raw: RawData, protocol, seqs: P.Sequences, splits: dict[str, Samples]) -> None:
    """An empty catalogue, or an empty valid or test split, is no dataset: say what the filters left and
    what to change. An empty train split (leave-one-out where every user has exactly three events) is
    only warned about: a zero-shot LLM needs no training data, and ``agentrec train`` refuses it."""
    left = f"{len(seqs):,} sequences with {int(seqs.lengths.sum()):,} events are left after filtering"
    change = FILTER_OPTIONS.get(protocol.name, "the protocol options")
    if not len(seqs) or not seqs.lengths.sum():
        raise UsageError(f"{raw.name}: the catalogue would be empty: no sequence survives the {protocol.name} "
                         f"protocol's filters ({len(raw.events):,} events in the source); change {change}")
    empty = [name for name in ("valid", "test") if not len(splits[name])]
    if empty:
        raise UsageError(f"{raw.name}: the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} would be "
                         f"empty ({left}); change {change}, or use a larger source")
    if not len(splits["train"]):
        logger.warning("%s: the train split is empty (%s): models cannot be trained on it", raw.name, left)


def _id_order(ids: np.ndarray) -> np.ndarray:
    as_str = ids.astype(str)
    if all(s.lstrip("-").isdigit() for s in as_str[:1000]) and np.char.isdigit(np.char.lstrip(as_str, "-")).all():
        return np.argsort(as_str.astype(np.int64), kind="stable")
    return np.argsort(as_str, kind="stable")


def _remap(samples: Samples, code_to_id: np.ndarray) -> Samples:
    return Samples(
        history_indptr=samples.history_indptr,
        history=code_to_id[samples.history],
        target=code_to_id[samples.target],
        session=samples.session,
        timestamp=samples.timestamp,
    )


def _item_table(raw: RawData, original_ids: np.ndarray) -> pd.DataFrame:
    meta = raw.items.copy()
    meta["item"] = meta["item"].astype(str)
    duplicated = meta["item"].duplicated(keep="first")
    if duplicated.any():
        raw.report.add("duplicate_metadata_rows_ignored", int(duplicated.sum()))
        meta = meta[~duplicated]
    meta = meta.set_index("item")
    table = pd.DataFrame({"item_id": np.arange(1, len(original_ids) + 1), "original_id": original_ids.astype(str)})
    joined = meta.reindex(table["original_id"])
    table["title"] = joined["title"].to_numpy() if "title" in joined else None
    for column in TEXT_FIELDS:
        if column in joined and joined[column].notna().any():
            table[column] = joined[column].to_numpy()
    if "year" in table:
        table["year"] = pd.array(table["year"], dtype="Int64")
    return table


def _counts(seqs: P.Sequences, splits: dict[str, Samples], items: pd.DataFrame) -> dict:
    train_items = np.zeros(len(items) + 1, dtype=bool)
    train = splits["train"]
    train_items[train.target] = True
    train_items[train.history] = True
    counts = {
        "items": len(items),
        "sequences": len(seqs),
        "events": int(seqs.lengths.sum()),
        "mean_sequence_length": round(float(seqs.lengths.mean()), 3) if len(seqs) else 0.0,
        "items_with_title": int(items["title"].notna().sum()),
    }
    for name in SPLITS:
        samples = splits[name]
        counts[f"{name}_samples"] = len(samples)
        counts[f"{name}_sessions"] = int(len(np.unique(samples.session)))
        counts[f"{name}_mean_history"] = round(float(samples.lengths.mean()), 3) if len(samples) else 0.0
        if name != "train":
            counts[f"{name}_targets_unseen_in_train"] = int((~train_items[samples.target]).sum())
    return counts
