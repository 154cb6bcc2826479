"""Exact full-catalogue ranks from score products (``agentrec.core.ranking``), fp32 and bf16.

The right answer is computed by brute force: every item's float64 score ``R(q, e_j)``, rank = the number of
items not scoring below the target (ties and NaN against the model). The data are built to break a
careless bf16 path: exact duplicates of targets, items one fp32 ulp away from them, items inside the bf16
rounding band, zero vectors and zero queries (+-0 scores), negative targets, subnormal and huge queries,
NaN and infinite entries.
"""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from agentrec.core import native
from agentrec.core.errors import UsageError
from agentrec.core.metrics import rank_samples
from agentrec.core.ranking import ExactScores, _Product, rank_products
from agentrec.data.dataset import Samples
from agentrec.models import MODELS, model_class
from agentrec.models.popularity import Popularity
from agentrec.models.semantic import SemanticFusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PRECISIONS = ("fp32", "bf16")


def left_to_right(items64: np.ndarray, query64: np.ndarray) -> np.ndarray:
    """``R``'s definition: ``s = q_0 e_0``, then ``s += q_k e_k`` for k = 1 .. d-1, in float64, per item."""
    products = items64 * query64
    total = products[:, 0].copy()
    for k in range(1, products.shape[1]):
        total += products[:, k]
    return total


def reference_ranks(queries, table, targets, histories=None) -> np.ndarray:
    """Brute force: float64 scores of every item, ``#{j : not R_j < R_t}``; inf for a target in the history."""
    q64 = np.asarray(queries, np.float32).astype(np.float64)
    t64 = np.asarray(table, np.float32).astype(np.float64)
    n = len(t64) - 1
    ranks = []
    with np.errstate(invalid="ignore", over="ignore"):
        for b, target in enumerate(targets):
            scores = left_to_right(t64[1:], q64[b])
            keep = np.ones(n, bool)
            if histories is not None:
                if target in histories[b]:
                    ranks.append(math.inf)
                    continue
                keep[np.asarray(histories[b]) - 1] = False
            if not (np.isfinite(q64[b]).all() and np.isfinite(scores[target - 1])):
                ranks.append(n)  # a non-finite target ranks last
                continue
            ranks.append(int(np.count_nonzero(keep & ~(scores < scores[target - 1]))))
    return np.array(ranks, np.float64)


