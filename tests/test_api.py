"""The Python API (:mod:`agentrec.pipelines.api`, re-exported lazily by ``agentrec``).

* The README's "Python API" snippet is read from README.md and run as written on MovieLens-100K,
  with one substitution for time (one epoch on a 2,000-sample subset instead of five full epochs),
  with the real SmolLM2 and MiniLM.
* ``Run``: test metrics computed once and then read back; ``recommend`` by original ids equals the
  model's own ranking (best first, ties by the smaller id), batched histories equal single ones,
  ``exclude_seen``; every wrong input is a UsageError that names the value.
* ``LLMRecommender`` on ad-hoc sessions with the scripted engine of ``test_predict`` (known answers,
  real Chroma + MiniLM index), and once with the real SmolLM2.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_predict import ScriptedEngine, query_session
from test_prompting import TITLES, toy_movies

import agentrec
from agentrec.core.errors import UsageError
from agentrec.data.dataset import Samples
from agentrec.llm import EngineConfig
from agentrec.llm.prompts import PromptConfig
from agentrec.pipelines.api import Recommendation
from agentrec.pipelines.hybrid import model_scores
from agentrec.pipelines.predict import GenerationConfig

pytestmark = [pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

README = Path(__file__).resolve().parents[1] / "README.md"
FIXTURES = Path(__file__).parent / "fixtures"


def readme_snippet() -> str:
    """The fenced Python block of README.md's "## Python API" section."""
    text = README.read_text(encoding="utf-8")
    assert "\n## Python API\n" in text, "README.md lost its '## Python API' section"
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def descending(recs: list[Recommendation]) -> bool:
    scores = [r.score for r in recs]
    return all(a >= b for a, b in zip(scores, scores[1:]))


# ---------------------------------------------------------------------------------------------- the README
@pytest.mark.integration
def test_the_readme_snippet_runs(tmp_path, monkeypatch, capsys):
    code = readme_snippet()
    # the one change, for time: 1 epoch on 2,000 training samples (the README trains 5 full epochs)
    assert code.count("epochs=5)") == 1, "the README snippet changed: update this test's substitution"
    code = code.replace("epochs=5)", "epochs=1, max_train_samples=2000)")
    tree = ast.parse(code)
    last = tree.body[-1]
    assert isinstance(last, ast.Expr), "the snippet ends with llm.recommend(...)"
    tree.body[-1] = ast.copy_location(ast.Assign(targets=[ast.copy_location(ast.Name("llm_recs", ast.Store()), last)],
                                                 value=last.value), last)
    ast.fix_missing_locations(tree)
    monkeypatch.chdir(tmp_path)  # data/, runs/ and vectorstore/ land here
    monkeypatch.setattr("agentrec.llm.cache.cache_dir", lambda: tmp_path / "cache")  # not the user's cache
    namespace: dict = {}
    exec(compile(tree, str(README), "exec"), namespace)

    printed = capsys.readouterr().out
    assert "recall@20" in printed and "ndcg@100" in printed
    stored = json.loads((tmp_path / "runs" / "niser" / "run.json").read_text())["test"]
    assert stored["samples"] == 943 and stored["recall@20"] == namespace["run"].evaluate()["recall@20"]
    (recs,) = namespace["recs"]
    assert len(recs) == 10 and descending(recs)
    assert all(isinstance(r, Recommendation) and isinstance(r.item_id, str) and r.title for r in recs)
    (llm_recs,) = namespace["llm_recs"]  # SmolLM2's answer: a grounded list, or [] when it wrote no title
    assert len(llm_recs) in (0, 10) and descending(llm_recs)
    assert all(-1.0 <= r.score <= 1.0 and isinstance(r.item_id, str) for r in llm_recs)
    print(f"\nREADME snippet: LLM top-3 {[(r.title, round(r.score, 3)) for r in llm_recs[:3]]}")


def test_the_api_is_lazy_and_complete():
    assert set(agentrec.__all__) == {"prepare", "load_dataset", "train", "load_run", "Run", "LLMRecommender",
                                     "Recommendation", "RunSpec"}
    assert agentrec.Run is agentrec.pipelines.api.Run and agentrec.__version__
    assert {"train", "Run", "__version__"} <= set(dir(agentrec))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        agentrec.nope  # noqa: B018


