"""Evaluation protocols: how raw events become train / valid / test next-item samples.

Every protocol starts the same way: events are ordered by ``(user, timestamp, order)``, where
``order`` is the row's position in the source, so events with equal timestamps keep the order in
which the source lists them (the stated, stable tie rule). What differs is filtering, how sequences
are formed, and which positions of which sequences land in which split:

``leave-one-out``  per user: last item -> test, second-last -> valid, every earlier next item ->
                   train; history capped at ``max_history`` (RecBole's sequential setting).
``semsr``          SemSR's Amazon-Beauty protocol: drop users with <= 5 interactions, then items
                   seen < 5 times, then sequences shorter than 2; split *users* 80/10/10 (seeded);
                   every prefix of every sequence is a sample ("incremental sessions").
``gap``            per user, a new session starts after ``gap_s`` seconds of inactivity; sessions
                   shorter than 2 are dropped; the most recent sessions (by end time) are test, the
                   ones before them valid; every prefix is a sample.
``m2``             sessions given by the source (Amazon KDD Cup 2023 task 1): the most recent are
                   test, the ones before them valid; train samples are every prefix, valid and test
                   samples are the last item only (the M2 task).

Each function returns the prepared dataset pieces and appends its filtering steps, with counts and
reasons, to the stats.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from agentrec.core.errors import UsageError
from agentrec.core.options import COUNT, NON_NEGATIVE_INT, OptionError, Range, check_choice
from agentrec.data.dataset import Samples

logger = logging.getLogger(__name__)

TIE_RULE = "events are ordered by (user, timestamp); equal timestamps keep the order of the rows in the source file"


# Every protocol checks its settings when it is made, before any file is read; errors name the field
# (the CLI shows it as --max-history). A split share lies strictly between 0 and 1: an empty valid or
# test split is no dataset.
SHARE = Range(0, 1, low_open=True, high_open=True)
EVAL_POSITIONS = ("all", "last")


def _check_shares(valid_fraction: float, test_fraction: float | None) -> None:
    SHARE.check("valid_fraction", valid_fraction)
    SHARE.check("test_fraction", test_fraction)
    if test_fraction is not None and valid_fraction + test_fraction >= 1:
        raise OptionError("valid_fraction", f"plus the test fraction must be below 1 to leave training data, got "
                                            f"{valid_fraction:g} + {test_fraction:g}")


@dataclass
class LeaveOneOut:
    """RecBole-style leave-one-out per user."""

    max_history: int = 50  # most recent items kept in each history
    min_user_interactions: int = 3  # a user needs train, valid and test items
    name: str = field(default="leave-one-out", init=False)

    def __post_init__(self):
        COUNT.check("max_history", self.max_history)
        Range(3, integer=True, note="leave-one-out needs a train, a valid and a test item per user").check(
            "min_user_interactions", self.min_user_interactions)


@dataclass
class SemSR:
    """SemSR's Amazon-Beauty protocol (section 4 of the paper)."""

    min_user_interactions: int = 6  # "users having more than 5 reviews"
    min_item_count: int = 5  # "items that have a frequency less than 5" are dropped
    min_sequence_length: int = 2
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0  # user shuffle for the 80/10/10 split
    max_history: int = 50
    eval_positions: str = "all"  # "all" prefixes of valid/test users, or only the "last" item
    name: str = field(default="semsr", init=False)

    def __post_init__(self):
        for name in ("min_user_interactions", "min_item_count", "max_history"):
            COUNT.check(name, getattr(self, name))
        Range(2, integer=True, note="a sample needs a history item and a target").check(
            "min_sequence_length", self.min_sequence_length)
        _check_shares(self.valid_fraction, self.test_fraction)
        NON_NEGATIVE_INT.check("seed", self.seed)
        check_choice("eval_positions", self.eval_positions, EVAL_POSITIONS)


