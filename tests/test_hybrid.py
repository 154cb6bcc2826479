"""The hybrid recommender: weighted reciprocal-rank fusion on hand-computed inputs, ``w = 0`` as the model's
own ranking (ties and NaN included), the choice of the fusion on validation, ``predict_hybrid`` end to end
(scripted LLM, real Chroma with the shipped MiniLM, a real trained NISER run), and the two scripted-engine
tests of issue 14 on a small shop catalogue (:func:`shop`): an LLM that names the true next item for half of
the sessions makes the hybrid beat its model by a wide margin; an LLM that writes unrelated titles gets
``w = 0`` on validation, and the hybrid equals the model on test, rank for rank.

Hand-computed fusion case: catalogue of 8 items, the model's scores (item: score) 1: 8, 2: 1, 3: 3, 4: 6,
5: 1, 6: 6, 7: 2, 8: 0.5, so its ranks (ties against the model: a tie group takes its worst rank) are
1: 1, 4: 3, 6: 3, 3: 4, 7: 5, 2: 7, 5: 7, 8: 8. The LLM's grounded list is 5, 3, 7. With ``c = 0``::

    w = 0.5, M = 3: fused = 0.5 / model rank + 0.5 / LLM position
        5: 0.5/7 + 0.5/1 = 0.571   1: 0.5/1 = 0.5   3: 0.5/4 + 0.5/2 = 0.375   7: 0.5/5 + 0.5/3 = 0.267
        4, 6: 0.5/3 = 0.167 (tied, same model rank: both rank 6)   2: 0.071   8: 0.0625
        -> 5, 1, 3, 7, 4, 6, 2, 8
    w = 0: the model's order 1, 4, 6, 3, 7, 2, 5, 8      w = 1, M = 3: 5, 3, 7, then 1, 4, 6, 2, 8
    no fill, w = 0.5, M = 2: candidates = model top-2 {1} + LLM top-2 {5, 3} -> 5, 1, 3; item 7 is a miss
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_predict import ScriptedEngine, query_session
from test_prompting import toy_movies

from agentrec.core.metrics import target_ranks
from agentrec.llm import Generation
from agentrec.pipelines.hybrid import (
    FusionGrid,
    HybridConfig,
    choose_fusion,
    grid_ranks,
    hybrid_ranks,
    model_rank_matrix,
    predict_hybrid,
    select_fusion,
)

pytestmark = pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning")

MODEL = np.array([-np.inf, 8.0, 1.0, 3.0, 6.0, 1.0, 6.0, 2.0, 0.5])  # column 0 is padding
LLM = np.array([[5, 3, 7, 0]])  # nearest first; 0 pads


# ---------------------------------------------------------------------------------------------- fusion
def test_model_ranks_count_ties_and_nan_against_the_model():
    assert model_rank_matrix(MODEL[None]).tolist() == [[math.inf, 1, 7, 4, 3, 7, 3, 5, 8]]
    nan = MODEL.copy()
    nan[8] = np.nan  # the model's best, against it: every other item moves down one place
    assert model_rank_matrix(nan[None])[0, 1:].tolist() == [2, 8, 5, 4, 8, 4, 6, 1]


@pytest.mark.parametrize("config, expected", [
    (HybridConfig(weight=0.5, candidates=3, c=0), [5, 1, 3, 7, 4, 6, 2, 8]),
    (HybridConfig(weight=0.0, candidates=3, c=0), [1, 4, 6, 3, 7, 2, 5, 8]),  # the model's order
    (HybridConfig(weight=1.0, candidates=3, c=0), [5, 3, 7, 1, 4, 6, 2, 8]),  # the LLM's list first
    (HybridConfig(weight=1.0, candidates=2, c=0), [5, 3, 1, 4, 6, 7, 2, 8]),  # only its top-M counts
    (HybridConfig(weight=0.5, candidates=2, c=0, fill=False), [5, 1, 3, 0, 0, 0, 0, 0]),
])
def test_fusion_orders_the_catalogue_as_computed_by_hand(config, expected):
    ranks, top, from_llm = hybrid_ranks(LLM, MODEL[None], np.array([3]), config, k=8)
    assert top.tolist() == [expected]
    assert ranks.tolist() == [expected.index(3) + 1.0]
    assert from_llm.tolist() == [[item in LLM[0, :config.candidates] and item > 0 for item in expected]]


def test_tied_items_rank_against_the_hybrid_and_a_miss_without_fill_is_inf():
    config = HybridConfig(weight=0.5, candidates=3, c=0)
    ranks, _, _ = hybrid_ranks(np.repeat(LLM, 2, 0), np.repeat(MODEL[None], 2, 0), np.array([4, 6]), config, k=3)
    assert ranks.tolist() == [6.0, 6.0]  # 4 and 6 tie: each counts the other
    ranks, _, _ = hybrid_ranks(LLM, MODEL[None], np.array([7]), HybridConfig(weight=0.5, candidates=2, c=0,
                                                                            fill=False), k=3)
    assert math.isinf(ranks[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_weight_zero_is_the_model_ranking_exactly_and_weight_one_lists_the_llm_first(seed):
    """Random scores full of ties, NaN and infinities; the model's ranks as the evaluator computes them."""
    import torch

    rng = np.random.default_rng(seed)
    b, n = 60, 40
    scores = rng.integers(0, 6, (b, n + 1)).astype(np.float32)  # many ties
    for value in (np.nan, np.inf, -np.inf):
        scores[rng.random((b, n + 1)) < 0.05] = value
    scores[:, 0] = -np.inf
    targets = rng.integers(1, n + 1, b)
    llm = np.stack([rng.permutation(np.arange(1, n + 1))[:10] for _ in range(b)])
    llm[:5] = 0  # sessions whose title did not parse
    model = target_ranks(torch.tensor(scores), torch.tensor(targets))
    for m in (1, 5, 10):
        for c in (0.0, 60.0):
            ranks, _, _ = hybrid_ranks(llm, scores, targets, HybridConfig(weight=0.0, candidates=m, c=c), k=n)
            assert np.array_equal(ranks, model), (m, c)
    # every weight gives a session without a title the model's own rank
    for w in (0.3, 1.0):
        ranks, _, _ = hybrid_ranks(llm, scores, targets, HybridConfig(weight=w, candidates=10), k=n)
        assert np.array_equal(ranks[:5], model[:5])
    _, top, from_llm = hybrid_ranks(llm, scores, targets, HybridConfig(weight=1.0, candidates=10), k=n)
    assert np.array_equal(top[5:, :10], llm[5:]) and from_llm[5:, :10].all() and not from_llm[:, 10:].any()


