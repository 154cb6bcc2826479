"""What every loader returns: raw interaction events, raw item metadata and a load report.

Loaders know file formats and nothing about splitting; protocols (``protocols.py``) know splitting
and nothing about file formats. ``RawData`` is the hand-over between the two.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from agentrec.errors import DataFormatError  # noqa: F401  (re-exported: loaders raise it from here)

logger = logging.getLogger(__name__)

# Text fields an item table may carry, beyond ``item`` (original id) and ``title``.
# List-valued fields hold lists of strings; the rest are scalars or missing.
TEXT_FIELDS = ("brand", "categories", "description", "year", "genres", "price")
LIST_FIELDS = ("categories", "genres")


@dataclass
class LoadReport:
    """Counts of everything a loader dropped or could not resolve; nothing is lost silently.

    ``bad_lines`` is filled only with ``skip_bad=True`` (otherwise the first bad line raises); each
    entry is ``"file:line: reason"`` and at most ``max_examples`` are kept, while ``counts`` keeps the
    full totals.
    """

    counts: dict[str, int] = field(default_factory=dict)
    bad_lines: list[str] = field(default_factory=list)
    max_examples: int = 20

    def add(self, key: str, n: int = 1) -> None:
        if n:
            self.counts[key] = self.counts.get(key, 0) + int(n)

    def bad_line(self, path: str | Path, line: int, reason: str) -> None:
        self.add("bad_lines")
        if len(self.bad_lines) < self.max_examples:
            self.bad_lines.append(f"{path}:{line}: {reason}")

    def to_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "bad_line_examples": list(self.bad_lines)}


class LineFaults:
    """Raise ``DataFormatError`` for a malformed line of one file, or count it with ``skip_bad``."""

    def __init__(self, path: str | Path, *, skip_bad: bool, report: LoadReport):
        self.path = path
        self.skip_bad = skip_bad
        self.report = report

    def __call__(self, line_no: int, reason: str) -> None:
        if not self.skip_bad:
            raise DataFormatError(self.path, line_no, reason + " (use --skip-bad to count and skip such lines)")
        self.report.bad_line(self.path, line_no, reason)


@dataclass
class RawData:
    """A loaded source, before any protocol.

    Attributes:
        name: short dataset name recorded in the stats (``ml-100k``, ``amazon2014-beauty``...).
        events: one row per interaction with columns ``user`` (str; for datasets that come as
            sessions, the session id), ``item`` (str, original item id), ``timestamp`` (int64,
            seconds; for sources without time, a monotone surrogate, see ``time_note``) and
            ``order`` (int64, position of the row in the source, the tie-breaker for equal
            timestamps).
        items: one row per item with columns ``item`` (str, original id), ``title`` (str or missing)
            and any of ``TEXT_FIELDS``.
        sources: path -> sha256 of every file read.
        report: what was dropped or unresolved while reading.
        given_sessions: True when ``user`` holds sessions the source defined (M2), not people.
        time_note: how ``timestamp`` was obtained, when it is not a real clock.
    """

    name: str
    events: pd.DataFrame
    items: pd.DataFrame
    sources: dict[str, str] = field(default_factory=dict)
    report: LoadReport = field(default_factory=LoadReport)
    given_sessions: bool = False
    time_note: str | None = None

    def resolve_items(self) -> None:
        """Reconcile events and items: count and drop events whose item has no metadata row only
        when metadata exists at all; add a metadata row (without text) for interacted items that
        lack one; count items without any text. Called once by ``prepare``."""
        if self.items.empty:
            self.items = pd.DataFrame({"item": pd.unique(self.events["item"]), "title": None})
            self.report.add("items_without_metadata", len(self.items))
        known = set(self.items["item"].to_numpy())
        unknown = ~self.events["item"].isin(known)
        if unknown.any():
            # Interactions with items absent from the metadata: kept (the id is real), recorded.
            missing = pd.unique(self.events.loc[unknown, "item"])
            self.report.add("interacted_items_missing_from_metadata", len(missing))
            extra = pd.DataFrame({"item": missing, "title": None})
            self.items = pd.concat([self.items, extra], ignore_index=True)
        title = self.items["title"]
        no_text = title.isna() | (title.astype(str).str.strip() == "")
        self.report.add("items_without_title", int(no_text.sum()))


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def open_text(path: str | Path):
    """Open a text file, transparently decompressing ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")
