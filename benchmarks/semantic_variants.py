"""SemSR's semantic variants against the plain models, on the same split, validation-selected.

For each dataset and each model (NISER, MSGAT): the plain model, SemSR-I (LLM-initialised item
table), SemSR-F (fusion with a frozen LLM table), and I+ / F+ (their top-``--rerank-k`` re-ranked
by the trained plain model of the same family; for MSGAT also by the trained NISER, as the paper's
"+" variants use NISER). Every trained model picks its epoch on validation Recall@100; test is
evaluated once per method on the selected checkpoints. Metrics are full-catalogue (history items
allowed, ties count against the model).

Cold-start slice: the test samples whose target item is the target of fewer than ``--cold-below``
samples of the *full* training split (not the ``--max-train-samples`` subset). Under
leave-one-out every training event except a user's first is a training target, so this is
essentially "the item has fewer than N training interactions".

Each trained model is saved in a run folder under ``--work`` named by its settings (dataset
fingerprint, model, variant, embedder, training config), so a rerun reuses finished trainings
and an interrupted run resumes with the next one.

    python benchmarks/semantic_variants.py --datasets /tmp/d/ml100k,/tmp/d/mls --models niser,msgat \\
        --epochs 5 --patience 2 --max-train-samples 20000

A dataset entry is a prepared folder, or a dataset name prepared (leave-one-out) under ``--data-root``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

LABELS = {"niser": "NISER", "msgat": "MSGAT", "narm": "NARM", "srgnn": "SRGNN", "gru4rec": "GRU4Rec"}
KS = (20, 100)
METRICS = ("recall@20", "mrr@20", "ndcg@20", "recall@100", "mrr@100")

logger = logging.getLogger("semantic_variants")


def prepared(entry: str, root: Path):
    from agentrec.data.api import prepare_dataset
    from agentrec.data.dataset import PreparedDataset

    folder = Path(entry)
    if (folder / "stats.json").exists():
        return PreparedDataset.load(folder)
    folder = root / entry
    if not (folder / "stats.json").exists():
        prepare_dataset(entry, out=folder, protocol="leave-one-out")
    return PreparedDataset.load(folder)


def run_key(ds, model_name: str, variant: str, embedder: str, config) -> str:
    """Folder name of one training: readable prefix, hash of every setting that changes the result."""
    settings = {"dataset": ds.fingerprint, "model": model_name, "variant": variant,
                "embedder": embedder if variant != "plain" else None, "train": asdict(config)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{ds.name}-{model_name}-{variant}-{digest}"


def trained_model(ds, model_name: str, variant: str, table, config, *, embedder: str, work: Path,
                  train: bool = True):
    """Train one (model, variant) or load its finished run. Returns (model, run record dict), or
    None when the run is not finished and ``train`` is False."""
    from agentrec.core import fsutil
    from agentrec.pipelines.train import RunSpec, train_run
    from agentrec.training.runs import RUN_FILE, load_model

    folder = work / run_key(ds, model_name, variant, embedder, config)
    if (folder / RUN_FILE).exists():
        info, model = load_model(folder, ds)
        logger.info("reusing %s", folder)
        return model, info.__dict__
    if not train:
        return None
    spec = RunSpec(model=model_name, variant={"plain": None, "I": "init", "F": "fusion"}[variant], embedder=embedder,
                   train=config)
    logger.info("training %s %s %s -> %s", ds.name, model_name, variant, folder)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    info = train_run(spec, ds, folder, progress=False, llm_table=table if spec.variant else None)
    info.extra.update(wall_seconds=time.perf_counter() - started, load_before=load_before,
                      load_after=os.getloadavg()[0])
    fsutil.atomic_write_text(folder / RUN_FILE, info.to_json())
    info, model = load_model(folder, ds)
    return model, info.__dict__


def per_sample(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample metric values whose means are the reported metrics."""
    out = {}
    for k in KS:
        hit = ranks <= k
        safe = np.where(hit, ranks, 1.0)
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"mrr@{k}"] = np.where(hit, 1.0 / safe, 0.0)
    return out


