"""Issue 12, items 2 and 6 (dataset part): finished artefacts are complete or absent, damage names itself.

- ``agentrec data prepare`` killed (SIGKILL) at every step of its write, and at random times, leaves
  the old dataset or the new one, never a mix; a run trained on the old one still evaluates exactly
  as before, or is refused with a MismatchError.
- A truncated, corrupted or missing file of a prepared dataset, an invalid or incomplete
  ``stats.json``: each a DamagedFileError naming the file and the command that rebuilds it.
- ``--out`` holding another dataset needs ``--force``; the same dataset is kept; other files are
  never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agentrec.cli.main import app
from agentrec.core import fsutil
from agentrec.core.errors import DamagedFileError, MismatchError, NotFoundError, UsageError
from agentrec.data.api import prepare_dataset
from agentrec.data.dataset import DATA_FILES, STATS_FILE, PreparedDataset, read_stats
from agentrec.training.runs import evaluate_run, save_run, train_popularity

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def write_source(folder: Path, *, users: int = 120, items: int = 40, seed: int = 3) -> Path:
    """A seeded RecBole source (``syn.inter``, ``syn.item``): ``users`` users with 6-15 events each."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(users):
        for step in range(rng.randint(6, 15)):
            lines.append(f"u{user}\t{rng.randint(1, items)}\t{rng.randint(1, 5)}\t{1000 * user + 10 * step}")
    (folder / "syn.inter").write_text("\n".join(lines) + "\n")
    titles = ["item_id:token\tmovie_title:token_seq\trelease_year:token"]
    titles += [f"{i}\tFilm number {i}\t{1950 + i}" for i in range(1, items + 1)]
    (folder / "syn.item").write_text("\n".join(titles) + "\n")
    return folder


def content(folder: Path) -> dict:
    """What a dataset folder holds: every entry's bytes, stats.json parsed without its timing."""
    found = {}
    for entry in sorted(os.listdir(folder)):
        data = (folder / entry).read_bytes()
        if entry == STATS_FILE:
            stats = json.loads(data)
            stats.pop("prepare_seconds")
            found[entry] = stats
        else:
            found[entry] = hashlib.sha256(data).hexdigest()
    return found


def leftovers(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder.parent) if name.startswith(f".{folder.name}.")]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_source(tmp_path_factory.mktemp("source") / "syn")


@pytest.fixture(scope="module")
def references(source, tmp_path_factory):
    """(old, new): the same source prepared with --max-history 3 and with the defaults."""
    base = tmp_path_factory.mktemp("references")
    old = prepare_dataset("recbole", out=base / "old", source=source, protocol_options={"max_history": 3})
    new = prepare_dataset("recbole", out=base / "new", source=source)
    assert old.fingerprint != new.fingerprint
    return old, new


# ---------------------------------------------------------------------------------------------- the kill test
# Each write step logs "slow writes: STEP" and then sleeps AGENTREC_TEST_SLOW_WRITES seconds:
# the test kills the process inside that sleep, so every step is hit, then adds kills at random times.
PAUSE_S = 0.3
STEPS_EXCHANGE = ["wrote items.jsonl", "wrote train.npz", "wrote valid.npz", "wrote test.npz", "wrote stats.json",
                  "before publishing", "after the exchange"]
STEPS_TWO_RENAMES = ["before publishing", "old folder aside, new one not yet in place",
                     "new folder in place, old one not yet deleted"]


