"""Amazon-M2 scale on one 2-core, 24 GB machine (issue 15, item 3): every step end to end, each in its own process.

Synthetic data at Amazon-M2 (UK) size: at least 499,611 items and 1,172,181 training sessions of mean length
about 4 (``agentrec data prepare synthetic --mean-length 4.1``), then

* ``prepare``: generate and prepare (the M2 protocol: the 10,000 most recent sessions are test, as SemSR);
* ``embed``: item texts with MiniLM, fp32 and ``minilm+bf16`` (bf16 autocast) on a probe of 1,000 texts at
  1 and 2 threads, then ``minilm+bf16`` on a seeded fraction of the catalogue (``--embed-items``) through
  :func:`agentrec.retrieval.embedders.item_embeddings`; the whole catalogue's time is extrapolated;
* ``index``: the Chroma index (:class:`agentrec.retrieval.index.CatalogueIndex`, agentrec's HNSW settings) of
  the embedded fraction: build time, disk, recall@100 against exact search on 1,000 perturbed titles
  (``index_recall.perturb``); the whole catalogue's build extrapolated as n log n;
* ``train-*``: NISER and SemNISER-F (compare's training defaults) for one epoch through
  :func:`agentrec.pipelines.train.train_run`, with the full softmax on a measured number of batches (an epoch
  takes hours here: extrapolated) and with ``--negatives`` (sampled softmax, ``agentrec.training.losses``);
  each also times the parts of a few training steps (loss, backward, optimiser);
* ``evaluate-*``: every test session ranked against the whole catalogue (``evaluate_model``, fp32 and bf16
  products), sessions/s and GFLOP/s beside the bare matrix product measured in the same process
  (``eval_speed.bare_product_rate``);
* ``quality-softmax`` / ``quality-embedder``: on MovieLens-100K, the quality cost of sampled softmax against the
  full softmax, and of ``minilm+bf16`` against fp32 MiniLM (SemSR-F Recall@20, index recall), test once per
  model, paired-bootstrap intervals.

SemNISER-F at M2 size needs an LLM vector for every item, and embedding all of them takes hours here: its frozen
table holds the real ``minilm+bf16`` vectors of the embedded fraction and, for every other item, the vector of a
random embedded item of its own sub-category (training and evaluation cost do not depend on the values).

Each step runs in a child process, so its wall time, CPU time (user + system) and peak RSS (``os.wait4``) are its
own; results go to ``WORK/results/STEP.json`` and the markdown is written from whatever results are there, so a
step can be run again alone (``--steps evaluate-niser``)::

    python benchmarks/scale_m2.py --work /tmp/m2 --out benchmarks/results/scale_m2.md        # about 75 min here
    python benchmarks/scale_m2.py --quick --work /tmp/m2-quick --out /tmp/m2-quick.md        # smoke run, ~5 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from index_recall import timed  # benchmarks/ is on sys.path when this runs as a script

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale_m2.md"
EMBEDDER = "minilm+bf16"  # what the M2-size steps embed with (the embed step measures fp32 beside it)


@dataclass(frozen=True)
class Sizes:
    """What each step works on; ``--quick`` shrinks everything for a smoke run."""

    generated_items: int = 720_000  # ~30% are never clicked and leave the catalogue: 504,913 items remain
    sessions: int = 1_194_122  # 1,172,181 train + 11,941 valid (1%) + 10,000 test
    mean_length: float = 4.1
    test_sessions: int = 10_000  # SemSR's M2 test set
    valid_fraction: float = 0.01
    probe_texts: int = 1_000  # fp32 vs bf16 embedding speed, at 1 and 2 threads
    embed_items: int = 50_000  # the embedded (and indexed) fraction of the catalogue
    queries: int = 1_000
    full_softmax_samples: int = 40 * 256  # 40 batches of 256: an epoch of the full softmax takes hours
    sampled_b256_samples: int = 200 * 256  # --negatives at compare's batch size: a measured fraction
    sampled_samples: int | None = None  # --negatives --batch-size 1024: None = the whole epoch
    semnf_sampled_samples: int | None = 700 * 1024  # SemNISER-F with --negatives: a fifth of the epoch
    profile_batches: int = 6
    quality_epochs: int = 8  # MovieLens-100K runs: compare's defaults
    quality_samples: int | None = None


QUICK = Sizes(generated_items=20_000, sessions=40_000, test_sessions=500, valid_fraction=0.02, probe_texts=100,
              embed_items=1_000, queries=200, full_softmax_samples=4 * 256, sampled_b256_samples=8 * 256,
              sampled_samples=None, semnf_sampled_samples=20 * 1024, profile_batches=2, quality_epochs=1,
              quality_samples=3_000)

# name: (SemSR variant, negatives, batch size, Sizes field with the number of samples (None: the whole epoch))
TRAIN_RUNS = {
    "train-niser-full": (None, None, 256, "full_softmax_samples"),
    "train-niser-sampled-b256": (None, 4096, 256, "sampled_b256_samples"),
    "train-niser-sampled": (None, 4096, 1024, "sampled_samples"),
    "train-semnf-full": ("fusion", None, 256, "full_softmax_samples"),
    "train-semnf-sampled": ("fusion", 4096, 1024, "semnf_sampled_samples"),
}
EVALUATE_RUNS = {"evaluate-niser": "train-niser-sampled", "evaluate-semnf": "train-semnf-sampled"}
STEPS = ("prepare", "embed", "index", *TRAIN_RUNS, *EVALUATE_RUNS, "quality-softmax", "quality-embedder")

# MovieLens-100K: (label, SemSR variant, embedder, negatives, batch size, the row it is differenced from, training
# settings changed from compare's, training seed). At batch 1024 a MovieLens-100K epoch is 95 steps, a quarter of
# batch 256's, so compare's schedule (lr x0.2 every 3 epochs, at most 8, patience 2) gives it a quarter of the
# steps at each learning rate; the "same steps" rows stretch the schedule 4x (an M2 epoch at batch 1024 is 3,550).
SAME_STEPS = {"epochs": 32, "lr_step": 12, "patience": 8}
QUALITY_SOFTMAX = [
    ("NISER, full softmax, batch 256", None, "minilm", None, 256, None, {}, 0),
    ("NISER, 16 negatives (1% of the items), batch 256", None, "minilm", 16, 256, 0, {}, 0),
    ("NISER, 256 negatives (15%), batch 256", None, "minilm", 256, 256, 0, {}, 0),
    ("NISER, full softmax, batch 1024", None, "minilm", None, 1024, 0, {}, 0),
    ("NISER, 16 negatives, batch 1024", None, "minilm", 16, 1024, 3, {}, 0),
    ("NISER, full softmax, batch 1024, same steps", None, "minilm", None, 1024, 0, SAME_STEPS, 0),
    ("NISER, 16 negatives, batch 1024, same steps", None, "minilm", 16, 1024, 0, SAME_STEPS, 0),
    ("SemNISER-F, full softmax, batch 256", "fusion", "minilm", None, 256, None, {}, 0),
    ("SemNISER-F, 16 negatives, batch 256", "fusion", "minilm", 16, 256, 7, {}, 0),
    ("SemNISER-F, 16 negatives, batch 1024", "fusion", "minilm", 16, 1024, 7, {}, 0),
    ("SemNISER-F, 16 negatives, batch 1024, same steps", "fusion", "minilm", 16, 1024, 7, SAME_STEPS, 0),
]
# SemNISER-F amplifies any change of its input into another training trajectory, so the embedders are compared
# over three training seeds, beside the difference another seed alone makes
QUALITY_EMBEDDER = [
    ("SemNISER-F, minilm (fp32), seed 0", "fusion", "minilm", None, 256, None, {}, 0),
    ("SemNISER-F, minilm+bf16, seed 0", "fusion", "minilm+bf16", None, 256, 0, {}, 0),
    ("SemNISER-F, minilm (fp32), seed 1", "fusion", "minilm", None, 256, 0, {}, 1),
    ("SemNISER-F, minilm+bf16, seed 1", "fusion", "minilm+bf16", None, 256, 2, {}, 1),
    ("SemNISER-F, minilm (fp32), seed 2", "fusion", "minilm", None, 256, 0, {}, 2),
    ("SemNISER-F, minilm+bf16, seed 2", "fusion", "minilm+bf16", None, 256, 4, {}, 2),
]


# ============================================================================================ helpers
def disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def load_data(args):
    from agentrec.data.dataset import PreparedDataset

    return PreparedDataset.load(args.work / "data")


def fraction_dataset(dataset, n: int, folder: Path):
    """The items of a seeded random ``n`` of the catalogue as a dataset of their own (ids renumbered 1..n),
    saved in ``folder`` so that ``item_embeddings`` caches their vectors there; returns it and the item ids."""
    from agentrec.data.dataset import PreparedDataset, Samples

    n = min(n, dataset.n_items)
    chosen = np.sort(np.random.default_rng(0).choice(dataset.n_items, n, replace=False))  # 0-based rows
    items = dataset.items.iloc[chosen].reset_index(drop=True).copy()
    items["item_id"] = np.arange(1, n + 1)
    one = Samples.from_lists([[1]], [min(2, n)])
    sub = PreparedDataset(items=items, train=one, valid=one, test=one,
                          stats={"dataset": f"{dataset.name}-fraction", "parent_fingerprint": dataset.fingerprint})
    sub.save(folder, force=True)
    return sub, chosen + 1


def train_config(sizes: Sizes, threads: int, **changes):
    """compare's training defaults (``CompareConfig``) with ``changes``."""
    from agentrec.pipelines.compare import CompareConfig

    return replace(CompareConfig(threads=threads).train_config(), **changes)


