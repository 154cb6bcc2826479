"""One comparison: LLM-only, hybrid, session models, SemSR variants and the popularity floor.

:func:`run_compare` measures every method on the **same test sessions** and writes the evidence:

* **Rows.** The popularity floor; the session models (``niser`` ...) and SemSR's variants of the
  ``base`` model (``semsr-i``, ``semsr-f``, and ``semsr-i+`` / ``semsr-f+``: their top-100 re-ordered by
  the plain model); the LLM as recommender for each strategy (:mod:`agentrec.pipelines.predict`); and the hybrid
  of each strategy with the ``hybrid_model`` (:mod:`agentrec.pipelines.hybrid`), its fusion chosen on the LLM's
  titles for the first ``valid_sessions`` validation sessions (never on test) unless ``hybrid_config`` fixes it.
* **Two tables, stated.** LLM generation is slow, so LLM and hybrid rows run on the first
  ``llm_sessions`` test sessions (split order). Table 1 holds **every** method on exactly those
  sessions; table 2 holds the methods that are cheap enough for the whole test split (floor, session
  models, variants) on all of it. Each row shows its N.
* **Noise.** Every metric has a percentile bootstrap interval (``bootstrap`` resamples of sessions,
  seeded, 95 %). Within each table and metric the best row is marked, and every other row is
  compared with it by a **paired** bootstrap (the same resampled sessions for both rows): if the 95 %
  interval of ``best - row`` contains 0, the row is marked "within noise" (``~``). Each hybrid row is also
  set against its model alone on the same sessions (:func:`hybrid_check`: the paired interval of hybrid -
  model for every metric; "not below its model" when the upper bounds of Recall@20 and MRR@20 reach 0).
* **Cost.** Inference per 1,000 sessions: tokens (LLM in + out), wall seconds, and CPU seconds
  (process time, all threads: the cost column). Training is a separate one-off column (wall seconds,
  from the run record). Cached rows keep the timings of the run that computed them.
* **Reuse.** Checkpoints live in ``OUT/runs/NAME-KEY`` and LLM rows in ``OUT/llm/STRATEGY-KEY.*``, where
  KEY hashes the configuration and the dataset fingerprint; generations are cached in
  ``OUT/generations.sqlite``. A rerun with the same settings trains and generates nothing. A hybrid row
  takes its LLM row's grounded candidates in memory (a reused LLM row's from its lines, the same arrays).
* **Files.** ``compare.md``, ``compare.csv``, ``compare.json``, three figures (:func:`draw_figures`:
  ``forest.png``, Recall@20 and MRR@20 with their intervals; ``cost_quality.png``, CPU seconds per 1,000
  sessions against Recall@20; ``recall_at_k.png``, Recall@K against K as in the SemSR paper's Figure 3)
  and ``manifest.json`` (versions, git commit, seeds, every configuration, data fingerprints) in ``OUT``.

Example::

    from agentrec.pipelines.compare import CompareConfig, run_compare
    result = run_compare("runs/compare", CompareConfig(llm_sessions=20, epochs=2))
    print(result.table())
"""

from __future__ import annotations

import contextlib
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
from agentrec.core.devices import DEVICE_NAME, DEVICES_HELP, resolve_device
from agentrec.core.metrics import bootstrap_interval
from agentrec.core.options import COUNT, SEED, OptionError, Range, check_writable
from agentrec.core.progress import LLMProgress
from agentrec.data.api import prepare_dataset
from agentrec.data.dataset import PreparedDataset
from agentrec.llm import EngineConfig, get_engine
from agentrec.llm.prompts import STRATEGIES, PromptConfig
from agentrec.models import MODELS
from agentrec.models.semantic import Reranked
from agentrec.pipelines import plots
from agentrec.pipelines.hybrid import (
    MODEL_ALONE,
    FusionGrid,
    FusionSelection,
    HybridConfig,
    choose_fusion,
    first_scores,
    grid_ranks,
    hybrid_protocol,
    hybrid_ranks,
    read_candidates,
)
from agentrec.pipelines.predict import PROTOCOL, GenerationConfig, predict
from agentrec.pipelines.train import RunSpec, load_llm_table, train_or_reuse
from agentrec.retrieval.embedders import get_embedder
from agentrec.retrieval.index import CatalogueIndex
from agentrec.training.runs import RUN_FILE, WEIGHTS_FILE, dataset_ref, evaluate_model, load_model
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
             "(I+/F+: both models; hybrid: its model and the LLM's validation titles its fusion is chosen on); cached rows keep the timings of the run that computed them")
SESSION_PROTOCOL = "full catalogue, ties count against the model, history items allowed"
# compare's prompts are shorter than predict's (3 examples, 10 session items, 32 title tokens): on this 2-core
# machine SmolLM2 (hf, one thread) spends most of an FS session reading its prompt. Measured on 100 ML-100K test
# sessions: 78 CPU s per 100 sessions instead of 116, with the same LLM quality within noise (Recall@100 8% and
# 7%), so 100 test and 100 validation sessions fit the default run. A title fits in 20 tokens with the model's
# preamble ("The next session is: '...'"); the examples still come from training sessions only.
LLM_PROMPTS = dict(examples=2, max_history=5)  # few-shot examples; most recent session items shown
LLM_GENERATION = dict(title_tokens=20, chunk_size=16)  # most new tokens of a title; a progress line every 16


