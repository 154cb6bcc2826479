"""MSGAT: a gated graph step, then multi-head and target-aware attention with learned alpha-entmax.

Paper: Qiao et al., "Bi-channel Multiple Sparse Graph Attention Networks for Session-based
Recommendation", CIKM 2023. Reference code: github.com/QEpiphany/MSGAT (``model.py``,
``utils.py``).

The intra-session channel, as the reference computes it:

1. Each session's distinct items (its graph nodes) get an item embedding concatenated with a
   position embedding, then LayerNorm: width ``w = 2d``. Both tables renormalise looked-up rows
   to length <= 1.5. The position is the node's slot among the distinct items in ascending id
   order (the reference embeds ``arange`` over its node list), not its click order.
2. One SR-GNN gated graph step (width ``w``) over the session graph; positions read their node.
3. A zero "target" token is appended and everything goes through multi-head self-attention whose
   weights are alpha-entmax (sparse: exact zeros) with a learned alpha in (1, 2) per head. Only the
   query is projected (ReLU, dropout); keys and values are the tokens themselves. A residual
   feed-forward block and LayerNorm follow. The target token's output is the target representation.
4. Target-aware global attention: alpha-entmax (alpha learned from the target) over
   ``w0 relu(W1 x_i + W2 target + b)`` weighs SR-GNN's gates ``sigmoid(W_one h_last + W_two h_i)``.
5. Decoder: ``selu(W [global; target])`` (d wide), dropout, unit length. Scores are 20 times the
   cosine with unit-length item embeddings.

The second (inter-session) channel is implemented but off by default (``inter_session``). In the
reference it works across the mini-batch: a session-overlap graph (Jaccard of item sets, row
normalised) mixes each session's summed item embeddings into a relation vector, and the 3 most
cosine-similar sessions of the batch (itself included) are added to the session vector ("intent
neighbour collaboration"). So a session's scores depend on which sessions share its batch.
Worse, when validation or test holds several prefixes of one session (the incremental-session
protocols here), a longer prefix scored next to a shorter one contains the shorter one's target,
and the channel carries it across: a label leak (MovieLens-100K, one short epoch: validation
recall@20 0.050 with another user's longer history in the slice, 0.082 with its own). Turn it on
only to reproduce the reference. It then pools the training batch and, when scoring, slices of
``score_batch`` sessions (the reference tests in batches of its training size). The reference's
target-aware attention in this channel runs over ``L`` copies of one vector, so it is the
identity: its result is computed directly, without its weights (which get no gradient there
either).

Deviations from the reference:

- Padding. The reference pads every session to the dataset's longest, makes item 0 a graph node
  of each padded session (so real nodes sit in slots 1..n; here always, padded or not) and lets
  the self-attention attend to the padding positions. Here padding is never a node and never a
  key, so a session's scores do not depend on how long it or its batch-mates could be.
- The alpha-entmax is plain torch (``entmax`` below; the reference imports ``entmax_bisect`` from
  the ``entmax`` package). It solves the same threshold equation by Newton's method instead of
  50 bisection steps: the same probabilities to about 1e-7, about seven times faster on the
  self-attention scores of a batch of 100 MovieLens sessions.
- When ``2d`` is not a multiple of ``heads`` (the reference requires it) the tokens are
  zero-padded to the next multiple inside the attention.
- Code the reference defines but never calls (``enhanceTarget``, ``denoise``, single-head
  ``self_attention``) is left out.

Training settings of the reference (Adam, lr 1e-3, L2 1e-5, decay 0.1 every 5 epochs, batch 512;
SemSR: batch 100) belong to ``TrainConfig``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agentrec.core.errors import TrainingDivergedError
from agentrec.models.base import Batch, ModelConfig, SessionModel, gather_last
from agentrec.models.graphs import session_graphs
from agentrec.models.layers import Dropout
from agentrec.models.srgnn import GatedGraphCell


@dataclass
class MSGATConfig(ModelConfig):
    """Defaults are the reference's (``main.py`` and ``model.py``); d = 100 comes from ModelConfig."""

    heads: int = 5  # heads of the sparse self-attention (reference: num_attention_heads)
    step: int = 1  # gated graph propagation steps
    dropout: float = 0.2  # on the attention query, the feed-forward output and the decoder output
    scale: float = 20.0  # multiplies the cosine scores (reference: self.w)
    max_norm: float = 1.5  # looked-up item and position embeddings are renormalised to this length
    entmax_iterations: int = 50  # most Newton steps of alpha-entmax (it stops when converged)
    inter_session: bool = False  # the in-batch second channel; see the module docstring first
    neighbours: int = 3  # intent neighbours per session, itself included (reference: Diginetica 3)
    neighbour_dropout: float = 0.4  # on the neighbour sum
    score_batch: int = 100  # sessions encoded at once when scoring (bounds memory; with
    # inter_session on, also the pool a scored session finds its neighbours in)


