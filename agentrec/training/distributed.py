"""Data-parallel training over several processes: torch ``DistributedDataParallel`` (DDP), started by torch's launcher.

``agentrec train --nproc N`` checks every option and the dataset in its own process, then runs torch's launcher,
``torch.distributed.run`` (torchrun's code, called in that same process: :func:`launch`), which starts N ranks, each
``python -m agentrec train`` with the same arguments. ``torchrun --nproc-per-node N -m agentrec train ...`` starts
the same ranks directly. A rank knows it is one from torchrun's environment (:func:`launched_world`), and the train
pipeline joins the process group (:func:`process_group`) around the training of one run.

The decisions, in one place:

* **Backend and devices.** gloo on the CPU, NCCL on CUDA with rank ``r`` of a machine on ``cuda:LOCAL_RANK``
  (``--device cuda`` or ``auto``; ``--device cuda:N`` names one GPU and is refused with more than one rank).
  ``--standalone``: the rendezvous takes a free port on localhost, so two jobs on one machine never collide.
* **Global batches.** ``--batch-size`` is the global batch, split across ranks; the learning rate is unchanged. Every
  rank draws the same seeded batch plan (``batch_indices``, length bucketing kept) and takes an interleaved slice of
  each batch (rank ``r``: samples ``r, r + N, ...``; slices of a length-sorted batch get similar lengths, so ranks pad
  alike). Each rank's mean loss is weighted by ``N * len(slice) / len(batch)``, so DDP's gradient average is the
  gradient of the global batch's mean loss: a step of N ranks is the step one process takes on the same batch (up to
  float summation order; ``tests/test_ddp.py`` checks the weights). A batch of fewer than N samples (only an epoch's
  last, short batch can be one) is skipped by every rank, so all ranks take the same number of steps.
* **Agreement.** The loss of every step is summed over the ranks (one ``all_reduce`` of one number, which also gives
  the epoch loss of the whole batch), so a non-finite loss on any rank stops every rank at the same step with the
  same error. Validation is sharded the same interleaved way and the ranks of the targets are gathered, so every
  rank computes exactly the metrics one process would, and takes the same early-stopping decision; a time budget
  is decided by the slowest clock (any rank past it stops all).
* **Randomness.** Initial weights are the same on every rank (the same seed, and DDP broadcasts rank 0's); dropout
  draws from ``seed + rank``, so ranks do not repeat each other's masks.
* **Output.** Rank 0 alone writes the run folder, recording ``extra.world_size`` and ``extra.backend`` (a one-process
  run records world size 1), and draws its learning curve; the others wait at a barrier, so when any rank returns
  the run is on disk. Progress bars, logging and the summary only on rank 0. The run is an ordinary run folder:
  ``agentrec evaluate`` scores it in one process.
* **Threads.** Each rank uses ``--threads`` torch threads (default 1): N ranks take ``N * threads`` cores, so keep it
  at or below the machine's cores. The launcher sets ``OMP_NUM_THREADS`` to ``--threads`` for the ranks.
* **Failures.** A rank that fails makes torchrun stop the others; the job exits with the failed rank's code. A user
  error every rank meets alike (training diverged; a bad option under a direct ``torchrun``) prints one red line,
  from rank 0; one that only some rank meets (:func:`only_this_rank`) is printed by that rank, prefixed with it.
  Every rank agrees on a divergence before raising it, so none waits forever for another.
* **Nothing left behind.** Every rank asks the kernel to kill it when its parent (the launcher) dies
  (``PR_SET_PDEATHSIG``, Linux), so a SIGKILL of ``agentrec train --nproc N`` or of ``torchrun`` leaves no rank and
  no open port; a SIGTERM or Ctrl-C of the launcher stops the ranks through torchrun's own handlers.

In-batch or sampled negatives drawn from a batch are drawn from each rank's slice of it (``batch_size / N`` rows),
not from the whole global batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import inspect
import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np

from agentrec.core.devices import resolve_device
from agentrec.core.errors import UsageError
from agentrec.core.metrics import DEFAULT_KS, RankingResult, metrics_from_ranks
from agentrec.training.runs import evaluate_model

logger = logging.getLogger(__name__)

# torchrun's variables that make a process one rank of a job (MASTER_* are where its process group meets)
WORLD_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCHER_PID = "AGENTREC_LAUNCHER_PID"  # set by launch() for its ranks: the process a rank must not outlive
THIS_RANK_ONLY = "agentrec_this_rank_only"  # attribute of a user error only some ranks meet (only_this_rank)


@dataclass(frozen=True)
class World:
    """Where this process stands in a torchrun job.

    Attributes:
        rank: this process's rank, 0 to ``size - 1``; rank 0 writes the run.
        size: the number of ranks (the world size).
        local_rank: the rank on this machine (which GPU it uses).
        backend: ``"gloo"`` or ``"nccl"``; None until :func:`process_group` joined the group.
        device: the ``torch.device`` this rank trains on; None until :func:`process_group` joined the group.
    """

    rank: int
    size: int
    local_rank: int = 0
    backend: str | None = None
    device: object = None

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes and reports."""
        return self.rank == 0


