"""agentrec against RecBole 1.2.1 on the same samples: GRU4Rec, NARM, SR-GNN (and our NISER).

Usage::

    python benchmarks/recbole_peer.py --data /tmp/d/ml100k --models gru4rec,narm,srgnn,niser \\
        --embedding-size 64 --batch-size 256 --lr 1e-3 --epochs 20 --patience 3 --threads 1

Both sides train on exactly our split: the prepared dataset's train/valid/test samples are written as
RecBole benchmark atomic files (``NAME.{train,valid,test}.inter`` with ``benchmark_filename``), one
row per sample with the history as ``item_id_list`` (oldest first, at most 50 items), so RecBole
neither re-splits nor re-augments; an ``NAME.item`` file lists the whole catalogue, so both sides rank
the same items. Each side reports a digest of every sample it built and the two must match.

RecBole lives in its own virtual environment (``--recbole-venv``, created on first use: torch 2.13.0
CPU, recbole 1.2.1, numpy < 2, pandas < 3) and runs through ``benchmarks/_recbole_runner.py``; it is
never a dependency of agentrec. Every model of either side trains in a process of its own, so the
peak RSS of each row is that one model's (data loading included).

Throughput is training samples per second over the training loop only (no validation, no
checkpointing), the median over epochs. RecBole's import switches autograd anomaly detection on for
the whole process; the runner switches it off, and ``--as-shipped`` adds one epoch with it left on.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().with_name("_recbole_runner.py")
RECBOLE_NAMES = {"gru4rec": "GRU4Rec", "narm": "NARM", "srgnn": "SRGNN"}  # ours -> RecBole class
OURS_ONLY = {"niser": "srgnn"}  # compared with RecBole's and our model of this name
NAMES = {"gru4rec": "GRU4Rec", "narm": "NARM", "srgnn": "SR-GNN", "niser": "NISER"}
MAX_HISTORY = 50  # our model default and RecBole's MAX_ITEM_LIST_LENGTH
RECBOLE_DATASET = "peer"  # atomic-file name; not a RecBole built-in, so no dataset yaml leaks in
VENV_PINS = (["torch==2.13.0", "recbole==1.2.1"], ["torch==2.13.0", "numpy<2", "pandas<3"])


# ----- the RecBole environment ---------------------------------------------------------------------

def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def recbole_versions(venv: Path) -> dict[str, str] | None:
    if not venv_python(venv).exists():
        return None
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({p: m.version(p) for p in ('recbole', 'torch', 'numpy', 'pandas')}))")
    run = subprocess.run([str(venv_python(venv)), "-c", code], capture_output=True, text=True)
    return json.loads(run.stdout) if run.returncode == 0 else None


def ensure_recbole_venv(venv: Path) -> dict[str, str]:
    """Create or repair RecBole's virtual environment; return the installed versions.

    ``torch==2.13.0`` is pinned in every pip call: it resolves to the local CPU wheel, and any pip
    call that may choose torch on its own downloads the CUDA build instead.
    """
    versions = recbole_versions(venv)
    if versions and versions["recbole"] == "1.2.1" and versions["torch"].startswith("2.13.0") \
            and int(versions["numpy"].split(".")[0]) < 2:
        return versions
    if not venv_python(venv).exists():
        print(f"creating RecBole's virtual environment in {venv}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for pins in VENV_PINS:
        subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "-q", *pins], check=True)
    versions = recbole_versions(venv)
    if not versions or versions["recbole"] != "1.2.1":
        raise SystemExit(f"could not install recbole==1.2.1 into {venv}")
    return versions


# ----- the shared samples --------------------------------------------------------------------------

def train_subset(n: int, k: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded ``k``-subsample of ``n`` training samples (None: all of them)."""
    if k is None or k >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def sample_lines(samples, max_history: int = MAX_HISTORY) -> list[str]:
    """One ``"h1 h2 ...|target"`` line per sample, history truncated to its most recent items."""
    lines = []
    for i in range(len(samples)):
        history = samples.history_of(i)[-max_history:]
        lines.append(" ".join(map(str, history.tolist())) + "|" + str(int(samples.target[i])))
    return lines