# ============================================================================================ steps
def step_prepare(args, sizes: Sizes) -> dict:
    from agentrec.data.api import prepare_dataset

    dataset = prepare_dataset(
        "synthetic", out=args.work / "data", protocol="m2", force=True,
        protocol_options={"test_sessions": sizes.test_sessions, "valid_fraction": sizes.valid_fraction},
        loader_options={"items": sizes.generated_items, "sessions": sizes.sessions, "seed": 0,
                        "mean_length": sizes.mean_length})
    counts = dataset.stats["counts"]
    return {"items": dataset.n_items, "generated_items": sizes.generated_items, "events": counts["events"],
            "sessions": counts["sequences"], "mean_length": counts["mean_sequence_length"],
            **{f"{s}_{k}": counts[f"{s}_{k}"] for s in ("train", "valid", "test") for k in ("sessions", "samples")},
            "disk_mib": disk_mib(args.work / "data"), "saved": dataset.saved}


def step_embed(args, sizes: Sizes) -> dict:
    import torch

    from agentrec.core.templates import item_texts
    from agentrec.retrieval.embedders import get_embedder, item_embeddings

    dataset = load_data(args)
    texts, render_s = timed(item_texts, dataset.items)
    probe = [texts[i] for i in np.random.default_rng(1).choice(len(texts), sizes.probe_texts, replace=False)]
    fp32, bf16 = get_embedder("minilm"), get_embedder(EMBEDDER)
    out = {"items": dataset.n_items, "render_s": render_s, "probe_texts": len(probe),
           "mean_chars": float(np.mean([len(t) for t in probe])), "probe": {}}
    tokens = fp32.model.tokenizer(probe[:200])["input_ids"]
    out["mean_tokens"] = float(np.mean([len(t) for t in tokens]))
    vectors = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, embedder in (("fp32", fp32), ("bf16", bf16)):
            embedder.embed(probe[:64])  # warm-up (oneDNN builds its kernels on first use)
            cpu = time.process_time()
            vectors[name], seconds = timed(embedder.embed, probe)
            out["probe"][f"{name}@{threads}"] = {"texts_per_s": len(probe) / seconds,
                                                 "texts_per_cpu_s": len(probe) / (time.process_time() - cpu)}
    cosine = (vectors["fp32"] * vectors["bf16"]).sum(1)
    out["cosine_bf16_fp32"] = {"mean": float(cosine.mean()), "min": float(cosine.min())}

    torch.set_num_threads(args.threads)
    sub, ids = fraction_dataset(dataset, sizes.embed_items, args.work / "embed" / "fraction")
    cpu = time.process_time()
    table, seconds = timed(item_embeddings, sub, bf16, progress=False)
    out.update(embedded=len(ids), threads=args.threads, embed_s=seconds, items_per_s=len(ids) / seconds,
               embed_cpu_s=time.process_time() - cpu)
    for name in ("fp32", "bf16"):
        rate = out["probe"][f"{name}@{args.threads}"]["texts_per_s"]
        out[f"whole_catalogue_{name}_s"] = dataset.n_items / (rate if name == "fp32" else out["items_per_s"])
    # SemNISER-F's table: the real vectors of the fraction, a same-sub-category stand-in for every other item
    sub_category = dataset.items["categories"].map(lambda c: c[-1] if len(c) else "").to_numpy()
    full = np.zeros((dataset.n_items + 1, table.shape[1]), dtype=np.float32)
    full[ids] = table[1:]
    rng = np.random.default_rng(2)
    donors_by = {}
    for row, item in enumerate(ids):
        donors_by.setdefault(sub_category[item - 1], []).append(row + 1)
    missing = np.setdiff1d(np.arange(1, dataset.n_items + 1), ids)
    for category in np.unique(sub_category[missing - 1]):
        rows = missing[sub_category[missing - 1] == category]
        donors = np.asarray(donors_by.get(category) or np.arange(1, len(ids) + 1))
        full[rows] = table[donors[rng.integers(0, len(donors), len(rows))]]
    np.save(args.work / "embed" / "table.npy", full)
    out["stand_in_items"] = len(missing)
    return out


