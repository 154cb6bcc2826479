"""The canonical on-disk format: round trip, padding, fingerprints."""

import json

import numpy as np
import pytest

from agentrec.data.dataset import PreparedDataset, Samples
from agentrec.data.prepare import prepare
from agentrec.data.protocols import LeaveOneOut
from agentrec.data.recbole_atomic import load_recbole


def test_padded_left_and_right():
    s = Samples.from_lists([[1, 2, 3], [4], []], [5, 6, 7])
    np.testing.assert_array_equal(s.padded(), [[1, 2, 3], [4, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(s.padded(2), [[2, 3], [4, 0], [0, 0]])
    np.testing.assert_array_equal(s.padded(2, align="right"), [[2, 3], [0, 4], [0, 0]])


def test_subset_keeps_histories_aligned():
    s = Samples.from_lists([[1, 2], [3], [4, 5, 6]], [7, 8, 9], sessions=["a", "b", "c"])
    sub = s.subset(np.array([2, 0]))
    assert [list(sub.history_of(i)) for i in range(2)] == [[4, 5, 6], [1, 2]]
    assert sub.target.tolist() == [9, 7] and sub.session.tolist() == ["c", "a"]


def test_round_trip_and_fingerprint(tmp_path, fixtures):
    ds = prepare(load_recbole(fixtures / "recbole" / "tiny"), LeaveOneOut())
    ds.save(tmp_path / "a")
    back = PreparedDataset.load(tmp_path / "a")
    assert back.fingerprint == ds.fingerprint
    assert back.n_items == 4
    assert back.items.loc[0, "title"] == "Seven Samurai" and back.items.loc[0, "genres"] == ["Action", "Drama"]
    assert back.items.loc[0, "year"] == 1954
    for split in ("train", "valid", "test"):
        assert back.split(split).digest() == ds.split(split).digest()
    lines = (tmp_path / "a" / "items.jsonl").read_text().splitlines()
    assert json.loads(lines[2]) == {"item_id": 3, "original_id": "10", "title": "Ten", "genres": ["Drama"]}
    # another protocol parameter, another fingerprint
    other = prepare(load_recbole(fixtures / "recbole" / "tiny"), LeaveOneOut(max_history=1))
    other.save(tmp_path / "b")
    assert other.fingerprint != ds.fingerprint


def test_load_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="agentrec data prepare"):
        PreparedDataset.load(tmp_path)
