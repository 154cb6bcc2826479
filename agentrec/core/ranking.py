"""Exact full-catalogue ranks when every score is a product ``q @ e``, in fp32 or in bf16.

Every neural model here scores a session as ``q_b . e_j``: a query vector per session (the session vector,
maybe normalised and scaled) times the item table. :func:`rank_products` ranks each target against the
whole catalogue from those two parts, a chunk of sessions at a time, with the protocol of
:mod:`agentrec.core.metrics` (ties and NaN count against the model, padding never ranked, history
exclusion). It returns the same :class:`~agentrec.core.metrics.RankingResult` as ``rank_samples``.

**What "exact" means.** The fp32 product is not a well-defined reference at the last bit: MKL's sgemm
gives a (session, item) pair a different last bit depending on how many sessions and items share the
call (measured; a one-row call takes another kernel still), so today's fp32 ranks already change at
fp32 near-ties with the chunk size. Here the score that decides a rank is pinned down: ``R(q, e)``, the
dot product of the fp32 vectors evaluated in float64 (each product ``q_k e_k`` is exact in float64;
the sum runs left to right, ``k = 0 .. d-1``, so the same pair always gets the same value, whatever chunk
it is in and whether numpy or C computes it). The
rank of target ``t`` is ``#{j in 1..n : not R(q, e_j) < R(q, e_t)}``: ties and NaN count against the
model, as everywhere. Both precisions compute exactly this number; they only differ in how much of the
catalogue must be re-scored in float64 to decide it.

**The fast part and the bound.** A chunk of sessions is scored with one matrix product into a
preallocated buffer: fp32 (MKL), or bf16 inputs (oneDNN; fp32 accumulation, bf16 output). Item ``j`` is
decided from its product value ``x_j`` alone when ``x_j`` is farther from the target's exact score
``R_t`` than the product's error can reach; only the items inside that band are re-scored in float64.

In bf16 each row is centred on its target: the product is ``[q^, -c] . [e^, 1] = q^ . e^ - c`` with
``c = bf16(R_t)`` (one more column, no measurable cost), so the values near the target are small numbers
and the bf16 rounding of the *output* is far finer there than at the score's own magnitude.

For one session (``q``) and one item (``e``), with ``q^ = bf16(q)``, ``e^ = bf16(e)``,
``dq = q - q^`` and ``de = e - e^`` (both exact in fp32), ``s = q . e`` (exact, real numbers), and ``a``
the fp32 accumulator of the product before its output is rounded:

1. inputs: ``q^ . e^ - s = -dq . e - q . de + dq . de``, so by Cauchy-Schwarz
   ``|q^ . e^ - s| <= |dq| |e| + |q| |de| + |dq| |de|``, with the *measured* norms (about 0.4 u |q| for a
   vector rounded to bf16, u = 2^-8, rather than the worst case u |q|);
2. accumulation: the products ``q^_k e^_k`` (and ``-c * 1``) are exact in fp32 (8 + 8 significant bits;
   the guards below rule out overflow), and any order of fp32 additions of these ``d + 1`` terms errs by
   at most ``gamma_{d+1}(2^-24) (sum_k |q^_k e^_k| + |c|) <= gamma_{d+1} (|q^| |e^| + |c|)``,
   ``gamma_m(u) = m u / (1 - m u)`` (Higham, Accuracy and Stability of Numerical Algorithms, 3.1). This
   holds for AVX512-BF16 (``vdpbf16ps`` adds the two products of a pair one after the other in fp32),
   AMX (fp32 accumulators) and a plain fp32 FMA loop alike;
3. the reference: ``|R - s| <= gamma_d(2^-53) |q| |e|``;
4. subnormals: bf16 dot-product instructions treat subnormal inputs as zero and flush subnormal results;
   each of the at most ``2d + 3`` such events moves the sum by less than ``2^-126`` times a factor bounded
   by the norms, so the slack ``eta = 2^-125 (2d + 3 + sqrt(d) (|q^| + |e^|max))`` covers them;
5. the output: ``a`` is rounded to the bf16 ``x``. Any faithful rounding leaves ``pred(x) < a < succ(x)``
   (neighbouring bf16 values), so no bound on it is needed: the thresholds are moved to bf16 values.

With ``E_b = |dq| M + |q| dM + |dq| dM + gamma_{d+1}(2^-24) (|q^| M^ + |c|) + gamma_d(2^-53) |q| M + eta``
(plus a few float64 roundings of forming the thresholds), where ``M``, ``dM``, ``M^`` are the largest
``|e_j|``, ``|de_j|``, ``|e^_j|`` over the catalogue (computed in fp32 and rounded up),
``|(R_j - c) - a_j| <= E_b`` for every item. Let ``lo`` be the largest bf16 value ``<= R_t - c - E_b`` and
``hi`` the successor of the smallest bf16 value ``>= R_t - c + E_b``. Then

* ``x_j < lo``  =>  ``a_j < succ(x_j) <= lo <= R_t - c - E_b``  =>  ``R_j < R_t``: below, not counted;
* ``x_j >= hi`` =>  ``a_j > pred(x_j) >= R_t - c + E_b``  =>  ``R_j > R_t``: above, counted;
* otherwise ``R_j`` is computed in float64 and compared with ``R_t``.

The fp32 product is the same argument with ``dq = de = 0``, ``c = 0``, the fp32 accumulation bound
(``gamma_d(2^-24) |q| M``) and fp32 thresholds; its band is a few parts per million of ``|q| M`` wide, so
it holds the target and almost nothing else. In bf16 the band is about ``2 (|dq| M + |q| dM)``, ~1% of
``|q| M``: a trained model's targets sit in the sparse top of the score distribution and few items share
their band (a few dozen to a few hundred of 100,000); an untrained model's targets sit in the dense middle,
where ~2% of the catalogue does, and bf16 then runs at about the fp32 rate. A session whose band holds
more than a quarter of the catalogue (scores crowded within bf16 rounding of each other) is scored again
in fp32. Using the largest item norms rather than each item's own widens the band only for tables with
very unequal norms (never for NISER and MSGAT, whose items are unit vectors).

Guards keep the arithmetic inside that argument: an item vector with a non-finite entry or a norm above
``2^50`` is left out of the bound and always re-scored in float64 (so a NaN score still counts against the
model); a session whose query is not finite ranks its target last (its every score is NaN or infinite,
as today); a session whose query norm or target score is beyond ``2^50`` / ``2^100`` is ranked entirely in
float64. As a run-time check of the arithmetic model, each target's own product value must fall inside
its band; a violation raises rather than returning a wrong rank.

**Counting.** The product is the only pass over the ``(B, n)`` matrix that does arithmetic. The rest is done
by two C loops (``_scan.c``, compiled on first use by :mod:`agentrec.core.native`): the product is computed a
block of columns at a time (4 MB), and one pass per row of the block, while it is in the cache, counts the
values at or above ``hi`` and lists the band's columns; the bands are then scored in float64 (``R`` as
defined above, with the next items' rows prefetched). Without a C compiler (or with
``AGENTREC_NATIVE=0``) numpy does the same: rows are compared with their ``lo`` a block at a time (bf16
values as 16-bit integers, which order like the floats for a fixed sign; centring makes every ``lo``
negative and every ``hi`` positive), the candidates of the block are found through its non-zero 8-byte
words and checked against ``hi`` from their own values, and a row with thousands of candidates (a deep
target) is compared with ``hi`` over the row instead. Both give the same ranks. With several ``threads``
each ranks whole chunks on its own, with one torch thread for its product (numpy and the C loops release
the GIL).
"""

