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
before the next chunk starts, so a rerun of the same command generates only what is missing.

**Budgets.** Each item's text is cut to ``item_chars`` characters and ``item_tokens`` tokens before it
goes into a prompt, and a prompt still over the engine's context is cut to fit ("Budgets" in
:mod:`agentrec.llm.prompts`), so one item with a 100 KB title makes a prompt like any other. The cuts are
counted in :class:`GenerateResult` (``last_run.json``). The two settings are recorded in the
manifest but are not part of the set's identity: they change only the texts of items longer than
them, which could not be generated before.

**Retries.** An output that is empty after cleaning (:func:`agentrec.signals.cleaning.clean_signal`) is
retried ``retries`` times with sampling (a greedy retry would repeat itself), then kept as
``status: "empty"`` and counted.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agentrec.core.errors import UsageError
from agentrec.core.shards import shard_rows, shard_text
from agentrec.data.dataset import PreparedDataset
from agentrec.llm.base import Engine, SamplingParams
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

    def params(self, attempt: int = 0) -> SamplingParams:
        """Sampling for attempt 0 (the configured one) and for retries (sampled, a new seed each)."""
        if attempt == 0:
            return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                  seed=self.seed)
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.retry_temperature,
                              top_p=0.95, seed=self.seed + attempt)


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
                     item_ids=None, budget_s: float | None = None, progress: bool = False,
                     shard: tuple[int, int] | str | None = None) -> GenerateResult:
    """Generate the missing signals of ``item_ids`` (default: the whole catalogue) into the set ``out``.

    Args:
        dataset: a :class:`~agentrec.data.dataset.PreparedDataset` or its folder.
        out: the signal set folder; created, or resumed when its manifest matches.
        engine: any :class:`~agentrec.llm.base.Engine`.
        config: aspects, sampling, cleaning and chunking.
        item_ids: items to do, in this order (ids 1..n_items); repeats are done once.
        budget_s: start no new chunk after this many seconds (the rest is left for a rerun).
        progress: a tqdm bar over the pairs to generate.
        shard: ``(I, N)`` or ``"I/N"``: only the items whose index ``i`` in ``item_ids`` (after repeats are
            dropped) has ``i % N == I`` (:mod:`agentrec.core.shards`); the manifest records the shard. Each
            shard writes its own set; :func:`agentrec.signals.merge.merge_signal_sets` combines them.

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
