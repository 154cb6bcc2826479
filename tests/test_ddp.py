"""Data-parallel training (torch DDP, gloo on the CPU): ``agentrec train --nproc 2`` and a direct torchrun launch
give ordinary, evaluable runs; two ranks take the step one process takes on the same global batch; agreed errors
print once; a job leaves no process or listening port behind, also after a SIGKILL of its launcher.

Each launch starts three Python processes that import torch (about 5-10 s on two cores); the data is a small
synthetic catalogue (199 items, 1,902 training samples).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from agentrec.cli.main import app

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")

runner = CliRunner()
HANG_GUARD_S = 300  # a launch takes 5-10 s here; this only stops a hung job
# NARM without dropout: one process and two ranks then compute the same function of the same batches
NO_DROPOUT = ["--set", "embedding_dropout=0", "--set", "context_dropout=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "synthetic"
    result = runner.invoke(app, ["data", "prepare", "synthetic", "--items", "200", "--sessions", "600", "--seed", "1",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def agentrec(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``agentrec ARGS`` as a user types it (the venv's console script), to the end."""
    script = Path(sys.executable).with_name("agentrec")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "agentrec"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, **(env or {})})


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "agentrec", *args], capture_output=True, text=True, timeout=HANG_GUARD_S)


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line holds ``text`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (its main thread, at least, is not a zombie yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def listening_inodes() -> set[str]:
    """Socket inodes of every TCP socket listening on this machine."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(fields[9])
    return inodes


def holders(inodes: set[str]) -> dict[int, str]:
    """The processes holding any of the socket ``inodes``, with their command lines (for a failure message)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and socket_inodes(int(entry.name)) & inodes:
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            except OSError:
                found[int(entry.name)] = "?"
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    except OSError:
        pass
    return inodes


def test_nproc_2_trains_a_run_that_evaluates_in_one_process(data, tmp_path):
    run = tmp_path / "run"
    done = agentrec("train", "--model", "narm", "--data", str(data), "--out", str(run), "--device", "cpu",
                    "--epochs", "1", "--nproc", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(f"wrote {run}") == 1  # rank 0 alone reports
    record = json.loads((run / "run.json").read_text())
    assert record["extra"]["world_size"] == 2 and record["extra"]["backend"] == "gloo"
    assert record["extra"]["train_samples"] == 1902 and len(record["history"]) == 1
    assert (run / "learning_curve.png").exists()
    result = runner.invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "recall@20" in json.loads((run / "run.json").read_text())["test"]
    assert processes_mentioning(str(run)) == []  # no rank outlives the job


def test_a_torchrun_launch_is_the_same_as_one_process_on_the_same_global_batches(data, tmp_path):
    """The shard and loss arithmetic: 20 steps of two ranks (interleaved halves of each batch of 100, each rank's
    mean loss weighted by its share) end on the weights of 20 steps of one process on the whole batches."""
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    common = ["--model", "narm", "--data", str(data), "--device", "cpu", "--epochs", "1", "--lr", "0.01", "--quiet",
              *NO_DROPOUT]
    done = torchrun("train", *common, "--out", str(two))
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((two / "run.json").read_text())["extra"]["world_size"] == 2
    for out, batch in ((one, "100"), (other, "50")):
        result = runner.invoke(app, ["train", *common, "--out", str(out), "--batch-size", batch])
        assert result.exit_code == 0, result.output
    a, b, c = (load_file(str(run / "weights.safetensors")) for run in (one, two, other))
    gap = max(float(np.abs(a[name] - b[name]).max()) for name in a)
    assert gap < 1e-4, f"two ranks ended {gap} away from one process"
    # the tolerance tells runs apart: other batches (of 50) end far from it
    assert max(float(np.abs(a[name] - c[name]).max()) for name in a) > 100 * 1e-4
    ra, rb = (json.loads((run / "run.json").read_text()) for run in (one, two))
    assert ra["history"][0]["loss"] == pytest.approx(rb["history"][0]["loss"], rel=1e-6)
    assert ra["valid"] == pytest.approx(rb["valid"], abs=1e-9)  # sharded validation: the same ranks, gathered


def test_a_divergence_stops_every_rank_with_one_red_line(data, tmp_path):
    run = tmp_path / "run"
    done = agentrec("train", "--model", "gru4rec", "--data", str(data), "--out", str(run), "--device", "cpu",
                    "--epochs", "2", "--lr", "1e30", "--nproc", "2", "--quiet")
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "training diverged" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr
    assert not run.exists()  # nothing was saved
    assert processes_mentioning(str(run)) == []


def test_nproc_is_checked_before_any_rank_starts(data, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    result = runner.invoke(app, ["train", "--model", "narm", "--data", str(data), "--out", run, "--nproc", "0"])
    assert result.exit_code == 1 and "--nproc must be >= 1" in result.output
    result = runner.invoke(app, ["train", "--model", "pop", "--data", str(data), "--out", run, "--nproc", "2"])
    assert result.exit_code == 1 and "pop" in result.output
    # a rank of a torchrun job of 2 refuses another --nproc, before it joins the group; every rank meets that
    # error alike, so rank 0 alone prints it
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    args = ["train", "--model", "narm", "--data", str(data), "--out", run, "--nproc", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--nproc 3: this process is one of 2 ranks" in result.output
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and result.output == ""
    assert not Path(run).exists()


@pytest.mark.parametrize("launcher", ["agentrec --nproc 2", "torchrun"])
def test_a_sigkilled_launcher_leaves_no_rank_and_no_listening_port(data, tmp_path, launcher):
    run = tmp_path / "run"
    train = ["train", "--model", "narm", "--data", str(data), "--out", str(run), "--device", "cpu", "--epochs", "1000",
             "--patience", "1000", "--quiet"]
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "agentrec", *train]
    else:
        command = [sys.executable, "-m", "agentrec", *train, "--nproc", "2"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # wait until both ranks have joined the group (each holds sockets) and the job listens somewhere
        deadline, ranks, ports = time.monotonic() + HANG_GUARD_S, [], set()
        while time.monotonic() < deadline:
            assert job.poll() is None, "the job ended before it was killed"
            ranks = [pid for pid in processes_mentioning(str(run)) if pid != job.pid]
            ports = {inode for pid in [job.pid, *ranks] for inode in socket_inodes(pid)} & listening_inodes()
            if len(ranks) == 2 and all(socket_inodes(pid) for pid in ranks) and ports:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the ranks did not start in {HANG_GUARD_S} s")
        time.sleep(1.0)  # into training
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
        # a killed process with several threads turns zombie before its last thread has closed its sockets
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (any(alive(pid) for pid in ranks) or ports & listening_inodes()):
            time.sleep(0.1)
        assert not any(alive(pid) for pid in ranks), "a rank outlived its killed launcher"
        assert processes_mentioning(str(run)) == []
        left = ports & listening_inodes()
        assert not left, f"a port of the killed job still listens: {holders(left)}"
    finally:
        for pid in processes_mentioning(str(run)):  # only this test's own processes: its unique run folder
            os.kill(pid, signal.SIGKILL)


def test_the_api_checks_nproc_before_any_rank_starts(data, tmp_path):
    import agentrec
    from agentrec.core.errors import UsageError

    with pytest.raises(UsageError, match="bucket cannot be given to the ranks"):
        agentrec.train("narm", data, out=tmp_path / "a", nproc=2, bucket=3, device="cpu")
    with pytest.raises(UsageError, match="pop .* leave nproc at 1"):
        agentrec.train("pop", data, out=tmp_path / "b", nproc=2)
    with pytest.raises(UsageError, match="--batch-size 1 is the global batch, split across 2 processes"):
        agentrec.train("narm", data, out=tmp_path / "c", nproc=2, batch_size=1, device="cpu")
    with pytest.raises(ValueError, match="nproc must be >= 1"):
        agentrec.train("narm", data, out=tmp_path / "d", nproc=0)
    assert not any((tmp_path / name).exists() for name in "abcd")
