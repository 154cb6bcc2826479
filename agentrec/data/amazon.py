"""Amazon product reviews, the 2014, 2018 and 2023 releases of the McAuley lab (UCSD).

Each release ships interactions (a ratings-only CSV, or reviews as one record per line) and item
metadata (``meta_<Category>``). The releases differ in ways that silently corrupt a dataset when
mixed up, so each has its own loader:

- 2014: ratings CSV ``user,item,rating,timestamp`` (no header); reviews are JSON lines (reviewerID,
  asin, unixReviewTime); metadata lines are Python literals; time in seconds.
- 2018: ratings CSV ``item,user,rating,timestamp`` (no header, the item first!); reviews as 2014;
  metadata is JSON lines; time in seconds.
- 2023: reviews are JSON lines (user_id, parent_asin, timestamp); rating-only CSVs have a header;
  metadata is JSON lines keyed by parent_asin; time in milliseconds.

Files are read line by line into column lists (the real files have millions of lines); ``.gz``
is decompressed on the fly. The rating is not used: every review or rating is one interaction.

Every line is checked, and a bad one is a ``file:line`` error (counted and skipped with
``skip_bad``): ids are text or integers (not lists, objects, floats; not empty, not quoted);
times are whole numbers within int64 (a fraction, ``1e30``, ``NaN`` or ``Infinity`` is refused;
negative times are before 1970 and kept); titles, brands, descriptions and categories are text
(not objects or lists where one text belongs); a JSON object may not repeat a key. Every regular
expression here runs in linear time.
"""

from __future__ import annotations

import ast
import html
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from agentrec.data.raw import (
    BadValue,
    DataFormatError,
    LineFaults,
    LoadReport,
    RawData,
    clean_id,
    clip,
    kind_of,
    read_lines,
    require_path,
    sha256_file,
    undecodable,
    whole_seconds,
)

logger = logging.getLogger(__name__)

ITEM_COLUMNS = ("item", "title", "brand", "categories", "description", "price")

# Ratings CSV columns (user, item, timestamp) by position: the 2018 files put the item first.
CSV_COLUMNS_2014 = (0, 1, 3)
CSV_COLUMNS_2018 = (1, 0, 3)
CSV_FIELDS = 4

# Every pattern here runs in linear time: no nested or adjacent quantifiers over the same
# characters. A tag stops at the next '<' as well as at '>' (``<[^>]*>`` rescans the rest of the
# text from every '<' of a title without '>': quadratic); the price's second run of spaces is
# only tried after a '$' (``\s*\$?\s*`` tries every split of a run of spaces: quadratic).
_TAG = re.compile(r"<[^<>]*>")
_SPACE = re.compile(r"\s+")
# A price is a number at the start of the field, after an optional currency sign; anything else
# (2018 has CSS and JavaScript fragments in this field) is no price at all.
_PRICE = re.compile(r"\s*(?:\$\s*)?(\d[\d,]*(?:\.\d+)?)")

# A line parsed, but does not hold what the format requires (an id, a whole-number time, text).
_BadRecord = BadValue

_TAKES = "a ratings CSV or a reviews JSON-lines file (.gz or not)"


# --------------------------------------------------------------------------------------------
# Public loaders


def load_amazon2014(
    source: str | Path, *, meta: str | Path | None = None, skip_bad: bool = False
) -> RawData:
    """Amazon reviews 2014 (He & McAuley, WWW 2016), e.g. the Beauty category used by SemSR.

    Args:
        source: the ratings-only CSV (``ratings_Beauty.csv``: no header, columns
            user,item,rating,timestamp) or the reviews file (``reviews_Beauty_5.json.gz``: one JSON
            object per line with reviewerID, asin and unixReviewTime). The format is told by the
            file name, or by the first non-blank character when the name does not say.
        meta: ``meta_Beauty.json.gz``, whose lines are Python literals (single-quoted dicts, read
            with ``ast.literal_eval``). Mapped: asin -> item, title, brand, price, description,
            and ``categories`` (a list of category paths) flattened to unique strings in order.
        skip_bad: count and skip malformed lines instead of stopping at the first.

    Returns:
        The events (user = reviewerID, item = asin, timestamp in seconds) and the item table.
    """
    source = require_path(source, want="file", takes=_TAKES)
    meta = _meta_path(meta)  # checked before minutes of reading the source
    report = LoadReport()
    faults = LineFaults(source, skip_bad=skip_bad, report=report)
    if _source_format(source) == "csv":
        events = _read_ratings_csv(source, columns=CSV_COLUMNS_2014, faults=faults)
    else:
        # The 5-core files are JSON; some older review dumps use Python literals like the metadata.
        events = _read_reviews(source, parse=_json_or_literal, keys=("reviewerID", "asin", "unixReviewTime"),
                               time_ms=False, faults=faults)
    return _assemble("amazon2014", source, events, meta=meta, report=report, skip_bad=skip_bad,
                     parse_meta=_literal_or_json, meta_row=_meta_row_2014)


