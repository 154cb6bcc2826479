"""The CLI's single sources of truth and its config files (issue 13, items 2, 6, 7).

* choices come from the registries: a fake model or engine added before the CLI is imported is a choice;
* one set of engine options, every :class:`~agentrec.llm.EngineConfig` field, on every command that runs an
  engine, reaching the library as typed;
* ``--config FILE`` (TOML or JSON) on every command: validated, flags win, the file's values are named by file
  and key; train's older ``{"train": ..., "model": ...}`` layout; ``compare --config DIR/manifest.json``;
* ``predict --strategy fscot`` alone runs on the offline default.

The library call at the end of a command is replaced by a recorder that keeps its arguments and stops the
command, so these tests see exactly what the CLI hands the library, in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agentrec.cli.main import app
from agentrec.cli.options import ENGINE_SHARED, engine_config_from
from agentrec.llm import EngineConfig

runner = CliRunner()
TINY = "tests/fixtures/recbole/tiny"


class Stop(Exception):
    """Raised by a recorder in place of the library's work (not a user error: it propagates)."""


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


@pytest.fixture
def record(monkeypatch):
    """``record(module, name)`` replaces a library function; ``calls[name]`` holds its (args, kwargs)."""
    import importlib

    calls = {}

    def replace(module: str, name: str):
        def recorder(*args, **kwargs):
            calls[name] = (args, kwargs)
            raise Stop(name)

        monkeypatch.setattr(importlib.import_module(module), name, recorder)

    replace.calls = calls
    return replace


def invoke(args: list[str]):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def stopped(result) -> bool:
    return isinstance(result.exception, Stop)


def click_command(*path: str):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def all_commands():
    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        if hasattr(command, "commands"):  # a group
            for sub, inner in command.commands.items():
                yield (name, sub), inner
        else:
            yield (name,), command


