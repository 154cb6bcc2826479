"""How good a signal set is: coverage, diversity, duplicates, novelty, per-category repetition; de-duplication.

:func:`signal_report` measures each aspect of a set (see its docstring for the metrics) and writes
``report.md`` and ``report.json`` into the set's folder; with ``dedup_out`` it also writes a copy in
which every near duplicate of an earlier item's signal is marked removed (:func:`write_dedup`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from agentrec.core import fsutil
from agentrec.core.errors import UsageError
from agentrec.core.templates import _value, item_texts
from agentrec.data.dataset import PreparedDataset
from agentrec.retrieval.embedders import get_embedder
from agentrec.signals.cleaning import norm_words
from agentrec.signals.store import (
    STATUS_EMPTY,
    STATUS_OK,
    STATUS_REMOVED,
    LoadReport,
    SignalSet,
    SignalSetMismatchError,
    catalogue_fingerprint,
)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of ``texts`` (lower-cased words; n-grams never cross texts); 0 if none."""
    total, seen = 0, set()
    for text in texts:
        words = norm_words(text)
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def max_other_similarity(vectors: np.ndarray, *, block: int = 2048) -> np.ndarray:
    """``(n,)`` largest cosine similarity of each unit row to any *other* row (-inf when n == 1)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    best = np.full(n, -np.inf, dtype=np.float32)
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors.T  # (block, n)
        rows = np.arange(start, min(n, start + block))
        sims[rows - start, rows] = -np.inf  # not itself
        best[rows] = sims.max(axis=1) if n > 1 else -np.inf
    return best


def near_duplicate_rate(vectors: np.ndarray, threshold: float) -> float:
    """Share of rows whose cosine similarity to some other row is at least ``threshold``."""
    if len(vectors) < 2:
        return 0.0
    return float((max_other_similarity(vectors) >= threshold).mean())


def novelty(signal_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """``(n,)`` 1 - cosine similarity between each signal and its own item's text (unit rows)."""
    return 1.0 - np.einsum("ij,ij->i", np.asarray(signal_vectors, np.float32), np.asarray(item_vectors, np.float32))


def category_repetitiveness(vectors: np.ndarray, categories: list[list[str]], threshold: float, *,
                            min_items: int = 2) -> list[dict]:
    """Per category: items, mean pairwise cosine of their signals, and their near-duplicate rate within it.

    An item belongs to every category it lists. Categories with fewer than ``min_items`` signals are
    left out. Sorted by mean pairwise cosine, most repetitive first.
    """
    members: dict[str, list[int]] = {}
    for row, cats in enumerate(categories):
        for cat in dict.fromkeys(cats or []):
            members.setdefault(str(cat), []).append(row)
    out = []
    for cat, rows in members.items():
        if len(rows) < min_items:
            continue
        v = np.asarray(vectors, np.float32)[rows]
        sims = v @ v.T
        m = len(rows)
        mean = float((sims.sum() - np.trace(sims)) / (m * (m - 1)))
        out.append({"category": cat, "items": m, "mean_cosine": mean,
                    "near_duplicate_rate": near_duplicate_rate(v, threshold)})
    return sorted(out, key=lambda r: (-r["mean_cosine"], r["category"]))


