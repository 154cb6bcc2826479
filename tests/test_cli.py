"""The command line, end to end through typer's runner; the light-import promise in a subprocess."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from agentrec.cli.main import app

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
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert "recall" in result.output and "full catalogue" in result.output
    assert "recall@20" in json.loads((run / "run.json").read_text())["test"]


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