def help_of(*path: str, code: str = "") -> str:
    """``agentrec PATH --help`` in a fresh interpreter that runs ``code`` before importing the CLI."""
    script = (f"{code}\nfrom typer.testing import CliRunner\nfrom agentrec.cli.main import app\n"
              f"print(CliRunner().invoke(app, {list(path) + ['--help']!r}, terminal_width=400).output)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---------------------------------------------------------------------------------------------- one source of truth
def test_a_registered_model_is_a_choice_of_train():
    code = 'from agentrec.models import MODELS\nMODELS.add("fakemodel", "x:Y", "a fake model")'
    text = help_of("train", code=code)
    assert "fakemodel" in text and "a fake model" in text
    assert "fakemodel" not in help_of("train")


def test_a_registered_engine_is_a_choice_of_every_engine_command():
    code = 'from agentrec.llm import ENGINES\nENGINES.add("fakeengine", "x:make", "a fake engine")'
    for path in (("predict",), ("compare",), ("signals", "generate")):
        text = help_of(*path, code=code)
        assert "fakeengine" in text and "a fake engine" in text, path


def test_choices_follow_the_registries():
    from agentrec.data.protocols import PROTOCOLS
    from agentrec.data.sources import SOURCES
    from agentrec.llm import ENGINES
    from agentrec.llm.prompts import STRATEGIES
    from agentrec.models import MODELS

    def choices(command, name):
        (param,) = [p for p in command.params if p.name == name]
        return [member.value for member in param.type_descriptor.annotation]  # the Enum typer made the choice from

    assert choices(click_command("train"), "model") == list(MODELS)
    assert choices(click_command("predict"), "strategy") == list(STRATEGIES)
    assert choices(click_command("data", "prepare"), "name") == list(SOURCES)
    assert choices(click_command("data", "prepare"), "protocol") == list(PROTOCOLS)
    for path in (("predict",), ("compare",), ("signals", "generate")):
        assert choices(click_command(*path), "engine") == list(ENGINES)


def test_the_spelled_out_choices_match_the_library():
    from agentrec.cli.options import FusionName, SemanticMode
    from agentrec.pipelines.hybrid import FUSIONS
    from agentrec.pipelines.train import VARIANTS

    assert [m.value for m in FusionName] == list(FUSIONS)
    assert [m.value for m in SemanticMode] == [v for v in VARIANTS if v]


def engine_option_names(command) -> set[str]:
    return {p.name for p in command.params if p.name not in ("device",)}  # device: the hidden old spelling


def test_every_engine_command_takes_every_engine_setting():
    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    sets = []
    for path in (("predict",), ("compare",), ("signals", "generate")):
        params = {p.name: p for p in click_command(*path).params}
        options = {opt.lstrip("-") for p in params.values() for opt in p.opts}
        for field in fields:
            spelled = {"device": "llm-device"}.get(field, field.replace("_", "-"))
            assert spelled in options, f"{' '.join(path)} lacks --{spelled}"
        sets.append({name for name in params if name in fields | {"llm_device", "engine"}})
    assert sets[0] == sets[1] == sets[2]  # the same set, the same names
    assert ENGINE_SHARED == ("threads",)


def test_engine_config_from_checks_and_maps():
    config = engine_config_from(threads=2, model="m", llm_device="cpu", batch_size=4, context_tokens=512)
    assert (config.model, config.device, config.batch_size, config.threads, config.context_tokens) == \
        ("m", "cpu", 4, 2, 512)
    assert engine_config_from(llm_device="auto", device="cuda:1").device == "cuda:1"  # the old spelling wins when given
    from agentrec.core.options import OptionError

    with pytest.raises(OptionError) as caught:
        engine_config_from(concurrency=0)
    assert caught.value.option == "concurrency"


def test_predict_hands_every_engine_option_to_the_library(data, tmp_path, record):
    record("agentrec.pipelines.predict", "predict")
    result, output = invoke(["predict", "--strategy", "fs", "--data", data, "--out", tmp_path / "p.jsonl",
                             "--store", tmp_path / "store", "--engine", "openai", "--base-url", "http://h:1/v1",
                             "--model", "served", "--api-key", "k", "--concurrency", "3", "--timeout-s", "7",
                             "--retries", "1", "--backoff-s", "0.25", "--backoff-max-s", "2", "--dtype", "bfloat16",
                             "--llm-device", "cpu", "--batch-size", "5", "--tensor-parallel-size", "2",
                             "--no-prefix-caching", "--max-model-len", "4096", "--gpu-memory-utilization", "0.5",
                             "--enforce-eager", "--context-tokens", "2048", "--threads", "2",
                             "--data-parallel-size", "3"])
    assert stopped(result), output
    args, kwargs = record.calls["predict"]
    assert args[2] == "openai"
    assert kwargs["engine_config"] == EngineConfig(
        model="served", device="cpu", dtype="bfloat16", batch_size=5, threads=2, base_url="http://h:1/v1", api_key="k",
        concurrency=3, timeout_s=7.0, retries=1, backoff_s=0.25, backoff_max_s=2.0, tensor_parallel_size=2,
        data_parallel_size=3, prefix_caching=False, max_model_len=4096, gpu_memory_utilization=0.5, enforce_eager=True,
        context_tokens=2048)
    assert len(dataclasses.fields(EngineConfig)) == 19  # every field is an option above (threads: --threads)


def test_compare_and_signals_take_the_engine_options_too(data, tmp_path, record, monkeypatch):
    record("agentrec.pipelines.compare", "run_compare")
    result, output = invoke(["compare", "--data", data, "--out", tmp_path / "cmp", "--engine", "vllm",
                             "--tensor-parallel-size", "4", "--data-parallel-size", "2", "--context-tokens", "1024",
                             "--device", "cpu", "--llm-device", "cuda:1"])
    assert stopped(result), output
    args, kwargs = record.calls["run_compare"]
    assert kwargs["engine"] == "vllm"
    config = kwargs["engine_config"]
    assert (config.tensor_parallel_size, config.data_parallel_size, config.context_tokens, config.threads) == \
        (4, 2, 1024, 1)
    # --device is where torch work runs (models, embedders, ranking), no longer the old spelling of --llm-device
    assert config.device == "cuda:1" and args[1].device == "cpu"

    import agentrec.llm

    record("agentrec.llm", "get_engine")
    result, output = invoke(["signals", "generate", "--data", data, "--out", tmp_path / "s", "--limit", "1",
                             "--engine", "openai", "--base-url", "http://h:1/v1", "--retries", "9",
                             "--empty-retries", "1", "--backoff-max-s", "3"])
    assert stopped(result), output
    args, _ = record.calls["get_engine"]
    assert args[0] == "openai" and args[1].retries == 9 and args[1].backoff_max_s == 3.0
    assert args[1].batch_size == 16  # signals' own default chat batch
    assert agentrec.llm is not None


# ---------------------------------------------------------------------------------------------- --config everywhere
def test_every_command_takes_config():
    for path, command in all_commands():
        assert any("--config" in p.opts for p in command.params), " ".join(path)


def test_train_reads_toml_and_json_with_flags_winning(data, tmp_path, record):
    record("agentrec.pipelines.train", "train_run")
    toml = tmp_path / "niser.toml"
    toml.write_text(f'model = "niser"\ndata = "{data}"\nout = "{tmp_path / "run"}"\nepochs = 4\nbatch-size = 16\n'
                    'lr = 0.01\nexclude_history = true\nset = ["sigma=8"]\n')
    result, output = invoke(["train", "--config", toml, "--epochs", "2"])
    assert stopped(result), output
    (spec, dataset, out), _ = record.calls["train_run"]
    assert spec.model == "niser" and out == tmp_path / "run"
    assert spec.train.epochs == 2  # the flag wins
    assert spec.train.batch_size == 16 and spec.train.lr == 0.01 and spec.train.exclude_history is True
    assert spec.model_settings["sigma"] == 8

    cfg = tmp_path / "niser.json"
    cfg.write_text(json.dumps({"model": "narm", "data": str(data), "out": str(tmp_path / "r2"), "patience": 1,
                               "model_settings": {"hidden_size": 12}}))
    result, output = invoke(["train", "--config", cfg])
    assert stopped(result), output
    (spec, _, _), _ = record.calls["train_run"]
    assert spec.model == "narm" and spec.train.patience == 1 and spec.model_settings["hidden_size"] == 12


def test_train_reads_its_older_layout(data, tmp_path, record):
    record("agentrec.pipelines.train", "train_run")
    cfg = tmp_path / "old.json"
    cfg.write_text(json.dumps({"train": {"epochs": 3, "lr": 0.005}, "model": {"embedding_size": 32, "sigma": 4}}))
    result, output = invoke(["train", "--model", "niser", "--data", data, "--out", tmp_path / "run", "--config", cfg,
                             "--set", "sigma=6"])
    assert stopped(result), output
    (spec, _, _), _ = record.calls["train_run"]
    assert spec.train.epochs == 3 and spec.train.lr == 0.005
    assert spec.model_settings["embedding_size"] == 32 and spec.model_settings["sigma"] == 6  # --set wins


@pytest.mark.parametrize("text,expected", [
    ('epochs = "5"', "cfg.toml: epochs must be a whole number, got '5'"),
    ("epochs = 0", "cfg.toml: epochs must be >= 1, got 0"),
    ("lr = true", "cfg.toml: lr must be a number, got True"),
    ("nope = 1", "cfg.toml: nope: unknown option; this command takes"),
    ("model = 3", "cfg.toml: model must be one of pop, gru4rec"),
    ("[model]\nnope = 1", "cfg.toml: model.nope: niser has no such setting"),
    ("[model]\nsigma = 0", "cfg.toml: model.sigma must be > 0"),
    ("[model]\nsigma = \"big\"", "cfg.toml: model.sigma must be a number, got 'big'"),
    ("epochs = ", "cfg.toml: not valid TOML"),
])
def test_a_bad_config_file_is_named_by_file_and_key(text, expected, data, tmp_path, record):
    record("agentrec.pipelines.train", "train_run")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(text + "\n")
    args = ["train", "--data", data, "--out", tmp_path / "run", "--config", cfg]
    result, output = invoke(args if text.startswith("model =") else args + ["--model", "niser"])
    assert result.exit_code == 1, output
    (line,) = output.strip().splitlines()
    assert line.startswith("error: ") and f"{tmp_path}/{expected}" in line, output
    assert "train_run" not in record.calls and not (tmp_path / "run").exists()


def test_config_file_errors_before_any_work(data, tmp_path):
    result, output = invoke(["train", "--model", "pop", "--data", data, "--out", tmp_path / "r",
                             "--config", tmp_path / "missing.toml"])
    assert result.exit_code == 1 and "--config" in output and "no such file" in output
    (tmp_path / "cfg.yaml").write_text("epochs: 3\n")
    result, output = invoke(["train", "--model", "pop", "--data", data, "--out", tmp_path / "r",
                             "--config", tmp_path / "cfg.yaml"])
    assert result.exit_code == 1 and ".toml or a .json" in output
    (tmp_path / "args.toml").write_text('run = "runs/x"\n')
    result, output = invoke(["evaluate", tmp_path / "r", "--config", tmp_path / "args.toml"])
    assert result.exit_code == 1 and "RUN is a positional argument" in output
    assert not (tmp_path / "r").exists()


def test_required_options_may_come_from_the_file_else_exit_2(data, tmp_path, record):
    result, output = invoke(["train", "--data", data, "--out", tmp_path / "r"])
    assert result.exit_code == 2 and "Missing option '--model'" in output
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"data": str(data), "out": str(tmp_path / "s")}))
    record("agentrec.llm", "get_engine")
    result, output = invoke(["signals", "generate", "--config", cfg, "--limit", "1"])
    assert stopped(result), output  # data and out came from the file