# ----- sparse attention --------------------------------------------------------------------------


class _Entmax(torch.autograd.Function):
    """alpha-entmax along ``dim``: ``p_i = [(alpha - 1) x_i - tau]_+ ** (1 / (alpha - 1))``, sum 1.

    ``tau`` solves ``f(tau) = sum_i [z_i - tau]_+ ** beta - 1 = 0`` with ``z = (alpha - 1) x`` and
    ``beta = 1 / (alpha - 1) >= 1``. ``f`` is convex and falling, so Newton's method started below
    the root rises monotonically and never overshoots; it stops when no threshold moves in floating
    point. Two lower bounds start it: ``max z - 1`` (the top term alone is 1) and
    ``mean z - n ** (1 - alpha)`` (by convexity ``f`` is at least ``n (mean z - tau) ** beta - 1``),
    which is tight for the flat scores of early training. It takes 3 to 10 steps here where the
    reference's bisection takes 50. The backward pass is the closed form (Peters et al., ACL 2019;
    Correia et al., EMNLP 2019), for ``x`` and for ``alpha``.
    """

    @staticmethod
    def forward(ctx, x, alpha, dim, n_iter):
        # x: any shape; alpha: x's shape with size 1 along dim, every value in (1, 2]
        z = x * (alpha - 1)
        beta = 1 / (alpha - 1)
        # u ** slope_power is u ** (beta - 1) on the support and 0 off it, even at alpha = 2, where a
        # power of exactly 0 would give 0 ** 0 = 1
        slope_power = (beta - 1).clamp(min=1e-30)
        finite = torch.isfinite(z)
        n = finite.sum(dim, keepdim=True).to(z.dtype)
        mean = z.masked_fill(~finite, 0.0).sum(dim, keepdim=True) / n
        tau = torch.maximum(z.max(dim, keepdim=True).values - 1, mean - n ** (1 - alpha))
        for _ in range(n_iter):
            u = (z - tau).clamp_(min=0)
            slope = u ** slope_power  # the derivative of p = u ** beta, over beta
            p = slope * u
            step = (p.sum(dim, keepdim=True) - 1) / (beta * slope.sum(dim, keepdim=True))
            risen = torch.maximum(tau, tau + step)  # rounding must not move it back
            if torch.equal(risen, tau):
                break  # p belongs to this tau
            tau = risen
        else:
            p = (z - tau).clamp(min=0) ** beta
        p = p / p.sum(dim, keepdim=True)
        ctx.dim = dim
        ctx.save_for_backward(p, alpha)
        return p

    @staticmethod
    def backward(ctx, grad):
        p, alpha = ctx.saved_tensors
        dim = ctx.dim
        # dp_i/dx_j = g_i (delta_ij - g_j / sum g), with g = p ** (2 - alpha) on the support
        g = torch.where(p > 0, p ** (2 - alpha), 0.0)
        g_sum = g.sum(dim, keepdim=True)
        grad_x = g * grad
        grad_x = grad_x - g * grad_x.sum(dim, keepdim=True) / g_sum
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            # dp_i/dalpha = (p_i - s_i) / (alpha - 1)^2 - (p_i log p_i - s_i sum_j p_j log p_j) / (alpha - 1)
            skewed = g / g_sum  # s
            p_log_p = torch.xlogy(p, p)  # 0 where p is 0
            d_alpha = (p - skewed) / (alpha - 1) ** 2
            d_alpha = d_alpha - (p_log_p - skewed * p_log_p.sum(dim, keepdim=True)) / (alpha - 1)
            grad_alpha = (grad * d_alpha).sum(dim, keepdim=True)
        return grad_x, grad_alpha, None, None


