"""Most-popular baseline: every session gets the same list, items ordered by training frequency.

The floor every table needs. Popularity is counted on the training split only (how often an item
is a training target), so nothing from validation or test leaks into it.
"""

from __future__ import annotations

import numpy as np


class Popularity:
    """Scores each item by how often it was a next-item target in training."""

    name = "pop"

    def __init__(self, n_items: int):
        self.n_items = n_items
        self.counts = np.zeros(n_items + 1, dtype=np.float32)  # (N + 1,), index 0 is padding

    def fit(self, train) -> "Popularity":
        """Count training targets. ``train`` is a ``Samples``."""
        self.counts = np.bincount(train.target, minlength=self.n_items + 1).astype(np.float32)
        self.counts[0] = 0.0
        return self

    def score_chunk(self, samples, index: np.ndarray):
        """``(len(index), N + 1)`` scores; the same row for every sample."""
        import torch

        # a copy: the evaluator writes -inf into column 0 of what it gets, and with one row the
        # expanded view is contiguous, so it would write into (and then save) the counts themselves
        row = torch.from_numpy(self.counts.copy())
        return row.unsqueeze(0).expand(len(index), -1)

    def state_dict(self) -> dict:
        import torch

        return {"counts": torch.from_numpy(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.counts = state["counts"].numpy().astype(np.float32)