from __future__ import annotations

import copy
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from agentrec.core import native
from agentrec.core.metrics import (
    DEFAULT_KS,
    RankingResult,
    _progress,
    metrics_from_ranks,
)

PRECISIONS = ("fp32", "bf16")
U32 = 2.0**-24  # unit roundoff of fp32
U64 = 2.0**-53  # of float64
HUGE_NORM = 2.0**50  # vectors beyond this leave the fast path (their products could overflow fp32)
HUGE_SCORE = 2.0**100  # a target score beyond this cannot be bracketed by bf16/fp32 thresholds
CACHE_MB = 32  # the product buffer's target size: a last-level cache
BLOCK_BYTES = 4 * 2**20  # a bf16 product block (chunk rows x columns) that the C scan reads back from the cache
MIN_COLUMNS = 1024  # and at least this many columns per block (fewer: the calls' own cost shows)
EXACT_STEP = 2048  # (session, item) pairs re-scored in float64 at once: ~3 MB of scratch
FEW = 4096  # a row with more candidates (about: counted in non-zero 8-byte words) is compared with `hi` whole


def gamma(d: int, u: float) -> float:
    """Higham's ``gamma_d = d u / (1 - d u)``: the relative error bound of a d-term dot product."""
    return d * u / (1.0 - d * u)


