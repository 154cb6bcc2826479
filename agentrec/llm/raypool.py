"""Ray Data as the distributed engine: a pool of actors, one engine each, results streamed back to the driver.

``pip install -e '.[ray]'`` (``ray[data]==2.58.0``); ray is imported when a pool starts, never with this module.

**Flow.** The driver (the process that runs ``signals generate --ray`` or ``predict --ray``) builds every prompt
of the work still to do, cut into *tasks* (a task is one chunk: the chats that the plain path sends to the engine
in one call). :meth:`RayPool.run` makes them a Ray Dataset, one row per task, and runs
``map_batches(_EngineActor, batch_size=1, compute=ActorPoolStrategy(size=actors))``: each actor builds **one**
engine from the engine's registry factory and a picklable :class:`~agentrec.llm.base.EngineConfig`, then calls
``fn(engine, payload)`` for each task it is given. The driver iterates the output as it streams back and stores
each task's result in its durable store (the signal set, the generation cache) before it reads the next, so a
driver killed at any moment loses at most the tasks in flight; a rerun skips what is stored.

**Same outputs as without Ray.** A task is a whole chunk, so an actor makes exactly the engine call the plain path
makes (the same chats in the same order: the hf engine sorts and pads them into the same batches). Greedy
outputs are therefore the same bit for bit; on a CPU this needs the same torch thread count on both sides
(``--threads`` there, ``--cpus-per-actor`` here), as float sums may be split differently across threads.

**Failures.** A task whose ``fn`` raises is tried again on its actor, ``actor_retries`` times; after that it comes back
as a failed :class:`TaskResult` (with whatever ``fn`` finished, see :class:`TaskError`), and the caller reports the
items or sessions it held. An actor whose process dies is restarted and its task retried as often (Ray's
``max_restarts`` / ``max_task_retries``); beyond that Ray stops the job, reported as a :class:`RayJobError` naming
the tasks not done. An engine that cannot be made, or is another engine than the driver's, stops the job at
its first task. A hung actor: when no task has come back for ``actor_timeout_s``, the job stops with a
:class:`RayJobError` naming the tasks not done (what was stored stays stored).

**The cluster.** ``address=None`` starts a local cluster for the job (``ray.init(num_cpus=actors x
cpus_per_actor)``, no dashboard) and stops it after (``ray.shutdown``); an address (``HOST:PORT``, ``auto``,
``ray://HOST:10001``) joins a running cluster whose nodes have agentrec installed. Ray's usage statistics are off
(``RAY_USAGE_STATS_ENABLED=0``), its console output is quiet (logs stay in the session folder, named in errors).
A driver killed with SIGKILL cannot stop its local cluster, and Ray 2.58 leaves two agents of it running for
minutes; so every process of a local cluster carries a token in its environment (:data:`OWNER_ENV`), and a small
watcher process started with the pool (``python -m agentrec.llm.raypool reap TOKEN``) kills what still carries it
once the driver is gone, however it ended. A pool also removes, when it starts, what an earlier driver whose
watcher was killed too left behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from agentrec.core.assets import MissingDependency
from agentrec.core.errors import ServiceError
from agentrec.core.options import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Range
from agentrec import llm as llm_package
from agentrec.llm.base import DEFAULT_MODEL, Engine, EngineConfig, EngineError, describe_error, model_label
from agentrec.llm.hf import HFEngine

logger = logging.getLogger(__name__)

RAY_REQUIREMENT = "ray[data]==2.58.0"
RAY_INSTALL = f"pip install -e '.[ray]'  (or: pip install '{RAY_REQUIREMENT}')"
PUMP_JOIN_S = 30.0  # how long closing waits for the result reader of a job whose every result came back
PUMP_JOIN_UNFINISHED_S = 3.0  # and of a job stopped early
OWNER_ENV = "AGENTREC_RAY_OWNER"  # carried by every process of a local cluster that a pool starts
SHOWN = 8  # tasks named in a message before "... and N more"


# ================================================================================================ settings
@dataclass(frozen=True)
class RayConfig:
    """Where and how a :class:`RayPool` runs; the CLI's ``--ray``, ``--ray-address``, ``--actors``, ...

    Attributes are checked on creation (an :class:`~agentrec.core.options.OptionError` names the field).
    """

    address: str | None = None  # None: a local cluster for this job; else a running one (HOST:PORT, auto, ray://...)
    actors: int = 2  # actors, each holding one engine
    cpus_per_actor: float = 1.0  # CPUs reserved per actor; an hf actor runs this many torch threads
    gpus_per_actor: float = 0.0  # GPUs per actor (vllm, or hf on cuda)
    actor_timeout_s: float = 600.0  # the job stops with an error when no task has come back for this long
    actor_retries: int = 1  # a task that raises is tried again this often on its actor; a dead actor is
    # restarted (and its task retried) as often
    object_store_mb: int = 512  # a local cluster's object store (the prompts and results in flight)

    def __post_init__(self):
        COUNT.check("actors", self.actors)
        Range(0, low_open=True).check("cpus_per_actor", self.cpus_per_actor)
        NON_NEGATIVE.check("gpus_per_actor", self.gpus_per_actor)
        POSITIVE.check("actor_timeout_s", self.actor_timeout_s)
        NON_NEGATIVE_INT.check("actor_retries", self.actor_retries)
        Range(64, integer=True).check("object_store_mb", self.object_store_mb)

    @property
    def local(self) -> bool:
        return self.address is None

    def describe(self) -> str:
        where = "a local cluster" if self.local else f"the cluster at {self.address}"
        gpus = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        return f"Ray: {self.actors} actors x {self.cpus_per_actor:g} CPU{gpus} on {where}"


# ================================================================================================ results
class TaskError(Exception):
    """Raised by a task function to fail a task while keeping what it finished (``partial``, returned to the
    driver with the failed :class:`TaskResult`); any other exception fails it with nothing kept."""

    def __init__(self, message: str, partial=None):
        super().__init__(message)
        self.partial = partial


class RayJobError(ServiceError):
    """The Ray job stopped before every task came back (a hung or dying actor, an engine that cannot be made).

    ``pending`` holds the indices of the tasks that did not come back; the results that did were yielded (and
    stored by the caller) before this is raised.
    """

    def __init__(self, message: str, pending: list[int]):
        super().__init__(message)
        self.pending = pending


@dataclass
class TaskResult:
    """One task's outcome, as the driver receives it."""

    index: int  # the task's position in the list given to :meth:`RayPool.run`
    value: object = None  # fn's return value (None when the task failed)
    error: str | None = None  # the last attempt's error in one line (None: done)
    attempts: int = 1
    partial: object = None  # what a failed task finished (:class:`TaskError`)
    seconds: float = 0.0  # the actor's wall-clock time for the task, retries included
    actor: str = ""  # pid@host of the actor that ran it
    fatal: bool = False  # the actor has no usable engine: every task would fail the same way

    @property
    def ok(self) -> bool:
        return self.error is None