@dataclass
class CompareConfig:
    """What :func:`run_compare` runs. Defaults fit the offline default on a 2-core machine in minutes."""

    # LLM prompting strategies (SemSR 3.2); FS alone by default so that 100 test and 100 validation sessions fit
    # the default run's budget (about 0.8 s per FS session with SmolLM2 on one thread; CoT steps cost 3-4x that)
    strategies: tuple[str, ...] = ("fs",)
    # NISER and SemNISER-F, converged (CLARIFICATIONS #10); semsr-i and the "+" re-rankers are opt-in. The
    # popularity floor is always added
    models: tuple[str, ...] = ("niser", "semsr-f")
    base: str = "niser"  # the session model that the SemSR variants wrap
    hybrid: bool = True  # a hybrid row per strategy
    hybrid_model: str = "semsr-f"  # the model fused with the LLM's grounded lists (trained if not in models)
    hybrid_grid: FusionGrid = field(default_factory=FusionGrid)  # fusions tried on validation (w, M, c)
    hybrid_config: HybridConfig | None = None  # a fusion fixed by hand instead (no validation sessions generated)
    llm_sessions: int = 100  # LLM and hybrid rows: the first N test sessions (SmolLM2, 1 CPU thread: 1-5 s each)
    valid_sessions: int = 100  # the hybrid's fusion is chosen on the LLM's titles for the first N validation sessions
    embedder: str = "minilm"  # item-text embedder for the index and the SemSR variants
    # Training of the session models: the whole training split, early stopping on validation Recall@100. The
    # defaults were chosen on validation (README, "Compare"): on MovieLens-100K NISER and SemNISER-F level off
    # after 4-6 epochs at this learning rate; bf16 steps halve the time of an epoch on a CPU with AVX-512 BF16.
    epochs: int = 8  # most epochs; early stopping usually ends sooner
    max_train_samples: int | None = None  # seeded training subsample; None = the whole training split
    patience: int = 2  # epochs without a better validation Recall@100 before stopping
    train_batch_size: int = 256  # --train-batch-size (--batch-size is the LLM engine's)
    lr: float = 0.005  # Adam's learning rate ...
    lr_step: int = 3  # ... decayed every lr_step epochs ...
    lr_gamma: float = 0.2  # ... by this factor (1 keeps it constant)
    weight_decay: float = 0.0  # L2 penalty
    embedding_size: int = 64  # item and session vectors of the session models (SemSR-F's fused vectors too)
    # of the training steps: auto = bf16 (torch.autocast) where the CPU has native bf16, else fp32 (bf16 without it
    # is slower); validation and test always rank in fp32
    precision: str = "auto"
    train_budget_s: float | None = None  # wall-clock cap per trained model (TrainConfig.time_budget_s); None = none
    seed: int = 0  # training, few-shot examples, sampling and bootstrap
    threads: int = 1  # torch threads
    # where torch work runs (agentrec.core.devices): training and evaluating the session models, the SemSR item
    # table, the index's embedder, the hybrid's scoring; auto = CUDA when torch sees one. The hf LLM's device is
    # the engine's (EngineConfig.device, --llm-device)
    device: str = "auto"
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
        for name in ("llm_sessions", "valid_sessions", "epochs", "max_train_samples", "patience", "threads", "rerank_depth", "bootstrap"):
            COUNT.check(name, getattr(self, name))
        SEED.check("seed", self.seed)
        Range(0, 1, low_open=True, high_open=True).check("level", self.level)
        COUNT.check("embedding_size", self.embedding_size)
        if not DEVICE_NAME.match(str(self.device).strip().lower()):
            raise OptionError("device", f"must be {DEVICES_HELP}; got {self.device!r}")
        self.device = str(self.device).strip().lower()
        self.train_config()  # range-checks the training fields now, under compare's names

    def train_config(self) -> TrainConfig:
        """The training settings of every session model and SemSR variant this comparison trains."""
        try:
            return TrainConfig(epochs=self.epochs, patience=self.patience, max_train_samples=self.max_train_samples,
                               batch_size=self.train_batch_size, lr=self.lr, lr_step=self.lr_step,
                               lr_gamma=self.lr_gamma, weight_decay=self.weight_decay, precision=self.precision,
                               time_budget_s=self.train_budget_s, seed=self.seed, threads=self.threads,
                               device=self.device)
        except OptionError as error:  # name the field as compare spells it
            names = {"batch_size": "train_batch_size", "time_budget_s": "train_budget_s"}
            raise OptionError(names.get(error.option, error.option), error.reason) from None


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
    hybrid_checks: list[dict] = field(default_factory=list)  # each hybrid row against its model (hybrid_check)

    def table(self) -> str:
        checks = [format_checks(self.hybrid_checks)] if self.hybrid_checks else []
        return "\n\n".join([*(format_console(t) for t in self.tables), *checks])


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


