"""Ray as the distributed engine (issue #16, items 1 and 5): a local Ray cluster of 2 CPUs, SmolLM2 through the hf
engine in each actor.

- ``signals generate --ray`` writes exactly the set a run without Ray writes (greedy first attempts, sampled
  retries seeded per item: compared record by record), and ``signals report`` finds it complete, no duplicates;
- a driver killed with SIGKILL part-way and rerun finishes the set (nothing missing, nothing stored twice) and
  leaves no Ray process behind; nor does a normal run;
- ``predict --ray`` equals ``predict`` without Ray, and its generations are in the durable cache;
- an actor whose engine raises for one item is retried, then reported naming that item, the others stored;
- a hung actor ends the job with an error after ``actor_timeout_s`` instead of hanging it.

The catalogue is the twelve-film toy of ``test_prompting``. Every Ray process started here inherits a marker in
its environment (``AGENTREC_TEST_MARK``), which is how the tests find what a run left behind. The fake engines
below run inside Ray actors: the workers import this module, found through ``PYTHONPATH``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_prompting import toy_movies
from typer.testing import CliRunner

from agentrec.core.errors import ServiceError
from agentrec.llm import ENGINES, Engine, EngineConfig, Generation

pytest.importorskip("ray.data")

from agentrec.llm.raypool import RayConfig, RayJobError, RayPool  # noqa: E402
from agentrec.signals.generate import SignalConfig, generate_signals  # noqa: E402
from agentrec.signals.store import SignalSet  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),  # Ray's own settings
              # a stopped job's Ray threads end with SystemExit once the cluster is gone (the hung actor's)
              pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")]

TESTS = Path(__file__).parent
MARK = "AGENTREC_TEST_MARK"
# the signals every Ray run here makes: 6 items, one aspect, 3 chunks of 2 (so both actors work), few tokens
SIGNAL_ARGS = ["--aspects", "usage", "--limit", "6", "--chunk-size", "2", "--batch-size", "2", "--max-new-tokens",
               "12", "--llm-device", "cpu", "--quiet"]
SIGNALS = SignalConfig(aspects=("usage",), chunk_size=2, max_new_tokens=12)
HF = EngineConfig(device="cpu", batch_size=2, threads=1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_movies(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def plain_set(toy, tmp_path_factory):
    """The set made without Ray, in this process (one torch thread, as each actor has)."""
    from agentrec.llm.hf import HFEngine

    out = tmp_path_factory.mktemp("plain") / "set"
    engine = HFEngine("smollm2", device="cpu", batch_size=2, threads=1)
    generate_signals(toy, out, engine, config=SIGNALS, item_ids=range(1, 7))
    return records(out)


@pytest.fixture
def marked(monkeypatch):
    """A marker every process started from here on inherits, and a path where actors import this module."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    return mark


def records(folder) -> list[dict]:
    """The set's records by (item, aspect); reading it must find no duplicate and no torn line."""
    found, load = SignalSet(folder).read()
    assert load.duplicates == 0 and load.torn_bytes == 0, load.describe()
    return [found[key] for key in sorted(found)]


