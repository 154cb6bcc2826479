"""Full-catalogue ranking metrics, computed in chunks.

Protocol (stated with every number agentrec prints):

* every item of the catalogue (ids 1..n) is a candidate; id 0 is padding and never ranked;
* the rank of the target is ``1 + #items scoring higher + #other items scoring the same``: ties count
  against the model, so a constant scorer ranks every target last instead of first;
* a non-finite score never helps the model: a target scored NaN or +-inf ranks last (``n_items``),
  and another item scored NaN counts as a tie, so a diverged model is never a hit;
* with ``exclude_history=True`` the items of the session's history are removed from the candidates;
  a target that is itself in the history then cannot be recommended and counts as a miss
  (rank = infinity) rather than being quietly let through;
* Recall@K is the hit rate (one target per sample), MRR@K = mean(1/rank if rank <= K else 0),
  NDCG@K = mean(1/log2(1 + rank) if rank <= K else 0). K larger than the catalogue is allowed.

Scores for a chunk of samples are a ``(B, n_items + 1)`` float tensor; only ``B`` rows at a time exist,
and ``B`` is chosen from a memory budget, so 100,000 sessions against 500,000 items never hold the
full matrix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

DEFAULT_KS = (10, 20, 100)
PROTOCOL_NOTE = "full catalogue, ties count against the model"


def target_ranks(scores, targets, *, excluded_target=None):
    """1-based rank of each row's target.

    Args:
        scores: ``(B, n_items + 1)`` float tensor; column 0 (padding) and excluded items already -inf.
        targets: ``(B,)`` long tensor of target ids.
        excluded_target: optional ``(B,)`` bool tensor; True rows get rank infinity.

    Returns:
        ``(B,)`` float64 numpy array of ranks (``inf`` for an excluded target). A target whose score
        is not finite (NaN, ``+inf``, ``-inf``) ranks last (``n_items``); a NaN score of another item
        counts against the model like a tie.
    """
    target_score = scores.gather(1, targets.view(-1, 1))  # (B, 1)
    width = scores.shape[1]  # n_items + 1
    # rank = 1 + #higher + #other ties = #columns NOT scoring below the target (the target counts
    # itself). Counting "not below" rather than ">=" makes a NaN elsewhere count against the model
    # (NaN < t is False) in the same single pass over the (B, n) matrix.
    if scores.device.type == "cpu":
        # numpy counts a boolean matrix several times faster than torch's bool sum on a CPU
        below = np.count_nonzero(scores.detach().numpy() < target_score.detach().numpy(), axis=1)
    else:
        below = (scores < target_score).sum(1).cpu().numpy()
    ranks = (width - below).astype(np.float64)
    # a non-finite target (a diverged model: NaN, or +-inf) ranks last, never first; a (B,) check only
    broken = ~np.isfinite(target_score.detach().view(-1).cpu().numpy())
    if broken.any():
        ranks[broken] = width - 1
    if excluded_target is not None:
        ranks[excluded_target.cpu().numpy()] = math.inf
    return ranks


def metrics_from_ranks(ranks: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    """Recall@K, MRR@K and NDCG@K for each K, from 1-based ranks (``inf`` = miss)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    if ranks.size == 0:
        return {f"{m}@{k}": float("nan") for k in ks for m in ("recall", "mrr", "ndcg")}
    for k in ks:
        hit = ranks <= k
        safe = np.where(hit, ranks, 1.0)
        out[f"recall@{k}"] = float(hit.mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / safe, 0.0).mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(1.0 + safe), 0.0).mean())
    return out


@dataclass
class RankingResult:
    """Ranks of every evaluated sample and the metrics derived from them."""

    ranks: np.ndarray
    metrics: dict[str, float]
    exclude_history: bool
    seconds: float
    protocol: str = PROTOCOL_NOTE
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ranks)

    def describe(self) -> str:
        history = "history items excluded" if self.exclude_history else "history items allowed"
        return f"{self.protocol}; {history}; {self.n} samples"