def paired_difference(a: np.ndarray, b: np.ndarray, *, metrics=METRICS, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """``a - b`` per metric over the same sessions, with its paired percentile bootstrap interval.

    The resamples are those of :func:`bootstrap_stats` with the same ``seed`` (the same sessions drawn for
    both rows). Returns ``{metric: {"point", "lo", "hi"}}`` as fractions.
    """
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("both rows must cover the same, non-empty sessions")
    out = {}
    for metric in metrics:
        diff = per_session(a, metric) - per_session(b, metric)  # (n,)
        lo, hi = bootstrap_interval(diff, resamples=resamples, seed=seed, level=level)
        out[metric] = {"point": float(diff.mean()), "lo": float(lo), "hi": float(hi)}
    return out


CHECKED = ("recall@20", "mrr@20")  # a hybrid row is "not below its model" when both intervals reach 0


def hybrid_check(name: str, model: str, hybrid_ranks_: np.ndarray, model_ranks: np.ndarray, *, selection,
                 fusion: HybridConfig, config: CompareConfig) -> dict:
    """The hybrid row ``name`` against its ``model`` alone on the same sessions: the paired bootstrap of
    hybrid - model for every metric, and whether it is ``not_below`` (the upper bound of :data:`CHECKED` >= 0)."""
    difference = paired_difference(hybrid_ranks_, model_ranks, resamples=config.bootstrap, seed=config.seed,
                                   level=config.level)
    return {"hybrid": name, "model": model, "n": len(model_ranks), "fusion": asdict(fusion),
            "chosen_on": None if selection is None else f"{selection.n} validation sessions",
            "selection": None if selection is None else selection.summary(),
            "level": config.level, "difference": difference,
            "not_below": all(difference[m]["hi"] >= 0 for m in CHECKED)}


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


def format_checks(checks: list[dict], *, markdown: bool = False) -> str:
    """One line per hybrid row: hybrid - model with its paired interval, the verdict and the fusion used
    (markdown: then each row's choice on validation and its grid)."""
    level = f"{checks[0]['level']:.0%}" if checks else ""
    lines = [("### " if markdown else "") + f"Each hybrid against its model alone: hybrid - model on the same "
             f"sessions, in points, with {level} paired bootstrap intervals", ""]
    for check in checks:
        cells = ", ".join(f"{'+' if d['point'] >= 0 else ''}{100 * d['point']:.2f} {_metric_label(m)} "
                          f"[{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]"
                          for m, d in ((m, check["difference"][m]) for m in CHECKED))
        verdict = "not below its model (within noise)" if check["not_below"] else "BELOW its model beyond noise"
        fusion, selection = check["fusion"], check["selection"]
        settings = f"w = {fusion['weight']:g}, M = {fusion['candidates']}, c = {fusion['c']:g}"
        if selection is None:
            how = f"fusion given: {settings}"
        elif selection["fell_back"]:
            how = f"no fusion beat the model beyond noise on {check['chosen_on']}, so w = 0 (the model's ranking)"
        else:
            how = f"fusion chosen on {check['chosen_on']}: {settings}"
        lines.append(f"{'- ' if markdown else ''}{check['hybrid']} - {check['model']}, {check['n']} test sessions: "
                     f"{cells}: {verdict}; {how}")
    if markdown:
        for check in checks:
            if check["selection"]:
                selection = FusionSelection.from_summary(check["selection"])
                lines += ["", f"{check['hybrid']}: {selection.describe()}", "", "```", selection.grid_table(), "```"]
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


FIGURES = {  # file -> what it shows (listed in compare.md)
    "forest.png": "Recall@20 and MRR@20 of every method with their intervals, one block per table",
    "cost_quality.png": "inference CPU seconds per 1,000 sessions (log scale) against Recall@20, on table 1's sessions",
    "recall_at_k.png": "Recall@K against K (1-100) for every method on table 1's sessions, as in the SemSR paper's Figure 3",
}


def draw_figures(tables: list[Table], *, level: float = 0.95) -> dict[str, bytes]:
    """The PNGs of :data:`FIGURES` drawn from ``tables`` (:mod:`agentrec.pipelines.plots`), name -> bytes.

    The forest plot shows every table; the cost scatter and the Recall@K curve show the first (every method
    on the same sessions). A figure that fails to draw is left out with a warning and its traceback: the
    tables it illustrates are written all the same.
    """
    records = [{"title": t.title, "n": t.n, "rows": table_records(t)} for t in tables]
    first = tables[0]
    draw = {
        "forest.png": lambda f: plots.plot_forest(records, f, level=level),
        "cost_quality.png": lambda f: plots.plot_cost_quality(records[0]["rows"], f, level=level,
                                                              title=f"Cost against Recall@20. {first.title}"),
        "recall_at_k.png": lambda f: plots.plot_recall_at_k(
            [{"method": r.name, "kind": r.kind, "ranks": r.ranks} for r in first.rows], f, n=first.n, max_k=max(KS)),
    }
    figures = {}
    for name, plot in draw.items():
        buffer = io.BytesIO()
        with plots.best_effort(name):
            plot(buffer)
            figures[name] = buffer.getvalue()
    return figures


def format_figures(names) -> str:
    """compare.md's list of the figures written beside it."""
    return "\n".join(["### Figures", "", *(f"- [`{name}`]({name}): {FIGURES[name]}." for name in names)])


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


def training_note(config: CompareConfig, runs: dict) -> str:
    """What the session models trained with, and where each one stopped, for ``compare.md``.

    ``runs`` are the manifest's run entries (``best_epoch``, ``epochs_run``, ``stopped_by``, ``train_s``...).
    """
    samples = next((r["train_samples"] for r in runs.values() if r.get("train_samples")), None)
    if config.max_train_samples is None:
        data = "the whole training split" + (f" ({samples:,} samples)" if samples else "")
    else:
        data = (f"a seeded subsample of {config.max_train_samples:,} training samples (a reduced budget, not the "
                "papers')")
    schedule = (f"decayed x{config.lr_gamma:g} every {config.lr_step} epochs" if config.lr_gamma < 1 else "constant")
    note = (f"{data}, at most {config.epochs} epoch{'s' if config.epochs != 1 else ''} with early stopping on "
            f"validation Recall@100 (patience {config.patience}; the best epoch is kept); batch "
            f"{config.train_batch_size}, Adam lr {config.lr:g} {schedule}, weight decay {config.weight_decay:g}, "
            f"embedding size {config.embedding_size}, {_precision(config.precision, runs)} training steps")
    if config.train_budget_s is not None:
        note += f", at most {config.train_budget_s:g} s of training per model"
    stops = {"patience": "early stopping", "epochs": "epoch limit", "time budget": "TIME BUDGET"}
    trained = [f"{_label(name, config.base)} best epoch {r['best_epoch']} of {r['epochs_run']} "
               f"({stops.get(r.get('stopped_by'), 'stopped')}, {r['train_s']:.0f} s)"
               for name, r in runs.items() if name != "pop" and r.get("epochs_run")]
    return note + ("; " + ", ".join(trained) if trained else "")


def _precision(precision: str, runs: dict) -> str:
    resolved = sorted({r["precision"] for r in runs.values() if r.get("precision")})
    return f"{precision} ({', '.join(resolved)})" if precision == "auto" and resolved else precision


def _run_train_seconds(info) -> float:
    return float(sum(h.get("train_seconds", 0.0) + h.get("valid_seconds", 0.0) for h in info.history))


# ================================================================================================ stages, ETA
@dataclass
class Stage:
    """One step of a comparison, for the stage lines and the overall ETA (:class:`StageClock`)."""

    key: tuple  # ("row", name), ("llm", strategy, split), ("hybrid", strategy), ("report",)
    label: str
    kind: str = "other"  # "train" (units: epochs), "llm" (units: sessions), "other" (counted as taking no time)
    units: float = 0.0  # planned work: epochs at most (early stopping ends sooner), LLM sessions; 0 when reused
    strategy: str | None = None  # llm: the strategy (its sessions cost alike)
    seconds: float | None = None  # measured wall seconds, once done
    done_units: float | None = None  # units done: epochs trained in this call, sessions generated (0: reused)
    work_s: float | None = None  # the seconds of the work itself, where one-offs are known (an LLM row: without
    # building the index and loading the model); None: all of ``seconds``

    @property
    def work_seconds(self) -> float:
        """The seconds its rate is measured from."""
        return self.seconds if self.work_s is None else self.work_s


class StageClock:
    """``compare``'s stages, each logged as it starts with its number, the time so far and an ETA for the rest.

    The ETA is the remaining stages' planned work at the rates measured so far in this call:

    * **training**: seconds per epoch over the models trained so far (their evaluation included); a model counts
      ``epochs`` epochs, an upper bound (early stopping usually ends sooner), and a checkpoint on disk none;
    * **LLM**: seconds per session of the same strategy, generating and grounding alone (building the index and
      loading the model are one-offs, left out), so its validation sessions time its test sessions; a strategy
      not timed yet is estimated from another one, scaled by their numbers of generation steps (CoT strategies
      have two); an LLM row that turns out to be reused takes no time;
    * choosing a hybrid's fusion, scoring it and writing the reports: seconds, counted as nothing.

    Until a kind of work has been timed, its stages are left out and the ETA is a lower bound ("at least"); the
    bar of the LLM work (:meth:`llm_bar`) has its own ETA over every LLM session of the comparison.
    """

    def __init__(self, stages: list[Stage], *, started: float | None = None, log=None):
        self.stages = list(stages)
        self.started = time.perf_counter() if started is None else started
        self.log = log or logger

    def find(self, key: tuple, label: str | None = None) -> Stage:
        for stage in self.stages:
            if stage.key == key:
                return stage
        stage = Stage(key=key, label=label or " ".join(map(str, key)))  # not planned: counted as no time
        self.stages.append(stage)
        return stage

    def rate(self, stage: Stage) -> float | None:
        """Seconds per unit of ``stage``'s kind (and strategy) measured so far; None when not timed yet."""
        timed = [s for s in self.stages if s.kind == stage.kind and s.seconds is not None and s.done_units]
        if stage.kind == "llm":
            same = [s for s in timed if s.strategy == stage.strategy]
            if same:
                return sum(s.work_seconds for s in same) / sum(s.done_units for s in same)
            if timed:  # another strategy's rate, scaled by the generation steps of each
                other = timed[-1]
                return other.work_seconds / other.done_units * _steps(stage.strategy) / _steps(other.strategy)
            return None
        return sum(s.work_seconds for s in timed) / sum(s.done_units for s in timed) if timed else None

    def eta(self, *, after: int) -> tuple[float, bool]:
        """``(seconds, complete)``: the planned work of the stages from index ``after`` on at the measured rates;
        ``complete`` is False when some of it has no rate yet (the seconds are then a lower bound)."""
        seconds, complete = 0.0, True
        for stage in self.stages[after:]:
            if stage.seconds is not None or not stage.units or stage.kind == "other":
                continue
            rate = self.rate(stage)
            if rate is None:
                complete = False
            else:
                seconds += rate * stage.units
        return seconds, complete

    def begin(self, key: tuple) -> Stage:
        """Log ``stage i/n LABEL; T elapsed, ETA ...`` for the stage ``key`` (its own work included in the ETA)."""
        stage = self.find(key)
        number = self.stages.index(stage) + 1
        eta, complete = self.eta(after=number - 1)
        elapsed = time.perf_counter() - self.started
        if complete:
            left = f"ETA {_duration(eta)}"
        elif eta > 0:
            left = f"ETA at least {_duration(eta)} (not all of the work is timed yet)"
        else:
            left = "ETA once the first model or LLM session is timed"
        self.log.info("compare: stage %d/%d %s; %s elapsed, %s", number, len(self.stages), stage.label,
                      _duration(elapsed), left)
        return stage

    @contextlib.contextmanager
    def stage(self, key: tuple):
        """Log the stage's start (:meth:`begin`), give it to the block, and time it; the block sets
        ``done_units`` (epochs trained, sessions generated)."""
        stage = self.begin(key)
        clock = time.perf_counter()
        yield stage
        stage.seconds = time.perf_counter() - clock
        if stage.done_units is None:
            stage.done_units = stage.units

    def llm_bar(self, *, enabled: bool) -> LLMProgress:
        """One :class:`~agentrec.core.progress.LLMProgress` over every LLM session still planned, times its
        strategy's generation steps (as :func:`~agentrec.pipelines.predict.predict` counts them), made when the LLM
        work starts, so that its rate and ETA are the LLM's alone."""
        todo = [s for s in self.stages if s.kind == "llm" and s.seconds is None]
        unit = "session-step" if any(_steps(s.strategy) > 1 for s in todo) else "session"
        bar = LLMProgress(None, desc="compare LLM", unit=unit, enabled=enabled)
        bar.reserve(int(sum(s.units * _steps(s.strategy) for s in todo)))  # each predict call takes its share
        return bar

    def summary(self) -> list[dict]:
        """The stages as the manifest records them (label, kind, planned and done units, seconds)."""
        return [{"stage": s.label, "kind": s.kind, "units": s.units, "done_units": s.done_units,
                 "seconds": s.seconds, "work_s": s.work_s} for s in self.stages]


def _steps(strategy: str | None) -> int:
    return len(STRATEGIES[strategy].steps) if strategy in STRATEGIES else 1


def _duration(seconds: float) -> str:
    """``42 s``, ``3m 05s``, ``1h 02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def plan_stages(state: _State, shown: list[str], *, n: int, n_valid: int) -> list[Stage]:
    """The stages of a comparison in the order :func:`run_compare` runs them, with their planned work."""
    c = state.config
    planned: set[str] = set()

    def epochs(name: str) -> int:
        """Epochs at most that row ``name`` trains: each model it needs that is neither planned nor on disk."""
        units = 0
        for model in _needs(name, c.base):
            if model not in planned:
                planned.add(model)
                if model != "pop" and not state.checkpoint_exists(model):
                    units += c.epochs
        return units

    stages = []
    for name in shown:
        units = epochs(name)
        stages.append(Stage(("row", name), f"{_label(name, c.base)}: {'train, ' if units else ''}evaluate on test",
                            kind="train", units=units))
    if c.strategies and c.hybrid and c.hybrid_model not in planned:
        units = epochs(c.hybrid_model)
        stages.append(Stage(("row", c.hybrid_model), f"{_label(c.hybrid_model, c.base)} for the hybrid: "
                                                     f"{'train' if units else 'load'}", kind="train", units=units))
    for strategy in c.strategies:
        label = STRATEGY_LABELS.get(strategy, strategy)
        if n_valid:
            stages.append(Stage(("llm", strategy, "valid"), f"LLM {label} on {_sessions(n_valid, 'validation')}",
                                kind="llm", units=n_valid, strategy=strategy))
        stages.append(Stage(("llm", strategy, "test"), f"LLM {label} on {_sessions(n, 'test')}", kind="llm", units=n,
                            strategy=strategy))
        if c.hybrid:
            what = "choose its fusion on validation, rank" if n_valid else "rank"
            stages.append(Stage(("hybrid", strategy), f"Hybrid {label}: {what}"))
    stages.append(Stage(("report",), "tables, figures and manifest"))
    return stages


def _sessions(n: int, split: str) -> str:
    return f"{n} {split} session{'s' if n != 1 else ''}"


def _needs(name: str, base: str) -> list[str]:
    """The trained models behind row ``name``: SemSR's I+ / F+ need their variant and the plain base model."""
    return [name[:-1], base] if name in ("semsr-i+", "semsr-f+") else [name]


# ================================================================================================ compare
def run_compare(out: str | Path, config: CompareConfig | None = None, *, data: str | Path | None = None,
                engine=None, engine_config=None, prompts=None, generation=None, cache_file: str | Path | None = None,
                store: str | Path | None = None, progress: bool = True, command: str | None = None) -> CompareResult:
    """Run (or reuse) every method, write the tables, the plot and the manifest to ``out``.

    Args:
        out: output folder (checkpoints, LLM rows, generation cache, index and reports live here).
        config: which methods, training budget, LLM sample size, bootstrap, and ``device``: where torch work runs
            (the session models, the SemSR item table, the index's embedder, the hybrid's scoring).
        data: a prepared dataset folder; default :data:`DEFAULT_DATA`, prepared (MovieLens-100K,
            leave-one-out) when it does not exist yet.
        engine: an Engine object or engine name (default ``hf`` with SmolLM2); made only when an
            LLM row has to be computed.
        engine_config, prompts, generation: as in :func:`agentrec.pipelines.predict.predict`.
        cache_file: generation cache (default ``out/generations.sqlite``).
        store: Chroma store folder (default ``out/vectorstore``).
        progress: training progress bars and one bar over the LLM sessions (tok/s, ETA); while they are drawn,
            log lines are written above them (tqdm's ``logging_redirect_tqdm``) instead of into them. The stage
            lines with the overall ETA (:class:`StageClock`) are logged either way (INFO).
        command: the command line, recorded in the manifest.

    Returns:
        A :class:`CompareResult` (tables, manifest, what was trained and generated in this call).
    """
    with _logs_above_bars(progress):
        return _run_compare(out, config, data=data, engine=engine, engine_config=engine_config, prompts=prompts,
                            generation=generation, cache_file=cache_file, store=store, progress=progress,
                            command=command)


def _logs_above_bars(progress: bool):
    """While bars are drawn, console log lines go through ``tqdm.write``, which keeps them off the bars' line."""
    if not progress:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _run_compare(out, config, *, data, engine, engine_config, prompts, generation, cache_file, store, progress,
                 command) -> CompareResult:
    """:func:`run_compare`'s work."""
    import torch

    started, cpu_started = time.perf_counter(), time.process_time()
    config = config or CompareConfig()
    for name, path, folder in (("out", out, True), ("store", store, True), ("cache_file", cache_file, False)):
        check_writable(name, path, folder=folder)  # before anything is trained or generated
    device = resolve_device(config.device)  # a malformed name or a missing GPU fails before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    if data is None and not (DEFAULT_DATA / "stats.json").exists():  # a given folder must already be prepared

        logger.info("compare: preparing MovieLens-100K (leave-one-out) in %s", DEFAULT_DATA)
        prepare_dataset("ml-100k", out=DEFAULT_DATA, protocol="leave-one-out")
    dataset = PreparedDataset.load(DEFAULT_DATA if data is None else data)
    engine_config = engine_config or EngineConfig(threads=config.threads)
    prompts = prompts or PromptConfig(seed=config.seed, **LLM_PROMPTS)
    generation = generation or GenerationConfig(seed=config.seed, **LLM_GENERATION)
    state = _State(out=out, dataset=dataset, config=config, progress=progress)
    n = min(config.llm_sessions, len(dataset.test)) if config.strategies else len(dataset.test)
    choose = bool(config.strategies) and config.hybrid and config.hybrid_config is None
    n_valid = min(config.valid_sessions, len(dataset.valid)) if choose else 0
    if choose and n_valid == 0:  # before anything is trained
        raise OptionError("valid_sessions", f"has no validation sessions to choose the hybrid's fusion on in "
                                            f"{dataset.name}; fix the fusion instead (--weight and --candidates)")
    shown = list(dict.fromkeys(["pop", *config.models]))
    clock = StageClock(plan_stages(state, shown, n=n, n_valid=n_valid), started=started)

    # ---- session models and SemSR variants, on the whole test split
    session_rows = []
    for name in shown:
        with clock.stage(("row", name)) as stage:
            before = state.epochs_trained()
            session_rows.append(state.session_row(name))
            stage.done_units = state.epochs_trained() - before
    needs_hybrid_model = config.strategies and config.hybrid and config.hybrid_model not in state.models
    if needs_hybrid_model:  # trained (or reused) before the LLM runs, so that every stage after it is LLM work
        with clock.stage(("row", config.hybrid_model)) as stage:
            before = state.epochs_trained()
            state.model(config.hybrid_model)
            stage.done_units = state.epochs_trained() - before

    # ---- LLM and hybrid rows, on the first llm_sessions test sessions; each hybrid's fusion is chosen on the
    # LLM's titles for the first valid_sessions validation sessions, before its test sessions are looked at
    llm_rows, hybrid_rows, checks = [], [], []
    if config.strategies:
        llm = _LLM(state, engine, engine_config, prompts, generation, cache_file or out / "generations.sqlite",
                   store or out / "vectorstore", n, n_valid, bar=lambda: clock.llm_bar(enabled=progress))
        try:
            for strategy in config.strategies:
                valid = None
                if choose:
                    with clock.stage(("llm", strategy, "valid")) as stage:
                        valid = llm.row(strategy, split="valid")
                        stage.done_units, stage.work_s = (0, None) if valid[1]["reused"] else \
                            (n_valid, valid[1]["wall_s"])
                with clock.stage(("llm", strategy, "test")) as stage:
                    row, record, candidates = llm.row(strategy)
                    stage.done_units, stage.work_s = (0, None) if record["reused"] else (n, record["wall_s"])
                llm_rows.append(row)
                if config.hybrid:
                    with clock.stage(("hybrid", strategy)):
                        hybrid, check = state.hybrid_row(row, record, candidates, valid, config.hybrid_model)
                    hybrid_rows.append(hybrid)
                    checks.append(check)
        finally:
            llm.close_bar()
        manifest_llm = llm.manifest()
    else:
        manifest_llm = None
    clock.begin(("report",))

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
        "device": str(device),  # where torch work ran (config.device as asked, auto resolved)
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
        "hybrid": {"grid": None if config.hybrid_config else jsonable(asdict(config.hybrid_grid)),
                   "valid_sessions": config.valid_sessions if config.hybrid_config is None else 0,
                   "rule": ("among the fusions that beat the model on validation beyond noise, the best Recall@20, "
                            "ties by MRR@20, then the smaller w, M and c; none: w = 0; never test"),
                   "rows": checks} if hybrid_rows else None,
        "noise": (f"{config.bootstrap} paired bootstrap resamples of sessions (seed {config.seed}); intervals are "
                  f"{config.level:.0%} percentile intervals; '~' = the {config.level:.0%} interval of (best - row) "
                  "contains 0"),
        "cost": COST_NOTE,
        "trained_in_this_call": state.trained,
        "stages": clock.summary(),  # each stage's planned and done work and wall seconds (the stage lines' ETA)
        "seconds": None,
    }
    result = CompareResult(out=out, tables=tables, manifest=manifest, trained=state.trained,
                           generated=manifest_llm["engine_calls"] if manifest_llm else 0, seconds=0.0,
                           hybrid_checks=checks)
    result.seconds = time.perf_counter() - started
    manifest["seconds"] = result.seconds
    manifest["cpu_seconds"] = time.process_time() - cpu_started  # this process, all threads
    write_outputs(result, config)
    return result


