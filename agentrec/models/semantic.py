"""SemSR's semantic variants as composition over any session model.

Paper: "SemSR" (arXiv 2508.20587), section 3.3; no public code. Three ways to use LLM item
embeddings with a data-driven session model, none of which copies the model:

* **SemSR-I** (``semantic_init``): the model's trainable item table starts from the LLM vectors.
* **SemSR-F** (``SemanticFusion``): a frozen LLM item table beside the trainable ID table. The
  session's LLM vectors give ``s_l`` by soft attention with the last item as query::

      alpha_j = q^T sigmoid(W1 i_l,last + W2 i_l,j + c),  softmax over j = 1..|s|-1
      s'      = sum_j alpha_j i_l,j
      s_l     = W3 [s'; i_l,last]
      s       = W4 [s_m; s_l]        (s_m: the wrapped model's session vector)
      I       = W5 [I_m; I_l]        (I_m: its ID table, I_l: the LLM table)
      y       = softmax(I s)         (the wrapped model's scoring rule: NISER and MSGAT keep their scaled cosine)

  trained end to end with the wrapped model.
* **I+ / F+** (``Reranked``): the top-K of a semantic model re-ordered by a plain model's scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from agentrec.core.errors import MismatchError
from agentrec.models.base import Batch, SessionModel


def semantic_init(model: SessionModel, llm_table: np.ndarray) -> dict:
    """SemSR-I: initialise ``model.item_embedding`` from ``(N + 1, d2)`` LLM vectors (row 0 padding).

    Dimensions: when d2 > d1 the LLM vectors are projected on their top-d1 principal components
    (an SVD of the centred table: the linear map that keeps most of their variance); when d2 < d1
    the remaining d1 - d2 columns keep the model's random initialisation. Either way the result is
    rescaled to the standard deviation of the model's own initial table, so optimisers and
    dropout see the magnitudes they were tuned for. Returns a description for the run record.
    """
    weight = model.item_embedding.weight
    d1 = weight.shape[1]
    table = np.asarray(llm_table[1:], dtype=np.float64)
    centred = table - table.mean(0, keepdims=True)
    if table.shape[1] > d1:
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        projected = centred @ vt[:d1].T
        kept = float((singular[:d1] ** 2).sum() / (singular**2).sum())
        how = f"PCA {table.shape[1]}->{d1} dims ({kept:.1%} of the variance kept)"
    else:
        projected, how = centred, f"{table.shape[1]} LLM dims copied" + (
            f", {d1 - table.shape[1]} random dims kept" if table.shape[1] < d1 else "")
    with torch.no_grad():
        target_std = float(weight[1:].std())
        values = torch.as_tensor(projected, dtype=weight.dtype)
        values = values / values.std().clamp(min=1e-12) * target_std
        weight[1:, : values.shape[1]] = values
    return {"mode": "init", "projection": how}


@dataclass
class FusionConfig:
    output_size: int | None = None  # d, the fused size (default: the wrapped model's embedding size)


class SemanticFusion(SessionModel):
    """SemSR-F around any ``SessionModel`` (see the module docstring for the equations)."""

    name = "semsr-f"

    def __init__(self, base: SessionModel, llm_table: np.ndarray | torch.Tensor, config: FusionConfig | None = None):
        nn.Module.__init__(self)
        self.base = base
        self.n_items = base.n_items
        self.fusion = config or FusionConfig()
        table = torch.as_tensor(np.asarray(llm_table), dtype=torch.float32)
        if table.shape[0] != base.n_items + 1:
            raise MismatchError(f"LLM table has {table.shape[0]} rows; the catalogue needs {base.n_items + 1}")
        self.register_buffer("llm_items", table)  # I_l, frozen: a buffer is never optimised
        d1, d2 = base.config.embedding_size, table.shape[1]
        d = self.fusion.output_size or d1
        self.w1 = nn.Linear(d2, d2, bias=False)
        self.w2 = nn.Linear(d2, d2, bias=True)  # its bias is c
        self.q = nn.Linear(d2, 1, bias=False)
        self.w3 = nn.Linear(2 * d2, d2, bias=False)
        self.w4 = nn.Linear(d1 + d2, d, bias=False)
        self.w5 = nn.Linear(d1 + d2, d, bias=False)

    @property
    def config(self):
        return self.base.config

    def extra_inputs(self, items, lengths):  # the wrapped model's graphs etc.
        return self.base.extra_inputs(items, lengths)

    def llm_session(self, batch: Batch) -> torch.Tensor:
        """``s_l``: ``(B, d2)``."""
        vectors = self.llm_items[batch.items]  # (B, L, d2)
        last = vectors.gather(1, (batch.lengths - 1).view(-1, 1, 1).expand(-1, 1, vectors.size(-1))).squeeze(1)
        if batch.items.numel() > self.llm_items.shape[0]:
            # fewer catalogue rows than positions: project the catalogue once, then look up
            projected = self.w2(self.llm_items)[batch.items]
        else:
            projected = self.w2(vectors)
        alpha = self.q(torch.sigmoid(self.w1(last).unsqueeze(1) + projected)).squeeze(-1)  # (B, L)
        earlier = torch.arange(batch.items.size(1), device=alpha.device).unsqueeze(0) < (batch.lengths - 1).unsqueeze(1)
        alpha = torch.softmax(alpha.masked_fill(~earlier, float("-inf")), dim=1)
        alpha = torch.nan_to_num(alpha, nan=0.0)  # a one-item session has no earlier items: s' = 0
        s_prime = (alpha.unsqueeze(-1) * vectors).sum(1)
        return self.w3(torch.cat([s_prime, last], dim=1))

    def encode(self, batch: Batch) -> torch.Tensor:
        return self.w4(torch.cat([self.base.encode(batch), self.llm_session(batch)], dim=1))

    def item_table(self) -> torch.Tensor:
        return self.w5(torch.cat([self.base.item_table(), self.llm_items], dim=1))

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.w5(torch.cat([self.base.item_rows(ids), self.llm_items[ids]], dim=1))

    def prepare_table(self, table: torch.Tensor) -> torch.Tensor:
        return self.base.prepare_table(table)

    def score_query(self, sessions: torch.Tensor) -> torch.Tensor:
        return self.base.score_query(sessions)

    def score(self, sessions: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return self.base.score(sessions, table)

    @property
    def scores_are_products(self) -> bool:
        return self.base.scores_are_products

    def config_dict(self) -> dict:
        return self.base.config_dict()

    def fusion_dict(self) -> dict:
        return {"mode": "fusion", **asdict(self.fusion), "llm_dimension": int(self.llm_items.shape[1])}


class Reranked:
    """I+ / F+: keep ``first``'s top ``k`` items and order them by ``second``'s scores.

    Items outside the top ``k`` keep ``first``'s order below every item inside it, so Recall@k is
    exactly ``first``'s and only the order within the list changes.
    """

    def __init__(self, first, second, k: int = 100):
        self.first, self.second, self.k = first, second, k
        self.name = f"{getattr(first, 'name', 'first')}+"

    def score_chunk(self, samples, index: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            s1 = self.first.score_chunk(samples, index).float()
            s2 = self.second.score_chunk(samples, index).float()
        k = min(self.k, s1.shape[1] - 1)
        top = s1.topk(k, dim=1).indices  # (B, k)
        inside = s2.gather(1, top)
        finite = torch.where(torch.isfinite(s1), s1, torch.full_like(s1, float("nan")))
        top_outside = torch.nan_to_num(finite, nan=float("-inf")).max(dim=1, keepdim=True).values
        # shift first's scores so the best outside item sits one below the worst inside item
        out = s1 - top_outside + inside.min(dim=1, keepdim=True).values - 1.0
        out.scatter_(1, top, inside)
        out[:, 0] = float("-inf")
        return out
