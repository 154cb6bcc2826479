"""LaMAR signals as item-text augmentation for SemSR-F (NISER base), on MovieLens-100K.

1. Generates the LaMAR signals (usage, intent, summary) with the offline SmolLM2-135M-Instruct (hf
   engine) into a signal set -- resumed, so a set made beforehand by ``agentrec signals generate``
   with the same settings is reused without a single new generation.
2. Reports the set's quality (``agentrec signals report``).
3. Trains SemSR-F around NISER with the MiniLM item table built from the plain item text, from the
   text plus each signal, and plus all three (LaMAR reports that more signals can hurt); same seed,
   same budget, epoch picked on validation Recall@100, test evaluated once per variant.

    python benchmarks/signals_augmentation.py --data data/ml-100k --signals signals/ml-100k-smollm2

``--signal-items N`` generates signals for the N items most often a training target only (the
others keep their plain text): the whole catalogue takes hours on a small shared CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

VARIANTS = {"plain": (), "+usage": ("usage",), "+intent": ("intent",), "+summary": ("summary",),
            "+all": ("usage", "intent", "summary")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared ML-100K folder")
    parser.add_argument("--signals", type=Path, required=True, help="signal set folder (made or resumed)")
    parser.add_argument("--signal-items", type=int, default=0, help="only the N most frequent training targets (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=24)
    parser.add_argument("--generation-budget-s", type=float, default=1080,
                        help="stop generating after this many seconds (default 18 min, for a shared 2-core CPU); "
                             "0: no limit. Items left without signals keep their plain text")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/signals_augmentation_ml-100k.md"))
    args = parser.parse_args()

    import torch

    from agentrec.data.dataset import PreparedDataset
    from agentrec.engines import HFEngine
    from agentrec.metrics import metrics_from_ranks
    from agentrec.models import model_class
    from agentrec.models.semantic import SemanticFusion, load_llm_table
    from agentrec.runs import evaluate_model
    from agentrec.signals import SignalConfig, format_report, generate_signals, load_signals, signal_report
    from agentrec.training import TrainConfig, set_seed, train_model

    torch.set_num_threads(args.threads)
    ds = PreparedDataset.load(args.data)
    counts = np.bincount(ds.train.target, minlength=ds.n_items + 1)
    counts[0] = 0
    if args.signal_items:
        item_ids = sorted(np.argsort(-counts, kind="stable")[: args.signal_items].tolist())
    else:
        item_ids = list(range(1, ds.n_items + 1))

    # 1. signals (resumed)
    engine = HFEngine("smollm2", device="cpu", batch_size=args.batch_size, threads=args.threads)
    config = SignalConfig(max_new_tokens=args.max_new_tokens, retries=args.retries, chunk_size=args.chunk_size)
    generated = generate_signals(ds, args.signals, engine, config=config, item_ids=item_ids, progress=False,
                                 budget_s=args.generation_budget_s or None)
    print(generated.describe(), flush=True)
    last_run = args.signals / "last_run.json"
    throughput = json.loads(last_run.read_text()) if last_run.exists() and not generated.generated else generated.to_dict()

    # 2. quality
    report = signal_report(args.signals, dataset=ds, embedder=args.embedder, threshold=0.9, top_categories=5)
    print(format_report(report, top_categories=5), flush=True)

    # 3. SemSR-F (NISER) with each variant of the item text
    config = TrainConfig(epochs=args.epochs, patience=args.patience, threads=args.threads,
                         max_train_samples=args.max_train_samples)
    every = load_signals(args.signals, ds)[0]
    signalled = np.zeros(ds.n_items + 1, dtype=bool)
    signalled[1:] = [any(texts[i] for texts in every.values()) for i in range(ds.n_items)]
    covered = [i for i in item_ids if signalled[i]]
    slice_mask = signalled[ds.test.target]  # test samples whose target's text changes
    rows = []
    for variant in args.variants.split(","):
        aspects = VARIANTS[variant]
        signals = load_signals(args.signals, ds, aspects=aspects)[0] if aspects else None
        changed = sum(any(texts[i] for texts in signals.values()) for i in range(ds.n_items)) if signals else 0
        table = load_llm_table(ds, args.embedder, signals=signals, progress=False)
        set_seed(config.seed)
        model = SemanticFusion(model_class("niser")(ds.n_items), table)
        started = time.perf_counter()
        info = train_model(model, ds, config, progress=False)
        seconds = time.perf_counter() - started
        result = evaluate_model(model, ds, "test", ks=(20, 100))
        sliced = metrics_from_ranks(result.ranks[slice_mask], ks=(20, 100))
        rows.append({"variant": variant, "aspects": list(aspects), "items_changed": changed,
                     **{k: result.metrics[k] for k in ("recall@20", "mrr@20", "recall@100", "mrr@100")},
                     "slice_recall@20": sliced["recall@20"], "slice_recall@100": sliced["recall@100"],
                     "valid_recall@100": info.valid["recall@100"], "best_epoch": info.best_epoch,
                     "train_s": seconds})
        print(json.dumps(rows[-1]), flush=True)

    lines = [
        f"# LaMAR signals as augmentation for SemSR-F (NISER), MovieLens-100K ({time.strftime('%Y-%m-%d')})",
        "",
        "Reduced budget, stated plainly (a shared 2-core CPU, other jobs running):",
        "",
        f"* **Signals**: SmolLM2-135M-Instruct (hf engine, CPU, greedy, at most {args.max_new_tokens} new tokens, "
        f"{args.retries} sampled retry for an empty output) for the "
        + (f"{len(item_ids)} items most often a training target, in item-id order, within a generation budget of "
           f"{args.generation_budget_s:.0f} s: **{len(covered)} items got signals** "
           f"({100 * counts[covered].sum() / counts.sum():.1f}% of training targets, {100 * slice_mask.mean():.1f}% of "
           f"test targets); the other {ds.n_items - len(covered):,} items keep their plain text. The whole catalogue "
           f"({ds.n_items:,} items x 3 aspects) was out of reach at the throughput below."
           if args.signal_items else f"all {ds.n_items:,} items ({len(covered):,} got signals).")
        + f" Generation: {throughput.get('generated', 0):,} signals, {(throughput.get('items_per_s') or 0):.3f} items/s, "
        f"{(throughput.get('tokens_per_s') or 0):.1f} tokens/s (engine), {throughput.get('seconds', 0):.0f} s.",
        f"* **Model**: SemSR-F around NISER, item table `{args.embedder}` over `prompts/item_text.jinja` with the "
        f"chosen signals appended (`Usage: ... Intent: ... Summary: ...`); epochs <= {args.epochs}, patience "
        f"{args.patience} on validation Recall@100, batch {config.batch_size}, lr {config.lr}, "
        f"{'all' if args.max_train_samples is None else f'{args.max_train_samples:,} (seeded subsample of)'} "
        f"training samples, seed {config.seed}, {args.threads} thread(s). Full-catalogue ranking, history allowed, "
        "test evaluated once per variant.",
        f"* Machine: {platform.machine()}, 2 shared cores. With this budget a difference of about one point of "
        f"Recall@20 is within run-to-run noise ({len(ds.test):,} test samples: one hit is "
        f"{100 / len(ds.test):.2f} points).",
        "",
        f"Command: `python benchmarks/signals_augmentation.py --data {args.data} --signals {args.signals} "
        f"--signal-items {args.signal_items} --epochs {args.epochs} --max-train-samples {args.max_train_samples} "
        f"--threads {args.threads}`",
        "",
        f"## Test ({len(ds.test):,} samples; slice = the {int(slice_mask.sum())} whose target has signals)",
        "",
        "| item text | items changed | R@20 | MRR@20 | R@100 | MRR@100 | slice R@20 | slice R@100 | valid R@100 "
        "| best epoch | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['items_changed']:,} | {100 * r['recall@20']:.2f} | {100 * r['mrr@20']:.2f} | "
                     f"{100 * r['recall@100']:.2f} | {100 * r['mrr@100']:.2f} | {100 * r['slice_recall@20']:.2f} | "
                     f"{100 * r['slice_recall@100']:.2f} | {100 * r['valid_recall@100']:.2f} | {r['best_epoch']} | "
                     f"{r['train_s']:.0f} |")
    lines += ["", "## Signal quality (`agentrec signals report`, over the items with signals)", "",
              format_report(report, top_categories=5).split("\n", 2)[2]]
    examples = load_signals(args.signals, ds)[0]
    titles = ds.titles()
    lines += ["", "## Examples", "", "| item | usage | intent | summary |", "|---|---|---|---|"]
    for item in covered[:6]:
        cells = [(examples[a][item - 1] or "-").replace("|", "/") for a in ("usage", "intent", "summary")]
        lines.append(f"| {titles[item - 1]} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "generation": throughput, "report": report},
                                                        indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