def near_ties(seed: int, *, n: int = 1500, d: int = 16, sessions: int = 240, normalise: bool = False):
    """A catalogue and sessions full of near-ties, and random histories (with some targets in them)."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((n + 1, d)).astype(np.float32)
    if normalise:
        table /= np.linalg.norm(table, axis=1, keepdims=True)
    table[0] = 0.0
    targets = rng.integers(1, n + 1, sessions)
    queries = rng.standard_normal((sessions, d)).astype(np.float32)
    # a third of the sessions point at their target (shallow ranks), the rest are random (deep ranks)
    queries[::3] = 4 * table[targets[::3]] + 0.3 * rng.standard_normal((len(targets[::3]), d)).astype(np.float32)
    free = iter(rng.permutation(np.arange(1, n + 1)))
    for b in range(0, sessions, 2):  # near-ties of half the targets, in other rows of the table
        target = table[targets[b]]
        twin, up, down, close = (next(free) for _ in range(4))
        if targets[b] in (twin, up, down, close):
            continue
        table[twin] = target  # an exact tie
        table[up] = target
        table[up, 0] = np.nextafter(target[0], np.float32(np.inf))  # one fp32 ulp away
        table[down] = target
        table[down, -1] = np.nextafter(target[-1], np.float32(-np.inf))
        table[close] = target * np.float32(1 + 1e-3)  # inside the bf16 band, apart in fp32
    for j in [next(free) for _ in range(5)]:
        table[j] = 0.0  # scores exactly +-0
    queries[5] = 0.0  # every score ties: the target ranks last
    block = [next(free) for _ in range(40)]
    table[block] = table[block[0]]  # forty equal items
    queries[7] *= np.float32(1e-39)  # subnormal query entries: bf16 dot products flush them
    queries[11] *= np.float32(1e3)
    histories = [list(rng.integers(1, n + 1, rng.integers(1, 5))) for _ in range(sessions)]
    for b in range(0, sessions, 9):
        histories[b].append(int(targets[b]))  # excluded: a miss
    return table, queries, targets, histories


def ranked(table, queries, targets, histories, **options):
    samples = Samples.from_lists(histories, targets)
    q = torch.from_numpy(np.ascontiguousarray(queries))
    return rank_products(lambda index: q[torch.as_tensor(index)], torch.from_numpy(table), samples,
                         len(table) - 1, **options)


@pytest.mark.parametrize("seed, d, normalise", [(0, 16, False), (1, 100, True), (2, 7, False)])
@pytest.mark.parametrize("exclude_history", [False, True])
def test_bf16_and_fp32_give_the_exact_ranks_on_near_ties(seed, d, normalise, exclude_history):
    table, queries, targets, histories = near_ties(seed, d=d, normalise=normalise)
    want = reference_ranks(queries, table, targets, histories if exclude_history else None)
    for precision in PRECISIONS:
        got = ranked(table, queries, targets, histories, precision=precision, exclude_history=exclude_history)
        np.testing.assert_array_equal(got.ranks, want, err_msg=precision)
        assert got.extra["precision"] == precision and got.extra["nonfinite_targets"] == 0
    if not exclude_history:
        assert want[5] == len(table) - 1  # the zero query: all tie, the target last


def test_ranks_do_not_depend_on_chunks_or_threads():
    table, queries, targets, histories = near_ties(3, d=32)
    want = reference_ranks(queries, table, targets, histories)
    for precision in PRECISIONS:
        for budget, threads in ((1e-9, 1), (0.05, 2), (64.0, 2)):  # 2 sessions a chunk, a few dozen, all
            got = ranked(table, queries, targets, histories, precision=precision, exclude_history=True,
                         memory_budget_mb=budget, threads=threads)
            np.testing.assert_array_equal(got.ranks, want, err_msg=f"{precision} {budget} MB {threads} threads")
    assert ranked(table, queries, targets, histories, memory_budget_mb=1e-9).extra["chunk_rows"] == 2


def test_bf16_decides_every_item_it_does_not_rescore_correctly():
    """The bound itself, item by item: below ``lo`` is below the target, at or above ``hi`` is above."""
    table, queries, targets, _ = near_ties(4, d=100, normalise=True)
    queries = queries[np.isfinite(queries).all(1) & (np.abs(queries).max(1) > 1e-30)] * np.float32(16)
    targets = targets[: len(queries)]
    t, q = torch.from_numpy(table), np.ascontiguousarray(queries)
    keep = np.ones(len(table), bool)
    keep[0] = False
    product = _Product("bf16", t, keep, torch.linalg.vector_norm(t, dim=1))
    scores = ExactScores(table).pairs  # float64 reference, every pair
    rows = np.repeat(np.arange(len(q)), len(table) - 1)
    items = np.tile(np.arange(1, len(table)), len(q))
    exact = scores(q.astype(np.float64), rows, items).reshape(len(q), -1)
    exact_target = exact[np.arange(len(q)), targets - 1]
    shift = product.shift(exact_target)
    values = torch.matmul(product.inputs(q, shift), product.table)[:, 1:].float().numpy()
    bound = product.bounds(q, shift, exact_target)
    _, _, lo, hi = product.thresholds(exact_target - shift, bound)
    below, above = values < lo[:, None], values >= hi[:, None]
    assert (exact[below] < np.repeat(exact_target, below.sum(1))).all()
    assert (exact[above] > np.repeat(exact_target, above.sum(1))).all()
    # the error itself stays inside the bound, with room to spare (it is a worst case)
    error = np.abs(values - (exact - shift[:, None]))
    assert (error <= bound[:, None] + np.abs(values) * 2.0**-7).all()
    assert (below | above).mean() > 0.95  # and the band is narrow: nearly every item is decided by bf16 alone


def test_exact_scores_do_not_depend_on_the_batch():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((500, 100)).astype(np.float32)
    q64 = rng.standard_normal((9, 100)).astype(np.float32).astype(np.float64)
    exact = ExactScores(table, step=64)
    rows, items = rng.integers(0, 9, 3000), rng.integers(0, 500, 3000)
    together = exact.pairs(q64, rows, items)
    for start, length in ((0, 1), (1, 2), (5, 63), (77, 700), (2999, 1)):
        part = slice(start, start + length)
        np.testing.assert_array_equal(exact.pairs(q64, rows[part], items[part]), together[part])
    for row in range(9):  # one query against many items: the same values as pair by pair
        mine = rows == row
        np.testing.assert_array_equal(exact.row(q64[row], items[mine]), together[mine])
        np.testing.assert_array_equal(exact.row(q64[row], items[mine][::-1]), together[mine][::-1])


def needs_native():
    """The C loops (``_scan.c``), built here; a machine without a C compiler skips, any other failure fails."""
    if native.scan_bf16() is None:
        if shutil.which("cc") or shutil.which("gcc"):
            pytest.fail("a C compiler is installed, but agentrec.core.native could not build _scan.c")
        pytest.skip("no C compiler: ranking uses its numpy path")


@pytest.mark.parametrize("d", [1, 7, 64, 100])
def test_exact_scores_sum_left_to_right_in_c_and_in_numpy(d, monkeypatch):
    needs_native()
    rng = np.random.default_rng(d)
    table = rng.standard_normal((300, d)).astype(np.float32) * rng.uniform(1e-3, 1e3, (300, 1)).astype(np.float32)
    table[3, 0], table[4, d - 1], table[5] = np.nan, np.inf, 0.0
    q64 = rng.standard_normal((11, d)).astype(np.float32).astype(np.float64)
    rows, items = rng.integers(0, 11, 4000), rng.integers(0, 300, 4000)
    with np.errstate(invalid="ignore", over="ignore"):
        want = np.array([left_to_right(table[i : i + 1].astype(np.float64), q64[r])[0] for r, i in zip(rows, items)])
        in_c = ExactScores(table).pairs(q64, rows, items)
        monkeypatch.setenv("AGENTREC_NATIVE", "0")
        exact = ExactScores(table, step=100)
        assert exact.kernel is None
        in_numpy = exact.pairs(q64, rows, items)
    np.testing.assert_array_equal(in_c, want)  # bit for bit, NaN where NaN
    np.testing.assert_array_equal(in_numpy, want)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("seed, d", [(5, 16), (6, 100)])
def test_the_c_scan_and_numpy_give_the_same_ranks(seed, d, precision, monkeypatch):
    needs_native()
    table, queries, targets, histories = near_ties(seed, d=d, normalise=d == 100)
    want = reference_ranks(queries, table, targets, histories)
    for threads in (1, 2):
        got = ranked(table, queries, targets, histories, precision=precision, exclude_history=True, threads=threads)
        np.testing.assert_array_equal(got.ranks, want, err_msg=f"C, {threads} threads")
    monkeypatch.setenv("AGENTREC_NATIVE", "0")
    got = ranked(table, queries, targets, histories, precision=precision, exclude_history=True)
    np.testing.assert_array_equal(got.ranks, want, err_msg="numpy")


def test_a_full_band_buffer_and_too_wide_bands_keep_the_ranks(monkeypatch):
    """The C scan's band buffer fills up (the call returns early, the next goes on from that row), and bands
    wider than ``wide`` send their rows to the fp32 product: the ranks stay exact."""
    needs_native()
    from agentrec.core import ranking

    table, queries, targets, histories = near_ties(7, d=16)
    want = reference_ranks(queries, table, targets)
    calls = []
    kernel = native.scan_bf16()

    def counted(*args):
        calls.append(args[4:6])  # (first, n)
        return kernel(*args)

    original = ranking._Ranker.__init__

    def narrow(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.wide = 6  # rows with more than 6 items in their band: again in fp32
        self.scanner.band = np.empty(self.wide + 1, np.int32)  # room for one band at a time

    monkeypatch.setattr(ranking.native, "scan_bf16", lambda: counted)
    monkeypatch.setattr(ranking._Ranker, "__init__", narrow)
    got = ranked(table, queries, targets, histories, precision="bf16")
    np.testing.assert_array_equal(got.ranks, want)
    assert any(first > 0 for first, _ in calls)  # some calls went on from where a full buffer stopped
    assert got.extra["fp32_rows"] > 0


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("columns", [7, 100, 1000])
def test_ranks_do_not_depend_on_the_column_blocks(columns, precision, monkeypatch):
    """With the C scan the product is computed a block of columns at a time: padding, items with NaN or
    infinite entries, history exclusion and each target's check must land in the right block."""
    needs_native()
    from agentrec.core import ranking

    table, queries, targets, histories = near_ties(9, d=16)
    table[[11, 700, 1499]] = np.nan
    table[[12, 1024], 3] = np.inf
    monkeypatch.setattr(ranking, "MIN_COLUMNS", columns)
    monkeypatch.setattr(ranking, "BLOCK_BYTES", 0)
    for exclude in (False, True):
        want = reference_ranks(queries, table, targets, histories if exclude else None)
        for threads in (1, 2):
            got = ranked(table, queries, targets, histories, precision=precision, exclude_history=exclude,
                         threads=threads)
            np.testing.assert_array_equal(got.ranks, want, err_msg=f"{columns} columns, {threads} threads")


