"""Hybrid recommender: the LLM's grounded list and a trained session model, fused so that it cannot lose.

The LLM writes the next item's title (any strategy, any engine: :func:`agentrec.pipelines.predict.predict`);
the title's ``M`` nearest catalogue items in the Chroma index are its **grounded list**; a trained session
model (SemSR-F by default, but any run folder) scores every item of the catalogue. The hybrid's list is
the whole catalogue ordered by **weighted reciprocal-rank fusion** (Cormack, Clarke and Buettcher, SIGIR
2009, with a weight)::

    fused(i) = (1 - w) / (c + rank_model(i)) + w / (c + rank_llm(i))

``rank_model(i)``: the item's rank under the model, ties counting against the model (a tie group takes its
worst rank, as :mod:`agentrec.core.metrics` ranks a target); ``rank_llm(i)``: its position in the LLM's
grounded top-``M`` (infinite outside it, so that term is 0); ``c`` = 60 by default. Equal fused scores are
ordered by the model's rank; items the model ties stay tied and count against the hybrid.

Why this rule (the rules it replaces ordered the LLM's ``M`` candidates first and filled the rest in the
model's order; measured on 300 MovieLens-100K sessions, an LLM that is never right cut NISER's Recall@20
from 21.0 to about 3): only the two top-``M`` lists can move, and together they are the **candidates** (the
LLM's grounded top-``M`` and the model's own top-``M``); every other item keeps the model's order and is the
**fill**, merged into the list by the same score. Then

* ``w = 0`` is **exactly** the model's ranking (the same ranks, ties included), whatever the LLM wrote, and
  a session whose title did not parse gets the model's list at any ``w``;
* ``w = 1`` lists the LLM's grounded top-``M`` first, in its order, then the rest in the model's order;
* in between, an item both lists like rises above items only one of them likes: once ``w >= 0.5`` (at
  ``c = 60``) the LLM's first item rises above every item the LLM did not list, wherever the model put it,
  and for small ``w`` an LLM miss costs the model's own top items only a few places.

Measured with scripted LLMs on 300 MovieLens-100K validation and 300 test sessions
(``benchmarks/hybrid_known_skill.py``): one that names the true next item for half of the sessions lifts
SemNISER-F from 14.3 / 2.8 Recall@20 / MRR@20 to 54.3 / 49.6 (the LLM alone: 50.0 / 49.2); one that is never
right leaves it at 14.3 / 2.8, rank for rank.

``w`` and ``M`` (:class:`FusionGrid`) are **chosen on validation sessions** (:func:`select_fusion`), never on
test: among the fusions that beat the model alone on validation beyond noise (a paired bootstrap), the best
validation Recall@20, ties broken by MRR@20, then by the smaller ``w`` and ``M``; when none does, ``w = 0``.
An LLM that does not clearly help the model on validation therefore leaves the model's ranking as it is.

With **fill** on (the default) every item is listed; off, the list is the candidates alone and a target
outside them is a miss. Ranks follow :data:`PROTOCOL`. Example::

    from agentrec.pipelines.hybrid import predict_hybrid
    result = predict_hybrid("data/ml-100k", "runs/semsr-f", "fs", k=20, limit=100, valid_sessions=100,
                            out="runs/hybrid.jsonl")   # w and M chosen on 100 validation sessions
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
from agentrec.core.metrics import bootstrap_interval, chunk_rows, format_metrics, metrics_from_ranks
from agentrec.core.progress import LLMProgress
from agentrec.data.dataset import PreparedDataset
from agentrec.llm.prompts import PromptConfig, validate_strategy
from agentrec.pipelines.predict import DEFAULT_GROUND_DISTANCE, open_cache, predict, resolve_engine, write_records
from agentrec.retrieval.embedders import get_embedder
from agentrec.retrieval.index import CatalogueIndex
from agentrec.training.runs import load_model

logger = logging.getLogger(__name__)

FUSIONS = ("rrf",)  # weighted reciprocal-rank fusion; the registry the CLI's --fusion choices follow
DEFAULT_C = 60.0  # RRF's constant (Cormack et al. 2009)
SELECT_K = 20  # the fusion is chosen by validation Recall@SELECT_K, ties by MRR@SELECT_K
PROTOCOL = ("hybrid: the whole catalogue ordered by weighted reciprocal-rank fusion, (1 - w) / (c + model rank) + "
            "w / (c + position in the LLM's grounded top-M) (0 outside it), {rule}; ties of the fused score go to "
            "the model's order, the model's own ties count against it; rank = the target's position; {fill}; "
            "history items allowed")
_FILL_ON = ("every item is listed (items in neither top-M list keep the model's order), so a session with no "
            "parseable title gets the model's list")
_FILL_OFF = ("only the candidates (the LLM's grounded top-M and the model's top-M) are listed: a target outside "
             "them is a miss")


def hybrid_protocol(rule: str, *, fill: bool = True) -> str:
    """:data:`PROTOCOL` with the fusion's settings (``rule``) and the fill spelled out."""
    return PROTOCOL.format(rule=rule, fill=_FILL_ON if fill else _FILL_OFF)


