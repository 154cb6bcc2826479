"""SemSR's semantic variants against the plain models, on the same split, validation-selected.

For each dataset and each model (NISER, MSGAT): the plain model, SemSR-I (LLM-initialised item
table), SemSR-F (fusion with a frozen LLM table), and I+ / F+ (their top-100 re-ranked by the
trained plain model). Every model picks its epoch on validation Recall@100; test is evaluated once
per method. A cold-start slice keeps test samples whose target was a training target fewer than
``--cold-below`` times.

    python benchmarks/semantic_variants.py --datasets ml-100k,ml-latest-small --models niser,msgat
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def prepared(name: str, root: Path):
    from agentrec.data.api import prepare_dataset
    from agentrec.data.dataset import PreparedDataset

    folder = root / name
    if not (folder / "stats.json").exists():
        prepare_dataset(name, out=folder, protocol="leave-one-out")
    return PreparedDataset.load(folder)


def slice_metrics(ranks: np.ndarray, mask: np.ndarray) -> dict:
    from agentrec.metrics import metrics_from_ranks

    return metrics_from_ranks(ranks[mask], ks=(20, 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small")
    parser.add_argument("--models", default="niser,msgat")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rerank-k", type=int, default=100)
    parser.add_argument("--cold-below", type=int, default=10, help="cold slice: target seen fewer times in training")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", type=Path, default=Path(".cache/bench-data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/semantic_variants.md"))
    args = parser.parse_args()

    import torch

    from agentrec.metrics import metrics_from_ranks
    from agentrec.models import model_class
    from agentrec.models.semantic import Reranked, SemanticFusion, load_llm_table, semantic_init
    from agentrec.runs import evaluate_model
    from agentrec.training import TrainConfig, set_seed, train_model

    torch.set_num_threads(args.threads)
    config = TrainConfig(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
                         threads=args.threads, max_train_samples=args.max_train_samples)
    sections, raw = [], {}
    for dataset_name in args.datasets.split(","):
        ds = prepared(dataset_name, args.data_root)
        table = load_llm_table(ds, args.embedder, progress=False)
        counts = np.bincount(ds.train.target, minlength=ds.n_items + 1)
        cold = counts[ds.test.target] < args.cold_below
        rows = []
        for model_name in args.models.split(","):
            cls = model_class(model_name)
            trained = {}
            for variant in ("plain", "I", "F"):
                set_seed(config.seed)
                model = cls(ds.n_items)
                if variant == "I":
                    semantic_init(model, table)
                elif variant == "F":
                    model = SemanticFusion(model, table)
                started = time.perf_counter()
                info = train_model(model, ds, config, progress=False)
                trained[variant] = (model, info, time.perf_counter() - started)
            label = {"niser": "NISER", "msgat": "MSGAT"}.get(model_name, model_name)
            methods = [
                (label, trained["plain"][0], trained["plain"]),
                (f"Sem{label}-I", trained["I"][0], trained["I"]),
                (f"Sem{label}-I+", Reranked(trained["I"][0], trained["plain"][0], args.rerank_k), None),
                (f"Sem{label}-F", trained["F"][0], trained["F"]),
                (f"Sem{label}-F+", Reranked(trained["F"][0], trained["plain"][0], args.rerank_k), None),
            ]
            for method, scorer, record in methods:
                result = evaluate_model(scorer, ds, "test", ks=(20, 100))
                cold_metrics = slice_metrics(result.ranks, cold)
                rows.append({
                    "method": method,
                    **{k: result.metrics[k] for k in ("recall@20", "mrr@20", "recall@100", "mrr@100")},
                    "cold_recall@20": cold_metrics["recall@20"], "cold_recall@100": cold_metrics["recall@100"],
                    "best_epoch": record[1].best_epoch if record else "-",
                    "train_s": record[2] if record else 0.0,
                })
        raw[dataset_name] = {"rows": rows, "test_samples": len(ds.test), "cold_samples": int(cold.sum()),
                             "items": ds.n_items, "protocol": ds.stats["protocol"]}
        lines = [
            f"## {dataset_name} ({ds.stats['protocol']['name']}, {len(ds.test):,} test samples, {ds.n_items:,} items; "
            f"cold slice: {int(cold.sum())} test targets seen < {args.cold_below} times in training)",
            "",
            "| method | R@20 | MRR@20 | R@100 | MRR@100 | cold R@20 | cold R@100 | best epoch | train s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['method']} | {100 * r['recall@20']:.2f} | {100 * r['mrr@20']:.2f} | {100 * r['recall@100']:.2f} | "
                f"{100 * r['mrr@100']:.2f} | {100 * r['cold_recall@20']:.2f} | {100 * r['cold_recall@100']:.2f} | "
                f"{r['best_epoch']} | {r['train_s']:.0f} |"
            )
        sections.append("\n".join(lines))
        print(sections[-1], flush=True)

    header = [
        f"# SemSR variants ({time.strftime('%Y-%m-%d')})",
        "",
        f"Embedder `{args.embedder}`; epochs <= {args.epochs}, patience {args.patience} on validation Recall@100, "
        f"batch {args.batch_size}, lr {args.lr}, {args.threads} thread(s), "
        f"{'all' if args.max_train_samples is None else args.max_train_samples} training samples; "
        f"re-ranking depth {args.rerank_k}. Metrics in %, full-catalogue ranking, ties count against the model, "
        f"history items allowed; test evaluated once per method. Machine: {platform.machine()}, 2 shared cores.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header) + "\n\n".join(sections) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
