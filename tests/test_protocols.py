"""Every protocol on tiny event logs whose right answer is worked out by hand in the comments."""

import numpy as np
import pandas as pd
import pytest

from agentrec.data.api import make_protocol
from agentrec.data.prepare import prepare
from agentrec.data.protocols import GapSessions, GivenSessions, LeaveOneOut, SemSR
from agentrec.data.raw import RawData
from agentrec.data.recbole_atomic import load_recbole


def samples_as_lists(samples):
    return [(list(samples.history_of(i)), int(samples.target[i])) for i in range(len(samples))]


def raw_from_rows(rows, titles=None):
    """rows: (user, item, timestamp) in source order."""
    events = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    events["order"] = range(len(events))
    items = pd.DataFrame({"item": sorted(set(events["item"]))})
    items["title"] = [f"title {i}" for i in items["item"]] if titles is None else titles
    return RawData(name="hand", events=events, items=items)


def test_leave_one_out_by_hand(fixtures):
    # u1 ordered by time, ties in file order: 10, 9, 100 (9 and 100 share t=200), 7, 10
    # ids follow numeric original ids: 7->1, 9->2, 10->3, 100->4, so u1 = [3, 2, 4, 1, 3], u2 = [2, 3, 4, 1];
    # u3 has 2 events and is dropped (leave-one-out needs 3).
    ds = prepare(load_recbole(fixtures / "recbole" / "tiny"), LeaveOneOut())
    assert ds.items["original_id"].tolist() == ["7", "9", "10", "100"]
    assert samples_as_lists(ds.train) == [([3], 2), ([3, 2], 4), ([2], 3)]
    assert samples_as_lists(ds.valid) == [([3, 2, 4], 1), ([2, 3], 4)]
    assert samples_as_lists(ds.test) == [([3, 2, 4, 1], 3), ([2, 3, 4], 1)]
    assert ds.test.session.tolist() == ["u1", "u2"]
    assert ds.test.timestamp.tolist() == [400, 80]
    steps = {row["step"]: row for row in ds.stats["filtering"] if row["step"] == "drop_short_users"}
    assert steps["drop_short_users"]["users_removed"] == 1
    # item 42 has metadata but no interaction: reported, not in the catalogue
    catalogue = [r for r in ds.stats["filtering"] if r["step"] == "catalogue"]
    assert [r["items_removed"] for r in catalogue] == [0, 1]


def test_history_cap_keeps_the_most_recent_items():
    rows = [("u", str(i), i) for i in range(1, 8)]  # one user, items 1..7
    ds = prepare(raw_from_rows(rows), LeaveOneOut(max_history=2))
    assert samples_as_lists(ds.test) == [([5, 6], 7)]
    assert samples_as_lists(ds.valid) == [([4, 5], 6)]
    assert samples_as_lists(ds.train)[-1] == ([3, 4], 5)
    assert samples_as_lists(ds.train)[0] == ([1], 2)


def test_tie_rule_is_file_order_not_item_id():
    rows = [("u", "b", 5), ("u", "a", 5), ("u", "c", 5)]  # all at once: file order b, a, c
    ds = prepare(raw_from_rows(rows), LeaveOneOut())
    # ids: a->1, b->2, c->3; sequence in file order = [2, 1, 3]
    assert samples_as_lists(ds.test) == [([2, 1], 3)]