def test_data_prepare_and_index_take_a_config(tmp_path):
    cfg = tmp_path / "prep.toml"
    cfg.write_text(f'out = "{tmp_path / "d"}"\nsource = "{TINY}"\nmax-history = 2\nprotocol = "leave-one-out"\n')
    result, output = invoke(["data", "prepare", "recbole", "--config", cfg])
    assert result.exit_code == 0, output
    assert json.loads((tmp_path / "d" / "stats.json").read_text())["protocol"]["params"]["max_history"] == 2
    cfg.write_text("max_history = 0\n")
    result, output = invoke(["data", "prepare", "recbole", "--source", TINY, "--out", tmp_path / "e", "--config", cfg])
    assert result.exit_code == 1 and f"{cfg}: max_history must be >= 1, got 0" in output

    cfg = tmp_path / "index.json"
    cfg.write_text(json.dumps({"data": str(tmp_path / "d"), "ef_search": 0}))
    result, output = invoke(["index", "build", "--config", cfg])
    assert result.exit_code == 1 and f"{cfg}: ef_search must be >= 1, got 0" in output


def test_predict_config_with_engine_options(data, tmp_path, record):
    record("agentrec.pipelines.predict", "predict")
    cfg = tmp_path / "llm.toml"
    cfg.write_text(f'strategy = "zcot"\ndata = "{data}"\nout = "{tmp_path / "z.jsonl"}"\nlimit = 2\n'
                   'engine = "openai"\nbase-url = "http://h:1/v1"\ncontext_tokens = 999\nfields = "title,year"\n'
                   'store = "' + str(tmp_path / "store") + '"\n')
    result, output = invoke(["predict", "--config", cfg, "--retries", "0"])
    assert stopped(result), output
    args, kwargs = record.calls["predict"]
    assert args[1:] == ("zcot", "openai") and kwargs["limit"] == 2
    assert kwargs["engine_config"].base_url == "http://h:1/v1" and kwargs["engine_config"].context_tokens == 999
    assert kwargs["engine_config"].retries == 0 and kwargs["prompts"].fields == ("title", "year")
    cfg.write_text('strategy = "cot"\n')
    result, output = invoke(["predict", "--config", cfg])
    assert result.exit_code == 1 and "strategy must be one of fs, zcot, fscot; got 'cot'" in output
    cfg.write_text("concurrency = 0\n")
    result, output = invoke(["predict", "--strategy", "fs", "--data", data, "--config", cfg])
    assert result.exit_code == 1 and f"{cfg}: concurrency must be >= 1, got 0" in output


