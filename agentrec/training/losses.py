"""Training losses: the full softmax over the catalogue, or a sampled softmax that scores a few thousand items.

The models' own ``loss`` is the cross-entropy of the next item over every item of the catalogue: each step
scores the batch against all N items and back-propagates into all N rows. At Amazon-M2 size (500,000 items)
that product dominates an epoch (``benchmarks/results/scale_m2.md``). :class:`SampledSoftmax` scores each
batch against a candidate set instead:

* the batch's own targets (in-batch negatives: every other session's target is a negative for this one), and
* ``negatives`` items drawn uniformly, with replacement, from the catalogue (shared by the whole batch),

with duplicates removed, so each candidate is one column. This is mixed negative sampling (Yang et al., "Mixed
Negative Sampling for Learning Two-tower Neural Networks in Recommendations", WWW 2020). Each candidate's
logit is corrected by the log of its probability of being in the set (the logQ correction of sampled softmax;
Jean et al., ACL 2015; Yi et al., RecSys 2019), which keeps popular targets, which are in almost every batch,
from being pushed down merely for being sampled often::

    q_i = 1 - (1 - 1/N) ** negatives * (1 - p_i) ** B      p_i: item i's share of the training targets
    loss = cross_entropy(score(s_b, i) - log q_i over the candidates i, the column of b's target)

(the same inclusion probabilities TensorFlow's samplers report with ``unique=True``). With ``negatives`` at
least N every item is a candidate, q_i = 1, and the loss is the full softmax exactly. Validation and
evaluation always rank the whole catalogue; only training samples.

It needs a model whose scores are products of a session query and a per-item row (``scores_are_products``)
and whose ``prepare_table`` acts on each row alone: true of every model here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from agentrec.core.errors import UsageError

NEGATIVES_HELP = ("Sampled softmax for training: score each batch against its own targets and this many items "
                  "drawn uniformly from the catalogue (logQ-corrected), instead of every item. Cuts the cost of "
                  "training on large catalogues; validation and evaluation still rank every item. Default: the "
                  "full softmax.")


class SampledSoftmax:
    """Cross-entropy over the batch's targets and ``negatives`` uniform items, logQ-corrected (see module doc).

    Args:
        n_items: catalogue size N (item ids 1..N; 0 is padding and never a candidate).
        negatives: uniform draws per batch; at least N means every item (the full softmax, exactly).
        targets: the training targets, for the in-batch inclusion probabilities.
        seed: seeds the draws, so a run repeats.
    """

    def __init__(self, n_items: int, negatives: int, targets: np.ndarray, *, seed: int = 0):
        import torch  # here, not at the top: the CLI imports this module for its help text

        self.n_items = int(n_items)
        self.negatives = int(negatives)
        counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=self.n_items + 1)[: self.n_items + 1]
        share = counts / max(1, counts.sum())
        self._log1m_share = torch.from_numpy(np.log1p(-np.minimum(share, 1 - 1e-12)))  # (N + 1,) float64
        self._log1m_uniform = self.negatives * math.log1p(-1.0 / self.n_items) if self.n_items > 1 else -math.inf
        self.generator = torch.Generator().manual_seed(seed)
        self.full = self.negatives >= self.n_items

    def candidates(self, targets):
        """``(C,)`` sorted unique candidate ids and their ``(C,)`` float32 log inclusion probabilities."""
        import torch

        if self.full:
            ids = torch.arange(1, self.n_items + 1, device=targets.device)
            return ids, torch.zeros(self.n_items, device=targets.device)
        drawn = torch.randint(1, self.n_items + 1, (self.negatives,), generator=self.generator)
        ids = torch.unique(torch.cat([targets.cpu(), drawn]))  # sorted
        # log q = log(1 - P(not drawn) * P(not a target of this batch)), in float64: q is tiny for most items
        log_missed = self._log1m_uniform + len(targets) * self._log1m_share[ids]
        log_q = torch.log(-torch.expm1(log_missed)).float()
        return ids.to(targets.device), log_q.to(targets.device)

    def __call__(self, model, batch):
        import torch
        import torch.nn.functional as F

        ids, log_q = self.candidates(batch.targets)
        query = model.score_query(model.encode(batch))  # (B, D)
        table = model.prepare_table(model.item_rows(ids))  # (C, D): only the candidates' rows
        logits = query @ table.t() - log_q  # (B, C)
        columns = torch.searchsorted(ids, batch.targets)  # each target's column (ids are sorted and hold it)
        return F.cross_entropy(logits.float(), columns)


def training_loss(model, train, negatives: int | None, *, seed: int = 0) -> Callable:
    """The loss a training step calls with a batch: the model's full softmax, or :class:`SampledSoftmax`.

    Args:
        model: the model being trained.
        train: the training samples (their targets give the in-batch inclusion probabilities).
        negatives: ``TrainConfig.negatives``; None keeps the full softmax (``model.loss``).
        seed: seeds the negative draws.
    """
    if negatives is None:
        return model.loss
    if not getattr(model, "scores_are_products", False):
        raise UsageError(f"--negatives: {getattr(model, 'name', type(model).__name__)} scores items with its own "
                         "rule, not a product of a session vector and item rows, so it cannot score a sample of "
                         "them; train it without --negatives")
    sampler = SampledSoftmax(model.n_items, negatives, train.target, seed=seed)
    return lambda batch: sampler(model, batch)
