"""Options are range-checked before any work (issue 12, item 7).

Every bad option gets one red line that names it as typed (``--max-history``, not ``max_history``),
exit code 1, and nothing done: no dataset read, no source loaded, no model trained, no engine made,
no output folder created. The entry points of that work are replaced by recorders, so a check that
comes too late fails the test instead of passing by luck.
"""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from agentrec.cli.main import app
from agentrec.core.errors import UsageError
from agentrec.core.options import COUNT, DROPOUT, OptionError, Range, check_writable

runner = CliRunner()
TINY = "tests/fixtures/recbole/tiny"


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


@pytest.fixture
def no_work(monkeypatch):
    """Record (and stop) any start of real work; the test asserts the record stays empty."""
    import agentrec.data.api
    import agentrec.llm
    import agentrec.pipelines.compare
    import agentrec.training.trainer
    from agentrec.data.dataset import PreparedDataset

    started = []

    def recorder(name):
        def record(*args, **kwargs):
            started.append(name)
            raise RuntimeError(f"work started: {name}")

        return record

    monkeypatch.setattr(PreparedDataset, "load", staticmethod(recorder("dataset read")))
    monkeypatch.setattr(agentrec.data.api, "load_source", recorder("source loaded"))
    monkeypatch.setattr(agentrec.training.trainer, "train_model", recorder("training"))
    monkeypatch.setattr(agentrec.llm, "get_engine", recorder("engine made"))
    monkeypatch.setattr(agentrec.pipelines.compare, "run_compare", recorder("compare run"))
    return started


def invoke(args: list[str]):
    result = runner.invoke(app, args)
    return result, result.output