@dataclass(frozen=True)
class HybridConfig:
    """One fusion: how many LLM candidates count, and how much."""

    candidates: int = 50  # M: the LLM's grounded top-M (and the model's own top-M) are the candidates
    fusion: str = "rrf"  # weighted reciprocal-rank fusion (FUSIONS)
    weight: float = 0.5  # w: the LLM's share; 0 = the model's ranking exactly, 1 = the LLM's list first
    c: float = DEFAULT_C  # RRF's constant: larger flattens both rank curves
    fill: bool = True  # list every item (True), or the candidates alone

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise UsageError(f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}")
        if not 0.0 <= self.weight <= 1.0:
            raise UsageError(f"fusion weight must be in [0, 1], got {self.weight}")
        if self.candidates < 1:
            raise UsageError(f"candidates must be at least 1, got {self.candidates}")
        if not (math.isfinite(self.c) and self.c >= 0):
            raise UsageError(f"the RRF constant c must be a finite number >= 0, got {self.c}")

    @property
    def label(self) -> str:
        """``w = 0.3, M = 20`` (with ``c`` when it is not the default)."""
        return f"w = {self.weight:g}, M = {self.candidates}" + ("" if self.c == DEFAULT_C else f", c = {self.c:g}")

    @property
    def protocol(self) -> str:
        return hybrid_protocol(f"{self.label}, c = {self.c:g}" if self.c == DEFAULT_C else self.label, fill=self.fill)


@dataclass(frozen=True)
class FusionGrid:
    """The fusions :func:`select_fusion` tries on validation; a single point is a fusion fixed by hand."""

    weights: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))  # w: 0, 0.1, ..., 1
    candidates: tuple[int, ...] = (5, 20, 50, 100)  # M
    c: tuple[float, ...] = (DEFAULT_C,)
    fusions: tuple[str, ...] = FUSIONS
    fill: bool = True  # every point lists every item (True), or the candidates alone

    def __post_init__(self):
        for name in ("weights", "candidates", "c", "fusions"):
            if not getattr(self, name):
                raise UsageError(f"the fusion grid needs at least one value of {name}")
        object.__setattr__(self, "weights", tuple(sorted({float(w) for w in self.weights})))
        object.__setattr__(self, "candidates", tuple(sorted({int(m) for m in self.candidates})))
        object.__setattr__(self, "c", tuple(sorted({float(c) for c in self.c})))
        self.points()  # every combination is a valid HybridConfig

    @classmethod
    def fixed(cls, config: HybridConfig) -> FusionGrid:
        return cls(weights=(config.weight,), candidates=(config.candidates,), c=(config.c,), fusions=(config.fusion,),
                   fill=config.fill)

    def points(self) -> list[HybridConfig]:
        """Every fusion of the grid, in the order that breaks ties: smaller ``w``, then smaller ``M``, ``c``."""
        return [HybridConfig(candidates=m, fusion=f, weight=w, c=c, fill=self.fill)
                for f in self.fusions for w in self.weights for m in self.candidates for c in self.c]

    @property
    def size(self) -> int:
        return len(self.fusions) * len(self.weights) * len(self.candidates) * len(self.c)


# ================================================================================================ fusion
def model_rank_matrix(scores: np.ndarray) -> np.ndarray:
    """``(B, N + 1)`` each item's rank under the model, ties against the model; column 0 (padding) ``inf``.

    ``rank(i) = #items j with score(j) >= score(i)``: a group of tied items all take the group's worst
    rank, as :func:`agentrec.core.metrics.target_ranks` ranks a target. A NaN score counts as the model's
    best (against the model, as NaN counts against a target there), ``-inf`` as its worst.
    """
    s = np.asarray(scores, dtype=np.float64)[:, 1:]
    s = np.where(np.isnan(s), np.inf, s)
    b, n = s.shape
    order = np.argsort(-s, axis=1, kind="stable")  # (B, N) best first
    ordered = np.take_along_axis(s, order, 1)
    last = np.ones((b, n), dtype=bool)  # the last position of each run of equal scores
    last[:, :-1] = ordered[:, :-1] != ordered[:, 1:]
    end = np.where(last, np.arange(n), n)
    end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]  # (B, N) the run's last position
    ranks = np.full((b, n + 1), np.inf)
    body = np.empty((b, n))
    np.put_along_axis(body, order, end + 1.0, 1)
    ranks[:, 1:] = body
    return ranks


