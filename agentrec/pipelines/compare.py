"""One comparison: LLM-only, hybrid, session models, SemSR variants and the popularity floor.

:func:`run_compare` measures every method on the **same test sessions** and writes the evidence:

* **Rows.** The popularity floor; the session models (``niser`` ...) and SemSR's variants of the
  ``base`` model (``semsr-i``, ``semsr-f``, and ``semsr-i+`` / ``semsr-f+``: their top-100 re-ordered by
  the plain model); the LLM as recommender for each strategy (:mod:`agentrec.pipelines.predict`); and the hybrid
  of each strategy with the ``hybrid_model`` (:mod:`agentrec.pipelines.hybrid`).
* **Two tables, stated.** LLM generation is slow, so LLM and hybrid rows run on the first
  ``llm_sessions`` test sessions (split order). Table 1 holds **every** method on exactly those
  sessions; table 2 holds the methods that are cheap enough for the whole test split (floor, session
  models, variants) on all of it. Each row shows its N.
* **Noise.** Every metric has a percentile bootstrap interval (``bootstrap`` resamples of sessions,
  seeded, 95 %). Within each table and metric the best row is marked, and every other row is
  compared with it by a **paired** bootstrap (the same resampled sessions for both rows): if the 95 %
  interval of ``best - row`` contains 0, the row is marked "within noise" (``~``).
* **Cost.** Inference per 1,000 sessions: tokens (LLM in + out), wall seconds, and CPU seconds
  (process time, all threads: the cost column). Training is a separate one-off column (wall seconds,
  from the run record). Cached rows keep the timings of the run that computed them.
* **Reuse.** Checkpoints live in ``OUT/runs/NAME-KEY`` and LLM rows in ``OUT/llm/STRATEGY-KEY.*``, where
  KEY hashes the configuration and the dataset fingerprint; generations are cached in
  ``OUT/generations.sqlite``. A rerun with the same settings trains and generates nothing. A hybrid row
  takes its LLM row's grounded candidates in memory (a reused LLM row's from its lines, the same arrays).
* **Files.** ``compare.md``, ``compare.csv``, ``compare.json``, ``recall_at_k.png`` (Recall@K against K
  for every method, as in the SemSR paper's Figure 3) and ``manifest.json`` (versions, git commit,
  seeds, every configuration, data fingerprints) in ``OUT``.

Example::

    from agentrec.pipelines.compare import CompareConfig, run_compare
    result = run_compare("runs/compare", CompareConfig(llm_sessions=20, epochs=2))
    print(result.table())
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from agentrec.core import fsutil
from agentrec.core.config import jsonable
from agentrec.core.options import COUNT, SEED, OptionError, Range, check_writable
from agentrec.data.api import prepare_dataset
from agentrec.data.dataset import PreparedDataset
from agentrec.llm import EngineConfig, get_engine
from agentrec.llm.prompts import STRATEGIES, PromptConfig
from agentrec.models import MODELS
from agentrec.models.semantic import Reranked
from agentrec.pipelines.hybrid import HybridConfig, hybrid_ranks, model_scores, read_candidates
from agentrec.pipelines.predict import PROTOCOL, GenerationConfig, predict
from agentrec.pipelines.train import RunSpec, load_llm_table, train_or_reuse
from agentrec.retrieval.index import CatalogueIndex
from agentrec.training.runs import dataset_ref, evaluate_model, load_model
from agentrec.training.trainer import TrainConfig

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path("data/ml-100k")  # prepared here (leave-one-out) when no dataset is given
KS = (10, 20, 100)
FAMILIES = ("recall", "mrr", "ndcg")
METRICS = tuple(f"{family}@{k}" for family in FAMILIES for k in KS)
SEMANTIC = ("semsr-i", "semsr-f", "semsr-i+", "semsr-f+")
STRATEGY_LABELS = {"fs": "FS", "zcot": "ZCoT", "fscot": "FSCoT"}
LLM_K = max(KS)  # the LLM rows ground top-100 lists, so every K of the table is measured
COST_NOTE = ("per 1,000 sessions of inference: tokens = LLM tokens in + out; wall = wall-clock seconds; "
             "CPU = process CPU seconds over all threads (the cost measure); train = one-off training wall seconds "
             "(I+/F+: both models; hybrid: its model); cached rows keep the timings of the run that computed them")
SESSION_PROTOCOL = "full catalogue, ties count against the model, history items allowed"


@dataclass
class CompareConfig:
    """What :func:`run_compare` runs. Defaults fit the offline default on a 2-core machine in minutes."""

    strategies: tuple[str, ...] = ("fs", "zcot", "fscot")  # LLM prompting strategies (SemSR 3.2)
    models: tuple[str, ...] = ("niser", "semsr-i", "semsr-f", "semsr-i+", "semsr-f+")  # the popularity floor is always added
    base: str = "niser"  # the session model that the SemSR variants wrap
    hybrid: bool = True  # a hybrid row per strategy
    hybrid_model: str = "semsr-f"  # the model that re-ranks the LLM's candidates (trained if not in models)
    hybrid_config: HybridConfig = field(default_factory=HybridConfig)
    llm_sessions: int = 30  # LLM and hybrid rows: the first N test sessions (SmolLM2, 1 CPU thread: 2-15 s each)
    embedder: str = "minilm"  # item-text embedder for the index and the SemSR variants
    epochs: int = 3  # reduced training budget (the full one is 30 with early stopping), stated in the outputs
    max_train_samples: int | None = 10_000  # seeded training subsample; None = all
    patience: int = 2
    seed: int = 0  # training, few-shot examples, sampling and bootstrap
    threads: int = 1  # torch threads
    rerank_depth: int = 100  # I+ / F+ re-order this many items
    bootstrap: int = 1000  # resamples of sessions
    level: float = 0.95  # confidence level of the intervals and of the noise test

    def __post_init__(self):
        # every check runs here, before anything is trained or generated; errors name the field (CLI: --models)
        known = set(MODELS) | set(SEMANTIC)
        for option, names in (("models", self.models), ("hybrid_model", (self.hybrid_model,))):
            for name in names:
                if name not in known:
                    raise OptionError(option, f"has an unknown model {name!r}; choose from {', '.join(sorted(known))}")
        if self.base not in MODELS or self.base == "pop":
            raise OptionError("base", f"must be a session model ({', '.join(m for m in MODELS if m != 'pop')}), "
                                      f"got {self.base!r}")
        for name in self.strategies:
            if name not in STRATEGIES:
                raise OptionError("strategies", f"has an unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
        if self.hybrid_model not in set(MODELS) - {"pop"} | {"semsr-i", "semsr-f"}:
            raise OptionError("hybrid_model", f"must name a trained model for the hybrid model (a session model, "
                                              f"semsr-i or semsr-f), not {self.hybrid_model!r}")
        for name in ("llm_sessions", "epochs", "max_train_samples", "patience", "threads", "rerank_depth", "bootstrap"):
            COUNT.check(name, getattr(self, name))
        SEED.check("seed", self.seed)
        Range(0, 1, low_open=True, high_open=True).check("level", self.level)


@dataclass
class Row:
    """One method's measurement."""

    name: str
    kind: str  # floor | session | semantic | llm | hybrid
    ranks: np.ndarray = field(repr=False)  # (sessions,) 1-based, inf = miss, in split order
    timed_sessions: int  # sessions the timings below cover
    wall_s: float  # inference wall seconds over timed_sessions
    cpu_s: float  # inference CPU seconds over timed_sessions
    tokens: int | None = None  # LLM tokens in + out over timed_sessions
    train_s: float | None = None
    protocol: str = SESSION_PROTOCOL
    note: str = ""

    def per_1k(self, value: float | None) -> float | None:
        return None if value is None else 1000.0 * value / max(self.timed_sessions, 1)


