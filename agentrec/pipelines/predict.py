"""An LLM as the recommender: prompt, generate a title, ground it in the catalogue, measure.

SemSR (arXiv 2508.20587) section 3.2, "LLM as Recommender System": an instruction-tuned LLM reads a
session's item titles and writes the title of the next item (FS, ZCoT or FSCoT prompts, see
:mod:`agentrec.llm.prompts`); the generated title is grounded in the real catalogue by its nearest
items under cosine similarity of text embeddings in a Chroma collection (:mod:`agentrec.retrieval.index`).
No public reference code; the prompts follow the paper's Figure 2.

:func:`generate_candidates` is the reusable core: for any set of query sessions (a split's, or ad-hoc
histories in a :class:`~agentrec.llm.prompts.PromptBuilder`) it runs steps 1-4 below and returns the
grounded candidates in memory (:class:`Candidates`: item ids and distances arrays, parsed titles, raw
outputs, token counts). :func:`predict` runs it for the sessions of a split and measures them;
:func:`agentrec.pipelines.hybrid.predict_hybrid`, :mod:`agentrec.pipelines.compare` and
:class:`agentrec.pipelines.api.LLMRecommender` take the same candidates, never a file read back.

1. checks the templates (:func:`agentrec.llm.prompts.validate_templates`) before any model loads, then
   renders one chat per session (per step: CoT strategies run a rationale step, then a title step),
   each cut to the engine's context (item texts first, then whole prompts: "Budgets" in
   :mod:`agentrec.llm.prompts`; the cuts are counted in the result),
2. generates in chunks of ``chunk_size`` sessions, one engine call per step and chunk, through the
   generation cache (:mod:`agentrec.llm.cache`: a rerun or resumed run makes no repeated calls), with one
   progress bar over the sessions (:class:`~agentrec.core.progress.LLMProgress`: tokens/s, ETA) moved per engine
   batch; with ``ray=`` (a :class:`~agentrec.llm.raypool.RayPool`, ``agentrec predict --ray``) each chunk's
   uncached chats are one task for the pool's actors, step by step (a CoT strategy's title step waits for every
   chunk's rationale step), and each chunk's generations enter the cache as they come back. The actors make
   the engine calls the plain path makes (the same chats per call), so the generations are the same; a killed
   driver loses at most the chunks in flight (the cache holds the rest),
3. parses a title from each output (:func:`parse_title`),
4. grounds all parsed titles with **one** batched :meth:`CatalogueIndex.match` call (top-K),
5. (:func:`predict`) returns Recall@K / MRR@K / NDCG@K under :data:`PROTOCOL`, the candidates with them, and
   optionally writes one JSON line per session (written aside and renamed into place), a summary, and a
   histogram of the grounding distances (``F.distances.png``, :func:`write_distances_plot`).

Example::

    from agentrec.pipelines.predict import predict
    result = predict("data/ml-100k", "fs", k=20, limit=100, out="runs/fs.jsonl")
    print(result.describe())
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from agentrec.core import fsutil
from agentrec.core.errors import MismatchError, NotFoundError, ServiceError, UsageError
from agentrec.core.metrics import format_metrics, metrics_from_ranks
from agentrec.core.progress import LLMProgress
from agentrec.core.shards import shard_rows, shard_text
from agentrec.data.dataset import PreparedDataset
from agentrec.llm import Engine, EngineConfig, SamplingParams, get_engine
from agentrec.llm.cache import CachedBatch, GenerationCache, cached_generate, lookup
from agentrec.llm.raypool import RayPool, driver_engine, generate_task
from agentrec.llm.prompts import PromptBuilder, PromptConfig, Strategy, chat_digest, validate_strategy
from agentrec.llm.titles import normalise_title, parse_title
from agentrec.pipelines import plots
from agentrec.retrieval.index import CatalogueIndex

logger = logging.getLogger(__name__)

PROTOCOL = ("LLM title grounded in the catalogue: the parsed title's K nearest items by cosine distance "
            "(Chroma HNSW over item-text embeddings) are the ranked list; rank = the target's position in it; "
            "a target outside the list, or an output with no parseable title, is a miss; history items allowed")
DEFAULT_GROUND_DISTANCE = 0.4  # a parsed title farther than this from every item counts as ungrounded


# ================================================================================================ settings
@dataclass(frozen=True)
class GenerationConfig:
    """Sampling and batching of a prediction run."""

    title_tokens: int = 32  # most new tokens of a title step (a title is short; this bounds runaway output)
    rationale_tokens: int = 128  # most new tokens of a rationale step (zcot, fscot)
    temperature: float = 0.0  # 0 is greedy, as a reproducible default
    top_p: float = 1.0
    seed: int = 0
    chunk_size: int = 256  # sessions per engine call; each chunk is cached before the next starts

    def params(self, output: str) -> SamplingParams:
        tokens = self.rationale_tokens if output == "rationale" else self.title_tokens
        return SamplingParams(max_new_tokens=tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed)


@dataclass
class Candidates:
    """The grounded candidates of ``n`` sessions, in memory (what :func:`generate_candidates` returns).

    Row ``i`` belongs to the ``i``-th query session asked for. Distances are rounded to 6 decimals, as
    :func:`predict` writes them, so a result read back from its JSON lines
    (:func:`agentrec.pipelines.hybrid.read_candidates`) equals the one in memory.
    """

    item_ids: np.ndarray  # (n, k) int64 catalogue ids, nearest to the parsed title first; 0 pads a row
    distances: np.ndarray  # (n, k) float64 cosine distances to the parsed title; inf at padding
    titles: list  # (n,) the parsed title, or None when the output had none (that row is all padding)
    raw: list  # (n,) the title step's output
    rationales: list  # (n,) the rationale step's output (zcot, fscot), else None
    prompt_ids: list  # (n,) the first 16 hex digits of the title step's chat digest
    tokens: np.ndarray  # (n, 2) int64 prompt and generated tokens, summed over the steps
    cached: np.ndarray  # (n,) bool: every step of the session came from the generation cache
    engine_seconds: float = 0.0  # the engine's wall-clock time in this call (cache misses only)
    engine_calls: int = 0  # chats sent to the engine in this call
    generated_tokens_out: int = 0  # tokens the engine generated in this call
    cache_hits: int = 0
    cache_lookups: int = 0  # chats looked up (0 with the cache off)
    unknown_token_counts: int = 0  # generations whose engine reported no token counts

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def k(self) -> int:
        return self.item_ids.shape[1]

    def head(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """``(item_ids, distances)``, each ``(n, m)``: the first ``m`` candidates of every row, padded with
        ``(0, inf)`` when ``m > k`` (the shape :func:`agentrec.pipelines.hybrid.read_candidates` gives)."""
        ids = np.zeros((len(self), m), dtype=np.int64)
        distances = np.full((len(self), m), np.inf)
        width = min(m, self.k)
        ids[:, :width], distances[:, :width] = self.item_ids[:, :width], self.distances[:, :width]
        return ids, distances


@dataclass
class PredictResult:
    """What a prediction run measured. Token counts cover every generation the run used (cached or not);
    throughput counts only the tokens the engine generated in this run, over the engine's wall-clock time."""

    strategy: str
    engine: str  # engine fingerprint (engine, model, dtype)
    dataset: str
    split: str
    n: int  # sessions
    k: int
    metrics: dict[str, float]
    ranks: np.ndarray = field(repr=False)  # (n,) 1-based, inf = miss
    protocol: str = PROTOCOL
    tokens_in: int = 0
    tokens_out: int = 0
    unknown_token_counts: int = 0  # generations whose engine reported no token counts
    generated_tokens_out: int = 0  # tokens the engine generated in this run (cache misses)
    engine_calls: int = 0  # chats sent to the engine in this run
    engine_seconds: float = 0.0
    cache_hits: int = 0
    cache_lookups: int = 0  # chats looked up (0 with the cache off)
    unparseable: int = 0  # outputs with no title
    ungrounded: int = 0  # parsed titles farther than ground_distance from every catalogue item
    exact_titles: int = 0  # parsed titles equal to their nearest item's title (case, punctuation and year aside)
    context_tokens: int | None = None  # the engine's context that prompts were cut to (None: unknown, not checked)
    items_cut: int = 0  # distinct items whose text was cut to the per-item budget (a huge title)
    prompts_cut: int = 0  # prompts still over the context after that, shrunk to fit (over all steps)
    examples_dropped: int = 0  # few-shot examples left out of those prompts
    session_items_dropped: int = 0  # oldest session items left out of those prompts
    ground_distance: float = DEFAULT_GROUND_DISTANCE
    shard: str | None = None  # "I/N": only the selected sessions whose index i has i % N == I
    selected: int | None = None  # sessions selected before sharding (the first --limit, or all)
    dataset_fingerprint: str | None = None
    prompts: dict | None = None  # the prompt settings (a merge of shards checks they are equal)
    generation: dict | None = None  # the sampling settings (likewise)
    seconds: float = 0.0
    out: str | None = None
    ray: str | None = None  # the Ray pool that generated (None: this process); engine_seconds then sums its actors'
    candidates: Candidates | None = field(repr=False, default=None)  # the grounded top-K lists, in memory

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens_out / self.engine_seconds if self.engine_seconds > 0 else float("nan")

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.cache_lookups if self.cache_lookups else float("nan")

    def summary(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("ranks", "candidates")}
        data.update(tokens_per_s=self.tokens_per_s, cache_hit_rate=self.cache_hit_rate,
                    unparseable_rate=self.unparseable / self.n if self.n else float("nan"),
                    ungrounded_rate=self.ungrounded / self.n if self.n else float("nan"))
        return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in data.items()}

    def describe(self) -> str:
        n = max(self.n, 1)
        lines = [
            f"{self.strategy} with {self.engine} on {self.dataset} ({self.split}, {self.n:,} sessions, top-{self.k})",
            f"protocol: {self.protocol}",
            format_metrics(self.metrics, ks=tuple(sorted({min(10, self.k), self.k}))),
            f"titles: {self.unparseable:,} unparseable ({self.unparseable / n:.1%}), {self.ungrounded:,} ungrounded "
            f"(nearest item farther than cosine distance {self.ground_distance}; {self.ungrounded / n:.1%}), "
            f"{self.exact_titles:,} exact catalogue titles ({self.exact_titles / n:.1%})",
            f"tokens: {self.tokens_in:,} in, {self.tokens_out:,} out"
            + (f" ({self.unknown_token_counts:,} generations without counts)" if self.unknown_token_counts else ""),
            (f"prompt budget: {self.context_tokens:,}-token context" if self.context_tokens else
             "prompt budget: context unknown (item texts cut only)")
            + f"; {self.items_cut:,} item texts cut, {self.prompts_cut:,} prompts cut to fit"
            + (f" ({self.examples_dropped:,} examples and {self.session_items_dropped:,} session items left out)"
               if self.prompts_cut else ""),
            f"engine: {self.engine_calls:,} chats in {self.engine_seconds:.1f} s"
            + (" (summed over the Ray actors)" if self.ray else "")
            + f", {self.generated_tokens_out:,} tokens generated ({self.tokens_per_s:.1f} tokens/s)"
            if self.engine_calls else "engine: not called",
            f"cache: {self.cache_hits:,} of {self.cache_lookups:,} chats from the cache"
            + (f" ({self.cache_hit_rate:.0%})" if self.cache_lookups else " (cache off)"),
        ]
        if self.ray:
            lines.append(self.ray)
        return "\n".join(lines)


