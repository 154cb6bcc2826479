"""Ranking metrics against answers computed by hand."""

import math

import numpy as np
import pytest
import torch

from agentrec.core.metrics import chunk_rows, metrics_from_ranks, rank_samples, target_ranks
from agentrec.data.dataset import Samples
from agentrec.models.popularity import Popularity


def test_ranks_count_ties_against_the_model():
    scores = torch.tensor([[-math.inf, 0.1, 0.5, 0.5, 0.9]])
    # item 2 (0.5): one item higher (4), one tie (3) -> rank 3; item 4 -> 1; item 1 -> 4
    for target, rank in [(2, 3), (3, 3), (4, 1), (1, 4)]:
        assert target_ranks(scores, torch.tensor([target])).tolist() == [rank]


def test_constant_scorer_ranks_every_target_last():
    scores = torch.zeros(3, 6)
    scores[:, 0] = -math.inf
    assert target_ranks(scores, torch.tensor([1, 3, 5])).tolist() == [5, 5, 5]


def test_metrics_by_hand():
    m = metrics_from_ranks(np.array([1, 3, math.inf]), ks=(1, 2, 5))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 3) / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)


def scorer(table):
    table = torch.as_tensor(table, dtype=torch.float32)
    return lambda index: table[torch.as_tensor(index)]


def test_rank_samples_history_exclusion_and_k_beyond_catalogue():
    # 4 items; scores favour item 4, then 3, 2, 1
    row = [0.0, 0.1, 0.2, 0.3, 0.4]
    samples = Samples.from_lists([[4], [4, 3], [2]], [3, 4, 1])
    table = [row, row, row]
    allowed = rank_samples(scorer(table), samples, 4, ks=(1, 100))
    assert allowed.ranks.tolist() == [2, 1, 4]
    excluded = rank_samples(scorer(table), samples, 4, ks=(1, 100), exclude_history=True)
    # sample 0: item 4 removed -> target 3 is first; sample 1: target 4 is in its history -> miss;
    # sample 2: item 2 removed -> target 1 moves from 4th to 3rd
    assert excluded.ranks[0] == 1 and math.isinf(excluded.ranks[1]) and excluded.ranks[2] == 3
    # K larger than the catalogue: every reachable target is a hit, the excluded one is not
    assert allowed.metrics["recall@100"] == 1.0
    assert excluded.metrics["recall@100"] == pytest.approx(2 / 3)


def test_padding_column_is_never_a_candidate():
    samples = Samples.from_lists([[1]], [2])
    result = rank_samples(scorer([[99.0, 0.0, 1.0]]), samples, 2, ks=(1,))
    assert result.ranks.tolist() == [1]


def test_chunked_equals_one_shot():
    rng = np.random.default_rng(0)
    n_items, n = 50, 37
    table = rng.normal(size=(n, n_items + 1)).astype(np.float32)
    histories = [list(rng.integers(1, n_items + 1, size=rng.integers(1, 6))) for _ in range(n)]
    samples = Samples.from_lists(histories, rng.integers(1, n_items + 1, size=n))
    big = rank_samples(scorer(table), samples, n_items, exclude_history=True, memory_budget_mb=100)
    tiny = rank_samples(scorer(table), samples, n_items, exclude_history=True, memory_budget_mb=1e-6)
    assert chunk_rows(n_items, 1e-6) == 1
    np.testing.assert_array_equal(big.ranks, tiny.ranks)


def test_chunk_size_bounds_memory_for_a_large_catalogue():
    # 500,000 items in a 256 MB budget: a few dozen rows, never the full matrix
    rows = chunk_rows(500_000, 256)
    assert 10 < rows < 100


def test_popularity_ranks_by_training_frequency():
    train = Samples.from_lists([[1], [1], [2], [1]], [2, 2, 3, 2])  # item 2 x3, item 3 x1
    model = Popularity(3).fit(train)
    test = Samples.from_lists([[1]], [3])
    result = rank_samples(lambda i: model.score_chunk(test, i), test, 3, ks=(1, 2))
    # order: 2 (3 times), 3 (once), 1 (never) -> target 3 is second
    assert result.ranks.tolist() == [2]


def test_bootstrap_interval_is_seeded_paired_and_exact_on_constants():
    from agentrec.core.metrics import bootstrap_interval

    lo, hi = bootstrap_interval(np.full(50, 0.25), resamples=200)
    assert lo == hi == 0.25  # every resample has the same mean
    rng = np.random.default_rng(0)
    values = rng.random((3, 80))
    lo, hi = bootstrap_interval(values, resamples=300, seed=4)
    assert lo.shape == hi.shape == (3,) and np.all(lo <= values.mean(1)) and np.all(values.mean(1) <= hi)
    again = bootstrap_interval(values, resamples=300, seed=4)
    assert np.array_equal(lo, again[0]) and np.array_equal(hi, again[1])
    # rows share the resamples: a row and its copy shifted by 1 have intervals exactly 1 apart
    shifted = bootstrap_interval(np.stack([values[0], values[0] + 1.0]), resamples=300, seed=4)
    assert np.allclose(shifted[0][1] - shifted[0][0], 1.0) and np.allclose(shifted[1][1] - shifted[1][0], 1.0)
