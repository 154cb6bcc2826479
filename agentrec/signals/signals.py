"""LaMAR semantic signals: per-item texts an LLM infers from metadata, generated crash-safely, measured, used.

Paper: "Language Models as Semantic Augmenters for Sequential Recommenders" (LaMAR, arXiv 2510.18046);
no public code. An instruction-tuned LLM reads one catalogue item's metadata and writes an
*aspect* of it with a few-shot prompt: its usage scenario, the intent behind choosing it, or a
thematic summary (``prompts/aspect_{usage,intent,summary}.jinja``). The texts then augment the item
text that embeddings, the catalogue index and SemSR-F see (:func:`load_signals`).

Few-shot demonstrations. LaMAR makes its demonstrations once with a zero-shot chain-of-thought pass
and reuses them. agentrec ships them inside the templates instead, written once and reviewed (two
per aspect, one product and one film): with the offline 135M model a zero-shot CoT pass writes
demonstrations that are worse than no demonstrations, and a template is data you can replace
(``--prompts DIR``); its digest is part of the set's identity, so new demonstrations make a new set.

**A signal set** is one folder::

    manifest.json     what the set is: dataset and catalogue fingerprint, engine fingerprint (engine,
                      model, dtype), template file and sha256 per aspect, sampling and cleaning settings
    signals.jsonl     one line per (item, aspect): item_id, aspect, text (cleaned), raw, status
                      ("ok" or "empty" after the retries), attempts, tokens_in, tokens_out
    .lock             held (flock) by the one process that writes the set
    report.md/.json   written by :func:`signal_report`

**Crash safety.** Work is cut into chunks of ``chunk_size`` (item, aspect) pairs; each chunk is one
engine call (the engine batches it), and its lines are appended, flushed and fsync-ed before the
next chunk starts. A rerun of the same command reads the file, skips every pair already in it and
generates only the rest, so killing the process at any moment loses at most the chunk in flight.
A last line torn by the kill is reported and cut off before appending; a pair found twice keeps its
first line (and is reported). A manifest that differs from the run's in anything that decides the
texts (model, template, sampling, cleaning, item fields, catalogue) is an error: a set never mixes
generations of two settings. Adding an aspect to an existing set is allowed.

**Budgets.** Each item's text is cut to ``item_chars`` characters and ``item_tokens`` tokens before it
goes into a prompt, and a prompt still over the engine's context is cut to fit ("Budgets" in
:mod:`agentrec.llm.prompts`), so one item with a 100 KB title makes a prompt like any other. The cuts are
counted in :class:`GenerateResult` (``last_run.json``). The two settings are recorded in the
manifest but are not part of the set's identity: they change only the texts of items longer than
them, which could not be generated before.

**Cleaning** (:func:`clean_signal`): role labels, the echoed ``Item: ...`` line, aspect labels
(``Usage scenario:``, ``Intent:``, ``Themes:``), markdown and quotes are stripped, the text stops
where the model starts the next example, whitespace is collapsed and the text is cut at a word
boundary to ``max_chars``. An empty result is retried ``retries`` times with sampling (a greedy
retry would repeat itself), then kept as ``status: "empty"`` and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agentrec.core import __version__
from agentrec.core.errors import MismatchError
from agentrec.core.templates import _value, item_texts
from agentrec.data.dataset import PreparedDataset, _items_to_jsonl
from agentrec.llm.engines import Engine, SamplingParams
from agentrec.llm.prompts import ASPECTS, PromptBuilder, PromptConfig, validate_aspects
from agentrec.retrieval.embedders import get_embedder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CLEANER_VERSION = 2  # raise when clean_signal changes what it keeps: the set's identity records it
MANIFEST = "manifest.json"
RECORDS = "signals.jsonl"
LOCK = ".lock"
ASPECT_NAMES = ("usage", "intent", "summary")
STATUS_OK, STATUS_EMPTY, STATUS_REMOVED = "ok", "empty", "removed"
# labels a model writes before the answer (the templates' own, and ones small models invent)
_ASPECT_LABEL = re.compile(r"^\s*(?:\*\*|__)?\s*(?:usage\s+scenarios?|usage|scenario|intents?|themes?|thematic\s+summary"
                           r"|summary|answer|response|output)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?", re.IGNORECASE)
_ROLE_LABEL = re.compile(r"^\s*(?:<\|?[a-z_]+\|?>\s*)?(?:assistant|system|user|ai|bot|model)\s*[:：]\s*", re.IGNORECASE)
# a line that repeats the prompt's item or one of its metadata fields ("Genres: Action, Drama.")
_ECHO_LINE = re.compile(r"^\s*(?:item|movie|product|title|genres?|year|brand|categor(?:y|ies)|price)"
                        r"\s*[:：]", re.IGNORECASE)
_NEXT_EXAMPLE = re.compile(r"\n\s*(?:item|movie|product)\s*[:：]", re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)


class SignalSetMismatchError(MismatchError):
    """A signal set folder was made with other settings than the ones asked for."""


# ================================================================================================ settings
@dataclass(frozen=True)
class SignalConfig:
    """How signals are generated and cleaned; every field but ``chunk_size`` is part of the set's identity."""

    aspects: tuple[str, ...] = ASPECT_NAMES  # which LaMAR aspects, from ASPECT_NAMES
    fields: tuple[str, ...] = ("title", "year", "genres", "brand", "categories", "description")  # item metadata shown
    max_new_tokens: int = 48  # most generated tokens per signal
    temperature: float = 0.0  # first attempt; 0 is greedy and reproducible
    top_p: float = 1.0
    seed: int = 0
    retries: int = 2  # extra attempts for an output that is empty after cleaning
    retry_temperature: float = 0.7  # retries sample: a greedy retry would write the same text again
    max_chars: int = 240  # cleaned text is cut to this many characters, at a word boundary
    chunk_size: int = 64  # (item, aspect) pairs per engine call; each chunk is durable before the next
    prompts: str | None = None  # folder with your own aspect templates (default: the shipped ones)
    item_chars: int = 600  # an item's text is cut to this many characters before the tokenizer sees it ...
    item_tokens: int = 160  # ... then to this many tokens (recorded, not identity: see the module docstring)

    def __post_init__(self):
        object.__setattr__(self, "aspects", tuple(self.aspects))
        object.__setattr__(self, "fields", tuple(self.fields))
        unknown = [a for a in self.aspects if a not in ASPECT_NAMES]
        if unknown or not self.aspects:
            raise ValueError(f"unknown aspects {unknown or '(none given)'}; choose from {', '.join(ASPECT_NAMES)}")
        if len(set(self.aspects)) != len(self.aspects):
            raise ValueError(f"aspects are repeated: {', '.join(self.aspects)}")
        if self.retries < 0 or self.max_chars < 8 or self.chunk_size < 1:
            raise ValueError("retries must be >= 0, max_chars >= 8 and chunk_size >= 1")
        if self.item_chars < 16 or self.item_tokens < 8:
            raise ValueError(f"item_chars must be >= 16 and item_tokens >= 8, got {self.item_chars} and "
                             f"{self.item_tokens}")

    def params(self, attempt: int = 0) -> SamplingParams:
        """Sampling for attempt 0 (the configured one) and for retries (sampled, a new seed each)."""
        if attempt == 0:
            return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                  seed=self.seed)
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.retry_temperature,
                              top_p=0.95, seed=self.seed + attempt)