def dedup_keep(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """``(n,)`` bool: greedy de-duplication in row order; a row is dropped when its cosine similarity
    to an earlier *kept* row is at least ``threshold``."""
    vectors = np.asarray(vectors, np.float32)
    keep = np.zeros(len(vectors), dtype=bool)
    kept_rows: list[int] = []
    for row in range(len(vectors)):
        if kept_rows and float((vectors[kept_rows] @ vectors[row]).max()) >= threshold:
            continue
        keep[row] = True
        kept_rows.append(row)
    return keep


def _item_categories(dataset) -> tuple[str, list[list[str]]]:
    """The column that groups items (genres for MovieLens, categories for Amazon) and each item's groups."""

    for column in ("genres", "categories"):
        if column in dataset.items:
            values = [_value(v) for v in dataset.items[column].astype(object).tolist()]
            lists = [v if isinstance(v, list) else ([str(v)] if v else []) for v in values]
            if any(lists):
                return column, lists
    return "none", [[] for _ in range(dataset.n_items)]


def signal_report(path: str | Path, *, dataset=None, embedder="minilm", threshold: float = 0.9,
                  top_categories: int = 10, dedup_out: str | Path | None = None) -> dict:
    """Quality of a signal set, per aspect; optionally write a de-duplicated copy.

    Metrics (per aspect, over the items with a usable signal):

    * ``coverage``: items with a usable signal / catalogue items; ``empty``: kept empty after retries;
      ``missing``: never generated.
    * ``distinct_1``, ``distinct_2``: distinct word unigrams / bigrams over all of them.
    * ``exact_duplicate_rate``: share of signals whose text (case and spacing aside) another item has too.
    * ``near_duplicate_rate``: share whose embedding has cosine similarity >= ``threshold`` with another item's.
    * ``novelty``: mean of 1 - cosine(signal, the item's own metadata text), both embedded by ``embedder``.
    * per category (genre / category): mean pairwise cosine and near-duplicate rate within the category.

    Args:
        path: the signal set folder.
        dataset: the PreparedDataset (default: the folder recorded in the manifest).
        embedder: an Embedder or its name (default MiniLM, offline).
        threshold: cosine similarity from which two signals count as near duplicates.
        top_categories: categories per aspect in the markdown (all are in the JSON).
        dedup_out: write a copy of the set there in which every near duplicate of an earlier item's
            signal (item id order) is removed (``status: "removed"``).

    Returns:
        The report as a dict; ``report.md`` and ``report.json`` are written into the set folder.
    """

    signal_set = SignalSet(path)
    manifest = signal_set.manifest
    if dataset is None:
        if not manifest.get("dataset_path"):
            raise UsageError(f"signal set {path} does not record its dataset folder; pass --data")
        dataset = PreparedDataset.load(manifest["dataset_path"])
    elif not isinstance(dataset, PreparedDataset):
        dataset = PreparedDataset.load(dataset)
    if manifest["catalogue_fingerprint"] != catalogue_fingerprint(dataset):
        raise SignalSetMismatchError(f"signal set {path} was generated for another catalogue than {dataset.name}")
    embedder = get_embedder(embedder) if isinstance(embedder, str) else embedder
    records, load = signal_set.read()
    n = dataset.n_items
    plain = item_texts(dataset.items)
    category_column, categories = _item_categories(dataset)
    report = {"set": str(signal_set.path), "dataset": dataset.name, "items": n, "engine": manifest["engine"],
              "embedder": embedder.fingerprint, "threshold": threshold, "category_column": category_column,
              "load": asdict(load), "aspects": {}}
    removed: dict[tuple[int, str], dict] = {}
    for aspect in manifest["aspects"]:
        rows = sorted((item, r) for (item, a), r in records.items() if a == aspect)
        ok = [(item, r["text"]) for item, r in rows if r.get("status") == STATUS_OK and r["text"]]
        empty = sum(1 for _, r in rows if r.get("status") == STATUS_EMPTY)
        stats = {"coverage": len(ok) / n if n else 0.0, "signals": len(ok), "empty": empty,
                 "missing": n - len(rows), "removed": sum(1 for _, r in rows if r.get("status") == STATUS_REMOVED)}
        if ok:
            items = [item for item, _ in ok]
            texts = [text for _, text in ok]
            vectors = embedder.embed(texts)
            own = embedder.embed([plain[i - 1] for i in items])
            keys = [" ".join(norm_words(t)) for t in texts]
            counts: dict[str, int] = {}
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
            nov = novelty(vectors, own)
            stats.update(
                distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2),
                exact_duplicate_rate=sum(counts[k] > 1 for k in keys) / len(keys),
                near_duplicate_rate=near_duplicate_rate(vectors, threshold),
                novelty=float(nov.mean()), mean_words=float(np.mean([len(norm_words(t)) for t in texts])),
                categories=category_repetitiveness(vectors, [categories[i - 1] for i in items], threshold),
            )
            if dedup_out is not None:
                keep = dedup_keep(vectors, threshold)
                for item, kept in zip(items, keep):
                    if not kept:
                        removed[(item, aspect)] = records[(item, aspect)]
                stats["dedup_removed"] = int((~keep).sum())
        report["aspects"][aspect] = stats
    if dedup_out is not None:
        report["dedup_out"] = str(write_dedup(signal_set, records, removed, dedup_out, threshold))
    fsutil.atomic_write_text(signal_set.path / "report.json", json.dumps(report, indent=2) + "\n")
    fsutil.atomic_write_text(signal_set.path / "report.md", format_report(report, top_categories=top_categories) + "\n")
    return report


