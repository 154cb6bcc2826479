"""The training settings tried for ``agentrec compare``'s defaults (issue #14), on validation only.

Each run trains NISER or SemNISER-F (SemSR-F around NISER, ``minilm`` unless the run names another embedder)
through :func:`agentrec.pipelines.train.train_run`, as compare does (or, for the two SemSR-F options a RunSpec does
not carry, through the same steps in :func:`train_wrapped`), with a patience large enough to see the whole
learning curve, and appends one JSON line (settings, per-epoch loss, seconds and validation Recall@20,
Recall@100, MRR@20) to ``--log``. Test is never computed here. Results and the choice:
``benchmarks/results/compare_training.md``.

    agentrec data prepare ml-100k --out /tmp/h14/ml-100k
    python benchmarks/compare_training.py --data /tmp/h14/ml-100k --runs I,J --log /tmp/h14/log.jsonl

Runs one at a time (one torch thread each); a finished run folder under ``--work`` is not trained again.
``--valid-pairs`` then ranks the validation sessions with each run's selected checkpoint and prints the
paired bootstrap of Recall@20 (and Recall@100, MRR@20) against NISER of the same seed (run I, or V for seed 1),
as compare builds its paired differences (1,000 resamples, seed 0). Test is never ranked:

    python benchmarks/compare_training.py --data /tmp/h14/ml-100k --runs I,J,S,T,U,V,W --valid-pairs
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import NamedTuple


class Run(NamedTuple):
    """One setting: NISER (variant None) or SemNISER-F (variant "fusion") and what it changes."""

    variant: str | None  # None: NISER; "fusion": SemSR-F around NISER
    size: int  # NISER's embedding size
    train: dict  # TrainConfig changes (seed 0 unless given here)
    embedder: str = "minilm"  # the LLM item table of a SemSR variant
    output_size: int | None = None  # FusionConfig.output_size (None: the embedding size)
    also_init: bool = False  # SemSR-I as well: NISER's ID table starts from the LLM vectors (PCA to its size)


SESSION6 = dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=0.0, epochs=7, precision="bf16")
# label: Run(variant, embedding size, TrainConfig changes, ...); every run: one thread, bucket 50
RUNS = {
    "A": Run(None, 64, dict(batch_size=256, lr=1e-3, lr_gamma=1.0, weight_decay=0.0, epochs=10)),
    "B": Run(None, 64, dict(batch_size=256, lr=3e-3, lr_gamma=1.0, weight_decay=0.0, epochs=7)),
    "C": Run(None, 64, dict(batch_size=256, lr=5e-3, lr_gamma=1.0, weight_decay=0.0, epochs=6)),
    "D": Run(None, 64, dict(batch_size=256, lr=3e-3, lr_step=3, lr_gamma=0.3, weight_decay=0.0, epochs=7)),
    "E": Run(None, 64, dict(batch_size=128, lr=2e-3, lr_gamma=1.0, weight_decay=0.0, epochs=6)),
    "F": Run(None, 64, dict(batch_size=512, lr=5e-3, lr_gamma=1.0, weight_decay=0.0, epochs=6)),
    "G": Run(None, 64, dict(batch_size=256, lr=5e-3, lr_gamma=1.0, weight_decay=0.0, epochs=6, precision="bf16")),
    "H": Run("fusion", 64, dict(batch_size=256, lr=5e-3, lr_gamma=1.0, weight_decay=0.0, epochs=8, precision="bf16")),
    "I": Run(None, 64, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=0.0, epochs=7,
                            precision="bf16")),
    "J": Run("fusion", 64, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=0.0, epochs=7,
                                precision="bf16")),
    "K": Run(None, 64, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=1e-5, epochs=6,
                            precision="bf16")),
    "L": Run("fusion", 64, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=1e-5, epochs=6,
                                precision="bf16")),
    "M": Run("fusion", 100, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=0.0, epochs=6,
                                 precision="bf16")),
    "N": Run(None, 100, dict(batch_size=256, lr=5e-3, lr_step=3, lr_gamma=0.2, weight_decay=0.0, epochs=6,
                             precision="bf16")),
    "Q": Run("fusion", 64, dict(batch_size=256, lr=1e-3, lr_gamma=1.0, weight_decay=0.0, epochs=8, precision="bf16")),
    "R": Run(None, 64, dict(batch_size=256, lr=1e-3, lr_gamma=1.0, weight_decay=0.0, epochs=8, precision="bf16")),
    # session 6: SemNISER-F settings around run J (and I), seed 0 unless stated
    "S": Run("fusion", 64, SESSION6, embedder="smollm2"),
    "T": Run("fusion", 64, SESSION6, output_size=128),
    "U": Run("fusion", 64, SESSION6, also_init=True),
    "V": Run(None, 64, dict(SESSION6, seed=1)),
    "W": Run("fusion", 64, dict(SESSION6, seed=1)),
}
SHOWN = ("recall@20", "recall@100", "mrr@20")
logger = logging.getLogger("compare_training")
BASELINE = {0: "I", 1: "V"}  # NISER of the same seed, the reference of --valid-pairs


def find_run(work: Path, label: str) -> Path | None:
    """A finished run folder of ``label`` under ``work``: ``LABEL-KEY`` (this script) or ``LABEL_...`` (the first
    runs, A to R, made by a one-off script with the same settings)."""
    for folder in sorted(work.glob(f"{label}-*")) + sorted(work.glob(f"{label}_*")):
        if (folder / "run.json").exists() and (folder / "weights.safetensors").exists():
            return folder
    return None


def train_wrapped(spec, run: Run, dataset, folder: Path) -> None:
    """SemSR-F with a FusionConfig, optionally after SemSR-I: what ``pipelines.train._train_network`` does for
    ``variant="fusion"``, with the two options its RunSpec does not carry (``output_size``, SemSR-I as well)."""
    from agentrec.models.semantic import FusionConfig, SemanticFusion, semantic_init
    from agentrec.pipelines.train import build_model, load_llm_table, write_learning_curve
    from agentrec.training.trainer import set_seed, train_model

    set_seed(spec.train.seed)  # before the model exists, as train_run
    net = build_model(spec.model, dataset, settings=dict(spec.model_settings))
    table = load_llm_table(dataset, spec.embedder, progress=False, device=spec.train.device)
    initialised = semantic_init(net, table) if run.also_init else None
    net = SemanticFusion(net, table, FusionConfig(output_size=run.output_size))
    described = {**net.fusion_dict(), "embedder": spec.embedder}
    if initialised:
        described["init"] = initialised["projection"]
    logger.info("semantic variant: %s", described)
    info = train_model(net, dataset, spec.train, out=folder, progress=False, semantic=described)
    write_learning_curve(folder, info, dataset_name=dataset.name)


def train(label: str, dataset, work: Path, log: str) -> Path:
    """Train run ``label`` (or reuse its finished folder) and append its JSON line to ``log``."""
    import hashlib

    from agentrec.pipelines.train import RunSpec, train_or_reuse
    from agentrec.training.runs import read_run
    from agentrec.training.trainer import TrainConfig

    run = RUNS[label]
    spec = RunSpec(model="niser", variant=run.variant, embedder=run.embedder,
                   train=TrainConfig(threads=1, patience=100, **run.train),
                   model_settings={"embedding_size": run.size})
    started = time.perf_counter()
    folder, reused = find_run(work, label), True
    if folder is None and run.output_size is None and not run.also_init:
        folder, reused = train_or_reuse(spec, dataset, work, name=label, progress=False)
    elif folder is None:  # the key also covers what the RunSpec does not hold
        extra = json.dumps({"output_size": run.output_size, "also_init": run.also_init}, sort_keys=True)
        key = hashlib.sha256((spec.key(dataset) + extra).encode()).hexdigest()[:12]
        folder, reused = work / f"{label}-{key}", False
        logger.info("training %s (%s) into %s", spec.describe(), extra, folder)
        train_wrapped(spec, run, dataset, folder)
    info = read_run(folder)
    record = {"label": label, "folder": str(folder), "model": "SemNISER-F" if run.variant else "NISER",
              "embedding_size": run.size, "train": run.train, "seed": spec.train.seed,
              "embedder": run.embedder if run.variant else None, "output_size": run.output_size,
              "also_init": run.also_init, "best_epoch": info.best_epoch,
              "wall_s": None if reused else time.perf_counter() - started,
              "history": [{"epoch": h["epoch"], "loss": h["loss"], "train_s": h["train_seconds"],
                           "cpu_s": h["train_cpu_seconds"], **{m: h["valid"][m] for m in SHOWN}}
                          for h in info.history]}
    with open(log, "a") as out:
        out.write(json.dumps(record) + "\n")
    print(label, record["model"], "valid R@20 per epoch:",
          " ".join(f"{100 * h['recall@20']:.1f}" for h in record["history"]), flush=True)
    return folder


def valid_pairs(labels: list[str], dataset, work: Path) -> None:
    """Validation ranks of each run's selected checkpoint, and the paired bootstrap against NISER of its seed."""
    import numpy as np
    import torch

    from agentrec.pipelines.compare import paired_difference
    from agentrec.training.runs import evaluate_model, load_model

    def seed_of(label):
        return RUNS[label].train.get("seed", 0)

    labels = list(dict.fromkeys([BASELINE[seed_of(label)] for label in labels] + labels))
    ranks, best = {}, {}
    for label in labels:
        folder = find_run(work, label)
        if folder is None:
            raise SystemExit(f"run {label} is not trained under {work}")
        info, model = load_model(folder, dataset, device="cpu")
        with torch.no_grad():
            result = evaluate_model(model, dataset, "valid", threads=1)  # validation only, never "test"
        ranks[label], best[label] = np.asarray(result.ranks, dtype=np.float64), (info.best_epoch, len(info.history))
        stored = info.valid["recall@20"]
        if abs(result.metrics["recall@20"] - stored) > 1e-9:
            print(f"warning: {label} re-ranked valid R@20 {result.metrics['recall@20']:.4f} != stored {stored:.4f}")
    print("run | best epoch | valid R@20 | R@100 | MRR@20 | vs | R@20 diff [95%] | R@100 diff [95%] | MRR@20 diff [95%]")
    for label in labels:
        r = ranks[label]
        point = [100 * (r <= 20).mean(), 100 * (r <= 100).mean(), 100 * np.where(r <= 20, 1 / r, 0).mean()]
        ref = BASELINE[seed_of(label)]
        cells = "-"
        if ref != label:
            diff = paired_difference(r, ranks[ref], metrics=SHOWN, resamples=1000, seed=0)
            cells = f"{ref} | " + " | ".join(
                f"{100 * diff[m]['point']:+.2f} [{100 * diff[m]['lo']:+.2f}, {100 * diff[m]['hi']:+.2f}]"
                for m in SHOWN)
        print(f"{label} | {best[label][0]} of {best[label][1]} | " + " | ".join(f"{v:.2f}" for v in point)
              + f" | {cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared MovieLens-100K folder")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated labels of RUNS")
    parser.add_argument("--work", default="/tmp/h14/runs", help="run folders")
    parser.add_argument("--log", default="/tmp/h14/log.jsonl", help="JSON lines, one per run")
    parser.add_argument("--valid-pairs", action="store_true",
                        help="train nothing: rank validation with each run's selected checkpoint and print the "
                             "paired bootstrap against NISER of the same seed (I or V)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from agentrec.data.dataset import PreparedDataset

    torch.set_num_threads(1)  # the LLM item table and validation ranking too, not only training

    dataset = PreparedDataset.load(args.data)
    labels = args.runs.split(",")
    if args.valid_pairs:
        valid_pairs(labels, dataset, Path(args.work))
        return
    for label in labels:
        train(label, dataset, Path(args.work), args.log)


if __name__ == "__main__":
    main()
