"""Hybrid recommender: the LLM proposes candidates, a trained session model orders them.

The LLM writes the next item's title (any strategy, any engine: :func:`agentrec.pipelines.predict.predict`);
the title's ``M`` nearest catalogue items in the Chroma index are the session's **candidates**; a
trained session model (SemSR-F by default, but any run folder) scores every item of the catalogue,
and its scores re-order the candidates. Fusion rules (:class:`HybridConfig`):

* ``rerank`` -- candidates ordered by the model's score alone; equal scores keep the LLM's order
  (nearer title first).
* ``blend`` -- ``fused = (1 - w) * m + w * l``, where ``m`` is the model's score and ``l = 1 - d``
  the LLM's retrieval similarity (``d``: cosine distance to the generated title), each min-max
  normalised to [0, 1] over the session's own candidates (a column that is constant over the
  candidates becomes 0 and decides nothing). ``w = 0`` is ``rerank``; ``w = 1`` keeps the LLM's order.
  Min-max over the candidates, because the two scores live on unrelated scales (NISER: a scaled
  cosine in [-sigma, sigma]; Chroma: a distance in [0, 2]) and only their order within the candidate
  set matters.

**Fill** (on by default): after the candidates, the list continues with the rest of the catalogue in
the model's own order, so the LLM's misses (a target outside the candidates, an output with no
parseable title) can still be found further down. Off, the list is the candidates alone and a
target outside them is a miss. Without fill the hybrid can only re-order what the LLM retrieved, so
its Recall@M is the LLM's; with fill its Recall at large K approaches the model's.

Ranks follow :data:`PROTOCOL`. Example::

    from agentrec.pipelines.hybrid import HybridConfig, predict_hybrid
    result = predict_hybrid("data/ml-100k", "runs/semsr-f", "fscot", k=20, limit=50, out="runs/hybrid.jsonl",
                            config=HybridConfig(candidates=50, fusion="blend", weight=0.3))
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

from agentrec.core.errors import UsageError
from agentrec.core.metrics import chunk_rows, format_metrics, metrics_from_ranks
from agentrec.data.dataset import PreparedDataset
from agentrec.pipelines.predict import DEFAULT_GROUND_DISTANCE, predict, write_records
from agentrec.training.runs import load_model

logger = logging.getLogger(__name__)

FUSIONS = ("rerank", "blend")
PROTOCOL = ("hybrid: the generated title's M nearest catalogue items (Chroma, cosine) are the candidates; the "
            "session model's scores order them ({rule}); rank = the target's position in that list; {fill}; "
            "history items allowed")
_FILL_ON = ("after the candidates the rest of the catalogue follows in the model's order, ties counting against "
            "the model (a session with no parseable title gets the model's list alone)")
_FILL_OFF = "a target outside the candidates, or a session with no parseable title, is a miss"


@dataclass(frozen=True)
class HybridConfig:
    """How candidates are made and ordered."""

    candidates: int = 50  # M: the generated title's M nearest catalogue items are the candidate set
    fusion: str = "rerank"  # "rerank": the model's score alone; "blend": weighted with the LLM's similarity
    weight: float = 0.5  # blend: weight of the LLM's normalised similarity (1 - weight on the model's)
    fill: bool = True  # after the candidates, the rest of the catalogue in the model's order

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise UsageError(f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}")
        if not 0.0 <= self.weight <= 1.0:
            raise UsageError(f"blend weight must be in [0, 1], got {self.weight}")
        if self.candidates < 1:
            raise UsageError(f"candidates must be at least 1, got {self.candidates}")

    @property
    def protocol(self) -> str:
        rule = "model score alone, LLM order breaks ties" if self.fusion == "rerank" else \
            f"blend: {1 - self.weight:g} x model + {self.weight:g} x LLM similarity, both min-max normalised over the candidates"
        return PROTOCOL.format(rule=rule, fill=_FILL_ON if self.fill else _FILL_OFF)


# ================================================================================================ fusion
def _minmax(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row-wise min-max over the ``valid`` entries of ``(B, M)`` ``x``; a constant row becomes 0."""
    lo = np.where(valid, x, np.inf).min(1, keepdims=True)
    hi = np.where(valid, x, -np.inf).max(1, keepdims=True)
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(valid & (span > 0), (x - lo) / safe, 0.0)