@dataclass
class GapSessions:
    """Sessions cut from user streams by an inactivity gap, split by time."""

    gap_s: int = 1800
    min_session_length: int = 2
    min_item_count: int = 1  # 5 reproduces the usual SR-GNN style filter
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    max_history: int = 50
    eval_positions: str = "all"
    name: str = field(default="gap", init=False)

    def __post_init__(self):
        COUNT.check("gap_s", self.gap_s)
        Range(2, integer=True, note="a sample needs a history item and a target").check(
            "min_session_length", self.min_session_length)
        COUNT.check("min_item_count", self.min_item_count)
        _check_shares(self.valid_fraction, self.test_fraction)
        COUNT.check("max_history", self.max_history)
        check_choice("eval_positions", self.eval_positions, EVAL_POSITIONS)


@dataclass
class GivenSessions:
    """The Amazon-M2 protocol: sessions as given, most recent ones as test."""

    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    test_sessions: int | None = None  # an exact count instead of test_fraction (SemSR: 10,000)
    min_session_length: int = 2
    max_history: int = 50
    name: str = field(default="m2", init=False)

    def __post_init__(self):
        _check_shares(self.valid_fraction, None if self.test_sessions is not None else self.test_fraction)
        COUNT.check("test_sessions", self.test_sessions)
        Range(2, integer=True, note="a sample needs a history item and a target").check(
            "min_session_length", self.min_session_length)
        COUNT.check("max_history", self.max_history)


PROTOCOLS = {"leave-one-out": LeaveOneOut, "semsr": SemSR, "gap": GapSessions, "m2": GivenSessions}


@dataclass
class Sequences:
    """Ordered item sequences in compressed-row form: sequence s is ``items[indptr[s]:indptr[s+1]]``."""

    indptr: np.ndarray  # int64 (S + 1,)
    items: np.ndarray  # int64 codes, either original-id codes or final item ids
    timestamp: np.ndarray  # int64, per event
    key: np.ndarray  # str (S,), user or session id

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def __len__(self) -> int:
        return len(self.key)

    def select(self, keep: np.ndarray) -> Sequences:
        """Keep the sequences where the boolean mask ``keep`` is True."""
        lengths = self.lengths[keep]
        event_keep = np.repeat(keep, self.lengths)
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        return Sequences(indptr, self.items[event_keep], self.timestamp[event_keep], self.key[keep])

    def drop_events(self, keep_event: np.ndarray) -> Sequences:
        """Remove single events (the mask is per event); sequences may become shorter or empty."""
        seq_of_event = np.repeat(np.arange(len(self)), self.lengths)
        lengths = np.bincount(seq_of_event[keep_event], minlength=len(self))
        indptr = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        return Sequences(indptr, self.items[keep_event], self.timestamp[keep_event], self.key)


class Steps:
    """Records each filtering step as it happens."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def record(self, step: str, reason: str, **counts) -> None:
        self.rows.append({"step": step, "reason": reason, **{k: int(v) for k, v in counts.items()}})
        logger.info("%s: %s %s", step, reason, counts)


def events_to_sequences(events: pd.DataFrame) -> tuple[Sequences, np.ndarray]:
    """Order events by (user, timestamp, order) and group them into per-user sequences.

    Returns the sequences (items as codes) and the original ids indexed by code.
    """
    ordered = events.sort_values(["user", "timestamp", "order"], kind="stable")
    codes, originals = pd.factorize(ordered["item"], sort=False)
    users = ordered["user"].to_numpy()
    boundaries = np.flatnonzero(users[1:] != users[:-1]) + 1 if len(users) else np.array([], dtype=np.int64)
    indptr = np.concatenate([[0], boundaries, [len(users)]]).astype(np.int64) if len(users) else np.zeros(1, np.int64)
    keys = users[indptr[:-1]].astype(str) if len(users) else np.array([], dtype=str)
    return (
        Sequences(indptr, codes.astype(np.int64), ordered["timestamp"].to_numpy(np.int64), keys),
        np.asarray(originals, dtype=object),
    )


def make_samples(seqs: Sequences, seq_index: np.ndarray, position: np.ndarray, max_history: int) -> Samples:
    """Samples whose target is item ``position`` (0-based, >= 1) of sequence ``seq_index``.

    The history is the up-to-``max_history`` items before the target, oldest first.
    """
    seq_index = np.asarray(seq_index, dtype=np.int64)
    position = np.asarray(position, dtype=np.int64)
    start_of_seq = seqs.indptr[seq_index]
    target_at = start_of_seq + position
    lengths = np.minimum(position, max_history)
    indptr = np.zeros(len(seq_index) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    within = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths)
    gather = np.repeat(target_at - lengths, lengths) + within
    return Samples(
        history_indptr=indptr,
        history=seqs.items[gather].astype(np.int32),
        target=seqs.items[target_at].astype(np.int32),
        session=seqs.key[seq_index],
        timestamp=seqs.timestamp[target_at],
    )


def all_positions(seqs: Sequences, which: np.ndarray, *, last_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(sequence index, target position) pairs for every prefix of the chosen sequences."""
    which = np.asarray(which, dtype=np.int64)
    lengths = seqs.lengths[which]
    if last_only:
        return which, lengths - 1
    counts = np.maximum(lengths - 1, 0)
    seq_index = np.repeat(which, counts)
    position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    return seq_index, position