def test_without_a_compiler_ranking_warns_once_and_uses_numpy(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AGENTREC_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(native.shutil, "which", lambda name: "/bin/false" if name == "false" else None)
    native._load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="agentrec.core.native"):
            table, queries, targets, histories = near_ties(8, d=16)
            got = ranked(table, queries, targets, histories, precision="bf16")
            ranked(table, queries, targets, histories, precision="bf16")
        np.testing.assert_array_equal(got.ranks, reference_ranks(queries, table, targets))
        warnings = [r for r in caplog.records if "could not be compiled" in r.getMessage()]
        assert len(warnings) == 1 and "AGENTREC_NATIVE=0" in warnings[0].getMessage()
        assert not list((tmp_path / "native").glob("*.so"))
    finally:
        native._load.cache_clear()


def test_nan_and_infinity_keep_the_protocol():
    """As ``rank_samples`` on the fp32 scores: a NaN item counts against the model, a NaN target ranks last."""
    rng = np.random.default_rng(5)
    n, d = 60, 8
    table = rng.standard_normal((n + 1, d)).astype(np.float32)
    queries = rng.standard_normal((12, d)).astype(np.float32)
    targets = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    table[20, 3] = np.nan  # scores NaN for everyone: a tie against the model
    table[21, 0] = np.inf  # +-inf (NaN where the query's entry is 0)
    table[2, 1] = np.nan  # session 1's target: NaN, ranks last
    queries[4, 0] = 0.0  # item 21 is NaN for session 4
    queries[6, 2] = np.nan  # session 6: every score NaN
    queries[8, 5] = -np.inf  # session 8: every score infinite or NaN
    histories = [[30]] * 12
    samples = Samples.from_lists(histories, targets)
    fp32_scores = torch.from_numpy(queries) @ torch.from_numpy(table).t()
    today = rank_samples(lambda index: fp32_scores[torch.as_tensor(index)].clone(), samples, n)
    want = reference_ranks(queries, table, targets)
    np.testing.assert_array_equal(today.ranks, want)  # the protocol, unchanged
    for precision in PRECISIONS:
        got = ranked(table, queries, targets, histories, precision=precision)
        np.testing.assert_array_equal(got.ranks, want, err_msg=precision)
        assert got.ranks[[1, 6, 8]].tolist() == [n, n, n]
        assert got.extra["nonfinite_targets"] == today.extra["nonfinite_targets"] == 3