def test_listed_order_and_ranks_agree_and_the_grid_gives_the_same_ranks():
    rng = np.random.default_rng(3)
    b, n = 40, 30
    scores = rng.normal(size=(b, n + 1))
    scores[:, 0] = -np.inf
    targets = rng.integers(1, n + 1, b)
    llm = np.stack([rng.permutation(np.arange(1, n + 1))[:8] for _ in range(b)])
    points = FusionGrid(weights=(0.0, 0.3, 1.0), candidates=(2, 8), c=(10.0, 60.0)).points()
    points += FusionGrid(weights=(0.4,), candidates=(3,), fill=False).points()
    grid = grid_ranks(llm, scores, targets, points)
    for p, config in enumerate(points):
        ranks, top, _ = hybrid_ranks(llm, scores, targets, config, k=n)
        listed = [float(np.flatnonzero(row == t)[0] + 1) if (row == t).any() else math.inf for row, t in zip(top, targets)]
        assert ranks.tolist() == listed, config
        assert np.array_equal(grid[:, p], ranks), config


def test_a_nonfinite_target_ranks_last_at_every_weight():
    broken = MODEL.copy()
    broken[3] = np.nan
    for w in (0.0, 0.5, 1.0):
        ranks, _, _ = hybrid_ranks(LLM, broken[None], np.array([3]), HybridConfig(weight=w, candidates=3), k=3)
        assert ranks.tolist() == [8.0]


