"""The synthetic source: sizes, determinism, and the latent structure models are meant to find."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from agentrec.data.dataset import PreparedDataset
from agentrec.data.prepare import prepare
from agentrec.data.protocols import GivenSessions
from agentrec.data.sources import get_loader
from agentrec.data.synthetic import load_synthetic, n_categories_for


@pytest.fixture(scope="module")
def medium():
    """1,000 items in 16 categories and 3,000 sessions: enough for the structure statistics."""
    return load_synthetic(items=1000, sessions=3000, seed=1)


def _digest(raw) -> str:
    h = hashlib.sha256()
    h.update(raw.events.to_csv(index=False).encode())
    h.update(raw.items.to_json(orient="records", lines=True).encode())
    return h.hexdigest()


def _sub_category(raw) -> dict[str, str]:
    return dict(zip(raw.items["item"], raw.items["categories"].str[1]))


def test_registry_entry_is_this_loader():
    assert get_loader("synthetic") is load_synthetic


def test_same_seed_same_bytes_other_seed_differs():
    first = load_synthetic(items=200, sessions=400, seed=7)
    again = load_synthetic(items=200, sessions=400, seed=7)
    other = load_synthetic(items=200, sessions=400, seed=8)
    assert _digest(first) == _digest(again)
    assert _digest(first) != _digest(other)


def test_sizes_and_columns_honoured():
    raw = load_synthetic(items=300, sessions=700, seed=3)
    assert raw.name == "synthetic" and raw.given_sessions
    assert raw.sources == {"generator": "synthetic items=300 sessions=700 seed=3"}
    assert list(raw.items.columns) == ["item", "title", "brand", "categories", "description", "price", "year"]
    assert len(raw.items) == 300 and raw.items["item"].is_unique
    assert raw.items["item"].iloc[0] == "i00000" and raw.items["item"].iloc[-1] == "i00299"
    assert all(isinstance(c, list) and len(c) == 2 for c in raw.items["categories"])
    assert raw.items["categories"].str[1].nunique() == n_categories_for(300) == 9

    events = raw.events
    assert list(events.columns) == ["user", "item", "timestamp", "order"]
    assert events["timestamp"].dtype == np.int64 and events["order"].dtype == np.int64
    assert (events["order"].to_numpy() == np.arange(len(events))).all()
    assert events["user"].nunique() == 700 and events["user"].str.match(r"^s\d+$").all()
    assert events["item"].isin(set(raw.items["item"])).all()
    lengths = events.groupby("user").size()
    assert lengths.min() >= 2 and lengths.max() <= 50
    # Inside a session, clicks are 10..300 s apart.
    same = events["user"].to_numpy()[1:] == events["user"].to_numpy()[:-1]
    gaps = np.diff(events["timestamp"].to_numpy())[same]
    assert gaps.min() >= 10 and gaps.max() <= 300


def test_default_sessions_is_twice_the_items():
    raw = load_synthetic(items=50)
    assert raw.events["user"].nunique() == 100


def test_category_count_rule():
    assert [n_categories_for(n) for n in (1, 3, 10, 1000, 100_000, 500_000)] == [1, 2, 2, 16, 158, 354]


def test_rejects_a_source_and_empty_sizes():
    with pytest.raises(ValueError, match="reads no files"):
        load_synthetic("some/path")
    with pytest.raises(ValueError, match="at least one"):
        load_synthetic(items=0)


def test_tiny_size_goes_through_prepare(tmp_path):
    raw = load_synthetic(items=10, sessions=20)
    assert len(raw.items) == 10 and raw.events["user"].nunique() == 20
    data = prepare(raw, GivenSessions())
    assert all(len(data.split(name)) > 0 for name in ("train", "valid", "test"))
    assert data.stats["counts"]["sequences"] == 20  # every session has at least 2 clicks
    data.save(tmp_path / "tiny")
    loaded = PreparedDataset.load(tmp_path / "tiny")
    assert loaded.fingerprint == data.fingerprint and loaded.titles() == data.titles()


def test_prepare_given_sessions(medium):
    data = prepare(medium, GivenSessions())
    assert all(len(data.split(name)) > 0 for name in ("train", "valid", "test"))
    assert data.stats["dataset"] == "synthetic"
    assert data.stats["counts"]["sequences"] == 3000
    assert data.n_items == medium.events["item"].nunique()


def test_titles_share_words_within_a_category(medium):
    # Jaccard overlap of title words (without the model number), same-category pairs vs others.
    items = medium.items
    words = [set(title.lower().split()[:-1]) for title in items["title"]]
    sub = items["categories"].str[1].to_numpy()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(items), (2, 20_000))
    a, b = a[a != b], b[a != b]
    overlap = np.array([len(words[i] & words[j]) / len(words[i] | words[j]) for i, j in zip(a, b)])
    same = sub[a] == sub[b]
    assert same.sum() > 100
    assert overlap[same].mean() > 0.1
    assert overlap[same].mean() > 5 * overlap[~same].mean()


def test_consecutive_clicks_mostly_stay_in_their_category(medium):
    events = medium.events
    category = events["item"].map(_sub_category(medium)).to_numpy()
    users = events["user"].to_numpy()
    consecutive = users[1:] == users[:-1]
    stay = (category[1:] == category[:-1])[consecutive].mean()
    share = pd.Series(category).value_counts(normalize=True).to_numpy()
    chance = float((share**2).sum())  # two independent clicks in the same category
    assert stay > 0.7
    assert stay > chance + 0.5


def test_previous_item_predicts_the_next(medium):
    # A bigram model (most frequent successors of the previous item in the first 80% of sessions)
    # beats the 10 most popular items on the last 20%: there is item-level sequential signal.
    events = medium.events
    users, items = events["user"].to_numpy(), events["item"].to_numpy()
    consecutive = users[1:] == users[:-1]
    pairs = pd.DataFrame({"session": users[:-1], "prev": items[:-1], "next": items[1:]})[consecutive]
    is_train = pairs["session"].str[1:].astype(int) < 2400
    train, test = pairs[is_train], pairs[~is_train]
    counts = train.groupby(["prev", "next"]).size().rename("n").reset_index()
    counts = counts.sort_values(["prev", "n", "next"], ascending=[True, False, True]).groupby("prev").head(10)
    successors = counts.groupby("prev")["next"].agg(set).to_dict()
    popular = set(events[events["user"].str[1:].astype(int) < 2400]["item"].value_counts().index[:10])
    bigram_hit = np.mean([n in successors.get(p, ()) for p, n in zip(test["prev"], test["next"])])
    popular_hit = np.mean([n in popular for n in test["next"]])
    assert bigram_hit > 0.3
    assert bigram_hit > 2 * popular_hit


def test_mean_length_sets_the_session_lengths_and_is_checked():
    lengths = load_synthetic(items=500, sessions=4000, seed=2, mean_length=4.1).events.groupby("user").size()
    assert lengths.min() >= 2 and abs(lengths.mean() - 4.1) < 0.15
    assert load_synthetic(items=50, sessions=40, mean_length=2).events.groupby("user").size().eq(2).all()
    with pytest.raises(ValueError, match="mean_length"):
        load_synthetic(items=50, mean_length=1.5)