def test_huge_vectors_are_ranked_in_float64():
    table, queries, targets, histories = near_ties(6, n=300, sessions=30)
    table[17] *= np.float32(1e30)  # an item whose products could overflow fp32: always re-scored
    queries[3] *= np.float32(1e25)  # a session beyond the fast path: its whole row in float64
    want = reference_ranks(queries, table, targets, histories)
    for precision in PRECISIONS:
        got = ranked(table, queries, targets, histories, precision=precision, exclude_history=False)
        np.testing.assert_array_equal(got.ranks, reference_ranks(queries, table, targets), err_msg=precision)
        got = ranked(table, queries, targets, histories, precision=precision, exclude_history=True)
        np.testing.assert_array_equal(got.ranks, want, err_msg=precision)


def test_precision_is_checked():
    table, queries, targets, histories = near_ties(0, n=100, sessions=12)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, not 'fp16'"):
        ranked(table, queries, targets, histories, precision="fp16")


# ---------------------------------------------------------------------------------------------- models
NEURAL = [name for name in MODELS if name != "pop"]


def tiny_models():
    from test_models_contract import cycle_dataset

    ds = cycle_dataset(n_items=40, n_train=50)
    torch.manual_seed(0)
    for name in NEURAL:
        yield name, ds, model_class(name)(ds.n_items, model_class(name).Config(embedding_size=16)).eval()
    base = model_class("niser")(ds.n_items, model_class("niser").Config(embedding_size=16))
    llm = np.random.default_rng(0).standard_normal((ds.n_items + 1, 24)).astype(np.float32)
    yield "semsr-f(niser)", ds, SemanticFusion(base, llm).eval()


