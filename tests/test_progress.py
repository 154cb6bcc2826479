"""Progress wherever an LLM works (issue 16, item 4), engine data parallelism (item 3), ``--device`` (#15 item 1).

* Every engine reports its own batches (:meth:`agentrec.llm.base.Engine.report_batch`): hf per ``batch_size``
  generate call (the real SmolLM2), openai per completed request (the fake server of ``test_engines``),
  langchain per reply, vLLM per finished request through the ``use_tqdm`` stand-in vLLM's loop calls
  (a stand-in ``vllm`` module that calls it as vLLM does); :func:`agentrec.llm.base.generate_reporting` moves
  a bar by those reports, and the counts always add up to the generations'.
* ``data_parallel_size``: replica processes, each a plain ``vllm.LLM`` on its own GPUs, given a share of the
  chats (a stand-in ``vllm`` package on disk, so that the spawned replicas import it too).
* The hybrid and ``compare`` draw an :class:`~agentrec.core.progress.LLMProgress` bar over their LLM sessions;
  ``compare`` logs each stage with the time so far and an ETA.
* ``--device`` on ``compare`` and ``predict`` is where torch work runs; ``--llm-device`` the hf engine's.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import types

import pytest

from agentrec.core.errors import UsageError
from agentrec.llm import EngineConfig, EngineError, SamplingParams, get_engine
from agentrec.llm.base import Engine, Generation, generate_reporting


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


class Recorder:
    """Anything with ``update(n, tokens_out=...)``: what :func:`generate_reporting` moves."""

    def __init__(self):
        self.updates: list[tuple[int, int]] = []

    def update(self, n: int = 1, *, tokens_out: int = 0) -> None:
        self.updates.append((n, tokens_out))

    @property
    def done(self) -> int:
        return sum(n for n, _ in self.updates)

    @property
    def tokens(self) -> int:
        return sum(t for _, t in self.updates)


# ---------------------------------------------------------------------------------------------- generate_reporting
class Silent(Engine):
    """An engine that never reports: counted once, when generate returns."""

    fingerprint = "silent"

    def generate(self, chats, params):
        return [Generation(text="x", tokens_in=1, tokens_out=3) for _ in chats]


class Halfway(Engine):
    """Reports its first chat only, with a token count that is too low: the rest is made up exactly."""

    fingerprint = "halfway"

    def generate(self, chats, params):
        self.report_batch(1, 1)
        return [Generation(text="x", tokens_in=1, tokens_out=4) for _ in chats]


def test_generate_reporting_counts_every_chat_and_token_once():
    params = SamplingParams(max_new_tokens=4)
    bar = Recorder()
    generate_reporting(Silent(), [chat("a"), chat("b")], params, bar)
    assert bar.updates == [(2, 6)]
    bar = Recorder()
    engine = Halfway()
    generate_reporting(engine, [chat("a"), chat("b"), chat("c")], params, bar)
    assert bar.updates == [(1, 1), (2, 11)] and engine.on_batch is None  # the hook is gone after the call


def test_llm_progress_counts_tokens_and_eta(capsys):
    from agentrec.core.progress import LLMProgress

    with LLMProgress(4, desc="test", unit="session", enabled=False) as bar:
        assert bar.eta_s is None
        bar.update(2, tokens_out=10)
        assert bar.done == 2 and bar.tokens_out == 10 and bar.eta_s is not None and bar.eta_s >= 0
    assert capsys.readouterr().err == ""  # disabled: nothing drawn


# ---------------------------------------------------------------------------------------------- hf (real SmolLM2)
@pytest.mark.integration
def test_hf_reports_each_batch_with_its_tokens():
    from agentrec.llm.hf import HFEngine

    engine = HFEngine("smollm2", device="cpu", batch_size=2, threads=1)
    chats = [chat(text) for text in ("Hi.", "Name a fruit.", "Say yes.", "Name a colour.", "Count to 3.")]
    bar = Recorder()
    made = generate_reporting(engine, chats, SamplingParams(max_new_tokens=3), bar)
    assert [n for n, _ in bar.updates] == [2, 2, 1]  # one report per generate call of batch_size chats
    assert bar.tokens == sum(g.tokens_out for g in made) and all(t > 0 for _, t in bar.updates)


# ---------------------------------------------------------------------------------------------- openai, langchain
def test_openai_reports_each_request_as_it_completes():
    from test_engines import FakeOpenAIServer, fast_openai

    with FakeOpenAIServer() as server:
        engine = fast_openai(server.url, concurrency=2)
        bar = Recorder()
        chats = [chat(f"one two {'x ' * i}") for i in range(5)]
        made = generate_reporting(engine, chats, SamplingParams(max_new_tokens=8), bar)
    assert bar.updates and all(n == 1 for n, _ in bar.updates) and bar.done == 5  # per request, none at the end
    assert bar.tokens == sum(g.tokens_out for g in made) == sum(2 + i for i in range(5))


def test_openai_failure_keeps_the_reported_requests():
    from test_engines import FakeOpenAIServer, fast_openai

    with FakeOpenAIServer(refuse="bad") as server:
        engine = fast_openai(server.url, concurrency=1, retries=0)
        bar = Recorder()
        with pytest.raises(EngineError) as caught:
            generate_reporting(engine, [chat("good one"), chat("bad one"), chat("never sent")], SamplingParams(), bar)
    assert bar.done == sum(g is not None for g in caught.value.partial) == 1


def test_langchain_reports_each_reply():
    from test_engines import EchoChatModel

    from agentrec.llm.langchain import LangChainEngine

    engine = LangChainEngine(EchoChatModel(), concurrency=2)
    bar = Recorder()
    made = generate_reporting(engine, [chat("a b"), chat("c d e"), chat("f")], SamplingParams(), bar)
    assert [g.text for g in made] == ["b a", "e d c", "f"]  # in input order, whatever order they completed in
    assert bar.updates == [(1, 0)] * 3


# ---------------------------------------------------------------------------------------------- vllm (stand-in)
FAKE_VLLM = textwrap.dedent('''
    """A stand-in for vLLM: LLM.chat answers "echo: USER TEXT" with 2 tokens per word plus an end token, calling
    use_tqdm as vLLM's LLM._run_engine does; every LLM made and every call is appended to $FAKE_VLLM_LOG."""
    import json, os, types

    def _log(entry):
        path = os.environ.get("FAKE_VLLM_LOG")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(entry) + "\\n")

    class SamplingParams(dict):
        def __init__(self, **options):
            super().__init__(options)

    class LLM:
        def __init__(self, **options):
            self.options = options
            self.model_config = types.SimpleNamespace(max_model_len=4096)
            _log({"made": options, "pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")})

        def get_tokenizer(self):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.options["model"])

        def chat(self, messages, sampling_params=None, use_tqdm=True, add_generation_prompt=True):
            texts = [m[-1]["content"] for m in messages]
            _log({"chat": texts, "pid": os.getpid(), "params": dict(sampling_params or {})})
            if any("boom" in t for t in texts):
                raise RuntimeError("boom in the engine")
            if callable(use_tqdm):
                list(use_tqdm(texts, desc="Adding requests"))
                bar = use_tqdm(total=len(texts), desc="Processed prompts", dynamic_ncols=True,
                               postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s")
            outputs, total_in, total_out = [], 0, 0
            for text in texts:
                ids = list(range(2 * len(text.split()))) + [128009]
                done = types.SimpleNamespace(prompt_token_ids=[1] * (5 + len(text)),
                                             outputs=[types.SimpleNamespace(text="echo: " + text, token_ids=ids,
                                                                            finish_reason="stop")])
                outputs.append(done)
                if callable(use_tqdm):
                    total_in += len(done.prompt_token_ids)
                    in_spd = total_in / bar.format_dict["elapsed"]
                    total_out += len(ids)
                    out_spd = total_out / bar.format_dict["elapsed"]
                    bar.postfix = f"est. speed input: {in_spd:.2f} toks/s, output: {out_spd:.2f} toks/s"
                    bar.update(1)
            if callable(use_tqdm):
                bar.close()
            return outputs
''')


@pytest.fixture
def stand_in_vllm(tmp_path, monkeypatch):
    """The stand-in ``vllm`` package, importable here and in spawned replicas; returns a reader of its log."""
    import json

    root = tmp_path / "fake_vllm"
    (root / "vllm").mkdir(parents=True)
    (root / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    (root / "vllm" / "platforms.py").write_text("import types\ncurrent_platform = types.SimpleNamespace("
                                                "is_cpu=lambda: False)\n")
    log = tmp_path / "vllm.log"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.syspath_prepend(str(root))
    for name in ("vllm", "vllm.platforms"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    def read() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return read


def test_vllm_moves_the_bar_through_its_use_tqdm(stand_in_vllm):
    engine = get_engine("vllm", EngineConfig(model="smollm2"))
    bar = Recorder()
    chats = [chat("one"), chat("two words"), chat("three more words")]
    made = generate_reporting(engine, chats, SamplingParams(max_new_tokens=8), bar)
    assert [g.text for g in made] == ["echo: one", "echo: two words", "echo: three more words"]
    assert [g.tokens_out for g in made] == [3, 5, 7]
    assert [n for n, _ in bar.updates if n] == [1, 1, 1]  # one report per request vLLM finished
    assert bar.done == 3 and bar.tokens == 15  # tokens recovered from vLLM's postfix, made exact at the end
    (made_llm,) = [entry["made"] for entry in stand_in_vllm() if "made" in entry]
    assert "data_parallel_size" not in made_llm and made_llm["tensor_parallel_size"] == 1


def test_vllm_data_parallel_replicas_share_the_chats(stand_in_vllm, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    engine = get_engine("vllm", EngineConfig(model="smollm2", tensor_parallel_size=2, data_parallel_size=2,
                                             enforce_eager=True))
    try:
        assert engine.context_tokens == 4096  # max_model_len, as replica 0 told it
        bar = Recorder()
        texts = ["a", "b c", "d e f", "g", "h i"]
        made = generate_reporting(engine, [chat(t) for t in texts], SamplingParams(max_new_tokens=8, seed=3), bar)
        assert [g.text for g in made] == [f"echo: {t}" for t in texts]  # input order across replicas
        assert bar.done == 5 and bar.tokens == sum(g.tokens_out for g in made)
        log = stand_in_vllm()
        made_llms = [entry for entry in log if "made" in entry]
        # two plain LLMs, one per replica, each on its own two GPUs; vLLM's own data_parallel_size is not used
        assert sorted(entry["cuda"] for entry in made_llms) == ["3,5", "6,7"]
        assert all(e["made"]["tensor_parallel_size"] == 2 and "data_parallel_size" not in e["made"] and
                   e["made"]["enforce_eager"] is True for e in made_llms)
        calls = {entry["pid"]: entry["chat"] for entry in log if "chat" in entry}
        assert sorted(calls.values()) == [["a", "b c"], ["d e f", "g", "h i"]]  # contiguous shares
        assert all(entry["params"]["seed"] == 3 for entry in log if "chat" in entry)

        with pytest.raises(EngineError) as caught:  # a replica that fails keeps the other's share
            engine.generate([chat("fine"), chat("boom")], SamplingParams())
        assert "replica 1" in str(caught.value) and [g and g.text for g in caught.value.partial] == ["echo: fine", None]
        assert engine.generate([chat("again")], SamplingParams())[0].text == "echo: again"  # still serving
    finally:
        engine.close()
    assert not any(p.is_alive() for p in engine.replicas.processes)


def test_vllm_data_parallel_needs_the_gpus(stand_in_vllm, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(UsageError, match=r"--data-parallel-size 2 x --tensor-parallel-size 2 needs 4 GPUs; 2 are "):
        get_engine("vllm", EngineConfig(model="smollm2", tensor_parallel_size=2, data_parallel_size=2))
    assert stand_in_vllm() == []  # refused before any replica started


def test_data_parallel_size_is_an_engine_option_everywhere():
    from test_cli_config import click_command

    from agentrec.cli.options import engine_config_from
    from agentrec.core.options import OptionError

    for path in (("predict",), ("compare",), ("signals", "generate")):
        options = {opt for p in click_command(*path).params for opt in p.opts}
        assert "--data-parallel-size" in options, path
    assert engine_config_from(data_parallel_size=4).data_parallel_size == 4
    with pytest.raises(OptionError) as caught:
        engine_config_from(data_parallel_size=0)
    assert caught.value.option == "data_parallel_size"


# ---------------------------------------------------------------------------------------------- compare's stages
def plan() -> list:
    from agentrec.pipelines.compare import Stage

    return [Stage(("row", "pop"), "Popularity: evaluate on test", kind="train"),
            Stage(("row", "niser"), "NISER: train, evaluate on test", kind="train", units=8),
            Stage(("row", "semsr-f"), "SemNISER-F: train, evaluate on test", kind="train", units=8),
            Stage(("llm", "fs", "valid"), "LLM FS on 100 validation sessions", kind="llm", units=100, strategy="fs"),
            Stage(("llm", "fs", "test"), "LLM FS on 100 test sessions", kind="llm", units=100, strategy="fs"),
            Stage(("llm", "fscot", "test"), "LLM FSCoT on 100 test sessions", kind="llm", units=100,
                  strategy="fscot"),
            Stage(("hybrid", "fs"), "Hybrid FS: rank"),
            Stage(("report",), "tables, figures and manifest")]


def test_stage_clock_eta_from_measured_rates():
    from agentrec.pipelines.compare import StageClock

    lines = []
    log = types.SimpleNamespace(info=lambda text, *args: lines.append(text % args))
    clock = StageClock(plan(), log=log)
    clock.begin(("row", "pop"))
    assert lines[-1].startswith("compare: stage 1/8 Popularity: evaluate on test; 0 s elapsed, ETA once the first")

    def done(key, seconds, units):
        stage = clock.find(key)
        stage.seconds, stage.done_units = seconds, units

    done(("row", "pop"), 1.0, 0)
    done(("row", "niser"), 20.0, 4)  # early stopping after 4 epochs: 5 s an epoch
    clock.begin(("row", "semsr-f"))  # 8 epochs at most: 40 s; the LLM is not timed yet
    assert lines[-1].endswith("ETA at least 40 s (not all of the work is timed yet)")
    done(("row", "semsr-f"), 30.0, 2)
    done(("llm", "fs", "valid"), 80.0, 100)
    clock.find(("llm", "fs", "valid")).work_s = 50.0  # 0.5 s a session once the index and the model were loaded
    clock.begin(("llm", "fs", "test"))
    # the training rate is now (20 + 30) / 6 epochs, but no training is left; FS at 0.5 s, FSCoT (two steps) at 1 s
    assert lines[-1].endswith("ETA 2m 30s"), lines[-1]
    assert "stage 5/8 LLM FS on 100 test sessions" in lines[-1]
    done(("llm", "fs", "test"), 40.0, 0)  # reused: no work, no rate
    assert clock.eta(after=5) == (100.0, True)


def test_stage_clock_times_a_block_and_the_llm_bar_covers_the_llm_sessions(capsys):
    from agentrec.pipelines.compare import StageClock

    clock = StageClock(plan(), log=types.SimpleNamespace(info=lambda *args: None))
    with clock.stage(("row", "niser")) as stage:
        stage.done_units = 3
    assert stage.seconds is not None and stage.done_units == 3
    with clock.stage(("llm", "fs", "valid")) as stage:
        pass
    assert stage.done_units == 100  # planned units, unless the block says otherwise
    bar = clock.llm_bar(enabled=True)
    assert bar.total == 300 and bar.unit == "session-step"  # the LLM sessions not done yet, FSCoT's twice
    bar.update(5, tokens_out=50)
    bar.close()
    err = capsys.readouterr().err
    assert "compare LLM" in err and "5/300" in err


@pytest.mark.integration
def test_compare_logs_its_stages_and_records_them(tiny_data, tmp_path, caplog):
    import logging

    from agentrec.pipelines.compare import CompareConfig, run_compare

    config = CompareConfig(strategies=(), models=("niser",), epochs=1, bootstrap=20, device="cpu")
    with caplog.at_level(logging.INFO, logger="agentrec"):
        result = run_compare(tmp_path / "cmp", config, data=tiny_data, progress=False)
    stages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compare: stage")]
    assert [line.split(";")[0] for line in stages] == [
        "compare: stage 1/3 Popularity: evaluate on test", "compare: stage 2/3 NISER: train, evaluate on test",
        "compare: stage 3/3 tables, figures and manifest"]
    assert "ETA" in stages[1] and result.manifest["device"] == "cpu"
    recorded = result.manifest["stages"]
    assert recorded[1]["units"] == 1 and recorded[1]["done_units"] == 1 and recorded[1]["seconds"] > 0
    # reused, although asked for another device (where a model trained is not part of its checkpoint's key)
    again = run_compare(tmp_path / "cmp", dataclasses.replace(config, device="auto"), data=tiny_data, progress=False)
    assert again.manifest["stages"][1]["units"] == 0 and again.manifest["stages"][1]["stage"] == \
        "NISER: evaluate on test"


# ---------------------------------------------------------------------------------------------- bars end to end
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from test_prompting import toy_movies

    return toy_movies(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def index(toy, tmp_path_factory):
    from agentrec.retrieval.index import CatalogueIndex

    return CatalogueIndex.build(toy, "minilm", store=tmp_path_factory.mktemp("store"), progress=False)


@pytest.fixture(scope="module")
def niser_run(toy, tmp_path_factory):
    import torch

    from agentrec.models.niser import NISER
    from agentrec.training.trainer import TrainConfig, set_seed, train_model

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "niser"
    set_seed(0)
    train_model(NISER(toy.n_items), toy, TrainConfig(epochs=1, batch_size=4), out=out, progress=False)
    return out


@pytest.mark.integration
def test_the_hybrid_draws_one_bar_over_both_splits(toy, index, niser_run, capsys):
    from test_predict import ScriptedEngine

    from agentrec.core.progress import LLMProgress
    from agentrec.pipelines.hybrid import predict_hybrid

    predict_hybrid(toy, niser_run, "fs", ScriptedEngine(), k=5, index=index, cache=False, valid_sessions=1,
                   progress=True)
    err = capsys.readouterr().err
    assert "hybrid fs" in err and "5/5" in err  # 1 validation and 4 test sessions on one bar
    bar = LLMProgress(None, desc="caller", unit="session", enabled=False)  # a caller's bar grows by the work
    predict_hybrid(toy, niser_run, "fscot", ScriptedEngine(), k=5, index=index, cache=False, valid_sessions=1,
                   progress=bar)
    assert bar.total == bar.done == 10 and bar.tokens_out == 50  # 5 sessions x 2 steps, 5 tokens each


@pytest.mark.integration
def test_compare_draws_one_llm_bar_and_logs_llm_stages(toy, tmp_path, capsys, caplog, monkeypatch):
    import logging

    from test_predict import ScriptedEngine

    from agentrec.pipelines.compare import CompareConfig, run_compare

    config = CompareConfig(strategies=("fs",), models=("niser",), hybrid_model="niser", llm_sessions=2,
                           valid_sessions=1, epochs=1, bootstrap=20, device="cpu")
    with caplog.at_level(logging.INFO, logger="agentrec"):
        run_compare(tmp_path / "cmp", config, data=toy.path, engine=ScriptedEngine(), progress=True)
    assert "compare LLM" in capsys.readouterr().err  # one bar: 1 validation and 2 test sessions
    stages = [r.getMessage().split(";")[0] for r in caplog.records if r.getMessage().startswith("compare: stage")]
    assert stages == ["compare: stage 1/6 Popularity: evaluate on test",
                      "compare: stage 2/6 NISER: train, evaluate on test",
                      "compare: stage 3/6 LLM FS on 1 validation session", "compare: stage 4/6 LLM FS on 2 test sessions",
                      "compare: stage 5/6 Hybrid FS: choose its fusion on validation, rank",
                      "compare: stage 6/6 tables, figures and manifest"]
    bars = []
    config = dataclasses.replace(config, strategies=("fs", "zcot"))
    import agentrec.pipelines.compare as compare

    real = compare.StageClock.llm_bar

    def keep(self, *, enabled):
        bars.append(real(self, enabled=False))
        return bars[-1]

    monkeypatch.setattr(compare.StageClock, "llm_bar", keep)
    run_compare(tmp_path / "cmp", config, data=toy.path, engine=ScriptedEngine(), progress=False)
    (bar,) = bars  # FS reused (left out of the total), ZCoT's 3 sessions x 2 steps generated
    assert bar.total == bar.done == 6


# ---------------------------------------------------------------------------------------------- --device
class Stop(Exception):
    """Raised by a recorder in place of the work it records."""


def test_compare_device_reaches_training_the_item_table_and_the_models(tiny_data, tmp_path, monkeypatch):
    import numpy as np

    import agentrec.pipelines.compare as compare
    from agentrec.pipelines.compare import CompareConfig, run_compare

    seen = {"load_model": [], "load_llm_table": [], "train": []}
    real_load_model, real_train = compare.load_model, compare.train_or_reuse

    def load_model(run, dataset, *, device="cpu"):
        seen["load_model"].append(device)
        return real_load_model(run, dataset, device=device)

    def load_llm_table(dataset, embedder, *, progress=True, device="cpu", **kwargs):
        seen["load_llm_table"].append(device)
        return np.zeros((dataset.n_items + 1, 8), dtype=np.float32)

    def train_or_reuse(spec, dataset, runs_dir, **kwargs):
        seen["train"].append(spec.train.device)
        if spec.variant:
            raise Stop
        return real_train(spec, dataset, runs_dir, **kwargs)

    monkeypatch.setattr(compare, "load_model", load_model)
    monkeypatch.setattr(compare, "load_llm_table", load_llm_table)
    monkeypatch.setattr(compare, "train_or_reuse", train_or_reuse)
    with pytest.raises(Stop):
        run_compare(tmp_path / "cmp", CompareConfig(strategies=(), models=("semsr-f",), device="CPU"), data=tiny_data,
                    progress=False)
    assert seen == {"load_model": ["cpu"], "load_llm_table": ["cpu"], "train": ["cpu", "cpu"]}


def test_predict_device_reaches_the_hybrid_model_and_the_embedder(tiny_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import agentrec.pipelines.hybrid as hybrid
    from agentrec.cli.main import app

    seen = {}

    def predict_hybrid(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(hybrid, "predict_hybrid", predict_hybrid)
    result = CliRunner().invoke(app, ["predict", "--strategy", "fs", "--data", str(tiny_data), "--hybrid",
                                      str(tmp_path / "run"), "--out", str(tmp_path / "p.jsonl"), "--store",
                                      str(tmp_path / "store"), "--device", "cpu", "--llm-device", "cuda:1"])
    assert isinstance(result.exception, Stop), result.output
    assert seen["device"] == "cpu" and seen["embedder"].device == "cpu" and seen["embedder"].name == "minilm"
    assert seen["engine_config"].device == "cuda:1"  # the hf LLM's own device

    def load_model(run, dataset, *, device="cpu"):
        seen["load_model"] = device
        raise Stop

    monkeypatch.undo()  # the real predict_hybrid, with a recorder in place of its model load
    monkeypatch.setattr(hybrid, "load_model", load_model)
    with pytest.raises(Stop):
        hybrid.predict_hybrid(tiny_data, tmp_path / "run", "fs", object(), config=hybrid.HybridConfig(), index=object(),
                              cache=False, device="cpu")
    assert seen["load_model"] == "cpu"


def cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("command", ["compare", "predict"])
def test_device_cuda_without_a_gpu_is_one_line(tiny_data, tmp_path, command):
    if cuda_here():
        pytest.skip("this machine has CUDA")
    from typer.testing import CliRunner

    from agentrec.cli.main import app

    args = {"compare": ["compare", "--data", str(tiny_data), "--out", str(tmp_path / "cmp")],
            "predict": ["predict", "--strategy", "fs", "--data", str(tiny_data), "--out", str(tmp_path / "p.jsonl"),
                        "--store", str(tmp_path / "store")]}[command]
    result = CliRunner().invoke(app, args + ["--device", "cuda"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "--device cuda: no CUDA device is available" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "store").exists()
    bad = CliRunner().invoke(app, args + ["--device", "gpu0"])
    assert bad.exit_code == 1 and "--device 'gpu0': must be auto, cpu, cuda or cuda:N" in bad.output


def test_a_compare_manifest_reruns_on_its_device_and_llm_device(tmp_path):
    from test_cli_config import MANIFEST

    from agentrec.cli.compare import manifest_options

    manifest = {**MANIFEST, "config": {**MANIFEST["config"], "device": "cpu"},
                "llm": {**MANIFEST["llm"], "engine_config": {**MANIFEST["llm"]["engine_config"], "device": "cuda:1",
                                                             "data_parallel_size": 2}}}
    options = manifest_options(manifest, tmp_path / "manifest.json")
    assert (options["device"], options["llm-device"], options["data-parallel-size"]) == ("cpu", "cuda:1", 2)
    assert "device" not in manifest_options(MANIFEST, tmp_path / "manifest.json")  # older: compare's default