def fuse(candidates: np.ndarray, distances: np.ndarray, model_scores: np.ndarray, config: HybridConfig
         ) -> tuple[np.ndarray, np.ndarray]:
    """Order each session's candidates by the fusion rule.

    Args:
        candidates: ``(B, M)`` item ids, nearest to the generated title first; 0 pads a row with
            fewer candidates (nothing parsed, or the search found fewer).
        distances: ``(B, M)`` cosine distances of the candidates to the title (ignored at padding).
        model_scores: ``(B, M)`` the session model's scores of the candidates (ignored at padding).
        config: the fusion rule.

    Returns:
        ``(ordered, fused)``: ``(B, M)`` candidate ids best first, padding last, and their fused
        scores (``-inf`` at padding). Ties keep the LLM's order (the sort is stable). A model score
        of NaN or ``+inf`` counts as the model's best (against the model, as ties do in
        :mod:`agentrec.core.metrics`), ``-inf`` as its worst.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    valid = candidates > 0
    model_scores = np.asarray(model_scores, dtype=np.float64)
    high = np.isnan(model_scores) | (model_scores == np.inf)  # (B, M) NaN never sorts below a real score
    if config.fusion == "rerank":
        fused = np.where(high, np.inf, model_scores)
    else:
        finite = valid & np.isfinite(model_scores)
        model_part = np.where(high, 1.0, _minmax(np.where(finite, model_scores, 0.0), finite))
        similarity = 1.0 - np.asarray(distances, dtype=np.float64)
        fused = (1.0 - config.weight) * model_part + config.weight * _minmax(similarity, valid)
    fused = np.where(valid, fused, -np.inf)
    order = np.argsort(-fused, axis=1, kind="stable")  # stable: equal scores keep the nearer title first
    return np.take_along_axis(candidates, order, 1), np.take_along_axis(fused, order, 1)


def hybrid_ranks(candidates: np.ndarray, distances: np.ndarray, scores: np.ndarray, targets: np.ndarray,
                 config: HybridConfig, *, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the targets in the hybrid lists, and the top-``k`` of each list.

    Args:
        candidates: ``(B, M)`` candidate ids, nearest first, 0 = padding (see :func:`fuse`).
        distances: ``(B, M)`` their cosine distances to the generated title.
        scores: ``(B, N + 1)`` the session model's scores of the whole catalogue (column 0 is padding).
        targets: ``(B,)`` target ids.
        config: fusion rule and fill.
        k: length of the returned lists.

    Returns:
        ``(ranks, top, from_llm)``: ``(B,)`` 1-based float ranks (``inf`` = miss); ``(B, k)`` item ids
        of each list (0 where a list is shorter, i.e. without fill); ``(B, k)`` bool, True where the
        item came from the candidates. A target among the candidates ranks at its position in the
        fused order; with fill, any other target ranks at ``c + 1 + #other items outside the
        candidates scoring >= it`` (``c``: the session's candidates; ties count against the model, as in
        :mod:`agentrec.core.metrics`). A target whose model score is not finite ranks last (``N``) wherever
        it is, and another item scored NaN counts as a tie. The listed fill order breaks exact ties
        by the smaller item id.
    """
    scores = np.array(scores, dtype=np.float64)  # a copy: candidates are masked below
    b, width = scores.shape
    candidates = np.asarray(candidates, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(b)
    broken = ~np.isfinite(scores[rows, targets])  # (B,) a diverged model's target never ranks well
    ordered, _ = fuse(candidates, distances, np.take_along_axis(scores, candidates, 1), config)
    counts = (ordered > 0).sum(1)  # (B,) candidates per session
    ranks = np.full(b, math.inf)
    position = ordered == targets[:, None]  # (B, M)
    inside = position.any(1)
    ranks[inside] = position[inside].argmax(1) + 1.0

    k = min(int(k), width - 1)
    top = np.zeros((b, k), dtype=np.int64)
    from_llm = np.zeros((b, k), dtype=bool)
    head = min(k, ordered.shape[1])
    top[:, :head] = ordered[:, :head]
    from_llm[:, :head] = ordered[:, :head] > 0
    if config.fill:
        scores[:, 0] = -np.inf
        scores[rows[:, None], candidates] = -np.inf  # candidates are already listed (padding id 0 is -inf anyway)
        outside = ~inside
        target_score = scores[rows, targets]  # (B,)
        # not below the target: higher, tied, NaN, and the target itself
        beaten = width - (scores < target_score[:, None]).sum(1)
        ranks[outside] = counts[outside] + beaten[outside]
        # the listed continuation: by score, then by smaller id (a stable sort of ids 0..N)
        rest = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        for row in range(b):
            free = k - min(int(counts[row]), k)
            if free:
                top[row, k - free :] = rest[row, :free]
    ranks[broken & (inside | config.fill)] = width - 1
    return ranks, top, from_llm


def model_scores(model, samples, rows: np.ndarray, *, memory_budget_mb: float = 256.0) -> np.ndarray:
    """``(len(rows), N + 1)`` float32 scores of the whole catalogue for ``samples[rows]``, column 0 ``-inf``."""
    import torch


    rows = np.asarray(rows, dtype=np.int64)
    out = None
    with torch.no_grad():
        step = chunk_rows(getattr(model, "n_items", 1), memory_budget_mb)
        for start in range(0, len(rows), step):
            chunk = model.score_chunk(samples, rows[start : start + step]).float().cpu().numpy()
            if out is None:
                out = np.empty((len(rows), chunk.shape[1]), dtype=np.float32)
            out[start : start + len(chunk)] = chunk
    out[:, 0] = -np.inf
    return out


def read_candidates(path: str | Path, m: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The grounded lists that :func:`agentrec.pipelines.predict.predict` wrote to ``path`` (a past run's).

    No pipeline reads its own candidates back: :func:`predict_hybrid` and ``compare`` take them from
    ``PredictResult.candidates`` in memory. This reads the same arrays from a file
    (``Candidates.head(m)`` equals it).

    Returns:
        ``(candidates, distances, records)``: ``(n, m)`` ids (0-padded), ``(n, m)`` distances
        (``inf`` at padding), and the records themselves, in file order.
    """
    records = [json.loads(line) for line in open(path, encoding="utf-8")]
    candidates = np.zeros((len(records), m), dtype=np.int64)
    distances = np.full((len(records), m), np.inf)
    for row, record in enumerate(records):
        top = record["top_k"][:m]
        candidates[row, : len(top)] = [entry["item_id"] for entry in top]
        distances[row, : len(top)] = [entry["distance"] for entry in top]
    return candidates, distances, records


# ================================================================================================ predict
@dataclass
class HybridResult:
    """What a hybrid run measured; ``llm`` is the LLM-only run it was built on (same sessions)."""

    strategy: str
    run: str
    model: str  # the re-ranking model, e.g. "niser + SemSR-F"
    dataset: str
    n: int
    k: int
    config: HybridConfig
    metrics: dict[str, float]
    ranks: np.ndarray = field(repr=False)
    llm: object = field(repr=False, default=None)  # PredictResult
    protocol: str = ""
    rerank_seconds: float = 0.0  # scoring the catalogue and fusing, after the LLM
    seconds: float = 0.0
    out: str | None = None

    def summary(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("ranks", "llm")}
        data["config"] = asdict(self.config)
        data["llm"] = self.llm.summary() if self.llm is not None else None
        return data

    def describe(self) -> str:
        ks = tuple(sorted({min(10, self.k), self.k}))
        llm_line = (f"LLM alone on the same sessions (top-{self.llm.k}): "
                    + ", ".join(f"{key} {100 * value:.2f}" for key, value in self.llm.metrics.items()))
        return "\n".join([
            f"hybrid {self.strategy} -> {self.model} ({self.run}) on {self.dataset} ({self.n:,} sessions, top-{self.k})",
            f"protocol: {self.protocol}",
            format_metrics(self.metrics, ks=ks),
            llm_line,
            f"time: {self.seconds:.1f} s in all, {self.rerank_seconds:.2f} s re-ranking",
        ])


def model_label(info) -> str:
    """``niser``, ``niser + SemSR-F`` ... from a run record."""
    mode = (info.semantic or {}).get("mode")
    return info.model + (f" + SemSR-{mode[0].upper()}" if mode else "")


def predict_hybrid(dataset, run: str | Path, strategy: str = "fscot", engine=None, *, k: int = 20,
                   limit: int | None = None, out: str | Path | None = None, config: HybridConfig | None = None,
                   split: str = "test", engine_config=None, prompts=None, generation=None, index=None,
                   embedder: str = "minilm", store: str | Path = "vectorstore", chroma_host: str | None = None,
                   cache=True, ground_distance: float | None = None, progress: bool = False) -> HybridResult:
    """LLM candidates re-ranked by the model of run folder ``run``; measured on ``split``.

    Args:
        dataset: a PreparedDataset or its folder; it must be the one ``run`` was trained on
            (:class:`~agentrec.training.runs.DatasetMismatchError` otherwise, raised before anything is generated).
        run: a run folder written by ``agentrec train`` (any model; SemSR-F is the intended one).
        strategy, engine, limit, split, engine_config, prompts, generation, index, embedder, store,
            chroma_host, cache, ground_distance, progress: as in :func:`agentrec.pipelines.predict.predict`.
        k: length of the listed top-K; metrics at 10 (when K > 10) and K.
        out: JSON-lines file, one line per session (the fused top-K with each item's source, model
            score and, for candidates, distance); the LLM-only lines go beside it as ``*.llm.jsonl``.
        config: candidates (M), fusion rule, weight, fill.

    Returns:
        A :class:`HybridResult`; ``result.llm`` holds the LLM-only result, its top-M lists in
        ``result.llm.candidates`` (in memory; the LLM-only lines are written only beside ``out``).
    """

    started = time.perf_counter()
    config = config or HybridConfig()
    if not isinstance(dataset, PreparedDataset):
        dataset = PreparedDataset.load(dataset)
    info, model = load_model(run, dataset)  # checks the fingerprint before the LLM runs
    llm_out = Path(out).with_suffix(".llm.jsonl") if out is not None else None
    llm = predict(dataset, strategy, engine, k=config.candidates, limit=limit, out=llm_out, split=split,
                  engine_config=engine_config, prompts=prompts, generation=generation, index=index,
                  embedder=embedder, store=store, chroma_host=chroma_host, cache=cache,
                  ground_distance=DEFAULT_GROUND_DISTANCE if ground_distance is None else ground_distance,
                  progress=progress)
    candidates, distances = llm.candidates.head(config.candidates)  # in memory: no file is read back
    reranking = time.perf_counter()
    samples = dataset.split(split)
    targets = samples.target[: llm.n].astype(np.int64)
    k = min(int(k), dataset.n_items)
    ranks, top, from_llm = np.empty(llm.n), np.zeros((llm.n, k), dtype=np.int64), np.zeros((llm.n, k), dtype=bool)
    picked = np.zeros((llm.n, k), dtype=np.float32)  # the model's scores of the listed items, for the records
    step = chunk_rows(dataset.n_items)  # a (step, N + 1) score block at a time
    for start in range(0, llm.n, step):
        rows = np.arange(start, min(llm.n, start + step))
        scores = model_scores(model, samples, rows)
        ranks[rows], top[rows], from_llm[rows] = hybrid_ranks(candidates[rows], distances[rows], scores,
                                                              targets[rows], config, k=k)
        picked[rows] = np.take_along_axis(scores, top[rows], 1)
    rerank_seconds = time.perf_counter() - reranking
    result = HybridResult(strategy=llm.strategy, run=str(run), model=model_label(info), dataset=dataset.name,
                          n=llm.n, k=k, config=config, metrics=metrics_from_ranks(ranks, sorted({min(10, k), k})),
                          ranks=ranks, llm=llm, protocol=config.protocol, rerank_seconds=rerank_seconds)
    if out is not None:
        out = Path(out)
        titles = dataset.titles()
        lines = []
        for row in range(llm.n):
            distance_of = dict(zip(candidates[row].tolist(), distances[row].tolist()))
            listed = [{"item_id": int(item), "title": titles[int(item) - 1],
                       "source": "llm" if llm_flag else "model",
                       "model_score": round(float(score), 6),
                       **({"distance": distance_of[int(item)]} if llm_flag else {})}
                      for item, llm_flag, score in zip(top[row], from_llm[row], picked[row]) if item > 0]
            target = int(targets[row])
            lines.append({
                "session": str(samples.session[row]), "sample": row, "split": split, "strategy": llm.strategy,
                "title": llm.candidates.titles[row], "target": target, "target_title": titles[target - 1],
                "rank": None if math.isinf(ranks[row]) else int(ranks[row]),
                "llm_rank": None if math.isinf(llm.ranks[row]) else int(llm.ranks[row]), "top_k": listed,
            })
        result.out = str(out)
    result.seconds = time.perf_counter() - started
    if out is not None:
        write_records(out, lines, result.summary())
    return result