def parse_aspects(text: str | None) -> tuple[str, ...]:
    """``"usage, intent"`` -> ``("usage", "intent")``; None or empty -> every aspect."""
    if not text:
        return ASPECT_NAMES
    aspects = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in aspects if a not in ASPECT_NAMES]
    if unknown:
        raise ValueError(f"unknown aspects {unknown}; choose from {', '.join(ASPECT_NAMES)}")
    return aspects


# ================================================================================================ cleaning
def clean_signal(text: str | None, *, max_chars: int = 240, item: str | None = None) -> str:
    """The usable signal in a raw generation, or ``""`` when there is none.

    Args:
        text: the model's output.
        max_chars: cut longer text at the last word boundary before this many characters.
        item: the item line shown in the prompt; an output that only repeats it (or its start) is empty.

    Keeps the first answer: after a line that echoes the item (``Item: ...``, ``Genres: ...``) or an
    aspect label (``Usage scenario: ...``) when there is one, up to the start of another example, and
    up to where it starts repeating itself (see :func:`_cut_loop`).
    """
    if not text:
        return ""
    text = text.replace("\r", "")
    text = _ROLE_LABEL.sub("", text.strip())
    lines = [line.strip() for line in text.split("\n")]
    labelled = [i for i, line in enumerate(lines) if _ASPECT_LABEL.match(line)]
    if labelled:  # the answer follows the first aspect label ("Usage scenario: ...")
        start = labelled[0]
        lines = [_ASPECT_LABEL.sub("", lines[start])] + lines[start + 1:]
    answer = []
    for line in lines:
        line = _ROLE_LABEL.sub("", line).strip()
        if not line:
            if answer:
                break  # a blank line ends the answer
            continue
        if _ECHO_LINE.match(line) or _ASPECT_LABEL.match(line):
            if answer:
                break  # the model went on to another example
            continue  # an echo of the prompt's item line
        answer.append(line)
    out = _cut_loop(" ".join(answer).replace("**", "").replace("__", "").split())
    out = out.strip().strip("\"'“”‘’`").strip()
    if item is not None and _is_echo(out, item):
        return ""  # nothing but (the start of) the prompt's item line again
    if len(out) > max_chars:
        cut = out[: max_chars + 1].rsplit(" ", 1)[0] if " " in out[:max_chars] else out[:max_chars]
        out = cut.rstrip(",;:-– ")
    return out if _WORD.search(out) else ""


