"""One progress bar for LLM work: sessions or items done, generated tokens per second, and the ETA.

Every place where an LLM works (``predict``, the hybrid, ``compare``, ``signals generate``, with or without Ray)
reports through :class:`LLMProgress`, so the bars look and behave alike. Updates come per engine batch: an engine
calls its ``on_batch`` hook (:class:`agentrec.llm.base.Engine`) after each batch it finishes, and a driver that
streams results back (Ray) updates after each block it stores.

The bar is tqdm's: it shows done/total, the rate and the ETA (tqdm's ``remaining``), and this class adds the
generated tokens per second as a postfix. ``enabled=False`` gives an object with the same methods that draws
nothing, so callers never branch on it.
"""

from __future__ import annotations

import time


class LLMProgress:
    """A bar over ``total`` units (sessions, items or signals) with tok/s and ETA.

    Args:
        total: units to do (``None``: unknown; tqdm then shows no ETA).
        desc: the label in front of the bar, e.g. ``"predict fs"``.
        unit: what one unit is, e.g. ``"session"``.
        enabled: draw the bar (False: every method is a no-op that still counts).
    """

    def __init__(self, total: int | None, *, desc: str, unit: str, enabled: bool = True):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.done = 0
        self.tokens_out = 0
        self.reserved = 0  # planned units in the total that no add_total has announced yet (reserve)
        self.started = time.perf_counter()
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, *, tokens_out: int = 0) -> None:
        """Count ``n`` more units done and ``tokens_out`` more generated tokens."""
        self.done += n
        self.tokens_out += int(tokens_out or 0)
        if self._bar is not None:
            self._bar.update(n)
            if self.tokens_out:
                self._bar.set_postfix(tok_s=f"{self.tokens_per_s:.0f}", refresh=False)

    def add_total(self, n: int) -> None:
        """Grow the total by ``n`` (work discovered on the way, e.g. retries, or a callee's work on a caller's
        bar); work already counted by :meth:`reserve` is taken from the reserve instead."""
        taken = min(max(n, 0), max(self.reserved, 0))
        self.reserved -= taken
        if n - taken:
            self._grow(n - taken)

    def reserve(self, n: int) -> None:
        """Count ``n`` planned units in the total now, so that the ETA covers work that has not started yet (a
        hybrid's test sessions while its validation ones run, a comparison's later LLM rows); the
        :meth:`add_total` calls that announce that work when it starts take it from the reserve rather than
        grow the total twice. ``reserve(-n)``: planned work that will not run after all (the total shrinks)."""
        self.reserved += n
        self._grow(n)

    def _grow(self, n: int) -> None:
        self.total = (self.total or 0) + n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / max(self.elapsed_s, 1e-9)

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far (None before the first unit, or with no total)."""
        if not self.total or not self.done:
            return None
        return self.elapsed_s / self.done * max(self.total - self.done, 0)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> LLMProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
