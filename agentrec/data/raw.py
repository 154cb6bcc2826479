"""What every loader returns: raw interaction events, raw item metadata and a load report.

Loaders know file formats and nothing about splitting; protocols (``protocols.py``) know splitting
and nothing about file formats. ``RawData`` is the hand-over between the two.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from agentrec.core.errors import DataFormatError, NotFoundError, UsageError  # noqa: F401  (re-exported for the loaders)

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
            seconds, within int64; for sources without time, a monotone surrogate, see
            ``time_note``) and ``order`` (int64, position of the row in the source, the tie-breaker
            for equal timestamps; where a loader floored fractions of a second, the position in
            the exact time order instead, so flooring never reorders events).
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


def open_text(path: str | Path, *, newline: str | None = None):
    """Open a UTF-8 text file for reading, transparently decompressing ``.gz``.

    A byte-order mark at the start is read as one (``utf-8-sig``), not as part of the first field.
    Bytes that are not UTF-8 do not stop the read: they come through as lone surrogates
    (``surrogateescape``), so the loader can name the line (see :func:`undecodable`) and
    ``skip_bad`` can skip it.
    """
    path = Path(path)
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline=newline)
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline=newline)


def read_lines(path: str | Path, *, newline: str | None = None) -> Iterator[str]:
    """The lines of :func:`open_text`; a damaged ``.gz`` (truncated, or not gzip at all) raises
    ``DataFormatError`` naming the file and the line where reading stopped, not ``EOFError``.

    The iterator can feed ``csv.reader`` directly.
    """
    line_no = 0
    try:
        with open_text(path, newline=newline) as handle:
            for line_no, line in enumerate(handle, start=1):
                yield line
    except (EOFError, OSError, zlib.error) as error:
        reason = f"damaged compressed file, unreadable from this line on ({error})"
        raise DataFormatError(path, line_no + 1, reason) from None


def undecodable(text: str) -> str | None:
    """Why ``text`` (read by :func:`open_text`) is not valid UTF-8, or None when it is.

    Checked per line (or per record): ASCII lines, nearly all of them, cost one ``isascii``.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        char = ord(text[error.start])
        what = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"lone surrogate U+{char:04X}"
        return f"invalid UTF-8 ({what} at character {error.start + 1})"
    return None


# --------------------------------------------------------------------------------------------
# Field values: ids and timestamps, checked one by one (a bad value names its line, never wraps)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_NUMBER_CHARS = "0123456789+-.eE"


class BadValue(ValueError):
    """A field holds a value its column cannot take; the message is the reason, for a ``file:line``."""


