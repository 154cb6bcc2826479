"""LaMAR signals as item-text augmentation for SemSR-F (NISER base), on MovieLens-100K.

1. Makes sure the signal set exists: by default it is generated (or resumed) here with the offline
   SmolLM2-135M-Instruct on the hf engine; ``--no-generate`` takes the set as it is, e.g. one made
   beforehand by ``agentrec signals generate --engine vllm`` (the whole catalogue in about 25 min on
   two CPU cores, against hours on hf).
2. Reports the set's quality (``agentrec signals report``).
3. Trains SemSR-F around NISER with the MiniLM item table built from the plain item text, from the
   text plus each signal, and plus all three (LaMAR reports that more signals can hurt); per seed,
   every variant has the same seed and budget, picks its epoch on validation Recall@100, and test
   is evaluated once. Differences against the plain text come with a 95% paired bootstrap interval
   over test samples; with several seeds, also for the seed-averaged per-sample metrics.

    python benchmarks/signals_augmentation.py --data data/ml-100k --signals signals/ml-100k-smollm2-vllm \\
        --no-generate --seeds 0,1

Every finished training is kept under ``--work`` (keyed by dataset, signal set, variant, seed and
training settings), so an interrupted run resumes with the next one. ``--signal-items N``
generates signals for the N items most often a training target only (the others keep their plain
text).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
from semantic_variants import delta_cell, paired_delta, per_sample

VARIANTS = {"plain": (), "+usage": ("usage",), "+intent": ("intent",), "+summary": ("summary",),
            "+all": ("usage", "intent", "summary")}
DELTAS = ("recall@20", "mrr@20", "recall@100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared ML-100K folder")
    parser.add_argument("--signals", type=Path, required=True, help="signal set folder (made or resumed)")
    parser.add_argument("--no-generate", action="store_true", help="use the set as it is (any engine made it)")
    parser.add_argument("--signal-items", type=int, default=0, help="only the N most frequent training targets (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--generation-budget-s", type=float, default=0,
                        help="stop generating after this many seconds (0: no limit); items left without signals "
                             "keep their plain text")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--cold-below", type=int, default=10,
                        help="cold slice: test targets with fewer training samples than this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=Path("runs/signals_augmentation"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/signals_augmentation_ml-100k.md"))
    parser.add_argument("--findings", type=Path, default=None,
                        help="markdown written by a person after reading the tables, put in after them")
    args = parser.parse_args()

    import torch

    from agentrec.core.metrics import metrics_from_ranks
    from agentrec.data.dataset import PreparedDataset
    from agentrec.signals.report import format_report, signal_report
    from agentrec.signals.store import SignalSet, load_signals

    torch.set_num_threads(args.threads)
    ds = PreparedDataset.load(args.data)
    counts = np.bincount(ds.train.target, minlength=ds.n_items + 1)
    counts[0] = 0
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    if "plain" not in variants:
        raise SystemExit("--variants must include plain: the others are compared with it")

    throughput = make_signals(args, ds, counts)
    report = signal_report(args.signals, dataset=ds, embedder=args.embedder, threshold=0.9, top_categories=5)
    print(format_report(report, top_categories=5), flush=True)
    manifest = SignalSet(args.signals).manifest
    every = load_signals(args.signals, ds)[0]
    signalled = np.array([False] + [any(texts[i] for texts in every.values()) for i in range(ds.n_items)])
    cold = counts[ds.test.target] < args.cold_below

    runs = {}  # (variant, seed) -> (row, ranks)
    for seed in seeds:
        for variant in variants:
            runs[variant, seed] = trained(args, ds, variant, seed, manifest)
            row = runs[variant, seed][0]
            print(json.dumps(row), flush=True)
        write_report(args, ds, runs, seeds, variants, report, manifest, throughput, signalled, cold, counts,
                     every, metrics_from_ranks)


def make_signals(args, ds, counts) -> dict:
    """Generate or resume the set (unless --no-generate); returns the throughput of its last run."""
    last_run = args.signals / "last_run.json"
    if args.no_generate:
        if not (args.signals / "manifest.json").exists():
            raise SystemExit(f"{args.signals} is not a signal set (no manifest.json); drop --no-generate to make it")
        return json.loads(last_run.read_text()) if last_run.exists() else {}
    from agentrec.llm.hf import HFEngine
    from agentrec.signals.generate import SignalConfig, generate_signals

    if args.signal_items:
        item_ids = sorted(np.argsort(-counts, kind="stable")[: args.signal_items].tolist())
    else:
        item_ids = list(range(1, ds.n_items + 1))
    engine = HFEngine("smollm2", device="cpu", batch_size=args.batch_size, threads=args.threads)
    config = SignalConfig(max_new_tokens=args.max_new_tokens, retries=args.retries, chunk_size=args.chunk_size)
    generated = generate_signals(ds, args.signals, engine, config=config, item_ids=item_ids, progress=False,
                                 budget_s=args.generation_budget_s or None)
    print(generated.describe(), flush=True)
    return json.loads(last_run.read_text()) if last_run.exists() and not generated.generated else generated.to_dict()


def trained(args, ds, variant: str, seed: int, manifest: dict) -> tuple[dict, np.ndarray]:
    """Train and test SemSR-F (NISER) on one item text, or read the finished run from --work."""
    from agentrec.pipelines.train import RunSpec, train_run
    from agentrec.signals.store import load_signals
    from agentrec.training.runs import evaluate_model, load_model
    from agentrec.training.trainer import TrainConfig

    config = TrainConfig(epochs=args.epochs, patience=args.patience, threads=args.threads,
                         max_train_samples=args.max_train_samples, seed=seed)
    aspects = VARIANTS[variant]
    key_parts = [ds.fingerprint, args.embedder, variant, repr(config),
                 json.dumps(manifest, sort_keys=True) if aspects else ""]
    key = hashlib.sha256("\0".join(key_parts).encode()).hexdigest()[:16]
    folder = args.work / f"{variant.strip('+')}-seed{seed}-{key}"
    if (folder / "row.json").exists():
        return json.loads((folder / "row.json").read_text()), np.load(folder / "ranks.npy")
    signals = load_signals(args.signals, ds, aspects=aspects)[0] if aspects else None
    spec = RunSpec(model="niser", variant="fusion", embedder=args.embedder,
                   signals=f"{args.signals}:{','.join(aspects)}" if aspects else None, train=config)
    started = time.perf_counter()
    info = train_run(spec, ds, folder / "run", progress=False)
    seconds = time.perf_counter() - started
    _, model = load_model(folder / "run", ds)
    result = evaluate_model(model, ds, "test", ks=(20, 100))
    changed = sum(any(texts[i] for texts in signals.values()) for i in range(ds.n_items)) if signals else 0
    row = {"variant": variant, "seed": seed, "aspects": list(aspects), "items_changed": changed,
           **{k: result.metrics[k] for k in ("recall@20", "mrr@20", "recall@100", "mrr@100")},
           "valid_recall@100": info.valid["recall@100"], "best_epoch": info.best_epoch,
           "epochs_run": len(info.history), "train_s": seconds}
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "ranks.npy", result.ranks)
    (folder / "row.json").write_text(json.dumps(row, default=float))
    return row, result.ranks


def write_report(args, ds, runs, seeds, variants, report, manifest, throughput, signalled, cold, counts, every,
                 metrics_from_ranks) -> None:
    from agentrec.signals.report import format_report

    done = sorted({seed for (_, seed) in runs})
    covered = int(signalled.sum())
    test_signalled = signalled[ds.test.target]
    gen = (f"{throughput.get('generated', 0):,} signals in the last run, {throughput.get('items_per_s') or 0:.2f} "
           f"items/s, {throughput.get('tokens_per_s') or 0:.1f} tokens/s (engine), {throughput.get('seconds', 0):.0f} s"
           if throughput else "throughput not recorded")
    cmd = (f"python benchmarks/signals_augmentation.py --data {args.data} --signals {args.signals}"
           + (" --no-generate" if args.no_generate else "")
           + (f" --signal-items {args.signal_items}" if args.signal_items else "")
           + f" --epochs {args.epochs} --patience {args.patience}"
           + (f" --max-train-samples {args.max_train_samples}" if args.max_train_samples else "")
           + f" --seeds {args.seeds} --threads {args.threads}")
    sampling = manifest["sampling"]
    lines = [
        f"# LaMAR signals as augmentation for SemSR-F (NISER), MovieLens-100K ({time.strftime('%Y-%m-%d')})",
        "",
        f"* **Signals**: `{manifest['engine']}`, greedy, at most {sampling['max_new_tokens']} new tokens, "
        f"{sampling['retries']} sampled retries for an output empty after cleaning (cleaner v{manifest['cleaning']['cleaner']}), "
        f"few-shot templates `{', '.join(t['file'] for t in manifest['templates'].values())}`. "
        f"**{covered:,} of {ds.n_items:,} items have at least one signal** ({100 * test_signalled.mean():.1f}% of "
        f"test targets). Generation: {gen}.",
        f"* **Model**: SemSR-F around NISER, item table `{args.embedder}` over `prompts/item_text.jinja` with the "
        f"chosen signals appended (`Usage: ... Intent: ... Summary: ...`); at most {args.epochs} epochs, patience "
        f"{args.patience} on validation Recall@100, "
        f"{'all' if args.max_train_samples is None else f'a seeded subsample of {args.max_train_samples:,}'} "
        f"training samples, {args.threads} thread(s), seeds {', '.join(map(str, done))}. Full-catalogue ranking, "
        "history allowed, leave-one-out, test evaluated once per trained model.",
        f"* **Cold slice**: the {int(cold.sum())} test samples whose target has fewer than {args.cold_below} "
        "training samples, where the item text should matter most.",
        f"* Differences are against `plain` with the same seed, in points: mean over the {len(ds.test):,} test "
        "samples [95% paired bootstrap, 2,000 resamples]; `*` marks an interval that excludes 0. One test hit "
        f"is {100 / len(ds.test):.2f} points. Machine: {platform.machine()}, 2 shared cores.",
        "",
        f"Command: `{cmd}`",
        "",
    ]
    for seed in done:
        lines += [f"## Test, seed {seed}", "",
                  "| item text | items changed | R@20 | MRR@20 | R@100 | Δ R@20 | Δ MRR@20 | Δ R@100 | cold R@100 "
                  "| valid R@100 | best epoch | train s |",
                  "|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|"]
        base = per_sample(runs["plain", seed][1])
        for variant in variants:
            if (variant, seed) not in runs:
                continue
            row, ranks = runs[variant, seed]
            mine = per_sample(ranks)
            deltas = [delta_cell(paired_delta(mine[m], base[m], seed=seed)) if variant != "plain" else "-"
                      for m in DELTAS]
            cold_r = metrics_from_ranks(ranks[cold], ks=(100,))["recall@100"] if cold.any() else float("nan")
            lines.append(f"| {variant} | {row['items_changed']:,} | {100 * row['recall@20']:.2f} | "
                         f"{100 * row['mrr@20']:.2f} | {100 * row['recall@100']:.2f} | " + " | ".join(deltas)
                         + f" | {100 * cold_r:.2f} | {100 * row['valid_recall@100']:.2f} | {row['best_epoch']} | "
                         f"{row['train_s']:.0f} |")
        lines.append("")
    complete = [s for s in done if all((v, s) in runs for v in variants)]
    if len(complete) > 1:
        lines += [f"## Seed-averaged (seeds {', '.join(map(str, complete))})", "",
                  "Per test sample, each metric averaged over the seeds, then compared with plain as above.", "",
                  "| item text | R@20 | MRR@20 | R@100 | Δ R@20 | Δ MRR@20 | Δ R@100 |", "|---|---:|---:|---:|---|---|---|"]
        mean = {v: {m: np.mean([per_sample(runs[v, s][1])[m] for s in complete], axis=0) for m in DELTAS}
                for v in variants}
        for variant in variants:
            deltas = [delta_cell(paired_delta(mean[variant][m], mean["plain"][m])) if variant != "plain" else "-"
                      for m in DELTAS]
            lines.append(f"| {variant} | " + " | ".join(f"{100 * mean[variant][m].mean():.2f}" for m in DELTAS)
                         + " | " + " | ".join(deltas) + " |")
        lines.append("")
    if args.findings:
        lines += ["## Findings (written by hand after the run)", "", args.findings.read_text().strip(), ""]
    lines += ["## Signal quality (`agentrec signals report`)", "", format_report(report, top_categories=5).split("\n", 2)[2]]
    titles = ds.titles()
    examples = [i for i in np.argsort(-counts, kind="stable")[:8] if signalled[i]]
    lines += ["", "## Examples (the most frequent training targets)", "", "| item | usage | intent | summary |",
              "|---|---|---|---|"]
    for item in examples:
        cells = [(every[a][item - 1] or "-").replace("|", "/") for a in ("usage", "intent", "summary")]
        lines.append(f"| {titles[item - 1]} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"rows": [row for row, _ in runs.values()], "generation": throughput, "report": report,
         "manifest": manifest}, indent=2, default=float))
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
