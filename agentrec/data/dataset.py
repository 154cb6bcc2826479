"""The canonical on-disk format of a prepared dataset, and its in-memory form.

A prepared dataset is a folder::

    items.jsonl    one JSON object per item, in id order:
                   {"item_id": 1, "original_id": "242", "title": "Kolya (1996)", "year": 1996,
                    "genres": ["Comedy"], ...}; only the text fields the source has appear.
    train.npz      next-item samples of each split, as numpy arrays (``allow_pickle=False``):
    valid.npz        history_indptr  int64 (n + 1,)  sample i's history is
    test.npz                         history[history_indptr[i]:history_indptr[i + 1]]
                     history         int32 (sum of lengths,) item ids, oldest first
                     target          int32 (n,)      the next item
                     session         str   (n,)      user or session id the sample comes from
                     timestamp       int64 (n,)      time of the target event (seconds)
    stats.json     counts, filtering steps and reasons, the protocol and its parameters, the
                   source files' sha256, the load report and the dataset fingerprint.

Item ids are 1..n_items; 0 is reserved for padding and never a target. The fingerprint is a
sha256 over the item table and the three splits, so a model trained on one dataset can refuse
another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")


@dataclass
class Samples:
    """Next-item samples in compressed-row form (see the module docstring for each array)."""

    history_indptr: np.ndarray
    history: np.ndarray
    target: np.ndarray
    session: np.ndarray
    timestamp: np.ndarray

    def __len__(self) -> int:
        return len(self.target)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.history_indptr)

    def history_of(self, i: int) -> np.ndarray:
        return self.history[self.history_indptr[i] : self.history_indptr[i + 1]]

    def subset(self, index: np.ndarray) -> Samples:
        """The samples at ``index`` (any order), as a new object."""
        index = np.asarray(index, dtype=np.int64)
        starts = self.history_indptr[index]
        lengths = self.history_indptr[index + 1] - starts
        indptr = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        gather = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return Samples(
            history_indptr=indptr,
            history=self.history[gather],
            target=self.target[index],
            session=self.session[index],
            timestamp=self.timestamp[index],
        )

    def padded(self, max_len: int | None = None, *, align: str = "left") -> np.ndarray:
        """Histories as a dense ``(n, L)`` int array padded with 0.

        Args:
            max_len: keep only the most recent ``max_len`` items (default: the longest history).
            align: ``"left"`` puts the oldest kept item in column 0 and pads on the right;
                ``"right"`` pads on the left so the most recent item is always in the last column.
        """
        lengths = self.lengths
        width = int(lengths.max(initial=0)) if max_len is None else int(max_len)
        kept = np.minimum(lengths, width)
        out = np.zeros((len(self), max(width, 1)), dtype=np.int64)
        if len(self) == 0 or width == 0:
            return out
        row = np.repeat(np.arange(len(self)), kept)
        # j: position of each kept item inside its kept window, 0 for the oldest kept item.
        j = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
        source = np.repeat(self.history_indptr[1:] - kept, kept) + j
        col = j if align == "left" else width - kept[row] + j
        out[row, col] = self.history[source]
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "history_indptr": self.history_indptr.astype(np.int64),
            "history": self.history.astype(np.int32),
            "target": self.target.astype(np.int32),
            "session": self.session.astype(str),
            "timestamp": self.timestamp.astype(np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays) -> Samples:
        return cls(**{key: np.asarray(arrays[key]) for key in
                      ("history_indptr", "history", "target", "session", "timestamp")})

    @classmethod
    def from_lists(cls, histories, targets, sessions=None, timestamps=None) -> Samples:
        """Build from Python lists (tests, small tools)."""
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        indptr = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        flat = np.array([i for h in histories for i in h], dtype=np.int32)
        n = len(targets)
        return cls(
            history_indptr=indptr,
            history=flat,
            target=np.asarray(targets, dtype=np.int32),
            session=np.asarray(sessions if sessions is not None else [str(i) for i in range(n)]).astype(str),
            timestamp=np.asarray(timestamps if timestamps is not None else np.zeros(n), dtype=np.int64),
        )

    def digest(self) -> str:
        h = hashlib.sha256()
        for key, value in self.to_arrays().items():
            h.update(key.encode())
            h.update(np.ascontiguousarray(value).tobytes())
        return h.hexdigest()


@dataclass
class PreparedDataset:
    """A prepared dataset in memory: item table, three splits and stats."""

    items: pd.DataFrame
    train: Samples
    valid: Samples
    test: Samples
    stats: dict
    path: Path | None = None

    @property
    def n_items(self) -> int:
        """Number of real items; valid ids are 1..n_items."""
        return len(self.items)

    @property
    def fingerprint(self) -> str:
        return self.stats["fingerprint"]

    @property
    def name(self) -> str:
        return self.stats.get("dataset", "?")

    def split(self, name: str) -> Samples:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def titles(self) -> list[str]:
        """Titles in id order (index 0 is item id 1); missing titles are empty strings."""
        return [t if isinstance(t, str) else "" for t in self.items["title"].tolist()]

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        items_bytes = _items_to_jsonl(self.items)
        (out / "items.jsonl").write_bytes(items_bytes)
        for name in SPLITS:
            np.savez(out / f"{name}.npz", **self.split(name).to_arrays())
        fingerprint = hashlib.sha256(
            hashlib.sha256(items_bytes).hexdigest().encode()
            + b"".join(self.split(name).digest().encode() for name in SPLITS)
        ).hexdigest()
        self.stats["format_version"] = FORMAT_VERSION
        self.stats["fingerprint"] = fingerprint
        (out / "stats.json").write_text(json.dumps(self.stats, indent=2, default=_json_default) + "\n")
        self.path = out
        return out

    @classmethod
    def load(cls, path: str | Path) -> PreparedDataset:
        path = Path(path)
        if not (path / "stats.json").exists():
            raise FileNotFoundError(
                f"{path} is not a prepared dataset (no stats.json); create one with "
                f"'agentrec data prepare NAME --out {path}'"
            )
        stats = json.loads((path / "stats.json").read_text())
        if stats.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format version {stats.get('format_version')} is not {FORMAT_VERSION}; prepare it again")
        items = read_items(path / "items.jsonl")
        splits = {}
        for name in SPLITS:
            with np.load(path / f"{name}.npz", allow_pickle=False) as arrays:
                splits[name] = Samples.from_arrays(arrays)
        return cls(items=items, stats=stats, path=path, **splits)


def read_items(path: Path) -> pd.DataFrame:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({error.msg})") from None
    items = pd.DataFrame(rows)
    if "year" in items:
        items["year"] = pd.array(items["year"], dtype="Int64")  # JSON nulls would make it float
    if len(items) and not (items["item_id"].to_numpy() == np.arange(1, len(items) + 1)).all():
        raise ValueError(f"{path}: item ids must be 1..{len(items)} in order")
    return items


def _items_to_jsonl(items: pd.DataFrame) -> bytes:
    columns = list(items.columns)
    # Plain Python lists first: iterating pandas columns element by element is the slow part.
    values = [items[c].astype(object).tolist() for c in columns]
    lines = []
    for record in zip(*values):
        row = {}
        for key, value in zip(columns, record):
            value = _clean(value)
            if value is not None or key in ("item_id", "original_id", "title"):
                row[key] = value
        lines.append(json.dumps(row, ensure_ascii=False))
    return ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")


def _clean(value):
    """JSON-ready scalar or list; None for every flavour of missing."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    return value


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