def write_outputs(result: CompareResult, config: CompareConfig) -> None:
    """``compare.md``, ``compare.csv``, ``compare.json``, the figures (``forest.png``, ``cost_quality.png``,
    ``recall_at_k.png``: :data:`FIGURES`) and ``manifest.json`` in ``result.out``.

    Each file is written aside and renamed over the old one; ``manifest.json`` comes last and lists the
    size and sha256 of the others under ``"outputs"``. A figure that failed to draw is not written (an
    old one of that name is removed, so no figure outlives its tables) and not listed.
    """
    out = result.out
    manifest = result.manifest
    budget = training_note(config, manifest.get("runs") or {})
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
        f"- Session models: {SESSION_PROTOCOL}. Training: {budget}. SemSR variants wrap {_label(config.base, config.base)} with the `{config.embedder}` embedder; "
        f"I+/F+ re-order their top-{config.rerank_depth} by the plain model.",
    ]
    if llm:
        header.append(f"- LLM rows: engine `{llm.get('engine')}`; protocol: {llm.get('protocol')}.")
        if config.hybrid:
            if config.hybrid_config is None:
                c_values = ", ".join(f"{c:g}" for c in config.hybrid_grid.c)
                protocol = hybrid_protocol(f"w and M as chosen, c = {c_values}", fill=True)
                how = (f"w and M chosen per row on the LLM's titles for the first {llm.get('valid_sessions')} "
                       f"validation sessions over {config.hybrid_grid.size} fusions (among those that beat the model "
                       "there beyond noise, the best Recall@20, ties by MRR@20, then the smaller w; none: w = 0), "
                       "never on test; the choice and the grid are below")
            else:
                protocol, how = config.hybrid_config.protocol, f"fusion given: {config.hybrid_config.label}"
            header.append(f"- Hybrid rows ({_label(config.hybrid_model, config.base)}): {how}. Protocol: {protocol}.")
    header += [
        f"- Metrics in %, with {config.level:.0%} bootstrap intervals [lo, hi] over sessions "
        f"({config.bootstrap} resamples, seed {config.seed}). **Bold**: best in its column; `~`: within noise of "
        f"the best (paired bootstrap: the {config.level:.0%} interval of best - row contains 0); unmarked: "
        "below the best beyond noise.",
        f"- Cost: {COST_NOTE}.",
        "",
    ]
    figures = draw_figures(result.tables, level=config.level)
    checks = [format_checks(result.hybrid_checks, markdown=True)] if result.hybrid_checks else []
    markdown = "\n".join(header) + "\n" + "\n\n".join([*(format_markdown(t) for t in result.tables), *checks,
                                                      *([format_figures(figures)] if figures else [])]) + "\n"
    records = [record for table in result.tables for record in table_records(table)]
    table_csv = io.StringIO(newline="")
    writer = csv.DictWriter(table_csv, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    outputs = {
        "compare.md": markdown.encode("utf-8"),
        "compare.csv": table_csv.getvalue().encode("utf-8"),
        "compare.json": (json.dumps({
            "unit": "metrics are fractions (0-1); intervals are bootstrap percentile intervals",
            "tables": [{"title": t.title, "n": t.n, "rows": table_records(t)} for t in result.tables],
            "hybrid_vs_model": result.hybrid_checks,  # per hybrid row: the fusion, its validation grid, hybrid - model
            "manifest": "manifest.json",
        }, indent=2, default=float) + "\n").encode("utf-8"),
        **figures,
    }
    for name in FIGURES.keys() - figures.keys():
        (out / name).unlink(missing_ok=True)
    # Each file is replaced whole (written aside, renamed in); the manifest goes last and records the
    # sha256 of the others, so a set left mixed by a kill between two renames can be told apart.
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

    def train_config(self) -> TrainConfig:
        return self.config.train_config()

    def llm_table(self):
        if self._table is None:
            self._table = load_llm_table(self.dataset, self.config.embedder, progress=False, device=self.config.device)
        return self._table

    def checkpoint_exists(self, name: str) -> bool:
        """Whether model ``name`` (pop, a session model, semsr-i or semsr-f) has a finished checkpoint to reuse
        (the folder and files :func:`~agentrec.pipelines.train.train_or_reuse` looks for)."""
        folder = self.out / "runs" / f"{name}-{self.spec(name).key(self.dataset)}"
        return (folder / RUN_FILE).exists() and (folder / WEIGHTS_FILE).exists()

    def epochs_trained(self) -> int:
        """Epochs trained in this call so far, over every model (reused checkpoints count none)."""
        return sum(r.get("epochs_run") or 0 for r in self.runs.values() if not r["reused"])

    def spec(self, name: str) -> RunSpec:
        """The run behind row ``name`` (pop, a session model, semsr-i or semsr-f)."""
        c = self.config
        variant = {"semsr-i": "init", "semsr-f": "fusion"}.get(name)
        model = c.base if variant else name
        settings = {} if model == "pop" else {"embedding_size": c.embedding_size}
        return RunSpec(model=model, variant=variant, embedder=c.embedder, train=self.train_config(),
                       model_settings=settings)

    def model(self, name: str):
        """The trained model ``name`` (pop, a session model, semsr-i or semsr-f), from its checkpoint or trained now."""
        if name in self.models:
            return self.models[name]
        spec = self.spec(name)
        folder, reused = train_or_reuse(spec, self.dataset, self.out / "runs", name=name, progress=self.progress,
                                        llm_table=self.llm_table() if spec.variant else None)
        if not reused:
            self.trained.append(str(folder))
        info, model = load_model(folder, self.dataset, device=self.config.device)  # evaluated and scored there
        self.models[name], self.infos[name] = model, info
        self.runs[name] = {"folder": str(folder), "key": spec.key(self.dataset), "reused": reused,
                           "best_epoch": info.best_epoch, "epochs_run": len(info.history),
                           "stopped_by": info.extra.get("stopped_by"), "train_samples": info.extra.get("train_samples"),
                           "precision": info.extra.get("precision"),
                           "valid": info.valid,
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

    def hybrid_row(self, llm_row: Row, record: dict, candidates: tuple[np.ndarray, np.ndarray], valid,
                   model_name: str) -> tuple[Row, dict]:
        """The hybrid of an LLM row with ``model_name``, and its check against the model alone (:func:`hybrid_check`).

        ``candidates``: the row's grounded lists ``(ids, distances)``, each ``(n, LLM_K)`` (``_LLM.row``);
        ``valid``: what ``_LLM.row(strategy, split="valid")`` returned, the validation sessions the fusion
        is chosen on (:func:`~agentrec.pipelines.hybrid.choose_fusion` over ``hybrid_grid``), or None when
        ``hybrid_config`` fixes it. The model's scores are computed in the evaluator's chunks
        (:func:`~agentrec.pipelines.hybrid.first_scores`), so a fusion with ``w = 0`` gives exactly the ranks
        of the model's own row.
        """
        c = self.config
        model = self.model(model_name)
        n = len(llm_row.ranks)
        selection, valid_s = None, 0.0
        if valid is None:
            fusion = c.hybrid_config
        else:  # chosen on the validation sessions, before the test sessions are looked at
            _, valid_record, (valid_ids, _) = valid
            targets = self.dataset.valid.target[: len(valid_ids)].astype(np.int64)
            scores = first_scores(model, self.dataset.valid, len(valid_ids))
            points = c.hybrid_grid.points()
            ranks = grid_ranks(valid_ids, scores, targets, [*points, MODEL_ALONE])
            selection = choose_fusion(ranks[:, :-1], points, ranks[:, -1], resamples=c.bootstrap, seed=c.seed,
                                      level=c.level)
            fusion = selection.config
            valid_s = valid_record["wall_s"]
            logger.info("compare: hybrid %s -> %s: %s", record["strategy"], model_name, selection.describe())
        with _Clock() as clock:
            ids, _ = candidates
            samples = self.dataset.test
            targets = samples.target[:n].astype(np.int64)
            scores = first_scores(model, samples, n)
            ranks, _, _ = hybrid_ranks(ids, scores, targets, fusion, k=LLM_K)
        model_ranks = grid_ranks(ids, scores, targets, [MODEL_ALONE])[:, 0]  # the model alone, as its own row
        name = (f"Hybrid {STRATEGY_LABELS.get(record['strategy'], record['strategy'])} -> "
                f"{_label(model_name, c.base)}")
        if selection is None:
            chosen = f"fusion given: {fusion.label}"
        elif selection.fell_back:
            chosen = f"no fusion beat the model on {selection.n} validation sessions: w = 0, the model's ranking"
        else:
            chosen = f"fusion chosen on {selection.n} validation sessions: {fusion.label}"
        row = Row(name=name, kind="hybrid", ranks=ranks, timed_sessions=n, wall_s=llm_row.wall_s + clock.wall,
                  cpu_s=llm_row.cpu_s + clock.cpu, tokens=llm_row.tokens,
                  train_s=self.runs[model_name]["train_s"] + valid_s,  # choosing itself: milliseconds
                  protocol=fusion.protocol, note="; ".join(x for x in (chosen, llm_row.note) if x))
        check = hybrid_check(name, _label(model_name, c.base), ranks, model_ranks, selection=selection,
                             fusion=fusion, config=c)
        return row, check


class _LLM:
    """LLM-only rows: computed through :func:`agentrec.pipelines.predict.predict`, or reused from ``out/llm``."""

    def __init__(self, state: _State, engine, engine_config, prompts, generation, cache_file, store, n: int,
                 n_valid: int = 0, bar=None):
        self.state, self.engine, self.engine_config = state, engine, engine_config
        # one bar over every LLM session of the comparison, made by ``bar()`` (StageClock.llm_bar) when the first
        # row is generated, after the index and the model are loaded (one-offs that are not the LLM's rate)
        self.make_bar, self.bar = bar, None
        self.prompts, self.generation, self.cache_file, self.store, self.n = prompts, generation, cache_file, store, n
        self.n_valid = n_valid  # validation sessions (the hybrid's fusion is chosen on them)
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
                embedder = get_embedder(self.state.config.embedder, device=self.state.config.device)
                self.index = CatalogueIndex.build(self.state.dataset, embedder, store=self.store, progress=False)
                self.index.match(["warm-up"], k=1)  # loads the query embedder: a one-off, not a per-session cost
            self.index_info = {"collection": self.index.name, "location": self.index.location,
                               "reused": self.index.reused, "seconds": clock.wall}
        return self.index

    def row(self, strategy: str, split: str = "test") -> tuple[Row, dict, tuple[np.ndarray, np.ndarray]]:
        """The LLM row of ``strategy`` on the first ``n`` test sessions (or ``n_valid`` validation sessions with
        ``split="valid"``), its record, and its grounded lists ``(ids, distances)``, each ``(n, LLM_K)``: in
        memory when generated now, read from ``out/llm`` (the same arrays,
        :func:`~agentrec.pipelines.hybrid.read_candidates`) when the row is reused."""
        engine = self._engine()
        sessions = self.n_valid if split == "valid" else self.n
        spec = {"strategy": strategy, "engine": engine.fingerprint, "prompts": asdict(self.prompts),
                "generation": asdict(self.generation), "embedder": self.state.config.embedder, "k": LLM_K,
                "sessions": sessions, "dataset": self.state.dataset.fingerprint,
                **({"split": split} if split != "test" else {})}  # test rows keep the keys they had
        key = _key(spec)
        folder = self.state.out / "llm"
        folder.mkdir(parents=True, exist_ok=True)
        stem = strategy if split == "test" else f"{strategy}-{split}"
        lines, record_file = folder / f"{stem}-{key}.jsonl", folder / f"{stem}-{key}.row.json"
        if record_file.exists() and lines.exists():
            logger.info("compare: reusing %s", lines)
            if self.bar is not None:
                self.bar.reserve(-sessions * _steps(strategy))  # no LLM work: the bar's total and ETA leave it out
            record = json.loads(record_file.read_text())
            record["reused"] = True
            ids, distances, lines_read = read_candidates(lines, LLM_K)
            candidates = (ids, distances)
            ranks = np.array([math.inf if r["rank"] is None else r["rank"] for r in lines_read], dtype=np.float64)
        else:
            index = self._index()
            if hasattr(engine, "load"):
                engine.load()  # loading the model is a one-off, not part of the per-session cost
            if self.bar is None and self.make_bar is not None:
                self.bar = self.make_bar()
            with _Clock() as clock:  # predict takes its sessions x steps from the bar's reserve
                result = predict(self.state.dataset, strategy, engine, k=LLM_K, limit=sessions, out=lines, split=split,
                                 prompts=self.prompts, generation=self.generation, index=index,
                                 cache=self.cache_file, ground_distance=0.4,
                                 progress=self.bar if self.bar is not None else False)
            self.engine_calls += result.engine_calls
            record = {"strategy": strategy, "split": split, "key": key, "file": str(lines), "spec": spec, "n": result.n,
                      "wall_s": clock.wall, "cpu_s": clock.cpu, "tokens_in": result.tokens_in,
                      "tokens_out": result.tokens_out, "engine_calls": result.engine_calls,
                      "engine_seconds": result.engine_seconds, "cache_hits": result.cache_hits,
                      "unparseable": result.unparseable, "ungrounded": result.ungrounded,
                      "exact_titles": result.exact_titles, "protocol": PROTOCOL}
            # the row's record is written after its lines: both present means the row is complete
            fsutil.atomic_write_text(record_file, json.dumps(record, indent=2) + "\n")
            record["reused"] = False
            candidates, ranks = result.candidates.head(LLM_K), result.ranks
        record["file"] = str(lines)  # the folder may have moved since
        self.records[strategy if split == "test" else f"{strategy} ({split})"] = record
        note = f"{record['cache_hits']} of the generations came from the cache" if record["cache_hits"] else ""
        row = Row(name=f"LLM {STRATEGY_LABELS.get(strategy, strategy)}", kind="llm", ranks=ranks,
                  timed_sessions=record["n"], wall_s=record["wall_s"], cpu_s=record["cpu_s"],
                  tokens=record["tokens_in"] + record["tokens_out"], protocol=record["protocol"], note=note)
        return row, record, candidates

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def manifest(self) -> dict:
        engine = self.engine
        config = {k: v for k, v in asdict(self.engine_config).items() if k != "api_key"}
        return {"engine": getattr(engine, "fingerprint", str(engine)), "engine_config": config,
                "prompts": asdict(self.prompts), "generation": asdict(self.generation), "sessions": self.n,
                "sample": f"the first {self.n} test sessions in split order", "k": LLM_K,
                "valid_sessions": self.n_valid,
                "valid_sample": (f"the first {self.n_valid} validation sessions in split order (the hybrid's fusion is "
                                 "chosen on them)") if self.n_valid else None,
                "cache_file": str(self.cache_file), "index": self.index_info, "protocol": PROTOCOL,
                "engine_calls": self.engine_calls,
                "rows": {s: {k: v for k, v in r.items() if k != "spec"} for s, r in self.records.items()}}