def load_amazon2018(
    source: str | Path, *, meta: str | Path | None = None, skip_bad: bool = False
) -> RawData:
    """Amazon reviews 2018 (Ni, Li & McAuley, EMNLP 2019).

    Args:
        source: the ratings-only CSV (``Beauty.csv``: no header, columns item,user,rating,timestamp
            -- the item comes first, unlike 2014) or the reviews JSON lines (reviewerID, asin,
            unixReviewTime, ...). Told apart as for 2014.
        meta: ``meta_<Category>.json(.gz)``, JSON lines. Mapped: asin -> item, title (HTML tags
            and entities removed: some titles are page fragments), brand, ``category`` ->
            categories (``[main_cat]`` when the list is empty), description (a list, joined with
            spaces), price (``"$12.99"`` -> 12.99; a range gives its first number; anything
            else is missing).
        skip_bad: count and skip malformed lines instead of stopping at the first.
    """
    source = require_path(source, want="file", takes=_TAKES)
    meta = _meta_path(meta)  # checked before minutes of reading the source
    report = LoadReport()
    faults = LineFaults(source, skip_bad=skip_bad, report=report)
    if _source_format(source) == "csv":
        events = _read_ratings_csv(source, columns=CSV_COLUMNS_2018, faults=faults)
    else:
        events = _read_reviews(source, parse=_json, keys=("reviewerID", "asin", "unixReviewTime"),
                               time_ms=False, faults=faults)
    return _assemble("amazon2018", source, events, meta=meta, report=report, skip_bad=skip_bad,
                     parse_meta=_json, meta_row=_meta_row_2018)


def load_amazon2023(
    source: str | Path, *, meta: str | Path | None = None, skip_bad: bool = False
) -> RawData:
    """Amazon reviews 2023 (Hou et al., "Bridging Language and Items for Retrieval and Recommendation").

    The item id is ``parent_asin``, not ``asin``: the 2023 release groups the variants of a product
    (sizes, colours) under their parent, and its metadata is keyed by the parent only.

    Args:
        source: the reviews JSON lines (``<Category>.jsonl(.gz)``: user_id, parent_asin and
            ``timestamp`` in milliseconds, converted to whole seconds), or a rating-only /
            benchmark CSV with a header naming user_id, parent_asin and timestamp.
        meta: ``meta_<Category>.jsonl(.gz)``. Mapped: parent_asin -> item, title, store -> brand,
            categories (``[main_category]`` when the list is empty), description (a list, joined
            with spaces; the features list when there is no description), price (float or null).
        skip_bad: count and skip malformed lines instead of stopping at the first.
    """
    source = require_path(source, want="file", takes=_TAKES)
    meta = _meta_path(meta)  # checked before minutes of reading the source
    report = LoadReport()
    faults = LineFaults(source, skip_bad=skip_bad, report=report)
    if _source_format(source) == "csv":
        events = _read_ratings_csv_with_header(source, names=("user_id", "parent_asin", "timestamp"),
                                               time_ms=True, faults=faults)
    else:
        events = _read_reviews(source, parse=_json, keys=("user_id", "parent_asin", "timestamp"),
                               time_ms=True, faults=faults)
    return _assemble("amazon2023", source, events, meta=meta, report=report, skip_bad=skip_bad,
                     parse_meta=_json, meta_row=_meta_row_2023)


