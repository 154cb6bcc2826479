"""SR-GNN: a gated graph network over each session's item graph, then an attentive readout.

Paper: Wu et al., "Session-based Recommendation with Graph Neural Networks", AAAI 2019.
Reference code: github.com/CRIPAC-DIG/SR-GNN (``pytorch_code/model.py``). The session graphs come
from the data pipeline (``graphs.session_graphs`` via ``extra_inputs``), never from ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agentrec.models.base import Batch, ModelConfig, SessionModel, gather_last
from agentrec.models.graphs import session_graphs


class GatedGraphCell(nn.Module):
    """One propagation step: messages along and against edges, then a GRU-style update."""

    def __init__(self, size: int):
        super().__init__()
        self.edge_in = nn.Linear(size, size)
        self.edge_out = nn.Linear(size, size)
        self.b_in = nn.Parameter(torch.zeros(size))
        self.b_out = nn.Parameter(torch.zeros(size))
        self.w_ih = nn.Linear(2 * size, 3 * size)
        self.w_hh = nn.Linear(size, 3 * size)

    def forward(self, adj_in: torch.Tensor, adj_out: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        # adj_*: (B, U, U), hidden: (B, U, D)
        message_in = adj_in @ self.edge_in(hidden) + self.b_in
        message_out = adj_out @ self.edge_out(hidden) + self.b_out
        gi = self.w_ih(torch.cat([message_in, message_out], dim=2))  # (B, U, 3D)
        gh = self.w_hh(hidden)
        i_r, i_z, i_n = gi.chunk(3, dim=2)
        h_r, h_z, h_n = gh.chunk(3, dim=2)
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + reset * h_n)
        return candidate + update * (hidden - candidate)


@dataclass
class SRGNNConfig(ModelConfig):
    step: int = 1  # propagation steps of the gated graph cell


class SRGNN(SessionModel):
    Config = SRGNNConfig
    name = "srgnn"
    paper = "Wu et al., AAAI 2019"
    reference = "CRIPAC-DIG/SR-GNN pytorch_code/model.py"

    def __init__(self, n_items: int, config: SRGNNConfig | None = None):
        super().__init__(n_items, config)
        d = self.config.embedding_size
        self.cell = GatedGraphCell(d)
        self.linear_one = nn.Linear(d, d)  # W1, on the last item
        self.linear_two = nn.Linear(d, d)  # W2, on every item
        self.linear_three = nn.Linear(d, 1, bias=False)  # q
        self.linear_transform = nn.Linear(2 * d, d)  # W3 on [s_global; s_local]
        self.reset_uniform()

    @classmethod
    def extra_inputs(cls, items: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        return session_graphs(items, lengths)

    def node_states(self, batch: Batch, node_vectors: torch.Tensor) -> torch.Tensor:
        """Propagate over the session graphs and return per-position states ``(B, L, D)``."""
        hidden = node_vectors
        for _ in range(self.config.step):
            hidden = self.cell(batch.extra["adj_in"], batch.extra["adj_out"], hidden)
        alias = batch.extra["alias"]
        return hidden.gather(1, alias.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))

    def readout(self, batch: Batch, seq_hidden: torch.Tensor) -> torch.Tensor:
        """Soft attention with the last item as query, then W3 [s_g; s_l]."""
        last = gather_last(seq_hidden, batch.lengths)  # (B, D)
        alpha = self.linear_three(torch.sigmoid(self.linear_one(last).unsqueeze(1) + self.linear_two(seq_hidden)))
        s_global = (alpha * seq_hidden * batch.mask.unsqueeze(-1)).sum(1)  # (B, D)
        return self.linear_transform(torch.cat([s_global, last], dim=1))

    def encode(self, batch: Batch) -> torch.Tensor:
        seq_hidden = self.node_states(batch, self.item_embedding(batch.extra["nodes"]))
        return self.readout(batch, seq_hidden)