def test_semsr_filters_in_order_and_splits_users():
    rng = np.random.default_rng(0)
    rows = []
    # 20 users with 7 events over popular items p0..p4, plus one rare item r0 seen twice
    for u in range(20):
        for t in range(7):
            rows.append((f"u{u:02d}", f"p{rng.integers(0, 5)}", t))
    rows += [("u00", "r0", 100), ("u01", "r0", 100)]
    rows += [("light", "p0", 1), ("light", "p1", 2)]  # 2 interactions: dropped as a user (needs > 5)
    ds = prepare(raw_from_rows(rows), SemSR(seed=3))
    steps = ds.stats["filtering"]
    assert steps[0]["step"] == "drop_short_users" and steps[0]["users_removed"] == 1
    assert steps[1]["step"] == "drop_rare_items" and steps[1]["items_removed"] == 1 and steps[1]["events_removed"] == 2
    assert steps[2]["step"] == "drop_short_sequences" and steps[2]["sequences_removed"] == 0
    users = {split: set(ds.split(split).session) for split in ("train", "valid", "test")}
    assert [len(users[s]) for s in ("train", "valid", "test")] == [16, 2, 2]
    assert not (users["train"] & users["test"]) and not (users["valid"] & users["test"])
    # every prefix: 7 events -> 6 samples per user, in every split
    assert len(ds.train) == 16 * 6 and len(ds.test) == 2 * 6
    assert ds.items["original_id"].tolist() == ["p0", "p1", "p2", "p3", "p4"]
    # the split depends on the seed
    other = prepare(raw_from_rows(rows), SemSR(seed=4))
    assert set(other.test.session) != users["test"] or set(other.valid.session) != users["valid"]


def test_semsr_last_position_only():
    rows = [(f"u{u}", f"i{(u + t) % 3}", t) for u in range(10) for t in range(6)]
    ds = prepare(raw_from_rows(rows), SemSR(min_user_interactions=6, min_item_count=1, eval_positions="last"))
    assert len(ds.test) == 1 and len(ds.valid) == 1 and len(ds.train) == 8 * 5


def test_gap_sessions_cut_and_time_split():
    rows = [
        ("a", "x", 0), ("a", "y", 100), ("a", "z", 5000), ("a", "x", 5100), ("a", "y", 5200),
        ("b", "y", 1000), ("b", "z", 1200), ("b", "x", 9000),  # b: session of 2, then a single click
        ("c", "x", 20000), ("c", "z", 20050),
    ]
    ds = prepare(raw_from_rows(rows), GapSessions(gap_s=1800, valid_fraction=0.25, test_fraction=0.25))
    # sessions: a#0=[x,y] ends 100, b#0=[y,z] ends 1200, a#1=[z,x,y] ends 5200, b#1=[x] dropped, c#0=[x,z] ends 20050
    cut = ds.stats["filtering"][0]
    assert cut["users"] == 3 and cut["sessions"] == 5
    dropped = [r for r in ds.stats["filtering"] if r["step"] == "drop_short_sessions"][0]
    assert dropped["sessions_removed"] == 1
    # 4 sessions ordered by end time: a#0, b#0 | a#1 (valid) | c#0 (test); ids x=1, y=2, z=3
    assert set(ds.train.session) == {"a#0", "b#0"}
    assert samples_as_lists(ds.valid) == [([3], 1), ([3, 1], 2)]
    assert samples_as_lists(ds.test) == [([1], 3)]


def test_given_sessions_eval_last_item_only():
    rows = []
    for s in range(10):
        for t, item in enumerate(["a", "b", "c", "d"][: 2 + s % 3]):
            rows.append((f"s{s}", item, s * 10 + t))
    ds = prepare(raw_from_rows(rows), GivenSessions(valid_fraction=0.2, test_sessions=3))
    assert list(ds.test.session) == ["s7", "s8", "s9"]
    assert list(ds.valid.session) == ["s5", "s6"]
    # test: one sample per session, the last item; s7 has 3 items [a, b, c]
    assert samples_as_lists(ds.test)[0] == ([1, 2], 3)
    # train: every prefix of s0..s4 (lengths 2,3,4,2,3 -> 1+2+3+1+2 samples)
    assert len(ds.train) == 9


def test_too_few_sequences_for_a_time_split_is_an_error():
    rows = [("s0", "a", 0), ("s0", "b", 1)]
    with pytest.raises(ValueError, match="too few"):
        prepare(raw_from_rows(rows), GivenSessions())


def test_unknown_protocol_option_is_refused():
    with pytest.raises(ValueError, match="takes no option gap_s"):
        make_protocol("leave-one-out", gap_s=10)
    with pytest.raises(ValueError, match="unknown protocol"):
        make_protocol("random")