# ---------------------------------------------------------------------------------------------- compare manifests
MANIFEST = {
    "command": "agentrec compare ...", "created": "2026-01-01T00:00:00Z", "git": {"commit": "abc", "dirty": True},
    "python": "3.11", "packages": {"torch": "x"}, "seconds": 12.0, "cpu_seconds": 30.0, "outputs": {},
    "dataset": {"name": "ml-toy", "path": None, "fingerprint": "f" * 64},
    "config": {"strategies": ["fs"], "models": ["niser", "semsr-f"], "base": "niser", "hybrid": True,
               "hybrid_model": "semsr-f", "hybrid_config": {"candidates": 3, "fusion": "rrf", "weight": 0.25,
                                                            "c": 10.0, "fill": False},
               "hybrid_grid": {"weights": [0.0, 0.5], "candidates": [5, 20], "c": [10.0], "fusions": ["rrf"],
                               "fill": False}, "valid_sessions": 7,
               "llm_sessions": 2, "embedder": "minilm", "epochs": 1, "max_train_samples": None, "patience": 2,
               "train_batch_size": 128, "lr": 0.002, "lr_step": 2, "lr_gamma": 0.5, "weight_decay": 0.0,
               "embedding_size": 32, "precision": "fp32", "train_budget_s": 300.0,
               "seed": 3, "threads": 1, "rerank_depth": 50, "bootstrap": 100, "level": 0.9},
    "llm": {"engine": "openai|fake-model", "engine_config": {
        "model": None, "device": "auto", "dtype": "auto", "batch_size": 8, "threads": 1, "base_url": "http://h:9/v1",
        "concurrency": 2, "timeout_s": 120.0, "retries": 4, "backoff_s": 0.5, "backoff_max_s": 30.0,
        "tensor_parallel_size": 1, "prefix_caching": True, "max_model_len": None, "gpu_memory_utilization": None,
        "enforce_eager": False, "context_tokens": None}, "sessions": 2, "rows": {}},
}