# ---------------------------------------------------------------------------------------------- datasets
def test_prepare_routes_options_and_reuses_the_folder(tmp_path):
    source = FIXTURES / "recbole" / "tiny"
    first = agentrec.prepare("recbole", out=tmp_path / "tiny", source=source, max_history=20)
    assert first.saved == "written" and first.stats["protocol"]["params"]["max_history"] == 20
    again = agentrec.prepare("recbole", out=tmp_path / "tiny", source=source, max_history=20)
    assert again.saved == "kept" and again.fingerprint == first.fingerprint
    assert agentrec.load_dataset(tmp_path / "tiny").fingerprint == first.fingerprint
    with pytest.raises(UsageError, match="no option gap_seconds=5"):
        agentrec.prepare("recbole", out=tmp_path / "x", source=source, gap_seconds=5)
    with pytest.raises(UsageError, match="unknown dataset 'movielens'"):
        agentrec.prepare("movielens", out=tmp_path / "x")


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_movies(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def run(toy, tmp_path_factory):
    """A NISER trained one epoch on the toy (never evaluated here: the evaluate test trains its own)."""
    return agentrec.train("niser", toy, out=tmp_path_factory.mktemp("runs") / "niser", epochs=1, batch_size=4)


def test_train_returns_a_run_and_test_is_computed_once(toy, tmp_path, monkeypatch):
    run = agentrec.train("niser", toy.path, out=tmp_path / "niser", epochs=1, batch_size=4, settings={"sigma": 12})
    assert isinstance(run, agentrec.Run) and run.info.model == "niser" and run.info.model_config["sigma"] == 12
    assert run.info.test == {} and run.info.valid
    first = run.evaluate()
    assert set(first) == {f"{m}@{k}" for m in ("recall", "mrr", "ndcg") for k in (10, 20, 100)}
    stored = json.loads((tmp_path / "niser" / "run.json").read_text())["test"]
    assert stored["samples"] == 4 and {k: stored[k] for k in first} == first

    def no_second_time(*args, **kwargs):
        raise AssertionError("test metrics were computed again")

    monkeypatch.setattr("agentrec.pipelines.api.evaluate_run", no_second_time)
    assert run.evaluate() == first
    assert agentrec.load_run(tmp_path / "niser").evaluate() == first  # a run loaded again reads them too
    with pytest.raises(UsageError, match="split must be 'test' or 'valid', got 'train'"):
        run.evaluate("train")


def test_validation_is_computed_and_not_stored(run):
    valid = run.evaluate("valid")
    assert valid["recall@100"] == pytest.approx(run.info.valid["recall@100"])
    assert json.loads((run.path / "run.json").read_text())["test"] == {}


def test_train_checks_its_arguments_before_any_work(toy, tmp_path):
    # UsageError, or at least ValueError (its base) for an unknown model setting
    for kwargs, message in [({"epochs": 0}, "epochs must be >= 1"), ({"epochs": "5"}, "epochs"),
                            ({"settings": {"nope": 1}}, "unknown settings .'nope'."), ({"variant": "mix"}, "'mix'"),
                            ({"settings": {"sigma": -1.0}}, "sigma")]:
        with pytest.raises(ValueError, match=message):
            agentrec.train("niser", toy, out=tmp_path / "x", **kwargs)
    with pytest.raises(UsageError, match="unknown model 'nisr'|'nisr'"):
        agentrec.train("nisr", toy, out=tmp_path / "x")
    with pytest.raises(UsageError, match="data must be a PreparedDataset .* got int 42"):
        agentrec.train("niser", 42, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match="holds files that are not part of a run folder .notes.txt."):
        agentrec.train("niser", toy, out=tmp_path / "mine")  # refused before training, not after


def test_recommend_is_the_models_ranking_by_original_ids(run, toy):
    histories = [["8", "9"], ["10", "11", "12"], ["4"]]
    recs = run.recommend(histories, k=5)
    assert len(recs) == 3 and all(len(r) == 5 and descending(r) for r in recs)
    # the same lists from the model's scores over internal ids (here original id == internal id)
    scores = model_scores(run.model, Samples.from_lists([[8, 9], [10, 11, 12], [4]], [0, 0, 0]), np.arange(3))
    for row, listed in enumerate(recs):
        order = np.argsort(-scores[row, 1:], kind="stable")[:5] + 1  # ties: the smaller id first
        assert [r.item_id for r in listed] == [str(i) for i in order]
        assert [r.score for r in listed] == pytest.approx(scores[row, order].tolist())
        assert [r.title for r in listed] == [TITLES[i - 1] for i in order]
    # a batch equals one call per history (scores up to float rounding: padding differs); ints are ids too
    for history, listed in zip(histories, recs):
        (alone,) = run.recommend([history], k=5)
        assert [r.item_id for r in alone] == [r.item_id for r in listed]
        assert [r.score for r in alone] == pytest.approx([r.score for r in listed], rel=1e-5)
    assert run.recommend([[8, 9]], k=5) == run.recommend([["8", "9"]], k=5)
    assert len(run.recommend([["8"]], k=100)[0]) == toy.n_items  # k is capped at the catalogue


def test_the_popularity_floor_recommends_by_training_counts(toy, tmp_path):
    floor = agentrec.train("pop", toy, out=tmp_path / "pop")
    counts = np.bincount(toy.train.target, minlength=toy.n_items + 1)[1:]  # items 1-7 were training targets
    order = np.argsort(-counts, kind="stable") + 1
    (recs,) = floor.recommend([["8"]], k=4)
    assert [r.item_id for r in recs] == [str(i) for i in order[:4]]
    assert [r.score for r in recs] == [float(counts[i - 1]) for i in order[:4]]


def test_exclude_seen_leaves_out_the_history(run, toy):
    everything = run.recommend([["8", "9"]], k=toy.n_items)[0]
    unseen = run.recommend([["8", "9"]], k=toy.n_items, exclude_seen=True)[0]
    assert {r.item_id for r in everything} >= {"8", "9"} and len(unseen) == toy.n_items - 2
    assert unseen == [r for r in everything if r.item_id not in ("8", "9")]  # the others keep their order
    assert len(run.recommend([["8", "9"]], k=3, exclude_seen=True)[0]) == 3


@pytest.mark.parametrize("histories, message", [
    ("8", "histories must be a list of histories.* got str '8'"),
    (None, "histories must be a list .* got NoneType None"),
    ([], "histories is an empty list"),
    ([["8"], "9"], "history 1 must be a list of item ids, got str '9'"),
    ([["8"], 9], "history 1 must be a list of item ids, got int 9"),
    ([["8"], []], "history 1 is empty"),
    ([["8", "999"]], "history 0: unknown item id '999'"),
    ([["8"], [13]], "history 1: unknown item id 13"),
    ([["8", 3.0]], "history 0: item id 3.0 is a float"),
    ([["8", None]], "history 0: item id None is a NoneType"),
    ([[True]], "history 0: item id True is a bool"),
])
def test_wrong_histories_are_errors_naming_the_value(run, histories, message):
    with pytest.raises(UsageError, match=message):
        run.recommend(histories)


def test_a_wrong_k_is_an_error(run):
    for k in (0, -1, 2.5, "10", True):
        with pytest.raises(UsageError, match="k must be a whole number >= 1"):
            run.recommend([["8"]], k=k)


# ---------------------------------------------------------------------------------------------- LLM
@pytest.fixture(scope="module")
def index(toy, tmp_path_factory):
    from agentrec.retrieval.index import CatalogueIndex

    return CatalogueIndex.build(toy, "minilm", store=tmp_path_factory.mktemp("store"), progress=False)


class CountingIndex:
    """The real index, counting its ``match`` calls."""

    def __init__(self, index):
        self.index, self.calls = index, []

    def match(self, texts, k=10):
        self.calls.append(list(texts))
        return self.index.match(texts, k=k)


@pytest.mark.integration
def test_llm_recommends_for_ad_hoc_sessions_with_one_match_call(toy, index):
    engine, counting = ScriptedEngine(), CountingIndex(index)
    llm = agentrec.LLMRecommender(toy, "fs", engine=engine, index=counting, cache=False)
    # the scripted answer follows the session's first item: Titanic -> "Toy Story (1995)" exactly,
    # Amadeus -> a quoted "Heat (1995)" with an explanation, Rocky -> nothing
    recs = llm.recommend([["8", "12"], [10], ["11", "9"]], k=3)
    assert engine.calls == 1 and engine.chats == 3 and len(counting.calls) == 1
    assert counting.calls[0] == ["Toy Story (1995)", "Heat (1995)"]  # parsed titles, one batched query
    assert [r.item_id for r in recs[0]][:1] == ["1"] and recs[0][0].title == "Toy Story (1995)"
    nearest = index.match(["Toy Story (1995)"], k=1).distances[0, 0]  # item texts hold more than the title
    assert recs[0][0].score == pytest.approx(1.0 - nearest, abs=1e-6) and descending(recs[0]) and len(recs[0]) == 3
    assert recs[1][0].title == "Heat (1995)" and recs[2] == []
    # the prompts show the ad-hoc sessions, nothing else of them
    assert [query_session(chat) for chat in engine.seen] == [["Titanic (1997)", "Brazil (1985)"],
                                                            ["Amadeus (1984)"], ["Rocky (1976)", "Psycho (1960)"]]


@pytest.mark.integration
def test_llm_chain_of_thought_is_one_engine_call_per_step(toy, index):
    engine, counting = ScriptedEngine(), CountingIndex(index)
    llm = agentrec.LLMRecommender(toy, "fscot", engine=engine, index=counting, cache=False,
                                  prompts=PromptConfig(examples=2))
    found = llm.candidates([["8"], ["10", "8"]], k=2)
    assert engine.calls == 2 and engine.chats == 4 and len(counting.calls) == 1
    assert found.rationales == ["rationale for Titanic (1997)", "rationale for Amadeus (1984)"]
    assert found.titles == ["Toy Story (1995)", "Heat (1995)"] and found.item_ids.shape == (2, 2)
    assert found.item_ids[:, 0].tolist() == [1, 2]


def test_llm_checks_histories_before_the_engine_runs(toy):
    engine = ScriptedEngine()
    llm = agentrec.LLMRecommender(toy, "fs", engine=engine, index=object(), cache=False)
    with pytest.raises(UsageError, match="history 1: unknown item id 'x'"):
        llm.recommend([["8"], ["x"]])
    with pytest.raises(UsageError, match="history 0 is empty"):
        llm.recommend([[]])
    with pytest.raises(UsageError, match="model= names the model of an engine made by name"):
        agentrec.LLMRecommender(toy, "fs", engine=engine, model="smollm2", index=object())
    with pytest.raises(ValueError, match="unknown strategy 'cot'"):
        agentrec.LLMRecommender(toy, "cot", engine=engine, index=object())
    assert engine.calls == 0


@pytest.mark.integration
def test_llm_with_smollm2_on_two_sessions(toy, index, tmp_path):
    llm = agentrec.LLMRecommender(toy, "fs", model="smollm2", engine_config=EngineConfig(device="cpu", threads=1),
                                  index=index, cache=tmp_path / "gen.sqlite", prompts=PromptConfig(examples=1),
                                  generation=GenerationConfig(title_tokens=16))
    recs = llm.recommend([["8", "9"], ["10", "11", "12"]], k=3)
    assert len(recs) == 2
    for listed in recs:  # a grounded top-3, or nothing when SmolLM2 wrote no title
        assert len(listed) in (0, 3) and descending(listed)
        assert all(-1.0 <= r.score <= 1.0 and r.title in TITLES for r in listed)
    again = llm.candidates([["8", "9"], ["10", "11", "12"]], k=3)  # the cache answers: no engine call
    assert again.engine_calls == 0 and again.cache_hits == 2 and again.raw[0]
    print(f"\nSmolLM2 fs, ad hoc: {again.raw}")