def llm_rank_matrix(candidates: np.ndarray, width: int) -> np.ndarray:
    """``(B, width)`` each item's 1-based position in its session's grounded list; ``inf`` outside it.

    ``candidates``: ``(B, M)`` item ids, nearest to the generated title first, 0 = padding. An item
    listed twice keeps its first position.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    b, m = candidates.shape
    ranks = np.full((b, width), np.inf)
    rows = np.repeat(np.arange(b), m)
    positions = np.tile(np.arange(1.0, m + 1.0), b)
    items = candidates.ravel()
    keep = items > 0
    np.minimum.at(ranks, (rows[keep], items[keep]), positions[keep])
    return ranks


def fused_scores(model_rank: np.ndarray, llm_rank: np.ndarray, config: HybridConfig) -> np.ndarray:
    """``(B, N + 1)`` the fused score of every item (higher first; column 0 ``-inf``); see the module docstring."""
    llm_part = np.where(llm_rank <= config.candidates, 1.0 / (config.c + llm_rank), 0.0)
    fused = (1.0 - config.weight) / (config.c + model_rank) + config.weight * llm_part
    fused[:, 0] = -np.inf
    return fused


def _candidates(model_rank: np.ndarray, llm_rank: np.ndarray, m: int) -> np.ndarray:
    """``(B, N + 1)`` bool: in the model's top-``m`` (ties against it) or the LLM's grounded top-``m``."""
    inside = (model_rank <= m) | (llm_rank <= m)
    inside[:, 0] = False
    return inside


def _target_ranks(model_rank, llm_rank, targets, broken, config: HybridConfig) -> np.ndarray:
    """``(B,)`` the targets' ranks in the fused lists (see :func:`hybrid_ranks`)."""
    rows = np.arange(len(targets))
    fused = fused_scores(model_rank, llm_rank, config)
    f_t = fused[rows, targets][:, None]
    r_t = model_rank[rows, targets][:, None]
    # not after the target: a higher fused score, or the same one and a model rank not worse (the target itself)
    ahead = (fused > f_t) | ((fused == f_t) & (model_rank <= r_t))
    if config.fill:
        ranks = ahead.sum(1).astype(np.float64)
    else:
        inside = _candidates(model_rank, llm_rank, config.candidates)
        ranks = np.where(inside[rows, targets], (ahead & inside).sum(1), np.inf).astype(np.float64)
    # a target the model scored NaN or +-inf ranks last wherever it is listed (a diverged model is never a hit)
    ranks[broken & np.isfinite(ranks)] = model_rank.shape[1] - 1
    return ranks