def write_dedup(source: SignalSet, records: dict, removed: dict, out: str | Path, threshold: float) -> Path:
    """A copy of ``source`` with the ``removed`` pairs marked ``status: "removed"`` (their text kept in ``raw``)."""
    target = SignalSet(out)
    if target.path.resolve() == source.path.resolve():
        raise UsageError("the de-duplicated set must go to another folder than its source")
    if target.records_path.exists():
        raise UsageError(f"{target.path} already holds a signal set; choose another folder for the de-duplicated copy")
    manifest = dict(source.manifest)
    manifest["derived_from"] = {"set": str(source.path.resolve()), "dedup_threshold": threshold,
                                "removed": len(removed)}
    target.write_manifest(manifest)
    lines = []
    for key, record in sorted(records.items()):
        if key in removed:
            record = {**record, "status": STATUS_REMOVED, "text": "", "raw": record["text"]}
        lines.append(record)
    target.append(lines)
    return target.path


def format_report(report: dict, *, top_categories: int = 10) -> str:
    """The report as markdown tables (percentages where a share)."""
    lines = [
        f"# Signal set report: {report['set']}",
        "",
        f"{report['dataset']}, {report['items']:,} items; generated by `{report['engine']}`; embedder "
        f"`{report['embedder']}`; near duplicate = cosine similarity >= {report['threshold']}; novelty = mean "
        f"1 - cosine(signal, item metadata text). Records read: {LoadReport(**report['load']).describe()}.",
        "",
        "| aspect | coverage | signals | empty | missing | distinct-1 | distinct-2 | exact dup | near dup | novelty "
        "| words |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for aspect, s in report["aspects"].items():
        if s["signals"]:
            lines.append(f"| {aspect} | {100 * s['coverage']:.1f}% | {s['signals']:,} | {s['empty']:,} | "
                         f"{s['missing']:,} | {s['distinct_1']:.3f} | {s['distinct_2']:.3f} | "
                         f"{100 * s['exact_duplicate_rate']:.1f}% | {100 * s['near_duplicate_rate']:.1f}% | "
                         f"{s['novelty']:.3f} | {s['mean_words']:.1f} |")
        else:
            lines.append(f"| {aspect} | 0.0% | 0 | {s['empty']:,} | {s['missing']:,} | - | - | - | - | - | - |")
    for aspect, s in report["aspects"].items():
        cats = s.get("categories") or []
        if not cats:
            continue
        lines += ["", f"## {aspect}: most repetitive {report['category_column']} (of {len(cats)})", "",
                  f"| {report['category_column']} | items | mean cosine | near dup |", "|---|---:|---:|---:|"]
        for row in cats[:top_categories]:
            lines.append(f"| {row['category']} | {row['items']:,} | {row['mean_cosine']:.3f} | "
                         f"{100 * row['near_duplicate_rate']:.1f}% |")
    if report.get("dedup_out"):
        removed = {a: s.get("dedup_removed", 0) for a, s in report["aspects"].items()}
        lines += ["", f"De-duplicated copy: {report['dedup_out']} (removed: "
                  + ", ".join(f"{a} {k}" for a, k in removed.items()) + ")"]
    return "\n".join(lines)