def _count_filter(seqs: Sequences, min_count: int, steps: Steps) -> Sequences:
    if min_count <= 1:
        return seqs
    counts = np.bincount(seqs.items)
    keep = counts[seqs.items] >= min_count
    steps.record(
        "drop_rare_items",
        f"items seen fewer than {min_count} times",
        items_removed=int(((counts > 0) & (counts < min_count)).sum()),
        events_removed=int((~keep).sum()),
    )
    return seqs.drop_events(keep)


def _length_filter(seqs: Sequences, min_length: int, steps: Steps, what: str) -> Sequences:
    keep = seqs.lengths >= min_length
    steps.record(
        f"drop_short_{what}",
        f"{what} with fewer than {min_length} events (after the steps above)",
        **{f"{what}_removed": int((~keep).sum()), "events_removed": int(seqs.lengths[~keep].sum())},
    )
    return seqs.select(keep)


def _split_counts(n: int, valid_fraction: float, test_fraction: float, test_count: int | None = None):
    """Numbers of valid and test sequences: at least one each when the fraction is positive."""
    n_test = test_count if test_count is not None else max(int(test_fraction > 0), int(round(n * test_fraction)))
    n_valid = max(int(valid_fraction > 0), int(round(n * valid_fraction)))
    if n == 0:
        raise UsageError("no sequence is left after filtering, so the catalogue would be empty; lower the filters "
                         "(e.g. --min-user-interactions, --min-item-count) or use a larger source")
    if n_test + n_valid >= n:
        raise UsageError(f"only {n} sequences after filtering: too few for {n_valid} valid and {n_test} test sequences "
                         "plus training; use a larger source, or lower the filters or the valid and test shares")
    return n_valid, n_test


def _time_split(seqs: Sequences, valid_fraction: float, test_fraction: float, test_count: int | None = None):
    """Split sequence indices by their end time (ties: earlier in the ordered source first)."""
    n = len(seqs)
    end_time = seqs.timestamp[seqs.indptr[1:] - 1] if n else np.array([], dtype=np.int64)
    order = np.argsort(end_time, kind="stable")
    n_valid, n_test = _split_counts(n, valid_fraction, test_fraction, test_count)
    return order[: n - n_test - n_valid], order[n - n_test - n_valid : n - n_test], order[n - n_test :]


def _cut_by_gap(seqs: Sequences, gap_s: int) -> Sequences:
    """Split each user sequence wherever two consecutive events are more than ``gap_s`` apart."""
    n_events = len(seqs.items)
    new_start = np.zeros(n_events, dtype=bool)
    new_start[seqs.indptr[:-1][seqs.lengths > 0]] = True
    gaps = np.diff(seqs.timestamp) > gap_s
    new_start[1:] |= gaps
    starts = np.flatnonzero(new_start)
    indptr = np.concatenate([starts, [n_events]]).astype(np.int64)
    # Session id: the user id and the session's ordinal within that user ("u7#0", "u7#1", ...).
    seq_of_start = np.searchsorted(seqs.indptr, starts, side="right") - 1
    ordinal = np.arange(len(starts)) - np.searchsorted(seq_of_start, seq_of_start, side="left")
    keys = np.char.add(np.char.add(seqs.key[seq_of_start].astype(str), "#"), ordinal.astype(str))
    return Sequences(indptr, seqs.items, seqs.timestamp, keys)