def test_the_choice_is_recall_then_mrr_then_the_smaller_weight_among_fusions_that_beat_the_model():
    points = FusionGrid(weights=(0.0, 0.5, 1.0), candidates=(5, 20)).points()  # (w, M): 0,5 0,20 .5,5 .5,20 1,5 1,20
    n = 40
    model = np.full(n, 30.0)  # the model misses every target

    def choose(*columns):  # one rank per point, the same for every session; the w = 0 points are the model
        return choose_fusion(np.array([[30.0, 30.0, *columns]] * n), points, model)

    chosen = choose(2, 2, 1, 25)  # w = 1, M = 5 has the best MRR but no better recall than w = 0.5
    assert (chosen.config.weight, chosen.config.candidates) == (1.0, 5)
    chosen = choose(2, 2, 25, 25)  # recall first; then the smaller M on an exact tie
    assert (chosen.config.weight, chosen.config.candidates) == (0.5, 5) and not chosen.fell_back
    assert [p["chosen"] for p in chosen.grid] == [False, False, True, False, False, False]
    assert [p["beats_model"] for p in chosen.grid] == [False, False, True, True, False, False]
    assert chosen.model == {"recall@20": 0.0, "mrr@20": 0.0} and chosen.chosen["mrr@20"] == 0.5
    assert choose(2, 2, 2, 2).config.weight == 0.5  # an exact tie: the smaller w
    assert "w = 0.5, M = 5" in chosen.describe() and "+*" in chosen.grid_table()


def test_a_fusion_that_does_not_beat_the_model_beyond_noise_leaves_the_model_alone():
    points = FusionGrid(weights=(0.0, 0.5), candidates=(5,)).points()
    n = 100
    model = np.full(n, 30.0)
    lucky = model.copy()
    lucky[0] = 1.0  # one more hit in 100 sessions: the best point, but noise
    chosen = choose_fusion(np.stack([model, lucky], 1), points, model)
    assert chosen.config.weight == 0.0 and chosen.fell_back and "no fusion beat the model" in chosen.describe()
    assert chosen.grid[1]["recall@20_vs_model"][0] == 0.0 and not chosen.grid[1]["beats_model"]
    # more hits, but the model's first places lost: MRR below the model beyond noise, so not chosen either
    model = np.where(np.arange(n) < 50, 1.0, 30.0)
    chosen = choose_fusion(np.stack([model, np.full(n, 15.0)], 1), points, model)
    assert chosen.config.weight == 0.0 and chosen.grid[1]["recall@20_vs_model"][0] > 0
    assert chosen.grid[1]["mrr@20_vs_model"][1] < 0
    # select_fusion on real arrays: an LLM list that never holds a target changes nothing
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(n, 61))
    scores[:, 0] = -np.inf
    targets = rng.integers(1, 31, n)
    never = np.tile(np.arange(31, 61), (n, 1))  # items the targets never are
    assert select_fusion(never, scores, targets).config == HybridConfig(weight=0.0, candidates=5)


