"""Issue 12, items 4 and 8: bad inputs on the LLM path get a bounded prompt or a clear error.

* **Prompt budgets** (item 4): a 100 KB title is cut before any tokenizer sees it whole, every prompt
  fits the engine's context with the answer's tokens kept free, and the cuts are counted and reported
  (``predict``'s result and summary JSON, ``signals generate``'s result / ``last_run.json``). Token
  counts come from the shipped SmolLM2 tokenizer, or from :class:`WordEngine`, a fake whose tokens are
  whitespace-separated words (so the right answer can be worked out by hand).
* **Templates** (item 8): a Jinja syntax error names the file and line, a variable a template must
  show (``session``, ``item``...) or one agentrec does not pass names the file and the variable --
  all before any engine is made or asked anything.
* **Malformed server answers** (item 8): ``{"choices": []}``, a choice without a message, HTML or
  other non-JSON bodies... are a :class:`~agentrec.core.errors.ServiceError` naming the server, not a
  traceback.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from test_prompting import toy_movies

from agentrec.core.errors import DataFormatError, NotFoundError, ServiceError, UsageError
from agentrec.core.templates import prompts_dir
from agentrec.llm import EngineError, Generation, SamplingParams
from agentrec.llm.base import PromptTooLongError
from agentrec.llm.openai import OpenAIEngine
from agentrec.llm.prompts import PromptBuilder, PromptConfig, cut_text, validate_aspects, validate_templates

HUGE_TITLE = "The Endless Film " + "épique 🎬 saga " * 7000  # ~100 KB of UTF-8, non-ASCII: many tokens a word
HUGE_ITEM = 9  # Psycho (1960) in the toy: in two test sessions and in no training session


@pytest.fixture
def toy(tmp_path):
    return toy_movies(tmp_path / "toy")


@pytest.fixture
def huge_toy(tmp_path):
    """The toy catalogue with item 9's title replaced by :data:`HUGE_TITLE` (in memory)."""
    dataset = toy_movies(tmp_path / "huge")
    dataset.items.loc[HUGE_ITEM - 1, "title"] = HUGE_TITLE
    return dataset


class WordEngine:
    """A fake engine with a known context whose tokens are words: a text costs its whitespace-separated
    words; a chat costs its messages' words plus 4 a message. It checks that every prompt it is given
    fits, records the longest text it was asked to count, and answers a fixed title."""

    name = "words"
    fingerprint = "words|v1"

    def __init__(self, context_tokens: int):
        self.context_tokens = context_tokens
        self.seen: list[list[dict]] = []
        self.longest_counted = 0

    def count_tokens(self, texts):
        self.longest_counted = max([self.longest_counted, *(len(t) for t in texts)])
        return [len(text.split()) for text in texts]

    def count_chat_tokens(self, chats):
        return [sum(len(m["content"].split()) + 4 for m in chat) for chat in chats]

    def generate(self, chats, params):
        counts = self.count_chat_tokens(chats)
        assert max(counts, default=0) <= self.context_tokens - params.max_new_tokens, "a prompt over the budget"
        self.seen.extend(chats)
        return [Generation(text="Heat (1995)", tokens_in=n, tokens_out=3, finish_reason="stop") for n in counts]


_SMOL = {}


def smollm2():
    """The shipped SmolLM2 through the hf engine; counting and the context need only its tokenizer and config."""
    if "engine" not in _SMOL:
        from agentrec.llm.hf import HFEngine

        _SMOL["engine"] = HFEngine("smollm2", device="cpu", batch_size=2, threads=1)
    return _SMOL["engine"]