def apply(protocol, seqs: Sequences, steps: Steps) -> tuple[Sequences, dict[str, Samples]]:
    """Run ``protocol`` on ordered per-user (or given-session) sequences of item codes.

    Returns the filtered sequences (their items are the surviving codes) and the three splits,
    whose item fields still hold codes; ``prepare`` maps codes to final ids afterwards.
    """
    if isinstance(protocol, LeaveOneOut):
        seqs = _length_filter(seqs, protocol.min_user_interactions, steps, "users")
        n = seqs.lengths
        which = np.arange(len(seqs))
        train_idx, train_pos = all_positions(seqs, which)
        in_train = train_pos <= (n[train_idx] - 3)
        splits = {
            "train": make_samples(seqs, train_idx[in_train], train_pos[in_train], protocol.max_history),
            "valid": make_samples(seqs, which, n - 2, protocol.max_history),
            "test": make_samples(seqs, which, n - 1, protocol.max_history),
        }
        return seqs, splits

    if isinstance(protocol, SemSR):
        seqs = _length_filter(seqs, protocol.min_user_interactions, steps, "users")
        seqs = _count_filter(seqs, protocol.min_item_count, steps)
        seqs = _length_filter(seqs, protocol.min_sequence_length, steps, "sequences")
        rng = np.random.default_rng(protocol.seed)
        order = rng.permutation(len(seqs))
        n_valid, n_test = _split_counts(len(seqs), protocol.valid_fraction, protocol.test_fraction)
        parts = {
            "train": order[: len(seqs) - n_valid - n_test],
            "valid": order[len(seqs) - n_valid - n_test : len(seqs) - n_test],
            "test": order[len(seqs) - n_test :],
        }
        return seqs, _prefix_splits(seqs, parts, protocol.max_history, protocol.eval_positions == "last")

    if isinstance(protocol, GapSessions):
        before = len(seqs)
        seqs = _cut_by_gap(seqs, protocol.gap_s)
        steps.record("cut_sessions", f"a gap of more than {protocol.gap_s} s starts a new session",
                     users=before, sessions=len(seqs))
        seqs = _count_filter(seqs, protocol.min_item_count, steps)
        seqs = _length_filter(seqs, protocol.min_session_length, steps, "sessions")
        train, valid, test = _time_split(seqs, protocol.valid_fraction, protocol.test_fraction)
        parts = {"train": train, "valid": valid, "test": test}
        return seqs, _prefix_splits(seqs, parts, protocol.max_history, protocol.eval_positions == "last")

    if isinstance(protocol, GivenSessions):
        seqs = _length_filter(seqs, protocol.min_session_length, steps, "sessions")
        train, valid, test = _time_split(seqs, protocol.valid_fraction, protocol.test_fraction, protocol.test_sessions)
        return seqs, _prefix_splits(seqs, {"train": train, "valid": valid, "test": test}, protocol.max_history, True)

    raise TypeError(f"unknown protocol {protocol!r}")


def _prefix_splits(seqs: Sequences, parts: dict[str, np.ndarray], max_history: int, eval_last_only: bool):
    out = {}
    for name, which in parts.items():
        last_only = eval_last_only and name != "train"
        idx, pos = all_positions(seqs, np.sort(which), last_only=last_only)
        out[name] = make_samples(seqs, idx, pos, max_history)
    return out


def describe(protocol) -> dict:
    """Protocol name and parameters, for the stats file."""
    params = asdict(protocol)
    params.pop("name", None)
    return {"name": protocol.name, "params": params, "tie_rule": TIE_RULE}
