"""The command line, end to end through typer's runner; the light-import promise in a subprocess."""

import json
import subprocess
import sys

from test_plots import read_png
from typer.testing import CliRunner

from agentrec.cli.main import app
from agentrec.pipelines import plots

runner = CliRunner()


def test_import_and_help_stay_light():
    code = (
        "import sys, agentrec, agentrec.cli.main\n"
        "from typer.testing import CliRunner\n"
        "CliRunner().invoke(agentrec.cli.main.app, ['--help'])\n"
        "CliRunner().invoke(agentrec.cli.main.app, ['data', 'prepare', '--help'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'chromadb', 'vllm', 'sentence_transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_prepare_stats_train_evaluate(tmp_path, fixtures):
    data, run = tmp_path / "d", tmp_path / "run"
    result = runner.invoke(app, ["data", "prepare", "recbole", "--source", str(fixtures / "recbole" / "tiny"),
                                 "--protocol", "leave-one-out", "--out", str(data)])
    assert result.exit_code == 0, result.output
    assert "items 4" in result.output and "leave-one-out" in result.output
    result = runner.invoke(app, ["data", "stats", str(data)])
    assert result.exit_code == 0 and "test" in result.output and "drop_short_users" in result.output
    result = runner.invoke(app, ["data", "stats", str(data), "--json"])
    assert json.loads(result.output)["counts"]["test_samples"] == 2
    result = runner.invoke(app, ["train", "--model", "pop", "--data", str(data), "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["test"] == {}  # training never looks at test
    assert not (run / "learning_curve.png").exists()  # the popularity floor has no epochs
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert "recall" in result.output and "full catalogue" in result.output
    assert "recall@20" in json.loads((run / "run.json").read_text())["test"]


def test_train_draws_a_learning_curve_beside_the_run(tmp_path, tiny_data, monkeypatch):
    run = tmp_path / "run"
    args = ["train", "--model", "niser", "--data", str(tiny_data), "--out", str(run), "--epochs", "3",
            "--patience", "3", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"(learning curve: {run / 'learning_curve.png'})" in result.output
    read_png(run / "learning_curve.png")
    assert len(json.loads((run / "run.json").read_text())["history"]) == 3
    # the figure is part of the run folder: training again into it replaces the run and the figure

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in drawing")

    monkeypatch.setattr(plots, "plot_learning_curve", broken)
    again = runner.invoke(app, args)  # a figure that fails to draw never loses the run
    assert again.exit_code == 0, again.output
    assert "learning curve" not in again.output and (run / "weights.safetensors").exists()
    assert sorted(path.name for path in run.iterdir()) == ["run.json", "weights.safetensors"]


def test_evaluating_against_another_dataset_fails_clearly(tmp_path, fixtures):
    a, b, run = tmp_path / "a", tmp_path / "b", tmp_path / "run"
    src = str(fixtures / "recbole" / "tiny")
    runner.invoke(app, ["data", "prepare", "recbole", "--source", src, "--out", str(a)])
    runner.invoke(app, ["data", "prepare", "recbole", "--source", src, "--max-history", "1", "--out", str(b)])
    runner.invoke(app, ["train", "--model", "pop", "--data", str(a), "--out", str(run)])
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(b)])
    assert result.exit_code == 1
    assert "trained on dataset" in result.output and "fingerprint" in result.output


def test_user_errors_are_one_line_with_exit_code_1(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu\t1\n")
    result = runner.invoke(app, ["data", "prepare", "recbole", "--source", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "bad.inter:2" in result.output and "--skip-bad" in result.output
    result = runner.invoke(app, ["data", "prepare", "amazon2014", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "needs --source" in result.output
    result = runner.invoke(app, ["data", "prepare", "recbole", "--source", str(bad), "--protocol", "leave-one-out",
                                 "--gap-s", "60", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "takes no option gap_s" in result.output


# ---------------------------------------------------------------------------------------------- errors and exit codes
def run_agentrec(*args, env=None, code=None):
    """``python -m agentrec ARGS`` (or ``code`` before the CLI's main) in a fresh interpreter."""
    import os

    command = [sys.executable, "-m", "agentrec", *args] if code is None else [sys.executable, "-c", code, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_every_help_stays_light():
    commands = [[], ["data", "prepare"], ["data", "stats"], ["train"], ["evaluate"], ["index", "build"],
                ["index", "query"], ["predict"], ["compare"], ["signals", "generate"], ["signals", "report"]]
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom agentrec.cli.main import app\n"
        f"for args in {commands!r}:\n"
        "    assert CliRunner().invoke(app, args + ['--help']).exit_code == 0, args\n"
        "print(','.join(m for m in ('torch', 'transformers', 'chromadb', 'vllm', 'sentence_transformers') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_root_help_documents_the_exit_codes():
    text = runner.invoke(app, ["--help"], terminal_width=300).output
    assert "Exit codes: 0" in text and "1 an error you can fix" in text and "2 a usage error" in text


def test_usage_errors_exit_2():
    assert runner.invoke(app, ["train", "--nope"]).exit_code == 2
    assert runner.invoke(app, ["train", "--model", "bert4rec", "--data", "d", "--out", "o"]).exit_code == 2
    result = runner.invoke(app, ["train", "--data", "d", "--out", "o"])
    assert result.exit_code == 2 and "Missing option '--model'" in result.output


def test_a_user_error_is_one_red_line_and_a_traceback_with_agentrec_debug(tmp_path):
    done = run_agentrec("data", "stats", str(tmp_path / "nowhere"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "nowhere" in line
    debug = run_agentrec("data", "stats", str(tmp_path / "nowhere"), env={"AGENTREC_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line


def test_a_bug_keeps_its_full_traceback(tmp_path, monkeypatch):
    import agentrec.data.dataset

    def broken(path):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(agentrec.data.dataset, "read_stats", broken)
    result = runner.invoke(app, ["data", "stats", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)  # not turned into a red line
    assert "error:" not in result.output
    code = ("import sys, agentrec.data.dataset as d\n"
            "def broken(path):\n    raise ValueError('boom')\n"
            "d.read_stats = broken\nsys.argv = ['agentrec', 'data', 'stats', '.']\n"
            "from agentrec.cli.main import main\nmain()\n")
    done = run_agentrec(code=code)
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "ValueError: boom"


def test_every_cli_module_imports_alone_and_python_m_agentrec_runs():
    for name in ("agentrec.cli", "agentrec.cli.main", "agentrec.cli.options", "agentrec.cli.configfile",
                 "agentrec.cli.data", "agentrec.cli.train", "agentrec.cli.index", "agentrec.cli.predict",
                 "agentrec.cli.compare", "agentrec.cli.signals"):
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
    done = run_agentrec("--help")
    assert done.returncode == 0 and "predict" in done.stdout