# ============================================================================================== item 4: budgets
def test_cut_text_cuts_characters_before_any_count():
    counted = []

    def count(texts):
        counted.extend(len(t) for t in texts)
        return [len(t.split()) for t in texts]

    out = cut_text(HUGE_TITLE, max_chars=600, max_tokens=40, count=count)
    assert max(counted) <= 600  # the 100 KB string never reached the counter
    assert len(out) <= 600 and len(out.split()) <= 40 and out.endswith("...")
    assert HUGE_TITLE.startswith(out[:-3].rstrip())  # a prefix of the title, cut at a word
    assert cut_text("Heat (1995)", max_chars=600, max_tokens=40, count=count) == "Heat (1995)"  # fits: unchanged


@pytest.mark.integration
def test_a_100kb_title_fits_smollm2s_context(huge_toy):
    engine = smollm2()
    assert engine.context_tokens == 8192  # SmolLM2's config: max_position_embeddings
    counted = []
    real_count = engine.count_tokens
    engine.count_tokens = lambda texts: counted.extend(len(t) for t in texts) or real_count(texts)
    try:
        builder = PromptBuilder(huge_toy, PromptConfig(examples=2), engine=engine)
        chats = builder.chats("fs.jinja", range(4), max_new_tokens=32)
    finally:
        del engine.count_tokens
    assert max(counted) <= builder.config.item_chars  # the tokenizer never saw the title whole
    label = builder.item_label(HUGE_ITEM)
    assert label.startswith("The Endless Film") and label.endswith("...")
    assert engine.count_tokens([label])[0] <= builder.config.item_tokens
    lengths = engine.count_chat_tokens(chats)
    assert max(lengths) <= 8192 - 32 and max(lengths) < 1000  # was hundreds of thousands of tokens
    assert [HUGE_TITLE[:40] in chat[-1]["content"] for chat in chats] == [True, False, False, True]
    assert builder.cuts.items == 1 and builder.cuts.prompts == 0  # one item cut; then every prompt fit


def test_hf_engine_refuses_a_prompt_over_its_context_before_loading_weights():
    from agentrec.llm.hf import HFEngine

    engine = HFEngine("smollm2", device="cpu", context_tokens=64)
    chat = [{"role": "user", "content": "Heat " * 100}]
    with pytest.raises(PromptTooLongError, match=r"chat 0 has \d+ prompt tokens.*64-token context and 16 are kept"):
        engine.generate([chat], SamplingParams(max_new_tokens=16))
    assert engine._loaded is None  # refused before the model's weights were loaded


def test_an_over_long_prompt_loses_examples_first_then_the_oldest_items(toy):
    def count_of(config):  # the prompt of test session 1 (Amadeus, Rocky, Brazil) under ``config``, in words
        (chat,) = PromptBuilder(toy, config, engine=WordEngine(10**6)).chats("fs.jinja", [1], max_new_tokens=8)
        return chat, WordEngine(0).count_chat_tokens([chat])[0]

    full_chat, full = count_of(PromptConfig(examples=3))
    bare_chat, bare = count_of(PromptConfig(examples=0))
    short_chat, short = count_of(PromptConfig(examples=0, max_history=2))
    assert full > bare > short

    # room for the session but no example: all three examples go, no session item
    builder = PromptBuilder(toy, PromptConfig(examples=3), engine=WordEngine(bare + 8))
    (chat,) = builder.chats("fs.jinja", [1], max_new_tokens=8)
    assert chat == bare_chat
    assert (builder.cuts.prompts, builder.cuts.examples_dropped, builder.cuts.session_items_dropped) == (1, 3, 0)

    # one word less: the oldest session item goes too, the two most recent stay
    builder = PromptBuilder(toy, PromptConfig(examples=3), engine=WordEngine(bare + 8 - 1))
    (chat,) = builder.chats("fs.jinja", [1], max_new_tokens=8)
    assert chat == short_chat and "Session: 'Rocky (1976)', 'Brazil (1985)'" in chat[-1]["content"]
    assert (builder.cuts.examples_dropped, builder.cuts.session_items_dropped) == (3, 1)

    # a prompt that fits is left alone, and nothing is counted
    builder = PromptBuilder(toy, PromptConfig(examples=3), engine=WordEngine(full + 8))
    assert builder.chats("fs.jinja", [1], max_new_tokens=8) == [full_chat] and builder.cuts.prompts == 0