def chunk_rows(n_items: int, memory_budget_mb: float = 256.0, *, floor: int = 1, ceiling: int = 4096) -> int:
    """How many score rows fit in the memory budget (float32, plus the comparison temporaries)."""
    per_row = (n_items + 1) * 4 * 3  # scores + two boolean/compare temporaries, roughly
    return int(max(floor, min(ceiling, memory_budget_mb * 2**20 // per_row)))


def rank_samples(
    score_chunk: Callable[[np.ndarray], "object"],
    samples,
    n_items: int,
    *,
    ks=DEFAULT_KS,
    exclude_history: bool = False,
    memory_budget_mb: float = 256.0,
    progress: bool = False,
    desc: str = "evaluate",
) -> RankingResult:
    """Rank every sample's target against the full catalogue, a chunk at a time.

    Args:
        score_chunk: maps an index array of samples to a ``(len(index), n_items + 1)`` float tensor
            of scores (higher is better). It may return scores on any device.
        samples: ``agentrec.data.dataset.Samples``.
        n_items: catalogue size (ids 1..n_items).
        ks: cut-offs.
        exclude_history: remove each session's history items from its candidates.
        memory_budget_mb: bound on the score chunk, which sets the chunk size.
        progress: show a progress bar.
    """
    import torch

    started = time.perf_counter()
    rows = chunk_rows(n_items, memory_budget_mb)
    n = len(samples)
    ranks = np.empty(n, dtype=np.float64)
    nonfinite_targets = 0  # samples whose (reachable) target got NaN or +-inf: a diverged model
    bar = _progress(n, desc) if progress else None
    with torch.no_grad():
        for start in range(0, n, rows):
            index = np.arange(start, min(n, start + rows))
            scores = score_chunk(index).float()
            if scores.shape != (len(index), n_items + 1):
                raise ValueError(f"scorer returned shape {tuple(scores.shape)}, expected {(len(index), n_items + 1)}")
            scores = scores.clone() if not scores.is_contiguous() else scores
            scores[:, 0] = -math.inf
            targets = torch.as_tensor(samples.target[index], dtype=torch.long, device=scores.device)
            excluded_target = None
            if exclude_history:
                chunk = samples.subset(index)
                row = torch.as_tensor(np.repeat(np.arange(len(index)), chunk.lengths), device=scores.device)
                col = torch.as_tensor(chunk.history.astype(np.int64), device=scores.device)
                excluded_target = torch.zeros(len(index), dtype=torch.bool, device=scores.device)
                hits = col == targets[row]
                excluded_target[row[hits]] = True
                scores[row, col] = -math.inf
            ranks[index] = target_ranks(scores, targets, excluded_target=excluded_target)
            broken = ~torch.isfinite(scores.gather(1, targets.view(-1, 1)).view(-1))  # (B,)
            if excluded_target is not None:
                broken &= ~excluded_target  # -inf by design, not by the model
            nonfinite_targets += int(broken.sum())
            if bar is not None:
                bar.update(len(index))
    if bar is not None:
        bar.close()
    return RankingResult(
        ranks=ranks,
        metrics=metrics_from_ranks(ranks, ks),
        exclude_history=exclude_history,
        seconds=time.perf_counter() - started,
        extra={"nonfinite_targets": nonfinite_targets},
    )


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", leave=False)


def bootstrap_interval(values, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over the last axis of ``values`` (``(..., n)`` per-session values).

    The ``n`` sessions are resampled ``resamples`` times with ``numpy.random.default_rng(seed)``; every leading
    row uses the same resamples, so for per-session differences of two methods the interval is paired.
    Returns ``(lo, hi)``, each of shape ``values.shape[:-1]``.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # (R, n)
    tail = (1.0 - level) / 2.0
    flat = values.reshape(-1, n)
    lo, hi = np.empty(len(flat)), np.empty(len(flat))
    for row, series in enumerate(flat):  # one (R, n) block at a time: memory stays R x n
        lo[row], hi[row] = np.quantile(series[index].mean(-1), [tail, 1.0 - tail])
    return lo.reshape(values.shape[:-1]), hi.reshape(values.shape[:-1])


def format_metrics(metrics: dict[str, float], ks=DEFAULT_KS, *, percent: bool = True) -> str:
    """One aligned block: a row per metric family, a column per K."""
    scale = 100.0 if percent else 1.0
    head = "metric   " + "".join(f"{'@' + str(k):>9}" for k in ks)
    lines = [head]
    for family in ("recall", "mrr", "ndcg"):
        cells = "".join(f"{metrics.get(f'{family}@{k}', float('nan')) * scale:9.2f}" for k in ks)
        lines.append(f"{family:<9}{cells}")
    return "\n".join(lines)