def _kill_at_step(command, env, step, delay_s) -> bool:
    """Run ``command``, SIGKILL it ``delay_s`` after it logs ``step``; False if it ended first."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            if f"slow writes: {step}" in line:
                time.sleep(delay_s)
                os.kill(process.pid, signal.SIGKILL)
                return True
        return False
    finally:
        process.wait(timeout=60)
        process.stderr.close()


def _kill_after(command, env, delay_s) -> bool:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=delay_s)
        return False
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        return True


def test_killed_prepare_leaves_the_old_or_the_new_dataset(source, references, tmp_path):
    old, new = references
    old_content, new_content = content(old.path), content(new.path)
    out = tmp_path / "data"
    shutil.copytree(old.path, out)
    run = tmp_path / "run"
    train_popularity(PreparedDataset.load(out), run)
    _, before = evaluate_run(run)

    command = [sys.executable, "-m", "agentrec", "data", "prepare", "recbole", "--source", str(source),
               "--out", str(out), "--force"]
    base_env = {**os.environ, "AGENTREC_TEST_SLOW_WRITES": str(PAUSE_S), "PYTHONPATH": str(ROOT)}
    rng = random.Random(20240612)
    plan = ([("exchange", step) for step in STEPS_EXCHANGE] + [("two renames", step) for step in STEPS_TWO_RENAMES]
            + [(rng.choice(["exchange", "two renames"]), None) for _ in range(4)])
    seen = {"old": 0, "new": 0}
    for mode, step in plan:
        if content(out) != old_content:  # start every try from the old dataset
            shutil.rmtree(out)
            shutil.copytree(old.path, out)
        env = dict(base_env)
        if mode == "two renames":
            env["AGENTREC_TEST_NO_RENAME_EXCHANGE"] = "1"
        if step is None:  # anywhere from start-up to the end of the write
            killed = _kill_after(command, env, rng.uniform(0.3, 4.0))
        else:
            killed = _kill_at_step(command, env, step, rng.uniform(0.0, 0.5 * PAUSE_S))
            assert killed, f"the prepare ended before step {step!r}"
        where = f"{mode}, killed at {step or 'a random time'}"

        if mode == "exchange":  # one atomic swap: complete without any repair
            assert content(out) in (old_content, new_content), where
        loaded = PreparedDataset.load(out)  # repairs a two-rename swap killed half-way
        state = "old" if content(out) == old_content else "new" if content(out) == new_content else "mixed"
        assert state != "mixed", where
        assert loaded.fingerprint == (old if state == "old" else new).fingerprint, where
        assert leftovers(out) == [], where
        seen[state] += 1
        if state == "old":
            _, after = evaluate_run(run)
            assert after.metrics == before.metrics, where
        else:
            with pytest.raises(MismatchError, match="trained on dataset"):
                evaluate_run(run)
    assert seen["old"] >= 3 and seen["new"] >= 1, seen  # (a loaded machine may land a kill a step late)


def test_a_prepare_killed_under_the_old_code_is_refused(references, tmp_path):
    """Issue 12's report: new splits written over an old dataset, then killed before stats.json."""
    old, new = references
    out = tmp_path / "data"
    shutil.copytree(old.path, out)
    run = tmp_path / "run"
    train_popularity(PreparedDataset.load(out), run)
    stats = json.loads((out / STATS_FILE).read_text())
    stats["format_version"] = 1  # as the old code wrote it: no "files"
    del stats["files"]
    (out / STATS_FILE).write_text(json.dumps(stats))
    assert PreparedDataset.load(out).fingerprint == old.fingerprint  # format 1 still loads
    for name in DATA_FILES:
        shutil.copy(new.path / name, out / name)
    with pytest.raises(DamagedFileError, match=r"stats.json: its fingerprint .* does not match the files"):
        PreparedDataset.load(out)
    with pytest.raises(DamagedFileError, match="--force"):
        evaluate_run(run)
    (out / STATS_FILE).unlink()  # killed before stats.json, into an empty folder
    with pytest.raises(DamagedFileError, match="no stats.json: an unfinished dataset"):
        PreparedDataset.load(out)