def test_an_aspect_prompt_cuts_its_item_further_and_a_hopeless_one_is_refused(huge_toy):
    config = PromptConfig(fields=("title",))
    roomy = PromptBuilder(huge_toy, config, engine=WordEngine(10**6))
    (chat,) = roomy.aspect_chats("usage", [HUGE_ITEM], max_new_tokens=8)
    needed = WordEngine(0).count_chat_tokens([chat])[0]
    assert roomy.cuts.items == 1 and roomy.cuts.prompts == 0

    engine = WordEngine(needed + 8 - 20)  # 20 words short: the item text is cut again
    tight = PromptBuilder(huge_toy, config, engine=engine)
    (chat,) = tight.aspect_chats("usage", [HUGE_ITEM], max_new_tokens=8)
    assert engine.count_chat_tokens([chat])[0] <= needed - 20 and tight.cuts.prompts == 1
    assert chat[-1]["content"].startswith("Item: The Endless Film")

    # the template's own demonstrations need more than this context: a clear error, not a crash later
    hopeless = PromptBuilder(huge_toy, config, engine=WordEngine(40))
    with pytest.raises(UsageError, match=r"template aspect_usage.jinja: the prompt needs .* tokens.*longer context"):
        hopeless.aspect_chats("usage", [1], max_new_tokens=8)
    with pytest.raises(UsageError, match="fill the engine's whole context of 40 tokens"):
        hopeless.aspect_chats("usage", [1], max_new_tokens=40)


def test_a_very_long_session_is_shrunk_in_a_few_renders(toy):
    from agentrec.data.dataset import PreparedDataset, Samples

    history = [1 + i % 12 for i in range(3000)]  # 3,000 items: the newest are 12, 1, 2, ... ending in item 12
    long = PreparedDataset(items=toy.items, train=toy.train, valid=toy.valid,
                           test=Samples.from_lists([history], [1], sessions=["u"]), stats={"dataset": "ml-long"})
    engine = WordEngine(200)
    calls = []
    count = engine.count_chat_tokens
    engine.count_chat_tokens = lambda chats: calls.append(len(chats)) or count(chats)
    builder = PromptBuilder(long, PromptConfig(examples=0, max_history=3000), engine=engine)
    (chat,) = builder.chats("zcot_rationale.jinja", [0], max_new_tokens=8)
    assert count([chat])[0] <= 200 - 8 and len(calls) < 30  # bisection, not one render per dropped item
    shown = re.findall(r"'(.+?)'(?:, |\n)", chat[-1]["content"])
    assert shown[-1] == "Brazil (1985)" and 1 < len(shown) < 100  # the most recent items stay
    assert builder.cuts.session_items_dropped == 3000 - len(shown) and builder.cuts.prompts == 1


def test_vllm_engine_refuses_a_prompt_over_max_model_len(monkeypatch):
    import sys

    from test_engines import fake_vllm

    from agentrec.llm import EngineConfig, get_engine

    module, platforms = fake_vllm(on_cpu=False)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    engine = get_engine("vllm", EngineConfig(max_model_len=64))
    assert engine.context_tokens == 64
    with pytest.raises(PromptTooLongError, match="64-token context"):
        engine.generate([[{"role": "user", "content": "Heat " * 200}]], SamplingParams(max_new_tokens=8))
    assert module.calls == []  # vLLM was never asked
    assert get_engine("vllm", EngineConfig(max_model_len=64, context_tokens=32)).context_tokens == 32


class FirstItemsIndex:
    """A stand-in catalogue index: every title's nearest items are 1..k (grounding is not under test here)."""

    def match(self, titles, k):
        return types.SimpleNamespace(item_ids=np.tile(np.arange(1, k + 1), (len(titles), 1)),
                                     distances=np.zeros((len(titles), k)))


