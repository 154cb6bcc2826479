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
                   source files' sha256, the load report, the dataset fingerprint, the format
                   version, and (format 2) the size and sha256 of each of the four files above.
    embeddings/    (optional) item-embedding cache, written later by agentrec.retrieval.embedders.

Item ids are 1..n_items; 0 is reserved for padding and never a target. The fingerprint is a
sha256 over the item table and the three splits, so a model trained on one dataset can refuse
another.

Writing and checking (issue 12). :meth:`PreparedDataset.save` builds the folder aside and swaps it
into place whole (:func:`agentrec.core.fsutil.atomic_dir`): a killed ``prepare`` leaves the old dataset or
the new one, never a mix. :meth:`PreparedDataset.load` checks the files against ``stats.json``
before anything reads them:

- ``"format_version": 2`` (written since issue 12): every file's size, then its sha256, must match
  ``stats.json["files"]``. On MovieLens-100K leave-one-out (19 MB, 18 MB of it train.npz) reading
  and hashing take about 11 ms of a 26 ms load; the files are read once, and parsed from the bytes
  that were hashed. Shapes, offsets and item-id ranges of the splits are checked too (about 1 ms).
- ``"format_version": 1`` (folders written before issue 12, no ``files`` key): they still load, but
  only after the fingerprint is recomputed from the loaded item table and splits and matches
  ``stats.json`` (about 12-16 ms more on MovieLens-100K). A folder that a killed ``prepare`` left
  with new splits beside the old ``stats.json`` fails this check. ``prepare --force`` rewrites
  such a folder in format 2.
- A higher version (a newer agentrec) is refused with :class:`~agentrec.core.errors.MismatchError`.

Every failure is a :class:`~agentrec.core.errors.DamagedFileError` naming the file (and key or line) and
the command that rebuilds the folder; a folder with split files but no ``stats.json`` (a
``prepare`` killed under the old, non-atomic code) is one too, never a silent pass.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from agentrec.core import fsutil
from agentrec.core.errors import DamagedFileError, MismatchError, NotFoundError, UsageError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: stats.json records each file's size and sha256 ("files"); 1: it does not
READABLE_VERSIONS = (1, 2)
SPLITS = ("train", "valid", "test")
ITEMS_FILE = "items.jsonl"
STATS_FILE = "stats.json"
DATA_FILES = (ITEMS_FILE, *(f"{name}.npz" for name in SPLITS))  # the files stats.json describes
SAMPLE_KEYS = ("history_indptr", "history", "target", "session", "timestamp")
# what a dataset folder may hold: its files, and caches agentrec writes into it later
DATASET_ENTRIES = frozenset({*DATA_FILES, STATS_FILE, "embeddings"})