# ================================================================================================ generate + ground
def generate_candidates(builder: PromptBuilder, plan: Strategy, engine: Engine, index, *, k: int,
                        n: int | None = None, generation: GenerationConfig | None = None,
                        cache: GenerationCache | None = None, rows=None, progress: LLMProgress | None = None,
                        ray: RayPool | None = None) -> Candidates:
    """Generate a title for each query session of ``builder`` and ground all of them in the catalogue.

    Args:
        builder: renders the chats; its ``samples`` are the query sessions (a split's, or ad-hoc
            histories: ``PromptBuilder(dataset, config, samples=..., engine=engine)``). Its ``cuts``
            count what the prompts lost to the engine's context.
        plan: the strategy (:func:`agentrec.llm.prompts.validate_strategy`).
        engine: any object with the :class:`~agentrec.llm.Engine` interface.
        index: a :class:`~agentrec.retrieval.index.CatalogueIndex` (or anything with its ``match``).
        k: candidates per session (the nearest items to the parsed title), at most the catalogue's size.
        n: only the first ``n`` query sessions (default: all of them).
        rows: instead of the first ``n``, these query sessions (indices into ``builder.samples``, in the
            order given; a shard's, see :func:`shard_rows`). Row ``j`` of the result is session ``rows[j]``.
        generation: sampling and chunking (default :class:`GenerationConfig`).
        cache: the generation cache, or None for none.
        progress: a bar moved by one per session and step (cached chats at once, the others per engine batch,
            or per chunk under Ray); None: no bar.
        ray: generate on this pool's Ray actors (see the module docstring); ``engine`` is then the driver's
            (its fingerprint keys the cache, its tokenizer cuts the prompts).

    Returns:
        :class:`Candidates` for the first ``n`` sessions, in order. Generation runs in chunks of
        ``generation.chunk_size`` sessions, one engine call per step and chunk; grounding is **one**
        ``index.match`` call for every parsed title.
    """
    generation = generation or GenerationConfig()
    samples = builder.samples
    if rows is None:
        n = len(samples) if n is None else min(int(n), len(samples))
        rows = np.arange(n)
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    raw = [""] * n
    rationales: list[str | None] = [None] * n
    prompt_ids = [""] * n
    tokens = np.zeros((n, 2), dtype=np.int64)  # (n, [in, out]) summed over steps
    cached = np.ones(n, dtype=bool)  # every step of the session came from the cache
    found = Candidates(item_ids=np.zeros((n, k), dtype=np.int64), distances=np.full((n, k), np.inf), titles=[],
                       raw=raw, rationales=rationales, prompt_ids=prompt_ids, tokens=tokens, cached=cached)
    chunk_size = max(1, generation.chunk_size)
    chunks = [np.arange(start, min(n, start + chunk_size)) for start in range(0, n, chunk_size)]  # result positions
    if ray is not None:
        _generate_on_ray(builder, plan, engine, found, rows, chunks, generation, cache, progress, ray)
    else:
        for local in chunks:
            step_rationales = None
            for step in plan.steps:
                params = generation.params(step.output)
                chats = builder.step_chats(plan, step, rows[local], rationales=step_rationales,
                                           max_new_tokens=params.max_new_tokens)
                batch = cached_generate(engine, chats, params, template_digest=builder.template_digest(step.template),
                                        cache=cache, progress=progress)
                _take_batch(found, step, local, chats, batch, cache is not None)
                if step.output == "rationale":
                    step_rationales = [rationales[row] for row in local]
            logger.debug("%s: generated %d of %d sessions (%.1f s in the engine)", plan.name, local[-1] + 1, n,
                         found.engine_seconds)

    # ground every parsed title at once: one embedder call, one Chroma query
    found.titles = [parse_title(text) for text in raw]
    parsed = [row for row, title in enumerate(found.titles) if title]
    if parsed:
        matches = index.match([found.titles[row] for row in parsed], k=k)
        width = min(k, matches.item_ids.shape[1])
        found.item_ids[parsed, :width] = matches.item_ids[:, :width]
        # rounded as the JSON lines hold them (Python's round, per value): read back, a result is the same
        found.distances[parsed, :width] = [[round(float(d), 6) for d in row] for row in matches.distances[:, :width]]
    return found