# ================================================================================================ the pool
class RayPool:
    """Actors holding one engine each, on a local Ray cluster or a running one (see the module docstring).

    Example::

        with RayPool("hf", EngineConfig(batch_size=8), RayConfig(actors=2)) as pool:
            for done in pool.run(generate_task, [{"chats": chats, "params": params}], labels=["chunk 0"]):
                store(done.value)

    Args:
        engine: the engine's name in :data:`agentrec.llm.ENGINES` (its factory is sent to the actors).
        engine_config: settings of every actor's engine; ``threads`` becomes ``cpus_per_actor`` (at least 1).
        config: the cluster, the actors and their failure handling.
    """

    def __init__(self, engine: str, engine_config: EngineConfig | None = None, config: RayConfig | None = None):
        self.engine_name = engine
        self.factory = llm_package.ENGINES.load(engine)  # an unknown name fails here, before a cluster starts
        self.config = config or RayConfig()
        engine_config = engine_config or EngineConfig()
        self.engine_config = replace(engine_config, threads=max(1, int(self.config.cpus_per_actor)))
        self.log_dir: str | None = None
        self._ray = None
        self._watcher: subprocess.Popen | None = None
        self._watcher_pipe: int | None = None
        self._pumps: list[tuple[threading.Thread, threading.Event]] = []  # result readers, and "every result came"

    # ------------------------------------------------------------------------------------ start and stop
    def __enter__(self) -> RayPool:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self._ray is not None

    def describe(self) -> str:
        return self.config.describe() + (f" (Ray logs: {self.log_dir})" if self.log_dir else "")

    def start(self) -> None:
        """Start the local cluster (or connect to ``address``); a no-op when started."""
        if self._ray is not None:
            return
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before ray is imported: no usage statistics, no prompt
        ray = import_ray()
        # Ray starts a local cluster on its own when an API is used without one; after ray.shutdown, the thread that
        # still waits on a stopped job's results would do that: a cluster of nobody's. agentrec inits explicitly.
        ray._private.auto_init_hook.enable_auto_connect = False
        if ray.is_initialized():  # someone else's session in this process: not ours to configure or stop
            raise ServiceError("Ray is already initialised in this process; agentrec starts (and stops) its own "
                               "session: call ray.shutdown() first")
        options = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                       logging_level=logging.ERROR, namespace="agentrec")
        # Ray's C++ parts print errors to the console that are not ours to show (one per actor, about restarts); the
        # processes started now read the level, their log files keep the rest. RAY_BACKEND_LOG_LEVEL=info keeps all.
        given = {"RAY_BACKEND_LOG_LEVEL": os.environ.get("RAY_BACKEND_LOG_LEVEL", "fatal")}
        if self.config.local:
            sweep_stale()
            token = f"{os.getpid()}:{_start_time(os.getpid())}:{uuid.uuid4().hex}"
            self._start_watcher(token)
            given[OWNER_ENV] = token  # inherited by every process ray.init starts, and by what they start
            # Ray runs its workers at nice 15, for a cluster shared with its head; this one is the job's own, and
            # its actors should compete for the CPUs as the engine of a run without Ray does
            given["RAY_worker_niceness"] = os.environ.get("RAY_worker_niceness", "0")
            try:
                with _environment(given):
                    # "local": a new cluster, whatever RAY_ADDRESS or a `ray start` elsewhere on the machine says
                    cpus = max(1, math.ceil(self.config.actors * self.config.cpus_per_actor))
                    ray.init(address="local", num_cpus=cpus,
                             object_store_memory=self.config.object_store_mb * 1024 * 1024, **options)
            except BaseException:
                self._stop_watcher()
                raise
        else:
            try:
                with _environment(given):
                    ray.init(address=self.config.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ServiceError(f"--ray-address {self.config.address}: cannot join the Ray cluster "
                                   f"({describe_error(error)})") from None
        self._ray = ray
        self.log_dir = _log_dir(ray)
        _quiet_ray_data()
        logger.info("%s; logs in %s", self.config.describe(), self.log_dir)

    def close(self) -> None:
        """Stop the local cluster (or leave the remote one), then let the watcher sweep what is left.

        The threads that read a job's results are given time to finish first (Ray Data winds the job's actors
        down after the last result): Ray ends the whole process when a thread uses it after ``ray.shutdown``.
        """
        started = time.monotonic()
        for reader, finished in self._pumps:
            # a job whose every result came back ends by itself; one stopped early may wait on a hung actor
            wait = PUMP_JOIN_S if finished.is_set() else PUMP_JOIN_UNFINISHED_S
            reader.join(timeout=max(0.0, started + wait - time.monotonic()))
            if reader.is_alive():  # a job stopped early (already reported) is expected to leave its reader waiting
                (logger.warning if finished.is_set() else logger.debug)(
                    "a Ray job's result reader is still running after %g s; stopping Ray anyway", wait)
        self._pumps.clear()
        if self._ray is not None:
            try:
                logging.getLogger("ray").setLevel(logging.CRITICAL)  # a stopped job's threads complain as they end
                self._ray.shutdown()
            finally:
                self._ray = None
        self._stop_watcher()

    def _start_watcher(self, token: str) -> None:
        read, write = os.pipe()  # the driver holds the write end (not inherited by what it starts): EOF = gone
        try:
            self._watcher = subprocess.Popen([sys.executable, "-m", "agentrec.llm.raypool", "reap", token],
                                             stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True, close_fds=True)
        finally:
            os.close(read)
        self._watcher_pipe = write

    def _stop_watcher(self) -> None:
        if self._watcher_pipe is not None:
            os.close(self._watcher_pipe)  # the watcher sweeps and exits
            self._watcher_pipe = None
        if self._watcher is not None:
            try:
                self._watcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                logger.warning("the Ray watcher (pid %d) did not finish its sweep", self._watcher.pid)
            self._watcher = None

    # ------------------------------------------------------------------------------------ work
    def run(self, fn: Callable, payloads: list, *, labels: list[str] | None = None,
            fingerprint: str | None = None) -> Iterator[TaskResult]:
        """Run ``fn(engine, payload)`` for every payload on the actors; yield each :class:`TaskResult` as it comes.

        Results come in the order tasks finish, not the order given (``result.index`` says which). The
        generator must be consumed for the tasks to run; stopping early (``break``) leaves the rest undone.

        Args:
            fn: a module-level function (actors import it by name), ``fn(engine, payload) -> value``.
            payloads: one picklable payload per task.
            labels: one short description per task (the items or sessions it holds), for error messages.
            fingerprint: the engine fingerprint the driver built its prompts and store for; an actor whose engine
                differs fails the job before anything of it is stored.

        Raises:
            RayJobError: no task came back for ``actor_timeout_s``, Ray gave up on a dying actor, or an actor could
                not make its engine; the results that came back were yielded first.
        """
        if not payloads:
            return
        self.start()
        import ray.data

        labels = labels or [f"task {i}" for i in range(len(payloads))]
        rows = [{"index": i, "payload": pickle.dumps(p, protocol=pickle.HIGHEST_PROTOCOL)}
                for i, p in enumerate(payloads)]
        config = self.config
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        compute = ray.data.ActorPoolStrategy(size=min(config.actors, len(rows)), max_tasks_in_flight_per_actor=1)
        output = dataset.map_batches(
            _EngineActor, batch_size=1, batch_format="numpy", compute=compute,
            fn_constructor_kwargs=dict(factory=self.factory, engine_config=self.engine_config, fn=fn,
                                       fingerprint=fingerprint, retries=config.actor_retries),
            num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor or None,
            max_restarts=config.actor_retries, max_task_retries=config.actor_retries)
        arrivals: queue.Queue = queue.Queue()
        stopped = threading.Event()

        def pump():  # Ray's iterator blocks; it runs in a thread so that the driver can time out
            try:
                for batch in output.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                    for index, result in zip(batch["index"], batch["result"]):
                        arrivals.put(("result", int(index), result))
                    if stopped.is_set():
                        return
                arrivals.put(("end", None, None))
            except BaseException as error:  # noqa: BLE001 -- handed to the driver's thread
                arrivals.put(("error", None, error))

        reader = threading.Thread(target=pump, name="agentrec-ray-results", daemon=True)
        finished = threading.Event()
        self._pumps.append((reader, finished))
        reader.start()
        pending = dict.fromkeys(range(len(rows)))  # insertion-ordered set
        try:
            while pending:
                try:
                    kind, index, value = arrivals.get(timeout=config.actor_timeout_s)
                except queue.Empty:
                    raise RayJobError(
                        f"no task came back from the Ray actors for {config.actor_timeout_s:g} s (--actor-timeout-s): "
                        f"an actor or its engine hangs. Not done: {_brief(pending, labels)}. What came back is "
                        f"stored; rerun the same command to do the rest{self._logs_hint()}", list(pending)) from None
                if kind == "end":
                    break
                if kind == "error":
                    raise RayJobError(f"Ray stopped the job: {describe_error(value).splitlines()[0]}. Not done: "
                                      f"{_brief(pending, labels)}. What came back is stored; rerun the same command "
                                      f"to do the rest{self._logs_hint()}", list(pending)) from value
                result: TaskResult = pickle.loads(value)
                if result.fatal:
                    raise RayJobError(f"{result.error} (actor {result.actor}); nothing of "
                                      f"{_brief(pending, labels)} was done", list(pending))
                pending.pop(index, None)
                if not pending:
                    finished.set()
                yield result
        finally:
            stopped.set()
        if pending:
            raise RayJobError(f"Ray returned no result for {_brief(pending, labels)}{self._logs_hint()}",
                              list(pending))

    def _logs_hint(self) -> str:
        return f" (Ray's logs: {self.log_dir})" if self.log_dir else ""


def _brief(pending, labels: list[str]) -> str:
    indices = list(pending)
    shown = "; ".join(labels[i] for i in indices[:SHOWN])
    return shown + (f"; ... and {len(indices) - SHOWN} more tasks" if len(indices) > SHOWN else "")


# ================================================================================================ actors
class _EngineActor:
    """One Ray Data actor: makes its engine once, then runs ``fn(engine, payload)`` for each row it is given.

    A row is ``{"index": int, "payload": pickled payload}``; the answer ``{"index", "result": pickled TaskResult}``.
    Exceptions never leave the actor (they would stop the whole dataset): they become failed results.
    """

    def __init__(self, factory, engine_config: EngineConfig, fn, fingerprint: str | None, retries: int):
        self.fn, self.retries = fn, retries
        self.name = f"{os.getpid()}@{os.uname().nodename}"
        self.engine, self.failure = None, None
        try:
            self.engine = factory(engine_config)
            made = self.engine.fingerprint
            if fingerprint is not None and made != fingerprint:
                self.failure = (f"the Ray actor's engine is {made}, but the driver's is {fingerprint}: the actors "
                                "must run the engine that the prompts and the store were made for (where the "
                                "driver and the actors have different devices, give --dtype)")
        except Exception as error:  # noqa: BLE001 -- reported to the driver, which stops the job
            self.failure = f"the Ray actor could not make its engine: {describe_error(error)}"

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        results = [pickle.dumps(self._run(int(index), payload), protocol=pickle.HIGHEST_PROTOCOL)
                   for index, payload in zip(batch["index"], batch["payload"])]
        return {"index": np.asarray(batch["index"], dtype=np.int64), "result": np.array(results, dtype=object)}

    def _run(self, index: int, payload: bytes) -> TaskResult:
        if self.failure is not None:
            return TaskResult(index=index, error=self.failure, actor=self.name, fatal=True)
        started = time.perf_counter()
        task = pickle.loads(payload)
        result = TaskResult(index=index, actor=self.name)
        for attempt in range(1, self.retries + 2):
            result.attempts = attempt
            try:
                result.value, result.error, result.partial = self.fn(self.engine, task), None, None
                break
            except TaskError as error:
                result.error, result.partial = str(error), error.partial
            except Exception as error:  # noqa: BLE001 -- retried, then reported with the task
                result.error, result.partial = describe_error(error), None
                logger.warning("task %d failed (attempt %d):\n%s", index, attempt, traceback.format_exc())
        result.seconds = time.perf_counter() - started
        return result


def generate_task(engine: Engine, payload: dict) -> list:
    """A task that generates: ``payload = {"chats": [...], "params": SamplingParams}`` -> one Generation per chat.

    An :class:`~agentrec.llm.base.EngineError` fails the task keeping the generations that succeeded
    (``partial``: a list with None for the failed chats).
    """
    try:
        return engine.generate(payload["chats"], payload["params"])
    except EngineError as error:
        raise TaskError(describe_error(error), partial=list(error.partial)) from None


# ================================================================================================ the driver's engine
class _DriverStandIn(Engine):
    """What the driver needs of an engine that only actors run (vllm loads its model when made): the
    fingerprint, the context and token counts, from the model's tokenizer. Actors check the fingerprint."""

    def __init__(self, name: str, config: EngineConfig):
        self.name = name
        self._tokens = HFEngine(config.model or DEFAULT_MODEL, device="cpu", context_tokens=config.context_tokens)
        self.config = config

    @property
    def fingerprint(self) -> str:
        dtype = self.config.dtype
        if dtype == "auto":  # as VLLMEngine: float32 on a CPU, the model's own dtype ("auto") on a GPU
            import torch

            dtype = "auto" if torch.cuda.is_available() else "float32"
        return f"{self.name}|{model_label(self._tokens.model_ref)}|{dtype}"

    @property
    def context_tokens(self) -> int:
        found = self._tokens.context_tokens
        return min(found, self.config.max_model_len) if self.config.max_model_len else found

    def count_tokens(self, texts):
        return self._tokens.count_tokens(texts)

    def count_chat_tokens(self, chats):
        return self._tokens.count_chat_tokens(chats)

    def generate(self, chats, params):
        raise ServiceError(f"the {self.name} engine runs in the Ray actors, not in the driver")


def driver_engine(name: str, config: EngineConfig | None = None) -> Engine:
    """The engine object the driver of a Ray job renders prompts with (fingerprint, context, token counts).

    Every engine is made as usual (hf, openai and langchain load nothing until they generate), except ``vllm``,
    which would load its model in the driver: a tokenizer-only stand-in takes its place.
    """
    config = config or EngineConfig()
    if name == "vllm":
        return _DriverStandIn(name, config)
    return llm_package.get_engine(name, config)


# ================================================================================================ ray itself
def import_ray():
    """``ray`` with ``ray.data``, or a :class:`MissingDependency` with the exact install command."""
    try:
        import ray
        import ray.data  # noqa: F401 -- the extra, not only the core
    except ImportError as error:
        raise MissingDependency(f"--ray needs Ray Data, which is not installed: {RAY_INSTALL}") from error
    return ray


def _quiet_ray_data() -> None:
    """No Ray Data bars or console lines (its log file in the session folder keeps them)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """``os.environ`` with ``values`` set, restored after: only the processes started meanwhile carry them."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _log_dir(ray) -> str | None:
    try:
        return str(Path(ray._private.worker._global_node.get_session_dir_path()) / "logs")
    except Exception:  # noqa: BLE001 -- a remote cluster, or another Ray version: no hint then
        return None


# ================================================================================================ leftovers
def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); "" where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _owner_alive(token: str) -> bool:
    pid, started, _ = (token.split(":") + ["", ""])[:3]
    return pid.isdigit() and bool(started) and _start_time(int(pid)) == started