@dataclass
class Table:
    """Rows measured on the same ``n`` sessions, with bootstrap intervals and noise marks."""

    title: str
    n: int
    rows: list[Row]
    stats: dict  # metric -> {"point", "lo", "hi": (R,) arrays, "best": int, "mark": [best|noise|below]}


@dataclass
class CompareResult:
    out: Path
    tables: list[Table]
    manifest: dict
    trained: list[str]  # run folders trained in this call (empty on a rerun)
    generated: int  # chats sent to the engine in this call
    seconds: float

    def table(self) -> str:
        return "\n\n".join(format_console(t) for t in self.tables)


# ================================================================================================ statistics
def per_session(ranks: np.ndarray, metric: str) -> np.ndarray:
    """``(n,)`` each session's contribution to ``metric`` (hit, reciprocal rank or 1/log2(1 + rank) within K)."""
    family, k = metric.split("@")
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks <= int(k)
    safe = np.where(hit, ranks, 1.0)
    if family == "recall":
        return hit.astype(np.float64)
    if family == "mrr":
        return np.where(hit, 1.0 / safe, 0.0)
    if family == "ndcg":
        return np.where(hit, 1.0 / np.log2(1.0 + safe), 0.0)
    raise ValueError(f"unknown metric {metric!r}")


def bootstrap_stats(ranks: list[np.ndarray], *, metrics=METRICS, resamples: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict:
    """Point estimates, percentile intervals and paired noise marks for rows measured on the same sessions.

    Args:
        ranks: one ``(n,)`` rank array per row, all over the same ``n`` sessions in the same order.
        metrics: names such as ``recall@20``.
        resamples: bootstrap resamples of the ``n`` sessions (the same resamples for every row and
            metric, so row differences are paired).
        seed: seed of the resampling.
        level: confidence level.

    Returns:
        ``{metric: {"point": (R,), "lo": (R,), "hi": (R,), "best": i, "mark": [str] * R}}``; ``mark`` is
        ``best`` for the row with the highest point estimate (the first one on ties), ``noise`` when the
        ``level`` interval of the paired difference ``best - row`` contains 0, else ``below``.
    """
    n = len(ranks[0])
    if any(len(r) != n for r in ranks):
        raise ValueError("every row must cover the same sessions")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(resamples, n))  # (B, n), shared by every row and metric
    tail = (1.0 - level) / 2.0
    out = {}
    for metric in metrics:
        values = np.stack([per_session(r, metric) for r in ranks])  # (R, n)
        point = values.mean(1)
        boot = values[:, index].mean(-1)  # (R, B)
        lo, hi = np.quantile(boot, [tail, 1.0 - tail], axis=1)
        best = int(np.argmax(point))
        marks = []
        for row in range(len(ranks)):
            if row == best:
                marks.append("best")
            else:
                lower = np.quantile(boot[best] - boot[row], tail)
                marks.append("below" if lower > 0 else "noise")
        out[metric] = {"point": point, "lo": lo, "hi": hi, "best": best, "mark": marks}
    return out