def test_compare_reruns_from_its_manifest(data, tmp_path, record):
    from agentrec.pipelines.compare import CompareConfig
    from agentrec.pipelines.hybrid import FusionGrid, HybridConfig

    record("agentrec.pipelines.compare", "run_compare")
    folder = tmp_path / "cmp"
    folder.mkdir()
    manifest = dict(MANIFEST, dataset=dict(MANIFEST["dataset"], path=str(data)))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result, output = invoke(["compare", "--config", folder / "manifest.json"])
    assert stopped(result), output
    (out, config), kwargs = record.calls["run_compare"]
    assert out == folder and kwargs["data"] == data and kwargs["engine"] == "openai"
    assert config == CompareConfig(strategies=("fs",), models=("niser", "semsr-f"), hybrid_config=HybridConfig(
        candidates=3, fusion="rrf", weight=0.25, c=10.0, fill=False), llm_sessions=2, epochs=1, max_train_samples=None,
        train_batch_size=128, lr=0.002, lr_step=2, lr_gamma=0.5, weight_decay=0.0, embedding_size=32, precision="fp32",
        train_budget_s=300.0, seed=3, rerank_depth=50, bootstrap=100, level=0.9, valid_sessions=7,
        hybrid_grid=FusionGrid(weights=(0.25,), candidates=(3,), c=(10.0,), fill=False))
    # a manifest without a fixed fusion: its grid is read back; an old rule (blend, rerank) is dropped, so the
    # fusion is chosen on validation again
    config_section = dict(MANIFEST["config"], hybrid_config={"candidates": 50, "fusion": "blend", "weight": 0.5,
                                                              "fill": True})
    (folder / "manifest.json").write_text(json.dumps(dict(manifest, config=config_section)))
    result, output = invoke(["compare", "--config", folder / "manifest.json"])
    assert stopped(result), output
    (_, config), _ = record.calls["run_compare"]
    assert config.hybrid_config is None
    assert config.hybrid_grid == FusionGrid(weights=(0.0, 0.5), candidates=(5, 20), c=(10.0,), fill=False)
    assert kwargs["engine_config"].base_url == "http://h:9/v1" and kwargs["engine_config"].concurrency == 2
    # flags win over the manifest; --out moves the rerun elsewhere
    result, output = invoke(["compare", "--config", folder / "manifest.json", "--epochs", "2", "--out", tmp_path / "o"])
    assert stopped(result), output
    (out, config), _ = record.calls["run_compare"]
    assert out == tmp_path / "o" and config.epochs == 2 and config.seed == 3


def test_a_manifest_from_before_the_training_settings_reruns_with_the_settings_of_then(data, tmp_path, record):
    from agentrec.cli.compare import TRAINING_BEFORE_RECORDED

    record("agentrec.pipelines.compare", "run_compare")
    folder = tmp_path / "old"
    folder.mkdir()
    recorded = ("train_batch_size", "lr", "lr_step", "lr_gamma", "weight_decay", "embedding_size", "precision",
                "train_budget_s")
    old = {k: v for k, v in MANIFEST["config"].items() if k not in recorded}
    old.update(epochs=3, max_train_samples=10_000)
    (folder / "manifest.json").write_text(json.dumps(dict(MANIFEST, config=old,
                                                          dataset=dict(MANIFEST["dataset"], path=str(data)))))
    result, output = invoke(["compare", "--config", folder / "manifest.json"])
    assert stopped(result), output
    (_, config), _ = record.calls["run_compare"]
    assert {k: getattr(config, k) for k in TRAINING_BEFORE_RECORDED} == TRAINING_BEFORE_RECORDED
    assert (config.epochs, config.max_train_samples, config.train_budget_s) == (3, 10_000, None)
    assert config.train_config().batch_size == 100 and config.train_config().precision == "fp32"