def product_rows(n_items: int, bytes_per_score: int, memory_budget_mb: float) -> int:
    """Sessions per chunk: a ``(B, n_items + 1)`` product buffer of about ``CACHE_MB`` (at least 128 rows, for
    an efficient product), never above the budget (and at least 2 rows).

    A buffer the size of a last-level cache is still partly there when its rows are compared, and costs
    fewer page faults; a larger one makes the product no faster (measured, benchmarks/eval_speed.py).
    """
    row = (n_items + 1) * bytes_per_score
    budget = memory_budget_mb * 2**20 // row
    return int(max(2, min(budget, max(128, CACHE_MB * 2**20 // row), 4096)))


# ------------------------------------------------------------------------------------------ float64 reference
class ExactScores:
    """``R(q, e_j)``: fp32 vectors' dot products in float64, the same value for a pair in any batch.

    The sum runs left to right: ``s = q_0 e_0``, then ``s = s + q_k e_k`` for ``k = 1 .. d-1``. Each product
    of two fp32 numbers is exact in float64, so that order alone fixes the value: it does not depend on the
    batch, the position in it, whether the query is shared (``row``) or not (``pairs``), or whether the C loop
    of ``_scan.c`` (:func:`agentrec.core.native.exact_pairs`, used when it could be built) or numpy computes it;
    ``tests/test_ranking.py`` checks all of that. Not thread-safe: one instance per thread.
    """

    def __init__(self, table: np.ndarray, step: int = EXACT_STEP):
        self.table = np.ascontiguousarray(table, np.float32)  # (N + 1, d), the model's values (non-finite rows too)
        d = table.shape[1]
        self.step = step
        self.kernel = native.exact_pairs()
        self._g32 = np.empty((step, d), np.float32)
        self._products = np.empty((d, step), np.float64)  # numpy's path: (d, m), summed over its rows in order

    def row(self, q64: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``(m,)`` float64 scores of one ``(d,)`` float64 query against ``items``."""
        return self.pairs(np.asarray(q64, np.float64)[None, :], np.zeros(len(items), np.int64), items)

    def pairs(self, q64: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``(P,)`` float64 scores of ``q64[rows[p]]`` against ``items[p]``."""
        q64 = np.ascontiguousarray(q64, np.float64)
        rows, items = np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(items, np.int64)
        out = np.empty(len(items), np.float64)
        d = self.table.shape[1]
        if self.kernel is not None:
            self.kernel(self.table.ctypes.data, d, q64.ctypes.data, q64.shape[1], rows.ctypes.data, items.ctypes.data,
                        len(items), out.ctypes.data)
            return out
        for s in range(0, len(items), self.step):
            m = min(self.step, len(items) - s)
            g32, products, total = self._g32[:m], self._products[:, :m], out[s : s + m]
            np.take(self.table, items[s : s + m], axis=0, out=g32)
            np.multiply(g32.T, q64[rows[s : s + m]].T, out=products)  # exact: fp32 times fp32, in float64
            if d == 0:
                total[:] = 0.0
                continue
            total[:] = products[0]
            for k in range(1, d):
                total += products[k]
        return out


def _not_below(scores: np.ndarray, target: float) -> int:
    """``#{j : not scores_j < target}``: ties and NaN count against the model."""
    return len(scores) - int(np.count_nonzero(scores < target))


# ------------------------------------------------------------------------------------ directed rounding
def _f32_down(x: np.ndarray) -> np.ndarray:
    """Largest fp32 ``<= x`` (float64 in)."""
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) > x, np.nextafter(y, np.float32(-np.inf)), y)


def _f32_up(x: np.ndarray) -> np.ndarray:
    """Smallest fp32 ``>= x``."""
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) < x, np.nextafter(y, np.float32(np.inf)), y)


def _bf16_bits_value(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _bf16_nearest(x: np.ndarray) -> np.ndarray:
    """Bits (uint16) of fp32 ``x`` rounded to the nearest bf16, ties to even (finite ``x``)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)


def _bf16_down(y: np.ndarray) -> np.ndarray:
    """Bits (uint16) of the largest bf16 ``<= y`` (fp32 in)."""
    bits = (y.view(np.uint32) >> 16).astype(np.uint16)  # truncation: toward zero
    return np.where(_bf16_bits_value(bits) > y, bits + np.uint16(1), bits)  # only a negative y: one step away from 0


def _bf16_up(y: np.ndarray) -> np.ndarray:
    """Bits of the smallest bf16 ``>= y``."""
    bits = (y.view(np.uint32) >> 16).astype(np.uint16)
    return np.where(_bf16_bits_value(bits) < y, bits + np.uint16(1), bits)  # only a positive y


def _bf16_next_up(bits: np.ndarray) -> np.ndarray:
    """The next larger bf16 value (finite in, never NaN)."""
    negative = bits >= 0x8000
    return np.where(bits == 0x8000, np.uint16(1), np.where(negative, bits - np.uint16(1), bits + np.uint16(1)))


# ------------------------------------------------------------------------------------------- the buffer
class _Product:
    """One precision's product: the low-precision table, its bound terms and how to compare its values."""

    def __init__(self, precision: str, table, in_product: np.ndarray, norms):
        """``table``: ``(N + 1, d)`` fp32; ``in_product``: the rows whose norms bound the product's error
        (the others' columns are overwritten with -inf, so whatever their values give stays there);
        ``norms``: ``(N + 1,)`` fp32 row norms."""
        import torch

        self.precision = precision
        self.dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        d = self.d = table.shape[1]
        # bf16 rows are centred on their target: [q^, -c] . [e^, 1] = q^ . e^ - c, so the values near the
        # target are small and their bf16 rounding is fine (module docstring)
        self.centred = precision == "bf16"
        if self.centred:
            stored = torch.empty(len(table), d + 1, dtype=self.dtype)
            stored[:, :d] = table
            stored[:, d] = 1.0
        else:
            stored = table
        self.table = stored.t()  # (d [+ 1], N + 1) view of a contiguous table
        # the largest norms over the catalogue, computed in fp32 and rounded up: a norm in fp32 errs by at
        # most (d + 2) u relative, and by 2^-60 sqrt(d) where squares underflow
        up = lambda value: (float(value) * (1 + (d + 2) * U32) + 2.0**-60 * math.sqrt(d)) * (1 + 2**-20)  # noqa: E731
        keep = torch.from_numpy(in_product)
        self.norm = self.norm_low = up(torch.where(keep, norms, 0.0).max())
        self.norm_delta = 0.0
        if self.centred:
            for start in range(0, len(table), 16384):  # blocks: small temporaries
                block = slice(start, start + 16384)
                rounded = stored[block, :d].float()
                low = torch.linalg.vector_norm(rounded, dim=1)
                # e - bf16(e) is exact in fp32 (it is the low half of e's significand)
                delta = torch.linalg.vector_norm(table[block] - rounded, dim=1)
                self.norm_low = max(self.norm_low, up(torch.where(keep[block], low, 0.0).max()))
                self.norm_delta = max(self.norm_delta, up(torch.where(keep[block], delta, 0.0).max()))

    def inputs(self, q: np.ndarray, shift: np.ndarray):
        """The product's left side for ``(B, d)`` fp32 queries: ``q`` itself, or bf16 ``[q^, -shift]``.

        Built in numpy: on a machine whose other cores are busy, every small torch operation waits for its
        OpenMP threads to be scheduled; only the product itself is worth that.
        """
        import torch

        if not self.centred:
            return torch.from_numpy(q)
        bits = np.empty((len(q), self.d + 1), np.uint16)
        bits[:, : self.d] = _bf16_nearest(q)
        bits[:, self.d] = _bf16_nearest((-shift).astype(np.float32))  # -c is a bf16 value: exact
        return torch.from_numpy(bits).view(torch.bfloat16)

    def shift(self, exact_target: np.ndarray) -> np.ndarray:
        """``c_b``: a bf16 value next to each target's exact score (0 for fp32), as float64."""
        if not self.centred:
            return np.zeros(len(exact_target))
        return _bf16_bits_value(_bf16_nearest(exact_target.astype(np.float32))).astype(np.float64)

    def bounds(self, q: np.ndarray, shift: np.ndarray, exact_target: np.ndarray) -> np.ndarray:
        """``(B,)`` float64 ``E_b`` for ``(B, d)`` fp32 queries: how far a product value can be from ``R - c_b``
        (module docstring)."""
        d = self.d
        q64 = q.astype(np.float64)
        low = _bf16_bits_value(_bf16_nearest(q)).astype(np.float64) if self.centred else q64

        def norm(x):
            return np.sqrt(np.einsum("ij,ij->i", x, x))

        qn, qln, dqn = norm(q64), norm(low), norm(q64 - low)
        m, ml, dm = self.norm, self.norm_low, self.norm_delta
        terms = d + 1 if self.centred else d
        accumulate = gamma(terms, U32) * (qln * ml + np.abs(shift))
        reference = gamma(d, U64) * qn * m
        subnormal = 2.0**-125 * (2 * terms + 3 + math.sqrt(d) * (qln + ml))
        bound = (dqn * m + qn * dm + dqn * dm + accumulate + reference + subnormal) * (1 + 2**-20)
        # the thresholds R_t - c_b -+ E_b are formed in float64: a few more roundings
        return bound + 8 * U64 * (np.abs(exact_target) + np.abs(shift) + bound)

    def thresholds(self, centre: np.ndarray, bound: np.ndarray):
        """Per row ``(lo, hi)`` around ``centre = R_t - c_b``: product values ``< lo`` are below, ``>= hi`` above.

        Returns them as :meth:`ge` takes them (fp32 values, or bf16 bit patterns as uint16), and as fp32 values.
        """
        low, high = centre - bound, centre + bound
        if self.precision == "fp32":
            lo = _f32_down(low)
            hi = np.nextafter(_f32_up(high), np.float32(np.inf))
            return lo, hi, lo, hi
        lo_bits = _bf16_down(_f32_down(low))
        hi_bits = _bf16_next_up(_bf16_up(_f32_up(high)))
        return lo_bits, hi_bits, _bf16_bits_value(lo_bits), _bf16_bits_value(hi_bits)

    def views(self, buffer):
        """numpy views of the torch buffer that :meth:`ge` compares (bf16: as int16 and as uint16)."""
        import torch

        if self.precision == "fp32":
            return (buffer.numpy(),)
        signed = buffer.view(torch.int16).numpy()
        return signed, signed.view(np.uint16)

    def ge_rows(self, views, first: int, thresholds: np.ndarray, out: np.ndarray) -> None:
        """``out = buffer[first : first + k] >= thresholds[:, None]``, ``k = len(thresholds)`` rows.

        bf16 values are compared as 16-bit integers: a positive threshold's bits order like the values as
        int16; for zero or a negative threshold, ``x >= t`` holds unless the uint16 bits are those of a more
        negative number. (Centred on their targets, nearly all rows have a negative ``lo`` and a positive
        ``hi``; a block that mixes both is compared a row at a time.)
        """
        k = len(thresholds)
        if self.precision == "fp32":
            np.greater_equal(views[0][first : first + k], thresholds[:, None], out=out)
            return
        positive = (thresholds > 0) & (thresholds < 0x8000)
        if positive.all():
            np.greater_equal(views[0][first : first + k], thresholds.astype(np.int16)[:, None], out=out)
        elif not positive.any():
            np.less_equal(views[1][first : first + k], np.maximum(thresholds, 0x8000)[:, None], out=out)
        else:
            for j in range(k):
                self.ge_rows(views, first + j, thresholds[j : j + 1], out[j : j + 1])

    def ge_entries(self, views, first: int, flat: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """``buffer[first:].ravel()[flat] >= thresholds`` (as :meth:`ge_rows`), a few entries."""
        values = views[0][first:].reshape(-1)[flat]
        if self.precision == "fp32":
            return values >= thresholds
        positive = (thresholds > 0) & (thresholds < 0x8000)
        if positive.all():
            return values >= thresholds.astype(np.int16)
        unsigned = values.view(np.uint16)
        return np.where(positive, values >= thresholds.astype(np.int16), unsigned <= np.maximum(thresholds, 0x8000))


# --------------------------------------------------------------------------------------------- scanning
def _bf16_keys(bits: np.ndarray) -> np.ndarray:
    """16-bit keys of bf16 thresholds (as :meth:`_Product.ge_rows` takes them) that order like the values,
    as ``_scan.c`` keys the buffer: ``x >= t`` exactly when ``key(x) >= key(t)``, with ge_rows' treatment of
    zero (``+0`` as ``-0``: both ``-0`` and ``+0`` are at or above it) and of NaN."""
    bits = np.asarray(bits, np.uint16)
    t = np.where((bits > 0) & (bits < 0x8000), bits, np.maximum(bits, np.uint16(0x8000))).astype(np.uint16)
    return t ^ ((t.view(np.int16) >> 15).view(np.uint16) | np.uint16(0x8000))


def _true_bytes(mask: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(mask)`` for a bool array of whole 8-byte words with few True: found through its non-zero
    words, an eighth of the array to search."""
    words = mask.view(np.uint64)
    nonzero = np.flatnonzero(words)
    inside = np.flatnonzero(words[nonzero].view(bool))
    return nonzero[inside >> 3] * 8 + (inside & 7)


class _Scanner:
    """Per thread: count each row's sure-above items and decide its band in float64, a block of rows at once."""

    def __init__(self, table: np.ndarray, width: int):
        self.exact = ExactScores(table)
        self.width = width
        self.block = int(max(1, min(256, 2**21 // width)))  # rows whose comparison mask fills ~2 MB (an L2 cache)
        self.mask = np.empty((self.block, width), bool)
        self.mask2 = np.zeros(-(-width // 8) * 8, bool)  # one row, whole 8-byte words (the tail stays False)
        self.words = np.empty(self.block * width // 8 + 1, bool)
        self.band = np.empty(1 << 20, np.int32)  # the C scan's band columns (grown to `wide` + 1 when needed)

    def rows(self, product: _Product, views, rows, lo, hi, q64, targets, extra, *, wide: int):
        """Ranks of ``rows`` (buffer row indices); a row whose band holds more than ``wide`` items gets -1.

        Per row, one comparison with ``lo`` finds the candidates (everything else is below the target). Up
        to ``FEW`` of them, their own values are compared with ``hi``; beyond (a deep target), the row is
        compared with ``hi`` too. The band left (``lo <= x < hi``, the target among it) is scored in float64
        with the targets, and compared with the target's score. Returns ``(ranks, rescored)``: the ranks
        (float64) and how many pairs were scored in float64.
        """
        ranks = np.empty(len(rows), np.float64)
        rescored = 0
        done = 0
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):  # consecutive rows: one comparison
            for s in range(0, len(run), self.block):
                part = run[s : s + self.block]
                ranks[done : done + len(part)], count = self._block(product, views, part, lo, hi, q64, targets,
                                                                    extra, wide=wide)
                done += len(part)
                rescored += count
        return ranks, rescored

    def scan(self, kernel, buffer: np.ndarray, rows: np.ndarray, lo_key, hi_key, *, wide: int):
        """One C pass (``_scan.c``) over ``rows`` of a ``(B, w)`` product block: fp32, or bf16 as uint16 (with
        ``lo_key`` and ``hi_key`` the thresholds' keys; fp32: the thresholds themselves).

        Returns ``(above, count, which, items)``: per row (position in ``rows``) the values at or above its
        ``hi`` and the length of its band (-1: longer than ``wide``), and the band's columns (``items``, of the
        block) with their row positions (``which``).
        """
        n = len(rows)
        above, start, count = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
        if len(self.band) <= wide:  # room for the longest band kept, so that every call finishes a row
            self.band = np.empty(wide + 1, np.int32)
        which, items = [], []
        done = 0
        while done < n:
            stop = kernel(buffer.ctypes.data, buffer.strides[0] // buffer.itemsize, buffer.shape[1], rows.ctypes.data,
                          done, n,
                          lo_key.ctypes.data, hi_key.ctypes.data, wide, above.ctypes.data, start.ctypes.data,
                          count.ctypes.data, self.band.ctypes.data, len(self.band))
            if stop <= done:
                raise RuntimeError("the C scan made no progress")  # cannot happen: the band holds `wide` + 1
            part = np.arange(done, stop)
            kept = part[count[part] > 0]  # the kept bands lie one after another at the start of `band`
            which.append(np.repeat(kept, count[kept]))
            items.append(self.band[: int(count[kept].sum())].astype(np.int64))
            done = stop
        return above, count, np.concatenate(which), np.concatenate(items)

    def decide(self, rows, above, which, items, q64, targets, extra):
        """Ranks of ``rows`` (buffer rows) from their sure-above counts and their bands (``items`` of row
        position ``which``), scored in float64 with each row's items outside the product and, last, its target
        (the reference, in the same call). Returns ``(ranks, rescored)``."""
        n = len(rows)
        which, items = [which], [items]
        if extra is not None:
            for j, i in enumerate(rows):
                if len(extra[i]):
                    which.append(np.full(len(extra[i]), j))
                    items.append(extra[i])
        which.append(np.arange(n))
        items.append(targets[rows])
        which, items = np.concatenate(which), np.concatenate(items)
        scores = self.exact.pairs(q64, rows[which], items)
        m = len(scores) - n
        reference = scores[m:]
        not_below = np.bincount(which[:m], weights=~(scores[:m] < reference[which[:m]]), minlength=n)
        return above + not_below, m

    def _block(self, product, views, part, lo, hi, q64, targets, extra, *, wide):
        k, width = len(part), self.width  # part: consecutive buffer rows
        mask = self.mask[:k]
        product.ge_rows(views, part[0], lo[part], mask)
        ranks = np.zeros(k, np.float64)
        # the 8-byte words of the block's mask that hold a candidate (an eighth of the mask: cheap to search);
        # a row with many is deep
        flat = mask.reshape(-1)
        whole = len(flat) // 8 * 8
        words = np.flatnonzero(np.not_equal(flat[:whole].view(np.uint64), 0, out=self.words[: whole // 8]))
        bounds = np.minimum(np.arange(k + 1) * width // 8, whole // 8)
        per_row = np.diff(np.searchsorted(words, bounds))
        deep = np.flatnonzero(per_row > FEW // 2)
        is_deep = np.zeros(k, bool)
        is_deep[deep] = True
        rescored = 0
        for j in deep:  # a deep target: count the sure-above items over the row, score its band on its own
            i = part[j]
            row_mask = self.mask2[:width]
            product.ge_rows(views, i, hi[i : i + 1], row_mask[None])
            above = int(np.count_nonzero(row_mask))
            np.greater(mask[j], row_mask, out=row_mask)  # candidates that are not sure-above
            band = _true_bytes(self.mask2)
            if len(band) > wide:
                ranks[j] = -1.0
                continue
            more = extra[i] if extra is not None else band[:0]
            scores = self.exact.row(q64[i], np.concatenate([band, more, targets[i : i + 1]]))  # the target last
            ranks[j] = above + _not_below(scores[:-1], scores[-1])
            rescored += len(scores) - 1
        if len(deep):  # the deep rows are settled: drop the words that lie wholly inside one
            first, last = words * 8 // width, (words * 8 + 7) // width
            words = words[~(is_deep[first] & is_deep[np.minimum(last, k - 1)])]
        # the other rows' candidates: the bytes of those words (few), then the tail that is not a whole word
        inside = np.flatnonzero(flat[:whole].view(np.uint64)[words].view(bool))
        where = words[inside >> 3] * 8 + (inside & 7)
        if whole < len(flat):
            where = np.concatenate([where, whole + np.flatnonzero(flat[whole:])])
        row = where // width
        if len(deep):
            keep = ~is_deep[row]
            where, row = where[keep], row[keep]
        items = where - row * width
        # sure-above among them, from their own values
        at = part[row]
        sure = product.ge_entries(views, part[0], where, hi[at])
        above = np.bincount(row[sure], minlength=k)
        live = np.flatnonzero(~is_deep)
        position = np.full(k, -1)
        position[live] = np.arange(len(live))
        band = ~sure
        ranks[live], count = self.decide(part[live], above[live], position[row[band]], items[band], q64, targets, extra)
        return ranks, rescored + count


# ---------------------------------------------------------------------------------------------- ranking
def rank_products(
    query_chunk: Callable[[np.ndarray], "object"],
    table,
    samples,
    n_items: int,
    *,
    precision: str = "fp32",
    threads: int | None = None,
    ks=DEFAULT_KS,
    exclude_history: bool = False,
    memory_budget_mb: float = 256.0,
    progress: bool = False,
    desc: str = "evaluate",
) -> RankingResult:
    """Rank every sample's target against the full catalogue when scores are ``query @ table.T``.

    Args:
        query_chunk: maps an index array of samples to their ``(len(index), d)`` float query vectors.
        table: ``(n_items + 1, d)`` float tensor of item vectors; row 0 (padding) is never ranked.
        samples: ``agentrec.data.dataset.Samples``.
        n_items: catalogue size (ids 1..n_items).
        precision: ``"fp32"`` or ``"bf16"``: the product's input precision. Both give the same ranks
            (see the module docstring); bf16 is faster where the CPU multiplies bf16 natively.
        threads: threads that rank chunks of sessions side by side, each with its own product (one torch
            thread) and count; None: as many as torch's setting. With several, ``query_chunk`` is called from
            them (a chunk each at a time): a model's forward pass without gradients is safe so.
        ks, exclude_history, memory_budget_mb, progress, desc: as :func:`agentrec.core.metrics.rank_samples`;
            the budget bounds the ``(B, n_items + 1)`` product buffers of all threads together.

    Returns:
        A ``RankingResult`` whose ``extra`` holds ``nonfinite_targets`` (as ``rank_samples``), ``precision``,
        ``threads``, ``chunk_rows``, ``rescored`` (pairs scored in float64), ``fp32_rows`` (bf16 rows
        scored again in fp32) and ``product_seconds`` (time in the matrix products).
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    started = time.perf_counter()
    before = torch.get_num_threads()
    workers = threads or before
    # Each thread ranks whole chunks on its own (product with one torch thread, then its scan): two threads
    # that shared each product and then each scan waited on each other, and OpenMP's threads kept spinning
    # on the cores after the product while the scan wanted them (measured: the scan took longer on 2 threads
    # than on 1). The memory budget is shared among the threads' buffers.
    torch.set_num_threads(1 if workers > 1 else workers)
    try:
        with torch.no_grad():
            first_lane = _Ranker(table, n_items, precision=precision, memory_budget_mb=memory_budget_mb / workers)
            lanes = [first_lane] + [first_lane.lane() for _ in range(workers - 1)]
            n = len(samples)
            ranks = np.empty(n, np.float64)
            bar = _progress(n, desc) if progress else None
            chunks = (np.arange(first, min(n, first + first_lane.rows)) for first in range(0, n, first_lane.rows))
            if workers == 1:
                for index in chunks:
                    ranks[index] = first_lane.chunk(query_chunk(index), samples, index,
                                                    exclude_history=exclude_history)
                    if bar is not None:
                        bar.update(len(index))
            else:
                _rank_in_lanes(lanes, chunks, query_chunk, samples, ranks, exclude_history=exclude_history, bar=bar)
            if bar is not None:
                bar.close()
    finally:
        torch.set_num_threads(before)
    stats = {key: sum(lane.stats[key] for lane in lanes) for key in first_lane.stats}
    extra = {**stats, "precision": precision, "threads": workers, "chunk_rows": first_lane.rows}
    return RankingResult(ranks=ranks, metrics=metrics_from_ranks(ranks, ks), exclude_history=exclude_history,
                         seconds=time.perf_counter() - started, extra=extra)


def _rank_in_lanes(lanes, chunks, query_chunk, samples, ranks, *, exclude_history: bool, bar) -> None:
    """Rank ``chunks`` over one thread per lane: a free lane takes the next chunk, makes its queries (the
    model's forward pass, with one torch thread) and ranks it; ``ranks`` is filled as chunks finish."""
    import torch

    def ranked(lane, index):
        torch.set_num_threads(1)  # this thread's own OpenMP setting: one thread for its products
        with torch.no_grad():  # autograd's mode is per thread
            return lane.chunk(query_chunk(index), samples, index, exclude_history=exclude_history)

    free = list(lanes)
    pending = []
    with ThreadPoolExecutor(len(lanes)) as pool:
        try:
            for index in chunks:
                if not free:  # every lane busy: wait for the oldest chunk
                    job, done, lane = pending.pop(0)
                    ranks[done] = job.result()
                    free.append(lane)
                    if bar is not None:
                        bar.update(len(done))
                lane = free.pop()
                pending.append((pool.submit(ranked, lane, index), index, lane))
            for job, done, _ in pending:
                ranks[done] = job.result()
                if bar is not None:
                    bar.update(len(done))
        finally:
            for job, _, _ in pending:
                job.cancel()


class _Ranker:
    """The state of one evaluation: the prepared tables, the product buffer, the counting threads."""

    def __init__(self, table, n_items: int, *, precision: str, memory_budget_mb: float):
        import torch

        table = torch.as_tensor(table).detach().float().cpu().contiguous()
        width, self.d = table.shape
        if width != n_items + 1:
            raise ValueError(f"item table has {width} rows, expected {n_items + 1} (row 0 is padding)")
        self.table, self.n_items, self.width = table, n_items, width
        self.precision, self.memory_budget_mb = precision, memory_budget_mb
        # an item with a NaN or infinite entry, or a huge norm, is re-scored in float64 for every session
        # (its norm compares False); its product column is overwritten with -inf
        norms = torch.linalg.vector_norm(table, dim=1)
        self.good = (norms <= HUGE_NORM).numpy()
        self.good[0] = True  # padding: -inf in every buffer, never a candidate
        self.bad_items = np.flatnonzero(~self.good).astype(np.int64)
        self.in_product = self.good.copy()
        self.in_product[0] = False  # its vector plays no part in the bound
        self.norms = norms
        self.product = _Product(precision, table, self.in_product, norms)
        self.rows = product_rows(n_items, 4 if precision == "fp32" else 2, memory_budget_mb)
        self.buffer = torch.empty(self.rows, width, dtype=self.product.dtype)
        self.views = self.product.views(self.buffer)
        self.fp32 = self.product if precision == "fp32" else None  # bf16 rows with too wide a band: built on use
        self.fp32_buffer = None
        self.scanner = _Scanner(table.numpy(), width)
        self.exact = self.scanner.exact
        self.blocks = {}  # precision -> the C scan's block of the product (built on use)
        # a bf16 band wider than `wide` (a catalogue whose scores crowd within bf16 rounding of each other):
        # the rows are scored again in fp32, in one product, which beats re-scoring a quarter of it in float64
        self.wide = max(4096, width // 4) if precision == "bf16" else width
        self.stats = {"nonfinite_targets": 0, "rescored": 0, "fp32_rows": 0, "product_seconds": 0.0}

    def lane(self) -> _Ranker:
        """Another ranker over the same prepared tables, with buffers, a scanner and counts of its own: for
        one more thread."""
        import torch

        other = copy.copy(self)
        other.buffer = torch.empty_like(self.buffer)
        other.views = self.product.views(other.buffer)
        other.fp32 = self.product if self.precision == "fp32" else None
        other.fp32_buffer = None
        other.scanner = _Scanner(self.table.numpy(), self.width)
        other.exact = other.scanner.exact
        other.blocks = {}
        other.stats = dict.fromkeys(self.stats, 0) | {"product_seconds": 0.0}
        return other

    def chunk(self, queries, samples, index: np.ndarray, *, exclude_history: bool) -> np.ndarray:
        """Ranks of ``samples[index]`` from their ``(B, d)`` queries."""
        import torch

        b = len(index)
        # numpy from here on, but for the product: small torch operations wait for OpenMP threads
        q = np.ascontiguousarray(torch.as_tensor(queries).detach().cpu().float().numpy())
        if q.shape != (b, self.d) or b > self.rows:
            raise ValueError(f"query chunk has shape {tuple(q.shape)}, expected {(b, self.d)} with at most {self.rows} rows")
        targets = np.asarray(samples.target[index], dtype=np.int64)
        q64 = q.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            exact_target = self.exact.pairs(q64, np.arange(b), targets)
        history = None
        excluded = np.zeros(b, bool)
        if exclude_history:
            chunk = samples.subset(index)
            history = (np.repeat(np.arange(b), chunk.lengths), chunk.history.astype(np.int64))
            excluded[history[0][history[1] == targets[history[0]]]] = True
        ranks = np.empty(b, np.float64)
        ranks[excluded] = math.inf
        # a non-finite query makes every score NaN or infinite, the target's too: ranked last, as today
        broken = (~np.isfinite(q).all(1) | ~np.isfinite(exact_target)) & ~excluded
        ranks[broken] = self.n_items
        self.stats["nonfinite_targets"] += int(broken.sum())
        norm = np.sqrt(np.einsum("ij,ij->i", q64, q64))
        slow = ~(broken | excluded) & ((norm > HUGE_NORM) | (np.abs(exact_target) > HUGE_SCORE))
        fast = ~(broken | excluded | slow)
        extra = _extra_items(self.bad_items, b, history)

        live = np.flatnonzero(fast)
        got = self._ranked_by(self.product, self.buffer[:b], self.views, q, np.where(fast, exact_target, 0.0), live,
                              targets, q64, history, extra)
        ranks[live] = got
        again = live[got < 0]  # bands too wide in bf16: these rows again, in fp32
        if len(again):
            self.stats["fp32_rows"] += len(again)
            if self.fp32_buffer is None:
                self.fp32 = _Product("fp32", self.table, self.in_product, self.norms)
                rows = product_rows(self.n_items, 4, self.memory_budget_mb)
                self.fp32_buffer = torch.empty(rows, self.width, dtype=torch.float32)
            step = len(self.fp32_buffer)
            for s in range(0, len(again), step):
                part = again[s : s + step]
                buffer = self.fp32_buffer[: len(part)]
                ranks[part] = self._ranked_by(self.fp32, buffer, self.fp32.views(buffer), q[part], exact_target[part],
                                              np.arange(len(part)), targets[part], q64[part],
                                              _history_of(history, part, b), _subset(extra, part))
        for i in np.flatnonzero(slow):  # beyond the fast path's range: the whole row in float64
            items = np.arange(1, self.n_items + 1)
            if history is not None:
                items = items[~np.isin(items, history[1][history[0] == i])]
            with np.errstate(invalid="ignore", over="ignore"):
                ranks[i] = _not_below(self.exact.row(q64[i], items), exact_target[i])
            self.stats["rescored"] += len(items)
        return ranks

    def _ranked_by(self, product: _Product, buffer, views, q, exact_target, live, targets, q64, history, extra):
        """Ranks of the ``live`` rows of one product into ``buffer`` (-1: a band too wide for bf16)."""
        import torch

        if not len(live):
            return np.empty(0)
        kernel = native.scan_bf16() if product.precision == "bf16" else native.scan_f32()
        if kernel is not None:
            return self._ranked_in_blocks(kernel, product, q, exact_target, live, targets, q64, history, extra)
        clock = time.perf_counter()
        ranked = np.zeros(len(q), bool)
        ranked[live] = True
        shift = product.shift(exact_target)
        left = product.inputs(np.where(ranked[:, None], q, np.float32(0)), shift)  # others zeroed: no NaN, no overflow
        torch.matmul(left, product.table, out=buffer)
        self.stats["product_seconds"] += time.perf_counter() - clock
        _mask_columns(product, views, len(q), self.bad_items, history)
        bound = np.zeros(len(q))
        bound[live] = product.bounds(q[live], shift[live], exact_target[live])
        lo, hi, lo_value, hi_value = product.thresholds(exact_target - shift, bound)
        _check_targets(product, views, live[self.good[targets[live]]], targets, lo_value, hi_value)
        wide = self.wide if product is self.product else self.width
        ranks, rescored = self.scanner.rows(product, views, live, lo, hi, q64, targets, extra, wide=wide)
        self.stats["rescored"] += rescored
        return ranks


    def _ranked_in_blocks(self, kernel, product, q, exact_target, live, targets, q64, history, extra):
        """:meth:`_ranked_by` with the C scan: the product a block of columns at a time, each block scanned while
        it is still in the cache (and the block of the table with it), counts and bands summed over the blocks,
        then the bands scored in float64 (-1: a band too wide for bf16)."""
        import torch

        b = len(q)
        ranked = np.zeros(b, bool)
        ranked[live] = True
        shift = product.shift(exact_target)
        left = product.inputs(np.where(ranked[:, None], q, np.float32(0)), shift)  # others zeroed: no NaN, no overflow
        bound = np.zeros(b)
        bound[live] = product.bounds(q[live], shift[live], exact_target[live])
        lo, hi, lo_value, hi_value = product.thresholds(exact_target - shift, bound)
        if product.precision == "bf16":
            lo_scan, hi_scan = _bf16_keys(lo[live]), _bf16_keys(hi[live])
        else:
            lo_scan, hi_scan = np.ascontiguousarray(lo[live], np.float32), np.ascontiguousarray(hi[live], np.float32)
        wide = self.wide if product is self.product else self.width
        checked = live[self.good[targets[live]]]
        n = len(live)
        above, kept = np.zeros(n, np.int64), np.zeros(n, np.int64)
        which, items = [], []
        size = 2 if product.precision == "bf16" else 4
        columns = max(MIN_COLUMNS, BLOCK_BYTES // (size * b))
        block = self.blocks.get(product.precision)
        if block is None or len(block) < b * columns:
            block = self.blocks[product.precision] = torch.empty(self.rows * columns, dtype=product.dtype)
        for first in range(0, self.width, columns):
            last = min(self.width, first + columns)
            out = block[: b * (last - first)].view(b, last - first)
            clock = time.perf_counter()
            torch.matmul(left, product.table[:, first:last], out=out)
            self.stats["product_seconds"] += time.perf_counter() - clock
            compared = product.views(out)[0]  # float32, or bf16 as int16
            _mask_block(compared, first, last, self.bad_items, history)
            mine = checked[(targets[checked] >= first) & (targets[checked] < last)]
            _check_targets(product, (compared,), mine, targets - first, lo_value, hi_value)
            scanned = compared.view(np.uint16) if product.precision == "bf16" else compared
            count_above, count, at, columns_at = self.scanner.scan(kernel, scanned, live, lo_scan, hi_scan, wide=wide)
            above += count_above
            kept = np.where((count < 0) | (kept < 0), -1, kept + count)
            which.append(at)
            items.append(columns_at + first)
        ranks = np.full(n, -1.0)  # a band wider than `wide` (in a block or in all): again in fp32
        kept[kept > wide] = -1
        ok = np.flatnonzero(kept >= 0)
        which, items = np.concatenate(which), np.concatenate(items)
        keep = kept[which] >= 0
        position = np.full(n, -1)
        position[ok] = np.arange(len(ok))
        ranks[ok], rescored = self.scanner.decide(live[ok], above[ok], position[which[keep]], items[keep], q64,
                                                  targets, extra)
        self.stats["rescored"] += rescored
        return ranks


def _history_of(history, part: np.ndarray, b: int):
    """The ``(row, item)`` history pairs of rows ``part``, renumbered 0..len(part)-1."""
    if history is None:
        return None
    where = np.full(b, -1)
    where[part] = np.arange(len(part))
    keep = where[history[0]] >= 0
    return where[history[0][keep]], history[1][keep]


def _subset(extra, part: np.ndarray):
    return None if extra is None else [extra[i] for i in part]


def _mask_columns(product: _Product, views, b: int, bad_items, history) -> None:
    """Padding, items left out of the product, and (with exclusion) each row's history: -inf."""
    out = views[0][:b]
    minus_inf = -np.inf if product.precision == "fp32" else np.int16(-128)  # bf16 -inf: 0xFF80
    out[:, 0] = minus_inf
    if len(bad_items):
        out[:, bad_items] = minus_inf
    if history is not None and len(history[0]):
        out[history[0], history[1]] = minus_inf


def _mask_block(out: np.ndarray, first: int, last: int, bad_items, history) -> None:
    """:func:`_mask_columns` for columns ``first .. last - 1`` of a product (``out``: fp32, or bf16 as int16)."""
    minus_inf = -np.inf if out.dtype == np.float32 else np.int16(-128)  # bf16 -inf: 0xFF80
    if first == 0:
        out[:, 0] = minus_inf
    if len(bad_items):
        inside = bad_items[(bad_items >= first) & (bad_items < last)]
        out[:, inside - first] = minus_inf
    if history is not None and len(history[0]):
        inside = (history[1] >= first) & (history[1] < last)
        out[history[0][inside], history[1][inside] - first] = minus_inf


def _extra_items(bad_items, b, history):
    """Per row, the items outside the product that must be re-scored (bad items not in its history)."""
    if not len(bad_items):
        return None
    extra = [bad_items] * b
    if history is not None:
        rows, items = history
        for i in np.unique(rows[np.isin(items, bad_items)]):
            extra[i] = bad_items[~np.isin(bad_items, items[rows == i])]
    return extra


def _check_targets(product: _Product, views, live, targets, lo_value, hi_value) -> None:
    """Each target's own product value lies in its band, or the bound is broken: refuse to rank."""
    value = views[0][live, targets[live]]
    if product.precision != "fp32":
        value = _bf16_bits_value(value.view(np.uint16))
    inside = (value >= lo_value[live]) & (value < hi_value[live])
    if not inside.all():
        k = int(np.flatnonzero(~inside)[0])
        raise RuntimeError(f"a target's product value {value[k]!r} lies outside its rounding band "
                           f"[{lo_value[live][k]!r}, {hi_value[live][k]!r}): the product's arithmetic is not what "
                           "agentrec.core.ranking assumes; evaluate with precision='fp32' or the model's scorer")