def _take_batch(found: Candidates, step, local: np.ndarray, chats: list, batch: CachedBatch, cached: bool) -> None:
    """Enter one step's generations for the sessions at result positions ``local``."""
    found.engine_seconds += batch.engine_seconds
    found.cache_hits += batch.hits if cached else 0
    found.cache_lookups += len(chats) if cached else 0
    for j, (row, made, from_cache) in enumerate(zip(local, batch.generations, batch.cached)):
        found.cached[row] &= from_cache
        if made.tokens_in is None or made.tokens_out is None:
            found.unknown_token_counts += 1
        else:
            found.tokens[row] += (made.tokens_in, made.tokens_out)
        if not from_cache:
            found.engine_calls += 1
            found.generated_tokens_out += made.tokens_out or 0
        if step.output == "rationale":
            found.rationales[row] = made.text
        else:
            found.raw[row] = made.text
            found.prompt_ids[row] = chat_digest(chats[j])[:16]


def _generate_on_ray(builder: PromptBuilder, plan: Strategy, engine: Engine, found: Candidates, rows: np.ndarray,
                     chunks: list[np.ndarray], generation: GenerationConfig, cache: GenerationCache | None,
                     progress: LLMProgress | None, pool: RayPool) -> None:
    """Every chunk's uncached chats of a step as one task of ``pool``; each chunk's generations are cached as they
    come back. A chunk that fails after the pool's retries keeps what its engine finished; the sessions of every
    failed chunk are named once the others are stored."""
    samples = builder.samples
    for number, step in enumerate(plan.steps):
        params = generation.params(step.output)
        digest = builder.template_digest(step.template)
        after_rationale = number > 0 and plan.steps[number - 1].output == "rationale"
        lookups, tasks, owners = [], [], []
        for c, local in enumerate(chunks):
            chats = builder.step_chats(plan, step, rows[local], max_new_tokens=params.max_new_tokens,
                                       rationales=[found.rationales[row] for row in local] if after_rationale else None)
            looked = lookup(engine.fingerprint, chats, params, template_digest=digest, cache=cache)
            lookups.append(looked)
            if progress is not None and len(chats) > len(looked.first):
                progress.update(len(chats) - len(looked.first))
            if looked.first:
                tasks.append({"chats": looked.missing_chats, "params": params})
                owners.append(c)
            else:  # every chat of the chunk is cached
                _take_batch(found, step, local, chats, looked.complete(cache, []), cache is not None)
        labels = [describe_sessions(samples, rows[chunks[c]]) for c in owners]
        failed = []
        for done in pool.run(generate_task, tasks, labels=labels, fingerprint=engine.fingerprint):
            c = owners[done.index]
            looked = lookups[c]
            if done.ok:
                batch = looked.complete(cache, done.value, engine_seconds=done.seconds)
                _take_batch(found, step, chunks[c], looked.chats, batch, cache is not None)
                if progress is not None:
                    progress.update(len(done.value), tokens_out=sum(g.tokens_out or 0 for g in done.value))
            else:
                looked.keep(cache, done.partial or [])
                failed.append(f"{labels[done.index]}: {done.error}")
        if failed:
            raise ServiceError(f"{plan.name}, {step.output} step: {len(failed)} of {len(tasks)} chunks failed on the "
                               f"Ray actors after {pool.config.actor_retries + 1} attempts each: "
                               + "; ".join(failed[:8])
                               + (f"; ... and {len(failed) - 8} more" if len(failed) > 8 else "")
                               + ". The other chunks' generations are cached"
                               + (f" in {cache.path}; rerun the same command to generate the rest" if cache else ""))