def paired_delta(a: np.ndarray, b: np.ndarray, *, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over test samples and its 95% paired-bootstrap interval."""
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def delta_cell(d: tuple[float, float, float]) -> str:
    mark = " *" if d[1] > 0 or d[2] < 0 else ""
    return f"{100 * d[0]:+.2f} [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}]{mark}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small",
                        help="comma-separated prepared folders or dataset names")
    parser.add_argument("--models", default="niser,msgat")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rerank-k", type=int, default=100)
    parser.add_argument("--cold-below", type=int, default=10,
                        help="cold slice: test target is the target of fewer than this many training samples")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", type=Path, default=Path(".cache/bench-data"))
    parser.add_argument("--work", type=Path, default=Path(".cache/semantic-variants"),
                        help="run folders, one per (dataset, model, variant, settings); reused on rerun")
    parser.add_argument("--no-train", action="store_true",
                        help="only report models whose three runs are finished (train nothing)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/semantic_variants.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("agentrec.training.trainer").setLevel(logging.INFO)

    import torch

    from agentrec.core.metrics import metrics_from_ranks
    from agentrec.models.semantic import Reranked
    from agentrec.pipelines.train import load_llm_table
    from agentrec.training.runs import evaluate_model
    from agentrec.training.trainer import TrainConfig

    torch.set_num_threads(args.threads)
    config = TrainConfig(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
                         threads=args.threads, max_train_samples=args.max_train_samples)
    models = args.models.split(",")
    load_start, started = os.getloadavg(), time.perf_counter()
    sections, raw = [], {}
    for entry in args.datasets.split(","):
        ds = prepared(entry, args.data_root)
        table = load_llm_table(ds, args.embedder, progress=False)
        counts = np.bincount(ds.train.target, minlength=ds.n_items + 1)
        cold = counts[ds.test.target] < args.cold_below
        trained = {(m, v): trained_model(ds, m, v, table, config, embedder=args.embedder, work=args.work,
                                         train=not args.no_train)
                   for m in args.models.split(",") for v in ("plain", "I", "F")}
        models = [m for m in args.models.split(",") if all(trained[(m, v)] for v in ("plain", "I", "F"))]
        missing = [m for m in args.models.split(",") if m not in models]

        methods = []  # (label, scorer, run record or None, family)
        for m in models:
            label = LABELS.get(m, m)
            plain = trained[(m, "plain")][0]
            methods += [
                (label, plain, trained[(m, "plain")][1], m),
                (f"Sem{label}-I", trained[(m, "I")][0], trained[(m, "I")][1], m),
                (f"Sem{label}-I+", Reranked(trained[(m, "I")][0], plain, args.rerank_k), None, m),
                (f"Sem{label}-F", trained[(m, "F")][0], trained[(m, "F")][1], m),
                (f"Sem{label}-F+", Reranked(trained[(m, "F")][0], plain, args.rerank_k), None, m),
            ]
            if m != "niser" and "niser" in models:
                niser = trained[("niser", "plain")][0]
                methods += [
                    (f"Sem{label}-I+ (NISER)", Reranked(trained[(m, "I")][0], niser, args.rerank_k), None, m),
                    (f"Sem{label}-F+ (NISER)", Reranked(trained[(m, "F")][0], niser, args.rerank_k), None, m),
                ]

        rows, ranks = [], {}
        for label, scorer, record, family in methods:
            result = evaluate_model(scorer, ds, "test", ks=KS)  # test, once per method
            ranks[label] = result.ranks
            history = record["history"] if record else []
            rows.append({
                "method": label, "family": family,
                "all": result.metrics, "cold": metrics_from_ranks(result.ranks[cold], ks=KS),
                "best_epoch": record["best_epoch"] if record else None,
                "epochs_run": len(history),
                "valid_recall@100": record["valid"]["recall@100"] if record else None,
                "train_s": sum(h["train_seconds"] + h["valid_seconds"] for h in history),
                "samples_per_s": record["extra"]["median_samples_per_second"] if record else None,
                "semantic": record["semantic"] if record else {},
            })

        deltas = []
        for m in models:
            label = LABELS.get(m, m)
            s = {name: per_sample(r) for name, r in ranks.items()}
            plain, sem_i, sem_f = s[label], s[f"Sem{label}-I"], s[f"Sem{label}-F"]
            deltas.append({
                "model": label,
                "F-plain R@20": paired_delta(sem_f["recall@20"], plain["recall@20"]),
                "F-plain R@100": paired_delta(sem_f["recall@100"], plain["recall@100"]),
                "F+-F MRR@20": paired_delta(s[f"Sem{label}-F+"]["mrr@20"], sem_f["mrr@20"]),
                "I+-I MRR@20": paired_delta(s[f"Sem{label}-I+"]["mrr@20"], sem_i["mrr@20"]),
                "F+-plain MRR@20": paired_delta(s[f"Sem{label}-F+"]["mrr@20"], plain["mrr@20"]),
                "cold F-plain R@100": paired_delta(sem_f["recall@100"][cold], plain["recall@100"][cold]),
            })

        raw[ds.name] = {"missing_models": missing, "path": str(ds.path), "fingerprint": ds.fingerprint, "test_samples": len(ds.test),
                        "cold_samples": int(cold.sum()), "cold_below": args.cold_below, "items": ds.n_items,
                        "rows": rows, "deltas": deltas}
        n_cold = int(cold.sum())
        lines = [
            f"## {ds.name} ({ds.stats['protocol']['name']}, {len(ds.test):,} test samples, {ds.n_items:,} items, "
            f"{len(ds.train):,} training samples)",
            "",
            *([f"Not finished in the time available, so not reported: {', '.join(missing)}.", ""]
              if missing else []),
            "| method | R@20 | MRR@20 | NDCG@20 | R@100 | MRR@100 | valid R@100 | best / run epochs | train+valid s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            a = r["all"]
            trained_cells = "- | - | -"
            if r["best_epoch"]:
                trained_cells = (f"{pct(r['valid_recall@100'])} | {r['best_epoch']} / {r['epochs_run']} | "
                                 f"{r['train_s']:.0f}")
            lines.append(f"| {r['method']} | {pct(a['recall@20'])} | {pct(a['mrr@20'])} | {pct(a['ndcg@20'])} | "
                         f"{pct(a['recall@100'])} | {pct(a['mrr@100'])} | {trained_cells} |")
        lines += [
            "",
            f"Cold-start slice: {n_cold} of {len(ds.test)} test samples ({n_cold / len(ds.test):.1%}) whose target is "
            f"the target of fewer than {args.cold_below} training samples.",
            "",
            "| method | cold R@20 | cold MRR@20 | cold R@100 | cold MRR@100 |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in rows:
            c = r["cold"]
            lines.append(f"| {r['method']} | {pct(c['recall@20'])} | {pct(c['mrr@20'])} | {pct(c['recall@100'])} | "
                         f"{pct(c['mrr@100'])} |")
        lines += [
            "",
            "Paired differences in points, mean over test samples [95% paired bootstrap, 2,000 resamples]; "
            "`*` where the interval excludes 0.",
            "",
            "| model | F - plain R@20 | F - plain R@100 | F+ - F MRR@20 | I+ - I MRR@20 | F+ - plain MRR@20 "
            "| cold: F - plain R@100 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for d in deltas:
            lines.append(f"| {d['model']} | " + " | ".join(delta_cell(v) for k, v in d.items() if k != "model") + " |")
        sections.append("\n".join(lines))
        print(sections[-1], flush=True)
        write_report(args, config, raw, sections, load_start, started)  # after each dataset: partial results survive


def write_report(args, config, raw, sections, load_start, started) -> None:
    train_rows = [r for d in raw.values() for r in d["rows"] if r["best_epoch"]]
    header = [
        f"# SemSR variants ({time.strftime('%Y-%m-%d')})",
        "",
        f"**Budget (reduced, CPU):** each model trains on a seeded subset of "
        f"{'all' if args.max_train_samples is None else f'{args.max_train_samples:,}'} training samples, "
        f"at most {args.epochs} epochs, early stopping with patience {args.patience} on validation Recall@100 "
        f"(lr {args.lr} decayed x0.1 every {config.lr_step} epochs, batch {args.batch_size}, L2 {config.weight_decay}, "
        f"model defaults: d = 100), {args.threads} torch thread(s), seed {config.seed}. "
        f"Embedder `{args.embedder}` over `prompts/item_text.jinja`; re-ranking depth {args.rerank_k} "
        f"(so X+ has X's Recall@{args.rerank_k}). "
        f"Full-catalogue ranking, ties count against the model, history items allowed; test evaluated once per method "
        f"on the checkpoint chosen on validation.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs; load average "
        f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end of this report "
        f"({len(train_rows)} trainings, {sum(r['train_s'] for r in train_rows) / 60:.0f} min of training + validation "
        f"in their runs; this invocation {(time.perf_counter() - started) / 60:.0f} min, finished runs reused).",
        "",
        "Command:",
        "",
        "```bash",
        "python benchmarks/semantic_variants.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if v not in (None, False) and k not in ("out", "data_root", "work")),
        "```",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header) + "\n" + "\n\n".join(sections) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