def launched_world() -> World | None:
    """This process's place in a torchrun job, from the launcher's environment; None outside one."""
    if not all(name in os.environ for name in WORLD_VARIABLES):
        return None
    try:
        rank, size, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them), got "
                         + ", ".join(f"{n}={os.environ[n]!r}" for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))) from None
    if size < 1 or not 0 <= rank < size:
        raise UsageError(f"RANK {rank} and WORLD_SIZE {size} do not fit together (torchrun sets them)")
    return World(rank=rank, size=size, local_rank=local)


def rank_device(world: World, name: str):
    """The ``torch.device`` rank ``world`` trains on for ``--device name``: the CPU, or ``cuda:LOCAL_RANK``."""
    import torch

    device = resolve_device(name)
    if device.type != "cuda":
        return device
    if device.index is not None:
        if world.size > 1:
            raise only_this_rank(UsageError(f"--device {name} names one GPU, but {world.size} ranks train: give "
                                            "--device cuda (rank r of a machine uses cuda:LOCAL_RANK)"))
        return device
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise only_this_rank(UsageError(f"rank {world.rank} needs cuda:{world.local_rank}, but this machine has "
                                        f"{count} CUDA device(s): start at most {count} ranks per machine"))
    return torch.device("cuda", world.local_rank)


@contextlib.contextmanager
def process_group(world: World | None, device_name: str):
    """Join the job's process group for the duration of the block; yields the :class:`World` with its backend
    and device (or None, doing nothing, outside a torchrun job).

    gloo on the CPU, NCCL on CUDA. The group is torn down when the block ends, also on an error (a gloo group
    that is never destroyed aborts the process at exit). A group the caller already initialised is used and
    left as it is.
    """
    if world is None:
        yield None
        return
    import torch
    import torch.distributed as dist

    die_with_launcher()
    device = rank_device(world, device_name)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # device_id binds NCCL to the rank's GPU at once (torch >= 2.3; a GPU machine may have an older torch)
        bind = device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters
        dist.init_process_group(backend, **({"device_id": device} if bind else {}))
    else:
        backend = dist.get_backend()
    try:
        yield dataclasses.replace(world, backend=backend, device=device)
    except BaseException as error:
        # the finished frames of the traceback hold the DDP wrapper, which holds the group: free them first, or the
        # group outlives destroy_process_group and aborts the process at exit ("terminate called without an
        # active exception")
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        gc.collect()  # the DDP wrapper sits in reference cycles: collect it while the group still exists
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def die_with_launcher() -> None:
    """Have the kernel SIGKILL this rank when its parent (torchrun's agent) dies: a launcher killed with SIGKILL
    then leaves no rank behind, and so no open port (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing happens).

    torchrun starts ranks from its main thread, which lives as long as the launcher. A launcher that died before
    this call is found by the parent's pid (the one :func:`launch` records, or init's).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        logger.debug("PR_SET_PDEATHSIG is not available: this rank does not die with its launcher")
        return
    expected = os.environ.get(LAUNCHER_PID, "")
    parent = os.getppid()
    if parent == 1 or (expected.isdigit() and int(expected) != parent):
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel would have done, had the launcher died a moment later


def only_this_rank(error: BaseException) -> BaseException:
    """Mark ``error`` as one that this rank meets and others may not (a GPU it lacks), so that the CLI prints it
    on any rank, prefixed with the rank; returns it. Unmarked user errors are taken to be every rank's alike (the
    options, the dataset and training are the same on every rank) and printed by rank 0 alone."""
    setattr(error, THIS_RANK_ONLY, True)
    return error


def rank_error_line(error: BaseException, line: str) -> str | None:
    """How this process prints the user error ``error`` whose line is ``line``: as is outside a job and on rank 0;
    on another rank, prefixed with the rank when it is marked :func:`only_this_rank`, else not at all."""
    world = launched_world()
    if world is None or world.main:
        return line
    if not getattr(error, THIS_RANK_ONLY, False):
        return None
    return f"rank {world.rank} of {world.size}: {line}"


def shard(n: int, world: World | None) -> np.ndarray:
    """This rank's interleaved share of ``n`` items: ``rank, rank + size, ...`` (all of them outside a job)."""
    if world is None:
        return np.arange(n)
    return np.arange(world.rank, n, world.size)