def describe_sessions(samples, rows, shown: int = 6) -> str:
    """``sessions u7, u9 (samples 0, 2)``: the sessions of a chunk, for messages."""
    rows = [int(r) for r in rows]
    names = ", ".join(str(samples.session[r]) for r in rows[:shown])
    numbers = ", ".join(map(str, rows[:shown]))
    more = f", ... ({len(rows)} sessions)" if len(rows) > shown else ""
    return f"session{'s' if len(rows) > 1 else ''} {names}{more} (sample{'s' if len(rows) > 1 else ''} {numbers})"


# ================================================================================================ predict
def predict(dataset, strategy: str = "fs", engine: Engine | str | None = None, *, k: int = 20,
            limit: int | None = None, out: str | Path | None = None, split: str = "test",
            engine_config: EngineConfig | None = None, prompts: PromptConfig | None = None,
            generation: GenerationConfig | None = None, index=None, embedder: str = "minilm",
            store: str | Path = "vectorstore", chroma_host: str | None = None,
            cache: GenerationCache | str | Path | bool = True,
            ground_distance: float = DEFAULT_GROUND_DISTANCE, progress: bool | LLMProgress = False,
            shard: tuple[int, int] | str | None = None, ray: RayPool | None = None) -> PredictResult:
    """Recommend with an LLM for the sessions of ``split`` and measure it.

    Args:
        dataset: a :class:`~agentrec.data.dataset.PreparedDataset` or its folder.
        strategy: ``fs``, ``zcot`` or ``fscot`` (:data:`agentrec.llm.prompts.STRATEGIES`).
        engine: an :class:`~agentrec.llm.Engine`, or an engine name made with ``engine_config``
            (default ``hf`` with SmolLM2, offline).
        k: length of the grounded list (top-K nearest items); metrics at 10 (when K > 10) and K.
        limit: only the first ``limit`` sessions of the split, in split order.
        out: JSON-lines file to write, one line per session, a ``.summary.json`` file beside it and a
            histogram of the grounding distances (``.distances.png``); each is written aside and
            renamed into place. None: nothing is written (the grounded lists are in ``result.candidates``).
        split: ``test`` or ``valid``; few-shot examples always come from ``train``.
        engine_config: settings for an engine given by name.
        prompts: what goes into the prompts (examples, seed, item fields, your own templates).
        generation: sampling and chunking.
        index: a :class:`~agentrec.retrieval.index.CatalogueIndex`; default: built on first use (or reused)
            from ``embedder`` in ``store`` / ``chroma_host``.
        cache: True for the default cache file, a path for another, a GenerationCache, or False for none.
        ground_distance: cosine distance above which a parsed title counts as ungrounded.
        progress: True for one bar over the sessions (x steps: CoT strategies have two) with tokens/s and the ETA,
            and bars while building the index; or an :class:`~agentrec.core.progress.LLMProgress` of the caller's,
            grown by this run's sessions (and left open).
        shard: ``(I, N)`` or ``"I/N"``: only the selected sessions whose index ``i`` (in split order, among
            the first ``limit``) has ``i % N == I`` (:mod:`agentrec.core.shards`); records keep their
            split index in ``sample``, so shard files merge with :func:`merge_predictions`.
        ray: generate on this :class:`~agentrec.llm.raypool.RayPool`'s actors (started here when it is not); an
            engine given by name is then made for the driver by :func:`~agentrec.llm.raypool.driver_engine`.

    Returns:
        A :class:`PredictResult`; metrics follow :data:`PROTOCOL`; ``result.candidates`` holds the
        grounded top-K lists (:class:`Candidates`).
    """

    started = time.perf_counter()
    prompt_config = prompts or PromptConfig()
    # before any model loads (the engine's, the embedder's): a broken template fails now, naming its file
    plan = validate_strategy(strategy, prompt_config)
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    if not isinstance(dataset, PreparedDataset):
        dataset = PreparedDataset.load(dataset)
    if ray is not None and (engine is None or isinstance(engine, str)):
        engine = driver_engine(engine or "hf", engine_config)  # the actors make the engines that generate
    else:
        engine = resolve_engine(engine, engine_config)
    cache = open_cache(cache)
    bars = progress if isinstance(progress, bool) else progress.enabled
    if index is None:  # before any generation: a store that does not fit fails now, not after the LLM ran
        index = CatalogueIndex.build(dataset, embedder, store=store, chroma_host=chroma_host, progress=bars)
    builder = PromptBuilder(dataset, prompt_config, split=split, engine=engine)
    samples = builder.samples
    selected = len(samples) if limit is None else min(int(limit), len(samples))
    rows = shard_rows(selected, shard)  # (n,) split indices of the sessions predicted here
    n = len(rows)
    result = PredictResult(strategy=plan.name, engine=engine.fingerprint, dataset=dataset.name, split=split, n=n,
                           k=min(k, dataset.n_items), metrics={}, ranks=np.zeros(0), ground_distance=ground_distance,
                           shard=shard_text(shard), selected=selected, dataset_fingerprint=dataset.fingerprint,
                           prompts=prompt_settings(prompt_config),
                           generation=asdict(generation or GenerationConfig()))
    if n == 0:
        raise UsageError(f"{dataset.name}: the {split} split has no sessions to predict"
                         + (f" in shard {result.shard} of its {selected} selected sessions" if shard else ""))

    if ray is not None:
        ray.start()  # before the bar: starting a cluster takes seconds
        result.ray = ray.describe()
    steps = len(plan.steps)
    bar = progress if isinstance(progress, LLMProgress) else LLMProgress(
        None, desc=f"predict {plan.name}", unit="session" if steps == 1 else "session-step", enabled=bars)
    bar.add_total(n * steps)
    try:
        found = generate_candidates(builder, plan, engine, index, k=result.k, rows=rows, generation=generation,
                                    cache=cache, progress=bar, ray=ray)
    finally:
        if bar is not progress:
            bar.close()
    result.candidates = found
    for name in ("engine_seconds", "engine_calls", "generated_tokens_out", "cache_hits", "cache_lookups",
                 "unknown_token_counts"):
        setattr(result, name, getattr(found, name))
    result.tokens_in, result.tokens_out = (int(x) for x in found.tokens.sum(0))
    result.context_tokens = builder.context_tokens
    result.items_cut, result.prompts_cut = builder.cuts.items, builder.cuts.prompts
    result.examples_dropped, result.session_items_dropped = builder.cuts.examples_dropped, \
        builder.cuts.session_items_dropped
    if builder.cuts.items or builder.cuts.prompts:
        logger.warning("%s: %d item texts cut to %d characters / %d tokens, %d prompts cut to fit the %s-token "
                       "context", plan.name, builder.cuts.items, prompt_config.item_chars, prompt_config.item_tokens,
                       builder.cuts.prompts, builder.context_tokens)

    # measure: the target's position in each grounded list
    catalogue_titles = dataset.titles()
    targets = samples.target[rows].astype(np.int64)
    ranks = np.full(n, math.inf)
    top: list[list[dict]] = [[] for _ in range(n)]
    for row, title in enumerate(found.titles):
        if not title:
            continue
        ids, distances = found.item_ids[row], found.distances[row]
        hit = np.flatnonzero(ids == targets[row])
        ranks[row] = hit[0] + 1 if hit.size else math.inf
        top[row] = [{"item_id": int(i), "title": catalogue_titles[int(i) - 1], "distance": float(d)}
                    for i, d in zip(ids, distances) if i > 0]
        if not top[row] or top[row][0]["distance"] > ground_distance:
            result.ungrounded += 1
        elif normalise_title(top[row][0]["title"]) == normalise_title(title):
            result.exact_titles += 1
    result.unparseable = sum(1 for title in found.titles if not title)
    result.ranks = ranks
    ks = tuple(sorted({min(10, result.k), result.k}))
    result.metrics = metrics_from_ranks(ranks, ks)

    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for row in range(n):
            target = int(targets[row])
            record = {
                "session": str(samples.session[rows[row]]), "sample": int(rows[row]), "split": split,
                "strategy": plan.name,
                "prompt_id": found.prompt_ids[row], "rationale": found.rationales[row], "raw": found.raw[row],
                "title": found.titles[row], "target": target, "target_title": catalogue_titles[target - 1],
                "rank": None if math.isinf(ranks[row]) else int(ranks[row]), "top_k": top[row],
                "tokens_in": int(found.tokens[row, 0]), "tokens_out": int(found.tokens[row, 1]),
                "cached": bool(found.cached[row]),
            }
            lines.append(record)
        result.out = str(out)
    result.seconds = time.perf_counter() - started
    if out is not None:
        write_records(out, lines, result.summary())
        write_distances_plot(out, result, [row[0]["distance"] for row in top if row])
    return result