def test_config_and_grid_are_checked():
    with pytest.raises(ValueError, match="unknown fusion"):
        HybridConfig(fusion="blend")
    with pytest.raises(ValueError, match="weight"):
        HybridConfig(weight=1.5)
    with pytest.raises(ValueError, match="at least one value of weights"):
        FusionGrid(weights=())
    assert "a miss" in HybridConfig(fill=False).protocol and "model's order" in HybridConfig().protocol
    assert FusionGrid().size == 44 and FusionGrid.fixed(HybridConfig(weight=0.2)).points() == [HybridConfig(weight=0.2)]


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_movies(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def index(toy, tmp_path_factory):
    from agentrec.retrieval.index import CatalogueIndex

    return CatalogueIndex.build(toy, "minilm", store=tmp_path_factory.mktemp("store"), progress=False)


@pytest.fixture(scope="module")
def niser_run(toy, tmp_path_factory):
    """A real NISER trained for one epoch on the toy's training sessions."""
    import torch

    from agentrec.models.niser import NISER
    from agentrec.training.trainer import TrainConfig, set_seed, train_model

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "niser"
    set_seed(0)
    train_model(NISER(toy.n_items), toy, TrainConfig(epochs=1, batch_size=4), out=out, progress=False)
    return out


@pytest.mark.integration
def test_predict_hybrid_reranks_real_llm_candidates_with_a_real_model(toy, index, niser_run, tmp_path):
    from agentrec.pipelines.hybrid import model_scores, read_candidates
    from agentrec.training.runs import evaluate_model, load_model

    engine = ScriptedEngine()
    config = HybridConfig(candidates=3)
    out = tmp_path / "hybrid.jsonl"
    result = predict_hybrid(toy, niser_run, "fs", engine, k=5, out=out, config=config, index=index, cache=False)
    records = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert result.n == 4 == len(records) and engine.calls == 1
    assert (tmp_path / "hybrid.llm.jsonl").exists() and (tmp_path / "hybrid.summary.json").exists()
    assert result.llm.k == 5 and result.model == "niser" and set(result.metrics) == {"recall@5", "mrr@5", "ndcg@5"}
    assert result.selection is None and result.valid_llm is None and "fusion given" in result.describe()

    # the same ranks, recomputed from the LLM's grounded lists and the model's scores
    candidates, distances, _ = read_candidates(tmp_path / "hybrid.llm.jsonl", 3)
    _, model = load_model(niser_run, toy)
    scores = model_scores(model, toy.test, np.arange(4))
    expected, top, _ = hybrid_ranks(candidates, scores, toy.test.target, config, k=5)
    assert np.array_equal(result.ranks, expected)
    assert np.array_equal(result.model_ranks, evaluate_model(model, toy, "test").ranks)  # the model alone
    assert [r["rank"] for r in records] == [int(r) for r in expected]  # fill: every target has a rank
    assert [[item["item_id"] for item in r["top_k"]] for r in records] == top.tolist()
    # the first three items are the LLM's candidates, re-ordered; the third session's output had no title
    first = records[0]
    assert {i["item_id"] for i in first["top_k"] if i["source"] == "llm"} == set(candidates[0].tolist())
    assert all("distance" in i and "llm_position" in i for i in first["top_k"] if i["source"] == "llm")
    assert all(i["model_rank"] >= 1 for i in first["top_k"]) and first["model_rank"] >= 1
    assert records[2]["title"] is None and all(i["source"] == "model" for i in records[2]["top_k"])
    # exact Toy Story answer: the target is a candidate, so the hybrid keeps it within the first three
    assert records[0]["llm_rank"] == 1 and records[0]["rank"] <= 3
    # the hybrid took the LLM's candidates in memory (the same arrays as its lines); without out, no file at all
    held_ids, held_distances = result.llm.candidates.head(3)
    assert np.array_equal(held_ids, candidates) and np.array_equal(held_distances, distances)
    quiet = predict_hybrid(toy, niser_run, "fs", ScriptedEngine(), k=5, config=config, index=index, cache=False)
    assert quiet.out is None and quiet.llm.out is None and np.array_equal(quiet.ranks, result.ranks)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hybrid.jsonl", "hybrid.llm.distances.png",
                                                                "hybrid.llm.jsonl", "hybrid.llm.summary.json",
                                                                "hybrid.summary.json"]


def test_a_run_from_another_dataset_is_refused_before_the_llm_runs(toy, niser_run, tmp_path):
    from agentrec.data.dataset import PreparedDataset
    from agentrec.training.runs import DatasetMismatchError

    other = PreparedDataset.load(toy.path)
    other.items.loc[0, "title"] = "Another Film (2001)"  # one title differs: another fingerprint
    other.save(tmp_path / "other")
    engine = ScriptedEngine()
    with pytest.raises(DatasetMismatchError, match="item ids would not line up"):
        predict_hybrid(other, niser_run, "fs", engine, k=3, index=object(), cache=False)
    assert engine.calls == 0