def rebuild_hint(path: str | Path) -> str:
    """How to rebuild the dataset at ``path`` (the end of every damaged-folder message)."""
    return f"prepare it again: agentrec data prepare SOURCE --out {path} --force"


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
        return cls(**{key: np.asarray(arrays[key]) for key in SAMPLE_KEYS})

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
    saved: str | None = field(default=None, repr=False, compare=False)  # after save(): written/replaced/kept

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
            raise UsageError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def titles(self) -> list[str]:
        """Titles in id order (index 0 is item id 1); missing titles are empty strings."""
        return [t if isinstance(t, str) else "" for t in self.items["title"].tolist()]

    def save(self, out: str | Path, *, force: bool = False) -> Path:
        """Write the dataset to the folder ``out``, whole or not at all (see the module docstring).

        ``out`` may be missing or empty. If it already holds a dataset with the same fingerprint, that
        folder is kept as it is (with its embedding cache) and nothing is written. If it holds another
        dataset, or a damaged or incomplete one, it is replaced only with ``force``. A folder holding
        files that belong to no dataset is never replaced, ``force`` or not: replacing it would delete
        them. ``self.saved`` then says ``"written"``, ``"replaced"`` or ``"kept"``.

        Raises:
            UsageError: ``out`` is a file; holds other files; or holds another dataset and ``force``
                is False. The message says which and what to do.
        """
        out = Path(out)
        items_bytes = _items_to_jsonl(self.items)
        fingerprint = dataset_fingerprint(items_bytes, [self.split(name) for name in SPLITS])
        self.stats["format_version"] = FORMAT_VERSION
        self.stats["fingerprint"] = fingerprint
        existing = _existing_dataset(out, fingerprint)
        if existing == "same":
            logger.info("%s already holds this dataset (fingerprint %s); keeping it", out, fingerprint[:12])
            self.path, self.saved = out, "kept"
            return out
        if existing is not None and not force:
            raise UsageError(f"--out {out} already holds {existing}; pass --force to replace it with this dataset "
                             f"(fingerprint {fingerprint[:12]}), or choose another --out")
        with fsutil.atomic_dir(out) as temp:
            (temp / ITEMS_FILE).write_bytes(items_bytes)
            fsutil.test_pause(f"wrote {ITEMS_FILE}")
            for name in SPLITS:
                _write_npz(temp / f"{name}.npz", self.split(name).to_arrays())
                fsutil.test_pause(f"wrote {name}.npz")
            self.stats["files"] = {name: _file_entry(temp / name) for name in DATA_FILES}
            (temp / STATS_FILE).write_text(json.dumps(self.stats, indent=2, default=_json_default) + "\n",
                                           encoding="utf-8")
            fsutil.test_pause(f"wrote {STATS_FILE}")
        if existing is not None:
            logger.info("replaced %s (it held %s)", out, existing)
        self.path, self.saved = out, "written" if existing is None else "replaced"
        return out

    @classmethod
    def load(cls, path: str | Path) -> PreparedDataset:
        """Read a prepared dataset folder, checking its files against ``stats.json`` first.

        Raises:
            NotFoundError: ``path`` is missing or holds no dataset at all.
            DamagedFileError: a file is missing, truncated, changed or unreadable, ``stats.json`` is
                not valid JSON or lacks a key, or the files do not match its fingerprint.
            MismatchError: the folder was written by a newer agentrec (a higher format version).
        """
        path = Path(path)
        fsutil.recover(path)  # a swap killed half-way (only where renameat2 is missing) is undone here
        stats = read_stats(path)
        files = stats.get("files") if stats["format_version"] >= 2 else None
        blobs = {name: _read_checked(path / name, files[name] if files else None) for name in DATA_FILES}
        items = _parse_items(blobs[ITEMS_FILE], path / ITEMS_FILE)
        splits = {name: _parse_npz(blobs[f"{name}.npz"], path / f"{name}.npz", len(items)) for name in SPLITS}
        if files is None:  # format 1: nothing but the fingerprint ties stats.json to the files
            found = dataset_fingerprint(blobs[ITEMS_FILE], [splits[name] for name in SPLITS])
            if found != stats["fingerprint"]:
                raise DamagedFileError(
                    f"{path / STATS_FILE}: its fingerprint {stats['fingerprint'][:12]} does not match the files "
                    f"beside it ({found[:12]}); a prepare was probably killed half-way under an older agentrec, "
                    f"leaving new files beside old stats; {rebuild_hint(path)}")
        return cls(items=items, stats=stats, path=path, **splits)


def dataset_fingerprint(items_bytes: bytes, splits: list[Samples]) -> str:
    """sha256 over the items.jsonl bytes and the three splits' arrays (train, valid, test order)."""
    return hashlib.sha256(
        hashlib.sha256(items_bytes).hexdigest().encode() + b"".join(s.digest().encode() for s in splits)
    ).hexdigest()