@pytest.mark.integration
def test_compare_rerun_from_a_real_manifest_reuses_everything(tmp_path):
    from test_engines import FakeOpenAIServer
    from test_predict import scripted_reply
    from test_prompting import toy_movies

    toy = toy_movies(tmp_path / "toy")

    def reply(user_text):
        return scripted_reply([{"role": "user", "content": user_text}])

    out = tmp_path / "cmp"
    args = ["compare", "--data", toy.path, "--strategies", "fs", "--models", "niser", "--hybrid-model", "niser",
            "--llm-sessions", "2", "--epochs", "1", "--max-train-samples", "0", "--bootstrap", "50",
            "--candidates", "3", "--engine", "openai", "--out", out, "--quiet"]
    with FakeOpenAIServer(reply=reply) as server:
        first, output = invoke(args + ["--base-url", server.url])
        assert first.exit_code == 0, output
        table = metrics(out / "compare.csv")
        again, output = invoke(["compare", "--config", out / "manifest.json", "--quiet"])
        assert again.exit_code == 0, output
        assert "no model trained (all reused); 0 chats sent" in output and len(server.requests) == 2
    assert metrics(out / "compare.csv") == table  # the same numbers (timings of session rows are measured anew)


def metrics(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if not k.endswith("_per_1k")} for row in csv.DictReader(handle)]


# ---------------------------------------------------------------------------------------------- predict as typed
def test_predict_with_only_a_strategy_uses_the_offline_default(tmp_path, monkeypatch, record):
    from agentrec.cli.predict import DEFAULT_LIMIT

    monkeypatch.chdir(tmp_path)  # an empty folder
    record("agentrec.pipelines.predict", "predict")
    result, output = invoke(["predict", "--strategy", "fscot"])
    assert stopped(result), output
    args, kwargs = record.calls["predict"]
    assert Path(args[0]) == Path("data/ml-100k") and (tmp_path / "data" / "ml-100k" / "stats.json").exists()
    assert args[1:] == ("fscot", "hf") and kwargs["limit"] == DEFAULT_LIMIT
    assert kwargs["out"] == Path("runs/predict/fscot-ml-100k.jsonl")
    lines = output.strip().splitlines()
    assert lines[-3].startswith("data:  data/ml-100k (the offline default") and "prepared now" in lines[-3]
    assert lines[-2] == "out:   runs/predict/fscot-ml-100k.jsonl (the default)"
    assert lines[-1] == f"limit: the first {DEFAULT_LIMIT} test sessions (the default; --limit N or --all for more)"
    result, output = invoke(["predict", "--strategy", "fs", "--all", "--limit", "3"])
    assert result.exit_code == 1 and "--limit N or --all, not both" in output
    result, output = invoke(["predict", "--strategy", "fs", "--all"])
    assert stopped(result) and record.calls["predict"][1]["limit"] is None and "prepared now" not in output


@pytest.mark.slow
def test_predict_fscot_as_typed_in_an_empty_folder():
    """The command of the issue, for real: SmolLM2 on the first 50 sessions of MovieLens-100K (a few minutes)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([sys.executable, "-m", "agentrec", "predict", "--strategy", "fscot", "--quiet"],
                              cwd=folder, capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "recall@20" in done.stdout.lower() and "mrr@20" in done.stdout.lower()
        assert (Path(folder) / "runs" / "predict" / "fscot-ml-100k.jsonl").exists()


def test_signals_aspects_are_checked_before_any_work(data, tmp_path, record):
    record("agentrec.llm", "get_engine")
    result, output = invoke(["signals", "generate", "--data", data, "--out", tmp_path / "s", "--aspects", "usge"])
    assert result.exit_code == 1 and "--aspects takes comma-separated names from usage, intent, summary" in output
    assert "get_engine" not in record.calls and not (tmp_path / "s").exists()