def test_predict_counts_and_reports_the_cuts(huge_toy, tmp_path):
    from agentrec.pipelines.predict import predict

    engine = WordEngine(2048)
    out = tmp_path / "fs.jsonl"
    result = predict(huge_toy, "fscot", engine, k=3, index=FirstItemsIndex(), cache=False, out=out,
                     prompts=PromptConfig(examples=2))
    assert len(engine.seen) == 8  # every prompt of both steps passed the engine's own check
    assert result.items_cut == 1 and result.prompts_cut == 0 and result.context_tokens == 2048
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["items_cut"] == 1 and summary["prompts_cut"] == 0 and summary["context_tokens"] == 2048
    assert "prompt budget: 2,048-token context; 1 item texts cut, 0 prompts cut to fit" in result.describe()

    small = WordEngine(160)  # the few-shot examples no longer fit: prompts are cut, and counted
    result = predict(huge_toy, "fs", small, k=3, index=FirstItemsIndex(), cache=False,
                     prompts=PromptConfig(examples=3))
    assert result.prompts_cut > 0 and result.examples_dropped > 0 and "examples and" in result.describe()


def test_signals_generate_counts_the_cuts(huge_toy, tmp_path):
    from agentrec.signals.generate import SignalConfig, generate_signals
    from agentrec.signals.store import SignalSet

    engine = WordEngine(4096)
    config = SignalConfig(aspects=("usage", "intent"), max_new_tokens=8, retries=0)
    result = generate_signals(huge_toy, tmp_path / "s", engine, config=config, item_ids=[1, HUGE_ITEM])
    assert result.generated == 4 and result.items_cut == 1 and result.prompts_cut == 0  # one item, both aspects
    assert result.to_dict()["items_cut"] == 1 and result.to_dict()["context_tokens"] == 4096  # -> last_run.json
    assert "1 item texts cut, 0 prompts cut to fit" in result.describe()
    assert SignalSet(tmp_path / "s").manifest["prompt_budget"] == {"item_chars": 600, "item_tokens": 160,
                                                                   "context_tokens": 4096}
    assert max(len(chat[-1]["content"]) for chat in engine.seen) < 700


@pytest.mark.integration
def test_signals_generate_with_smollm2_finishes_on_a_100kb_title(huge_toy, tmp_path):
    from agentrec.signals.generate import SignalConfig, generate_signals
    from agentrec.signals.store import SignalSet

    config = SignalConfig(aspects=("summary",), max_new_tokens=4, retries=0)
    result = generate_signals(huge_toy, tmp_path / "s", smollm2(), config=config, item_ids=[HUGE_ITEM])
    assert result.generated == 1 and result.items_cut == 1 and result.context_tokens == 8192
    (record,) = SignalSet(tmp_path / "s").read()[0].values()
    assert 0 < record["tokens_in"] < 1000 and record["tokens_out"] <= 4


# ============================================================================================== item 8: templates
def own_templates(tmp_path, name: str, old: str, new: str):
    """A copy of the shipped templates with ``old`` replaced by ``new`` in ``name``; returns the folder."""
    folder = tmp_path / "mine"
    if not folder.exists():
        shutil.copytree(prompts_dir(), folder)
    path = folder / name
    source = path.read_text()
    assert old in source
    path.write_text(source.replace(old, new, 1))
    return folder


class UntouchableEngine:
    """An engine the run must never reach: any use of it fails the test."""

    name = "untouchable"

    @property
    def fingerprint(self):
        raise AssertionError("the engine was asked for its fingerprint before the templates were checked")

    def generate(self, chats, params):
        raise AssertionError("the engine was called before the templates were checked")