def read_stats(path: str | Path) -> dict:
    """``stats.json`` of the dataset folder ``path``, with its format version and keys checked.

    Raises:
        NotFoundError: no such folder, or it holds no dataset files at all.
        DamagedFileError: dataset files without ``stats.json``, invalid JSON, or a key missing or of
            the wrong type; the message names the file and the key.
        MismatchError: a format version newer than this agentrec reads.
    """
    path = Path(path)
    stats_file = path / STATS_FILE
    if not stats_file.is_file():
        present = [name for name in DATA_FILES if (path / name).exists()]
        if present:
            raise DamagedFileError(
                f"{path} holds {', '.join(present)} but no {STATS_FILE}: an unfinished dataset (a prepare killed "
                f"before it wrote {STATS_FILE}?); {rebuild_hint(path)}")
        what = "does not exist" if not path.exists() else f"is not a prepared dataset (no {STATS_FILE})"
        raise NotFoundError(f"{path} {what}; create one with 'agentrec data prepare NAME --out {path}'")
    try:
        stats = json.loads(stats_file.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as error:
        raise DamagedFileError(f"{stats_file}:{error.lineno}:{error.colno}: not valid JSON ({error.msg}); "
                               f"{rebuild_hint(path)}") from None
    except UnicodeDecodeError as error:
        raise DamagedFileError(f"{stats_file}: not UTF-8 text (byte {error.start}); {rebuild_hint(path)}") from None
    except OSError as error:
        raise DamagedFileError(f"{stats_file}: cannot be read ({error.strerror or error}); "
                               f"{rebuild_hint(path)}") from None
    if not isinstance(stats, dict):
        raise DamagedFileError(f"{stats_file}: expected a JSON object, found {type(stats).__name__}; "
                               f"{rebuild_hint(path)}")

    def bad(key: str, why: str) -> DamagedFileError:
        return DamagedFileError(f"{stats_file}: key {key!r} {why}; {rebuild_hint(path)}")

    version = stats.get("format_version")
    readable = ", ".join(map(str, READABLE_VERSIONS))
    if "format_version" not in stats:
        raise bad("format_version", "is missing")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad("format_version", f"holds {version!r}, not a format version ({readable})")
    if version > FORMAT_VERSION:
        raise MismatchError(f"{stats_file}: format version {version} was written by a newer agentrec; this one reads "
                            f"versions {readable}. Upgrade agentrec, or {rebuild_hint(path)}")
    fingerprint = stats.get("fingerprint")
    if "fingerprint" not in stats:
        raise bad("fingerprint", "is missing")
    if not isinstance(fingerprint, str) or len(fingerprint) != 64 or not _is_hex(fingerprint):
        raise bad("fingerprint", f"holds {fingerprint!r:.80}, not a sha256 hex digest")
    if version >= 2:
        files = stats.get("files")
        if "files" not in stats:
            raise bad("files", "is missing")
        if not isinstance(files, dict):
            raise bad("files", f"holds {type(files).__name__}, not an object")
        for name in DATA_FILES:
            entry = files.get(name)
            if not isinstance(entry, dict) or "bytes" not in entry or "sha256" not in entry:
                raise bad(f"files.{name}", "is missing, or lacks 'bytes' or 'sha256'")
            if not isinstance(entry["bytes"], int) or isinstance(entry["bytes"], bool) or entry["bytes"] < 0:
                raise bad(f"files.{name}.bytes", f"holds {entry['bytes']!r:.40}, not a file size")
            if not isinstance(entry["sha256"], str) or len(entry["sha256"]) != 64 or not _is_hex(entry["sha256"]):
                raise bad(f"files.{name}.sha256", f"holds {entry['sha256']!r:.80}, not a sha256 hex digest")
    return stats


def check_output_folder(out: str | Path) -> None:
    """Refuse, before any work, an ``--out`` that :meth:`PreparedDataset.save` could never write.

    Raises:
        UsageError: ``out`` is a file, a folder holding files of no dataset (without ``stats.json``),
            or in a folder this user cannot write to.
    """
    out = Path(out)
    if not (out / STATS_FILE).exists():  # with stats.json, save() decides once it knows the fingerprint
        fsutil.refuse_foreign(out, DATASET_ENTRIES, what="a prepared dataset", has_force=True)
    ancestor = out.parent  # the folder is built beside ``out``, so its parent must take new entries
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot write in {ancestor} (permission denied); choose another --out")


def _existing_dataset(out: Path, fingerprint: str) -> str | None:
    """What ``out`` holds, for :meth:`PreparedDataset.save`: None (nothing), "same" (this dataset,
    intact), or a description of the dataset that would be replaced.

    Raises:
        UsageError: ``out`` is a file, or holds files that belong to no dataset.
    """
    fsutil.recover(out)
    if out.exists() and not out.is_dir():
        fsutil.refuse_foreign(out, DATASET_ENTRIES, what="a prepared dataset", has_force=True)  # a file: refused
    if not out.is_dir() or not any(os.scandir(out)):
        return None
    try:
        stats = read_stats(out)
        if stats["fingerprint"] == fingerprint:
            PreparedDataset.load(out)  # verifies the files too
            return "same"
        described = f"another dataset ({stats.get('dataset', '?')!r}, fingerprint {stats['fingerprint'][:12]})"
    except (DamagedFileError, MismatchError) as error:
        described = f"a damaged or unreadable dataset ({error})"
    except NotFoundError:
        described = None  # no dataset files at all: only what the check below allows
    fsutil.refuse_foreign(out, DATASET_ENTRIES, what="a prepared dataset", has_force=True)
    return described or "a folder with an embedding cache but no dataset"


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with a fixed time stamp in the zip entries, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(value), allow_pickle=False)


