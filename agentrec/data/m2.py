"""Amazon-M2 (KDD Cup 2023, task 1): multilingual shopping sessions (Jin et al., NeurIPS 2023 D&B).

The folder holds ``sessions_train.csv`` (``prev_items,next_item,locale``) and
``products_train.csv`` (``id,locale,title,price,brand,color,size,model,material,author,desc``).
``prev_items`` is a numpy array printed as text, ``['B09W9FND7K' 'B09JSPLN1M']``, which numpy
wraps over several lines for long sessions; the CSV writer then quotes it, so one record may span
several physical lines. The same product id appears once per locale, with titles in that
locale's language, so one locale is loaded at a time.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from agentrec.data.raw import DataFormatError, LineFaults, LoadReport, RawData, open_text, sha256_file

logger = logging.getLogger(__name__)

SESSIONS_FILE = "sessions_train.csv"
PRODUCTS_FILE = "products_train.csv"
SESSIONS_HEADER = ["prev_items", "next_item", "locale"]
PRODUCTS_HEADER = ["id", "locale", "title", "price", "brand", "color", "size", "model", "material", "author", "desc"]
LOCALES = ("DE", "JP", "UK", "ES", "FR", "IT")

TIME_NOTE = (
    "M2 publishes no clock: a session's row number in sessions_train.csv is the timestamp of all its "
    "events (their order is kept by 'order'), so later rows count as more recent; M2 does not say "
    "whether its rows are in time order"
)

# A whole printed array: quoted ids separated by whitespace (spaces, or newlines where numpy
# wrapped); commas are tolerated too, for files re-saved with Python list reprs.
_ARRAY = re.compile(r"\[\s*(?:'[^'\s]+'\s*,?\s*)*\]")
_TOKEN = re.compile(r"'([^']+)'")


def load_m2(source: str | Path, *, locale: str = "UK", skip_bad: bool = False) -> RawData:
    """Load the M2 task-1 training sessions and products of one locale.

    Each session row ``r`` becomes the events ``prev_items + [next_item]``, in order, all with
    user ``f"s{r}"`` and timestamp ``r`` (``r`` counts data rows of the file from 0, across all
    locales, so ids are stable whichever locale is chosen). Rows of other locales are counted
    (``sessions_other_locale``, ``products_other_locale``) and skipped; sessions with an empty
    ``prev_items`` are counted (``empty_sessions``) and dropped.

    Args:
        source: the folder with ``sessions_train.csv`` and ``products_train.csv`` (either may be
            gzipped, ``.csv.gz``).
        locale: one of DE, JP, UK, ES, FR, IT.
        skip_bad: count and skip malformed records instead of stopping at the first.

    Raises:
        DataFormatError: a malformed record (naming the file and the line where it starts), or a
            file whose header is not M2's.
    """
    folder = Path(source)
    locale = locale.upper()
    if locale not in LOCALES:
        raise ValueError(f"unknown M2 locale {locale!r}; choose one of {', '.join(LOCALES)}")
    sessions_path = _find(folder, SESSIONS_FILE)
    products_path = _find(folder, PRODUCTS_FILE)
    report = LoadReport()
    events = _read_sessions(sessions_path, locale=locale, skip_bad=skip_bad, report=report)
    items = _read_products(products_path, locale=locale, skip_bad=skip_bad, report=report)
    sources = {str(sessions_path): sha256_file(sessions_path), str(products_path): sha256_file(products_path)}
    name = f"m2-{locale.lower()}"
    logger.info("%s: %d events in %d sessions, %d products", name, len(events), events["user"].nunique(), len(items))
    return RawData(name=name, events=events, items=items, sources=sources, report=report,
                   given_sessions=True, time_note=TIME_NOTE)


def parse_prev_items(text: str) -> list[str] | None:
    """``"['A' 'B']"`` -> ``["A", "B"]``; ``"[]"`` -> ``[]``; None when the text is not such an array.

    A regular expression over quoted tokens, never ``eval``: the file is data, not code.
    """
    text = text.strip()
    if not _ARRAY.fullmatch(text):
        return None
    return _TOKEN.findall(text)


def _find(folder: Path, file_name: str) -> Path:
    for candidate in (folder / file_name, folder / f"{file_name}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder} has no {file_name} (nor {file_name}.gz); pass the M2 task-1 folder as --source")


def _records(path: Path, header: list[str], faults: LineFaults) -> Iterator[tuple[int, list[str]]]:
    """(physical line where the record starts, fields) for each data record after the header."""
    with open_text(path) as handle:
        reader = csv.reader(handle)
        first = next(reader, None)
        if first != header:
            raise DataFormatError(path, 1, f"header is {first!r}, expected {','.join(header)}")
        consumed = reader.line_num  # physical lines read so far; records may span several
        while True:
            start = consumed + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                consumed = reader.line_num
                faults(start, f"unreadable CSV record ({error})")
                continue
            consumed = reader.line_num
            if row:  # a blank line is no record
                yield start, row


def _read_sessions(path: Path, *, locale: str, skip_bad: bool, report: LoadReport) -> pd.DataFrame:
    faults = LineFaults(path, skip_bad=skip_bad, report=report)
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    for row_index, (line_no, row) in enumerate(_records(path, SESSIONS_HEADER, faults)):
        if len(row) != len(SESSIONS_HEADER):
            faults(line_no, f"expected {len(SESSIONS_HEADER)} fields, found {len(row)}")
            continue
        prev_text, next_item, row_locale = row
        if row_locale != locale:
            report.add("sessions_other_locale")
            continue
        prev_items = parse_prev_items(prev_text)
        if prev_items is None:
            faults(line_no, f"prev_items {_short(prev_text)!r} is not a printed array of quoted ids")
            continue
        if not next_item.strip():
            faults(line_no, "empty next_item")
            continue
        if not prev_items:
            report.add("empty_sessions")
            continue
        session = prev_items + [next_item.strip()]
        users.extend([f"s{row_index}"] * len(session))
        items.extend(session)
        times.extend([row_index] * len(session))
    return pd.DataFrame(
        {
            "user": pd.Series(users, dtype=str),
            "item": pd.Series(items, dtype=str),
            "timestamp": np.asarray(times, dtype=np.int64),
            "order": np.arange(len(users), dtype=np.int64),
        }
    )


def _read_products(path: Path, *, locale: str, skip_bad: bool, report: LoadReport) -> pd.DataFrame:
    faults = LineFaults(path, skip_bad=skip_bad, report=report)
    at = {name: i for i, name in enumerate(PRODUCTS_HEADER)}
    columns: dict[str, list] = {"item": [], "title": [], "brand": [], "price": [], "description": []}
    for line_no, row in _records(path, PRODUCTS_HEADER, faults):
        if len(row) != len(PRODUCTS_HEADER):
            faults(line_no, f"expected {len(PRODUCTS_HEADER)} fields, found {len(row)}")
            continue
        if row[at["locale"]] != locale:
            report.add("products_other_locale")
            continue
        if not row[at["id"]].strip():
            faults(line_no, "empty product id")
            continue
        columns["item"].append(row[at["id"]].strip())
        columns["title"].append(_text(row[at["title"]]))
        columns["brand"].append(_text(row[at["brand"]]))
        columns["price"].append(_float(row[at["price"]]))
        columns["description"].append(_text(row[at["desc"]]))
    report.add("metadata_rows", len(columns["item"]))
    return pd.DataFrame(
        {
            "item": pd.Series(columns["item"], dtype=str),
            "title": pd.Series(columns["title"], dtype=object),
            "brand": pd.Series(columns["brand"], dtype=object),
            "price": np.asarray(columns["price"], dtype=float),
            "description": pd.Series(columns["description"], dtype=object),
        }
    )


def _text(value: str) -> str | None:
    value = " ".join(value.split())
    return value or None


def _float(value: str) -> float:
    """A price, or NaN: a missing or garbled price is no reason to drop the product."""
    try:
        number = float(value)
    except ValueError:
        return float("nan")
    return number if np.isfinite(number) else float("nan")


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