def hybrid_ranks(candidates: np.ndarray, scores: np.ndarray, targets: np.ndarray, config: HybridConfig, *,
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the targets in the hybrid lists, and the top-``k`` of each list.

    Args:
        candidates: ``(B, M')`` the LLM's grounded list per session, nearest first, 0 = padding; only the
            first ``config.candidates`` positions count.
        scores: ``(B, N + 1)`` the session model's scores of the whole catalogue (column 0 is padding).
        targets: ``(B,)`` target ids.
        config: the fusion (``w``, ``M``, ``c``) and fill.
        k: length of the returned lists.

    Returns:
        ``(ranks, top, from_llm)``: ``(B,)`` 1-based float ranks (``inf`` = miss); ``(B, k)`` item ids of
        each list (0 where a list is shorter, i.e. without fill); ``(B, k)`` bool, True where the item is
        one of the LLM's grounded top-``M``. The rank is ``#items fused higher + #items fused the same
        and not below the target in the model's ranking`` (ties count against the hybrid); at ``w = 0``
        it equals the model's own rank under :mod:`agentrec.core.metrics`. A target whose model score
        is not finite ranks last (``N``) wherever it is; another item scored NaN counts as the model's
        best. The listed order breaks exact ties by the smaller item id.
    """
    scores = np.asarray(scores, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    b, width = scores.shape
    rows = np.arange(b)
    model_rank = model_rank_matrix(scores)
    llm_rank = llm_rank_matrix(candidates, width)
    broken = ~np.isfinite(scores[rows, targets])
    ranks = _target_ranks(model_rank, llm_rank, targets, broken, config)

    fused = fused_scores(model_rank, llm_rank, config)
    k = min(int(k), width - 1)
    keys = [model_rank, -fused]  # np.lexsort: the last key is the primary one
    if not config.fill:
        outside = ~_candidates(model_rank, llm_rank, config.candidates)
        keys.append(outside)
    order = np.lexsort(keys, axis=-1)[:, :k]  # stable: exact ties by the smaller id
    top = order.astype(np.int64)
    if not config.fill:
        top[np.take_along_axis(outside, order, 1)] = 0
    from_llm = (np.take_along_axis(llm_rank, order, 1) <= config.candidates) & (top > 0)
    return ranks, top, from_llm


# ================================================================================================ selection
MODEL_ALONE = HybridConfig(weight=0.0, fill=True)  # the model's own ranking, whatever M and c


@dataclass
class FusionSelection:
    """The fusion chosen on validation, and what every fusion of the grid scored there.

    ``grid`` has one entry per fusion: ``fusion``, ``weight``, ``candidates``, ``c``, validation ``recall@K`` and
    ``mrr@K`` (fractions), ``recall@K_vs_model`` and ``mrr@K_vs_model`` (the paired bootstrap interval
    ``[lo, hi]`` of fusion - model), ``beats_model`` (beyond noise, see :func:`choose_fusion`) and ``chosen``.
    """

    config: HybridConfig  # the chosen one
    n: int  # validation sessions it was chosen on
    grid: list[dict]
    model: dict = field(default_factory=dict)  # the model alone on the same sessions: recall@K, mrr@K
    k: int = SELECT_K
    split: str = "valid"
    level: float = 0.95
    resamples: int = 1000

    @property
    def chosen(self) -> dict:
        return next(p for p in self.grid if p["chosen"])

    @property
    def fell_back(self) -> bool:
        """True when no fusion beat the model beyond noise, so the model's ranking (``w = 0``) was kept."""
        return not self.chosen["beats_model"]

    @property
    def rule(self) -> str:
        return (f"among the fusions that beat the model alone on validation beyond noise (the {self.level:.0%} "
                f"paired bootstrap interval of fusion - model above 0 for Recall@{self.k} or MRR@{self.k}, and not "
                f"below 0 for the other), the best validation Recall@{self.k}, ties by MRR@{self.k}, then the "
                f"smaller w, M and c; none: w = 0, the model's own ranking")

    @classmethod
    def from_summary(cls, summary: dict) -> FusionSelection:
        """The selection a :meth:`summary` describes (as compare.json and the manifest hold it)."""
        return cls(config=HybridConfig(**summary["config"]), n=summary["n"], grid=summary["grid"],
                   model=summary["model"], k=summary["k"], split=summary["split"], level=summary["level"],
                   resamples=summary["resamples"])

    def summary(self) -> dict:
        return {"config": asdict(self.config), "n": self.n, "split": self.split, "k": self.k, "level": self.level,
                "resamples": self.resamples, "rule": self.rule, "model": self.model, "fell_back": self.fell_back,
                "grid": self.grid}

    def describe(self) -> str:
        """One line: the choice, its validation metrics and the model's."""
        chosen, k = self.chosen, self.k
        how = ("no fusion beat the model beyond noise there, so w = 0 (the model's ranking)" if self.fell_back else
               "the best of those that beat the model beyond noise there")
        return (f"fusion chosen on {self.n} {self.split} sessions ({len(self.grid)} fusions; {how}): "
                f"{self.config.fusion} {self.config.label}: validation R@{k} {100 * chosen[f'recall@{k}']:.2f}, "
                f"MRR@{k} {100 * chosen[f'mrr@{k}']:.2f} (the model alone: {100 * self.model[f'recall@{k}']:.2f}, "
                f"{100 * self.model[f'mrr@{k}']:.2f})")

    def grid_table(self) -> str:
        """Validation Recall@K (MRR@K) in %, a row per ``w`` and a column per ``M`` (the first ``c`` and fusion);
        ``+`` beats the model beyond noise, ``*`` chosen."""
        first = self.grid[0]
        points = [p for p in self.grid if p["c"] == first["c"] and p["fusion"] == first["fusion"]]
        ms = sorted({p["candidates"] for p in points})
        ws = sorted({p["weight"] for p in points})
        cell = {(p["weight"], p["candidates"]): p for p in points}
        head = "w \\ M " + "".join(f"{m:>16}" for m in ms)
        lines = [f"validation R@{self.k} (MRR@{self.k}) in %, {self.n} sessions; + beats the model beyond noise, "
                 "* chosen", head]
        for w in ws:
            cells = []
            for m in ms:
                p = cell.get((w, m))
                text = "" if p is None else (f"{100 * p[f'recall@{self.k}']:.1f} ({100 * p[f'mrr@{self.k}']:.1f})"
                                            + ("+" if p["beats_model"] else " ") + ("*" if p["chosen"] else " "))
                cells.append(f"{text:>16}")
            lines.append(f"{w:<6g}" + "".join(cells))
        return "\n".join(lines)


def grid_ranks(candidates: np.ndarray, scores: np.ndarray, targets: np.ndarray, points: list[HybridConfig]
               ) -> np.ndarray:
    """``(B, P)`` the targets' hybrid ranks under each of ``points`` (as :func:`hybrid_ranks` gives them)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    model_rank = model_rank_matrix(scores)
    llm_rank = llm_rank_matrix(candidates, scores.shape[1])
    broken = ~np.isfinite(scores[np.arange(len(targets)), targets])
    return np.stack([_target_ranks(model_rank, llm_rank, targets, broken, p) for p in points], axis=1)


def choose_fusion(ranks: np.ndarray, points: list[HybridConfig], model_ranks: np.ndarray, *, k: int = SELECT_K,
                  split: str = "valid", resamples: int = 1000, seed: int = 0, level: float = 0.95
                  ) -> FusionSelection:
    """Choose among ``points`` on validation, never leaving the model for noise.

    A fusion **beats the model** when, over the ``n`` validation sessions, the ``level`` paired bootstrap
    interval (``resamples`` resamples, ``seed``) of fusion - model lies above 0 for Recall@``k`` or for
    MRR@``k``, and its interval for the other metric reaches 0 or above. Among those, the best Recall@``k``
    wins, ties by MRR@``k``, then the earliest point (:meth:`FusionGrid.points` lists smaller ``w`` first,
    then smaller ``M``). When none does, the first point with ``w = 0`` is chosen (with fill, the model's own
    ranking); a grid without ``w = 0`` then gets its best point.

    Why the guard: the best of 44 fusions on 100 sessions is partly the best luck. On MovieLens-100K with
    SmolLM2, the plain maximum picked ``w = 0.3, M = 50`` on validation and then lost 1.0 Recall@20 and 0.2
    MRR@20 to its model on the test sessions, the MRR beyond noise.

    Args:
        ranks: ``(n, P)`` the validation targets' ranks under each point (:func:`grid_ranks`).
        points: the ``P`` fusions, in tie-breaking order.
        model_ranks: ``(n,)`` the same targets' ranks under the model alone.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    model_ranks = np.asarray(model_ranks, dtype=np.float64)
    if ranks.ndim != 2 or ranks.shape[1] != len(points) or ranks.shape[0] == 0 or len(model_ranks) != len(ranks):
        raise ValueError(f"need (sessions, {len(points)}) ranks with at least one session and the model's ranks of "
                         f"the same sessions, got {ranks.shape} and {model_ranks.shape}")
    n = ranks.shape[0]

    def per_session(r):  # hits and reciprocal ranks within k
        hit = r <= k
        return hit.astype(np.float64), np.where(hit, 1.0 / np.where(hit, r, 1.0), 0.0)

    hit, reciprocal = per_session(ranks.T)  # (P, n)
    model_hit, model_reciprocal = per_session(model_ranks)
    recall_lo, recall_hi = bootstrap_interval(hit - model_hit, resamples=resamples, seed=seed, level=level)
    mrr_lo, mrr_hi = bootstrap_interval(reciprocal - model_reciprocal, resamples=resamples, seed=seed, level=level)
    beats = ((recall_lo > 0) & (mrr_hi >= 0)) | ((mrr_lo > 0) & (recall_hi >= 0))
    hits = hit.sum(1).astype(int)  # (P,) integers: exact comparison
    # rounded so that equal MRRs summed in another order still tie (and the smaller w wins)
    order = sorted(range(len(points)), key=lambda p: (-hits[p], -round(float(reciprocal[p].sum()), 9), p))
    best = next((p for p in order if beats[p]), None)
    if best is None:
        best = next((p for p, point in enumerate(points) if point.weight == 0.0), order[0])
    grid = [{"fusion": p.fusion, "weight": p.weight, "candidates": p.candidates, "c": p.c,
             f"recall@{k}": float(hit[i].mean()), f"mrr@{k}": float(reciprocal[i].mean()),
             f"recall@{k}_vs_model": [float(recall_lo[i]), float(recall_hi[i])],
             f"mrr@{k}_vs_model": [float(mrr_lo[i]), float(mrr_hi[i])],
             "beats_model": bool(beats[i]), "chosen": i == best}
            for i, p in enumerate(points)]
    model = {f"recall@{k}": float(model_hit.mean()), f"mrr@{k}": float(model_reciprocal.mean())}
    return FusionSelection(config=points[best], n=n, grid=grid, model=model, k=k, split=split, level=level,
                           resamples=resamples)


def select_fusion(candidates: np.ndarray, scores: np.ndarray, targets: np.ndarray, grid: FusionGrid | None = None,
                  *, k: int = SELECT_K, resamples: int = 1000, seed: int = 0, level: float = 0.95
                  ) -> FusionSelection:
    """Choose the fusion on validation sessions (:func:`choose_fusion`): the best Recall@``k`` (ties by MRR@``k``,
    then the smaller ``w`` and ``M``) among the fusions that beat the model beyond noise there, else ``w = 0``.

    Args:
        candidates: ``(n, M')`` the LLM's grounded lists of ``n`` validation sessions, nearest first, 0 =
            padding, ``M'`` at least the grid's largest ``M`` (shorter lists are fine: they hold fewer items).
        scores: ``(n, N + 1)`` the session model's scores of the catalogue for the same sessions.
        targets: ``(n,)`` their target ids.
        grid: the fusions to try (default :class:`FusionGrid`: ``w`` in 0, 0.1, ..., 1 and ``M`` in 5, 20,
            50, 100, with fill).
        k, resamples, seed, level: the selection metrics' cut-off and the noise guard's bootstrap.

    Returns:
        A :class:`FusionSelection`. The default grid holds ``w = 0``, which is the model's ranking exactly, so
        an LLM that does not beat the model on validation beyond noise gets ``w = 0``.
    """
    points = (grid or FusionGrid()).points()
    ranks = grid_ranks(candidates, scores, targets, [*points, MODEL_ALONE])
    return choose_fusion(ranks[:, :-1], points, ranks[:, -1], k=k, resamples=resamples, seed=seed, level=level)


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


def first_scores(model, samples, n: int, *, memory_budget_mb: float = 256.0) -> np.ndarray:
    """``(n, N + 1)`` scores of the first ``n`` samples, computed in the chunks the evaluator uses.

    :func:`agentrec.core.metrics.rank_samples` scores a split in chunks of ``chunk_rows(N)`` samples from
    the first; a batch of another size may round a score differently in its last bit, and a tie may then
    fall the other way. Scoring whole chunks and keeping the first ``n`` rows gives the evaluator's scores
    bit for bit, so a hybrid at ``w = 0`` equals the model's row exactly.
    """
    step = chunk_rows(getattr(model, "n_items", 1), memory_budget_mb)
    end = min(len(samples), -(-int(n) // step) * step)
    return model_scores(model, samples, np.arange(end), memory_budget_mb=memory_budget_mb)[:n]


def read_candidates(path: str | Path, m: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The grounded lists that :func:`agentrec.pipelines.predict.predict` wrote to ``path`` (a past run's).

    :func:`predict_hybrid` takes its candidates from ``PredictResult.candidates`` in memory; ``compare``
    reads a reused LLM row's from its lines with this (``Candidates.head(m)`` equals it).

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
    """What a hybrid run measured; ``llm`` is the LLM-only run it was built on and ``model_metrics`` the
    model alone, both on the same sessions."""

    strategy: str
    run: str
    model: str  # the fused model, e.g. "niser + SemSR-F"
    dataset: str
    n: int
    k: int
    config: HybridConfig  # the fusion used: chosen on validation (selection) or given
    metrics: dict[str, float]
    ranks: np.ndarray = field(repr=False)
    model_metrics: dict[str, float] = field(default_factory=dict)  # the model alone on the same sessions
    model_ranks: np.ndarray = field(repr=False, default=None)
    selection: FusionSelection | None = None  # None: the fusion was given, not chosen
    llm: object = field(repr=False, default=None)  # PredictResult on the measured split
    valid_llm: object = field(repr=False, default=None)  # PredictResult on the validation sessions
    protocol: str = ""
    rerank_seconds: float = 0.0  # scoring the catalogue and fusing, after the LLM (selection included)
    seconds: float = 0.0
    out: str | None = None

    def summary(self) -> dict:
        skip = ("ranks", "model_ranks", "llm", "valid_llm", "selection")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        data["config"] = asdict(self.config)
        data["selection"] = self.selection.summary() if self.selection is not None else None
        data["llm"] = self.llm.summary() if self.llm is not None else None
        data["valid_llm"] = self.valid_llm.summary() if self.valid_llm is not None else None
        return data

    def describe(self) -> str:
        ks = tuple(sorted({min(10, self.k), self.k}))
        alone = lambda metrics: ", ".join(f"{key} {100 * value:.2f}" for key, value in metrics.items())
        chosen = (self.selection.describe() if self.selection is not None else
                  f"fusion given (no selection): {self.config.fusion} {self.config.label}")
        lines = [
            f"hybrid {self.strategy} -> {self.model} ({self.run}) on {self.dataset} ({self.n:,} sessions, top-{self.k})",
            f"protocol: {self.protocol}",
            chosen,
        ]
        if self.selection is not None:
            lines.append(self.selection.grid_table())
        lines += [
            format_metrics(self.metrics, ks=ks),
            f"model alone on the same sessions: {alone(self.model_metrics)}",
            f"LLM alone on the same sessions (top-{self.llm.k}): {alone(self.llm.metrics)}",
            f"time: {self.seconds:.1f} s in all, {self.rerank_seconds:.2f} s scoring, selecting and fusing",
        ]
        return "\n".join(lines)


def model_label(info) -> str:
    """``niser``, ``niser + SemSR-F`` ... from a run record."""
    mode = (info.semantic or {}).get("mode")
    return info.model + (f" + SemSR-{mode[0].upper()}" if mode else "")


DEFAULT_VALID_SESSIONS = 100  # validation sessions the fusion is chosen on (the LLM writes a title for each)


def predict_hybrid(dataset, run: str | Path, strategy: str = "fscot", engine=None, *, k: int = 20,
                   limit: int | None = None, out: str | Path | None = None, config: HybridConfig | None = None,
                   grid: FusionGrid | None = None, valid_sessions: int = DEFAULT_VALID_SESSIONS,
                   split: str = "test", engine_config=None, prompts=None, generation=None, index=None,
                   embedder="minilm", store: str | Path = "vectorstore", chroma_host: str | None = None,
                   cache=True, ground_distance: float | None = None, progress: bool | LLMProgress = False,
                   device: str = "cpu") -> HybridResult:
    """The LLM's grounded lists fused with the model of run folder ``run``; the fusion chosen on validation.

    Unless ``config`` fixes the fusion, the LLM first writes titles for the first ``valid_sessions``
    validation sessions, and :func:`select_fusion` picks ``w`` and ``M`` from ``grid`` there (validation
    Recall@20, ties by MRR@20, then the smaller ``w``); then it writes titles for the sessions of ``split``,
    where the chosen fusion is measured once.

    Args:
        dataset: a PreparedDataset or its folder; it must be the one ``run`` was trained on
            (:class:`~agentrec.training.runs.DatasetMismatchError` otherwise, raised before anything is generated).
        run: a run folder written by ``agentrec train`` (any model; SemSR-F is the intended one).
        strategy, engine, limit, split, engine_config, prompts, generation, index, embedder, store,
            chroma_host, cache, ground_distance: as in :func:`agentrec.pipelines.predict.predict`
            (``split`` is measured; choosing on validation needs ``split="test"``).
        progress: True for one bar over the LLM's work on both splits (the validation sessions, then the measured
            ones; sessions x steps, as predict counts them) with tokens/s and an ETA for both, and bars while
            building the index; or an :class:`~agentrec.core.progress.LLMProgress` of the caller's, grown by
            this run's work (and left open).
        k: length of the listed top-K; metrics at 10 (when K > 10) and K.
        out: JSON-lines file, one line per session (the fused top-K with each item's source, model rank and
            score, and for the LLM's items their position and distance); the LLM-only lines go beside it as
            ``*.llm.jsonl``; the summary (with the selection grid) as ``*.summary.json``.
        config: a fusion fixed by hand: no validation sessions are generated.
        grid: the fusions tried on validation (default :class:`FusionGrid`), with their fill setting; a
            one-point grid is a fixed fusion.
        valid_sessions: validation sessions the fusion is chosen on (the first ones, in split order).
        device: where torch work runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``): the run's model (it scores the
            catalogue there) and an embedder given by name. The hf LLM's device is ``engine_config.device``.

    Returns:
        A :class:`HybridResult`; ``result.llm`` holds the LLM-only result, its grounded lists in
        ``result.llm.candidates`` (in memory; the LLM-only lines are written only beside ``out``), and
        ``result.selection`` the validation grid (None when the fusion was given).
    """
    started = time.perf_counter()
    plan = validate_strategy(strategy, prompts or PromptConfig())  # a broken template fails before any model loads
    grid = FusionGrid.fixed(config) if config is not None else grid or FusionGrid()
    choose = grid.size > 1
    if choose and split != "test":
        raise UsageError(f"the fusion is chosen on validation sessions and measured on test, not on {split!r}; "
                         "give the weight and the candidates (M) to measure a fixed fusion there")
    if not isinstance(dataset, PreparedDataset):
        dataset = PreparedDataset.load(dataset)
    info, model = load_model(run, dataset, device=device)  # checks the fingerprint before the LLM runs
    engine = resolve_engine(engine, engine_config)  # one engine (and one model load) for both splits
    cache = open_cache(cache)
    bars = progress if isinstance(progress, bool) else progress.enabled
    if index is None:
        if isinstance(embedder, str):
            embedder = get_embedder(embedder, device=device)
        index = CatalogueIndex.build(dataset, embedder, store=store, chroma_host=chroma_host, progress=bars)
    common = dict(engine_config=engine_config, prompts=prompts, generation=generation, index=index, cache=cache,
                  ground_distance=DEFAULT_GROUND_DISTANCE if ground_distance is None else ground_distance)
    depth = max(grid.candidates)
    k = min(int(k), dataset.n_items)

    selection, valid_llm, selecting = None, None, 0.0
    n_valid = min(int(valid_sessions), len(dataset.valid)) if choose else 0
    if choose and n_valid < 1:
        raise UsageError(f"{dataset.name}: no validation sessions to choose the fusion on; give the weight "
                         "and the candidates (M) to fix it by hand")
    # one bar over the LLM's work on both splits (sessions x steps, as predict counts them), reserved up front so
    # that its ETA covers the test sessions while the validation ones run (each predict call takes its share)
    n_test = len(dataset.split(split)) if limit is None else min(int(limit), len(dataset.split(split)))
    steps = len(plan.steps)
    bar = progress if isinstance(progress, LLMProgress) else LLMProgress(
        None, desc=f"hybrid {plan.name}", unit="session" if steps == 1 else "session-step", enabled=bars)
    bar.reserve((n_valid + n_test) * steps)
    try:
        if choose:
            valid_llm = predict(dataset, strategy, engine, k=depth, limit=n_valid, split="valid", progress=bar,
                                **common)
            selection, config, selecting = _select(model, dataset, valid_llm, grid, depth)
        else:
            config = grid.points()[0]
        llm_out = Path(out).with_suffix(".llm.jsonl") if out is not None else None
        llm = predict(dataset, strategy, engine, k=max(config.candidates, k), limit=limit, out=llm_out, split=split,
                      progress=bar, **common)
    finally:
        if bar is not progress:
            bar.close()
    candidates, distances = llm.candidates.head(config.candidates)  # in memory: no file is read back
    reranking = time.perf_counter()
    samples = dataset.split(split)
    targets = samples.target[: llm.n].astype(np.int64)
    ranks, model_ranks = np.empty(llm.n), np.empty(llm.n)
    top, from_llm = np.zeros((llm.n, k), dtype=np.int64), np.zeros((llm.n, k), dtype=bool)
    picked = np.zeros((llm.n, k), dtype=np.float32)  # the model's scores of the listed items, for the records
    picked_rank = np.zeros((llm.n, k))  # and their ranks under the model
    for rows, scores in _score_chunks(model, samples, llm.n, dataset.n_items):
        ranks[rows], top[rows], from_llm[rows] = hybrid_ranks(candidates[rows], scores, targets[rows], config, k=k)
        model_ranks[rows] = grid_ranks(candidates[rows], scores, targets[rows], [MODEL_ALONE])[:, 0]
        picked[rows] = np.take_along_axis(scores, top[rows], 1)
        picked_rank[rows] = np.take_along_axis(model_rank_matrix(scores), top[rows], 1)
    rerank_seconds = time.perf_counter() - reranking + selecting
    ks = sorted({min(10, k), k})
    result = HybridResult(strategy=llm.strategy, run=str(run), model=model_label(info), dataset=dataset.name,
                          n=llm.n, k=k, config=config, metrics=metrics_from_ranks(ranks, ks), ranks=ranks,
                          model_metrics=metrics_from_ranks(model_ranks, ks), model_ranks=model_ranks,
                          selection=selection, llm=llm, valid_llm=valid_llm, protocol=config.protocol,
                          rerank_seconds=rerank_seconds)
    if out is not None:
        out = Path(out)
        titles = dataset.titles()
        lines = []
        for row in range(llm.n):
            position = {int(item): (j + 1, d) for j, (item, d) in enumerate(zip(candidates[row], distances[row]))
                        if item > 0}
            listed = []
            for item, llm_flag, score, rank in zip(top[row], from_llm[row], picked[row], picked_rank[row]):
                if item <= 0:
                    continue
                entry = {"item_id": int(item), "title": titles[int(item) - 1], "source": "llm" if llm_flag else "model",
                         "model_rank": int(rank), "model_score": round(float(score), 6)}
                if llm_flag:
                    entry.update(llm_position=position[int(item)][0], distance=position[int(item)][1])
                listed.append(entry)
            target = int(targets[row])
            lines.append({
                "session": str(samples.session[row]), "sample": row, "split": split, "strategy": llm.strategy,
                "title": llm.candidates.titles[row], "target": target, "target_title": titles[target - 1],
                "rank": None if math.isinf(ranks[row]) else int(ranks[row]),
                "model_rank": int(model_ranks[row]),
                "llm_rank": None if math.isinf(llm.ranks[row]) else int(llm.ranks[row]), "top_k": listed,
            })
        result.out = str(out)
    result.seconds = time.perf_counter() - started
    if out is not None:
        write_records(out, lines, result.summary())
    return result


def _select(model, dataset, valid_llm, grid: FusionGrid, depth: int) -> tuple[FusionSelection, HybridConfig, float]:
    """The fusion chosen on the validation sessions ``valid_llm`` generated (:func:`choose_fusion`), and the
    seconds that scoring and choosing took."""
    clock = time.perf_counter()
    ids, _ = valid_llm.candidates.head(depth)
    points, ranks = grid.points(), []
    for rows, scores in _score_chunks(model, dataset.valid, valid_llm.n, dataset.n_items):
        ranks.append(grid_ranks(ids[rows], scores, dataset.valid.target[rows], [*points, MODEL_ALONE]))
    ranks = np.concatenate(ranks)
    selection = choose_fusion(ranks[:, :-1], points, ranks[:, -1])
    logger.info("hybrid: %s", selection.describe())
    return selection, selection.config, time.perf_counter() - clock


def _score_chunks(model, samples, n: int, n_items: int):
    """``(rows, scores)`` for the first ``n`` samples, a memory-bounded block at a time. Each block is one of
    the evaluator's chunks scored whole (see :func:`first_scores`), so ``w = 0`` is the model's ranking bit for bit."""
    step = chunk_rows(n_items)
    for start in range(0, n, step):
        rows = np.arange(start, min(n, start + step))
        whole = np.arange(start, min(len(samples), start + step))
        yield rows, model_scores(model, samples, whole)[: len(rows)]