# (command line with {data}, {out}, {file} placeholders, the option as the error must name it)
CASES = [
    # the cases of the issue
    ("train --model niser --data {data} --out {out} --epochs 0", "--epochs"),
    ("train --model niser --data {data} --out {out} --select-metric nope", "--select-metric"),
    ("compare --data {data} --out {out} --bootstrap 0", "--bootstrap"),
    ("train --model niser --data {data} --out {out} --batch-size 0", "--batch-size"),
    ("train --model niser --data {data} --out {out} --max-train-samples -5", "--max-train-samples"),
    ("compare --data {data} --out {out} --max-train-samples -5", "--max-train-samples"),
    ("train --model niser --data {data} --out {out} --set embedding_size=0", "--set embedding_size"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --limit 0", "--limit"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --limit -1", "--limit"),
    ("signals generate --data {data} --out {out} --limit 0", "--limit"),
    ("data prepare recbole --source " + TINY + " --out {out} --max-history 0", "--max-history"),
    ("data prepare recbole --source " + TINY + " --out {out} --max-history -1", "--max-history"),
    ("data prepare recbole --source " + TINY + " --out {out} --min-user-interactions 0", "--min-user-interactions"),
    ("data prepare recbole --source " + TINY + " --out {out} --min-user-interactions 1", "--min-user-interactions"),
    ("data prepare recbole --source " + TINY + " --out {out} --min-user-interactions 2", "--min-user-interactions"),
    ("data prepare recbole --source " + TINY + " --protocol semsr --out {out} --min-user-interactions 0",
     "--min-user-interactions"),
    ("data prepare m2 --source nowhere --out {out} --test-sessions -5", "--test-sessions"),
    ("data prepare recbole --source " + TINY + " --protocol semsr --out {out} --valid-fraction -0.2", "--valid-fraction"),
    ("data prepare recbole --source " + TINY + " --protocol semsr --out {out} --test-fraction 1.5", "--test-fraction"),
    ("data prepare recbole --source " + TINY + " --protocol gap --out {out} --gap-s -1", "--gap-s"),
    # an output that cannot be created is found before any work (a file stands where a folder must go)
    ("data prepare recbole --source " + TINY + " --out {file}/out", "--out"),
    ("train --model niser --data {data} --out {file}/out", "--out"),
    ("predict --strategy fs --data {data} --out {file}/out.jsonl", "--out"),
    ("predict --strategy fs --data {data} --out {data}", "--out"),  # a folder where the file goes
    ("compare --data {data} --out {file}/out", "--out"),
    ("signals generate --data {data} --out {file}/out", "--out"),
    ("index build --data {data} --store {file}/store", "--store"),
    ("evaluate {file}", "RUN"),  # a positional argument is named as --help shows it
    ("signals report {file}/set", "PATH"),
    # beyond the issue: every numeric option of every command
    ("train --model niser --data {data} --out {out} --lr 0", "--lr"),
    ("train --model niser --data {data} --out {out} --lr nan", "--lr"),
    ("train --model niser --data {data} --out {out} --lr-gamma 1.5", "--lr-gamma"),
    ("train --model niser --data {data} --out {out} --weight-decay -1", "--weight-decay"),
    ("train --model niser --data {data} --out {out} --patience 0", "--patience"),
    ("train --model niser --data {data} --out {out} --threads 0", "--threads"),
    ("train --model niser --data {data} --out {out} --seed -1", "--seed"),
    ("train --model niser --data {data} --out {out} --embedding-size 0", "--embedding-size"),
    ("train --model narm --data {data} --out {out} --set embedding_dropout=1", "--set embedding_dropout"),
    ("train --model niser --data {data} --out {out} --set sigma=-1", "--set sigma"),
    ("train --model msgat --data {data} --out {out} --set inter_session=maybe", "--set inter_session"),
    ("evaluate {data} --memory-mb 0", "--memory-mb"),
    ("index build --data {data} --ef-search 0", "--ef-search"),
    ("index query toy --data {data} --k 0", "--k"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --k 0", "--k"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --candidates 0", "--candidates"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --weight 1.5", "--weight"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --threads 0", "--threads"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --temperature -1", "--temperature"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --examples -1", "--examples"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --ground-distance 3", "--ground-distance"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --fields title,nope", "--fields"),
    ("compare --data {data} --out {out} --weight -0.1", "--weight"),
    ("compare --data {data} --out {out} --llm-sessions 0", "--llm-sessions"),
    ("compare --data {data} --out {out} --valid-sessions 0", "--valid-sessions"),
    ("compare --data {data} --out {out} --weight-grid 0,half", "--weight-grid"),
    ("compare --data {data} --out {out} --candidates-grid 5,0", "--candidates-grid"),
    ("compare --data {data} --out {out} --weight-grid 0,1.5", "--weight-grid"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --valid-sessions 0", "--valid-sessions"),
    ("compare --data {data} --out {out} --epochs 0", "--epochs"),
    ("compare --data {data} --out {out} --models bert4rec", "--models"),
    ("signals generate --data {data} --out {out} --max-chars 3", "--max-chars"),
    ("signals generate --data {data} --out {out} --ray --actors 0", "--actors"),
    ("signals generate --data {data} --out {out} --ray --cpus-per-actor 0", "--cpus-per-actor"),
    ("signals generate --data {data} --out {out} --ray --gpus-per-actor -1", "--gpus-per-actor"),
    ("signals generate --data {data} --out {out} --ray --actor-timeout-s 0", "--actor-timeout-s"),
    ("signals generate --data {data} --out {out} --ray --actor-retries -1", "--actor-retries"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --ray --actors 0", "--actors"),
    ("predict --strategy fs --data {data} --out {out}.jsonl --ray --actor-timeout-s -5", "--actor-timeout-s"),
    ("signals report {data} --threshold 1.5", "--threshold"),
    ("data prepare synthetic --out {out} --items 0", "--items"),
    ("data prepare recbole --source " + TINY + " --protocol semsr --out {out} --valid-fraction 0.5 "
     "--test-fraction 0.5", "--valid-fraction"),
]


@pytest.mark.parametrize("line,option", CASES, ids=[c[0].split(" --out")[0][:40] + " | " + c[0][-28:] for c in CASES])
def test_a_bad_option_is_named_as_typed_before_any_work(line, option, data, tmp_path, no_work):
    file = tmp_path / "file.txt"
    file.write_text("in the way\n")
    out = tmp_path / "out"
    args = line.format(data=data, out=out, file=file).split()
    result, output = invoke(args)
    assert result.exit_code == 1, output
    error = output.strip().splitlines()[-1]
    assert error.startswith("error: ") and option in error, output
    assert "_" not in error.split()[1] or option.startswith("--set"), output  # the flag, not the field name
    assert no_work == [], f"work started before the check: {no_work}"
    assert not out.exists() and not out.with_suffix(".jsonl").exists()


def test_messages_list_the_choices_and_the_range(data, tmp_path, no_work):
    _, output = invoke(["train", "--model", "niser", "--data", str(data), "--out", str(tmp_path / "o"),
                        "--select-metric", "nope"])
    assert "recall@K, mrr@K, ndcg@K" in output and "'nope'" in output
    _, output = invoke(["data", "prepare", "recbole", "--source", TINY, "--out", str(tmp_path / "o"),
                        "--min-user-interactions", "2"])
    assert "must be >= 3, got 2" in output and "leave-one-out" in output
    _, output = invoke(["data", "prepare", "recbole", "--source", TINY, "--protocol", "semsr",
                        "--out", str(tmp_path / "o"), "--test-fraction", "1.5"])
    assert "must be in (0, 1), got 1.5" in output


def test_a_config_file_value_is_named_by_file_and_key(data, tmp_path, no_work):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"train": {"epochs": 0}}))
    _, output = invoke(["train", "--model", "niser", "--data", str(data), "--out", str(tmp_path / "o"),
                        "--config", str(config)])
    assert f"{config}: train.epochs must be >= 1, got 0" in output
    config.write_text(json.dumps({"model": {"embedding_size": 0}}))
    _, output = invoke(["train", "--model", "niser", "--data", str(data), "--out", str(tmp_path / "o"),
                        "--config", str(config)])
    assert f"{config}: model.embedding_size must be >= 1" in output
    # a flag given on top of the file is the value in force, and is named as the flag
    _, output = invoke(["train", "--model", "niser", "--data", str(data), "--out", str(tmp_path / "o"),
                        "--config", str(config), "--embedding-size", "-3"])
    assert "--embedding-size must be >= 1, got -3" in output
    assert no_work == [] and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------ prepare refuses empty datasets