@pytest.mark.integration
def test_cli_predict_hybrid(toy, niser_run, tmp_path):
    from test_engines import FakeOpenAIServer
    from test_predict import scripted_reply
    from typer.testing import CliRunner

    from agentrec.cli.main import app

    def reply(user_text):
        return scripted_reply([{"role": "user", "content": user_text}])

    args = ["predict", "--strategy", "fs", "--data", str(toy.path), "--engine", "openai", "--k", "5",
            "--hybrid", str(niser_run), "--candidates", "3", "--weight", "0.3",
            "--store", str(tmp_path / "store"), "--no-cache", "--quiet", "--out", str(tmp_path / "h.jsonl")]
    with FakeOpenAIServer(reply=reply) as server:
        done = CliRunner().invoke(app, args + ["--base-url", server.url])
    assert done.exit_code == 0, done.output
    assert "hybrid fs -> niser" in done.output and "fusion given (no selection): rrf w = 0.3, M = 3" in done.output
    assert "LLM alone on the same sessions (top-5)" in done.output and "model alone on the same sessions" in done.output
    assert (tmp_path / "h.jsonl").exists() and (tmp_path / "h.llm.jsonl").exists()
    assert len(server.requests) == 4  # the test sessions alone: nothing to choose
    # w not given: chosen on the validation sessions (the toy has one), which the LLM answers first
    chosen = [a for a in args if a not in ("--weight", "0.3")][:-1] + [str(tmp_path / "c.jsonl")]
    with FakeOpenAIServer(reply=reply) as server:
        done = CliRunner().invoke(app, chosen + ["--base-url", server.url, "--valid-sessions", "1"])
        assert done.exit_code == 0, done.output
        assert len(server.requests) == 1 + 4
    assert "valid: the first 1 validation sessions, where the hybrid's w are chosen" in done.output
    assert "fusion chosen on 1 valid sessions (11 fusions" in done.output and "w \\ M" in done.output
    summary = json.loads((tmp_path / "c.summary.json").read_text())
    assert len(summary["selection"]["grid"]) == 11 and summary["config"]["candidates"] == 3
    bad = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "x.jsonl"), "--fusion", "mix"])
    assert bad.exit_code == 2  # typer rejects the choice


# ---------------------------------------------------------------------------------------------- scripted engines
ADJECTIVES = ["Amber", "Brisk", "Crimson", "Dusty", "Electric", "Frozen", "Golden", "Hollow", "Ivory", "Jagged"]
NOUNS = ["Harbor", "Orchard", "Lantern", "Canyon", "Meadow", "Citadel", "Glacier", "Bazaar", "Monsoon", "Quarry"]
REAL = [f"{adjective} {noun}" for adjective in ADJECTIVES for noun in NOUNS]  # items 1-100
DECOYS = [f"Zzyzx Quantum Widget {i}" for i in range(1, 121)]  # items 101-220: in no session
AISLE = 50  # items 1-50 and 51-100


def shop(path, seed: int = 0):
    """A small shop with a known right answer: 100 real items in two aisles of 50, and 120 decoy items that no
    session touches. A session stays in one aisle and draws its items at random without repetition, so a
    model can learn the aisle but not the order: its Recall@20 stays well below 100% (about 20 of the 45 or
    so unseen items of the aisle), and an LLM that names the target exactly has a lot to add. Any decoy
    title's 100 nearest items are decoys, so an LLM writing them never proposes a real item."""
    from agentrec.data.dataset import PreparedDataset, Samples

    rng = np.random.default_rng(seed)

    def sessions(count: int, user: str):
        out = []
        for number in range(count):
            aisle = rng.integers(0, 2)
            items = (aisle * AISLE + rng.permutation(AISLE)[: rng.integers(4, 9)] + 1).tolist()
            out.append((f"{user}{number}", items))
        return out

    histories, targets, users = [], [], []
    for user, items in sessions(400, "t"):
        for end in range(1, len(items)):
            histories.append(items[:end])
            targets.append(items[end])
            users.append(user)
    train = Samples.from_lists(histories, targets, sessions=users)
    held = {}
    for split in ("valid", "test"):
        drawn = sessions(60, split[0])
        held[split] = Samples.from_lists([items[:-1] for _, items in drawn], [items[-1] for _, items in drawn],
                                         sessions=[user for user, _ in drawn])
    titles = REAL + DECOYS
    items = pd.DataFrame({"item_id": range(1, len(titles) + 1), "original_id": [str(i) for i in range(1, len(titles) + 1)],
                          "title": titles})
    dataset = PreparedDataset(items=items, train=train, valid=held["valid"], test=held["test"],
                              stats={"dataset": "shop"})
    dataset.save(path)
    return PreparedDataset.load(path)