def test_a_syntax_error_names_the_file_and_line_before_the_engine(tmp_path, toy):
    from agentrec.pipelines.predict import predict

    folder = own_templates(tmp_path, "fs.jinja", "{% endfor %}", "{% endfo %}")  # line 18 of fs.jinja
    line = next(n for n, text in enumerate((folder / "fs.jinja").read_text().splitlines(), 1) if "endfo %}" in text)
    with pytest.raises(DataFormatError, match=rf"mine/fs.jinja:{line}: Jinja syntax error: .*'endfo'") as error:
        predict(toy, "fs", UntouchableEngine(), prompts=PromptConfig(prompts=str(folder)), cache=False)
    assert error.value.path.endswith("fs.jinja") and error.value.line == line


def test_a_template_without_the_session_is_refused(tmp_path, toy):
    from agentrec.pipelines.predict import predict

    folder = own_templates(tmp_path, "zcot_rationale.jinja", "{% for item in session %}", "{% for item in [] %}")
    with pytest.raises(DataFormatError, match=r"mine/zcot_rationale.jinja: the template never uses the variable "
                                              r"'session': without it every prompt is the same"):
        predict(toy, "zcot", UntouchableEngine(), prompts=PromptConfig(prompts=str(folder)), cache=False)
    validate_templates(["fs.jinja"], folder)  # the other templates of the folder are fine


def test_what_each_template_kind_must_use(tmp_path):
    title = own_templates(tmp_path, "zcot_title.jinja", '{{ rationale | trim if rationale | trim else "(none)" }}', "")
    with pytest.raises(DataFormatError, match="zcot_title.jinja: the template never uses the variable 'rationale'"):
        validate_templates(["zcot_title.jinja"], title)
    # few-shot examples are required only when the run asks for them
    fs = own_templates(tmp_path, "fs.jinja", "{% for example in examples %}", "{% for example in [] %}")
    fs.joinpath("fs.jinja").write_text(fs.joinpath("fs.jinja").read_text().replace("{% if examples %}", "{% if 0 %}"))
    validate_templates(["fs.jinja"], fs, few_shot=False)
    with pytest.raises(DataFormatError, match="fs.jinja: the template never uses the variable 'examples'"):
        validate_templates(["fs.jinja"], fs, few_shot=True)
    aspect = own_templates(tmp_path, "aspect_intent.jinja", "Item: {{ item }}", "Item: ?")
    with pytest.raises(DataFormatError, match="aspect_intent.jinja: the template never uses the variable 'item'"):
        validate_aspects(("usage", "intent"), aspect)


def test_an_unknown_variable_or_a_failing_render_names_file_and_line(tmp_path):
    folder = own_templates(tmp_path, "fs.jinja", "{{ domain }}", "{{ platform_name }}")
    with pytest.raises(DataFormatError, match=r"fs.jinja:9: 'platform_name' is undefined: agentrec passes fs.jinja "
                                              r"only domain, item_noun, session, examples"):
        validate_templates(["fs.jinja"], folder)
    folder = own_templates(tmp_path / "b", "fs.jinja", "{{ example.next }}", "{{ example.target }}")
    line = next(n for n, text in enumerate((folder / "fs.jinja").read_text().splitlines(), 1)
                if "example.target" in text)
    with pytest.raises(DataFormatError, match=rf"fs.jinja:{line}: rendering with sample values failed: UndefinedError"):
        validate_templates(["fs.jinja"], folder)


@pytest.mark.parametrize("setup, error, message", [
    (lambda d: (d / "fs.jinja").unlink(), NotFoundError, r"fs.jinja does not exist: a --prompts folder must hold"),
    (lambda d: (d / "fs.jinja").write_bytes("{% block user %}tâche {{ session }}{% endblock %}".encode("latin-1")),
     DataFormatError, r"fs.jinja: not UTF-8 text"),
    (lambda d: (d / "fs.jinja").write_text("Predict after {{ session }} {{ examples }}"),
     DataFormatError, r"fs.jinja: template fs.jinja is not a chat template: it has no \{% block user %\}"),
    (lambda d: (d / "fs.jinja").write_text("{% block user %}{% if 0 %}{{ session }}{{ examples }}{% endif %}"
                                           "{% endblock %}"), DataFormatError, r"block user %\} renders empty"),
])
def test_other_broken_template_folders(tmp_path, setup, error, message):
    folder = tmp_path / "mine"
    shutil.copytree(prompts_dir(), folder)
    setup(folder)
    with pytest.raises(error, match=message):
        validate_templates(["fs.jinja"], folder)