def step_index(args, sizes: Sizes) -> dict:
    import torch
    from index_recall import perturb, recall

    from agentrec.retrieval.embedders import get_embedder
    from agentrec.retrieval.index import CatalogueIndex, HNSWSettings

    torch.set_num_threads(args.threads)
    dataset = load_data(args)
    sub, _ = fraction_dataset(dataset, sizes.embed_items, args.work / "embed" / "fraction")  # kept: same items
    embedder = get_embedder(EMBEDDER)
    store = args.work / "index" / "store"
    shutil.rmtree(store, ignore_errors=True)
    cpu = time.process_time()
    index, build_s = timed(CatalogueIndex.build, sub, embedder, store=store, progress=False)
    build_cpu_s = time.process_time() - cpu  # Chroma's own threads (HNSW inserts) count too
    rng = np.random.default_rng(3)
    titles = sub.titles()
    sources = rng.choice(sub.n_items, min(sizes.queries, sub.n_items), replace=False) + 1
    queries = [perturb(titles[i - 1], rng) for i in sources]
    vectors, query_embed_s = timed(embedder.embed, queries)
    index.match_vectors(vectors[:10], 100)  # warm-up: the first query loads the HNSW segment
    approx, chroma_s = timed(index.match_vectors, vectors, 100)
    exact, exact_s = timed(index.exact_match, vectors, 100)
    n, total = sub.n_items, dataset.n_items
    growth = total / n * math.log(total) / math.log(n)  # HNSW inserts cost about log n each
    return {"indexed": n, "items": total, "hnsw": asdict(HNSWSettings()), "build_s": build_s, "build_cpu_s": build_cpu_s,
            "disk_mib": disk_mib(store), "queries": len(queries), "query_embed_s": query_embed_s,
            "chroma_s": chroma_s, "exact_s": exact_s, "recall@100": recall(approx.item_ids, exact.item_ids),
            "own_first_chroma": float(np.mean(approx.item_ids[:, 0] == sources)),
            "own_first_exact": float(np.mean(exact.item_ids[:, 0] == sources)),
            "whole_catalogue_build_s": build_s * growth, "whole_catalogue_disk_mib": disk_mib(store) * total / n,
            "growth": growth}