class AnswerEngine:
    """Answers from a table: query session (its quoted titles) -> the title to write; anything else a decoy."""

    name = "scripted"

    def __init__(self, answers: dict, fingerprint: str):
        self.answers, self.fingerprint, self.chats = answers, fingerprint, 0

    def generate(self, chats, params):
        self.chats += len(chats)
        return [Generation(text=self.answers.get(tuple(query_session(chat)), DECOYS[7]), tokens_in=100, tokens_out=5,
                           finish_reason="stop") for chat in chats]


def half_right(dataset) -> AnswerEngine:
    """Writes the true next title for every other validation and test session, an unrelated (decoy) title
    for the rest."""
    titles = dataset.titles()
    answers = {}
    for split in ("valid", "test"):
        samples = dataset.split(split)
        for row in range(len(samples)):
            history = tuple(titles[i - 1] for i in samples.history_of(row))
            answers[history] = titles[samples.target[row] - 1] if row % 2 == 0 else DECOYS[row % len(DECOYS)]
    return AnswerEngine(answers, "scripted|half-right")


def unrelated() -> AnswerEngine:
    """Writes an unrelated (decoy) title for every session."""
    return AnswerEngine({}, "scripted|unrelated")


@pytest.fixture(scope="module")
def shop_data(tmp_path_factory):
    return shop(tmp_path_factory.mktemp("shop") / "shop")


@pytest.fixture(scope="module")
def shop_index(shop_data, tmp_path_factory):
    from agentrec.retrieval.index import CatalogueIndex

    return CatalogueIndex.build(shop_data, "minilm", store=tmp_path_factory.mktemp("shop-store"), progress=False)


@pytest.fixture(scope="module")
def shop_run(shop_data, tmp_path_factory):
    """A real NISER trained for three epochs on the shop's 2,000 or so training samples (seconds)."""
    import torch

    from agentrec.models.niser import NISER
    from agentrec.training.trainer import TrainConfig, set_seed, train_model

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("shop-runs") / "niser"
    set_seed(0)
    train_model(NISER(shop_data.n_items), shop_data, TrainConfig(epochs=3, batch_size=50), out=out, progress=False)
    return out


def model_test_ranks(dataset, run) -> np.ndarray:
    from agentrec.training.runs import evaluate_model, load_model

    _, model = load_model(run, dataset)
    return evaluate_model(model, dataset, "test").ranks


@pytest.mark.integration
def test_an_llm_right_half_the_time_makes_the_hybrid_beat_its_model(shop_data, shop_index, shop_run):
    engine = half_right(shop_data)
    result = predict_hybrid(shop_data, shop_run, "fs", engine, k=20, limit=60, valid_sessions=60, index=shop_index,
                            cache=False)
    assert engine.chats == 60 + 60 and result.valid_llm.n == 60 and result.n == 60
    assert result.llm.metrics["recall@20"] == pytest.approx(0.5)  # exactly the sessions it names
    assert np.array_equal(result.model_ranks, model_test_ranks(shop_data, shop_run))
    model, hybrid = result.model_metrics, result.metrics
    assert 0.1 < model["recall@20"] < 0.7  # the model knows the aisle, not the order: room to add
    # chosen on validation, measured once on test: a clear margin on both metrics
    assert result.selection.config.weight > 0 and result.selection.n == 60
    assert hybrid["recall@20"] >= model["recall@20"] + 0.15, (hybrid, model)
    assert hybrid["mrr@20"] >= model["mrr@20"] + 0.08, (hybrid, model)
    assert hybrid["recall@20"] >= result.llm.metrics["recall@20"]  # and at least the LLM alone