def _file_entry(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _read_checked(path: Path, entry: dict | None) -> bytes:
    """The bytes of ``path``; with ``entry`` (format 2) its size and sha256 must match."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DamagedFileError(f"{path} is missing from the dataset folder; {rebuild_hint(path.parent)}") from None
    if entry is not None and size != entry["bytes"]:
        raise DamagedFileError(f"{path}: {size:,} bytes, but {STATS_FILE} records {entry['bytes']:,} (truncated or "
                               f"changed since it was prepared); {rebuild_hint(path.parent)}")
    try:
        data = path.read_bytes()
    except OSError as error:  # a folder where a file belongs, no permission, an I/O error
        raise DamagedFileError(f"{path}: cannot be read ({error.strerror or error}); "
                               f"{rebuild_hint(path.parent)}") from None
    if entry is not None and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise DamagedFileError(f"{path}: its sha256 differs from the one in {STATS_FILE} (corrupted or changed "
                               f"since it was prepared); {rebuild_hint(path.parent)}")
    return data


def _parse_items(data: bytes, path: Path) -> pd.DataFrame:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DamagedFileError(f"{path}: not UTF-8 text (byte {error.start}); {rebuild_hint(path.parent)}") from None
    try:
        return _items_frame(text.splitlines(), path)
    except ValueError as error:
        raise DamagedFileError(f"{error}; {rebuild_hint(path.parent)}") from None


def _parse_npz(data: bytes, path: Path, n_items: int) -> Samples:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            missing = [key for key in SAMPLE_KEYS if key not in arrays.files]
            if missing:
                raise DamagedFileError(f"{path}: no array {', '.join(missing)}; {rebuild_hint(path.parent)}")
            samples = Samples.from_arrays(arrays)
    except DamagedFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise DamagedFileError(f"{path}: not a readable .npz file ({type(error).__name__}: {error}); "
                               f"{rebuild_hint(path.parent)}") from None
    problem = _samples_problem(samples, n_items)
    if problem:
        raise DamagedFileError(f"{path}: {problem}; {rebuild_hint(path.parent)}")
    return samples


def _samples_problem(s: Samples, n_items: int) -> str | None:
    """What is structurally wrong with ``s`` (shapes, dtypes, id range), or None; O(n) numpy checks."""
    n = len(s.target)
    for key in ("history_indptr", "history", "target", "timestamp"):
        value = getattr(s, key)
        if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
            return f"array {key} is {value.dtype} of shape {value.shape}, not a 1-d integer array"
    if s.session.ndim != 1 or len(s.session) != n or len(s.timestamp) != n:
        return f"arrays target, session and timestamp differ in length ({n}, {len(s.session)}, {len(s.timestamp)})"
    indptr = s.history_indptr
    if len(indptr) != n + 1 or indptr[0] != 0 or indptr[-1] != len(s.history) or (np.diff(indptr) < 0).any():
        return "array history_indptr does not index array history (offsets out of order or out of range)"
    if n and (s.target.min() < 1 or s.target.max() > n_items):
        return f"a target item id is outside 1..{n_items} (the items in {ITEMS_FILE})"
    if len(s.history) and (s.history.min() < 0 or s.history.max() > n_items):
        return f"a history item id is outside 0..{n_items} (the items in {ITEMS_FILE}, 0 for padding)"
    return None


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def read_items(path: Path) -> pd.DataFrame:
    """The item table of an ``items.jsonl`` file (ValueError naming the file and line if malformed)."""
    with open(path, encoding="utf-8") as handle:
        return _items_frame(handle, path)


def _items_frame(lines, path: Path) -> pd.DataFrame:
    rows = []
    for line_no, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DamagedFileError(f"{path}:{line_no}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("item_id"), int):
            raise DamagedFileError(f"{path}:{line_no}: not an item object with an integer item_id")
        rows.append(row)
    items = pd.DataFrame(rows)
    if "year" in items:
        try:
            items["year"] = pd.array(items["year"], dtype="Int64")  # JSON nulls would make it float
        except (TypeError, ValueError):
            raise DamagedFileError(f"{path}: a 'year' is not an integer") from None
    if len(items) and not (items["item_id"].to_numpy() == np.arange(1, len(items) + 1)).all():
        raise DamagedFileError(f"{path}: item ids must be 1..{len(items)} in order")
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