def _cut_loop(words: list[str], n: int = 3) -> str:
    """The words before the first word n-gram that already occurred: a small model stuck in a loop
    ("love, love, love, ...", "war, action, romance, war, action, romance, ...") keeps its first round.

    Greedy decoding falls into such loops and then runs to the token limit; a signal made of one
    phrase repeated is worse for retrieval than the phrase once. Punctuation does not count
    ("love," and "love" are the same word).
    """
    keys = [" ".join(_WORD.findall(word.lower())) for word in words]
    seen = set()
    for start in range(len(words) - n + 1):
        gram = tuple(keys[start:start + n])
        if gram in seen:
            return " ".join(words[:start]).rstrip(",;:-– ")
        seen.add(gram)
    return " ".join(words)


def _norm_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _is_echo(text: str, item: str) -> bool:
    """``text`` is the start of ``item``, or starts like it and adds no word the item line lacks
    ("Heat (1995) - genre: Action" for "Heat (1995) - genres: Action, Crime")."""
    words, item_words = _norm_words(text), _norm_words(item)
    if not words:
        return False
    if item_words[: len(words)] == words:
        return True
    stem = {w.rstrip("s") for w in item_words}
    return words[:2] == item_words[:2] and all(w.rstrip("s") in stem for w in words)


# ================================================================================================ the set on disk
def catalogue_fingerprint(dataset) -> str:
    """sha256 of the item table as agentrec writes it: signals depend on items, not on the splits."""

    return hashlib.sha256(_items_to_jsonl(dataset.items)).hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    _fsync_dir(path.parent)


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
            raise FileNotFoundError(f"{self.path} is not a signal set (no {MANIFEST}); make one with "
                                    f"'agentrec signals generate --data DATASET --out {self.path}'")
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

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
                raise ValueError(f"{self.records_path}, line {number}: not a signal record ({error}); the file was "
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
            raise ValueError(f"signal set {self.path} has no aspect {', '.join(missing)} "
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
            raise RuntimeError(f"another process is writing the signal set {self.path.parent}; wait for it, "
                               f"or write to another --out") from None
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        self.handle.close()


# ================================================================================================ generate
# manifest keys that decide the texts: a set whose manifest differs in one of them is another set
IDENTITY_KEYS = ("format_version", "catalogue_fingerprint", "engine", "sampling", "cleaning", "fields", "item_noun",
                 "domain", "derived_from")


def build_manifest(dataset, engine: Engine, config: SignalConfig, builder) -> dict:
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


@dataclass
class GenerateResult:
    """What one ``generate_signals`` run did."""

    out: str
    engine: str
    aspects: tuple[str, ...]
    items: int  # items asked for in this run
    pairs: int  # (item, aspect) pairs asked for
    already_done: int  # pairs found in the set when the run started (not generated again)
    generated: int  # pairs generated and written in this run
    empty: int  # of those, empty after every retry
    retried: int  # pairs that needed at least one retry
    remaining: int = 0  # pairs left undone because the time budget ran out
    items_cut: int = 0  # distinct items whose text was cut to item_chars / item_tokens for their prompts
    prompts_cut: int = 0  # prompts still over the engine's context after that, cut to fit
    context_tokens: int | None = None  # the engine's context the prompts were cut to (None: unknown)
    engine_calls: int = 0  # chats sent to the engine (retries included)
    tokens_out: int = 0  # tokens the engine generated
    tokens_in: int = 0
    engine_seconds: float = 0.0
    seconds: float = 0.0
    load: LoadReport = field(default_factory=LoadReport)

    @property
    def items_per_s(self) -> float:
        return self.generated / len(self.aspects) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def signals_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / self.engine_seconds if self.engine_seconds > 0 else float("nan")

    def describe(self) -> str:
        lines = [
            f"signal set {self.out} ({self.engine}; aspects {', '.join(self.aspects)})",
            f"read: {self.load.describe()}",
            f"this run: {self.pairs:,} signals asked for ({self.items:,} items), {self.already_done:,} already done, "
            f"{self.generated:,} generated ({self.empty:,} empty after {self.retried:,} retried)"
            + (f", {self.remaining:,} left for a rerun (time budget spent)" if self.remaining else ""),
            (f"prompt budget: {self.context_tokens:,}-token context" if self.context_tokens else
             "prompt budget: context unknown (item texts cut only)")
            + f"; {self.items_cut:,} item texts cut, {self.prompts_cut:,} prompts cut to fit",
        ]
        if self.generated:
            lines.append(f"throughput: {self.items_per_s:.2f} items/s, {self.signals_per_s:.2f} signals/s over "
                         f"{self.seconds:.1f} s; engine {self.tokens_out:,} tokens in {self.engine_seconds:.1f} s "
                         f"({self.tokens_per_s:.1f} tokens/s), {self.engine_calls:,} chats")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(items_per_s=self.items_per_s, signals_per_s=self.signals_per_s, tokens_per_s=self.tokens_per_s)
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in data.items()}


def generate_signals(dataset, out: str | Path, engine: Engine, *, config: SignalConfig | None = None,
                     item_ids=None, budget_s: float | None = None, progress: bool = False) -> GenerateResult:
    """Generate the missing signals of ``item_ids`` (default: the whole catalogue) into the set ``out``.

    Args:
        dataset: a :class:`~agentrec.data.dataset.PreparedDataset` or its folder.
        out: the signal set folder; created, or resumed when its manifest matches.
        engine: any :class:`~agentrec.llm.engines.Engine`.
        config: aspects, sampling, cleaning and chunking.
        item_ids: items to do, in this order (ids 1..n_items); repeats are done once.
        budget_s: start no new chunk after this many seconds (the rest is left for a rerun).
        progress: a tqdm bar over the pairs to generate.

    Returns:
        A :class:`GenerateResult` with counts and throughput.

    Raises:
        SignalSetMismatchError: ``out`` holds a set made with other settings.
        EngineError: the engine failed for good; the pairs it did finish are written first.
    """

    started = time.perf_counter()
    config = config or SignalConfig()
    # before the engine is asked anything (its fingerprint may load a model or call a server)
    validate_aspects(config.aspects, config.prompts)
    if not isinstance(dataset, PreparedDataset):
        dataset = PreparedDataset.load(dataset)
    builder = PromptBuilder(dataset, PromptConfig(fields=config.fields, prompts=config.prompts,
                                                  item_chars=config.item_chars, item_tokens=config.item_tokens),
                            engine=engine)
    if item_ids is None:
        item_ids = range(1, dataset.n_items + 1)
    item_ids = list(dict.fromkeys(int(i) for i in item_ids))
    bad = [i for i in item_ids if not 1 <= i <= dataset.n_items]
    if bad:
        raise ValueError(f"item ids {bad[:5]} are outside 1..{dataset.n_items}")

    signal_set = SignalSet(out)
    wanted = build_manifest(dataset, engine, config, builder)
    with signal_set.lock():
        manifest = merge_manifest(signal_set.manifest, wanted, signal_set.path) if signal_set.exists() else wanted
        signal_set.write_manifest(manifest)
        done, load = signal_set.read(repair=True)
        pairs = [(item, aspect) for item in item_ids for aspect in config.aspects]
        todo = [pair for pair in pairs if pair not in done]
        result = GenerateResult(out=str(signal_set.path), engine=engine.fingerprint, aspects=config.aspects,
                                items=len(item_ids), pairs=len(pairs), already_done=len(pairs) - len(todo),
                                generated=0, empty=0, retried=0, load=load)
        if load.torn_bytes or load.duplicates:
            logger.warning("%s: %s", signal_set.records_path, load.describe())
        bar = _bar(len(todo), progress)
        try:
            for start in range(0, len(todo), config.chunk_size):
                if budget_s is not None and time.perf_counter() - started > budget_s:
                    result.remaining = len(todo) - start
                    logger.warning("time budget of %.0f s spent: %d signals left for a rerun", budget_s,
                                   result.remaining)
                    break
                chunk = todo[start : start + config.chunk_size]
                records = _generate_chunk(engine, builder, chunk, config, result, signal_set)
                signal_set.append(records)
                result.generated += len(records)
                bar.update(len(records))
                bar.set_postfix(tok_s=f"{result.tokens_out / max(result.engine_seconds, 1e-9):.0f}")
        finally:
            bar.close()
            result.items_cut, result.prompts_cut = builder.cuts.items, builder.cuts.prompts
            result.context_tokens = builder.context_tokens
    if result.items_cut or result.prompts_cut:
        logger.warning("%d item texts cut to %d characters / %d tokens, %d prompts cut to fit the %s-token context",
                       result.items_cut, config.item_chars, config.item_tokens, result.prompts_cut,
                       result.context_tokens)
    result.seconds = time.perf_counter() - started
    return result


def _generate_chunk(engine, builder, chunk, config: SignalConfig, result: GenerateResult, signal_set) -> list[dict]:
    """Generate, clean and retry one chunk; returns its records in chunk order."""
    labels = {item: builder.item_label(item) for item, _ in chunk}
    chats = {}
    for aspect in dict.fromkeys(a for _, a in chunk):
        items = [item for item, a in chunk if a == aspect]
        made = builder.aspect_chats(aspect, items, max_new_tokens=config.max_new_tokens)
        chats.update({(item, aspect): chat for item, chat in zip(items, made)})
    records = {pair: {"item_id": pair[0], "aspect": pair[1], "text": "", "raw": "", "status": STATUS_EMPTY,
                      "attempts": 0, "tokens_in": 0, "tokens_out": 0} for pair in chunk}
    pending = list(chunk)
    for attempt in range(config.retries + 1):
        if not pending:
            break
        began = time.perf_counter()
        try:
            made = engine.generate([chats[pair] for pair in pending], config.params(attempt))
        except BaseException as error:
            # keep what is finished -- pairs of earlier attempts and, for an EngineError, the chats
            # that succeeded -- whatever stopped us (a dead vLLM engine, Ctrl-C); the rest come next run
            for pair, generation in zip(pending, getattr(error, "partial", None) or ()):
                if generation is not None:
                    _take(records[pair], generation, config, labels[pair[0]])
            kept = [r for r in records.values() if r["status"] == STATUS_OK]
            if kept:
                signal_set.append(kept)
                logger.warning("kept %d finished signals in %s before the error", len(kept), signal_set.records_path)
            raise
        result.engine_seconds += time.perf_counter() - began
        result.engine_calls += len(pending)
        if attempt == 1:
            result.retried += len(pending)
        for pair, generation in zip(pending, made):
            _take(records[pair], generation, config, labels[pair[0]])
            result.tokens_in += generation.tokens_in or 0
            result.tokens_out += generation.tokens_out or 0
        pending = [pair for pair in pending if records[pair]["status"] != STATUS_OK]
    result.empty += len(pending)
    return [records[pair] for pair in chunk]


def _take(record: dict, generation, config: SignalConfig, item_label: str) -> None:
    record["attempts"] += 1
    record["tokens_in"] += generation.tokens_in or 0
    record["tokens_out"] += generation.tokens_out or 0
    record["raw"] = generation.text
    text = clean_signal(generation.text, max_chars=config.max_chars, item=item_label)
    if text:
        record["text"], record["status"] = text, STATUS_OK


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="signals", unit="signal", disable=not enabled, dynamic_ncols=True)