@pytest.mark.integration
def test_an_llm_writing_unrelated_titles_gets_weight_zero_and_the_hybrid_equals_its_model(shop_data, shop_index,
                                                                                          shop_run):
    result = predict_hybrid(shop_data, shop_run, "fs", unrelated(), k=20, limit=60, valid_sessions=60,
                            index=shop_index, cache=False)
    # the premise: the LLM never proposes a validation target, so no weight above 0 can help there
    valid_targets = shop_data.valid.target[:60]
    assert not (result.valid_llm.candidates.item_ids == valid_targets[:, None]).any()
    assert (result.valid_llm.candidates.item_ids > 100).all()  # decoys only
    selection = result.selection
    assert selection.config.weight == 0.0 and selection.fell_back and not any(p["beats_model"] for p in selection.grid)
    assert all(p["recall@20"] <= selection.model["recall@20"] for p in selection.grid)  # nothing to gain there
    # on test: the model's ranking, rank for rank (ties included)
    assert np.array_equal(result.ranks, model_test_ranks(shop_data, shop_run))
    assert result.metrics == result.model_metrics


@pytest.mark.integration
def test_compare_chooses_each_hybrid_on_validation_and_checks_it_against_its_model(shop_data, tmp_path):
    """compare on the shop: the unrelated LLM's hybrid row equals the NISER row; the half-right one beats it
    beyond noise; each row's fusion, grid and hybrid - model interval are in the outputs."""
    import torch

    from agentrec.pipelines.compare import CompareConfig, run_compare

    torch.set_num_threads(1)
    config = CompareConfig(strategies=("fs",), models=("niser",), hybrid_model="niser", llm_sessions=60,
                           valid_sessions=60, epochs=2, max_train_samples=None, bootstrap=300)
    out = tmp_path / "cmp"
    engine = unrelated()
    result = run_compare(out, config, data=shop_data.path, engine=engine, progress=False)
    assert engine.chats == 60 + 60
    rows = {row.name: row for row in result.tables[0].rows}
    assert np.array_equal(rows["Hybrid FS -> NISER"].ranks, rows["NISER"].ranks)
    (check,) = result.hybrid_checks
    assert check["fusion"]["weight"] == 0.0 and check["not_below"] and check["n"] == 60
    assert check["difference"]["recall@20"] == {"point": 0.0, "lo": 0.0, "hi": 0.0}
    assert "Hybrid FS -> NISER - NISER, 60 test sessions: +0.00 R@20 [+0.00, +0.00]" in result.table()
    assert "not below its model" in result.table()

    engine = half_right(shop_data)
    result = run_compare(out, config, data=shop_data.path, engine=engine, progress=False)
    assert result.trained == [] and engine.chats == 60 + 60  # the model is reused; the LLM rows are new
    (check,) = result.hybrid_checks
    # beyond noise: the 95% paired intervals of hybrid - model lie above 0, on the same 60 test sessions
    assert check["fusion"]["weight"] > 0 and check["difference"]["recall@20"]["lo"] > 0.10
    assert check["difference"]["mrr@20"]["lo"] > 0.03 and len(check["selection"]["grid"]) == 44
    markdown = (out / "compare.md").read_text()
    assert "Each hybrid against its model alone" in markdown and "validation R@20 (MRR@20)" in markdown
    data = json.loads((out / "compare.json").read_text())
    assert data["hybrid_vs_model"][0]["fusion"] == check["fusion"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hybrid"]["valid_sessions"] == 60 and manifest["llm"]["valid_sessions"] == 60
    assert manifest["hybrid"]["rows"][0]["selection"]["grid"] == check["selection"]["grid"]
