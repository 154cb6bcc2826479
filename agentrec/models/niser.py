"""NISER+: SR-GNN with normalised item and session vectors, item dropout and position embeddings.

Paper: Gupta et al., "NISER: Normalized Item and Session Representations to Handle Popularity
Bias", CIKM 2019 GRLA workshop. Reference code: RecBole-GNN ``niser.py``. Items and sessions are
L2-normalised and the cosine scores are multiplied by ``sigma`` (16 by default, as SemSR uses);
dropout acts on the node embeddings; learned position embeddings (from the oldest item) are added
before the readout. Everything else is SR-GNN's, so this class only overrides what differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agentrec.models.base import Batch
from agentrec.models.layers import Dropout
from agentrec.models.srgnn import SRGNN, SRGNNConfig


@dataclass
class NISERConfig(SRGNNConfig):
    sigma: float = 16.0  # scale of the cosine scores
    item_dropout: float = 0.1


class NISER(SRGNN):
    Config = NISERConfig
    name = "niser"
    paper = "Gupta et al., CIKM 2019 GRLA workshop"
    reference = "RecBole-GNN niser.py"

    def __init__(self, n_items: int, config: NISERConfig | None = None):
        super().__init__(n_items, config)
        self.position_embedding = nn.Embedding(self.config.max_history, self.config.embedding_size)
        self.item_dropout = Dropout(self.config.item_dropout)
        self.reset_uniform()

    def prepare_table(self, table: torch.Tensor) -> torch.Tensor:
        return F.normalize(table, dim=-1)

    def score_query(self, sessions: torch.Tensor) -> torch.Tensor:
        # sigma * cosine (the table is normalised by prepare_table): popular items cannot win on vector length
        return self.config.sigma * F.normalize(sessions, dim=-1)

    def encode(self, batch: Batch) -> torch.Tensor:
        nodes = F.normalize(self.item_dropout(self.item_embedding(batch.extra["nodes"])), dim=-1)
        seq_hidden = self.node_states(batch, nodes)  # (B, L, D)
        seq_hidden = seq_hidden + self.position_embedding.weight[: seq_hidden.size(1)].unsqueeze(0)
        return self.readout(batch, seq_hidden)