# --------------------------------------------------------------------------------------------
# Shared plumbing


def _assemble(release, source, events, *, meta, report, skip_bad, parse_meta, meta_row) -> RawData:
    """Read the metadata (if any) and wrap everything in a ``RawData``."""
    sources = {str(source): sha256_file(source)}
    if meta is not None:
        items = _read_meta(meta, parse=parse_meta, to_row=meta_row,
                           faults=LineFaults(meta, skip_bad=skip_bad, report=report))
        sources[str(meta)] = sha256_file(meta)
        report.add("metadata_rows", len(items))
    else:
        # No metadata: ``RawData.resolve_items`` builds title-less rows and counts them.
        items = pd.DataFrame({"item": pd.Series(dtype=str), "title": pd.Series(dtype=object)})
    name = _dataset_name(release, source)
    logger.info("%s: %d events, %d metadata rows from %s", name, len(events), len(items), source)
    return RawData(name=name, events=events, items=items, sources=sources, report=report)


def _meta_path(meta: str | Path | None) -> Path | None:
    if meta is None:
        return None
    return require_path(meta, want="file", option="--meta", takes="the item metadata file, meta_<Category>...")


def _source_format(path: Path) -> str:
    """``"csv"`` or ``"json"``: from the file name, else from the first non-blank character."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".json", ".jsonl")):
        return "json"
    for line in read_lines(path):
        if line.strip():
            return "json" if line.lstrip().removeprefix("\ufeff").startswith("{") else "csv"
    return "csv"


def _dataset_name(release: str, source: Path) -> str:
    """``amazon2014-beauty`` from ``ratings_Beauty.csv``; ``-5core`` when the file is a 5-core."""
    stem = source.name
    for suffix in (".gz", ".json", ".jsonl", ".csv"):
        stem = stem.removesuffix(suffix)
    for prefix in ("ratings_", "reviews_"):
        stem = stem.removeprefix(prefix)
    five_core = stem.endswith("_5")
    stem = stem.removesuffix("_5").lower() or "unknown"
    return f"{release}-{stem}" + ("-5core" if five_core else "")


def _lines(path: Path, faults: LineFaults) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-blank line that is valid UTF-8.

    A byte-order mark is dropped at the start of the file and, where files were concatenated, at
    the start of any line; a line with bytes that are not UTF-8 goes to ``faults``.
    """
    for line_no, line in enumerate(read_lines(path), start=1):
        line = line.strip().removeprefix("\ufeff")
        if not line:
            continue
        if problem := undecodable(line):
            faults(line_no, problem)
            continue
        yield line_no, line


def _csv_id(value: str, *, what: str) -> str:
    """An id from a ratings CSV, which Amazon never quotes: a quoted one is refused, not kept
    with its quotes (a re-saved file would otherwise make '"A1"' and 'A1' two users)."""
    if '"' in value:
        raise BadValue(f"{what} {clip(value)} is quoted; Amazon's ratings CSVs are not (unquote the file)")
    return clean_id(value, what=what)


def _seconds(value, *, what: str, time_ms: bool) -> int:
    """Whole seconds from a time field: a whole number that fits int64 (milliseconds when
    ``time_ms``, floored to seconds). Fractions are refused: every Amazon release writes whole
    numbers, so one with a fraction is a damaged line (or a column mix-up), not a finer clock."""
    stamp, _ = whole_seconds(value, what=what)
    return stamp // 1000 if time_ms else stamp


def _events_frame(users: list[str], items: list[str], times: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user": pd.Series(users, dtype=str),
            "item": pd.Series(items, dtype=str),
            "timestamp": np.asarray(times, dtype=np.int64),
            "order": np.arange(len(users), dtype=np.int64),
        }
    )


# --------------------------------------------------------------------------------------------
# Interactions