def make_table(title: str, rows: list[Row], *, n: int | None = None, config: CompareConfig) -> Table:
    """A table of ``rows`` restricted to their first ``n`` sessions (all of them by default)."""
    n = min(len(r.ranks) for r in rows) if n is None else n
    rows = [replace(r, ranks=np.asarray(r.ranks[:n])) for r in rows]
    stats = bootstrap_stats([r.ranks for r in rows], resamples=config.bootstrap, seed=config.seed, level=config.level)
    return Table(title=title, n=n, rows=rows, stats=stats)


# ================================================================================================ formatting
def _metric_label(metric: str) -> str:
    family, k = metric.split("@")
    return {"recall": "R", "mrr": "MRR", "ndcg": "NDCG"}[family] + "@" + k


def _number(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def format_console(table: Table) -> str:
    """One aligned text table: value ± half the bootstrap interval, in %; ``*`` best, ``~`` within noise of it."""
    head = ["method", "N", *[_metric_label(m) for m in METRICS], "tok/1k", "wall s/1k", "CPU s/1k", "train s"]
    lines = []
    for i, row in enumerate(table.rows):
        cells = [row.name, str(table.n)]
        for metric in METRICS:
            s = table.stats[metric]
            half = 100 * (s["hi"][i] - s["lo"][i]) / 2
            mark = {"best": "*", "noise": "~", "below": " "}[s["mark"][i]]
            cells.append(f"{100 * s['point'][i]:.1f}±{half:.1f}{mark}")
        cells += [_number(row.per_1k(row.tokens), 0), _number(row.per_1k(row.wall_s)), _number(row.per_1k(row.cpu_s)),
                  _number(row.train_s, 0)]
        lines.append(cells)
    widths = [max(len(str(c)) for c in column) for column in zip(head, *lines)]
    render = lambda cells: "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))
    rule = "-" * len(render(head))
    return "\n".join([table.title, rule, render(head), rule, *map(render, lines), rule])


def format_markdown(table: Table) -> str:
    head = ["method", "N", *[_metric_label(m) for m in METRICS], "tokens/1k", "wall s/1k", "CPU s/1k", "train s"]
    lines = [f"### {table.title}", "", "| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for i, row in enumerate(table.rows):
        cells = [row.name, str(table.n)]
        for metric in METRICS:
            s = table.stats[metric]
            value = f"{100 * s['point'][i]:.2f}"
            value = f"**{value}**" if s["mark"][i] == "best" else value + (" ~" if s["mark"][i] == "noise" else "")
            cells.append(f"{value} [{100 * s['lo'][i]:.1f}, {100 * s['hi'][i]:.1f}]")
        cells += [_number(row.per_1k(row.tokens), 0), _number(row.per_1k(row.wall_s), 2),
                  _number(row.per_1k(row.cpu_s), 2), _number(row.train_s, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_records(table: Table) -> list[dict]:
    """One flat dict per row (metrics as fractions, with interval and noise mark)."""
    records = []
    for i, row in enumerate(table.rows):
        record = {"table": table.title, "method": row.name, "kind": row.kind, "n": table.n}
        for metric in METRICS:
            s = table.stats[metric]
            record.update({metric: float(s["point"][i]), f"{metric}_lo": float(s["lo"][i]),
                           f"{metric}_hi": float(s["hi"][i]), f"{metric}_vs_best": s["mark"][i]})
        record.update(tokens_per_1k=row.per_1k(row.tokens), wall_s_per_1k=row.per_1k(row.wall_s),
                      cpu_s_per_1k=row.per_1k(row.cpu_s), train_s=row.train_s, timed_sessions=row.timed_sessions,
                      protocol=row.protocol, note=row.note)
        records.append(record)
    return records


def plot_recall(table: Table, path):
    """Recall@K against K (1..100) for every row of ``table``, as a PNG (matplotlib, Agg backend).

    ``path`` is a file path or a binary file object (``io.BytesIO``); it is returned.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = np.arange(1, max(KS) + 1)
    styles = {"floor": ":", "session": "-", "semantic": "-", "llm": "--", "hybrid": "-."}
    fig, ax = plt.subplots(figsize=(8.5, 5.0), dpi=120)
    for row in table.rows:
        curve = [(row.ranks <= k).mean() * 100 for k in ks]
        ax.plot(ks, curve, styles.get(row.kind, "-"), label=row.name, linewidth=1.6)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_title(f"Recall@K, {table.n} test sessions (same sessions for every method)")
    ax.set_xlim(1, max(KS))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# ================================================================================================ helpers
def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _label(name: str, base: str) -> str:
    plain = {"niser": "NISER", "narm": "NARM", "srgnn": "SR-GNN", "gru4rec": "GRU4Rec", "msgat": "MSGAT",
             "pop": "Popularity"}
    if name in SEMANTIC:
        return f"Sem{plain.get(base, base)}-{name.split('-')[1].upper()}"
    return plain.get(name, name)


def _git_commit() -> dict:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for package in ("agentrec", "torch", "transformers", "sentence-transformers", "chromadb", "numpy", "pandas",
                    "matplotlib", "safetensors"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


class _Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _run_train_seconds(info) -> float:
    return float(sum(h.get("train_seconds", 0.0) + h.get("valid_seconds", 0.0) for h in info.history))


# ================================================================================================ compare
def run_compare(out: str | Path, config: CompareConfig | None = None, *, data: str | Path | None = None,
                engine=None, engine_config=None, prompts=None, generation=None, cache_file: str | Path | None = None,
                store: str | Path | None = None, progress: bool = True, command: str | None = None) -> CompareResult:
    """Run (or reuse) every method, write the tables, the plot and the manifest to ``out``.

    Args:
        out: output folder (checkpoints, LLM rows, generation cache, index and reports live here).
        config: which methods, training budget, LLM sample size, bootstrap.
        data: a prepared dataset folder; default :data:`DEFAULT_DATA`, prepared (MovieLens-100K,
            leave-one-out) when it does not exist yet.
        engine: an Engine object or engine name (default ``hf`` with SmolLM2); made only when an
            LLM row has to be computed.
        engine_config, prompts, generation: as in :func:`agentrec.pipelines.predict.predict`.
        cache_file: generation cache (default ``out/generations.sqlite``).
        store: Chroma store folder (default ``out/vectorstore``).
        progress: training progress bars.
        command: the command line, recorded in the manifest.

    Returns:
        A :class:`CompareResult` (tables, manifest, what was trained and generated in this call).
    """
    import torch


    started, cpu_started = time.perf_counter(), time.process_time()
    config = config or CompareConfig()
    for name, path, folder in (("out", out, True), ("store", store, True), ("cache_file", cache_file, False)):
        check_writable(name, path, folder=folder)  # before anything is trained or generated
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    if data is None and not (DEFAULT_DATA / "stats.json").exists():  # a given folder must already be prepared

        logger.info("compare: preparing MovieLens-100K (leave-one-out) in %s", DEFAULT_DATA)
        prepare_dataset("ml-100k", out=DEFAULT_DATA, protocol="leave-one-out")
    dataset = PreparedDataset.load(DEFAULT_DATA if data is None else data)
    engine_config = engine_config or EngineConfig(threads=config.threads)
    prompts = prompts or PromptConfig(seed=config.seed)
    generation = generation or GenerationConfig(seed=config.seed, chunk_size=16)  # a progress line every 16 sessions
    state = _State(out=out, dataset=dataset, config=config, progress=progress)

    # ---- session models and SemSR variants, on the whole test split
    shown = list(dict.fromkeys(["pop", *config.models]))
    session_rows = []
    for number, name in enumerate(shown, 1):
        logger.info("compare: [%d/%d] %s (%.0f s in)", number, len(shown), _label(name, config.base),
                    time.perf_counter() - started)
        session_rows.append(state.session_row(name))

    # ---- LLM and hybrid rows, on the first llm_sessions test sessions
    llm_rows, hybrid_rows = [], []
    if config.strategies:
        n = min(config.llm_sessions, len(dataset.test))
        llm = _LLM(state, engine, engine_config, prompts, generation, cache_file or out / "generations.sqlite",
                   store or out / "vectorstore", n)
        for number, strategy in enumerate(config.strategies, 1):
            logger.info("compare: LLM %s [%d/%d] on %d test sessions (%.0f s in)", strategy, number,
                        len(config.strategies), n, time.perf_counter() - started)
            row, record, candidates = llm.row(strategy)
            llm_rows.append(row)
            if config.hybrid:
                hybrid_rows.append(state.hybrid_row(row, record, candidates, config.hybrid_model))
        manifest_llm = llm.manifest()
    else:
        n, manifest_llm = len(dataset.test), None

    tables = []
    if llm_rows:
        tables.append(make_table(f"Table 1: every method on the same {n} test sessions (the first {n} in split order)",
                                 [*session_rows, *llm_rows, *hybrid_rows], n=n, config=config))
    if not llm_rows or n < len(dataset.test):
        number = len(tables) + 1
        tables.append(make_table(f"Table {number}: session models on the whole test split ({len(dataset.test)} sessions)",
                                 session_rows, config=config))

    manifest = {
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": config.threads,
        "packages": _versions(),
        "dataset": {**dataset_ref(dataset), "protocol_params": dataset.stats.get("protocol", {}).get("params"),
                    "test_sessions": len(dataset.test)},
        "config": jsonable(asdict(config)),
        "train_config": asdict(state.train_config()),
        "seeds": {"training": config.seed, "few_shot_examples": prompts.seed, "sampling": generation.seed,
                  "bootstrap": config.seed},
        "runs": state.runs,
        "llm": manifest_llm,
        "protocols": {"session": SESSION_PROTOCOL, **{r.name: r.protocol for r in [*llm_rows, *hybrid_rows]}},
        "noise": (f"{config.bootstrap} paired bootstrap resamples of sessions (seed {config.seed}); intervals are "
                  f"{config.level:.0%} percentile intervals; '~' = the {config.level:.0%} interval of (best - row) "
                  "contains 0"),
        "cost": COST_NOTE,
        "trained_in_this_call": state.trained,
        "seconds": None,
    }
    result = CompareResult(out=out, tables=tables, manifest=manifest, trained=state.trained,
                           generated=manifest_llm["engine_calls"] if manifest_llm else 0, seconds=0.0)
    result.seconds = time.perf_counter() - started
    manifest["seconds"] = result.seconds
    manifest["cpu_seconds"] = time.process_time() - cpu_started  # this process, all threads
    write_outputs(result, config)
    return result


def write_outputs(result: CompareResult, config: CompareConfig) -> None:
    """``compare.md``, ``compare.csv``, ``compare.json``, ``recall_at_k.png`` and ``manifest.json`` in ``result.out``.

    Each file is written aside and renamed over the old one; ``manifest.json`` comes last and lists the
    size and sha256 of the other four under ``"outputs"``.
    """
    out = result.out
    manifest = result.manifest
    budget = (f"at most {config.epochs} epoch{'s' if config.epochs != 1 else ''} (patience {config.patience}) on "
              f"{'all' if config.max_train_samples is None else f'{config.max_train_samples:,} seeded'} training samples")
    llm = manifest.get("llm") or {}
    header = [
        f"# agentrec compare: {manifest['dataset']['name']} ({manifest['dataset']['protocol']})",
        "",
        f"Command: `{manifest.get('command') or 'run_compare(...)'}`  ",
        f"Dataset fingerprint {manifest['dataset']['fingerprint'][:12]}; created {manifest['created']}; "
        f"git {str(manifest['git'].get('commit'))[:12]}{' (dirty)' if manifest['git'].get('dirty') else ''}; "
        f"{result.seconds:.0f} s wall, {manifest.get('cpu_seconds', 0):.0f} s CPU in all (this call; reused "
        "checkpoints and LLM rows cost nothing here).",
        "",
        f"- Session models: {SESSION_PROTOCOL}; reduced training budget: {budget}, selected on validation "
        f"Recall@100. SemSR variants wrap {_label(config.base, config.base)} with the `{config.embedder}` embedder; "
        f"I+/F+ re-order their top-{config.rerank_depth} by the plain model.",
    ]
    if llm:
        header.append(f"- LLM rows: engine `{llm.get('engine')}`; protocol: {llm.get('protocol')}.")
        if config.hybrid:
            header.append(f"- Hybrid rows: {config.hybrid_config.protocol} (M = {config.hybrid_config.candidates}; "
                          f"model: {_label(config.hybrid_model, config.base)}).")
    header += [
        f"- Metrics in %, with {config.level:.0%} bootstrap intervals [lo, hi] over sessions "
        f"({config.bootstrap} resamples, seed {config.seed}). **Bold**: best in its column; `~`: within noise of "
        f"the best (paired bootstrap: the {config.level:.0%} interval of best - row contains 0); unmarked: "
        "below the best beyond noise.",
        f"- Cost: {COST_NOTE}.",
        "",
    ]
    markdown = "\n".join(header) + "\n" + "\n\n".join(format_markdown(t) for t in result.tables) + "\n"
    records = [record for table in result.tables for record in table_records(table)]
    table_csv = io.StringIO(newline="")
    writer = csv.DictWriter(table_csv, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    plot = io.BytesIO()
    plot_recall(result.tables[0], plot)
    outputs = {
        "compare.md": markdown.encode("utf-8"),
        "compare.csv": table_csv.getvalue().encode("utf-8"),
        "compare.json": (json.dumps({
            "unit": "metrics are fractions (0-1); intervals are bootstrap percentile intervals",
            "tables": [{"title": t.title, "n": t.n, "rows": table_records(t)} for t in result.tables],
            "manifest": "manifest.json",
        }, indent=2, default=float) + "\n").encode("utf-8"),
        "recall_at_k.png": plot.getvalue(),
    }
    # Each file is replaced whole (written aside, renamed in); the manifest goes last and records the
    # sha256 of the other four, so a set left mixed by a kill between two renames can be told apart.
    manifest["outputs"] = {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                           for name, data in outputs.items()}
    for name, data in outputs.items():
        fsutil.atomic_write_bytes(out / name, data)
    fsutil.atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")


class _State:
    """Checkpoints and session-model rows of one comparison."""

    def __init__(self, *, out: Path, dataset, config: CompareConfig, progress: bool):
        self.out, self.dataset, self.config, self.progress = out, dataset, config, progress
        self.models: dict[str, object] = {}  # name -> loaded model (pop, plain, semsr-i, semsr-f)
        self.infos: dict[str, object] = {}
        self.runs: dict[str, dict] = {}  # manifest entries
        self.trained: list[str] = []
        self._table = None

    def train_config(self):
        c = self.config
        return TrainConfig(epochs=c.epochs, patience=c.patience, max_train_samples=c.max_train_samples, seed=c.seed,
                           threads=c.threads)

    def llm_table(self):
        if self._table is None:
            self._table = load_llm_table(self.dataset, self.config.embedder, progress=False)
        return self._table

    def spec(self, name: str) -> RunSpec:
        """The run behind row ``name`` (pop, a session model, semsr-i or semsr-f)."""
        c = self.config
        variant = {"semsr-i": "init", "semsr-f": "fusion"}.get(name)
        return RunSpec(model=c.base if variant else name, variant=variant, embedder=c.embedder,
                       train=self.train_config())

    def model(self, name: str):
        """The trained model ``name`` (pop, a session model, semsr-i or semsr-f), from its checkpoint or trained now."""
        if name in self.models:
            return self.models[name]
        spec = self.spec(name)
        folder, reused = train_or_reuse(spec, self.dataset, self.out / "runs", name=name, progress=self.progress,
                                        llm_table=self.llm_table() if spec.variant else None)
        if not reused:
            self.trained.append(str(folder))
        info, model = load_model(folder, self.dataset)
        self.models[name], self.infos[name] = model, info
        self.runs[name] = {"folder": str(folder), "key": spec.key(self.dataset), "reused": reused,
                           "best_epoch": info.best_epoch, "epochs_run": len(info.history),
                           "train_s": _run_train_seconds(info), "spec": jsonable(asdict(spec))}
        return model

    def session_row(self, name: str) -> Row:
        c = self.config
        if name in ("semsr-i+", "semsr-f+"):
            first = name[:-1]
            scorer = Reranked(self.model(first), self.model(c.base), k=c.rerank_depth)
            train_s = self.runs[first]["train_s"] + self.runs[c.base]["train_s"]
            protocol = f"{SESSION_PROTOCOL}; top-{c.rerank_depth} of {_label(first, c.base)} re-ordered by {_label(c.base, c.base)}"
        else:
            scorer = self.model(name)
            train_s = self.runs[name]["train_s"]
            protocol = SESSION_PROTOCOL
        with _Clock() as clock:
            result = evaluate_model(scorer, self.dataset, "test", ks=KS)
        kind = "floor" if name == "pop" else "semantic" if name in SEMANTIC else "session"
        return Row(name=_label(name, c.base), kind=kind, ranks=result.ranks, timed_sessions=result.n,
                   wall_s=clock.wall, cpu_s=clock.cpu, train_s=train_s, protocol=protocol)

    def hybrid_row(self, llm_row: Row, record: dict, candidates: tuple[np.ndarray, np.ndarray],
                   model_name: str) -> Row:
        """The hybrid of an LLM row: ``candidates`` are its ``(ids, distances)``, each ``(n, M)`` (see ``_LLM.row``)."""
        hc = self.config.hybrid_config
        model = self.model(model_name)
        n = len(llm_row.ranks)
        with _Clock() as clock:
            candidates, distances = candidates
            samples = self.dataset.test
            scores = model_scores(model, samples, np.arange(n))
            ranks, _, _ = hybrid_ranks(candidates, distances, scores, samples.target[:n], hc, k=LLM_K)
        return Row(name=f"Hybrid {STRATEGY_LABELS.get(record['strategy'], record['strategy'])} -> "
                        f"{_label(model_name, self.config.base)}",
                   kind="hybrid", ranks=ranks, timed_sessions=n, wall_s=llm_row.wall_s + clock.wall,
                   cpu_s=llm_row.cpu_s + clock.cpu, tokens=llm_row.tokens, train_s=self.runs[model_name]["train_s"],
                   protocol=hc.protocol, note=llm_row.note)


class _LLM:
    """LLM-only rows: computed through :func:`agentrec.pipelines.predict.predict`, or reused from ``out/llm``."""

    def __init__(self, state: _State, engine, engine_config, prompts, generation, cache_file, store, n: int):
        self.state, self.engine, self.engine_config = state, engine, engine_config
        self.prompts, self.generation, self.cache_file, self.store, self.n = prompts, generation, cache_file, store, n
        self.index = None
        self.index_info: dict = {}
        self.records: dict[str, dict] = {}
        self.engine_calls = 0

    def _engine(self):
        if self.engine is None or isinstance(self.engine, str):
            self.engine = get_engine(self.engine or "hf", self.engine_config)
        return self.engine

    def _index(self):
        if self.index is None:
            with _Clock() as clock:
                self.index = CatalogueIndex.build(self.state.dataset, self.state.config.embedder, store=self.store,
                                                  progress=False)
                self.index.match(["warm-up"], k=1)  # loads the query embedder: a one-off, not a per-session cost
            self.index_info = {"collection": self.index.name, "location": self.index.location,
                               "reused": self.index.reused, "seconds": clock.wall}
        return self.index

    def row(self, strategy: str) -> tuple[Row, dict, tuple[np.ndarray, np.ndarray]]:
        """The LLM row of ``strategy``, its record, and its grounded candidates ``(ids, distances)``, each
        ``(n, M)`` with ``M`` the hybrid's candidates: in memory when generated now, read from ``out/llm``
        (the same arrays, :func:`~agentrec.pipelines.hybrid.read_candidates`) when the row is reused."""
        engine = self._engine()
        m = self.state.config.hybrid_config.candidates
        spec = {"strategy": strategy, "engine": engine.fingerprint, "prompts": asdict(self.prompts),
                "generation": asdict(self.generation), "embedder": self.state.config.embedder, "k": LLM_K,
                "sessions": self.n, "dataset": self.state.dataset.fingerprint}
        key = _key(spec)
        folder = self.state.out / "llm"
        folder.mkdir(parents=True, exist_ok=True)
        lines, record_file = folder / f"{strategy}-{key}.jsonl", folder / f"{strategy}-{key}.row.json"
        if record_file.exists() and lines.exists():
            logger.info("compare: reusing %s", lines)
            record = json.loads(record_file.read_text())
            record["reused"] = True
            ids, distances, lines_read = read_candidates(lines, m)
            candidates = (ids, distances)
            ranks = np.array([math.inf if r["rank"] is None else r["rank"] for r in lines_read], dtype=np.float64)
        else:
            index = self._index()
            if hasattr(engine, "load"):
                engine.load()  # loading the model is a one-off, not part of the per-session cost
            with _Clock() as clock:
                result = predict(self.state.dataset, strategy, engine, k=LLM_K, limit=self.n, out=lines,
                                 prompts=self.prompts, generation=self.generation, index=index,
                                 cache=self.cache_file, ground_distance=0.4)
            self.engine_calls += result.engine_calls
            record = {"strategy": strategy, "key": key, "file": str(lines), "spec": spec, "n": result.n,
                      "wall_s": clock.wall, "cpu_s": clock.cpu, "tokens_in": result.tokens_in,
                      "tokens_out": result.tokens_out, "engine_calls": result.engine_calls,
                      "engine_seconds": result.engine_seconds, "cache_hits": result.cache_hits,
                      "unparseable": result.unparseable, "ungrounded": result.ungrounded,
                      "exact_titles": result.exact_titles, "protocol": PROTOCOL}
            # the row's record is written after its lines: both present means the row is complete
            fsutil.atomic_write_text(record_file, json.dumps(record, indent=2) + "\n")
            record["reused"] = False
            candidates, ranks = result.candidates.head(m), result.ranks
        record["file"] = str(lines)  # the folder may have moved since
        self.records[strategy] = record
        note = f"{record['cache_hits']} of the generations came from the cache" if record["cache_hits"] else ""
        row = Row(name=f"LLM {STRATEGY_LABELS.get(strategy, strategy)}", kind="llm", ranks=ranks,
                  timed_sessions=record["n"], wall_s=record["wall_s"], cpu_s=record["cpu_s"],
                  tokens=record["tokens_in"] + record["tokens_out"], protocol=record["protocol"], note=note)
        return row, record, candidates

    def manifest(self) -> dict:
        engine = self.engine
        config = {k: v for k, v in asdict(self.engine_config).items() if k != "api_key"}
        return {"engine": getattr(engine, "fingerprint", str(engine)), "engine_config": config,
                "prompts": asdict(self.prompts), "generation": asdict(self.generation), "sessions": self.n,
                "sample": f"the first {self.n} test sessions in split order", "k": LLM_K,
                "cache_file": str(self.cache_file), "index": self.index_info, "protocol": PROTOCOL,
                "engine_calls": self.engine_calls,
                "rows": {s: {k: v for k, v in r.items() if k != "spec"} for s, r in self.records.items()}}