def samples_digest(samples) -> str:
    """sha256 of the sorted sample lines; the runner computes the same from RecBole's tensors."""
    return hashlib.sha256("\n".join(sorted(sample_lines(samples))).encode()).hexdigest()


def write_recbole_files(splits: dict, n_items: int, folder: Path) -> None:
    """RecBole benchmark atomic files: one row per sample, a sample id per row as its user id."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, samples in splits.items():
        with open(folder / f"{RECBOLE_DATASET}.{name}.inter", "w") as handle:
            handle.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
            for i, line in enumerate(sample_lines(samples)):
                history, target = line.split("|")
                handle.write(f"{name}-{i}\t{history}\t{target}\n")
    with open(folder / f"{RECBOLE_DATASET}.item", "w") as handle:
        handle.write("item_id:token\n" + "".join(f"{i}\n" for i in range(1, n_items + 1)))


def recbole_config(args, model: str, work: Path) -> dict:
    config = {
        "data_path": str(work),
        "checkpoint_dir": str(work / "saved"),
        "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id"]},
        "alias_of_item_id": ["item_id_list"],  # history tokens share the item id space
        "MAX_ITEM_LIST_LENGTH": MAX_HISTORY,
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "group_by": "user", "order": "TO", "mode": "full"},
        "metrics": ["Recall", "MRR", "NDCG"],
        "topk": [10, 20, 100],
        "valid_metric": "Recall@100",
        "metric_decimal_place": 6,
        "epochs": args.epochs,
        "train_batch_size": args.batch_size,
        "learning_rate": args.lr,
        "weight_decay": 0.0,
        # RecBole stops when more than stopping_step epochs in a row did not improve; we stop after
        # `patience` such epochs, so patience - 1 stops both at the same epoch.
        "stopping_step": args.patience - 1,
        "embedding_size": args.embedding_size,
        "seed": args.seed,
        "reproducibility": True,
        "use_gpu": False,
        "show_progress": False,
        "worker": 0,
        "log_wandb": False,
    }
    if model in ("gru4rec", "narm"):
        config["hidden_size"] = args.embedding_size
    return config


# ----- the two sides -------------------------------------------------------------------------------

def reusable(args, work: Path, tag: str, spec: dict) -> dict | None:
    """With ``--resume``: the earlier result of an identical spec in the work folder, if any."""
    spec_path, out_path = work / f"{tag}.spec.json", work / f"{tag}.json"
    if args.resume and spec_path.exists() and out_path.exists() and json.loads(spec_path.read_text()) == spec:
        result = json.loads(out_path.read_text())
        if "paired" in tag and median_cpu_sps(result) is None:
            return None  # a throughput pair recorded before CPU time was measured: time it again
        print(f"reusing {out_path}", file=sys.stderr, flush=True)
        args.reused.append(tag)
        return result
    return None


def run_recbole(args, model: str, work: Path, *, anomaly: bool = False, mode: str = "full", tag: str = "") -> dict:
    tag = f"recbole-{model}-{tag or ('shipped' if anomaly else 'fair')}"
    spec = {"model": RECBOLE_NAMES[model], "dataset": RECBOLE_DATASET, "config": recbole_config(args, model, work),
            "threads": args.threads, "anomaly": anomaly, "mode": mode, "out": str(work / f"{tag}.json")}
    if (earlier := reusable(args, work, tag, spec)) is not None:
        return earlier
    (work / f"{tag}.spec.json").write_text(json.dumps(spec, indent=2))
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONUNBUFFERED": "1"}
    subprocess.run([str(venv_python(args.recbole_venv)), str(RUNNER), str(work / f"{tag}.spec.json")],
                   cwd=work, env=env, check=True)
    return json.loads((work / f"{tag}.json").read_text())


def run_ours(args, model: str, work: Path, subset_path: Path | None, *, epochs: int | None = None,
             tag: str = "") -> dict:
    tag = f"ours-{model}" + (f"-{tag}" if tag else "")
    spec = {"data": str(args.data), "model": model, "subset": str(subset_path) if subset_path else None,
            "epochs": epochs or args.epochs, "batch_size": args.batch_size, "lr": args.lr, "patience": args.patience,
            "embedding_size": args.embedding_size, "threads": args.threads, "seed": args.seed,
            "out": str(work / f"{tag}.json")}
    if (earlier := reusable(args, work, tag, spec)) is not None:
        return earlier
    (work / f"{tag}.spec.json").write_text(json.dumps(spec, indent=2))
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker-spec", str(work / f"{tag}.spec.json")],
                   env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=True)
    return json.loads((work / f"{tag}.json").read_text())


def paired_throughput(args, model: str, work: Path, subset_path: Path | None) -> dict:
    """One training epoch per side, back to back, ``args.paired_throughput`` times, alternating who goes
    first: on a shared machine the two sides then see about the same load."""
    peer = OURS_ONLY.get(model, model)
    ours, recbole, loads = [], [], [load_average().split()[0]]
    for rep in range(args.paired_throughput):
        sides = [lambda: ours.append(run_ours(args, model, work, subset_path, epochs=1, tag=f"paired{rep}")),
                 lambda: recbole.append(run_recbole(args, peer, work, mode="throughput", tag=f"paired{rep}"))]
        for side in sides if rep % 2 == 0 else sides[::-1]:
            side()
            loads.append(load_average().split()[0])
    return {"ours": [median_sps(r) for r in ours], "recbole": [median_sps(r) for r in recbole],
            "ours_cpu": [median_cpu_sps(r) for r in ours], "recbole_cpu": [median_cpu_sps(r) for r in recbole],
            "peer": peer, "loads": loads}


def ours_worker(spec_path: str) -> None:
    """Train and test one agentrec model in this process (started by ``run_ours``)."""
    import logging

    from agentrec.data.dataset import PreparedDataset
    from agentrec.models import model_class
    from agentrec.training.runs import evaluate_model
    from agentrec.training.trainer import TrainConfig, train_model

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    dataset = PreparedDataset.load(spec["data"])
    if spec["subset"]:
        dataset.train = dataset.train.subset(np.load(spec["subset"]))
    cls = model_class(spec["model"])
    size = spec["embedding_size"]
    hidden = {"hidden_size": size} if spec["model"] in ("gru4rec", "narm") else {}
    model = cls(dataset.n_items, cls.Config(embedding_size=size, max_history=MAX_HISTORY, **hidden))
    config = TrainConfig(epochs=spec["epochs"], batch_size=spec["batch_size"], lr=spec["lr"], patience=spec["patience"],
                         select_metric="recall@100", threads=spec["threads"], lr_gamma=1.0, weight_decay=0.0,
                         seed=spec["seed"])
    info = train_model(model, dataset, config, progress=False)
    t0 = time.perf_counter()
    test = evaluate_model(model, dataset, "test")
    test_seconds = time.perf_counter() - t0
    import torch

    result = {
        "model": spec["model"],
        "model_config": info.model_config,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "n_items_ranked": dataset.n_items,
        "train_samples": info.extra["train_samples"],
        "train_sha256": samples_digest(dataset.train),
        "best_epoch": info.best_epoch,
        "valid": info.valid,
        "test": test.metrics,
        "test_seconds": test_seconds,
        "test_protocol": test.describe(),
        "median_samples_per_second": info.extra["median_samples_per_second"],
        "history": info.history,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_seconds": time.perf_counter() - started,
    }
    Path(spec["out"]).write_text(json.dumps(result, indent=2, default=float))


# ----- the report ----------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def median_sps(result: dict) -> float:
    if "median_samples_per_second" in result:
        return result["median_samples_per_second"]
    return float(np.median([e["samples_per_second"] for e in result["history"]]))


def median_cpu_sps(result: dict) -> float | None:
    """Training samples per CPU-second of the process (None for results recorded before it was measured)."""
    values = [e.get("samples_per_cpu_second") for e in result["history"]]
    return float(np.median(values)) if values and None not in values else None


def table(title: str, rows: list[tuple[str, dict | None, str]], reference: dict | None) -> list[str]:
    """One markdown table; ``rows`` are (label, result, kind) with kind "full" or "throughput"."""
    lines = [f"### {title}", "",
             "| side | Recall@20 | MRR@20 | NDCG@20 | Recall@100 | best epoch (of run) | train samples/s "
             "| ratio to RecBole | train samples/CPU-s | test eval s | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, result, kind in rows:
        if result is None:
            continue
        sps = median_sps(result)
        ratio = f"{sps / median_sps(reference):.2f}" if reference else "-"
        cpu = f"{c:,.0f}" if (c := median_cpu_sps(result)) is not None else "-"
        if kind == "full":
            test = result["test"]
            metrics = " | ".join(f"{100 * test[k]:.2f}" for k in ("recall@20", "mrr@20", "ndcg@20", "recall@100"))
            lines.append(f"| {label} | {metrics} | {result['best_epoch']} ({len(result['history'])}) | {sps:,.0f} "
                         f"| {ratio} | {cpu} | {result['test_seconds']:.2f} | {result['peak_rss_mb']:,.0f} |")
        else:
            lines.append(f"| {label} | - | - | - | - | - (1) | {sps:,.0f} | {ratio} | {cpu} | - "
                         f"| {result['peak_rss_mb']:,.0f} |")
    return lines + [""]


def targets(results: dict, models: list[str]) -> list[str]:
    """The issue's targets, checked: quality (Recall@20 and MRR@20 at most one point below RecBole's same
    model), training speed (at least 2x, per CPU-second from the paired runs) and test evaluation time."""
    lines = ["### Against the targets", "",
             "| agentrec model | RecBole model | Recall@20 diff (points) | MRR@20 diff (points) | quality target "
             "| speed ratio (CPU, paired) | speed target (2x) | test eval s, ours / RecBole | eval target |",
             "|---|---|---:|---:|---|---:|---|---:|---|"]
    for model in models:
        peer = OURS_ONLY.get(model, model)
        ours, rb = results.get(("ours", model)), results.get(("recbole", peer))
        if ours is None or rb is None:
            continue
        d20 = 100 * (ours["test"]["recall@20"] - rb["test"]["recall@20"])
        dmrr = 100 * (ours["test"]["mrr@20"] - rb["test"]["mrr@20"])
        paired = results.get(("paired", model))
        ratio = None
        if paired and None not in paired["ours_cpu"] + paired["recbole_cpu"]:
            ratio = float(np.median(paired["ours_cpu"])) / float(np.median(paired["recbole_cpu"]))
        mark = lambda ok: "met" if ok else "**not met**"
        lines.append(
            f"| {NAMES[model]} | {NAMES[peer]} | {d20:+.2f} | {dmrr:+.2f} | {mark(d20 >= -1 and dmrr >= -1)} "
            f"| {'-' if ratio is None else f'{ratio:.2f}'} | {'-' if ratio is None else mark(ratio >= 2)} "
            f"| {ours['test_seconds']:.2f} / {rb['test_seconds']:.2f} | {mark(ours['test_seconds'] <= rb['test_seconds'])} |")
    return lines + [""]


def report(args, dataset, header: dict, results: dict, models: list[str]) -> str:
    counts = dataset.stats.get("counts", {})
    protocol = dataset.stats.get("protocol", {})
    params = ", ".join(f"{k}={v}" for k, v in protocol.get("params", {}).items())
    n_train = header["train_samples"]
    lines = [
        f"# agentrec vs RecBole 1.2.1 on {dataset.name}",
        "",
        f"Written by `benchmarks/recbole_peer.py` on {header['date']}.",
        "",
        f"- **Data**: `{args.data}` (`{dataset.name}`, fingerprint `{dataset.fingerprint[:12]}`), protocol "
        f"**{protocol.get('name', '?')}** ({params}).",
        f"- **Samples**: train {n_train:,}"
        + (f" (seeded subsample of {len(dataset.train):,})" if n_train != len(dataset.train) else "")
        + f" / valid {len(dataset.valid):,} / test {len(dataset.test):,} "
        f"(stats.json: {counts.get('train_samples', '?')} / {counts.get('valid_samples', '?')} / "
        f"{counts.get('test_samples', '?')}). Histories keep their most recent {MAX_HISTORY} items on both sides.",
        f"- **Catalogue**: agentrec ranks {dataset.n_items:,} items (ids 1..{dataset.n_items}); RecBole ranks "
        f"{header['recbole_items']:,} (its item tokens are exactly our ids, plus its `[PAD]`, which it scores -inf). "
        "Full ranking, history items not excluded on either side; metrics are for the best-validation checkpoint "
        "on test.",
        f"- **Same samples, checked**: {header['verified']}",
        f"- **Hyper-parameters (both sides)**: embedding {args.embedding_size} (hidden {args.embedding_size} for "
        f"GRU4Rec and NARM), batch {args.batch_size}, Adam lr {args.lr:g} constant (agentrec `lr_gamma=1.0`; RecBole "
        f"has no schedule), weight decay 0, at most {args.epochs} epochs, early stopping on valid Recall@100 after "
        f"{args.patience} epochs without improvement (RecBole `stopping_step={args.patience - 1}`, which stops at "
        f"the same epoch), seed {args.seed}, CE loss over the full catalogue. Model internals are each side's "
        "defaults (GRU4Rec dropout 0.3, NARM dropouts 0.25/0.5, SR-GNN 1 step on both).",
        f"- **Threads**: {args.threads} (`torch.set_num_threads` on both sides). RecBole's autograd anomaly mode, "
        "which its import switches on, is switched off for the main rows"
        + ("; the *as shipped* rows time one epoch with it left on." if args.as_shipped else "."),
        f"- **Machine**: {os.cpu_count()} cores ({header['cpu']}), {platform.system()} {platform.machine()}, "
        f"python {platform.python_version()}; torch {header['our_torch']} (agentrec) / {header['recbole_torch']} "
        f"(RecBole venv: recbole {header['recbole_version']}, numpy {header['recbole_numpy']}). "
        f"Load average when the run started: {header['load_start']}, when it ended: {header.get('load_end', '?')} "
        "(the machine is shared, so throughput is indicative)."
        + (f" Resumed run: {', '.join(args.reused)} reused from the interrupted run in the same work folder, "
           "which used identical settings." if args.reused else ""),
        "- **Columns**: metrics in %; *train samples/s* is the median over epochs of training samples divided by "
        "the seconds of the training loop alone (batching, forward, backward, optimiser; no validation, no "
        "checkpoint); *ratio to RecBole* divides by the RecBole row of the same table; *train samples/CPU-s* divides "
        "by the CPU time of the training process instead (- where a result predates that measurement; see the "
        "paired table for the ratio to quote); *test eval s* is one "
        "full-catalogue pass over the test split; *peak RSS* is the peak of the process that loaded the data, "
        "trained and tested that one model.",
        "",
    ]
    lines += targets(results, models)
    for model in models:
        ours = results.get(("ours", model))
        if model in OURS_ONLY:
            peer = OURS_ONLY[model]
            rb = results.get(("recbole", peer))
            rows = [(f"agentrec {NAMES[model]}", ours, "full"), (f"RecBole {NAMES[peer]}", rb, "full"),
                    (f"agentrec {NAMES[peer]}", results.get(("ours", peer)), "full")]
            lines += table(f"{NAMES[model]} (agentrec only) beside SR-GNN", rows, rb)
        else:
            rb = results.get(("recbole", model))
            rows = [(f"agentrec {NAMES[model]}", ours, "full"), (f"RecBole {NAMES[model]}", rb, "full"),
                    (f"RecBole {NAMES[model]}, as shipped (anomaly mode on)", results.get(("shipped", model)),
                     "throughput")]
            lines += table(NAMES[model], rows, rb)
    paired = [(m, results[("paired", m)]) for m in models if ("paired", m) in results]
    if paired:
        lines += ["### Throughput measured in pairs", "",
                  f"Each side trains one epoch (same samples, same settings, one thread), back to back, "
                  f"{args.paired_throughput} times per model, alternating which side goes first; the table gives the "
                  "median of each side. Training loop only. *Per CPU-second* divides by the CPU time of the training "
                  "process instead of wall time: with one thread it is the compute each side needs, and it moves far "
                  "less with the load of this shared machine than wall time does, so it is the ratio to quote. The "
                  "wall-time columns are given beside it, with the load averages seen.", "",
                  "| agentrec model | RecBole model | agentrec samples/CPU-s | RecBole samples/CPU-s | **ratio (CPU)** "
                  "| agentrec samples/s (wall) | RecBole samples/s (wall) | ratio (wall) | 1-min load averages seen |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for model, p in paired:
            ours, rb = float(np.median(p["ours"])), float(np.median(p["recbole"]))
            ours_cpu, rb_cpu = float(np.median(p["ours_cpu"])), float(np.median(p["recbole_cpu"]))
            lines.append(f"| {NAMES[model]} | {NAMES[p['peer']]} | {ours_cpu:,.0f} | {rb_cpu:,.0f} "
                         f"| **{ours_cpu / rb_cpu:.2f}** | {ours:,.0f} | {rb:,.0f} | {ours / rb:.2f} "
                         f"| {' '.join(p['loads'])} |")
        lines.append("")
    return "\n".join(lines)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an agentrec prepared dataset folder")
    parser.add_argument("--models", default="gru4rec,narm,srgnn,niser",
                        help="comma-separated: gru4rec, narm, srgnn (both sides), niser (agentrec only, beside SR-GNN)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--embedding-size", type=int, default=64)
    parser.add_argument("--patience", type=int, default=3, help="epochs without improvement before stopping")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-samples", type=int, default=None,
                        help="train both sides on the same seeded subsample (quick runs)")
    parser.add_argument("--as-shipped", action="store_true",
                        help="also time one RecBole training epoch with its anomaly mode left on")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/recbole_<dataset>.md")
    parser.add_argument("--recbole-venv", type=Path, default=REPO / ".cache" / "recbole-venv")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for RecBole's files, logs and checkpoints (default: a temporary one, removed)")
    parser.add_argument("--paired-throughput", type=int, default=0, metavar="N",
                        help="also time N back-to-back pairs of single training epochs (ours, RecBole) per model")
    parser.add_argument("--resume", action="store_true",
                        help="reuse results already in --work whose settings are identical (after an interrupted run)")
    parser.add_argument("--worker-spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_spec:
        ours_worker(args.worker_spec)
        return
    if args.data is None:
        parser.error("--data is required")
    if args.resume and args.work is None:
        parser.error("--resume needs the --work folder of the interrupted run")
    if args.patience < 1:
        parser.error("--patience must be at least 1")
    args.reused = []
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in RECBOLE_NAMES and m not in OURS_ONLY]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from gru4rec, narm, srgnn, niser")

    from agentrec.data.dataset import PreparedDataset

    header = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_model(),
              "load_start": load_average()}
    versions = ensure_recbole_venv(args.recbole_venv)
    header.update(recbole_version=versions["recbole"], recbole_torch=versions["torch"], recbole_numpy=versions["numpy"])
    import torch

    header["our_torch"] = torch.__version__

    dataset = PreparedDataset.load(args.data)
    out = args.out or REPO / "benchmarks" / "results" / f"recbole_{dataset.name}.md"
    work = args.work or Path(tempfile.mkdtemp(prefix="recbole_peer_"))
    work.mkdir(parents=True, exist_ok=True)
    subset = train_subset(len(dataset.train), args.max_train_samples, args.seed)
    subset_path = None
    if subset is not None:
        subset_path = work / "train_subset.npy"
        np.save(subset_path, subset)
    splits = {"train": dataset.train.subset(subset) if subset is not None else dataset.train,
              "valid": dataset.valid, "test": dataset.test}
    empty = {name: int((s.lengths == 0).sum()) for name, s in splits.items() if (s.lengths == 0).any()}
    if empty:
        raise SystemExit(f"samples with an empty history {empty}: RecBole cannot take them (its models read "
                         "position length - 1); prepare the data so every sample has at least one history item")
    header["train_samples"] = len(splits["train"])
    write_recbole_files(splits, dataset.n_items, work / RECBOLE_DATASET)
    ours_digests = {name: samples_digest(s) for name, s in splits.items()}
    print(f"RecBole files in {work / RECBOLE_DATASET}; samples train/valid/test "
          f"{len(splits['train'])}/{len(splits['valid'])}/{len(splits['test'])}; {dataset.n_items} items",
          file=sys.stderr, flush=True)

    # NISER's table sets it beside SR-GNN on both sides: run SR-GNN first even if not asked for.
    order = []
    for model in models:
        needed = [OURS_ONLY[model], model] if model in OURS_ONLY else [model]
        order += [m for m in needed if m not in order]
    results, checks = {}, []
    header.update(recbole_items=0, verified="pending")
    out.parent.mkdir(parents=True, exist_ok=True)
    for model in order:
        results[("ours", model)] = ours = run_ours(args, model, work, subset_path)
        if ours["n_items_ranked"] != dataset.n_items or ours["train_samples"] != len(splits["train"]) \
                or ours["train_sha256"] != ours_digests["train"]:
            raise SystemExit(f"agentrec {model} did not train on the samples written for RecBole")
        if model in RECBOLE_NAMES:
            results[("recbole", model)] = rb = run_recbole(args, model, work)
            mismatched = [name for name, s in rb["splits"].items()
                          if s["sha256"] != ours_digests[name] or s["samples"] != len(splits[name])]
            catalogue = hashlib.sha256("\n".join(map(str, range(1, dataset.n_items + 1))).encode()).hexdigest()
            if mismatched or rb["n_items_ranked"] != dataset.n_items or rb["item_tokens_sha256"] != catalogue:
                raise SystemExit(f"RecBole {model} saw different samples ({mismatched}) or a catalogue of "
                                 f"{rb['n_items_ranked']} items instead of {dataset.n_items}")
            if any(e["anomaly_mode"] for e in rb["history"]):
                raise SystemExit("RecBole trained with anomaly mode on although the runner switched it off")
            header["recbole_items"] = rb["n_items_ranked"]
            checks.append(f"RecBole {RECBOLE_NAMES[model]}: {rb['splits']['train']['samples']:,} training samples in "
                          f"{rb['train_batches']:,} batches")
            if args.as_shipped:
                results[("shipped", model)] = run_recbole(args, model, work, anomaly=True, mode="throughput")
        header["verified"] = (
            "for each split, the sha256 over the sorted `history|target` lines (in our item ids) that RecBole "
            "built from its files equals the one of our samples; "
            + "; ".join(checks) + (f" (= {len(splits['train']):,} / batch {args.batch_size}, rounded up)." if checks else ".")
        )
        if args.paired_throughput:
            results[("paired", model)] = paired_throughput(args, model, work, subset_path)
        header["load_end"] = load_average()
        text = report(args, dataset, header, results, [m for m in models if all(
            ("ours", x) in results for x in ([m, OURS_ONLY[m]] if m in OURS_ONLY else [m]))])
        out.write_text(text + "\n")
    print(text)
    print(f"\nwritten to {out}", file=sys.stderr)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