# ---------------------------------------------------------------------------------------------- damaged files
@pytest.fixture
def prepared(references, tmp_path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(references[1].path, out)
    return out


@pytest.mark.parametrize("name", DATA_FILES)
def test_a_truncated_file_names_itself(prepared, name):
    data = (prepared / name).read_bytes()
    (prepared / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFileError, match=rf"{name}: .* bytes, but stats.json records .* --force"):
        PreparedDataset.load(prepared)


@pytest.mark.parametrize("name", DATA_FILES)
def test_a_changed_byte_names_the_file(prepared, name):
    data = bytearray((prepared / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (prepared / name).write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match=rf"{name}: its sha256 differs"):
        PreparedDataset.load(prepared)


@pytest.mark.parametrize("name", DATA_FILES)
def test_a_missing_file_names_itself(prepared, name):
    (prepared / name).unlink()
    with pytest.raises(DamagedFileError, match=rf"{name} is missing"):
        PreparedDataset.load(prepared)


def test_truncated_npz_in_a_format_1_folder_names_itself(prepared):
    stats = json.loads((prepared / STATS_FILE).read_text())
    stats["format_version"] = 1
    del stats["files"]
    (prepared / STATS_FILE).write_text(json.dumps(stats))
    data = (prepared / "test.npz").read_bytes()
    (prepared / "test.npz").write_bytes(data[:-100])
    with pytest.raises(DamagedFileError, match=r"test.npz: not a readable .npz file"):
        PreparedDataset.load(prepared)


@pytest.mark.parametrize("text,match", [
    ("", r"stats.json:1:1: not valid JSON"),
    ('{"format_version": 2, "fingerprint": "ab', r"stats.json:1:\d+: not valid JSON"),
    ("[1, 2]", r"stats.json: expected a JSON object, found list"),
    ("\xff\xfe", r"stats.json: not UTF-8 text"),
])
def test_an_invalid_stats_json_names_itself(prepared, text, match):
    (prepared / STATS_FILE).write_bytes(text.encode("latin-1"))
    with pytest.raises(DamagedFileError, match=match):
        PreparedDataset.load(prepared)


@pytest.mark.parametrize("key", ["format_version", "fingerprint", "files"])
def test_a_missing_stats_key_names_it(prepared, key):
    stats = json.loads((prepared / STATS_FILE).read_text())
    del stats[key]
    (prepared / STATS_FILE).write_text(json.dumps(stats))
    with pytest.raises(DamagedFileError, match=rf"stats.json: key '{key}' is missing; prepare it again"):
        PreparedDataset.load(prepared)


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.update(format_version="2"), r"key 'format_version' holds '2'"),
    (lambda s: s.update(format_version=0), r"key 'format_version' holds 0"),
    (lambda s: s.update(fingerprint="not a digest"), r"key 'fingerprint' holds 'not a digest'"),
    (lambda s: s.update(files=[]), r"key 'files' holds list"),
    (lambda s: s["files"].pop("valid.npz"), r"key 'files.valid.npz' is missing"),
    (lambda s: s["files"]["train.npz"].update(bytes=-1), r"key 'files.train.npz.bytes' holds -1"),
    (lambda s: s["files"]["test.npz"].update(sha256=None), r"key 'files.test.npz.sha256' holds None"),
])
def test_a_malformed_stats_key_names_it(prepared, edit, match):
    stats = json.loads((prepared / STATS_FILE).read_text())
    edit(stats)
    (prepared / STATS_FILE).write_text(json.dumps(stats))
    with pytest.raises(DamagedFileError, match=match):
        PreparedDataset.load(prepared)


def test_a_newer_format_is_a_mismatch(prepared):
    stats = json.loads((prepared / STATS_FILE).read_text())
    stats["format_version"] = 3
    (prepared / STATS_FILE).write_text(json.dumps(stats))
    with pytest.raises(MismatchError, match="newer agentrec"):
        PreparedDataset.load(prepared)