def profile_steps(model, dataset, config, batches: int) -> dict:
    """Median seconds of the parts of ``batches`` training steps (after one warm-up step), as the trainer runs them."""
    import torch

    from agentrec.training.losses import training_loss
    from agentrec.training.trainer import resolve_precision

    model.train()
    loss_fn = training_loss(model, dataset.train, config.negatives, seed=config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    bf16 = resolve_precision(config.precision) == "bf16"
    rng = np.random.default_rng(4)
    parts = {"batch": [], "loss": [], "backward": [], "optimiser": []}
    for step in range(batches + 1):
        marks = [time.perf_counter()]
        batch = model.make_batch(dataset.train, rng.choice(len(dataset.train), config.batch_size, replace=False))
        marks.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(batch)
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if step:
            for name, a, b in zip(parts, marks, marks[1:]):
                parts[name].append(b - a)
    return {name: float(np.median(values)) for name, values in parts.items()}


def step_train(args, sizes: Sizes, name: str) -> dict:
    import torch

    from agentrec.models.semantic import SemanticFusion
    from agentrec.pipelines.train import RunSpec, build_model, train_run

    variant, negatives, batch_size, field = TRAIN_RUNS[name]
    samples = getattr(sizes, field)
    dataset = load_data(args)
    config = train_config(sizes, args.threads, epochs=1, patience=1, batch_size=batch_size, negatives=negatives,
                          max_train_samples=samples if samples and samples < len(dataset.train) else None)
    table = np.load(args.work / "embed" / "table.npy") if variant else None
    spec = RunSpec(model="niser", variant=variant, embedder=EMBEDDER, train=config,
                   model_settings={"embedding_size": 64})
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("niser", dataset, settings={"embedding_size": 64})
    if variant:
        model = SemanticFusion(model, table)
    profile = profile_steps(model, dataset, config, sizes.profile_batches)
    del model
    info = train_run(spec, dataset, args.work / "runs" / name, progress=False, llm_table=table)
    epoch = info.history[0]
    trained, total = info.extra["train_samples"], len(dataset.train)
    return {"model": "SemNISER-F" if variant else "NISER", "negatives": negatives, "batch_size": batch_size,
            "precision": info.extra["precision"], "threads": args.threads, "samples": trained, "epoch_samples": total,
            "train_s": epoch["train_seconds"], "train_cpu_s": epoch["train_cpu_seconds"],
            "valid_s": epoch["valid_seconds"], "valid_sessions": len(dataset.valid),
            "samples_per_s": epoch["samples_per_second"], "valid_recall@20": epoch["valid"]["recall@20"],
            "epoch_train_s": epoch["train_seconds"] * total / trained, "extrapolated": trained < total,
            "profile": profile}


def step_evaluate(args, sizes: Sizes, name: str) -> dict:
    import torch
    from eval_speed import bare_product_rate

    from agentrec.core.ranking import product_rows
    from agentrec.training.runs import evaluate_model, load_model

    dataset = load_data(args)
    _, model = load_model(args.work / "runs" / EVALUATE_RUNS[name], dataset)
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        table = model.scoring_table()
    n_test, d = len(dataset.test), table.shape[1]
    flop = 2 * n_test * d * table.shape[0]
    out = {"model": EVALUATE_RUNS[name], "sessions": n_test, "items": dataset.n_items, "d": d, "threads": args.threads,
           "memory_mb": args.memory_mb, "gflop": flop / 1e9}
    ranks = {}
    for precision, dtype, size in (("fp32", torch.float32, 4), ("bf16", torch.bfloat16, 2)):
        rows = product_rows(dataset.n_items, size, args.memory_mb)
        limit = bare_product_rate(rows, table, dtype, repeats=5)
        result = evaluate_model(model, dataset, "test", precision=precision, threads=args.threads,
                                memory_budget_mb=args.memory_mb)
        ranks[precision] = result.ranks
        out[precision] = {"limit_gflops": limit, "seconds": result.seconds, "gflops": flop / result.seconds / 1e9,
                          "sessions_per_s": n_test / result.seconds, "chunk_rows": rows,
                          "recall@20": result.metrics["recall@20"], "mrr@20": result.metrics["mrr@20"]}
    out["ranks_identical"] = bool(np.array_equal(ranks["fp32"], ranks["bf16"]))
    return out


def quality_rows(args, sizes: Sizes, rows: list) -> dict:
    """Train (or reuse) each MovieLens-100K row, rank its test split once, and difference it from its group's
    first row (paired bootstrap over the same test sessions)."""
    from agentrec.data.api import prepare_dataset
    from agentrec.data.dataset import PreparedDataset
    from agentrec.pipelines.compare import paired_difference
    from agentrec.pipelines.train import RunSpec, train_or_reuse
    from agentrec.training.runs import evaluate_model, load_model, read_run

    folder = args.work / "ml-100k"
    dataset = (PreparedDataset.load(folder) if (folder / "stats.json").exists()
               else prepare_dataset("ml-100k", out=folder, protocol="leave-one-out"))
    metrics = ("recall@20", "mrr@20", "recall@100")
    out, ranks = [], []
    for label, variant, embedder, negatives, batch_size, versus, changes, seed in rows:
        settings = {"epochs": sizes.quality_epochs, **changes}
        if sizes.quality_epochs != Sizes.quality_epochs:  # --quick: one epoch everywhere
            settings["epochs"] = sizes.quality_epochs
        config = train_config(sizes, args.threads, batch_size=batch_size, seed=seed, negatives=negatives,
                              max_train_samples=sizes.quality_samples, **settings)
        spec = RunSpec(model="niser", variant=variant, embedder=embedder, train=config,
                       model_settings={"embedding_size": 64})
        run, _ = train_or_reuse(spec, dataset, args.work / "quality" / "runs",
                                name=f"{'semnf' if variant else 'niser'}-{negatives or 'full'}-b{batch_size}"
                                + "".join(f"-{k}{v}" for k, v in changes.items()) + (f"-s{seed}" if seed else ""),
                                progress=False)
        info = read_run(run)
        _, model = load_model(run, dataset)
        result = evaluate_model(model, dataset, "test", precision="fp32", threads=args.threads)
        ranks.append(result.ranks)
        row = {"label": label, "negatives": negatives, "batch_size": batch_size, "embedder": embedder, "seed": seed,
               "best_epoch": info.best_epoch, "epochs": len(info.history), "train_wall_s": info.extra["train_wall_s"],
               "samples_per_cpu_s": info.extra["median_samples_per_cpu_second"],
               "test": {m: result.metrics[m] for m in metrics}, "n": len(result.ranks),
               "valid": {m: info.valid[m] for m in metrics}}
        if versus is not None:
            row["versus"] = rows[versus][0]
            row["difference"] = paired_difference(result.ranks, ranks[versus], metrics=metrics)
        out.append(row)
        print(f"[quality] {label}: test R@20 {100 * result.metrics['recall@20']:.2f}", flush=True)
    return {"dataset": dataset.name, "test_sessions": len(dataset.test), "n_items": dataset.n_items,
            "train_samples": len(dataset.train), "rows": out}, ranks


def step_quality_softmax(args, sizes: Sizes) -> dict:
    return quality_rows(args, sizes, QUALITY_SOFTMAX)[0]


def step_quality_embedder(args, sizes: Sizes) -> dict:
    import torch
    from index_recall import perturb, recall

    from agentrec.core.metrics import bootstrap_interval
    from agentrec.data.dataset import PreparedDataset
    from agentrec.pipelines.compare import per_session
    from agentrec.retrieval.embedders import get_embedder, item_embeddings
    from agentrec.retrieval.index import CatalogueIndex

    out, ranks = quality_rows(args, sizes, QUALITY_EMBEDDER)  # prepares ml-100k first if needed
    out["seed_averaged"] = {}
    for metric in ("recall@20", "mrr@20"):  # bf16 - fp32, each session's metric averaged over the seeds
        values = {name: np.mean([per_session(r, metric) for r, row in zip(ranks, QUALITY_EMBEDDER) if row[2] == name],
                                axis=0) for name in ("minilm", "minilm+bf16")}
        diff = values["minilm+bf16"] - values["minilm"]
        lo, hi = bootstrap_interval(diff)
        out["seed_averaged"][metric] = {"fp32": float(values["minilm"].mean()), "bf16": float(values["minilm+bf16"].mean()),
                                        "point": float(diff.mean()), "lo": float(lo), "hi": float(hi)}
    dataset = PreparedDataset.load(args.work / "ml-100k")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    titles = dataset.titles()
    sources = rng.choice(dataset.n_items, min(sizes.queries, dataset.n_items), replace=False) + 1
    queries = [perturb(titles[i - 1], rng) for i in sources]
    found = {}
    for name in ("minilm", "minilm+bf16"):
        embedder = get_embedder(name)
        table, seconds = timed(item_embeddings, dataset, embedder, progress=False)
        store = args.work / "quality" / f"index-{name}"
        shutil.rmtree(store, ignore_errors=True)
        index = CatalogueIndex.build(dataset, embedder, store=store, progress=False)
        vectors = embedder.embed(queries)
        found[name] = {"table": table, "exact": index.exact_match(vectors, 100).item_ids,
                       "chroma": index.match_vectors(vectors, 100).item_ids, "embed_s": seconds}
    reference = found["minilm"]["exact"]
    cosine = (found["minilm"]["table"][1:] * found["minilm+bf16"]["table"][1:]).sum(1)
    out["index"] = {
        "queries": len(queries), "items": dataset.n_items,
        "item_cosine": {"mean": float(cosine.mean()), "min": float(cosine.min())},
        **{f"{name}:{kind}": {"recall@100": recall(found[name][kind], reference),
                               "own_first": float(np.mean(found[name][kind][:, 0] == sources))}
           for name in found for kind in ("exact", "chroma")},
    }
    return out


# ============================================================================================ driver
def run_child(step: str, args) -> dict:
    """Run one step in a child process; its wall, CPU and peak RSS come from ``os.wait4``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--work", str(args.work),
               "--threads", str(args.threads), "--memory-mb", str(args.memory_mb)] + (["--quick"] if args.quick else [])
    load = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=HERE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"step {step} failed with exit code {code}")
    path = args.work / "results" / f"{step}.json"
    result = json.loads(path.read_text())
    result["process"] = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                         "peak_rss_mib": usage.ru_maxrss / 1024, "load_start": load, "load_end": os.getloadavg()[0]}
    path.write_text(json.dumps(result, indent=2))
    print(f"== {step}: {wall:.0f} s wall, {result['process']['cpu_s']:.0f} CPU s, "
          f"peak {result['process']['peak_rss_mib']:,.0f} MiB", flush=True)
    return result


def child(step: str, args) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sizes = QUICK if args.quick else Sizes()
    if step in TRAIN_RUNS:
        result = step_train(args, sizes, step)
    elif step in EVALUATE_RUNS:
        result = step_evaluate(args, sizes, step)
    else:
        result = globals()[f"step_{step.replace('-', '_')}"](args, sizes)
    result["sizes"] = asdict(sizes)
    (args.work / "results").mkdir(parents=True, exist_ok=True)
    (args.work / "results" / f"{step}.json").write_text(json.dumps(result, indent=2, default=float))


# ============================================================================================ report
def hms(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def interval(difference: dict | None, metric: str) -> str:
    """``+1.23 [-0.45, +2.34]``: a paired difference in points with its interval, or ``-`` for none."""
    if not difference:
        return "-"
    d = difference[metric]
    return f"{100 * d['point']:+.2f} [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]"


def embed_estimates(e: dict) -> dict:
    """Whole-catalogue embedding times: wall at the measured rates, and CPU at the measured CPU rates."""
    n = e["items"]
    cpu_rate = e["embedded"] / e["embed_cpu_s"] if "embed_cpu_s" in e else e["probe"]["bf16@1"]["texts_per_cpu_s"]
    fp32 = e["probe"][f"fp32@{e['threads']}"]
    return {"bf16_wall": n / e["items_per_s"], "bf16_cpu": n / cpu_rate,
            "fp32_wall": n / fp32["texts_per_s"], "fp32_cpu": n / fp32["texts_per_cpu_s"]}


def epoch_estimates(t: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of one epoch and its validation: training scaled to the whole epoch; validation's
    CPU time taken at training's CPU/wall ratio (it was timed in wall seconds only)."""
    scale = t["epoch_samples"] / t["samples"]
    return (t["train_s"] * scale + t["valid_s"],
            t["train_cpu_s"] * scale + t["valid_s"] * t["train_cpu_s"] / t["train_s"])


def hour_section(r: dict) -> list[str]:
    """What takes more than an hour here, what dominates it and the option that cuts it, from the results."""
    lines = ["## What takes more than an hour here, and what cuts it", ""]
    full, b256, sampled = (r.get(s) for s in ("train-niser-full", "train-niser-sampled-b256", "train-niser-sampled"))
    if full:
        f = full["profile"]
        share = (f["loss"] + f["backward"]) / sum(f.values())
        wall, cpu = epoch_estimates(full)
        text = (f"- **Training with the full softmax: {hms(wall)} per NISER epoch here ({hms(cpu)} of CPU).** Every "
                f"step scores the batch against all {r.get('prepare', {}).get('items', 0):,} "
                f"items and back-propagates through that product: the loss and its backward are {share:.0%} of a "
                f"step ({sum(f.values()):.2f} s for 256 samples).")
        if b256 and sampled:
            g, h = b256["profile"], sampled["profile"]
            w1, c1 = epoch_estimates(b256)
            w2, c2 = epoch_estimates(sampled)
            dense = (h["backward"] + h["optimiser"]) / sum(h.values())
            text += (f" `--negatives 4096` (sampled softmax: each batch against its own targets and 4,096 uniform "
                     f"items, logQ-corrected) cuts a step of 256 to {sum(g.values()):.2f} s: {hms(w1)} per epoch "
                     f"({hms(c1)} CPU). What is left is the same for every batch size: the item table's gradient is "
                     f"dense (all {r.get('prepare', {}).get('items', 0):,} x 64 rows) and Adam updates every row "
                     f"(backward and optimiser: {dense:.0%} of a step of 1,024), so `--batch-size 1024` spreads it "
                     f"over four times the samples: **one whole epoch took {hms(w2)} ({hms(c2)} CPU)**, measured, "
                     "validation included. A sparse item-table gradient with a lazy Adam would remove most of the "
                     "rest; it changes the optimiser, so it is not offered here.")
        lines += [text, ""]
    quality = r.get("quality-softmax")
    if quality:
        picked = [row for row in quality["rows"] if row.get("difference")]
        lines += ["- Quality cost, measured on MovieLens-100K (Recall@20 points, each row minus the row after "
                  f"*vs*, paired 95% interval over the {quality['test_sessions']:,} test sessions; the tables below): "
                  + "; ".join(f"{row['label']} vs {row['versus'].split(', ', 1)[1]}: {interval(row['difference'], 'recall@20')}" for row in picked)
                  + ". 16 negatives are 1% of MovieLens-100K's items, as 4,096 are of this catalogue. Batch 1024 "
                  "with compare's schedule costs more there than the sampling does: a MovieLens-100K epoch is then "
                  "95 steps, so the schedule (x0.2 every 3 epochs, at most 8, patience 2) gives it a quarter of "
                  "batch 256's steps; the *same steps* rows stretch it 4x (at most 32 epochs, x0.2 every 12, "
                  "patience 8). An M2 epoch at batch 1024 is 3,550 steps.", ""]
    semnf = r.get("train-semnf-sampled")
    if semnf:
        w, c = epoch_estimates(semnf)
        lines += [f"- SemNISER-F the same way (`--negatives 4096 --batch-size 1024`): {hms(w)} per epoch here "
                  f"({hms(c)} CPU), extrapolated from {semnf['samples'] / semnf['epoch_samples']:.0%} of it; its "
                  "full softmax costs about what NISER's does (the table above).", ""]
    if "embed" in r:
        e = embed_estimates(r["embed"])
        probe = r["embed"]["probe"]
        lines += [f"- **Embedding every item text in fp32: {hms(e['fp32_wall'])} here ({hms(e['fp32_cpu'])} CPU).** "
                  "MiniLM's forward pass is all of it (rendering the texts takes seconds). `--embedder minilm+bf16` "
                  f"(bf16 autocast) runs {probe['bf16@1']['texts_per_cpu_s'] / probe['fp32@1']['texts_per_cpu_s']:.1f}x "
                  f"as fast per CPU-second: {hms(e['bf16_wall'])} here ({hms(e['bf16_cpu'])} CPU), with vectors "
                  f"whose cosine to fp32's is {r['embed']['cosine_bf16_fp32']['mean']:.5f} (quality cost below). Two "
                  "threads were slower than one on this shared machine (the probe table). Tried and not offered "
                  "(a one-off probe on 1,000 of these texts on the same day, outside this script, against fp32 torch "
                  "at 69 texts/s and bf16 at 190): int8 dynamic quantisation of MiniLM's linear layers "
                  "(`torch.ao.quantization.quantize_dynamic`) 235 texts/s but vectors at cosine 0.93 to fp32's on "
                  "average (0.89 at worst); ONNX Runtime 1.32 on the model exported with `torch.onnx.export` 50 "
                  "texts/s in fp32 and 96 in int8 (cosine 0.95). sentence-transformers' ONNX and OpenVINO backends "
                  "need `optimum`, which agentrec does not install (not measured); the ONNX one runs the same ONNX "
                  "Runtime as above. OpenVINO was not tried.", ""]
    if "index" in r:
        x = r["index"]
        lines += [f"- The Chroma index of every item: {hms(x['whole_catalogue_build_s'])} here, extrapolated from "
                  f"{x['indexed']:,} items as n log n (HNSW inserts); recall@100 {x['recall@100']:.3f} against "
                  "exact search at that size.", ""]
    return lines


def markdown(results: dict, args) -> str:
    import torch
    from eval_speed import _cpu_name

    r = results
    lines = [f"# Amazon-M2 scale on one 2-core machine ({time.strftime('%Y-%m-%d')})", ""]
    if "prepare" in r:
        p = r["prepare"]
        lines += [
            f"Synthetic data at Amazon-M2 (UK) size: {p['items']:,} items in the catalogue ({p['generated_items']:,} "
            f"generated; items nobody clicked are not in it), {p['sessions']:,} sessions of mean length "
            f"{p['mean_length']} ({p['events']:,} clicks): {p['train_sessions']:,} training sessions "
            f"({p['train_samples']:,} next-item samples, every prefix), {p['valid_sessions']:,} validation and "
            f"{p['test_sessions']:,} test sessions (the most recent; the M2 protocol, last item only).", ""]
    lines += [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({_cpu_name()}), 24 GB, torch {torch.__version__}, "
        f"{args.threads} torch thread(s) unless a row says otherwise. The machine was shared with other engineers' "
        "jobs (load average per step below), so wall times are noisy; CPU seconds move less, and the evaluation "
        "rates are set beside a limit measured in the same process.", "",
        "## Every step", "",
        "| step | wall | CPU | peak RSS | load | throughput | whole step, all items and sessions: wall here (CPU) | "
        "measured on |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]

    def proc(step):
        q = r[step]["process"]
        return (f"{hms(q['wall_s'])} | {hms(q['cpu_s'])} | {q['peak_rss_mib'] / 1024:.1f} GiB | "
                f"{q['load_start']:.1f}-{q['load_end']:.1f}")

    if "prepare" in r:
        lines.append(f"| prepare (generate, M2 protocol, write) | {proc('prepare')} | "
                     f"{r['prepare']['train_samples'] / r['prepare']['process']['wall_s']:,.0f} samples/s | "
                     f"{hms(r['prepare']['process']['wall_s'])} ({hms(r['prepare']['process']['cpu_s'])}) | "
                     "everything |")
    if "embed" in r:
        e = embed_estimates(r["embed"])
        lines.append(f"| embed item texts, `{EMBEDDER}` | {proc('embed')} | {r['embed']['items_per_s']:.0f} items/s | "
                     f"**{hms(e['bf16_wall'])} ({hms(e['bf16_cpu'])})**, extrapolated; fp32: {hms(e['fp32_wall'])} "
                     f"({hms(e['fp32_cpu'])}) | {r['embed']['embedded']:,} items "
                     f"({r['embed']['embedded'] / r['embed']['items']:.0%}); fp32 on {r['embed']['probe_texts']:,} |")
    if "index" in r:
        x = r["index"]
        cpu = f" ({hms(x['build_cpu_s'] * x['growth'])})" if "build_cpu_s" in x else ""
        lines.append(f"| Chroma index (HNSW, on disk) | {proc('index')} | {x['indexed'] / x['build_s']:.0f} items/s; "
                     f"recall@100 {x['recall@100']:.3f} | **{hms(x['whole_catalogue_build_s'])}{cpu}**, "
                     f"{x['whole_catalogue_disk_mib'] / 1024:.1f} GiB on disk, extrapolated (n log n) | "
                     f"{x['indexed']:,} items |")
    for step in TRAIN_RUNS:
        if step not in r:
            continue
        t = r[step]
        how = "full softmax" if t["negatives"] is None else f"`--negatives {t['negatives']}`"
        measured = (f"{t['samples']:,} samples ({t['samples'] / t['epoch_samples']:.1%} of the epoch)"
                    if t["extrapolated"] else "the whole epoch")
        wall, cpu = epoch_estimates(t)
        lines.append(f"| train {t['model']}, one epoch, {how}, batch {t['batch_size']}, {t['precision']} | "
                     f"{proc(step)} | {t['samples_per_s']:,.0f} samples/s ({t['samples'] / t['train_cpu_s']:,.0f} "
                     f"per CPU-s) | **{hms(wall)} ({hms(cpu)})**" + (", extrapolated" if t["extrapolated"] else "")
                     + f" | {measured} |")
    for step in EVALUATE_RUNS:
        if step not in r:
            continue
        v = r[step]
        lines.append(f"| evaluate {v['model'].replace('train-', '')} on all {v['sessions']:,} test sessions x "
                     f"{v['items']:,} items (fp32, then bf16) | {proc(step)} | "
                     f"{v['fp32']['sessions_per_s']:,.0f} / {v['bf16']['sessions_per_s']:,.0f} sessions/s | "
                     f"{hms(v['fp32']['seconds'])} / {hms(v['bf16']['seconds'])} | everything |")
    lines += [
        "",
        "*Wall* and *CPU* are the step's whole process (user + system time; loading the dataset included), *peak "
        "RSS* its maximum (`os.wait4`), *load* the load average (of 2 cores) when it started and ended. The *whole "
        "step* column is what the step takes for every item or sample: wall time at the measured rate under this "
        "run's load, and in brackets the CPU time at the measured CPU rate, which is about what one uncontended "
        "core takes (every step runs one torch thread). Training rows: the epoch's training time (extrapolated "
        "from the measured samples where marked) plus one validation pass over every validation session.", ""]
    lines += hour_section(r)

    if any(s in r for s in EVALUATE_RUNS):
        lines += ["## Evaluation against the matrix-product limit (same process)", "",
                  "| model | d | precision | limit GFLOP/s | evaluation GFLOP/s | ratio | sessions/s | seconds | "
                  "Recall@20 | MRR@20 |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for step in EVALUATE_RUNS:
            if step not in r:
                continue
            v = r[step]
            for p in ("fp32", "bf16"):
                e = v[p]
                lines.append(f"| {v['model'].replace('train-', '')} | {v['d']} | {p} | {e['limit_gflops']:.1f} | "
                             f"{e['gflops']:.1f} | {e['gflops'] / e['limit_gflops']:.0%} | {e['sessions_per_s']:,.0f} | "
                             f"{e['seconds']:.1f} | {pct(e['recall@20'])} | {pct(e['mrr@20'])} |")
        first = r[next(s for s in EVALUATE_RUNS if s in r)]
        lines += ["", f"GFLOP/s count the product alone, 2 x {first['sessions']:,} sessions x d x "
                  f"{first['items'] + 1:,} items ({first['gflop']:,.0f} GFLOP); the *limit* is the bare (B x d) @ "
                  f"(d x items) product, the better of the whole width into one buffer and a block of columns at a time "
                  f"into a 4 MB one (`eval_speed.bare_product_rate`, median of 5), "
                  f"B the chunk the ranking uses ({first['fp32']['chunk_rows']} sessions in fp32, "
                  f"{first['bf16']['chunk_rows']} in bf16, {first['memory_mb']:.0f} MB of scores), measured just "
                  "before each evaluation. The evaluation's time includes encoding the sessions. Ranks identical in "
                  "fp32 and bf16: " + ", ".join(f"{r[s]['model'].replace('train-', '')} "
                                              f"{'yes' if r[s]['ranks_identical'] else '**no**'}"
                                              for s in EVALUATE_RUNS if s in r) + ".", ""]

    train_steps = [s for s in TRAIN_RUNS if s in r]
    if train_steps:
        lines += ["## Where a training step's time goes", "",
                  "Median seconds per step over a few steps of a fresh model (batch building, the loss with its "
                  "forward pass, backward, Adam), measured in the training step's process before it trains:", "",
                  "| run | batch | building | loss (forward) | backward | optimiser | total | samples/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for step in train_steps:
            t = r[step]
            f = t["profile"]
            total = sum(f.values())
            how = "full softmax" if t["negatives"] is None else f"{t['negatives']} negatives"
            lines.append(f"| {t['model']}, {how} | {t['batch_size']} | {f['batch']:.3f} | {f['loss']:.3f} | "
                         f"{f['backward']:.3f} | {f['optimiser']:.3f} | {total:.3f} | "
                         f"{t['batch_size'] / total:,.0f} |")
        lines.append("")

    for step, title in (("quality-softmax", "Quality cost of sampled softmax on MovieLens-100K"),
                        ("quality-embedder", "Quality cost of `minilm+bf16` on MovieLens-100K")):
        if step not in r:
            continue
        q = r[step]
        lines += [f"## {title}", "",
                  f"{q['dataset']}, leave-one-out, {q['n_items']:,} items, {q['train_samples']:,} training samples; "
                  f"compare's training defaults (at most {q['sizes']['quality_epochs']} epochs, patience 2, Adam lr "
                  "0.005 x0.2 every 3 epochs, weight decay 0, d = 64, bf16 steps), epoch selected on validation "
                  f"Recall@100, test ranked once against every item ({q['test_sessions']:,} sessions). Metrics in %; "
                  "the difference is paired over the same test sessions, with its 95% bootstrap interval."
                  + (" Rows marked *same steps*: at most 32 epochs, x0.2 every 12, patience 8 (batch 1024 then gets "
                     "as many steps at each learning rate as batch 256 does with the defaults)."
                     if any("same steps" in row["label"] for row in q["rows"]) else ""), "",
                  "| run | best epoch (of) | train wall | samples/CPU-s | test R@20 | test MRR@20 | test R@100 | "
                  "R@20 - baseline [95%] | MRR@20 - baseline [95%] | baseline |",
                  "|---|---|---:|---:|---:|---:|---:|---|---|---|"]
        for row in q["rows"]:
            lines.append(f"| {row['label']} | {row['best_epoch']} ({row['epochs']}) | {hms(row['train_wall_s'])} | "
                         f"{row['samples_per_cpu_s']:,.0f} | {pct(row['test']['recall@20'])} | "
                         f"{pct(row['test']['mrr@20'])} | {pct(row['test']['recall@100'])} | {interval(row.get('difference'), 'recall@20')} | "
                         f"{interval(row.get('difference'), 'mrr@20')} | {row.get('versus', '(baseline)')} |")
        if "seed_averaged" in q:
            seeds = len({row["seed"] for row in q["rows"]})
            lines += ["", f"Averaged over the {seeds} training seeds (each session's metric averaged over the seeds, "
                      "then paired over sessions): " + "; ".join(
                          f"{m.replace('recall', 'Recall').replace('mrr', 'MRR')} fp32 {pct(v['fp32'])}, bf16 "
                          f"{pct(v['bf16'])}, bf16 - fp32 {100 * v['point']:+.2f} [{100 * v['lo']:+.2f}, "
                          f"{100 * v['hi']:+.2f}]" for m, v in q["seed_averaged"].items()) + "."]
        if "index" in q:
            x = q["index"]
            lines += ["", f"Index recall on {x['queries']:,} perturbed titles ({x['items']:,} items, full item "
                      "texts): recall@100 against the exact fp32 top-100, and how often the perturbed title's own "
                      f"item comes first. Item vectors: cosine of bf16 to fp32 {x['item_cosine']['mean']:.5f} on "
                      f"average, {x['item_cosine']['min']:.5f} at worst.", "",
                      "| embedder | search | recall@100 vs exact fp32 | own item first |", "|---|---|---:|---:|"]
            for key in ("minilm:exact", "minilm:chroma", "minilm+bf16:exact", "minilm+bf16:chroma"):
                name, kind = key.split(":")
                lines.append(f"| {name} | {'exact' if kind == 'exact' else 'Chroma HNSW'} | "
                             f"{x[key]['recall@100']:.4f} | {x[key]['own_first']:.3f} |")
        lines.append("")

    if "embed" in r:
        e = r["embed"]
        lines += ["## Embedding speed (probe)", "",
                  f"{e['probe_texts']:,} item texts of the M2-size catalogue (mean {e['mean_chars']:.0f} characters, "
                  f"{e['mean_tokens']:.0f} tokens), all-MiniLM-L6-v2, batches of 64; bf16 = `{EMBEDDER}` (bf16 "
                  f"autocast). Cosine of bf16 to fp32 vectors: {e['cosine_bf16_fp32']['mean']:.5f} on average, "
                  f"{e['cosine_bf16_fp32']['min']:.5f} at worst. Rendering all {e['items']:,} item texts took "
                  f"{e['render_s']:.0f} s.", "",
                  "| precision | threads | texts/s | texts/CPU-s |", "|---|---:|---:|---:|"]
        for key, v in e["probe"].items():
            name, threads = key.split("@")
            lines.append(f"| {name} | {threads} | {v['texts_per_s']:.0f} | {v['texts_per_cpu_s']:.0f} |")
        lines.append("")
    if "index" in r:
        x = r["index"]
        h = x["hnsw"]
        lines += ["## The index", "",
                  f"`CatalogueIndex.build` of {x['indexed']:,} items (`{EMBEDDER}` vectors from the embed step's cache; "
                  f"HNSW cosine, ef_construction {h['ef_construction']}, max_neighbors {h['max_neighbors']}, ef_search "
                  f"{h['ef_search']}): {x['build_s']:.0f} s, {x['disk_mib']:,.0f} MiB on disk. {x['queries']:,} "
                  f"perturbed titles (`index_recall.perturb`): recall@100 against exact search {x['recall@100']:.4f}; "
                  f"own item first {x['own_first_chroma']:.3f} (exact: {x['own_first_exact']:.3f}); all queries in "
                  f"one call {x['chroma_s']:.2f} s (exact: {x['exact_s']:.2f} s). The whole catalogue's build is "
                  f"extrapolated as n log n: x{x['growth']:.1f}.", ""]
    lines += [f"Command: `python benchmarks/scale_m2.py --work {args.work} --out benchmarks/results/scale_m2.md` "
              "(every step; `--steps NAME,...` runs some again, reusing finished MovieLens-100K trainings, and "
              "`--report-only` rewrites this file from the stored results).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/agentrec-scale-m2"),
                        help="datasets, vectors, indexes, runs and per-step results (several GB; not the repository)")
    parser.add_argument("--steps", default="all", help=f"comma-separated steps, or all: {', '.join(STEPS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every step")
    parser.add_argument("--memory-mb", type=float, default=256.0, help="evaluation's budget for one chunk of scores")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every step")
    parser.add_argument("--out", type=Path, default=None, help=f"markdown file (default {RESULTS}, or none with --quick)")
    parser.add_argument("--report-only", action="store_true", help="write the markdown from the stored results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.argv = [a for a in sys.argv[1:]]
    args.work = args.work.resolve()
    if str(args.work).startswith(str(HERE.parent)):
        raise SystemExit(f"--work {args.work} is inside the repository; use a folder outside it (e.g. /tmp)")
    if args.child:
        child(args.child, args)
        return
    steps = list(STEPS) if args.steps == "all" else [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for step in steps:
            run_child(step, args)
    results = {p.stem: json.loads(p.read_text()) for p in sorted((args.work / "results").glob("*.json"))}
    text = markdown(results, args)
    out = args.out or (None if args.quick else RESULTS)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    print(text)


if __name__ == "__main__":
    main()
