"""The contract every neural session model follows, and the parts they share.

A model file (``gru4rec.py``, ``narm.py``, ``srgnn.py``, ``niser.py``, ``msgat.py``) implements only
``encode``: a batch of sessions in, one vector per session out. Everything else lives here once:
the item table, scoring all items, the loss, turning samples into batches.

Batches are built in the data pipeline (``make_batch``), never in ``forward``: a model that needs
more than the padded item matrix (session graphs for SR-GNN, NISER, MSGAT) says so in
``extra_inputs``, a classmethod that works on numpy arrays before anything reaches torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class Batch:
    """A batch of sessions.

    Attributes:
        items: ``(B, L)`` item ids, oldest first, padded with 0 on the right.
        lengths: ``(B,)`` number of real items per row (>= 1).
        targets: ``(B,)`` next item, or None at inference.
        extra: model-specific inputs built by ``extra_inputs`` (graphs, aliases ...).
    """

    items: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        """``(B, L)`` True at real items."""
        return self.items > 0

    def last_items(self) -> torch.Tensor:
        """``(B,)`` the most recent item of each session."""
        return self.items.gather(1, (self.lengths - 1).clamp(min=0).view(-1, 1)).squeeze(1)


def gather_last(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x[b, lengths[b] - 1]`` for a ``(B, L, D)`` tensor -> ``(B, D)``."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, x.size(-1))
    return x.gather(1, index).squeeze(1)


@dataclass
class ModelConfig:
    """Fields every model shares; each model's config subclasses this."""

    embedding_size: int = 100  # d in the papers (SemSR: d1 = d = 100)
    max_history: int = 50  # longest history a batch carries (the dataset caps it too)


class SessionModel(nn.Module):
    """Base class: item table, scoring and loss. Subclasses implement ``encode``.

    Subclasses set ``Config`` (a ``ModelConfig`` dataclass) and ``name``.
    """

    Config = ModelConfig
    name = "base"
    paper = ""
    reference = ""

    def __init__(self, n_items: int, config: ModelConfig | None = None):
        super().__init__()
        self.n_items = n_items
        self.config = config or self.Config()
        # Row 0 is padding; rows 1..n_items are the catalogue.
        self.item_embedding = nn.Embedding(n_items + 1, self.config.embedding_size, padding_idx=0)

    # ----- what a subclass provides --------------------------------------------------------------

    def encode(self, batch: Batch) -> torch.Tensor:
        """``(B, D)`` session vectors."""
        raise NotImplementedError

    @classmethod
    def extra_inputs(cls, items: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        """Model-specific inputs computed from ``(B, L)`` items and ``(B,)`` lengths in numpy."""
        return {}

    # ----- shared ---------------------------------------------------------------------------------

    def item_table(self) -> torch.Tensor:
        """``(N + 1, D)`` vectors every session is scored against."""
        return self.item_embedding.weight

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """``(len(ids), D)``: rows ``ids`` of :meth:`item_table`, without building the others.

        A sampled softmax (``agentrec.training.losses``) scores a few thousand of 500,000 items; a model whose
        table is computed (SemSR-F) overrides this to compute only those rows.
        """
        return self.item_table()[ids]

    def prepare_table(self, table: torch.Tensor) -> torch.Tensor:
        """Whatever the scoring rule does to the item table alone (NISER: normalise it); it acts on each row alone."""
        return table

    def score_query(self, sessions: torch.Tensor) -> torch.Tensor:
        """Whatever the scoring rule does to the ``(B, D)`` session vectors alone (NISER: sigma * normalise)."""
        return sessions

    def score(self, sessions: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """The model's scoring rule: ``(B, D)`` sessions against a prepared ``(N + 1, D)`` table.

        A product ``score_query(sessions) @ table.T``; a subclass that overrides this with another rule is
        evaluated through ``score_chunk`` rather than the product path (``scores_are_products``).
        """
        return self.score_query(sessions) @ table.t()

    @property
    def scores_are_products(self) -> bool:
        """True when every score is ``query_chunk(...) @ scoring_table().T`` (the rule is not overridden)."""
        return type(self).score is SessionModel.score

    def scoring_table(self) -> torch.Tensor:
        """``prepare_table(item_table())``, computed once per set of weights while evaluating.

        Training recomputes it every step (gradients flow through it). Without gradients it is
        cached and keyed by the parameters' version counters, which every optimiser step and
        ``load_state_dict`` bump: evaluating 100,000 sessions against 500,000 items must not
        rebuild a 500,000-row table for every chunk.
        """
        if self.training or torch.is_grad_enabled():
            return self.prepare_table(self.item_table())
        key = tuple(p._version for p in self.parameters()) + tuple(b._version for b in self.buffers())
        cached = getattr(self, "_table_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self.prepare_table(self.item_table()))
            self._table_cache = cached
        return cached[1]

    def logits(self, sessions: torch.Tensor) -> torch.Tensor:
        """``(B, N + 1)`` scores of every item; column 0 (padding) is -inf."""
        scores = self.score(sessions, self.scoring_table())
        scores[:, 0] = float("-inf")
        return scores

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.logits(self.encode(batch))

    def loss(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy of the next item over the full catalogue."""
        return nn.functional.cross_entropy(self(batch), batch.targets)

    def make_batch(self, samples, index: np.ndarray, *, device: str | torch.device = "cpu") -> Batch:
        """Batch of ``samples[index]``: histories truncated to ``max_history``, padded to the longest."""
        chunk = samples.subset(index)
        lengths = np.minimum(chunk.lengths, self.config.max_history)
        items = chunk.padded(max(1, int(lengths.max(initial=1))), align="left")
        lengths = np.maximum(lengths, 1)  # an empty history scores as one padding item
        extra = {k: torch.from_numpy(v).to(device) for k, v in self.extra_inputs(items, lengths).items()}
        return Batch(
            items=torch.from_numpy(items).to(device),
            lengths=torch.from_numpy(lengths.astype(np.int64)).to(device),
            targets=torch.from_numpy(chunk.target.astype(np.int64)).to(device),
            extra=extra,
        )

    def encode_chunk(self, samples, index: np.ndarray) -> torch.Tensor:
        """``(len(index), D)`` session vectors of ``samples[index]``, for the evaluator."""
        device = next(self.parameters()).device
        return self.encode(self.make_batch(samples, index, device=device))

    def score_chunk(self, samples, index: np.ndarray) -> torch.Tensor:
        """``(len(index), N + 1)`` scores, for the evaluator."""
        return self.logits(self.encode_chunk(samples, index))

    def query_chunk(self, samples, index: np.ndarray) -> torch.Tensor:
        """``(len(index), D)`` vectors whose product with ``scoring_table()`` are the scores of ``samples[index]``.

        With :attr:`scores_are_products`, ``score_chunk(samples, index)`` equals
        ``query_chunk(samples, index) @ scoring_table().T`` with column 0 set to -inf: the evaluator's
        product path (``agentrec.core.ranking``) scores the catalogue from these two parts.
        """
        return self.score_query(self.encode_chunk(samples, index))

    @classmethod
    def from_config(cls, config: dict, dataset) -> SessionModel:
        return cls(dataset.n_items, cls.Config(**config))

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)

    def reset_uniform(self) -> None:
        """Uniform(-1/sqrt(d), 1/sqrt(d)) on every parameter, as SR-GNN, NISER and MSGAT initialise."""
        bound = 1.0 / np.sqrt(self.config.embedding_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)
