"""Generating LaMAR semantic signals: per-item texts an LLM infers from metadata, crash-safely.

Paper: "Language Models as Semantic Augmenters for Sequential Recommenders" (LaMAR, arXiv 2510.18046);
no public code. An instruction-tuned LLM reads one catalogue item's metadata and writes an
*aspect* of it with a few-shot prompt: its usage scenario, the intent behind choosing it, or a
thematic summary (``prompts/aspect_{usage,intent,summary}.jinja``). The texts then augment the item
text that embeddings, the catalogue index and SemSR-F see (:func:`agentrec.signals.store.load_signals`).

Few-shot demonstrations. LaMAR makes its demonstrations once with a zero-shot chain-of-thought pass
and reuses them. agentrec ships them inside the templates instead, written once and reviewed (two
per aspect, one product and one film): with the offline 135M model a zero-shot CoT pass writes
demonstrations that are worse than no demonstrations, and a template is data you can replace
(``--prompts DIR``); its digest is part of the set's identity, so new demonstrations make a new set.

**Chunks.** Work is cut into chunks of ``chunk_size`` (item, aspect) pairs; each chunk is one engine
call (the engine batches it), and its lines are durable in the set (:mod:`agentrec.signals.store`)
before the next chunk starts, so a rerun of the same command generates only what is missing. A pair's
chunk is fixed by its position among all the pairs asked for (position // ``chunk_size``), not among the
pairs still to do: a rerun that finds whole chunks stored sends each other chunk exactly as a fresh run
would, so the engine sees the same batches and greedy outputs are the same.

**Ray** (``ray=``, a :class:`~agentrec.llm.raypool.RayPool`; ``agentrec signals generate --ray``). The driver
builds the prompts of every chunk still to do; each chunk is one task for the pool's actors, which run
:func:`run_chunk` (generation, cleaning and retries, as here) with an engine of their own; the driver appends
each chunk's records to the set as it comes back, in the order chunks finish. Outputs equal a run without Ray
(the same chunks, the same engine calls). A chunk that fails after the pool's retries keeps its finished
signals and is named in the error raised at the end, after every other chunk is stored; a hung actor stops the
job after the pool's ``actor_timeout_s`` (:mod:`agentrec.llm.raypool`).

**Progress.** One bar (:class:`~agentrec.core.progress.LLMProgress`) over the signals to generate, with tokens/s
and the ETA, moved per engine batch (:func:`~agentrec.llm.base.generate_reporting`), or per chunk under Ray;
retries add to its total.

**Budgets.** Each item's text is cut to ``item_chars`` characters and ``item_tokens`` tokens before it
goes into a prompt, and a prompt still over the engine's context is cut to fit ("Budgets" in
:mod:`agentrec.llm.prompts`), so one item with a 100 KB title makes a prompt like any other. The cuts are
counted in :class:`GenerateResult` (``last_run.json``). The two settings are recorded in the
manifest but are not part of the set's identity: they change only the texts of items longer than
them, which could not be generated before.

**Retries.** An output that is empty after cleaning (:func:`agentrec.signals.cleaning.clean_signal`) is
retried ``retries`` times with sampling (a greedy retry would repeat itself), then kept as
``status: "empty"`` and counted. Each retry is its own engine call with a seed of its own per (item, aspect,
attempt) (:meth:`SignalConfig.params`), so what a retry writes does not depend on which other pairs failed
with it: a Ray run, a resumed run and a plain run retry alike.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agentrec.core.errors import ServiceError, UsageError
from agentrec.core.progress import LLMProgress
from agentrec.core.shards import shard_rows, shard_text
from agentrec.data.dataset import PreparedDataset
from agentrec.llm.base import Engine, SamplingParams, describe_error, generate_reporting
from agentrec.llm.raypool import RayPool, TaskError
from agentrec.llm.prompts import PromptBuilder, PromptConfig, validate_aspects
from agentrec.signals.cleaning import ASPECT_NAMES, clean_signal
from agentrec.signals.store import (
    STATUS_EMPTY,
    STATUS_OK,
    LoadReport,
    SignalSet,
    build_manifest,
    merge_manifest,
)

logger = logging.getLogger(__name__)


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
            raise UsageError(f"unknown aspects {unknown or '(none given)'}; choose from {', '.join(ASPECT_NAMES)}")
        if len(set(self.aspects)) != len(self.aspects):
            raise UsageError(f"aspects are repeated: {', '.join(self.aspects)}")
        if self.retries < 0 or self.max_chars < 8 or self.chunk_size < 1:
            raise UsageError("retries must be >= 0, max_chars >= 8 and chunk_size >= 1")
        if self.item_chars < 16 or self.item_tokens < 8:
            raise UsageError(f"item_chars must be >= 16 and item_tokens >= 8, got {self.item_chars} and "
                             f"{self.item_tokens}")

    def params(self, attempt: int = 0, *, item: int | None = None, aspect: str | None = None) -> SamplingParams:
        """Sampling for attempt 0 (the configured one) and for retries: sampled, seeded per (item, aspect, attempt)
        from ``seed``, so a retry draws the same text whichever run, chunk or Ray actor makes it."""
        if attempt == 0:
            return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                  seed=self.seed)
        pair = zlib.crc32(f"{item}\0{aspect}".encode())
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.retry_temperature,
                              top_p=0.95, seed=(self.seed + 1_000_003 * attempt + pair) % 2**31)


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
    engine_seconds: float = 0.0  # in the engine; under Ray summed over the actors
    seconds: float = 0.0
    ray: str | None = None  # the Ray pool that generated (None: this process)
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
        if self.ray:
            lines.append(self.ray)
        if self.generated:
            lines.append(f"throughput: {self.items_per_s:.2f} items/s, {self.signals_per_s:.2f} signals/s over "
                         f"{self.seconds:.1f} s; engine {self.tokens_out:,} tokens in {self.engine_seconds:.1f} s"
                         + (" (summed over the actors)" if self.ray else "")
                         + f" ({self.tokens_per_s:.1f} tokens/s), {self.engine_calls:,} chats")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(items_per_s=self.items_per_s, signals_per_s=self.signals_per_s, tokens_per_s=self.tokens_per_s)
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in data.items()}


def generate_signals(dataset, out: str | Path, engine: Engine, *, config: SignalConfig | None = None,
                     item_ids=None, budget_s: float | None = None, progress: bool | LLMProgress = False,
                     shard: tuple[int, int] | str | None = None, ray: RayPool | None = None) -> GenerateResult:
    """Generate the missing signals of ``item_ids`` (default: the whole catalogue) into the set ``out``.

    Args:
        dataset: a :class:`~agentrec.data.dataset.PreparedDataset` or its folder.
        out: the signal set folder; created, or resumed when its manifest matches.
        engine: any :class:`~agentrec.llm.base.Engine`. With ``ray``, the driver's engine: it renders and counts
            the prompts, and its fingerprint is the set's (:func:`agentrec.llm.raypool.driver_engine`); the actors
            make their own.
        config: aspects, sampling, cleaning and chunking.
        item_ids: items to do, in this order (ids 1..n_items); repeats are done once.
        budget_s: start no new chunk (under Ray: store no more chunks) after this many seconds; the rest is left
            for a rerun.
        progress: True for a bar over the signals to generate (tok/s, ETA), or an
            :class:`~agentrec.core.progress.LLMProgress` of the caller's (grown by this run's signals).
        shard: ``(I, N)`` or ``"I/N"``: only the items whose index ``i`` in ``item_ids`` (after repeats are
            dropped) has ``i % N == I`` (:mod:`agentrec.core.shards`); the manifest records the shard. Each
            shard writes its own set; :func:`agentrec.signals.merge.merge_signal_sets` combines them.
        ray: generate on this pool's Ray actors (see the module docstring); started here when it is not.

    Returns:
        A :class:`GenerateResult` with counts and throughput.

    Raises:
        SignalSetMismatchError: ``out`` holds a set made with other settings.
        EngineError: the engine failed for good; the pairs it did finish are written first.
        ServiceError: under Ray, chunks failed after the pool's retries (named, with their items), or the job
            stopped (:class:`~agentrec.llm.raypool.RayJobError`); every chunk that came back is written first.
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
        raise UsageError(f"item ids {bad[:5]} are outside 1..{dataset.n_items}")
    item_ids = [item_ids[i] for i in shard_rows(len(item_ids), shard)]

    signal_set = SignalSet(out)
    wanted = build_manifest(dataset, engine, config, builder)
    wanted["shard"] = shard_text(shard)
    with signal_set.lock():
        manifest = merge_manifest(signal_set.manifest, wanted, signal_set.path) if signal_set.exists() else wanted
        signal_set.write_manifest(manifest)
        done, load = signal_set.read(repair=True)
        pairs = [(item, aspect) for item in item_ids for aspect in config.aspects]
        chunks: dict[int, list] = {}  # a pair's chunk follows its place among all pairs (module docstring)
        for position, pair in enumerate(pairs):
            if pair not in done:
                chunks.setdefault(position // config.chunk_size, []).append(pair)
        chunks = list(chunks.values())
        todo = sum(len(chunk) for chunk in chunks)
        result = GenerateResult(out=str(signal_set.path), engine=engine.fingerprint, aspects=config.aspects,
                                items=len(item_ids), pairs=len(pairs), already_done=len(pairs) - todo,
                                generated=0, empty=0, retried=0, load=load)
        if load.torn_bytes or load.duplicates:
            logger.warning("%s: %s", signal_set.records_path, load.describe())
        if ray is not None and chunks:
            ray.start()  # before the bar: starting a cluster takes seconds
            result.ray = ray.describe()
        bar = progress if isinstance(progress, LLMProgress) else None
        if bar is None:
            bar = LLMProgress(todo, desc="signals", unit="signal", enabled=bool(progress))
        else:
            bar.add_total(todo)
        try:
            run = _generate_on_ray if ray is not None else _generate_here
            run(engine, builder, chunks, config, result, signal_set, bar, started=started, budget_s=budget_s,
                pool=ray)
        finally:
            if bar is not progress:
                bar.close()
            result.items_cut, result.prompts_cut = builder.cuts.items, builder.cuts.prompts
            result.context_tokens = builder.context_tokens
    if result.items_cut or result.prompts_cut:
        logger.warning("%d item texts cut to %d characters / %d tokens, %d prompts cut to fit the %s-token context",
                       result.items_cut, config.item_chars, config.item_tokens, result.prompts_cut,
                       result.context_tokens)
    result.seconds = time.perf_counter() - started
    return result


def _generate_here(engine, builder, chunks, config, result, signal_set, bar, *, started, budget_s, pool) -> None:
    """The chunks one after the other in this process, each durable before the next starts."""
    for number, chunk in enumerate(chunks):
        if budget_s is not None and time.perf_counter() - started > budget_s:
            result.remaining = sum(len(c) for c in chunks[number:])
            logger.warning("time budget of %.0f s spent: %d signals left for a rerun", budget_s, result.remaining)
            break
        outcome = run_chunk(engine, chunk_task(builder, chunk, config), progress=bar)
        records = outcome.finished()
        if records:
            signal_set.append(records)
        result.generated += len(records)
        outcome.add_to(result)
        if outcome.error is not None:
            if records:
                logger.warning("kept %d finished signals in %s before the error", len(records),
                               signal_set.records_path)
            raise outcome.error


def _generate_on_ray(engine, builder, chunks, config, result, signal_set, bar, *, started, budget_s,
                     pool: RayPool) -> None:
    """The chunks as tasks of ``pool``'s actors; each chunk's records are appended as it comes back."""
    tasks = [chunk_task(builder, chunk, config) for chunk in chunks]
    labels = [describe_pairs(chunk) for chunk in chunks]
    failed, stored = [], set()
    for done in pool.run(run_chunk_task, tasks, labels=labels, fingerprint=engine.fingerprint):
        outcome: ChunkOutcome | None = done.value if done.ok else done.partial
        records = outcome.finished() if outcome is not None else []
        if records:
            signal_set.append(records)
        result.generated += len(records)
        stored.add(done.index)
        if outcome is not None:
            outcome.add_to(result)
            bar.add_total(max(0, outcome.engine_calls - len(chunks[done.index])))  # the retries
            bar.update(outcome.engine_calls, tokens_out=outcome.tokens_out)
        if not done.ok:
            failed.append(f"{labels[done.index]}: {done.error}")
            logger.warning("chunk %s failed after %d attempts on actor %s: %s", labels[done.index], done.attempts,
                           done.actor, done.error)
        if budget_s is not None and time.perf_counter() - started > budget_s and len(stored) < len(chunks):
            result.remaining = sum(len(chunks[i]) for i in range(len(chunks)) if i not in stored)
            logger.warning("time budget of %.0f s spent: %d signals left for a rerun", budget_s, result.remaining)
            break
    if failed:
        raise ServiceError(f"{len(failed)} of {len(chunks)} chunks failed on the Ray actors after "
                           f"{pool.config.actor_retries + 1} attempts each: " + "; ".join(failed[:8])
                           + (f"; ... and {len(failed) - 8} more" if len(failed) > 8 else "")
                           + ". Every other chunk, and what these finished, is stored in "
                           f"{signal_set.records_path}; rerun the same command to retry the rest")


def describe_pairs(pairs: list[tuple[int, str]], shown: int = 6) -> str:
    """``items 3, 4, 5 (usage)``: the items of a chunk and their aspects, for messages."""
    items = list(dict.fromkeys(item for item, _ in pairs))
    aspects = ", ".join(dict.fromkeys(aspect for _, aspect in pairs))
    listed = ", ".join(map(str, items[:shown])) + (f", ... ({len(items)} items)" if len(items) > shown else "")
    return f"item{'s' if len(items) > 1 else ''} {listed} ({aspects})"


# ================================================================================================ one chunk
@dataclass
class ChunkTask:
    """One chunk's work, as plain data (it travels to a Ray actor): its pairs, their chats and item labels."""

    pairs: list[tuple[int, str]]
    chats: list[list[dict]]  # one chat per pair, in the same order
    labels: list[str]  # the item line of each pair's item (cleaning drops an echo of it)
    config: SignalConfig


@dataclass
class ChunkOutcome:
    """What :func:`run_chunk` made of a chunk: its records (chunk order) and what it cost."""

    records: list[dict]
    error: BaseException | str | None = None  # what stopped the chunk (the exception here; its text from Ray)
    engine_calls: int = 0  # chats sent to the engine (retries included)
    engine_seconds: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    retried: int = 0  # pairs that needed at least one retry
    empty: int = 0  # pairs still empty after every retry

    def finished(self) -> list[dict]:
        """The records to store: all of them, or after an error only the usable ones (the rest come next run)."""
        if self.error is None:
            return self.records
        return [record for record in self.records if record["status"] == STATUS_OK]

    def add_to(self, result: GenerateResult) -> None:
        for name in ("engine_calls", "engine_seconds", "tokens_in", "tokens_out", "retried", "empty"):
            setattr(result, name, getattr(result, name) + getattr(self, name))


def chunk_task(builder: PromptBuilder, chunk: list[tuple[int, str]], config: SignalConfig) -> ChunkTask:
    """Render the chats of ``chunk`` (grouped by aspect for the builder, returned in chunk order)."""
    chats = {}
    for aspect in dict.fromkeys(a for _, a in chunk):
        items = [item for item, a in chunk if a == aspect]
        made = builder.aspect_chats(aspect, items, max_new_tokens=config.max_new_tokens)
        chats.update({(item, aspect): chat for item, chat in zip(items, made)})
    return ChunkTask(pairs=list(chunk), chats=[chats[pair] for pair in chunk],
                     labels=[builder.item_label(item) for item, _ in chunk], config=config)


def run_chunk(engine, task: ChunkTask, *, progress: LLMProgress | None = None) -> ChunkOutcome:
    """Generate, clean and retry one chunk: the same work in this process and in a Ray actor.

    The first attempt is one engine call for the whole chunk; each retry of a pair that is empty after cleaning
    is an engine call of its own, seeded per pair (:meth:`SignalConfig.params`). Whatever stops the chunk (an
    :class:`~agentrec.llm.base.EngineError`, a dead engine, Ctrl-C) is kept in ``outcome.error``, with the
    pairs finished before it (and, for an EngineError, the chats that succeeded) in ``outcome.records``.
    """
    config = task.config
    outcome = ChunkOutcome(records=[{"item_id": item, "aspect": aspect, "text": "", "raw": "", "status": STATUS_EMPTY,
                                     "attempts": 0, "tokens_in": 0, "tokens_out": 0} for item, aspect in task.pairs])
    pending = list(range(len(task.pairs)))
    try:
        _attempt(engine, task, pending, config.params(0), outcome, progress)
        pending = [i for i in pending if outcome.records[i]["status"] != STATUS_OK]
        for attempt in range(1, config.retries + 1):
            if not pending:
                break
            if attempt == 1:
                outcome.retried += len(pending)
            if progress is not None:
                progress.add_total(len(pending))
            for i in pending:
                item, aspect = task.pairs[i]
                _attempt(engine, task, [i], config.params(attempt, item=item, aspect=aspect), outcome, progress)
            pending = [i for i in pending if outcome.records[i]["status"] != STATUS_OK]
    except BaseException as error:  # noqa: BLE001 -- the caller stores what is finished, then raises it
        outcome.error = error
        return outcome
    outcome.empty = len(pending)
    return outcome


def _attempt(engine, task: ChunkTask, rows: list[int], params: SamplingParams, outcome: ChunkOutcome,
             progress: LLMProgress | None) -> None:
    """One engine call for the chats of ``rows``; each generation is cleaned into its record."""
    chats = [task.chats[i] for i in rows]
    began = time.perf_counter()
    try:
        made = generate_reporting(engine, chats, params, progress) if progress is not None else \
            engine.generate(chats, params)
    except BaseException as error:
        for i, generation in zip(rows, getattr(error, "partial", None) or ()):
            if generation is not None:  # the chats of an EngineError that succeeded
                _take(outcome.records[i], generation, task.config, task.labels[i])
        raise
    outcome.engine_seconds += time.perf_counter() - began
    outcome.engine_calls += len(rows)
    for i, generation in zip(rows, made):
        _take(outcome.records[i], generation, task.config, task.labels[i])
        outcome.tokens_in += generation.tokens_in or 0
        outcome.tokens_out += generation.tokens_out or 0


def run_chunk_task(engine, task: ChunkTask) -> ChunkOutcome:
    """:func:`run_chunk` as a Ray task: an error fails the task (retried by the pool), keeping what it finished."""
    outcome = run_chunk(engine, task)
    if outcome.error is not None:
        message, outcome.error = describe_error(outcome.error), describe_error(outcome.error)
        raise TaskError(message, partial=outcome)
    return outcome


def _take(record: dict, generation, config: SignalConfig, item_label: str) -> None:
    record["attempts"] += 1
    record["tokens_in"] += generation.tokens_in or 0
    record["tokens_out"] += generation.tokens_out or 0
    record["raw"] = generation.text
    text = clean_signal(generation.text, max_chars=config.max_chars, item=item_label)
    if text:
        record["text"], record["status"] = text, STATUS_OK