def prompt_settings(config: PromptConfig) -> dict:
    """The prompt settings as JSON values (tuples as lists), as a summary records them."""
    return json.loads(json.dumps(asdict(config)))


# ================================================================================================ merge shards
# summary keys that must agree between the shards of one run
MERGE_KEYS = ("strategy", "engine", "dataset", "dataset_fingerprint", "split", "k", "selected", "prompts",
              "generation", "ground_distance", "protocol")


def merge_predictions(out: str | Path, parts, *, allow_partial: bool = False) -> dict:
    """Merge the JSON lines of :func:`predict` shards (``--shard I/N``) into one file, as one unsharded run.

    Each part is a ``.jsonl`` file with its ``.summary.json`` beside it. The summaries must agree on
    :data:`MERGE_KEYS` (strategy, engine, dataset and its fingerprint, split, k, the sessions selected, prompt
    and sampling settings); no session (``sample``) may appear twice. Records are written in sample order;
    Recall/MRR/NDCG are recomputed from the merged ranks, the counts summed. ``out`` and its
    ``.summary.json`` are each written aside and renamed into place.

    Args:
        out: the merged ``.jsonl`` to write.
        parts: the shard files.
        allow_partial: merge although some selected sessions are in no part (they are listed in the
            summary's ``coverage``); by default that is an error.

    Returns:
        The merged summary (``coverage``: ``{"sessions": found, "selected": expected, "missing": [...]}``).

    Raises:
        UsageError: a missing file, mismatched settings, a session twice, or (unless ``allow_partial``)
            missing sessions; the message names the files and the key or sample.
    """
    parts = [Path(p) for p in parts]
    if not parts:
        raise UsageError("give at least one prediction file to merge")
    summaries, records, origin = [], {}, {}
    for part in parts:
        summary_path = part.with_suffix(".summary.json")
        for path in (part, summary_path):
            if not path.exists():
                raise NotFoundError(f"{path}: no such file (a predict output and its .summary.json are needed)")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if summaries:
            for key in MERGE_KEYS:
                if summary.get(key) != summaries[0].get(key):
                    raise MismatchError(f"{part} and {parts[0]} differ in {key}: {summary.get(key)!r} vs "
                                        f"{summaries[0].get(key)!r}; only shards of one run can be merged")
        summaries.append(summary)
        with open(part, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                sample = int(record["sample"])
                if sample in records:
                    raise UsageError(f"session {record['session']} (sample {sample}) is in both {origin[sample]} "
                                     f"and {part}:{number}; shards must be disjoint")
                records[sample], origin[sample] = record, part
    first = summaries[0]
    selected = first.get("selected") or len(records)
    missing = sorted(set(range(selected)) - set(records))
    if missing and not allow_partial:
        raise UsageError(f"{len(missing):,} of {selected:,} selected sessions are in no part (samples "
                         f"{_brief(missing)}); give every shard, or allow a partial merge")
    ordered = [records[s] for s in sorted(records)]
    k = int(first["k"])
    ranks = np.array([math.inf if r["rank"] is None else r["rank"] for r in ordered], dtype=float)
    summary = {key: first.get(key) for key in MERGE_KEYS}
    summary.update(n=len(ordered), shard=None, merged_from=[str(p) for p in parts],
                   metrics=metrics_from_ranks(ranks, tuple(sorted({min(10, k), k}))),
                   coverage={"sessions": len(ordered), "selected": selected, "missing": missing})
    for key in ("tokens_in", "tokens_out", "unknown_token_counts", "generated_tokens_out", "engine_calls",
                "engine_seconds", "cache_hits", "cache_lookups", "unparseable", "ungrounded", "exact_titles",
                "items_cut", "prompts_cut", "examples_dropped", "session_items_dropped", "seconds"):
        summary[key] = sum(s.get(key) or 0 for s in summaries)
    n = max(len(ordered), 1)
    summary.update(unparseable_rate=summary["unparseable"] / n, ungrounded_rate=summary["ungrounded"] / n,
                   out=str(out))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_records(out, ordered, summary)
    logger.info("merged %d sessions of %d parts into %s", len(ordered), len(parts), out)
    return summary


def _brief(values: list, m: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:m])
    return shown + (f", ... ({len(values) - m:,} more)" if len(values) > m else "")