def _read_ratings_csv(path: Path, *, columns: tuple[int, int, int], faults: LineFaults) -> pd.DataFrame:
    """A header-less ratings CSV; ``columns`` gives the positions of user, item and timestamp.

    Amazon ids hold no commas and the files use no quoting, so a plain split is exact (and several
    times faster than the csv module on the 80-million-line files).
    """
    user_at, item_at, time_at = columns
    users, items, times = [], [], []
    for line_no, line in _lines(path, faults):
        fields = line.split(",")
        if len(fields) != CSV_FIELDS:
            faults(line_no, f"expected {CSV_FIELDS} comma-separated fields, found {len(fields)}")
            continue
        try:
            seconds = _seconds(fields[time_at], what="timestamp", time_ms=False)
            user = _csv_id(fields[user_at], what="user id")
            item = _csv_id(fields[item_at], what="item id")
        except BadValue as error:
            faults(line_no, str(error))
            continue
        users.append(user)
        items.append(item)
        times.append(seconds)
    _warn_if_swapped(path, users, items)
    return _events_frame(users, items, times)


def _warn_if_swapped(path: Path, users: list[str], items: list[str], sample: int = 10_000) -> None:
    """Warn when the user column looks like ASINs and the item column does not.

    ASINs have exactly 10 characters, reviewer ids mostly 12 to 21; a 2014 file read as 2018 (or the
    reverse) swaps the two columns and would otherwise produce a plausible but wrong dataset.
    """
    if users and _asin_share(users[:sample]) > 0.5 > _asin_share(items[:sample]):
        logger.warning(
            "%s: the user column looks like item ids (ASINs) and the item column does not; "
            "2014 ratings CSVs are user,item,... and 2018 ones item,user,...: is this the right loader?", path
        )


def _asin_share(ids: list[str]) -> float:
    return sum(len(i) == 10 for i in ids) / len(ids)


def _read_ratings_csv_with_header(
    path: Path, *, names: tuple[str, str, str], time_ms: bool, faults: LineFaults
) -> pd.DataFrame:
    """A ratings CSV whose first line names its columns (the 2023 rating-only and benchmark files)."""
    users, items, times = [], [], []
    # A header with bytes that are not UTF-8 cannot be skipped: it fails whatever skip_bad says.
    lines = _lines(path, LineFaults(path, skip_bad=False, report=faults.report))
    header_no, header = next(lines, (1, ""))
    lines.close()
    fields = [name.strip() for name in header.split(",")]
    missing = [n for n in names if n not in fields]
    if missing:
        raise DataFormatError(path, header_no, f"header {clip(header, 200)} lacks the column(s) {', '.join(missing)}")
    twice = sorted({n for n in fields if fields.count(n) > 1})
    if twice:
        raise DataFormatError(path, header_no, f"header names the column(s) {', '.join(twice)} more than once")
    user_at, item_at, time_at = (fields.index(n) for n in names)
    lines = _lines(path, faults)
    next(lines, None)  # the header, read above
    for line_no, line in lines:
        row = line.split(",")
        if len(row) != len(fields):
            faults(line_no, f"expected {len(fields)} comma-separated fields, found {len(row)}")
            continue
        try:
            seconds = _seconds(row[time_at], what="timestamp", time_ms=time_ms)
            user = _csv_id(row[user_at], what="user id")
            item = _csv_id(row[item_at], what="item id")
        except BadValue as error:
            faults(line_no, str(error))
            continue
        users.append(user)
        items.append(item)
        times.append(seconds)
    return _events_frame(users, items, times)


def _read_reviews(
    path: Path, *, parse: Callable[[str], object], keys: tuple[str, str, str], time_ms: bool, faults: LineFaults
) -> pd.DataFrame:
    """Reviews, one record per line; ``keys`` name the user, item and time fields.

    Duplicate reviews (same user, item and time) are kept: they are in the source, and the
    protocols' tie rule orders them by line.
    """
    user_key, item_key, time_key = keys
    users, items, times = [], [], []
    for line_no, line in _lines(path, faults):
        try:
            record = parse(line)
        except BadValue as error:
            faults(line_no, str(error))
            continue
        except (ValueError, SyntaxError, RecursionError, MemoryError) as error:
            faults(line_no, f"not a valid record ({type(error).__name__}: {str(error)[:200]})")
            continue
        if not isinstance(record, dict):
            faults(line_no, f"expected an object, found {type(record).__name__}")
            continue
        missing = [k for k in keys if record.get(k) in (None, "")]
        if missing:
            faults(line_no, f"missing {', '.join(missing)}")
            continue
        try:
            # Floor division keeps whole seconds, as every other source provides.
            seconds = _seconds(record[time_key], what=time_key, time_ms=time_ms)
            user = clean_id(record[user_key], what=user_key)
            item = clean_id(record[item_key], what=item_key)
        except BadValue as error:
            faults(line_no, str(error))
            continue
        users.append(user)
        items.append(item)
        times.append(seconds)
    return _events_frame(users, items, times)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refusing a key given twice (``json.loads`` would silently keep the last)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise BadValue(f"the key {clip(twice)} appears twice in one object")
    return record


