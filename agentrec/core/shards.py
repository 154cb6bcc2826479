"""Shards: split one long job (LLM predictions, LaMAR signals) across processes or machines.

The rule: of the ``total`` units a run would do (the sessions ``predict`` selects, the items ``signals
generate`` selects), unit ``i`` (0-based, in the run's own order) belongs to shard ``i % N``. Modulo rather
than contiguous blocks keeps the shards balanced when cost drifts along the order (longer sessions later,
cached items first), and a unit's shard depends only on its index and ``N``. Shards ``0/N`` ... ``N-1/N`` are
disjoint and together cover every unit; their outputs are merged by ``agentrec merge-predictions`` and
``agentrec signals merge``.

This module imports nothing of agentrec but :mod:`agentrec.core.errors`.
"""

from __future__ import annotations

import numpy as np

from agentrec.core.errors import UsageError


def parse_shard(value) -> tuple[int, int] | None:
    """``"I/N"`` (or ``(I, N)``, or None for no sharding) as ``(I, N)`` with ``0 <= I < N``.

    Raises:
        UsageError: naming the value, for anything else.
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.strip().split("/")
        try:
            i, n = (int(p) for p in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            i, n = None, None
        if i is None:
            raise UsageError(f"--shard must be I/N with 0 <= I < N (e.g. 0/2), got {value!r}")
    else:
        i, n = (int(x) for x in value)
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard must be I/N with 0 <= I < N (e.g. 0/2), got {i}/{n}")
    return i, n


def shard_text(shard) -> str | None:
    """``"I/N"`` for a shard, None for none."""
    shard = parse_shard(shard)
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def shard_rows(total: int, shard) -> np.ndarray:
    """The indices in ``range(total)`` that belong to ``shard`` (all of them for None), ascending."""
    rows = np.arange(int(total), dtype=np.int64)
    shard = parse_shard(shard)
    return rows if shard is None else rows[rows % shard[1] == shard[0]]