def clip(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a 100 KB junk field must not become the message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind_of(value) -> str:
    """``a list``, ``an object``, ``a number``...: what a JSON or Python value is, for a message."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def clean_id(value, *, what: str) -> str:
    """An id as text: a string (surrounding spaces removed) or an integer; anything else is refused.

    Raises:
        BadValue: the value is empty, is a list, an object, a float, a boolean or null, or holds a
            control or invisible character (a tab, a NUL, a byte-order mark, a zero-width space).
    """
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        raise BadValue(f"{what} is {kind_of(value)} ({clip(value)}), expected an id")
    if not text:
        raise BadValue(f"empty {what}")
    if problem := undecodable(text):
        raise BadValue(f"{what}: {problem}")
    if not text.isprintable():
        raise BadValue(f"{what} {clip(text)} holds a control or invisible character")
    return text


def whole_seconds(value, *, what: str = "timestamp", floor_fractions: bool = False) -> tuple[int, bool]:
    """A timestamp as an exact integer that fits int64, and whether a fraction was floored.

    Accepted: an integer, an integral float, or a string of either (``"1383955200"``, ``"1.5e9"``);
    negative values are legal times before 1970. Never accepted: ``inf``, ``nan``, values outside
    int64 (``1e30`` must not wrap to -9.2e18), booleans, lists, objects, text. A fractional value
    is floored (towards minus infinity) when ``floor_fractions``, refused otherwise.

    Linear in the length of the value: integers of more than 19 digits are refused before any
    conversion, and no regular expression is involved.

    Raises:
        BadValue: the reason, e.g. ``timestamp '1e30' is outside the int64 range``.
    """
    expected = "a number" if floor_fractions else "a whole number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadValue(f"{what} is {kind_of(value)} ({clip(value)}), expected {expected}")
    shown = clip(value)
    if isinstance(value, str):
        text = value.strip()
        if not text or not text.isascii() or text.strip(_NUMBER_CHARS):
            raise BadValue(f"{what} {shown} is not {expected}")
        digits = text[1:] if text[0] in "+-" else text
        if digits.isdigit():
            if len(digits.lstrip("0")) > 19:
                raise BadValue(f"{what} {shown} is outside the int64 range")
            value = int(text)
        else:
            try:
                value = float(text)
            except ValueError:
                raise BadValue(f"{what} {shown} is not {expected}") from None
    floored = False
    if isinstance(value, float):
        if math.isnan(value):
            raise BadValue(f"{what} {shown} is not {expected}")
        if math.isinf(value):
            raise BadValue(f"{what} {shown} is outside the int64 range")
        if not value.is_integer():
            if not floor_fractions:
                raise BadValue(f"{what} {shown} is not {expected}")
            floored = True
        value = math.floor(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise BadValue(f"{what} {shown} is outside the int64 range")
    return value, floored


# --------------------------------------------------------------------------------------------
# Paths given as --source / --meta


def require_path(path: str | Path, *, want: str, takes: str, option: str = "--source") -> Path:
    """``path``, if it exists and is what the loader reads; otherwise a one-line error saying so.

    The error says what is wrong and, when it can, what to pass instead: an existing entry with a
    similar name in the same folder, the folder of a file that was passed where a folder belongs,
    or the nearest folder that does exist.

    Args:
        path: the value given for ``option``.
        want: ``"folder"``, ``"file"``, or both (``"folder (or .inter file)"``): what may be passed.
        takes: what ``option`` takes, for the message, e.g. ``"the folder holding NAME.inter"``.
        option: the option as the user types it.

    Raises:
        NotFoundError: the path does not exist, or is a file where a folder belongs (or the reverse).
    """
    path = Path(path)
    if path.is_dir():
        if "folder" in want:
            return path
        inside = sorted(_names(path, files_only=True))
        hint = f"; it holds {', '.join(inside[:6])}{'...' if len(inside) > 6 else ''}" if inside else "; it is empty"
        raise NotFoundError(f"{option} {path} is a folder; {option} takes {takes}{hint}")
    if path.is_file():
        if "file" in want:
            return path
        # The folder is worth suggesting when the file is one it should hold (sessions_train.csv).
        hint = f": did you mean {option} {path.parent}?" if path.name.split(".")[0] in takes else ""
        raise NotFoundError(f"{option} {path} is a file; {option} takes {takes}{hint}")
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    message = f"{option} {path}: no such {want}"
    if parent != path.parent:
        raise NotFoundError(f"{message} (the nearest folder that exists is {parent}); {option} takes {takes}")
    close = difflib.get_close_matches(path.name, _names(parent), n=1, cutoff=0.5)
    if close:
        raise NotFoundError(f"{message}; did you mean {option} {parent / close[0]}?")
    raise NotFoundError(f"{message} ({parent} has nothing named {path.name!r}); {option} takes {takes}")


def _names(folder: Path, *, files_only: bool = False, limit: int = 10_000) -> list[str]:
    """Up to ``limit`` visible names in ``folder`` (none when it cannot be listed)."""
    names = []
    try:
        for entry in folder.iterdir():
            if not entry.name.startswith(".") and (not files_only or entry.is_file()):
                names.append(entry.name)
                if len(names) >= limit:
                    break
    except OSError:
        pass
    return names