def entmax(x: torch.Tensor, alpha: torch.Tensor | float, dim: int = -1, n_iter: int = 50) -> torch.Tensor:
    """alpha-entmax of ``x`` along ``dim``: non-negative, sums to one, exact zeros below a threshold.

    ``alpha`` = 2 is sparsemax, 1.5 is entmax-1.5, and ``alpha`` -> 1 approaches softmax. Entries
    set to -inf get probability 0 (masking); each slice needs at least one finite entry.

    Args:
        x: scores of any shape.
        alpha: a number in (1, 2], or a tensor of such values broadcastable to ``x`` with size 1
            along ``dim``; gradients reach it. (Newton's method needs ``alpha <= 2``.)
        dim: the dimension that sums to one.
        n_iter: most Newton steps (it stops sooner, once the threshold is exact in floating point).
    """
    dim = dim % x.dim()
    shape = list(x.shape)
    shape[dim] = 1
    alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).expand(shape)
    if bool(torch.isnan(alpha).any()):  # a learned alpha from non-finite activations, not a caller's bug
        raise TrainingDivergedError("MSGAT's learned alpha-entmax alpha is NaN: the model diverged "
                                    "(non-finite activations); lower --lr and train again")
    if not bool(((alpha > 1) & (alpha <= 2)).all()):
        raise ValueError("alpha-entmax needs every alpha in (1, 2]")
    return _Entmax.apply(x, alpha, dim, n_iter)


def learned_alpha(logit: torch.Tensor) -> torch.Tensor:
    """``1 + sigmoid(logit)``, in (1, 2); an exact 1 (saturated sigmoid) is lifted to 1.00001, as the reference does."""
    alpha = 1 + torch.sigmoid(logit)
    return alpha.masked_fill(alpha == 1, 1.00001)


# ----- the session-overlap graph of the inter-session channel ------------------------------------


def session_overlap(nodes: np.ndarray) -> np.ndarray:
    """``(B, B)`` Jaccard similarity of the sessions' item sets, diagonal 1, rows normalised to sum 1.

    Args:
        nodes: ``(B, U)`` distinct item ids per session, 0-padded (``unique_nodes``).
    """
    real = nodes > 0
    vocab, local = np.unique(nodes[real], return_inverse=True)
    incidence = np.zeros((nodes.shape[0], len(vocab)), dtype=np.float32)  # (B, items in the batch)
    incidence[np.nonzero(real)[0], local] = 1.0
    shared = incidence @ incidence.T  # (B, B) sizes of the intersections
    sizes = real.sum(1).astype(np.float32)
    union = sizes[:, None] + sizes[None, :] - shared
    jaccard = shared / np.maximum(union, 1.0)
    np.fill_diagonal(jaccard, 1.0)
    return jaccard / jaccard.sum(1, keepdims=True)


# ----- the model ---------------------------------------------------------------------------------