def test_a_missing_prompts_folder_is_named(tmp_path):
    with pytest.raises(NotFoundError, match=r"--prompts .*nowhere: no such folder"):
        validate_templates(["fs.jinja"], tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotFoundError, match="not a folder"):
        validate_templates(["fs.jinja"], tmp_path / "file")


def test_every_shipped_template_passes_its_own_check():
    from agentrec.llm.prompts import ASPECTS, STRATEGIES, TEMPLATE_CONTRACTS

    for strategy in STRATEGIES.values():
        validate_templates(strategy.templates, few_shot=strategy.few_shot)
    validate_aspects(tuple(ASPECTS))
    assert set(TEMPLATE_CONTRACTS) == {n for s in STRATEGIES.values() for n in s.templates} | set(ASPECTS.values())


def test_signals_generate_checks_its_templates_before_the_engine(tmp_path, toy):
    from agentrec.signals.generate import SignalConfig, generate_signals

    folder = own_templates(tmp_path, "aspect_summary.jinja", "{% block user %}", "{% block user %}{% if %}")
    config = SignalConfig(aspects=("summary",), prompts=str(folder))
    with pytest.raises(DataFormatError, match=r"mine/aspect_summary.jinja:\d+: Jinja syntax error"):
        generate_signals(toy, tmp_path / "s", UntouchableEngine(), config=config)
    assert not (tmp_path / "s").exists()  # nothing written either


@pytest.mark.parametrize("command", ["predict", "signals"])
def test_cli_refuses_a_broken_template_before_making_the_engine(tmp_path, toy, monkeypatch, command):
    from typer.testing import CliRunner

    import agentrec.llm
    from agentrec.cli.main import app

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine was made before the templates were checked")

    monkeypatch.setattr(agentrec.llm, "get_engine", no_engine)
    if command == "predict":
        folder = own_templates(tmp_path, "fs.jinja", "{% for item in session %}", "{% for item in [] %}")
        args = ["predict", "--strategy", "fs", "--data", str(toy.path), "--out", str(tmp_path / "x.jsonl"),
                "--store", str(tmp_path / "store"), "--no-cache", "--engine", "vllm", "--prompts", str(folder)]
        expected = "fs.jinja: the template never uses the variable 'session'"
    else:
        folder = own_templates(tmp_path, "aspect_usage.jinja", "{{ item }}", "{{ item }")
        args = ["signals", "generate", "--data", str(toy.path), "--out", str(tmp_path / "s"), "--aspects", "usage",
                "--engine", "vllm", "--prompts", str(folder)]
        line = next(n for n, text in enumerate((folder / "aspect_usage.jinja").read_text().splitlines(), 1)
                    if "{{ item }" in text)
        expected = f"aspect_usage.jinja:{line}: Jinja syntax error"
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 1 and expected in done.output, done.output
    assert "Traceback" not in done.output and len(done.output.strip().splitlines()) == 1


# ============================================================================================== item 8: servers
class RawServer:
    """An HTTP server on 127.0.0.1 that answers every completion with one fixed body (and content type), and
    ``/v1/models`` with ``models`` (a JSON-able value, or bytes sent as they are)."""

    def __init__(self, body: bytes, content_type: str = "application/json", models=None):
        self.requests = 0
        server = self
        models = models if models is not None else {"object": "list", "data": [{"id": "m", "object": "model"}]}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, data: bytes, kind: str):
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                data = models if isinstance(models, bytes) else json.dumps(models).encode()
                self._send(data, "text/html" if isinstance(models, bytes) else "application/json")

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                server.requests += 1
                self._send(body, content_type)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def engine_for(url: str, **options) -> OpenAIEngine:
    settings = dict(model="m", retries=2, backoff_s=0.01, backoff_max_s=0.02, timeout_s=5.0)
    settings.update(options)
    return OpenAIEngine(url, **settings)