def processes_with(mark: str) -> list[int]:
    """Processes whose environment holds the test's marker (Linux /proc)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if f"{MARK}={mark}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in pids if pid != os.getpid() and _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def none_left(mark: str, within_s: float = 30.0) -> list[int]:
    """Wait until no process carries ``mark``; what is still there after ``within_s``."""
    deadline = time.monotonic() + within_s
    while (left := processes_with(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def command_lines(pids: list[int]) -> list[str]:
    """What each process is (command, parent, state, the cluster token it carries), for failure messages."""
    lines = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:100]
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            token = [v for v in (entry.decode(errors="replace") for entry in environ) if v.startswith("AGENTREC_RAY")]
            lines.append(f"{pid} (parent {stat[1]}, state {stat[0]}): {command.strip()} {token}")
        except OSError:
            pass
    return lines


# ---------------------------------------------------------------------------------------------- signals
def test_signals_on_ray_equal_the_plain_set(toy, plain_set, marked, tmp_path):
    from agentrec.cli.main import app

    out = tmp_path / "ray"
    done = CliRunner().invoke(app, ["signals", "generate", "--data", str(toy.path), "--out", str(out), "--ray",
                                    "--actors", "2", "--actor-timeout-s", "300"] + SIGNAL_ARGS)
    assert done.exit_code == 0, done.output
    assert "Ray: 2 actors x 1 CPU on a local cluster" in done.output
    assert records(out) == plain_set  # every field: text, raw, status, attempts, token counts
    assert len(plain_set) == 6 and [r["item_id"] for r in plain_set] == [1, 2, 3, 4, 5, 6]
    assert not none_left(marked, within_s=0), command_lines(processes_with(marked))  # closed with the run

    report = CliRunner().invoke(app, ["signals", "report", str(out)])
    assert report.exit_code == 0, report.output
    assert "Records read: 6 records." in report.output and "duplicate lines" not in report.output
    written = json.loads((out / "report.json").read_text())
    assert written["load"] == {"lines": 6, "torn_bytes": 0, "duplicates": 0}
    assert written["aspects"]["usage"]["signals"] + written["aspects"]["usage"]["empty"] == 6  # the 6 items asked


def test_a_killed_driver_resumes_to_the_plain_set_and_leaves_no_ray_process(toy, plain_set, marked, tmp_path):
    out = tmp_path / "s"
    command = [sys.executable, "-m", "agentrec", "signals", "generate", "--data", str(toy.path), "--out", str(out),
               "--ray", "--actors", "2"] + SIGNAL_ARGS
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = out / "signals.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if lines.exists() and lines.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it was killed: " + process.stdout.read().decode()[-800:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    left = none_left(marked)
    assert not left, "left behind by the killed driver:\n" + "\n".join(command_lines(left))
    before = lines.read_bytes()
    stored = before.count(b"\n")
    assert 2 <= stored < 6
    with open(lines, "ab") as handle:  # as if the kill had landed in the middle of a write
        handle.write(b'{"item_id": 5, "aspe')

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    run = json.loads((out / "last_run.json").read_text())
    assert run["already_done"] == stored and run["generated"] == 6 - stored  # none generated twice
    assert lines.read_bytes().startswith(before)  # what the killed run stored is untouched
    assert records(out) == plain_set  # complete, no duplicates, equal to the set made without Ray
    assert not none_left(marked), command_lines(processes_with(marked))


# ---------------------------------------------------------------------------------------------- predict
def test_predict_on_ray_equals_predict(toy, marked, tmp_path):
    from agentrec.llm.cache import GenerationCache
    from agentrec.llm.hf import HFEngine
    from agentrec.pipelines.predict import GenerationConfig, predict
    from agentrec.retrieval.index import CatalogueIndex

    index = CatalogueIndex.build(toy, "minilm", store=tmp_path / "store", progress=False)
    generation = GenerationConfig(title_tokens=10, chunk_size=2)  # 4 test sessions: 2 chunks, one per actor
    plain = predict(toy, "fs", HFEngine("smollm2", device="cpu", batch_size=2, threads=1), k=5, index=index,
                    generation=generation, cache=False, out=tmp_path / "plain.jsonl")
    cache = GenerationCache(tmp_path / "cache.sqlite")
    with RayPool("hf", HF, RayConfig(actors=2, actor_timeout_s=300)) as pool:
        on_ray = predict(toy, "fs", "hf", engine_config=HF, k=5, index=index, generation=generation, cache=cache,
                         out=tmp_path / "ray.jsonl", ray=pool)
    assert on_ray.candidates.raw == plain.candidates.raw and on_ray.candidates.titles == plain.candidates.titles
    assert (on_ray.candidates.item_ids == plain.candidates.item_ids).all() and on_ray.metrics == plain.metrics
    assert on_ray.engine_calls == 4 and on_ray.ray.startswith("Ray: 2 actors")
    mine = [{k: v for k, v in json.loads(line).items() if k != "cached"} for line in open(tmp_path / "ray.jsonl")]
    theirs = [{k: v for k, v in json.loads(line).items() if k != "cached"} for line in open(tmp_path / "plain.jsonl")]
    assert mine == theirs
    assert len(cache) == 4  # each chunk was stored as it came back: a rerun generates nothing
    rerun = predict(toy, "fs", HFEngine("smollm2", device="cpu", batch_size=2, threads=1), k=5, index=index,
                    generation=generation, cache=cache)
    assert rerun.engine_calls == 0 and rerun.candidates.raw == plain.candidates.raw
    assert not none_left(marked, within_s=0)


# ---------------------------------------------------------------------------------------------- failures
class ScriptedEngine(Engine):
    """Writes a usage scenario naming a digest of the chat; fails (raises) or hangs on chats about ``bad``."""

    name = "scripted-ray"
    fingerprint = "scripted-ray|v1"

    def __init__(self, bad: str = "", hang_s: float = 0.0):
        self.bad, self.hang_s = bad, hang_s

    def generate(self, chats, params):
        for chat in chats:
            if self.bad and self.bad in chat[-1]["content"].rsplit("Item:", 1)[-1]:
                if self.hang_s:
                    time.sleep(self.hang_s)
                raise RuntimeError(f"the engine broke on {self.bad}")
        return [Generation(text="A quiet evening at home, mood " + _digest(c),
                           tokens_in=10, tokens_out=5, finish_reason="stop") for c in chats]


def _digest(chat) -> str:
    return hashlib.sha256(json.dumps(chat).encode()).hexdigest()[:8]


def make_failing(config: EngineConfig) -> ScriptedEngine:
    return ScriptedEngine(bad="Heat")


def make_hanging(config: EngineConfig) -> ScriptedEngine:
    return ScriptedEngine(bad="Alien", hang_s=600)


@pytest.fixture
def scripted_engines():
    ENGINES.add("test-failing", "test_ray:make_failing", "raises on Heat")
    ENGINES.add("test-hanging", "test_ray:make_hanging", "hangs on Alien")
    yield
    ENGINES.remove("test-failing")
    ENGINES.remove("test-hanging")


def test_an_actor_error_is_retried_then_reported_with_its_item(toy, marked, scripted_engines, tmp_path):
    config = SignalConfig(aspects=("usage",), chunk_size=1, retries=0)
    with RayPool("test-failing", EngineConfig(), RayConfig(actors=2, actor_retries=1, actor_timeout_s=120)) as pool:
        with pytest.raises(ServiceError) as caught:
            generate_signals(toy, tmp_path / "s", ScriptedEngine(), config=config, item_ids=[1, 2, 3], ray=pool)
    message = str(caught.value)
    assert "1 of 3 chunks failed on the Ray actors after 2 attempts each: item 2 (usage)" in message
    assert "RuntimeError: the engine broke on Heat" in message and "rerun the same command" in message
    assert [r["item_id"] for r in records(tmp_path / "s")] == [1, 3]  # the others are stored
    assert not none_left(marked), command_lines(processes_with(marked))


def test_a_hung_actor_times_out_instead_of_hanging_the_job(toy, marked, scripted_engines, tmp_path):
    config = SignalConfig(aspects=("usage",), chunk_size=1, retries=0)
    started = time.monotonic()
    with RayPool("test-hanging", EngineConfig(), RayConfig(actors=1, actor_timeout_s=30)) as pool:
        with pytest.raises(RayJobError) as caught:
            generate_signals(toy, tmp_path / "s", ScriptedEngine(), config=config, item_ids=[1, 4, 5], ray=pool)
    assert time.monotonic() - started < 200  # a hang guard: the actor sleeps for 600 s
    message = str(caught.value)
    assert "no task came back from the Ray actors for 30 s (--actor-timeout-s)" in message
    assert "item 4 (usage)" in message and "item 5 (usage)" in message and "item 1 " not in message
    assert caught.value.pending == [1, 2]
    assert [r["item_id"] for r in records(tmp_path / "s")] == [1]  # what came back before the hang is stored
    assert not none_left(marked), command_lines(processes_with(marked))  # the hung actor is gone too


def test_options_are_checked_before_any_work(toy, tmp_path):
    from agentrec.cli.main import app

    runner = CliRunner()
    base = ["signals", "generate", "--data", str(toy.path), "--out", str(tmp_path / "o")]
    for extra, expected in ((["--ray", "--actors", "0"], "--actors must be >= 1"),
                            (["--ray", "--actor-timeout-s", "0"], "--actor-timeout-s must be > 0"),
                            (["--ray", "--cpus-per-actor", "0"], "--cpus-per-actor must be > 0"),
                            (["--actors", "3"], "--actors applies with --ray only"),
                            (["--ray", "--gpus-per-actor", "1", "--engine", "openai"], "--gpus-per-actor needs"),
                            (["--ray", "--gpus-per-actor", "1", "--llm-device", "cpu"], "--llm-device cuda")):
        done = runner.invoke(app, base + extra)
        assert done.exit_code == 1 and expected in done.output, (extra, done.output)
    assert not (tmp_path / "o").exists()
    done = runner.invoke(app, ["predict", "--strategy", "fs", "--data", str(toy.path), "--out",
                               str(tmp_path / "p.jsonl"), "--ray", "--hybrid", str(tmp_path)])
    assert done.exit_code == 1 and "--ray is not offered with --hybrid" in done.output


def test_the_sweep_signals_a_pid_only_while_it_keeps_its_start_time():
    """pids come round again (32,768 by default): a pid noted for one process must not kill the next one."""
    from agentrec.llm.raypool import _start_time, kill_processes

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = _start_time(process.pid)
        assert started
        kill_processes({process.pid: str(int(started) - 1)}, grace_s=0.2)  # another process once had this pid
        time.sleep(0.3)
        assert process.poll() is None, "a process that only shares a noted pid was killed"
        kill_processes({process.pid: started}, grace_s=5.0)
        assert process.wait(timeout=10) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