_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _json(line: str):
    """One JSON value; an object with a repeated key is refused (``BadValue``)."""
    return _JSON.decode(line)


def _literal(line: str):
    """One Python literal (never ``eval``: a hostile line cannot run code); a dict literal with a
    repeated key is refused, like JSON's."""
    tree = ast.parse(line, mode="eval")
    if isinstance(tree.body, ast.Dict):
        keys = [k.value for k in tree.body.keys if isinstance(k, ast.Constant)]
        if len(set(map(repr, keys))) != len(keys):
            seen: set[str] = set()
            twice = next(key for key in keys if repr(key) in seen or seen.add(repr(key)))
            raise BadValue(f"the key {clip(twice)} appears twice in one object")
    return ast.literal_eval(tree)


def _json_or_literal(line: str):
    try:
        return _json(line)
    except BadValue:
        raise
    except ValueError:
        return _literal(line)


def _literal_or_json(line: str):
    try:
        return _literal(line)
    except BadValue:
        raise
    except (ValueError, SyntaxError) as literal_error:
        try:
            return _json(line)  # a few mirrors re-encode the 2014 metadata as JSON
        except BadValue:
            raise
        except ValueError:
            # Report why it is no Python literal: that is what the 2014 metadata is.
            why = str(literal_error)
            if why.startswith("malformed node"):  # literal_eval names an AST node object: say what it means
                why = "it holds a name, a call or an operation, not only literals"
            raise ValueError(f"neither a Python literal ({why[:120]}) nor JSON") from None


# --------------------------------------------------------------------------------------------
# Metadata


def _read_meta(
    path: Path, *, parse: Callable[[str], object], to_row: Callable[[dict], dict], faults: LineFaults
) -> pd.DataFrame:
    """Item rows from a metadata file; ``to_row`` maps one parsed record to ``ITEM_COLUMNS``.

    A record without a title is kept (``RawData.resolve_items`` counts it); one without an id is
    malformed.
    """
    columns: dict[str, list] = {name: [] for name in ITEM_COLUMNS}
    for line_no, line in _lines(path, faults):
        try:
            record = parse(line)
            if not isinstance(record, dict):
                raise _BadRecord(f"expected an object, found {type(record).__name__}")
            row = to_row(record)
        except _BadRecord as error:
            faults(line_no, str(error))
            continue
        except (ValueError, SyntaxError, RecursionError, MemoryError) as error:
            faults(line_no, f"not a valid record ({type(error).__name__}: {str(error)[:200]})")
            continue
        for name in ITEM_COLUMNS:
            columns[name].append(row.get(name))
    items = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    items["item"] = items["item"].astype(str)
    items["price"] = np.asarray([np.nan if p is None else p for p in columns["price"]], dtype=float)
    return items


def _required_id(record: dict, key: str) -> str:
    value = record.get(key)
    if value in (None, ""):
        raise _BadRecord(f"missing {key}")
    return clean_id(value, what=key)


def _field_text(record: dict, key: str):
    """The text of a scalar field (a string, or a finite number), or None when it is absent.

    An object, a list, a boolean or bytes where text belongs is refused: ``str()`` would turn it
    into a plausible-looking title such as ``"{'x': 1}"``.
    """
    return _scalar_text(record.get(key), what=key)


def _scalar_text(value, *, what: str):
    if value is None or isinstance(value, str):
        if value and (problem := undecodable(value)):
            raise _BadRecord(f"{what}: {problem}")
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        return str(value)
    raise _BadRecord(f"{what} is {kind_of(value)} ({clip(value)}), expected text")