def test_a_header_only_source_is_refused(tmp_path):
    source = tmp_path / "h"
    source.mkdir()
    (source / "h.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    result, output = invoke(["data", "prepare", "recbole", "--source", str(source), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "h.inter" in output and "no interactions" in output
    assert not (tmp_path / "o").exists()


def test_filters_that_leave_nothing_are_refused(tmp_path):
    result, output = invoke(["data", "prepare", "recbole", "--source", TINY, "--min-user-interactions", "9",
                             "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "catalogue would be empty" in output and "--min-user-interactions" in output
    assert not (tmp_path / "o").exists()


def test_too_few_sequences_for_the_splits_is_refused(tmp_path):
    source = tmp_path / "s"
    source.mkdir()
    rows = "".join(f"s{s}\ti{t}\t{10 * s + t}\n" for s in range(2) for t in range(3))
    (source / "s.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    result, output = invoke(["data", "prepare", "recbole", "--source", str(source), "--protocol", "gap",
                             "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "too few" in output
    assert not (tmp_path / "o").exists()


def test_an_empty_train_split_is_refused_by_train(tmp_path, fixtures):
    source = tmp_path / "three"
    source.mkdir()
    (source / "three.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu\ta\t1\nu\tb\t2\nu\tc\t3\n")
    data = tmp_path / "d"
    result, output = invoke(["data", "prepare", "recbole", "--source", str(source), "--out", str(data)])
    assert result.exit_code == 0, output  # zero-shot LLMs need no train split; valid and test are there
    result, output = invoke(["train", "--model", "pop", "--data", str(data), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "train split is empty" in output
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ the library checks, without the CLI
def test_library_configs_name_the_field():
    from agentrec.data.protocols import GapSessions, GivenSessions, LeaveOneOut, SemSR
    from agentrec.pipelines.compare import CompareConfig
    from agentrec.training.trainer import TrainConfig

    cases = [
        (lambda: LeaveOneOut(min_user_interactions=2), "min_user_interactions"),
        (lambda: LeaveOneOut(max_history=0), "max_history"),
        (lambda: SemSR(valid_fraction=0.0), "valid_fraction"),
        (lambda: SemSR(eval_positions="first"), "eval_positions"),
        (lambda: GapSessions(gap_s=-1), "gap_s"),
        (lambda: GivenSessions(test_sessions=0), "test_sessions"),
        (lambda: TrainConfig(epochs=0), "epochs"),
        (lambda: TrainConfig(select_metric="auc@10"), "select_metric"),
        (lambda: TrainConfig(epochs="3"), "epochs"),  # a string from a config file is no count
        (lambda: CompareConfig(bootstrap=0), "bootstrap"),
        (lambda: CompareConfig(level=1.0), "level"),
    ]
    for make, field in cases:
        with pytest.raises(OptionError) as caught:
            make()
        assert caught.value.option == field and not caught.value.typed
        assert isinstance(caught.value, UsageError) and isinstance(caught.value, ValueError)
    # the defaults and the values the rest of the suite uses stay valid
    SemSR(min_user_interactions=1, min_item_count=1)
    GivenSessions(valid_fraction=0.2, test_sessions=3)
    assert TrainConfig(select_metric="mrr@020").select_metric == "mrr@20"


def test_range_messages():
    with pytest.raises(OptionError, match=r"^k must be >= 1, got 0$"):
        COUNT.check("k", 0)
    with pytest.raises(OptionError, match=r"must be in \[0, 1\), got 1$"):
        DROPOUT.check("dropout", 1.0)
    with pytest.raises(OptionError, match="must be a whole number >= 1, got 2.5"):
        COUNT.check("epochs", 2.5)
    with pytest.raises(OptionError, match="got inf"):
        Range(0).check("timeout_s", float("inf"))
    with pytest.raises(OptionError, match=r"\(why\)$"):
        Range(3, note="why").check("n", 1)
    COUNT.check("limit", None)  # an optional setting left unset
    error = OptionError("max_history", "must be >= 1, got 0").as_typed("--max-history")
    assert str(error) == "--max-history must be >= 1, got 0" and error.typed


def test_check_writable(tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("x")
    check_writable("out", tmp_path / "new" / "deeper")  # created later, parents and all
    check_writable("out", tmp_path)
    with pytest.raises(OptionError, match="is a file, not a folder"):
        check_writable("out", file / "below")
    with pytest.raises(OptionError, match="is a file, not a folder"):
        check_writable("out", file)
    with pytest.raises(OptionError, match="is a folder"):
        check_writable("out", tmp_path, folder=False)


def test_a_folder_we_may_not_write_in_is_refused(tmp_path, monkeypatch):
    """The permission branch, as a user who is not root sees it (root writes through permission bits)."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OptionError, match=f"no permission to write in {tmp_path}$"):
        check_writable("out", tmp_path / "new" / "out")
    result, output = invoke(["compare", "--out", str(tmp_path / "cmp"), "--bootstrap", "10"])
    assert result.exit_code == 1 and "--out" in output and "no permission" in output


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permission bits")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OptionError, match="no permission"):
            check_writable("out", locked / "out")
    finally:
        locked.chmod(0o700)