def completion(message) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}).encode()


CHAT = [{"role": "user", "content": "Name a film."}]
PARAMS = SamplingParams(max_new_tokens=8)


@pytest.mark.parametrize("body, content_type, problem", [
    (b'{"choices": []}', "application/json", "an empty list of choices"),
    (b'{"choices": null}', "application/json", "no list of choices"),
    (b'{"id": "x"}', "application/json", "no list of choices"),
    (b'[1, 2]', "application/json", "no list of choices"),
    (b'{"choices": [{"index": 0, "finish_reason": "stop"}]}', "application/json", "has no message object"),
    (b'{"choices": ["Heat"]}', "application/json", "has no message object"),
    (completion({"role": "assistant", "content": 42}), "application/json", "content is int '42', not text"),
    (completion({"role": "assistant", "content": [1, 2]}), "application/json", "content is a list of .*not text parts"),
    (b"<html><body>Bad gateway</body></html>", "text/html", "no list of choices in text '<html>"),
    (b'{"choices": [', "application/json", "the answer is not JSON"),
    (b"", "application/json", "the answer is not JSON"),
])
def test_a_malformed_answer_is_an_error_naming_the_server(body, content_type, problem):
    with RawServer(body, content_type) as server:
        engine = engine_for(server.url)
        with pytest.raises(EngineError, match=rf"server at {server.url} .*{problem}") as error:
            engine.generate([CHAT], PARAMS)
    assert isinstance(error.value, ServiceError) and error.value.partial == [None]
    assert server.requests == 1  # not retried: a server that answers so once does so again


def test_null_or_parted_content_and_odd_usage_are_read_not_refused():
    with RawServer(completion({"role": "assistant", "content": None})) as server:
        (g,) = engine_for(server.url).generate([CHAT], PARAMS)
    assert g.text == "" and g.finish_reason == "stop"  # the schema allows null content: an empty generation
    parts = {"role": "assistant", "content": [{"type": "text", "text": "Heat "}, {"type": "text", "text": "(1995)"}]}
    body = json.loads(completion(parts))
    body["usage"] = {"prompt_tokens": "many", "completion_tokens": -1}
    with RawServer(json.dumps(body).encode()) as server:
        (g,) = engine_for(server.url).generate([CHAT], PARAMS)
    assert g.text == "Heat (1995)" and g.tokens_in is None and g.tokens_out is None


@pytest.mark.parametrize("models, problem", [
    ({"object": "list", "data": []}, "serves no model"),
    ({"object": "list", "data": None}, "answered the model list with"),
    (b"<html>login</html>", "answered the model list with text '<html>login</html>'"),
    ({"object": "list", "data": [{"object": "model"}]}, "lists a model without an id"),
])
def test_a_malformed_model_list_names_the_server(models, problem):
    with RawServer(completion({"role": "assistant", "content": "x"}), models=models) as server:
        engine = engine_for(server.url, model=None)
        with pytest.raises(ServiceError, match=rf"server at {server.url} .*{problem}"):
            engine.generate([CHAT], PARAMS)


def test_the_servers_context_length_is_used_when_it_lists_one():
    models = {"object": "list", "data": [{"id": "served", "object": "model", "max_model_len": 2048}]}
    with RawServer(completion({"role": "assistant", "content": "x"}), models=models) as server:
        engine = engine_for(server.url, model=None)
        assert engine.model == "served" and engine.context_tokens == 2048
        assert engine_for(server.url, model=None, context_tokens=1024).context_tokens == 1024  # configured wins
    assert engine_for("http://127.0.0.1:9/v1").context_tokens == 8192  # the default: nothing was asked