def _text_list(record: dict, key: str) -> list:
    """A field that is a list of text (or one text): each element checked as ``_field_text``; null
    elements are left out."""
    texts = (_scalar_text(v, what=f"an element of {key}") for v in _as_list(record.get(key)))
    return [text for text in texts if text is not None]


def _meta_row_2014(record: dict) -> dict:
    categories = record.get("categories") or []
    if not isinstance(categories, (list, tuple)):
        raise _BadRecord(f"categories is {kind_of(categories)}, expected a list of category paths")
    flat = [c for path in categories for c in (path if isinstance(path, (list, tuple)) else [path])]
    return {
        "item": _required_id(record, "asin"),
        # 2014 titles carry HTML entities ("Bath &amp; Body"), but no tags.
        "title": _text(_undo_byte_repr(_field_text(record, "title")), unescape=True),
        "brand": _text(_undo_byte_repr(_field_text(record, "brand")), unescape=True),
        "categories": _unique_strings(_undo_byte_repr(_scalar_text(c, what="a category")) for c in flat),
        "description": _text(_undo_byte_repr(_field_text(record, "description")), unescape=True),
        "price": _price(record.get("price")),
    }


def _undo_byte_repr(value):
    """Repair text that Python 2 wrote as the repr of UTF-8 bytes.

    The 2014 metadata was written by Python 2, where ``'Caf\\xc3\\xa9'`` is the repr of the UTF-8
    bytes of "Café"; ``literal_eval`` in Python 3 reads it back as "CafÃ©". Such a string is made
    of code points below 256 that form valid UTF-8 when taken as bytes; genuine Latin-1 text
    ("Crème") almost never does, so it is left alone.
    """
    if not isinstance(value, str) or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _meta_row_2018(record: dict) -> dict:
    categories = _unique_strings(_strip_html(c) for c in _text_list(record, "category"))
    main_category = _strip_html(_field_text(record, "main_cat"))
    if not categories and main_category:
        categories = [main_category]
    return {
        "item": _required_id(record, "asin"),
        "title": _strip_html(_field_text(record, "title")) or None,
        "brand": _strip_html(_field_text(record, "brand")) or None,
        "categories": categories,
        "description": _strip_html(" ".join(map(str, _text_list(record, "description")))) or None,
        "price": _price(record.get("price")),
    }


def _meta_row_2023(record: dict) -> dict:
    categories = _unique_strings(_text_list(record, "categories"))
    main_category = _field_text(record, "main_category")
    if not categories and main_category:
        categories = [main_category.strip()]
    description = " ".join(map(str, _text_list(record, "description"))).strip()
    if not description:
        description = " ".join(map(str, _text_list(record, "features"))).strip()
    return {
        "item": _required_id(record, "parent_asin"),
        "title": _text(_field_text(record, "title")),
        "brand": _text(_field_text(record, "store")),
        "categories": categories,
        "description": description or None,
        "price": _price(record.get("price")),
    }


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _text(value, *, unescape: bool = False) -> str | None:
    """A stripped string, or None for missing and blank values."""
    if value is None:
        return None
    text = str(value)
    if unescape:
        text = html.unescape(text)
    text = _SPACE.sub(" ", text).strip()
    return text or None


def _strip_html(value) -> str:
    """Text with HTML tags removed and entities decoded (simple on purpose: no HTML parser)."""
    if value is None:
        return ""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", str(value)))).strip()


def _unique_strings(values) -> list[str]:
    """Non-blank strings, first occurrence kept, in order."""
    seen: dict[str, None] = {}
    for value in values:
        text = str(value).strip() if value is not None else ""
        if text:
            seen.setdefault(text, None)
    return list(seen)


def _price(value) -> float | None:
    """12.5 -> 12.5; "$12.99" -> 12.99; "$5.00 - $9.00" -> 5.0; "", None or junk -> None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if np.isfinite(value) else None
    match = _PRICE.match(str(value))  # anchored at the start: one attempt, linear
    return float(match.group(1).replace(",", "")) if match else None
