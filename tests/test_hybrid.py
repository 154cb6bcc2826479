"""The hybrid recommender: fusion rules on hand-computed inputs, the fill, ranks with ties, and
``predict_hybrid`` end to end (scripted LLM, real Chroma with the shipped MiniLM, a real trained NISER run).

Hand-computed fusion case (one session, candidates 5, 3, 7 nearest first)::

    distances      0.1   0.2   0.3      -> similarity 0.9 0.8 0.7 -> min-max 1.0 0.5 0.0
    model scores   1.0   3.0   2.0      ->                           min-max 0.0 1.0 0.5
    rerank:  3 (3.0), 7 (2.0), 5 (1.0)
    blend w=0.5: 5: 0.5, 3: 0.75, 7: 0.25 -> 3, 5, 7
    blend w=0.8: 5: 0.8, 3: 0.6,  7: 0.1  -> 5, 3, 7
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_predict import ScriptedEngine
from test_prompting import toy_movies

from agentrec.pipelines.hybrid import HybridConfig, fuse, hybrid_ranks, predict_hybrid

pytestmark = pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning")

CANDIDATES = np.array([[5, 3, 7, 0]])
DISTANCES = np.array([[0.1, 0.2, 0.3, np.inf]])
SCORES = np.array([[1.0, 3.0, 2.0, 99.0]])  # the padding's score must not matter


# ---------------------------------------------------------------------------------------------- fusion
@pytest.mark.parametrize("config, expected", [
    (HybridConfig(fusion="rerank"), [3, 7, 5, 0]),
    (HybridConfig(fusion="blend", weight=0.5), [3, 5, 7, 0]),
    (HybridConfig(fusion="blend", weight=0.8), [5, 3, 7, 0]),
    (HybridConfig(fusion="blend", weight=0.0), [3, 7, 5, 0]),  # w = 0 is the re-rank
    (HybridConfig(fusion="blend", weight=1.0), [5, 3, 7, 0]),  # w = 1 keeps the LLM's order
])
def test_fusion_orders_candidates_as_computed_by_hand(config, expected):
    ordered, fused = fuse(CANDIDATES, DISTANCES, SCORES, config)
    assert ordered.tolist() == [expected]
    assert math.isinf(fused[0, -1]) and fused[0, -1] < 0  # padding last
    if config.fusion == "blend" and config.weight == 0.5:
        assert np.allclose(fused[0, :3], [0.75, 0.5, 0.25])


def test_ties_keep_the_llm_order_and_a_constant_column_decides_nothing():
    ordered, _ = fuse(CANDIDATES, DISTANCES, np.array([[2.0, 2.0, 2.0, 0.0]]), HybridConfig())
    assert ordered.tolist() == [[5, 3, 7, 0]]
    # blend with a constant model column: the LLM's similarity alone orders them
    ordered, fused = fuse(np.array([[7, 3, 5]]), np.array([[0.3, 0.2, 0.1]]), np.array([[4.0, 4.0, 4.0]]),
                          HybridConfig(fusion="blend", weight=0.1))
    assert ordered.tolist() == [[5, 3, 7]] and np.allclose(fused, [[0.1, 0.05, 0.0]])


def test_config_is_checked():
    with pytest.raises(ValueError, match="unknown fusion"):
        HybridConfig(fusion="mix")
    with pytest.raises(ValueError, match="weight"):
        HybridConfig(fusion="blend", weight=1.5)
    assert "a miss" in HybridConfig(fill=False).protocol and "model's order" in HybridConfig().protocol


# ---------------------------------------------------------------------------------------------- ranks and fill
# catalogue of 8 items; the model's scores (column 0 is padding)
MODEL = np.array([-np.inf, 8.0, 1.0, 3.0, 6.0, 1.0, 6.0, 2.0, 0.5])


def test_target_among_candidates_ranks_at_its_fused_position():
    ranks, top, from_llm = hybrid_ranks(np.array([[5, 3, 7]]), np.array([[0.1, 0.2, 0.3]]), MODEL[None], [7],
                                        HybridConfig(), k=5)
    # candidates by model score: 3 (3.0), 7 (2.0), 5 (1.0)
    assert ranks.tolist() == [2.0]
    # fill: the rest by model score: 1 (8.0), then 4 and 6 tie at 6.0 (listed by smaller id)
    assert top.tolist() == [[3, 7, 5, 1, 4]] and from_llm.tolist() == [[True, True, True, False, False]]


def test_fill_ranks_the_llm_misses_by_the_model_with_pessimistic_ties():
    candidates, distances = np.array([[5, 3, 7]]), np.array([[0.1, 0.2, 0.3]])
    # target 6 (6.0) outside: 3 candidates, then item 1 above it and item 4 tied with it -> 3 + 1 + 1 + 1 = 6
    ranks, _, _ = hybrid_ranks(candidates, distances, MODEL[None], [6], HybridConfig(), k=5)
    assert ranks.tolist() == [6.0]
    # target 2 (1.0) ties with candidate 5 (1.0): candidates are out of the comparison -> 3 + #{1,4,6,2} = 7
    ranks, _, _ = hybrid_ranks(candidates, distances, MODEL[None], [2], HybridConfig(), k=5)
    assert ranks.tolist() == [7.0]
    # without fill both are misses, and the list is the candidates alone
    ranks, top, _ = hybrid_ranks(candidates, distances, MODEL[None], [6], HybridConfig(fill=False), k=5)
    assert math.isinf(ranks[0]) and top.tolist() == [[3, 7, 5, 0, 0]]


def test_a_session_without_a_title_gets_the_model_list_or_a_miss():
    nothing = np.zeros((1, 3), dtype=np.int64)
    inf = np.full((1, 3), np.inf)
    ranks, top, from_llm = hybrid_ranks(nothing, inf, MODEL[None], [4], HybridConfig(), k=3)
    assert ranks.tolist() == [3.0]  # 1 (8.0) above, 6 tied: pessimistic
    assert top.tolist() == [[1, 4, 6]] and not from_llm.any()
    ranks, _, _ = hybrid_ranks(nothing, inf, MODEL[None], [4], HybridConfig(fill=False), k=3)
    assert math.isinf(ranks[0])


def test_rows_are_independent_in_a_batch():
    candidates = np.array([[5, 3, 7], [1, 0, 0]])
    distances = np.array([[0.1, 0.2, 0.3], [0.05, np.inf, np.inf]])
    scores = np.stack([MODEL, MODEL[::-1].copy()])
    scores[1, 0] = -np.inf
    ranks, _, _ = hybrid_ranks(candidates, distances, scores, [7, 1], HybridConfig(), k=4)
    assert ranks.tolist() == [2.0, 1.0]


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
    from agentrec.training.runs import load_model

    engine = ScriptedEngine()
    config = HybridConfig(candidates=3)
    out = tmp_path / "hybrid.jsonl"
    result = predict_hybrid(toy, niser_run, "fs", engine, k=5, out=out, config=config, index=index, cache=False)
    records = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert result.n == 4 == len(records) and engine.calls == 1
    assert (tmp_path / "hybrid.llm.jsonl").exists() and (tmp_path / "hybrid.summary.json").exists()
    assert result.llm.k == 3 and result.model == "niser" and set(result.metrics) == {"recall@5", "mrr@5", "ndcg@5"}

    # the same ranks, recomputed from the LLM's grounded lists and the model's scores
    candidates, distances, _ = read_candidates(tmp_path / "hybrid.llm.jsonl", 3)
    _, model = load_model(niser_run, toy)
    scores = model_scores(model, toy.test, np.arange(4))
    expected, top, _ = hybrid_ranks(candidates, distances, scores, toy.test.target, config, k=5)
    assert np.array_equal(result.ranks, expected)
    assert [r["rank"] for r in records] == [int(r) for r in expected]  # fill: every target has a rank
    assert [[item["item_id"] for item in r["top_k"]] for r in records] == top.tolist()
    # the first three items are the LLM's candidates, re-ordered; the third session's output had no title
    first = records[0]
    assert {i["item_id"] for i in first["top_k"] if i["source"] == "llm"} == set(candidates[0].tolist())
    assert all("distance" in i for i in first["top_k"] if i["source"] == "llm")
    assert records[2]["title"] is None and all(i["source"] == "model" for i in records[2]["top_k"])
    # exact Toy Story answer: the target is a candidate, so the hybrid keeps it within the first three
    assert records[0]["llm_rank"] == 1 and records[0]["rank"] <= 3
    # the hybrid took the LLM's candidates in memory (the same arrays as its lines); without out, no file at all
    held_ids, held_distances = result.llm.candidates.head(3)
    assert np.array_equal(held_ids, candidates) and np.array_equal(held_distances, distances)
    quiet = predict_hybrid(toy, niser_run, "fs", ScriptedEngine(), k=5, config=config, index=index, cache=False)
    assert quiet.out is None and quiet.llm.out is None and np.array_equal(quiet.ranks, result.ranks)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hybrid.jsonl", "hybrid.llm.jsonl",
                                                                "hybrid.llm.summary.json", "hybrid.summary.json"]


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
            "--hybrid", str(niser_run), "--candidates", "3", "--fusion", "blend", "--weight", "0.3",
            "--store", str(tmp_path / "store"), "--no-cache", "--quiet", "--out", str(tmp_path / "h.jsonl")]
    with FakeOpenAIServer(reply=reply) as server:
        done = CliRunner().invoke(app, args + ["--base-url", server.url])
    assert done.exit_code == 0, done.output
    assert "hybrid fs -> niser" in done.output and "blend: 0.7 x model + 0.3 x LLM similarity" in done.output
    assert "LLM alone on the same sessions (top-3)" in done.output
    assert (tmp_path / "h.jsonl").exists() and (tmp_path / "h.llm.jsonl").exists()
    bad = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "x.jsonl"), "--fusion", "mix"])
    assert bad.exit_code == 2  # typer rejects the choice
