"""Full-catalogue evaluation at scale: 100,000 test sessions against a 500,000-item catalogue.

Generates the synthetic dataset (given-session protocol, the most recent ``--test-sessions`` as test),
builds NISER (optionally trained briefly on a subsample; evaluation costs the same either way), then ranks
every test target against the whole catalogue, chunk by chunk, and reports time and peak memory.
The peer is the memory the naive path would need: the full (sessions x items) float32 score matrix.

    python benchmarks/scale_eval.py --items 500000 --sessions 1000000 --test-sessions 100000
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=500_000)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--test-sessions", type=int, default=100_000)
    parser.add_argument("--train-samples", type=int, default=0,
                        help="NISER trains one epoch on this many first; 0 evaluates the initialised model "
                             "(evaluation costs the same either way; training on 500k items is slow on 2 cores)")
    parser.add_argument("--memory-mb", type=float, default=256.0, help="budget for one chunk of scores")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="markdown file for the results")
    args = parser.parse_args()

    import torch

    from agentrec.core.metrics import chunk_rows
    from agentrec.data.api import prepare_dataset
    from agentrec.data.dataset import PreparedDataset
    from agentrec.models.niser import NISER
    from agentrec.models.popularity import Popularity
    from agentrec.training.runs import evaluate_model
    from agentrec.training.trainer import TrainConfig, train_model

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        prepare_dataset("synthetic", out=tmp, protocol="m2",
                        protocol_options={"test_sessions": args.test_sessions, "valid_fraction": 0.01},
                        loader_options={"items": args.items, "sessions": args.sessions, "seed": 0})
        ds = PreparedDataset.load(tmp)
        rows.append(("prepare + load dataset", time.perf_counter() - started, peak_rss_mb()))
        n_test, n_items = len(ds.test), ds.n_items

        started = time.perf_counter()
        pop = Popularity(n_items).fit(ds.train)
        pop_result = evaluate_model(pop, ds, "test", memory_budget_mb=args.memory_mb)
        rows.append(("popularity: evaluate test", time.perf_counter() - started, peak_rss_mb()))

        started = time.perf_counter()
        model = NISER(n_items).eval()
        if args.train_samples:
            train_model(model, ds, TrainConfig(epochs=1, batch_size=100, max_train_samples=args.train_samples,
                                               threads=args.threads, eval_memory_mb=args.memory_mb), progress=False)
            rows.append((f"NISER: train 1 epoch on {args.train_samples:,} samples + validate",
                         time.perf_counter() - started, peak_rss_mb()))

        started = time.perf_counter()
        result = evaluate_model(model, ds, "test", memory_budget_mb=args.memory_mb)
        seconds = time.perf_counter() - started
        rows.append(("NISER: evaluate test", seconds, peak_rss_mb()))

    full_matrix_gb = n_test * (n_items + 1) * 4 / 2**30
    lines = [
        f"# Full-catalogue evaluation at scale ({time.strftime('%Y-%m-%d')})",
        "",
        f"Synthetic data, {args.items:,} generated items ({n_items:,} in the catalogue after preparation), "
        f"{args.sessions:,} sessions; {n_test:,} test sessions, each ranked against all {n_items:,} items "
        f"(protocol: full catalogue, ties count against the model, history allowed).",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s); "
        f"score chunk budget {args.memory_mb:.0f} MB = {chunk_rows(n_items, args.memory_mb)} sessions per chunk.",
        "",
        "| step | seconds | peak RSS so far (MB) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {sec:.1f} | {rss:,.0f} |" for name, sec, rss in rows]
    lines += [
        "",
        f"NISER test evaluation: {n_test / seconds:,.0f} sessions/s; Recall@20 {result.metrics['recall@20']:.4f}, "
        f"popularity Recall@20 {pop_result.metrics['recall@20']:.4f}.",
        f"The full score matrix would need {full_matrix_gb:,.1f} GB; the machine has 24 GB.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