# ================================================================================================ augmentation
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


# ================================================================================================ report
def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of ``texts`` (lower-cased words; n-grams never cross texts); 0 if none."""
    total, seen = 0, set()
    for text in texts:
        words = _norm_words(text)
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def max_other_similarity(vectors: np.ndarray, *, block: int = 2048) -> np.ndarray:
    """``(n,)`` largest cosine similarity of each unit row to any *other* row (-inf when n == 1)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    best = np.full(n, -np.inf, dtype=np.float32)
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors.T  # (block, n)
        rows = np.arange(start, min(n, start + block))
        sims[rows - start, rows] = -np.inf  # not itself
        best[rows] = sims.max(axis=1) if n > 1 else -np.inf
    return best


def near_duplicate_rate(vectors: np.ndarray, threshold: float) -> float:
    """Share of rows whose cosine similarity to some other row is at least ``threshold``."""
    if len(vectors) < 2:
        return 0.0
    return float((max_other_similarity(vectors) >= threshold).mean())


def novelty(signal_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """``(n,)`` 1 - cosine similarity between each signal and its own item's text (unit rows)."""
    return 1.0 - np.einsum("ij,ij->i", np.asarray(signal_vectors, np.float32), np.asarray(item_vectors, np.float32))


def category_repetitiveness(vectors: np.ndarray, categories: list[list[str]], threshold: float, *,
                            min_items: int = 2) -> list[dict]:
    """Per category: items, mean pairwise cosine of their signals, and their near-duplicate rate within it.

    An item belongs to every category it lists. Categories with fewer than ``min_items`` signals are
    left out. Sorted by mean pairwise cosine, most repetitive first.
    """
    members: dict[str, list[int]] = {}
    for row, cats in enumerate(categories):
        for cat in dict.fromkeys(cats or []):
            members.setdefault(str(cat), []).append(row)
    out = []
    for cat, rows in members.items():
        if len(rows) < min_items:
            continue
        v = np.asarray(vectors, np.float32)[rows]
        sims = v @ v.T
        m = len(rows)
        mean = float((sims.sum() - np.trace(sims)) / (m * (m - 1)))
        out.append({"category": cat, "items": m, "mean_cosine": mean,
                    "near_duplicate_rate": near_duplicate_rate(v, threshold)})
    return sorted(out, key=lambda r: (-r["mean_cosine"], r["category"]))


def dedup_keep(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """``(n,)`` bool: greedy de-duplication in row order; a row is dropped when its cosine similarity
    to an earlier *kept* row is at least ``threshold``."""
    vectors = np.asarray(vectors, np.float32)
    keep = np.zeros(len(vectors), dtype=bool)
    kept_rows: list[int] = []
    for row in range(len(vectors)):
        if kept_rows and float((vectors[kept_rows] @ vectors[row]).max()) >= threshold:
            continue
        keep[row] = True
        kept_rows.append(row)
    return keep


def _item_categories(dataset) -> tuple[str, list[list[str]]]:
    """The column that groups items (genres for MovieLens, categories for Amazon) and each item's groups."""

    for column in ("genres", "categories"):
        if column in dataset.items:
            values = [_value(v) for v in dataset.items[column].astype(object).tolist()]
            lists = [v if isinstance(v, list) else ([str(v)] if v else []) for v in values]
            if any(lists):
                return column, lists
    return "none", [[] for _ in range(dataset.n_items)]


def signal_report(path: str | Path, *, dataset=None, embedder="minilm", threshold: float = 0.9,
                  top_categories: int = 10, dedup_out: str | Path | None = None) -> dict:
    """Quality of a signal set, per aspect; optionally write a de-duplicated copy.

    Metrics (per aspect, over the items with a usable signal):

    * ``coverage``: items with a usable signal / catalogue items; ``empty``: kept empty after retries;
      ``missing``: never generated.
    * ``distinct_1``, ``distinct_2``: distinct word unigrams / bigrams over all of them.
    * ``exact_duplicate_rate``: share of signals whose text (case and spacing aside) another item has too.
    * ``near_duplicate_rate``: share whose embedding has cosine similarity >= ``threshold`` with another item's.
    * ``novelty``: mean of 1 - cosine(signal, the item's own metadata text), both embedded by ``embedder``.
    * per category (genre / category): mean pairwise cosine and near-duplicate rate within the category.

    Args:
        path: the signal set folder.
        dataset: the PreparedDataset (default: the folder recorded in the manifest).
        embedder: an Embedder or its name (default MiniLM, offline).
        threshold: cosine similarity from which two signals count as near duplicates.
        top_categories: categories per aspect in the markdown (all are in the JSON).
        dedup_out: write a copy of the set there in which every near duplicate of an earlier item's
            signal (item id order) is removed (``status: "removed"``).

    Returns:
        The report as a dict; ``report.md`` and ``report.json`` are written into the set folder.
    """

    signal_set = SignalSet(path)
    manifest = signal_set.manifest
    if dataset is None:
        if not manifest.get("dataset_path"):
            raise ValueError(f"signal set {path} does not record its dataset folder; pass --data")
        dataset = PreparedDataset.load(manifest["dataset_path"])
    elif not isinstance(dataset, PreparedDataset):
        dataset = PreparedDataset.load(dataset)
    if manifest["catalogue_fingerprint"] != catalogue_fingerprint(dataset):
        raise SignalSetMismatchError(f"signal set {path} was generated for another catalogue than {dataset.name}")
    embedder = get_embedder(embedder) if isinstance(embedder, str) else embedder
    records, load = signal_set.read()
    n = dataset.n_items
    plain = item_texts(dataset.items)
    category_column, categories = _item_categories(dataset)
    report = {"set": str(signal_set.path), "dataset": dataset.name, "items": n, "engine": manifest["engine"],
              "embedder": embedder.fingerprint, "threshold": threshold, "category_column": category_column,
              "load": asdict(load), "aspects": {}}
    removed: dict[tuple[int, str], dict] = {}
    for aspect in manifest["aspects"]:
        rows = sorted((item, r) for (item, a), r in records.items() if a == aspect)
        ok = [(item, r["text"]) for item, r in rows if r.get("status") == STATUS_OK and r["text"]]
        empty = sum(1 for _, r in rows if r.get("status") == STATUS_EMPTY)
        stats = {"coverage": len(ok) / n if n else 0.0, "signals": len(ok), "empty": empty,
                 "missing": n - len(rows), "removed": sum(1 for _, r in rows if r.get("status") == STATUS_REMOVED)}
        if ok:
            items = [item for item, _ in ok]
            texts = [text for _, text in ok]
            vectors = embedder.embed(texts)
            own = embedder.embed([plain[i - 1] for i in items])
            keys = [" ".join(_norm_words(t)) for t in texts]
            counts: dict[str, int] = {}
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
            nov = novelty(vectors, own)
            stats.update(
                distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2),
                exact_duplicate_rate=sum(counts[k] > 1 for k in keys) / len(keys),
                near_duplicate_rate=near_duplicate_rate(vectors, threshold),
                novelty=float(nov.mean()), mean_words=float(np.mean([len(_norm_words(t)) for t in texts])),
                categories=category_repetitiveness(vectors, [categories[i - 1] for i in items], threshold),
            )
            if dedup_out is not None:
                keep = dedup_keep(vectors, threshold)
                for item, kept in zip(items, keep):
                    if not kept:
                        removed[(item, aspect)] = records[(item, aspect)]
                stats["dedup_removed"] = int((~keep).sum())
        report["aspects"][aspect] = stats
    if dedup_out is not None:
        report["dedup_out"] = str(write_dedup(signal_set, records, removed, dedup_out, threshold))
    _write_atomic(signal_set.path / "report.json", json.dumps(report, indent=2) + "\n")
    _write_atomic(signal_set.path / "report.md", format_report(report, top_categories=top_categories) + "\n")
    return report


def write_dedup(source: SignalSet, records: dict, removed: dict, out: str | Path, threshold: float) -> Path:
    """A copy of ``source`` with the ``removed`` pairs marked ``status: "removed"`` (their text kept in ``raw``)."""
    target = SignalSet(out)
    if target.path.resolve() == source.path.resolve():
        raise ValueError("the de-duplicated set must go to another folder than its source")
    if target.records_path.exists():
        raise ValueError(f"{target.path} already holds a signal set; choose another folder for the de-duplicated copy")
    manifest = dict(source.manifest)
    manifest["derived_from"] = {"set": str(source.path.resolve()), "dedup_threshold": threshold,
                                "removed": len(removed)}
    target.write_manifest(manifest)
    lines = []
    for key, record in sorted(records.items()):
        if key in removed:
            record = {**record, "status": STATUS_REMOVED, "text": "", "raw": record["text"]}
        lines.append(record)
    target.append(lines)
    return target.path


def format_report(report: dict, *, top_categories: int = 10) -> str:
    """The report as markdown tables (percentages where a share)."""
    lines = [
        f"# Signal set report: {report['set']}",
        "",
        f"{report['dataset']}, {report['items']:,} items; generated by `{report['engine']}`; embedder "
        f"`{report['embedder']}`; near duplicate = cosine similarity >= {report['threshold']}; novelty = mean "
        f"1 - cosine(signal, item metadata text). Records read: {LoadReport(**report['load']).describe()}.",
        "",
        "| aspect | coverage | signals | empty | missing | distinct-1 | distinct-2 | exact dup | near dup | novelty "
        "| words |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for aspect, s in report["aspects"].items():
        if s["signals"]:
            lines.append(f"| {aspect} | {100 * s['coverage']:.1f}% | {s['signals']:,} | {s['empty']:,} | "
                         f"{s['missing']:,} | {s['distinct_1']:.3f} | {s['distinct_2']:.3f} | "
                         f"{100 * s['exact_duplicate_rate']:.1f}% | {100 * s['near_duplicate_rate']:.1f}% | "
                         f"{s['novelty']:.3f} | {s['mean_words']:.1f} |")
        else:
            lines.append(f"| {aspect} | 0.0% | 0 | {s['empty']:,} | {s['missing']:,} | - | - | - | - | - | - |")
    for aspect, s in report["aspects"].items():
        cats = s.get("categories") or []
        if not cats:
            continue
        lines += ["", f"## {aspect}: most repetitive {report['category_column']} (of {len(cats)})", "",
                  f"| {report['category_column']} | items | mean cosine | near dup |", "|---|---:|---:|---:|"]
        for row in cats[:top_categories]:
            lines.append(f"| {row['category']} | {row['items']:,} | {row['mean_cosine']:.3f} | "
                         f"{100 * row['near_duplicate_rate']:.1f}% |")
    if report.get("dedup_out"):
        removed = {a: s.get("dedup_removed", 0) for a, s in report["aspects"].items()}
        lines += ["", f"De-duplicated copy: {report['dedup_out']} (removed: "
                  + ", ".join(f"{a} {k}" for a, k in removed.items()) + ")"]
    return "\n".join(lines)
