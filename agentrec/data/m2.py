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
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd

from agentrec.core.errors import UsageError
from agentrec.data.raw import (
    BadValue,
    DataFormatError,
    LineFaults,
    LoadReport,
    NotFoundError,
    RawData,
    clean_id,
    read_lines,
    require_path,
    sha256_file,
    undecodable,
)

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

# One quoted id. The array is checked by hand around it (brackets, then only whitespace or commas
# between ids): a pattern for the whole array with a repeated group backtracks exponentially on a
# row that lost its ']' (40 ids took minutes). Each attempt of this one stops at the next quote,
# so a scan is linear in the length of the text.
_QUOTED = re.compile(r"'([^']*)'")
_SEPARATORS = " \t\r\n,"


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
    locale = locale.upper()
    if locale not in LOCALES:
        raise UsageError(f"unknown M2 locale {locale!r}; choose one of {', '.join(LOCALES)}")
    folder = require_path(source, want="folder",
                          takes=f"the M2 task-1 folder holding {SESSIONS_FILE} and {PRODUCTS_FILE}")
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

    Quoted ids separated by whitespace (spaces, or newlines where numpy wrapped) or commas (files
    re-saved with Python list reprs). Never ``eval``: the file is data, not code. Linear time.
    """
    ids, _ = _parse_array(text)
    return ids


def _parse_array(text: str) -> tuple[list[str] | None, str]:
    """(ids, "") for a printed array of quoted ids, or (None, why not)."""
    text = text.strip()
    if not text.startswith("["):
        return None, "does not start with '['"
    if not text.endswith("]") or len(text) < 2:
        return None, "has no closing ']'"
    ids: list[str] = []
    end = 1  # where the text after the last id starts
    for match in _QUOTED.finditer(text, 1, len(text) - 1):
        gap = text[end : match.start()]
        if gap.strip(_SEPARATORS):
            return None, _gap_problem(gap)
        token = match.group(1)
        if not token or token.split() != [token]:
            return None, f"holds the id {_short(repr(token))}, which is empty or has whitespace in it"
        ids.append(token)
        end = match.end()
    rest = text[end:-1]
    if rest.strip(_SEPARATORS):
        return None, _gap_problem(rest)
    return ids, ""


def _gap_problem(gap: str) -> str:
    if "..." in gap:
        return "holds '...': numpy shortened the array when it was printed"
    if "'" in gap:
        return "has a quote that is not closed"
    return f"has {_short(gap.strip(_SEPARATORS))!r} outside quotes"


def _find(folder: Path, file_name: str) -> Path:
    for candidate in (folder / file_name, folder / f"{file_name}.gz"):
        if candidate.exists():
            return candidate
    raise NotFoundError(f"{folder} has no {file_name} (nor {file_name}.gz); pass the M2 task-1 folder as --source")


def _records(path: Path, header: list[str], faults: LineFaults) -> Iterator[tuple[int, list[str] | None]]:
    """(physical line where the record starts, fields) for each data record after the header.

    A record that cannot be read (broken quoting, bytes that are not UTF-8) is reported to
    ``faults`` and yielded as ``None``, so that row numbers stay those of the file.
    """
    lines = read_lines(path, newline="")  # a damaged .gz is named, not an EOFError
    with closing(lines):
        reader = csv.reader(lines)
        try:
            first = next(reader, None)
        except csv.Error as error:
            raise DataFormatError(path, 1, f"unreadable CSV header ({error})") from None
        if first != header:
            raise DataFormatError(path, 1, f"header is {_short(repr(first), 200)}, expected {','.join(header)}")
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
                yield start, None
                continue
            consumed = reader.line_num
            if not row:  # a blank line is no record
                continue
            for value in row:
                if problem := undecodable(value):
                    faults(start, problem)
                    row = None
                    break
            yield start, row


def _read_sessions(path: Path, *, locale: str, skip_bad: bool, report: LoadReport) -> pd.DataFrame:
    faults = LineFaults(path, skip_bad=skip_bad, report=report)
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    for row_index, (line_no, row) in enumerate(_records(path, SESSIONS_HEADER, faults)):
        if row is None:
            continue
        if len(row) != len(SESSIONS_HEADER):
            faults(line_no, f"expected {len(SESSIONS_HEADER)} fields, found {len(row)}")
            continue
        prev_text, next_item, row_locale = row
        if row_locale not in LOCALES:
            faults(line_no, f"locale {_short(row_locale)!r} is not one of {', '.join(LOCALES)}")
            continue
        if row_locale != locale:
            report.add("sessions_other_locale")
            continue
        prev_items, problem = _parse_array(prev_text)
        if prev_items is None:
            faults(line_no, f"prev_items {_short(prev_text)!r} is not a printed array of quoted ids: it {problem}")
            continue
        try:
            next_item = _m2_id(next_item, what="next_item")
            prev_items = [_m2_id(item, what="an id in prev_items") for item in prev_items]
        except BadValue as error:
            faults(line_no, str(error))
            continue
        if not prev_items:
            report.add("empty_sessions")
            continue
        session = prev_items + [next_item]
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
        if row is None:
            continue
        if len(row) != len(PRODUCTS_HEADER):
            faults(line_no, f"expected {len(PRODUCTS_HEADER)} fields, found {len(row)}")
            continue
        if row[at["locale"]] not in LOCALES:
            faults(line_no, f"locale {_short(row[at['locale']])!r} is not one of {', '.join(LOCALES)}")
            continue
        if row[at["locale"]] != locale:
            report.add("products_other_locale")
            continue
        try:
            item = _m2_id(row[at["id"]], what="product id")
        except BadValue as error:
            faults(line_no, str(error))
            continue
        columns["item"].append(item)
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


def _m2_id(value: str, *, what: str) -> str:
    """A product id: one token, no quotes or brackets (a printed list where one id belongs is refused)."""
    item = clean_id(value, what=what)
    if item.split() != [item] or any(mark in item for mark in "[]'\""):
        raise BadValue(f"{what} {_short(item)!r} is not one product id")
    return item


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
