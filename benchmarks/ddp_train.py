"""Data-parallel training (``agentrec train --nproc N``, torch DDP on gloo) against one process, on MovieLens-100K.

Each setup trains the same model with the same settings (compare's training defaults: batch 256, Adam lr 0.005
decayed by 0.2 every 3 epochs, no weight decay, 64-wide vectors, bf16 steps where the CPU has them) for a fixed
number of epochs (patience = epochs, so every setup runs them all), through the command line a user types, then
evaluates the selected epoch on test once with ``agentrec evaluate``. The setups, on a machine of C cores:

* 1 process x 1 thread: the default;
* 1 process x C threads: what one process does with the whole machine;
* N processes x 1 thread (``--nproc N``, N = C): the same cores, data-parallel. ``--batch-size`` is the global batch,
  so every setup takes the same steps on the same batches; only dropout masks and float summation order differ.

It prints and writes a Markdown table: test Recall@20 and MRR@20, the median training samples per second over the
epochs (the training loop alone, every rank together), samples per CPU second (CPU time of every rank), and the
wall time of the whole command (start-up of the ranks included). On a shared machine throughput moves with the
load, so the file records the load average before and after.

    agentrec data prepare ml-100k --out data/ml-100k
    python benchmarks/ddp_train.py --data data/ml-100k --models narm --epochs 4 \\
        --out benchmarks/results/ddp_ml-100k.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

# compare's training defaults (agentrec.pipelines.compare.CompareConfig)
TRAIN = ["--batch-size", "256", "--lr", "0.005", "--lr-step", "3", "--lr-gamma", "0.2", "--weight-decay", "0",
         "--embedding-size", "64", "--precision", "auto", "--seed", "0", "--device", "cpu"]


def agentrec_command() -> list[str]:
    script = Path(sys.executable).with_name("agentrec")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agentrec"]


def run(command: list[str]) -> float:
    """Run ``command`` to the end (stopping the script if it fails); its wall time in seconds."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/ml-100k", help="prepared MovieLens-100K (prepared there if missing)")
    parser.add_argument("--models", default="narm", help="comma-separated session models")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--nproc", type=int, default=cores, help="processes of the data-parallel setup")
    parser.add_argument("--work", default="/tmp/agentrec-ddp-bench", help="run folders (replaced)")
    parser.add_argument("--out", default="benchmarks/results/ddp_ml-100k.md")
    args = parser.parse_args()
    agentrec = agentrec_command()
    if not (Path(args.data) / "stats.json").exists():
        run([*agentrec, "data", "prepare", "ml-100k", "--out", args.data])
    work = Path(args.work)
    setups = [(1, 1), (1, args.nproc), (args.nproc, 1)]  # (processes, threads per process)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    for model in args.models.split(","):
        for nproc, threads in setups:
            folder = work / f"{model}-p{nproc}-t{threads}"
            shutil.rmtree(folder, ignore_errors=True)
            command = [*agentrec, "train", "--model", model, "--data", args.data, "--out", str(folder),
                       "--epochs", str(args.epochs), "--patience", str(args.epochs), "--threads", str(threads),
                       "--quiet", *TRAIN] + (["--nproc", str(nproc)] if nproc > 1 else [])
            wall = run(command)
            run([*agentrec, "evaluate", str(folder), "--device", "cpu"])
            record = json.loads((folder / "run.json").read_text())
            extra = record["extra"]
            row = {"model": model, "processes": extra.get("world_size", 1), "threads": threads,
                   "recall@20": record["test"]["recall@20"], "mrr@20": record["test"]["mrr@20"],
                   "valid recall@20": record["valid"]["recall@20"], "best epoch": record["best_epoch"],
                   "samples/s": extra["median_samples_per_second"],
                   "samples/cpu-s": extra["median_samples_per_cpu_second"],
                   "train+valid s": extra["train_wall_s"], "command s": wall, "precision": extra["precision"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    load_after = os.getloadavg()
    import torch

    lines = [
        "# Data-parallel training (DDP) on MovieLens-100K",
        "",
        f"`python benchmarks/ddp_train.py --data {args.data} --models {args.models} --epochs {args.epochs}"
        f" --nproc {args.nproc}`",
        "",
        f"Machine: {cores} cores ({cpu_name()}), no GPU; torch {torch.__version__}; gloo. "
        f"Load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"{(time.perf_counter() - started) / 60:.1f} minutes in all.",
        "",
        f"Leave-one-out MovieLens-100K (97,171 training samples, 943 test sessions). Each row trains {args.epochs} "
        "epochs with compare's training defaults (batch 256 global, lr 0.005 decayed by 0.2 every 3 epochs, "
        "weight decay 0, 64-wide vectors, bf16 steps where the CPU has them), keeps the epoch best on "
        "validation Recall@100 and evaluates it once on test (full catalogue, ties against the model). "
        "samples/s: median over epochs of the training loop's samples per wall second (all ranks together); "
        "samples/cpu-s: the same per CPU second of every rank; command s: the whole `agentrec train` "
        "command, start-up of the ranks and validation included.",
        "",
        "| model | processes x threads | test Recall@20 | test MRR@20 | valid Recall@20 | best epoch | samples/s "
        "| samples/cpu-s | train+valid s | command s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['model']} | {row['processes']} x {row['threads']} | {100 * row['recall@20']:.2f} | "
                     f"{100 * row['mrr@20']:.2f} | {100 * row['valid recall@20']:.2f} | {row['best epoch']} | "
                     f"{row['samples/s']:,.0f} | {row['samples/cpu-s']:,.0f} | {row['train+valid s']:.0f} | "
                     f"{row['command s']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
