"""Shards (``--shard I/N``) and their merges: LLM predictions (:func:`merge_predictions`,
``agentrec merge-predictions``) on the toy catalogue with the scripted engine of ``test_predict``.

The toy's test split has four sessions: shard 0/2 holds samples 0 and 2, shard 1/2 samples 1 and 3
(the rule ``i % N == I`` of :mod:`agentrec.core.shards`). Union and merge must equal the unsharded run
record by record (the scripted engine's ``tokens_in`` counts a chat's position in its batch, so that
field is left out of the comparison).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_predict
from test_engines import FakeOpenAIServer
from test_predict import ScriptedEngine, lines, scripted_reply

from agentrec.core.errors import MismatchError, UsageError
from agentrec.core.shards import parse_shard, shard_rows
from agentrec.pipelines.predict import merge_predictions, predict

toy, store, index = test_predict.toy, test_predict.store, test_predict.index  # the module-scoped fixtures

pytestmark = [pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


def comparable(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "tokens_in"}


def test_parse_shard_and_the_rule():
    assert parse_shard("0/2") == (0, 2) and parse_shard(" 1/3 ") == (1, 3) and parse_shard(None) is None
    for bad in ("2/2", "x", "1", "-1/2", "0/0", "a/b", "0/2/3"):
        with pytest.raises(UsageError, match="--shard must be I/N"):
            parse_shard(bad)
    assert shard_rows(5, (0, 2)).tolist() == [0, 2, 4] and shard_rows(5, "1/2").tolist() == [1, 3]
    parts = [shard_rows(10, (i, 3)) for i in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))  # disjoint, and they cover every index


def test_shards_are_disjoint_and_their_union_is_the_unsharded_run(toy, index, tmp_path):
    whole = predict(toy, "fs", ScriptedEngine(), k=3, out=tmp_path / "all.jsonl", index=index, cache=False)
    engines = [ScriptedEngine(), ScriptedEngine()]
    shards = [predict(toy, "fs", engines[i], k=3, shard=(i, 2), out=tmp_path / f"fs-{i}.jsonl", index=index,
                      cache=False) for i in range(2)]
    assert [e.chats for e in engines] == [2, 2]  # each shard asks only for its own sessions
    parts = [lines(tmp_path / f"fs-{i}.jsonl") for i in range(2)]
    assert [r["sample"] for r in parts[0]] == [0, 2] and [r["sample"] for r in parts[1]] == [1, 3]
    assert [r["session"] for r in parts[0]] == ["u7", "u9"]
    union = sorted(parts[0] + parts[1], key=lambda r: r["sample"])
    assert [comparable(r) for r in union] == [comparable(r) for r in lines(tmp_path / "all.jsonl")]
    assert [s.shard for s in shards] == ["0/2", "1/2"] and [s.n for s in shards] == [2, 2]
    assert all(s.selected == 4 for s in shards)

    summary = merge_predictions(tmp_path / "merged.jsonl", [tmp_path / "fs-1.jsonl", tmp_path / "fs-0.jsonl"])
    merged = lines(tmp_path / "merged.jsonl")
    assert [comparable(r) for r in merged] == [comparable(r) for r in lines(tmp_path / "all.jsonl")]
    assert summary["metrics"] == whole.metrics and summary["n"] == 4
    assert summary["coverage"] == {"sessions": 4, "selected": 4, "missing": []}
    written = json.loads((tmp_path / "merged.summary.json").read_text())
    assert written["metrics"] == whole.metrics and written["unparseable"] == whole.unparseable == 1


def test_merge_refuses_duplicates_mismatches_and_gaps(toy, index, tmp_path):
    for i in range(2):
        predict(toy, "fs", ScriptedEngine(), k=3, shard=(i, 2), out=tmp_path / f"fs-{i}.jsonl", index=index,
                cache=False)
    predict(toy, "fs", ScriptedEngine(), k=2, shard=(1, 2), out=tmp_path / "k2-1.jsonl", index=index, cache=False)
    with pytest.raises(UsageError, match=r"sample 0\) is in both .*fs-0.jsonl and .*fs-0.jsonl"):
        merge_predictions(tmp_path / "m.jsonl", [tmp_path / "fs-0.jsonl", tmp_path / "fs-0.jsonl"])
    with pytest.raises(MismatchError, match="differ in k: 2 vs 3"):
        merge_predictions(tmp_path / "m.jsonl", [tmp_path / "fs-0.jsonl", tmp_path / "k2-1.jsonl"])
    with pytest.raises(UsageError, match=r"2 of 4 selected sessions are in no part \(samples 1, 3\)"):
        merge_predictions(tmp_path / "m.jsonl", [tmp_path / "fs-0.jsonl"])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        merge_predictions(tmp_path / "m.jsonl", [tmp_path / "nope.jsonl"])
    assert not (tmp_path / "m.jsonl").exists()  # nothing written by a refused merge
    summary = merge_predictions(tmp_path / "m.jsonl", [tmp_path / "fs-0.jsonl"], allow_partial=True)
    assert summary["coverage"] == {"sessions": 2, "selected": 4, "missing": [1, 3]}
    with pytest.raises(UsageError, match="in shard 1/9"):  # a shard with no sessions
        predict(toy, "fs", ScriptedEngine(), k=3, limit=1, shard=(1, 9), index=index, cache=False)


def test_cli_predict_shards_and_merge_predictions(toy, store, tmp_path):
    from typer.testing import CliRunner

    from agentrec.cli.main import app

    runner = CliRunner()

    def reply(user_text):
        return scripted_reply([{"role": "user", "content": user_text}])

    args = ["predict", "--strategy", "fs", "--data", str(toy.path), "--engine", "openai", "--k", "3",
            "--store", str(store), "--no-cache", "--quiet"]
    with FakeOpenAIServer(reply=reply) as server:
        args += ["--base-url", server.url]
        for out, extra in (("all", []), ("fs-0", ["--shard", "0/2"]), ("fs-1", ["--shard", "1/2"])):
            done = runner.invoke(app, args + ["--out", str(tmp_path / f"{out}.jsonl")] + extra)
            assert done.exit_code == 0, done.output
        assert "shard 1/2" in done.output
        for bad in ("2/2", "x"):
            refused = runner.invoke(app, args + ["--shard", bad, "--out", str(tmp_path / "bad.jsonl")])
            assert refused.exit_code == 1 and "--shard must be I/N" in refused.output
    merged = runner.invoke(app, ["merge-predictions", str(tmp_path / "merged.jsonl"), str(tmp_path / "fs-0.jsonl"),
                                 str(tmp_path / "fs-1.jsonl")])
    assert merged.exit_code == 0, merged.output
    assert "4 of 4 selected sessions from 2 files" in merged.output
    assert [comparable(r) for r in lines(tmp_path / "merged.jsonl")] == \
        [comparable(r) for r in lines(tmp_path / "all.jsonl")]
    twice = runner.invoke(app, ["merge-predictions", str(tmp_path / "m2.jsonl"), str(tmp_path / "fs-0.jsonl"),
                                str(tmp_path / "fs-0.jsonl")])
    assert twice.exit_code == 1 and "shards must be disjoint" in twice.output


# ---------------------------------------------------------------------------------------------- signals
class SignalEngine:
    """A deterministic stand-in for an LLM writing LaMAR signals: the text names a digest of the chat."""

    name = "scripted-signals"
    fingerprint = "scripted-signals|v1"

    def __init__(self):
        self.chats = 0

    def generate(self, chats, params):
        import hashlib

        from agentrec.llm import Generation

        self.chats += len(chats)
        return [Generation(text="Good for a quiet evening at home, mood " + hashlib.sha256(
                    json.dumps(chat).encode()).hexdigest()[:8], tokens_in=10, tokens_out=5, finish_reason="stop")
                for chat in chats]


def set_lines(folder) -> list[dict]:
    return sorted(lines(folder / "signals.jsonl"), key=lambda r: (r["item_id"], r["aspect"]))


def test_signal_shards_merge_to_the_unsharded_set(toy, tmp_path):
    from agentrec.signals.generate import SignalConfig, generate_signals
    from agentrec.signals.merge import merge_signal_sets
    from agentrec.signals.store import SignalSet, SignalSetMismatchError, load_signals

    config = SignalConfig(aspects=("usage", "intent"), retries=0)
    generate_signals(toy, tmp_path / "all", SignalEngine(), config=config)
    engines = [SignalEngine(), SignalEngine()]
    for i in range(2):
        result = generate_signals(toy, tmp_path / f"s{i}", engines[i], config=config, shard=(i, 2))
        assert result.items == toy.n_items // 2 and SignalSet(tmp_path / f"s{i}").manifest["shard"] == f"{i}/2"
    items = [{r["item_id"] for r in set_lines(tmp_path / f"s{i}")} for i in range(2)]
    assert items[0] == set(range(1, toy.n_items + 1, 2)) and not items[0] & items[1]  # item ids 1, 3, ... (index 0, 2, ...)
    with pytest.raises(SignalSetMismatchError, match="shard"):  # a shard's set is resumed by that shard only
        generate_signals(toy, tmp_path / "s0", SignalEngine(), config=config, shard=(1, 2))

    coverage = merge_signal_sets(tmp_path / "merged", [tmp_path / "s1", tmp_path / "s0"])
    assert set_lines(tmp_path / "merged") == set_lines(tmp_path / "all")
    assert coverage["aspects"]["usage"] == {"pairs": toy.n_items, "expected": toy.n_items, "missing": [],
                                            "missing_count": 0}
    _, info = load_signals(tmp_path / "merged", toy)  # an ordinary set for --signals
    assert info["coverage"] == {"usage": 1.0, "intent": 1.0}
    assert SignalSet(tmp_path / "merged").manifest["shard"] is None

    partial = merge_signal_sets(tmp_path / "half", [tmp_path / "s0"])
    assert partial["aspects"]["intent"]["missing"] == sorted(items[1])
    with pytest.raises(UsageError, match=r"item 1, aspect (usage|intent) is in both .*s0 and .*s0"):
        merge_signal_sets(tmp_path / "twice", [tmp_path / "s0", tmp_path / "s0"])
    generate_signals(toy, tmp_path / "other", SignalEngine(), config=SignalConfig(aspects=("usage", "intent"),
                                                                              retries=0, seed=7), shard=(1, 2))
    with pytest.raises(MismatchError, match="differ in sampling"):
        merge_signal_sets(tmp_path / "mixed", [tmp_path / "s0", tmp_path / "other"])
    with pytest.raises(UsageError, match="not empty"):
        merge_signal_sets(tmp_path / "merged", [tmp_path / "s0", tmp_path / "s1"])
    assert not (tmp_path / "twice").exists() and not (tmp_path / "mixed").exists()


def test_cli_signals_shard_and_merge(toy, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import agentrec.llm
    from agentrec.cli.main import app

    monkeypatch.setattr(agentrec.llm, "get_engine", lambda name, config=None: SignalEngine())
    runner = CliRunner()
    base = ["signals", "generate", "--data", str(toy.path), "--aspects", "usage", "--empty-retries", "0", "--quiet"]
    for i in range(2):
        done = runner.invoke(app, base + ["--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/2"])
        assert done.exit_code == 0, done.output
    bad = runner.invoke(app, base + ["--out", str(tmp_path / "bad"), "--shard", "2/2"])
    assert bad.exit_code == 1 and "--shard must be I/N" in bad.output
    merged = runner.invoke(app, ["signals", "merge", str(tmp_path / "m"), str(tmp_path / "s0"), str(tmp_path / "s1")])
    assert merged.exit_code == 0, merged.output
    assert f"usage: {toy.n_items} of {toy.n_items} items" in merged.output