def _tensor(world: World, values, dtype):
    import torch

    return torch.as_tensor(np.asarray(values), dtype=dtype, device=world.device)


def all_sum(values, world: World | None) -> np.ndarray:
    """The element-wise sum of ``values`` (a list of numbers) over every rank, as float64; ``values`` outside a job."""
    if world is None:
        return np.asarray(values, dtype=np.float64)
    import torch
    import torch.distributed as dist

    tensor = _tensor(world, values, torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def any_rank(flag: bool, world: World | None) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if world is None:
        return bool(flag)
    import torch
    import torch.distributed as dist

    tensor = _tensor(world, [int(bool(flag))], torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_shards(local: np.ndarray, n: int, world: World | None) -> np.ndarray:
    """The ``(n,)`` float64 array whose :func:`shard` on each rank is that rank's ``local``: every rank gets it."""
    if world is None:
        return np.asarray(local, dtype=np.float64)
    import torch
    import torch.distributed as dist

    width = -(-n // world.size)  # the longest shard
    padded = np.full(width, np.nan)
    padded[:len(local)] = local
    parts = [_tensor(world, np.zeros(width), torch.float64) for _ in range(world.size)]
    dist.all_gather(parts, _tensor(world, padded, torch.float64))
    full = np.empty(n, dtype=np.float64)
    for rank, part in enumerate(parts):
        size = len(range(rank, n, world.size))
        full[rank::world.size] = part.cpu().numpy()[:size]
    return full


def barrier(world: World | None) -> None:
    """Wait until every rank gets here (a no-op outside a job); an all_reduce, so gloo and NCCL alike."""
    if world is not None:
        all_sum([0.0], world)


@contextlib.contextmanager
def rank_zero_first(world: World | None):
    """Run the block on rank 0 first, then on the others (a cache rank 0 fills, the others read)."""
    if world is not None and not world.main:
        barrier(world)
    yield
    if world is not None and world.main:
        barrier(world)


def check_batches(batch_size: int, n_train: int, ranks: int) -> None:
    """Refuse global batches that cannot give every one of ``ranks`` ranks a sample (they would all be skipped)."""
    if ranks > 1 and batch_size < ranks:
        raise UsageError(f"--batch-size {batch_size} is the global batch, split across {ranks} processes: give at "
                         f"least {ranks}")
    if ranks > 1 and n_train < ranks:
        raise UsageError(f"{n_train} training sample(s) cannot be split across {ranks} processes; train in one")


def check_launch(nproc: int, device_name: str) -> None:
    """Refuse, before any rank starts, ``nproc`` ranks that cannot all get a device."""
    import torch

    device = resolve_device(device_name)
    if device.type != "cuda" or nproc == 1:
        return
    if device.index is not None:
        raise UsageError(f"--device {device_name} names one GPU, but --nproc {nproc} starts {nproc} ranks: give "
                         "--device cuda (rank r uses cuda:r)")
    count = torch.cuda.device_count()
    if nproc > count:
        raise UsageError(f"--nproc {nproc}: this machine has {count} CUDA device(s), one per rank")


def launch(nproc: int, args: list[str], *, threads: int = 1) -> int:
    """Run ``python -m agentrec ARGS`` as ``nproc`` ranks through ``torch.distributed.run``, in this process.

    ``--standalone`` (the rendezvous takes a free port on localhost). The ranks inherit this process's standard
    output and error, so each prints its own errors; torchrun's own failure report is not shown.

    Returns:
        The job's exit code: 0 when every rank finished, else the code of the first rank that failed (a rank
        killed by a signal: 128 + the signal's number, as a shell reports it; torchrun stopping on a signal it
        received: the same).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    config = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "agentrec"])
    # set after parsing: torchrun's parser would take --nproc or --signals for abbreviations of its own options
    config.training_script_args = list(args)
    quiet = logging.getLogger("torch.distributed.elastic")
    saved_level = quiet.level
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)  # torchrun's handlers replace these
    saved_handlers = {sig: signal.getsignal(sig) for sig in handled}
    environment = {LAUNCHER_PID: str(os.getpid()), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    saved_environment = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    quiet.setLevel(logging.CRITICAL)  # "failed (exitcode: 1) local_rank: 1": the rank has printed why
    try:
        run(config)
        return 0
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        if failure.exitcode < 0:  # a signal: nothing printed why
            name = _signal_name(-failure.exitcode)
            logger.error("rank %d of %d was killed by %s", rank, nproc, name)
            return 128 - failure.exitcode
        return failure.exitcode or 1
    except SignalException as error:  # torchrun got SIGTERM/SIGINT: it has stopped the ranks
        logger.error("stopped by %s", _signal_name(int(error.sigval)))
        return 128 + int(error.sigval)
    finally:
        quiet.setLevel(saved_level)
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if _in_main_thread():
            for sig, handler in saved_handlers.items():
                signal.signal(sig, handler)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def data_parallel(model, loss_fn, world: World):
    """``loss_fn`` (a batch -> the model's mean loss on it) behind ``DistributedDataParallel`` over ``model``.

    DDP synchronises the gradients only of a loss computed through its own ``forward``, so the loss becomes the
    forward of a small module that holds the model. Buffers are not broadcast at every step: no model here
    changes one in training (SemSR-F's frozen LLM table is one, and broadcasting it would cost a table per step).
    """
    import torch
    from torch.nn.parallel import DistributedDataParallel

    class StepLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model  # registered, so DDP sees (and synchronises) its parameters

        def forward(self, batch):
            return loss_fn(batch)

    # torch 2.13 renamed the option (forward_sync_buffers; buffers are still synchronised once, at the start)
    options = inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in options else {"broadcast_buffers": False}
    return DistributedDataParallel(StepLoss(), **no_sync)


def evaluate_sharded(model, dataset, split: str, world: World | None, **options):
    """:func:`~agentrec.training.runs.evaluate_model` of ``split`` with each rank ranking its :func:`shard`; the
    ranks are gathered, so every rank returns the metrics one process would (``options`` as evaluate_model's)."""
    if world is None:
        return evaluate_model(model, dataset, split, **options)
    started = time.perf_counter()
    samples = dataset.split(split)
    part = dataclasses.replace(dataset, **{split: samples.subset(shard(len(samples), world))})
    result = evaluate_model(model, part, split, **options)
    ranks = gather_shards(result.ranks, len(samples), world)
    nonfinite = int(all_sum([result.extra.get("nonfinite_targets", 0)], world)[0])
    return RankingResult(ranks=ranks, metrics=metrics_from_ranks(ranks, options.get("ks", DEFAULT_KS)),
                         exclude_history=result.exclude_history, seconds=time.perf_counter() - started,
                         protocol=result.protocol, extra={**result.extra, "nonfinite_targets": nonfinite})
