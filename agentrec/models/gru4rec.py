"""GRU4Rec: a GRU over the session, its last hidden state is the session vector.

Paper: Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016.
Reference code: the cross-entropy variant as RecBole implements it (``recbole/model/
sequential_recommender/gru4rec.py``): embedding dropout, one GRU layer, a dense layer back to the
embedding size, full softmax over items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agentrec.models.base import Batch, ModelConfig, SessionModel, gather_last
from agentrec.models.layers import Dropout


@dataclass
class GRU4RecConfig(ModelConfig):
    hidden_size: int = 100  # GRU state size
    num_layers: int = 1
    dropout: float = 0.3  # on the input embeddings


class GRU4Rec(SessionModel):
    Config = GRU4RecConfig
    name = "gru4rec"
    paper = "Hidasi et al., ICLR 2016"
    reference = "RecBole gru4rec.py (CE loss)"

    def __init__(self, n_items: int, config: GRU4RecConfig | None = None):
        super().__init__(n_items, config)
        c = self.config
        self.dropout = Dropout(c.dropout)
        self.gru = nn.GRU(c.embedding_size, c.hidden_size, c.num_layers, batch_first=True, bias=False)
        self.dense = nn.Linear(c.hidden_size, c.embedding_size)
        nn.init.xavier_normal_(self.item_embedding.weight)
        for name, weight in self.gru.named_parameters():
            nn.init.xavier_uniform_(weight)

    def encode(self, batch: Batch) -> torch.Tensor:
        x = self.dropout(self.item_embedding(batch.items))  # (B, L, D)
        out, _ = self.gru(x)  # (B, L, H); right padding never reaches the last real step
        return self.dense(gather_last(out, batch.lengths))  # (B, D); the dense map only where it is read