def write_distances_plot(out: Path, result: PredictResult, distances: list[float]) -> Path | None:
    """``F.distances.png`` beside the lines ``F.jsonl``: the histogram of ``distances`` (each parsed title's
    top-1 grounded item), the ungrounded threshold marked, the unparseable outputs counted.

    Drawn after the lines and summary are written: a failure to draw is a logged warning. Returns the
    file, or None when drawing failed.
    """
    path = Path(out).with_suffix(".distances.png")
    title = f"{result.strategy} with {result.engine} on {result.dataset} ({result.split}): grounding distances"
    with plots.best_effort(path):
        plots.plot_distances(distances, path, threshold=result.ground_distance, unparseable=result.unparseable,
                             title=title)
        return path
    return None


def write_records(out: Path, records: list[dict], summary: dict) -> None:
    """One JSON line per session in ``out`` and the run's summary beside it (``.summary.json``), each
    written aside and renamed into place."""
    fsutil.atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False, default=_json_number) + "\n"
                                          for r in records))
    fsutil.atomic_write_text(out.with_suffix(".summary.json"),
                             json.dumps(summary, indent=2, default=_json_number) + "\n")


def resolve_engine(engine, engine_config: EngineConfig | None = None):
    """``engine`` itself when it is an engine object (anything with the Engine interface), else the engine
    of that name (default ``hf``) made from ``engine_config``."""
    if engine is None or isinstance(engine, str):
        return get_engine(engine or "hf", engine_config)
    return engine


def open_cache(cache) -> GenerationCache | None:
    """The generation cache: True for the default file, a path for another, a GenerationCache, False/None for none."""
    if cache is True:
        return GenerationCache()
    if cache is False or cache is None:
        return None
    if isinstance(cache, GenerationCache):
        return cache
    return GenerationCache(cache)


def _json_number(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
