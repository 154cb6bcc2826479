"""The training settings tried for ``agentrec compare``'s defaults (issue #14), on validation only.

Each run trains NISER or SemNISER-F (SemSR-F around NISER, ``minilm``) through
:func:`agentrec.pipelines.train.train_run`, as compare does, with a patience large enough to see the whole
learning curve, and appends one JSON line (settings, per-epoch loss, seconds and validation Recall@20,
Recall@100, MRR@20) to ``--log``. Test is never computed here. Results and the choice:
``benchmarks/results/compare_training.md``.

    agentrec data prepare ml-100k --out /tmp/h14/ml-100k
    python benchmarks/compare_training.py --data /tmp/h14/ml-100k --runs I,J --log /tmp/h14/log.jsonl

Runs one at a time (one torch thread each); a finished run folder under ``--work`` is not trained again.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

# label: (variant, embedding size, TrainConfig changes); every run: seed 0, one thread, bucket 50
RUNS = {
    "A": (None, 64, dict(batch_size=256, lr=1e-3, lr_gamma=1.0, weight_decay=0.0, epochs=10)),
    "B": (None, 64, dict(batch_size=256, lr=3e-3, lr_gamma=1.0, weight_decay=0.0, epochs=7)),
    "C": (None, 64, dict(batch_size=256, lr=5e-3, lr_gamma=1.0, weight_decay=0.0, epochs=6)),
    "D": (None, 64, dict(batch_size=256, lr=3e-3, lr_step=3, lr_gamma=0.3, weight_decay=0.0, epochs=7)),
    "E": (None, 64, dict(batch_size=128, lr=2e-3, lr_gamma=1.0, weight_decay=0.0, epochs=6)),
    "F": (None, 64, dict(batch_size=512, lr=5e-3, lr_gamma=1.0, weight_decay=0.0, epochs=6)),
    "G": (None, 64, dict(batch_size=256, lr=5e-3, lr_gamma=1.0, weight_decay=0.0, epochs=6, precision="bf16")),
    "H": ("fusion", 64, dict(batch_size=256, lr=5e-3, lr_gamma=1.0, weight_decay=0.0, epochs=8, precision="bf16")),
    "I": (None, 64, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=0.0, epochs=7,
                         precision="bf16")),
    "J": ("fusion", 64, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=0.0, epochs=7,
                             precision="bf16")),
    "K": (None, 64, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=1e-5, epochs=6,
                         precision="bf16")),
    "L": ("fusion", 64, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=1e-5, epochs=6,
                             precision="bf16")),
    "M": ("fusion", 100, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=0.0, epochs=6,
                              precision="bf16")),
    "N": (None, 100, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=0.0, epochs=6,
                          precision="bf16")),
    "Q": ("fusion", 64, dict(batch_size=256, lr=1e-3, lr_gamma=1.0, weight_decay=0.0, epochs=8, precision="bf16")),
    "R": (None, 64, dict(batch_size=256, lr=1e-3, lr_gamma=1.0, weight_decay=0.0, epochs=8, precision="bf16")),
}
SHOWN = ("recall@20", "recall@100", "mrr@20")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared MovieLens-100K folder")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated labels of RUNS")
    parser.add_argument("--work", default="/tmp/h14/runs", help="run folders")
    parser.add_argument("--log", default="/tmp/h14/log.jsonl", help="JSON lines, one per run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from agentrec.data.dataset import PreparedDataset
    from agentrec.pipelines.train import RunSpec, train_or_reuse
    from agentrec.training.runs import read_run
    from agentrec.training.trainer import TrainConfig

    dataset = PreparedDataset.load(args.data)
    for label in args.runs.split(","):
        variant, size, changes = RUNS[label]
        train = TrainConfig(threads=1, patience=100, **changes)
        spec = RunSpec(model="niser", variant=variant, embedder="minilm", train=train,
                       model_settings={"embedding_size": size})
        started = time.perf_counter()
        folder, reused = train_or_reuse(spec, dataset, args.work, name=label, progress=False)
        info = read_run(folder)
        record = {"label": label, "model": "SemNISER-F" if variant else "NISER", "embedding_size": size,
                  "train": changes, "wall_s": None if reused else time.perf_counter() - started,
                  "history": [{"epoch": h["epoch"], "loss": h["loss"], "train_s": h["train_seconds"],
                               "cpu_s": h["train_cpu_seconds"], **{m: h["valid"][m] for m in SHOWN}}
                              for h in info.history]}
        with open(args.log, "a") as log:
            log.write(json.dumps(record) + "\n")
        print(label, record["model"], "valid R@20 per epoch:",
              " ".join(f"{100 * h['recall@20']:.1f}" for h in record["history"]))


if __name__ == "__main__":
    main()