def cluster_processes(token: str | None = None) -> dict[int, str]:
    """Processes (pid -> token) of local clusters started by agentrec: those whose environment holds
    :data:`OWNER_ENV` (``token``: only that cluster's). Linux only (reads /proc); elsewhere empty."""
    found = {}
    me = os.getpid()
    marker = OWNER_ENV.encode() + b"="
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc/self/environ").exists() else ():
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        start = environ.find(marker)
        if start < 0:
            continue
        value = environ[start + len(marker):].split(b"\0", 1)[0].decode(errors="replace")
        if token is None or value == token:
            found[pid] = value
    return found


def kill_processes(pids, *, grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` whatever is still there.

    ``pids``: a pid -> start time mapping (as :func:`_start_time` gives it), or pids whose start time is read
    now. Each signal goes only to the process that still has its start time: pids are few here (32,768 by
    default) and come round again, and one freed by the SIGTERM may already belong to a new process (another
    cluster starting) when the SIGKILL is due.
    """
    started = dict(pids) if isinstance(pids, dict) else {pid: _start_time(pid) for pid in pids}
    started = {pid: start for pid, start in started.items() if start}

    def signal_all(number):
        for pid, start in started.items():
            if _exists(pid) and _start_time(pid) == start:
                try:
                    os.kill(pid, number)
                except (ProcessLookupError, PermissionError):
                    pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_exists(pid) and _start_time(pid) == start
                                              for pid, start in started.items()):
        time.sleep(0.1)
    signal_all(signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its parent's wait is missing


def sweep_stale() -> int:
    """Kill the processes of local clusters whose driver is gone (and whose watcher was killed too); their count."""
    stale = [pid for pid, token in cluster_processes().items() if not _owner_alive(token)]
    if stale:
        logger.warning("stopping %d processes left by an earlier Ray job whose driver was killed", len(stale))
        kill_processes(stale)
    return len(stale)


def _family(token: str) -> dict[int, str]:
    """The cluster's processes (pid -> start time): those that carry ``token`` and every process descended from
    one. Descent matters: a process can lose the token from /proc/PID/environ (a process title written over
    that memory, as Ray's agents set theirs); it cannot change its parent while that parent lives."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        started[pid] = fields[19]
    found = {}
    stack = list(cluster_processes(token))
    while stack:
        pid = stack.pop()
        if pid in found or pid not in started or pid == os.getpid():
            continue
        found[pid] = started[pid]
        stack.extend(children.get(pid, ()))
    return found


def reap(token: str) -> None:
    """The watcher: wait until the driver closes its end of stdin or is gone, then kill the cluster's processes.

    Both signs are watched: the pipe's end (a normal close, or the kernel closing it for a dead driver) and the
    driver's pid with its start time (should anything have inherited the pipe). While the driver lives, the
    cluster's processes (:func:`_family`) are noted every second, so that one whose parent dies first (and
    whose environment no longer shows the token) is still known. After a driver's death it sweeps for a few
    seconds, so that a process still being started then is caught too.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver must not stop the sweep
    known: dict[int, str] = {}
    noted = 0.0
    while _owner_alive(token):
        if time.monotonic() - noted >= 1.0:  # a /proc walk: a few milliseconds
            known.update(_family(token))
            noted = time.monotonic()
        try:
            ready, _, _ = select.select([sys.stdin], [], [], 0.5)
            if ready and not os.read(sys.stdin.fileno(), 4096):
                break  # the driver closed its end
        except OSError:
            break
    deadline = time.monotonic() + (0.0 if _owner_alive(token) else 5.0)
    while True:
        family = _family(token)
        known.update(family)
        kill_processes(known)  # each only while it keeps its start time: not a new process that reuses its pid
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "reap":
        reap(sys.argv[2])
    else:
        sys.exit("usage: python -m agentrec.llm.raypool reap TOKEN")
