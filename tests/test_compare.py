"""``agentrec compare``: bootstrap intervals and noise marks with known answers, the tables and files it
writes, reuse on a rerun, and the CLI end to end.

Everything real but the LLM: the toy catalogue of ``test_prompting.toy_movies``, Chroma on disk with the
shipped MiniLM, NISER and its SemSR variants trained for one epoch; the LLM is
``test_predict.ScriptedEngine`` (library test) or the fake OpenAI-compatible server (CLI test), whose
answers are known.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_engines import FakeOpenAIServer
from test_plots import read_png
from test_predict import ScriptedEngine, scripted_reply
from test_prompting import toy_movies

from agentrec.pipelines.compare import (
    METRICS,
    CompareConfig,
    bootstrap_stats,
    format_console,
    make_table,
    per_session,
    run_compare,
)

pytestmark = pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning")

SMALL = dict(strategies=("fs", "zcot", "fscot"), models=("niser", "semsr-i", "semsr-f", "semsr-i+", "semsr-f+"),
             llm_sessions=3, epochs=1, max_train_samples=None, bootstrap=200)
# the toy has one validation session: each hybrid's fusion is chosen on it (the plumbing, not a real choice)


# ---------------------------------------------------------------------------------------------- statistics
def test_per_session_values_average_to_the_metrics():
    from agentrec.core.metrics import metrics_from_ranks

    ranks = np.array([1, 3, 15, 150, np.inf])
    expected = metrics_from_ranks(ranks, (10, 20, 100))
    for metric in METRICS:
        assert per_session(ranks, metric).mean() == pytest.approx(expected[metric])
    assert per_session(ranks, "mrr@10").tolist() == [1.0, 1 / 3, 0.0, 0.0, 0.0]


def test_bootstrap_is_seeded_and_brackets_the_point_estimate():
    rng = np.random.default_rng(1)
    rows = [rng.integers(1, 40, 60).astype(float) for _ in range(3)]
    a = bootstrap_stats(rows, resamples=300, seed=7)
    b = bootstrap_stats(rows, resamples=300, seed=7)
    c = bootstrap_stats(rows, resamples=300, seed=8)
    assert set(a) == set(METRICS)
    for metric in METRICS:
        s = a[metric]
        assert s["point"].shape == s["lo"].shape == s["hi"].shape == (3,)
        assert np.all(s["lo"] <= s["point"] + 1e-12) and np.all(s["point"] <= s["hi"] + 1e-12)
        assert np.array_equal(s["lo"], b[metric]["lo"]) and s["mark"] == b[metric]["mark"]
    assert not all(np.array_equal(a[m]["lo"], c[m]["lo"]) for m in METRICS)  # another seed, other resamples


def test_noise_marks_follow_the_paired_bootstrap():
    n = 200
    strong = np.ones(n)  # every target at rank 1
    weak = np.full(n, np.inf)  # every target missed
    twin = strong.copy()
    twin[0] = np.inf  # one session differs: within noise
    stats = bootstrap_stats([weak, strong, twin], metrics=("recall@10",), resamples=500, seed=0)["recall@10"]
    assert stats["best"] == 1 and stats["mark"] == ["below", "best", "noise"]
    assert stats["point"].tolist() == [0.0, 1.0, 1 - 1 / n]
    with pytest.raises(ValueError, match="same sessions"):
        bootstrap_stats([strong, strong[:10]])


def test_console_table_is_aligned():
    from agentrec.pipelines.compare import Row

    config = CompareConfig(strategies=(), bootstrap=50)
    rows = [Row(name="A", kind="session", ranks=np.array([1.0, 2, 50]), timed_sessions=3, wall_s=0.3, cpu_s=0.2),
            Row(name="Long method name", kind="llm", ranks=np.array([np.inf, 5, 1]), timed_sessions=3, wall_s=30.0,
                cpu_s=29.0, tokens=3000)]
    table = make_table("Table", rows, config=config)
    lines = format_console(table).splitlines()
    assert len({len(line) for line in lines[1:]}) == 1  # every line after the title has the same width
    assert "1,000" in lines[-2] and "10,000.0" in lines[-2]  # tokens and wall seconds per 1,000 sessions


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_movies(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def compared(toy, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("compare")
    engine = ScriptedEngine()
    first = run_compare(out, CompareConfig(**SMALL), data=toy.path, engine=engine, progress=False, command="test")
    return out, first, engine


@pytest.mark.integration
def test_compare_puts_every_method_on_the_same_sessions(compared, toy):
    out, result, engine = compared
    same, full = result.tables
    names = [row.name for row in same.rows]
    assert names == ["Popularity", "NISER", "SemNISER-I", "SemNISER-F", "SemNISER-I+", "SemNISER-F+",
                     "LLM FS", "LLM ZCoT", "LLM FSCoT",
                     "Hybrid FS -> SemNISER-F", "Hybrid ZCoT -> SemNISER-F", "Hybrid FSCoT -> SemNISER-F"]
    assert same.n == 3 and all(len(row.ranks) == 3 for row in same.rows)
    assert full.n == len(toy.test) == 4 and [r.name for r in full.rows] == names[:6]
    # session models on the sample are their full-split ranks, cut to the sample
    for a, b in zip(same.rows[:6], full.rows):
        assert np.array_equal(a.ranks, b.ranks[:3])
    # the scripted LLM: session 1 exact, session 2 quoted, session 3 no title -> FS recall 2/3
    llm_fs = same.rows[names.index("LLM FS")]
    assert llm_fs.ranks[:2].tolist() == [1.0, 1.0] and np.isinf(llm_fs.ranks[2]) and llm_fs.tokens > 0
    hybrid = same.rows[names.index("Hybrid FS -> SemNISER-F")]
    assert np.isfinite(hybrid.ranks).all()  # fill gives the no-title session the model's list
    # fs one step, zcot and fscot two, for 3 test sessions; the validation session the fusion is chosen on
    # (generated first) shows the same history as the first test session: that one comes from the cache
    assert len(result.trained) == 4 and engine.chats == 3 * (1 + 2 + 2)
    assert result.manifest["llm"]["rows"]["fs (valid)"]["n"] == 1
    checks = result.hybrid_checks
    assert [c["hybrid"] for c in checks] == names[-3:] and all(c["selection"]["n"] == 1 for c in checks)
    assert all(len(c["selection"]["grid"]) == 44 and c["n"] == 3 for c in checks)


@pytest.mark.integration
def test_compare_writes_tables_figures_and_manifest(compared):
    out, result, _ = compared
    for name in ("compare.md", "compare.csv", "compare.json", "manifest.json"):
        assert (out / name).stat().st_size > 0, name
    figures = ("forest.png", "cost_quality.png", "recall_at_k.png")
    for name in figures:
        read_png(out / name)  # a PNG that matplotlib reads back, with something drawn on it
    markdown = (out / "compare.md").read_text()
    assert "### Figures" in markdown and all(f"({name})" in markdown for name in figures)
    assert "Table 1: every method on the same 3 test sessions" in markdown and "bootstrap" in markdown
    assert "| LLM FSCoT | 3 |" in markdown and "CPU s/1k" in markdown
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert len(rows) == 12 + 6 and {"recall@20_lo", "recall@20_hi", "recall@20_vs_best", "cpu_s_per_1k"} <= set(rows[0])
    data = json.loads((out / "compare.json").read_text())
    assert [t["n"] for t in data["tables"]] == [3, 4]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(figures) <= set(manifest["outputs"])
    assert manifest["dataset"]["fingerprint"] == result.manifest["dataset"]["fingerprint"]
    assert manifest["train_config"]["epochs"] == 1 and manifest["seeds"]["bootstrap"] == 0
    assert manifest["llm"]["engine"] == "scripted|v1" and manifest["llm"]["sessions"] == 3
    assert {"torch", "chromadb", "numpy"} <= set(manifest["packages"]) and "commit" in manifest["git"]
    assert set(manifest["runs"]) == {"pop", "niser", "semsr-i", "semsr-f"}


@pytest.mark.integration
def test_a_rerun_trains_and_generates_nothing(compared, toy):
    out, first, _ = compared
    engine = ScriptedEngine()
    again = run_compare(out, CompareConfig(**SMALL), data=toy.path, engine=engine, progress=False)
    assert again.trained == [] and again.generated == 0 and engine.calls == 0
    assert all(run["reused"] for run in again.manifest["runs"].values())
    assert all(row["reused"] for row in again.manifest["llm"]["rows"].values())
    for a, b in zip(first.tables[0].rows, again.tables[0].rows):
        assert a.name == b.name and np.array_equal(a.ranks, b.ranks)
        if a.kind == "llm":
            assert a.wall_s == b.wall_s and a.cpu_s == b.cpu_s  # the timings measured when it was computed
    # a changed training budget is another checkpoint
    changed = run_compare(out, CompareConfig(**{**SMALL, "epochs": 2, "models": ("niser",), "strategies": ()}),
                          data=toy.path, progress=False)
    assert len(changed.trained) == 1 and "niser-" in changed.trained[0]


def test_defaults_train_niser_and_semniser_f_on_the_whole_training_split():
    from agentrec.training.trainer import TrainConfig

    config = CompareConfig()
    assert config.models == ("niser", "semsr-f")  # SemSR-I and the "+" re-rankers are opt-in
    assert config.max_train_samples is None  # every training sample, no subsample
    train = config.train_config()
    assert isinstance(train, TrainConfig) and train.max_train_samples is None
    assert (train.epochs, train.patience, train.batch_size, train.lr, train.lr_step, train.lr_gamma,
            train.weight_decay, train.precision, train.time_budget_s) == (
        config.epochs, config.patience, config.train_batch_size, config.lr, config.lr_step, config.lr_gamma,
        config.weight_decay, config.precision, config.train_budget_s)
    assert train.select_metric == "recall@100" and train.patience < train.epochs  # early stopping on validation


def test_cli_defaults_are_compare_configs_defaults(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import agentrec.pipelines.compare as compare_module
    from agentrec.cli.main import app

    seen = {}

    def recorder(out, config, **kwargs):
        seen["config"] = config
        raise KeyboardInterrupt  # stop before anything runs

    monkeypatch.setattr(compare_module, "run_compare", recorder)
    CliRunner().invoke(app, ["compare", "--out", str(tmp_path / "cmp")])
    assert seen["config"] == CompareConfig()


def test_training_options_are_checked_under_compares_names():
    with pytest.raises(ValueError, match="train_batch_size must be >= 1"):
        CompareConfig(train_batch_size=0)
    with pytest.raises(ValueError, match="train_budget_s must be > 0"):
        CompareConfig(train_budget_s=0)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto"):
        CompareConfig(precision="fp16")
    with pytest.raises(ValueError, match="embedding_size must be >= 1"):
        CompareConfig(embedding_size=0)


def test_config_errors_name_the_choices():
    with pytest.raises(ValueError, match="unknown model 'bert4rec'"):
        CompareConfig(models=("bert4rec",))
    with pytest.raises(ValueError, match="unknown strategy"):
        CompareConfig(strategies=("cot",))
    with pytest.raises(ValueError, match="hybrid model"):
        CompareConfig(hybrid_model="semsr-f+")


@pytest.mark.integration
def test_cli_compare_on_a_tiny_dataset(toy, tmp_path):
    from typer.testing import CliRunner

    from agentrec.cli.main import app

    runner = CliRunner()

    def reply(user_text):
        return scripted_reply([{"role": "user", "content": user_text}])

    args = ["compare", "--data", str(toy.path), "--strategies", "fs", "--models", "niser,semsr-f",
            "--llm-sessions", "2", "--epochs", "1", "--max-train-samples", "0", "--bootstrap", "100",
            "--candidates", "3", "--engine", "openai", "--out", str(tmp_path / "cmp"), "--quiet"]
    with FakeOpenAIServer(reply=reply) as server:
        done = runner.invoke(app, args + ["--base-url", server.url])
        assert done.exit_code == 0, done.output
        assert "Table 1: every method on the same 2 test sessions" in done.output
        assert "Hybrid FS -> SemNISER-F" in done.output and "3 models trained" in done.output
        assert f"figures: {tmp_path / 'cmp' / 'forest.png'}, " in done.output and "cost_quality.png" in done.output
        assert "Hybrid FS -> SemNISER-F - SemNISER-F, 2 test sessions:" in done.output
        assert len(server.requests) == 2  # the validation session's chat is the first test session's: cached
        again = runner.invoke(app, args + ["--base-url", server.url])
        assert again.exit_code == 0 and "no model trained (all reused); 0 chats sent" in again.output
        assert len(server.requests) == 2
    bad = runner.invoke(app, ["compare", "--models", "bert4rec", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "unknown model 'bert4rec'" in bad.output