def test_arrays_that_do_not_fit_are_damaged(prepared):
    """A split rewritten consistently (stats updated too) but with an item id beyond the catalogue."""
    with np.load(prepared / "valid.npz") as arrays:
        changed = dict(arrays)
    changed["target"] = changed["target"].copy()
    changed["target"][0] = 10_000
    np.savez(prepared / "valid.npz", **changed)
    stats = json.loads((prepared / STATS_FILE).read_text())
    data = (prepared / "valid.npz").read_bytes()
    stats["files"]["valid.npz"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (prepared / STATS_FILE).write_text(json.dumps(stats))
    with pytest.raises(DamagedFileError, match=r"valid.npz: a target item id is outside 1\.\.40"):
        PreparedDataset.load(prepared)


def test_npz_bytes_do_not_depend_on_the_time(source, references, tmp_path):
    time.sleep(2.1)  # zip entries carry a time stamp, to two seconds
    again = prepare_dataset("recbole", out=tmp_path / "again", source=source)
    for name in DATA_FILES:
        assert (tmp_path / "again" / name).read_bytes() == (references[1].path / name).read_bytes()
    assert again.stats["files"] == references[1].stats["files"]


def test_the_cli_prints_one_line_naming_the_file(prepared):
    (prepared / STATS_FILE).write_text("{")
    for command in (["data", "stats", str(prepared)], ["train", "--model", "pop", "--data", str(prepared),
                                                       "--out", str(prepared.parent / "run")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, result.output
        assert "stats.json:1:2: not valid JSON" in result.output and "Traceback" not in result.output


def test_data_stats_with_a_missing_counts_key(prepared):
    stats = json.loads((prepared / STATS_FILE).read_text())
    del stats["counts"]
    (prepared / STATS_FILE).write_text(json.dumps(stats))
    result = runner.invoke(app, ["data", "stats", str(prepared)])
    assert result.exit_code == 1 and "stats.json: a key is missing or malformed" in result.output
    assert "'counts'" in result.output


# ---------------------------------------------------------------------------------------------- --out and --force
def test_out_holding_a_dataset_needs_force(source, references, tmp_path):
    old, new = references
    out = tmp_path / "data"
    shutil.copytree(old.path, out)
    args = ["data", "prepare", "recbole", "--source", str(source), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "already holds another dataset ('syn', fingerprint" in result.output and "--force" in result.output
    assert content(out) == content(old.path)  # untouched
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert "replaced" in result.output and PreparedDataset.load(out).fingerprint == new.fingerprint
    (out / "embeddings").mkdir()  # a cache written later: kept with the folder
    (out / "embeddings" / "x.npy").write_bytes(b"cache")
    inode = out.stat().st_ino
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "already holds this dataset" in result.output
    assert out.stat().st_ino == inode and (out / "embeddings" / "x.npy").read_bytes() == b"cache"


def test_out_holding_a_damaged_dataset_needs_force(source, references, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(references[1].path, out)
    (out / "test.npz").write_bytes(b"")
    with pytest.raises(UsageError, match=r"a damaged or unreadable dataset .*test.npz.*pass --force"):
        prepare_dataset("recbole", out=out, source=source)
    prepare_dataset("recbole", out=out, source=source, force=True)
    assert PreparedDataset.load(out).fingerprint == references[1].fingerprint


@pytest.mark.parametrize("force", [False, True])
def test_out_with_other_files_is_never_replaced(source, tmp_path, force):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = ["data", "prepare", "recbole", "--source", str(source), "--out", str(out)] + (["--force"] if force else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "not part of a prepared dataset (notes.txt)" in result.output
    assert os.listdir(out) == ["notes.txt"]


def test_out_that_is_a_file_is_refused(source, tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        prepare_dataset("recbole", out=out, source=source)


# ---------------------------------------------------------------------------------------------- run folders
def test_save_run_replaces_a_run_but_not_other_files(references, tmp_path):
    dataset = references[1]
    run = tmp_path / "run"
    first = train_popularity(dataset, run)
    (run / "run.json").write_text("{}")  # whatever the previous run holds, it is replaced whole
    train_popularity(dataset, run)  # a second training into the same folder replaces the run
    assert sorted(os.listdir(run)) == ["run.json", "weights.safetensors"] and leftovers(run) == []
    assert json.loads((run / "run.json").read_text())["valid"] == first.valid
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match=r"not part of a run folder \(notes.txt\)"):
        train_popularity(dataset, other)
    assert os.listdir(other) == ["notes.txt"]


def test_killed_train_leaves_the_old_or_the_new_run(references, tmp_path):
    """``save_run`` under SIGKILL: the run folder holds the previous run or the new one, whole."""
    dataset = references[1]
    run = tmp_path / "run"
    train_popularity(dataset, run)
    old_run = {name: (run / name).read_bytes() for name in os.listdir(run)}
    command = [sys.executable, "-m", "agentrec", "train", "--model", "pop", "--data", str(dataset.path),
               "--out", str(run), "--exclude-history"]  # another run.json (train_config), same weights
    env = {**os.environ, "AGENTREC_TEST_SLOW_WRITES": str(PAUSE_S), "PYTHONPATH": str(ROOT)}
    states = []
    for mode, step in [("exchange", "wrote weights.safetensors"), ("exchange", "after the exchange"),
                       ("two renames", "old folder aside, new one not yet in place")]:
        if mode == "two renames":
            env["AGENTREC_TEST_NO_RENAME_EXCHANGE"] = "1"
        assert _kill_at_step(command, env, step, 0.05), step
        fsutil.recover(run)  # what save_run does first; undoes a two-rename swap killed half-way
        found = {name: (run / name).read_bytes() for name in os.listdir(run)}
        assert leftovers(run) == [] and sorted(found) == ["run.json", "weights.safetensors"], step
        exclude = json.loads(found["run.json"])["train_config"]["exclude_history"]
        assert (found == old_run) != exclude, step  # exactly the old run, or the new one
        states.append("new" if exclude else "old")
        if exclude:
            shutil.rmtree(run)
            train_popularity(dataset, run)
    assert states[:2] == ["old", "new"], states  # a kill landing a step late still leaves a whole run


def test_a_failed_save_run_leaves_the_previous_run(references, tmp_path):
    dataset = references[1]
    run = tmp_path / "run"
    train_popularity(dataset, run)
    before = {name: (run / name).read_bytes() for name in os.listdir(run)}
    info = json.loads((run / "run.json").read_text())

    class Broken(dict):
        def items(self):
            raise RuntimeError("disk full")

    from agentrec.training.runs import RunInfo

    with pytest.raises(RuntimeError, match="disk full"):
        save_run(run, RunInfo(**info), Broken())
    assert {name: (run / name).read_bytes() for name in os.listdir(run)} == before and leftovers(run) == []


# ---------------------------------------------------------------------------------------------- fsutil
def test_atomic_write_bytes_replaces_whole(tmp_path):
    path = tmp_path / "f.json"
    fsutil.atomic_write_bytes(path, b"old")
    fsutil.atomic_write_text(path, "new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.json"]


def test_atomic_dir_error_keeps_the_old_folder(tmp_path):
    path = tmp_path / "d"
    path.mkdir()
    (path / "a").write_text("old")
    with pytest.raises(ZeroDivisionError):
        with fsutil.atomic_dir(path) as temp:
            (temp / "a").write_text("new")
            1 / 0
    assert (path / "a").read_text() == "old" and os.listdir(tmp_path) == ["d"]


@pytest.mark.parametrize("exchange", [True, False])
def test_atomic_dir_replaces_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setenv("AGENTREC_TEST_NO_RENAME_EXCHANGE", "1")
    path = tmp_path / "d"
    path.mkdir()
    (path / "a").write_text("old")
    (path / "b").write_text("old")
    with fsutil.atomic_dir(path) as temp:
        (temp / "a").write_text("new")
    assert os.listdir(path) == ["a"] and (path / "a").read_text() == "new" and os.listdir(tmp_path) == ["d"]


def test_recover_restores_an_orphaned_aside_and_removes_dead_temporaries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    path = tmp_path / "d"
    aside = tmp_path / f".d.old-{dead}-0123abcd"
    aside.mkdir()
    (aside / "a").write_text("old")
    (tmp_path / f".d.tmp-{dead}-89abcdef").mkdir()  # a half-written new folder
    live = tmp_path / f".d.tmp-{os.getpid()}-00000000"  # a live writer's: left alone
    live.mkdir()
    fsutil.recover(path)
    assert (path / "a").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == sorted(["d", live.name])


def test_load_of_a_missing_folder_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist; create one with 'agentrec data prepare"):
        PreparedDataset.load(tmp_path / "nope")
    with pytest.raises(NotFoundError, match="not a prepared dataset"):
        read_stats(tmp_path)


def test_compare_outputs_are_replaced_whole_and_listed_in_the_manifest(tmp_path):
    from agentrec.pipelines.compare import CompareConfig, CompareResult, Row, make_table, write_outputs

    config = CompareConfig(bootstrap=10)
    ranks = np.array([1.0, 3.0, np.inf, 2.0])
    rows = [Row(name="Pop", kind="floor", ranks=ranks, timed_sessions=4, wall_s=0.1, cpu_s=0.1),
            Row(name="NISER", kind="session", ranks=ranks / 2, timed_sessions=4, wall_s=0.1, cpu_s=0.1)]
    manifest = {"dataset": {"name": "toy", "protocol": "leave-one-out", "fingerprint": "f" * 64},
                "created": "now", "git": {"commit": None}, "llm": None, "command": "test"}
    result = CompareResult(out=tmp_path, tables=[make_table("Table 1", rows, config=config)], manifest=manifest,
                           trained=[], generated=0, seconds=1.0)
    (tmp_path / "compare.md").write_text("an old table")
    write_outputs(result, config)
    written = json.loads((tmp_path / "manifest.json").read_text())["outputs"]
    assert set(written) == {"compare.md", "compare.csv", "compare.json", "forest.png", "cost_quality.png",
                            "recall_at_k.png"}
    for name, entry in written.items():
        data = (tmp_path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (tmp_path / "recall_at_k.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path)) == sorted([*written, "manifest.json"])  # no temporaries left