def test_every_model_scores_as_a_product_and_ranks_the_same_three_ways():
    from agentrec.training.runs import evaluate_model

    for name, ds, model in tiny_models():
        assert model.scores_are_products, name
        index = np.arange(9)
        with torch.no_grad():
            scores = model.score_chunk(ds.valid, index)
            product = model.query_chunk(ds.valid, index) @ model.scoring_table().t()
        product[:, 0] = -math.inf
        torch.testing.assert_close(scores, product, rtol=0, atol=0, msg=name)
        base = evaluate_model(model, ds, "valid", exclude_history=True)
        assert base.extra["precision"] == "scores"
        for precision in PRECISIONS:
            result = evaluate_model(model, ds, "valid", exclude_history=True, precision=precision)
            assert result.extra["precision"] == precision
            np.testing.assert_array_equal(result.ranks, base.ranks, err_msg=f"{name} {precision}")
        # two threads, each encoding and ranking its own chunks (two sessions a chunk: many chunks)
        result = evaluate_model(model, ds, "valid", exclude_history=True, precision="bf16", threads=2,
                                memory_budget_mb=1e-9)
        assert result.extra["threads"] == 2 and result.extra["chunk_rows"] == 2
        np.testing.assert_array_equal(result.ranks, base.ranks, err_msg=f"{name} bf16, 2 threads")


def test_a_model_whose_rule_is_not_a_product_is_ranked_from_its_scores():
    from test_models_contract import cycle_dataset

    from agentrec.training.runs import evaluate_model

    ds = cycle_dataset(n_items=12, n_train=50)
    pop = Popularity(ds.n_items).fit(ds.train)
    result = evaluate_model(pop, ds, "valid", precision="bf16")
    assert result.extra["precision"] == "scores"
    np.testing.assert_array_equal(result.ranks, evaluate_model(pop, ds, "valid").ranks)

    class Squared(model_class("narm")):
        def score(self, sessions, table):
            return (sessions @ table.t()) ** 2

    assert not Squared(ds.n_items).scores_are_products
    with pytest.raises(UsageError, match="precision must be fp32 or bf16, not 'int8'"):
        evaluate_model(pop, ds, "valid", precision="int8")


# ------------------------------------------------------------------------------------------------- runs
def test_evaluate_records_the_precision(tiny_data, tmp_path):
    from agentrec.cli.main import app
    from agentrec.data.dataset import PreparedDataset
    from agentrec.training.runs import RunInfo, dataset_ref, evaluate_run, save_run

    ds = PreparedDataset.load(tiny_data)
    torch.manual_seed(0)
    model = model_class("niser")(ds.n_items, model_class("niser").Config(embedding_size=8))
    run = tmp_path / "run"
    save_run(run, RunInfo(model="niser", model_config=model.config_dict(), train_config={}, dataset=dataset_ref(ds)),
             model.state_dict())
    _, fp32 = evaluate_run(run)
    assert json.loads((run / "run.json").read_text())["test"]["precision"] == "fp32"
    result = CliRunner().invoke(app, ["evaluate", str(run), "--precision", "bf16", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "bf16 product, 1 thread(s)" in result.output
    stored = json.loads((run / "run.json").read_text())["test"]
    assert stored["precision"] == "bf16" and stored["recall@10"] == fp32.metrics["recall@10"]
    assert CliRunner().invoke(app, ["evaluate", str(run), "--precision", "fp16"]).exit_code == 2
    with pytest.raises(UsageError, match="precision must be fp32 or bf16"):
        evaluate_run(run, precision="fp16")