class MSGAT(SessionModel):
    Config = MSGATConfig
    name = "msgat"
    paper = "Qiao et al., CIKM 2023"
    reference = "QEpiphany/MSGAT model.py"

    def __init__(self, n_items: int, config: MSGATConfig | None = None):
        super().__init__(n_items, config)
        c = self.config
        d = c.embedding_size
        w = 2 * d  # item embedding ‖ position embedding
        self.head_size = math.ceil(w / c.heads)
        self.item_embedding.max_norm = c.max_norm
        # slot 0 is padding; distinct items sit in slots 1..U (U <= max_history)
        self.position_embedding = nn.Embedding(c.max_history + 1, d, padding_idx=0, max_norm=c.max_norm)
        self.input_norm = nn.LayerNorm(w, eps=1e-12)
        self.cell = GatedGraphCell(w)
        # sparse multi-head self-attention over the positions and the target token
        self.query = nn.Linear(w, self.head_size * c.heads)  # reference: attention_mlp
        self.head_alpha = nn.Linear(self.head_size, 1)  # reference: multi_alpha_w, shared by heads
        self.ffn_in = nn.Linear(w, w)  # reference: self_atten_w1
        self.ffn_out = nn.Linear(w, w)  # reference: self_atten_w2
        self.attention_norm = nn.LayerNorm(w)
        # target-aware sparse global attention
        self.linear_one = nn.Linear(w, w)  # on the last position's state
        self.linear_two = nn.Linear(w, w)  # on every position's state
        self.global_key = nn.Linear(w, w, bias=False)  # reference: atten_w1
        self.global_target = nn.Linear(w, w)  # reference: atten_w2 and atten_bias
        self.global_energy = nn.Linear(w, 1, bias=False)  # reference: atten_w0
        self.global_alpha = nn.Linear(w, 1)  # reference: alpha_w
        self.decoder = nn.Linear(2 * w, d)  # reference: w_f
        self.dropout = Dropout(c.dropout)
        self.neighbour_dropout = Dropout(c.neighbour_dropout)
        self.reset_uniform()  # every parameter, LayerNorm weights included, as the reference does

    @classmethod
    def extra_inputs(cls, items: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        return session_graphs(items, lengths)

    def make_batch(self, samples, index: np.ndarray, *, device: str | torch.device = "cpu") -> Batch:
        batch = super().make_batch(samples, index, device=device)
        if self.config.inter_session:
            overlap = session_overlap(batch.extra["nodes"].cpu().numpy())
            batch.extra["overlap"] = torch.from_numpy(overlap).to(device)
        return batch

    def encode_chunk(self, samples, index: np.ndarray) -> torch.Tensor:
        """Session vectors of ``samples[index]``, encoded ``score_batch`` sessions at a time."""
        encode, step = super().encode_chunk, self.config.score_batch
        return torch.cat([encode(samples, index[i : i + step]) for i in range(0, len(index), step)])

    def item_table(self) -> torch.Tensor:
        return F.normalize(self.item_embedding.weight, dim=-1)

    def prepare_table(self, table: torch.Tensor) -> torch.Tensor:
        return F.normalize(table, dim=-1)

    def score_query(self, sessions: torch.Tensor) -> torch.Tensor:
        # scale * cosine lives in the scoring rule (not in logits or encode), so a wrapper that
        # fuses the vectors first (SemanticFusion) still scores with it
        return self.config.scale * F.normalize(sessions, dim=-1)

    def encode(self, batch: Batch) -> torch.Tensor:
        nodes = batch.extra["nodes"]  # (B, U)
        slots = torch.arange(1, nodes.size(1) + 1, device=nodes.device)
        node_items = self.item_embedding(nodes)  # (B, U, d)
        node_positions = self.position_embedding(torch.where(nodes > 0, slots, 0))  # (B, U, d)
        hidden = self.input_norm(torch.cat([node_items, node_positions], dim=-1))  # (B, U, w)
        for _ in range(self.config.step):
            hidden = self.cell(batch.extra["adj_in"], batch.extra["adj_out"], hidden)
        alias = batch.extra["alias"]  # (B, L)
        seq_hidden = hidden.gather(1, alias.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))  # (B, L, w)
        # real positions from the lengths: an empty history is one padding item, still "real"
        real = torch.arange(alias.size(1), device=alias.device) < batch.lengths.unsqueeze(1)  # (B, L)
        target, contexts = self.self_attention(seq_hidden, real)
        session = self.readout(seq_hidden, contexts, target, real, batch.lengths)
        if self.config.inter_session:
            session = session + self.intent_neighbours(session, node_items, nodes > 0, batch.extra["overlap"])
        return session

    def self_attention(self, seq_hidden: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse multi-head self-attention over the positions and an appended zero target token.

        Returns the target representation ``(B, w)`` and the positions' outputs ``(B, L, w)``.
        """
        b, length, w = seq_hidden.shape
        heads, size = self.config.heads, self.head_size
        tokens = torch.cat([seq_hidden, seq_hidden.new_zeros(b, 1, w)], dim=1)  # (B, L+1, w)
        keep = torch.cat([real, real.new_ones(b, 1)], dim=1)  # (B, L+1): the target key is kept

        def split(x):  # (B, L+1, heads * size) -> (B, heads, L+1, size)
            return x.view(b, length + 1, heads, size).transpose(1, 2)

        query = split(self.dropout(F.relu(self.query(tokens))))
        keys = split(F.pad(tokens, (0, heads * size - w)))  # keys and values are the tokens themselves
        scores = query @ keys.transpose(-1, -2) / math.sqrt(size)  # (B, heads, L+1, L+1)
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        alpha = learned_alpha(self.head_alpha(query[:, :, -1]))  # (B, heads, 1), from the target's query
        weights = entmax(scores, alpha.unsqueeze(-1), dim=-1, n_iter=self.config.entmax_iterations)
        out = (weights @ keys).transpose(1, 2).reshape(b, length + 1, heads * size)[..., :w]  # (B, L+1, w)
        out = self.attention_norm(out + self.dropout(self.ffn_out(F.relu(self.ffn_in(out)))))
        return out[:, -1], out[:, :-1]

    def readout(self, seq_hidden: torch.Tensor, contexts: torch.Tensor, target: torch.Tensor, real: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        """Target-aware sparse attention over SR-GNN's gates, then the decoder: ``(B, d)``, unit length."""
        last = gather_last(seq_hidden, lengths)  # (B, w)
        gates = torch.sigmoid(self.linear_one(last).unsqueeze(1) + self.linear_two(seq_hidden))  # (B, L, w)
        energy = self.global_energy(F.relu(self.global_key(contexts) + self.global_target(target).unsqueeze(1)))
        energy = energy.masked_fill(~real.unsqueeze(-1), float("-inf"))  # (B, L, 1)
        alpha = learned_alpha(self.global_alpha(target)).unsqueeze(1)  # (B, 1, 1)
        weights = entmax(energy, alpha, dim=1, n_iter=self.config.entmax_iterations)  # (B, L, 1)
        pooled = (weights * gates).sum(1)  # (B, w)
        session = self.dropout(F.selu(self.decoder(torch.cat([pooled, target], dim=-1))))  # (B, d)
        return F.normalize(session, dim=-1)

    def intent_neighbours(self, session: torch.Tensor, node_items: torch.Tensor, node_mask: torch.Tensor,
                          overlap: torch.Tensor) -> torch.Tensor:
        """The inter-session channel: ``(B, d)`` to add to the session vectors (see the module docstring)."""
        summed = (node_items * node_mask.unsqueeze(-1)).sum(1)  # (B, d)
        relation = F.normalize(F.selu(overlap @ summed), dim=-1)  # (B, d)
        mixed = session + relation
        norm = (mixed * mixed + 1e-6).sum(-1).sqrt()  # the reference's smoothed norm
        cosine = (mixed @ mixed.t()) / (norm.unsqueeze(1) * norm.unsqueeze(0))  # (B, B)
        # as the reference: softmax over the batch, the top k, and a softmax again over those k
        top, index = cosine.softmax(-1).topk(min(self.config.neighbours, len(session)), dim=-1)  # (B, k)
        found = (top.softmax(-1).unsqueeze(-1) * mixed[index]).sum(1)  # (B, d)
        return self.neighbour_dropout(found)
