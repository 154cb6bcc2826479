"""The durable store of LaMAR signals: one folder per signal set, crash-safe, and its use as item text.

**A signal set** is one folder::

    manifest.json     what the set is: dataset and catalogue fingerprint, engine fingerprint (engine,
                      model, dtype), template file and sha256 per aspect, sampling and cleaning settings
    signals.jsonl     one line per (item, aspect): item_id, aspect, text (cleaned), raw, status
                      ("ok" or "empty" after the retries), attempts, tokens_in, tokens_out
    .lock             held (flock) by the one process that writes the set
    report.md/.json   written by :func:`agentrec.signals.report.signal_report`

**Crash safety.** :func:`agentrec.signals.generate.generate_signals` appends each chunk's lines with
:meth:`SignalSet.append`: flushed and fsync-ed before the next chunk starts. A rerun reads the file
(:meth:`SignalSet.read`), skips every pair already in it and generates only the rest, so killing the
process at any moment loses at most the chunk in flight. A last line torn by the kill is reported and
cut off before appending; a pair found twice keeps its first line (and is reported). A manifest that
differs from the run's in anything that decides the texts (model, template, sampling, cleaning, item
fields, catalogue: :data:`IDENTITY_KEYS`) is an error (:func:`merge_manifest`): a set never mixes
generations of two settings. Adding an aspect to an existing set is allowed.

**Use.** :func:`load_signals` reads a set (``S`` or ``S:aspect,aspect``) as extra item text for
:func:`agentrec.core.templates.item_texts`, checked against the dataset's catalogue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from agentrec.core import __version__, fsutil
from agentrec.core.errors import DamagedFileError, LockedError, MismatchError, NotFoundError
from agentrec.data.dataset import _items_to_jsonl
from agentrec.llm.base import Engine
from agentrec.llm.prompts import ASPECTS
from agentrec.signals.cleaning import ASPECT_NAMES, CLEANER_VERSION, parse_aspects

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECORDS = "signals.jsonl"
LOCK = ".lock"
STATUS_OK, STATUS_EMPTY, STATUS_REMOVED = "ok", "empty", "removed"
# manifest keys that decide the texts: a set whose manifest differs in one of them is another set
# ("shard": a shard's set is resumed by the same shard only; absent and None are the whole selection)
IDENTITY_KEYS = ("format_version", "catalogue_fingerprint", "engine", "sampling", "cleaning", "fields", "item_noun",
                 "domain", "derived_from", "shard")


class SignalSetMismatchError(MismatchError):
    """A signal set folder was made with other settings than the ones asked for."""


def catalogue_fingerprint(dataset) -> str:
    """sha256 of the item table as agentrec writes it: signals depend on items, not on the splits."""

    return hashlib.sha256(_items_to_jsonl(dataset.items)).hexdigest()


@dataclass
class LoadReport:
    """What reading ``signals.jsonl`` found."""

    lines: int = 0  # complete, valid lines
    torn_bytes: int = 0  # bytes of an unfinished last line (a kill during a write); cut off before appending
    duplicates: int = 0  # lines for an (item, aspect) pair seen before; the first line is kept

    def describe(self) -> str:
        parts = [f"{self.lines:,} records"]
        if self.torn_bytes:
            parts.append(f"a torn last line of {self.torn_bytes} bytes (cut off)")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate lines ignored")
        return ", ".join(parts)


class SignalSet:
    """One signal set folder: its manifest and its records (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS

    def exists(self) -> bool:
        return self.manifest_path.exists()

    @property
    def manifest(self) -> dict:
        if not self.exists():
            raise NotFoundError(f"{self.path} is not a signal set (no {MANIFEST}); make one with "
                                    f"'agentrec signals generate --data DATASET --out {self.path}'")
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

    def read(self, *, repair: bool = False) -> tuple[dict[tuple[int, str], dict], LoadReport]:
        """Records by ``(item_id, aspect)`` and what reading found.

        A last line without its newline (or that is not JSON) is a torn write: it is skipped, and with
        ``repair=True`` cut off the file so that the next append starts on a clean line. A bad line
        anywhere else is not something a crash can cause, and raises ValueError.
        """
        report = LoadReport()
        records: dict[tuple[int, str], dict] = {}
        if not self.records_path.exists():
            return records, report
        data = self.records_path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is an unfinished write
        body, tail = data[:end], data[end:]
        lines = body.split(b"\n")[:-1] if body else []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                key = (int(record["item_id"]), str(record["aspect"]))
            except (ValueError, KeyError, TypeError) as error:
                if number == len(lines) and not tail:
                    # a torn line that happened to end in a newline byte cannot occur (we write the
                    # newline last), but be lenient with the very last line anyway
                    tail, body = line + b"\n", body[: len(body) - len(line) - 1]
                    break
                raise DamagedFileError(f"{self.records_path}, line {number}: not a signal record ({error}); the file was "
                                 f"edited by hand or by another program") from error
            if key in records:
                report.duplicates += 1
                continue
            records[key] = record
            report.lines += 1
        report.torn_bytes = len(tail)
        if tail:
            logger.warning("%s: a torn last line (%d bytes, a write cut short) %s", self.records_path, len(tail),
                           "is cut off" if repair else "is ignored")
            if repair:
                with open(self.records_path, "r+b") as handle:
                    handle.truncate(len(body))
                    handle.flush()
                    os.fsync(handle.fileno())
        return records, report

    def append(self, records: list[dict]) -> None:
        """Append records durably: one write, flush and fsync before returning."""
        if not records:
            return
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with open(self.records_path, "ab") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

    def lock(self):
        """An exclusive lock on the set for one writer; a second writer fails at once."""
        return _SetLock(self.path / LOCK)

    def signals(self, dataset_items: int, aspects: tuple[str, ...] | None = None) -> dict[str, list[str | None]]:
        """Aspect -> one text per item (index 0 is item 1), None where the set has no usable text."""
        manifest = self.manifest
        records, _ = self.read()
        aspects = aspects or tuple(manifest["aspects"])
        missing = [a for a in aspects if a not in manifest["aspects"]]
        if missing:
            raise MismatchError(f"signal set {self.path} has no aspect {', '.join(missing)} "
                             f"(it has {', '.join(manifest['aspects'])})")
        out = {aspect: [None] * dataset_items for aspect in aspects}
        for (item, aspect), record in records.items():
            if aspect in out and record.get("status") == STATUS_OK and 1 <= item <= dataset_items and record["text"]:
                out[aspect][item - 1] = record["text"]
        return out


class _SetLock:
    def __init__(self, path: Path):
        self.path = path
        self.handle = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise LockedError(f"another process is writing the signal set {self.path.parent}; wait for it, "
                               f"or write to another --out") from None
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        self.handle.close()


def build_manifest(dataset, engine: Engine, config, builder) -> dict:
    """The manifest of a set that ``engine`` generates for ``dataset``'s catalogue.

    Args:
        dataset: the PreparedDataset.
        engine: the engine (its fingerprint is recorded).
        config: the :class:`~agentrec.signals.generate.SignalConfig` (aspects, sampling, cleaning, fields,
            item budgets).
        builder: the :class:`~agentrec.llm.prompts.PromptBuilder` that renders the prompts (item noun,
            domain, template digests, context).
    """
    return {
        "format_version": FORMAT_VERSION,
        "dataset": dataset.name,
        "dataset_path": str(Path(dataset.path).resolve()) if dataset.path else None,
        "dataset_fingerprint": dataset.fingerprint,
        "catalogue_fingerprint": catalogue_fingerprint(dataset),
        "items": int(dataset.n_items),
        "engine": engine.fingerprint,
        "sampling": {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                     "top_p": config.top_p, "seed": config.seed, "retries": config.retries,
                     "retry_temperature": config.retry_temperature},
        "cleaning": {"max_chars": config.max_chars, "cleaner": CLEANER_VERSION},
        "fields": list(config.fields),
        "item_noun": builder.item_noun,
        "domain": builder.domain,
        "derived_from": None,
        "aspects": list(config.aspects),
        "templates": {a: {"file": ASPECTS[a], "sha256": builder.template_digest(ASPECTS[a])} for a in config.aspects},
        "prompt_budget": {"item_chars": config.item_chars, "item_tokens": config.item_tokens,
                          "context_tokens": builder.context_tokens},
        "agentrec_version": __version__,
    }


def merge_manifest(found: dict, wanted: dict, path: Path) -> dict:
    """The manifest to keep when ``wanted`` reopens the set ``found``; raises on any difference in identity."""
    differences = [f"{key}: the set has {found.get(key)!r}, this run asks for {wanted.get(key)!r}"
                   for key in IDENTITY_KEYS if found.get(key) != wanted.get(key)]
    for aspect, template in wanted["templates"].items():
        old = found.get("templates", {}).get(aspect)
        if old is not None and old != template:
            differences.append(f"template of {aspect}: the set has {old}, this run uses {template}")
    if differences:
        raise SignalSetMismatchError(
            f"signal set {path} was generated with other settings, and a set never mixes generations: "
            + "; ".join(differences) + ". Write to another --out (one folder per model and template).")
    merged = dict(found)
    merged["aspects"] = list(dict.fromkeys(found["aspects"] + wanted["aspects"]))
    merged["templates"] = {**found["templates"], **wanted["templates"]}
    return merged


def parse_signal_spec(spec: str) -> tuple[Path, tuple[str, ...] | None]:
    """``"S"`` -> (S, None: every aspect of the set); ``"S:usage,intent"`` -> (S, ("usage", "intent"))."""
    path, sep, tail = spec.rpartition(":")
    if sep and path and tail and all(a.strip() in ASPECT_NAMES for a in tail.split(",")):
        return Path(path), parse_aspects(tail)
    return Path(spec), None


def load_signals(spec: str | Path, dataset, *, aspects: tuple[str, ...] | None = None
                 ) -> tuple[dict[str, list[str | None]], dict]:
    """The signals of a set for :func:`agentrec.core.templates.item_texts`, checked against ``dataset``'s catalogue.

    Args:
        spec: ``S`` or ``S:aspect,aspect`` (aspects in the order they are to appear in the item text).
        dataset: the PreparedDataset whose item texts get the signals.
        aspects: overrides the aspects of ``spec``.

    Returns:
        ``(signals, info)``: aspect -> one text per item (None where missing), and a description for
        run records (set path, aspects, engine, coverage per aspect).

    Raises:
        SignalSetMismatchError: the set was generated for another catalogue.
    """
    path, from_spec = parse_signal_spec(str(spec))
    signal_set = SignalSet(path)
    manifest = signal_set.manifest
    if manifest["catalogue_fingerprint"] != catalogue_fingerprint(dataset):
        raise SignalSetMismatchError(
            f"signal set {path} was generated for the catalogue of {manifest.get('dataset')} "
            f"({manifest['catalogue_fingerprint'][:12]}), not for {dataset.name} "
            f"({catalogue_fingerprint(dataset)[:12]}): item ids would not line up")
    aspects = aspects or from_spec or tuple(manifest["aspects"])
    signals = signal_set.signals(dataset.n_items, aspects)
    coverage = {a: sum(t is not None for t in texts) / max(dataset.n_items, 1) for a, texts in signals.items()}
    for aspect, share in coverage.items():
        if share < 1.0:
            logger.warning("signal set %s covers %.1f%% of the items for %s; the others keep their plain text",
                           path, 100 * share, aspect)
    info = {"set": str(path.resolve()), "aspects": list(aspects), "engine": manifest["engine"],
            "templates": {a: manifest["templates"][a]["sha256"][:12] for a in aspects}, "coverage": coverage}
    return signals, info


def signals_tag(info: dict) -> str:
    """A short id of (set, aspects) for collection names: ``sig-`` and 8 hex digits."""
    key = json.dumps({"set": info["set"], "aspects": info["aspects"], "templates": info["templates"]}, sort_keys=True)
    return "sig-" + hashlib.sha256(key.encode()).hexdigest()[:8]
