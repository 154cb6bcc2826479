"""Figures of the evidence, as PNG files: compare's forest plot, cost-versus-quality scatter and Recall@K
curve; train's learning curve; predict's histogram of grounding distances.

Every function takes plain data (lists, dicts, arrays; never a compare table or a run object), draws one
figure and writes it to ``path``: a file path, written atomically (rendered in memory, then
:func:`agentrec.core.fsutil.atomic_write_bytes`), or a binary file object such as ``io.BytesIO``. The
figures are drawn on matplotlib's Agg canvas directly (``Figure`` and ``FigureCanvasAgg``, never
``pyplot``): matplotlib is imported only when a function runs, so importing this module stays light, and a
caller's own backend and open figures are left alone.

compare's rows are the records of its ``compare.json`` (``{"method", "kind", "n", "recall@20",
"recall@20_lo", "recall@20_hi", "cpu_s_per_1k", ...}``, metrics as fractions), so its figures can be drawn
again from that file::

    import json
    from agentrec.pipelines.plots import plot_cost_quality, plot_forest

    tables = json.load(open("runs/compare/compare.json"))["tables"]
    plot_forest(tables, "forest.png")
    plot_cost_quality(tables[0]["rows"], "cost_quality.png", title=tables[0]["title"])

A figure is drawn after the results it shows are written; callers wrap it in :func:`best_effort`, so a
failed figure is a logged warning (with its traceback), never lost results.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from agentrec.core import fsutil

logger = logging.getLogger(__name__)

DPI = 120
# kind -> (legend label, colour map whose shades tell the methods of one kind apart)
KINDS = {
    "floor": ("popularity floor", "Greys"),
    "session": ("session model", "Blues"),
    "semantic": ("SemSR variant", "Greens"),
    "llm": ("LLM", "Oranges"),
    "hybrid": ("hybrid", "Purples"),
}
LINESTYLES = ("-", "--", "-.", ":")


# ================================================================================================ compare
def plot_forest(tables: Sequence[dict], path, *, metrics: Sequence[str] = ("recall@20", "mrr@20"),
                level: float = 0.95):
    """Each method's point estimate and interval of ``metrics``: one column of panels per metric, one row per table.

    Args:
        tables: ``[{"title": str, "n": int, "rows": [record, ...]}, ...]`` as in ``compare.json``; a record
            holds ``method``, ``kind`` (floor, session, semantic, llm, hybrid), and for each metric its
            point estimate ``METRIC`` and interval ``METRIC_lo`` / ``METRIC_hi`` as fractions.
        path: the PNG file to write, or a binary file object.
        metrics: one panel each, side by side; every block shares each panel's x axis.
        level: the intervals' confidence level (for the axis label).

    Returns:
        ``path``. Methods are grouped by kind (in the order of :data:`KINDS`), coloured by it and labelled
        with their table's N; a dotted line marks each block's best point estimate.
    """
    from matplotlib.lines import Line2D

    heights = [len(t["rows"]) + 1.0 for t in tables]  # one unit per method, plus the block's axis
    fig = _figure(11.0, 1.0 + 0.3 * sum(heights) + 0.45 * len(tables))
    # one grid for every block, so the panels of a metric line up (shared x: the blocks compare at a glance)
    grid = fig.subplots(len(tables), len(metrics), sharex="col", squeeze=False,
                        gridspec_kw={"height_ratios": heights})
    for axes, table in zip(grid, tables):
        rows = _by_kind(table["rows"])
        colours = _kind_colours(rows)
        y = np.arange(len(rows))
        for ax, metric in zip(axes, metrics):
            point = np.array([100 * r[metric] for r in rows])
            lo = np.array([100 * r[f"{metric}_lo"] for r in rows])
            hi = np.array([100 * r[f"{metric}_hi"] for r in rows])
            for i in range(len(rows)):
                ax.errorbar(point[i], y[i], xerr=[[point[i] - lo[i]], [hi[i] - point[i]]], fmt="o",
                            color=colours[i], ecolor=colours[i], elinewidth=2.0, capsize=3, markersize=5)
                ax.annotate(f"{point[i]:.1f}", (point[i], y[i]), xytext=(0, 5), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7, color="0.25")
            if len(rows):
                ax.axvline(point.max(), color="0.4", linestyle=":", linewidth=1.0)
            for boundary in _group_boundaries(rows):
                ax.axhline(boundary, color="0.85", linewidth=0.8)
            ax.set_ylim(len(rows) - 0.4, -0.7)  # first method on top, room for the value labels
            ax.set_xlabel(f"{_metric_label(metric)} (%), {level:.0%} interval")
            ax.xaxis.set_tick_params(labelbottom=True)  # every block keeps its own scale labels
            ax.grid(axis="x", alpha=0.3)
            ax.set_yticks(y, [])
        axes[0].set_yticks(y, [f"{r['method']}  (N={r.get('n', table.get('n'))})" for r in rows], fontsize=9)
        axes[0].set_title(_wrap(table["title"], 130), fontsize=10, loc="left")
    for column, metric in enumerate(metrics):
        top = max((r[f"{metric}_hi"] for t in tables for r in t["rows"]), default=0.0)
        grid[0, column].set_xlim(0, max(1.0, 100 * top * 1.08))
    shown = [k for k in KINDS if any(r.get("kind") == k for t in tables for r in t["rows"])]
    handles = [Line2D([], [], color=_shade(k, 0, 1), marker="o", linewidth=2.0) for k in shown]
    fig.legend(handles, [KINDS[k][0] for k in shown], loc="outside lower center", ncols=len(shown), fontsize=9,
               frameon=False)
    return _save(fig, path)


def plot_cost_quality(rows: Sequence[dict], path, *, metric: str = "recall@20", cost: str = "cpu_s_per_1k",
                      title: str | None = None, level: float = 0.95):
    """Inference cost (log x axis) against ``metric`` with its interval, one labelled point per method.

    Args:
        rows: records as in ``compare.json`` (``method``, ``kind``, ``METRIC``, ``METRIC_lo``,
            ``METRIC_hi`` as fractions, and ``cost``), measured on the same sessions.
        path: the PNG file to write, or a binary file object.
        metric: the quality on the y axis.
        cost: the record key of the x axis: CPU seconds per 1,000 sessions by default. A method without
            a positive cost is left out and named under the axis.
        title: the figure's title (say which sessions).
        level: the intervals' confidence level (for the axis label).

    Returns:
        ``path``.
    """
    rows = _by_kind(rows)
    colours = _kind_colours(rows)
    fig = _figure(9.0, 6.0)
    ax = fig.add_subplot()
    placed, missing = [], []
    for row, colour in zip(rows, colours):
        x = row.get(cost)
        if x is None or not math.isfinite(x) or x <= 0:
            missing.append(row["method"])
            continue
        y, lo, hi = (100 * row[key] for key in (metric, f"{metric}_lo", f"{metric}_hi"))
        ax.errorbar(x, y, yerr=[[y - lo], [hi - y]], fmt="o", color=colour, ecolor=colour, elinewidth=1.5,
                    capsize=3, markersize=7)
        # a leader line to the point, and a light box so a label reads over another method's interval
        placed.append(ax.annotate(row["method"], (x, y), xytext=(9, 0), textcoords="offset points", fontsize=8,
                                  va="center", color="0.1", zorder=5,
                                  bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none",
                                        "alpha": 0.8},
                                  arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.6, "shrinkA": 0,
                                              "shrinkB": 4}))
    ax.set_xscale("log")
    ax.set_xlabel("inference CPU seconds per 1,000 sessions (log scale)")
    ax.set_ylabel(f"{_metric_label(metric)} (%), {level:.0%} interval")
    ax.set_ylim(bottom=0)
    ax.margins(x=0.15)
    ax.grid(alpha=0.35, which="major")
    ax.grid(alpha=0.1, which="minor")
    ax.set_title(_wrap(title or "Cost and quality", 105), fontsize=10, loc="left")
    if missing:
        ax.text(0.0, -0.12, "no cost measured, not shown: " + ", ".join(missing), transform=ax.transAxes,
                fontsize=8, color="0.3", va="top")
    _legend_of_kinds(ax, [row for row in rows if row["method"] not in missing])
    _spread_labels(fig, ax, placed)
    return _save(fig, path)


def plot_recall_at_k(curves: Sequence[dict], path, *, n: int, max_k: int = 100, title: str | None = None):
    """Recall@K against K (1..``max_k``) for every method, as in the SemSR paper's Figure 3.

    Args:
        curves: ``[{"method": str, "kind": str, "ranks": (n,) array}, ...]``; ranks are 1-based, ``inf``
            a miss, over the same ``n`` sessions for every method.
        path: the PNG file to write, or a binary file object.
        n: the number of sessions (for the title).
        max_k: the largest K.
        title: the figure's title (default: the sessions it covers).

    Returns:
        ``path``. A method's colour says its kind; shade and line style tell the methods of a kind apart.
    """
    curves = _by_kind(curves)
    colours = _kind_colours(curves)
    ks = np.arange(1, max_k + 1)
    fig = _figure(9.5, 5.2)
    ax = fig.add_subplot()
    seen: dict[str, int] = {}
    for curve, colour in zip(curves, colours):
        ranks = np.asarray(curve["ranks"], dtype=np.float64)
        recall = 100 * (ranks[:, None] <= ks[None, :]).mean(0) if len(ranks) else np.zeros(len(ks))  # (K,)
        number = seen[curve.get("kind")] = seen.get(curve.get("kind"), -1) + 1
        ax.plot(ks, recall, LINESTYLES[number % len(LINESTYLES)], color=colour, label=curve["method"],
                linewidth=1.8)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    title = title or f"Recall@K, {n:,} test sessions (the same sessions for every method)"
    ax.set_title(_wrap(title, 100), fontsize=10, loc="left")
    ax.set_xlim(1, max_k)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside right upper")
    return _save(fig, path)


# ================================================================================================ train
def plot_learning_curve(history: Sequence[dict], path, *, metric: str, best_epoch: int | None = None,
                        title: str | None = None):
    """Training loss and the validation selection metric per epoch, in two panels; the best epoch marked.

    Args:
        history: ``run.json``'s history records, one per epoch: ``{"epoch": int, "loss": float,
            "valid": {metric: fraction, ...}, ...}``.
        path: the PNG file to write, or a binary file object.
        metric: the validation metric that selected the epoch (``recall@100``).
        best_epoch: the selected epoch (1-based), marked in both panels.
        title: the figure's title (say which model and data).

    Returns:
        ``path``.
    """
    from matplotlib.ticker import MaxNLocator

    epochs = [int(h["epoch"]) for h in history]
    loss = [float(h["loss"]) for h in history]
    valid = [100 * float(h["valid"][metric]) for h in history]
    fig = _figure(10.0, 4.2)
    loss_ax, valid_ax = fig.subplots(1, 2, sharex=True)
    loss_ax.plot(epochs, loss, "o-", color="tab:blue", linewidth=1.8)
    loss_ax.set_ylabel("training loss (mean per sample)")
    loss_ax.set_title("Training loss", fontsize=10)
    valid_ax.plot(epochs, valid, "o-", color="tab:green", linewidth=1.8)
    valid_ax.set_ylabel(f"validation {_metric_label(metric)} (%)")
    valid_ax.set_title(f"Validation {_metric_label(metric)} (selects the epoch)", fontsize=10)
    if best_epoch is not None and best_epoch in epochs:
        best = epochs.index(best_epoch)
        for ax in (loss_ax, valid_ax):
            ax.axvline(best_epoch, color="tab:red", linestyle="--", linewidth=1.0)
        valid_ax.plot([best_epoch], [valid[best]], marker="*", markersize=15, color="tab:red", linestyle="none",
                      label=f"best: epoch {best_epoch}, {valid[best]:.2f}%")
        valid_ax.legend(fontsize=8, loc="lower right")
    for ax in (loss_ax, valid_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # room for the best epoch's star at either end
    if title:
        fig.suptitle(_wrap(title, 120), fontsize=10)
    return _save(fig, path)


# ================================================================================================ predict
def plot_distances(distances: Sequence[float], path, *, threshold: float, unparseable: int = 0,
                   title: str | None = None):
    """A histogram of grounding distances: each session's top-1 grounded item to its generated title.

    Args:
        distances: the cosine distance of each parsed title's nearest catalogue item (sessions whose
            output had no title have none and are counted in ``unparseable``).
        path: the PNG file to write, or a binary file object.
        threshold: the distance above which a title counts as ungrounded (marked, and counted each side).
        unparseable: outputs with no parseable title (in the title of the figure).
        title: what was predicted (strategy, engine, dataset); the counts are added to it.

    Returns:
        ``path``.
    """
    values = np.asarray([d for d in distances if d is not None and math.isfinite(d)], dtype=np.float64)
    grounded, ungrounded = values[values <= threshold], values[values > threshold]
    upper = max(1.0, threshold * 1.25, math.ceil(values.max() * 10) / 10 if len(values) else 0.0)
    bins = np.linspace(0.0, upper, round(upper / 0.025) + 1)  # 0.025 wide
    fig = _figure(8.5, 4.8)
    ax = fig.add_subplot()
    ax.hist([grounded, ungrounded], bins=bins, stacked=True, color=["tab:blue", "tab:red"], edgecolor="white",
            linewidth=0.4,
            label=[f"grounded (distance <= {threshold:g}): {len(grounded):,}",
                   f"ungrounded (> {threshold:g}): {len(ungrounded):,}"])
    ax.axvline(threshold, color="0.2", linestyle="--", linewidth=1.2)
    ax.annotate(f"ungrounded above {threshold:g}", (threshold, 1.0), xycoords=("data", "axes fraction"),
                xytext=(4, -4), textcoords="offset points", ha="left", va="top", fontsize=8, color="0.2")
    if not len(values):
        ax.text(0.5, 0.5, "no parseable title to ground", transform=ax.transAxes, ha="center", color="0.4")
        ax.set_ylim(0, 1)
    ax.set_xlim(0.0, upper)
    ax.margins(y=0.15)  # room above the tallest bar for the legend
    ax.set_xlabel("cosine distance of the top-1 grounded item to the generated title")
    ax.set_ylabel("sessions")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    counts = (f"{len(values) + unparseable:,} sessions: {len(values):,} parsed titles, "
              f"{unparseable:,} unparseable output{'' if unparseable == 1 else 's'} (no title, not shown)")
    ax.set_title(_wrap(f"{title}\n{counts}" if title else counts, 100), fontsize=10, loc="left")
    return _save(fig, path)


# ================================================================================================ helpers
@contextlib.contextmanager
def best_effort(what) -> Iterator[None]:
    """Run a figure's drawing; on any error log a warning with its traceback instead of raising.

    The results a figure shows are written before it, so a failed figure must not turn a finished run,
    comparison or prediction into a failure. ``what`` names the figure in the warning.
    """
    try:
        yield
    except Exception:  # a bug in drawing: reported in full, but the results stand
        logger.warning("could not draw %s; the results are written without it", what, exc_info=True)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global state
    return fig


def _save(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    if hasattr(path, "write"):
        path.write(buffer.getvalue())
    else:
        fsutil.atomic_write_bytes(Path(path), buffer.getvalue())
    return path


def _wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (its own line breaks kept)."""
    return "\n".join(textwrap.fill(line, width) for line in str(text).splitlines())


def _metric_label(metric: str) -> str:
    family, _, k = metric.partition("@")
    return {"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG"}.get(family, family) + (f"@{k}" if k else "")


def _by_kind(rows: Sequence[dict]) -> list[dict]:
    """``rows`` grouped by kind in the order of :data:`KINDS` (unknown kinds last), in order within a kind."""
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(rows, key=lambda r: order.get(r.get("kind"), len(order)))


def _group_boundaries(rows: Sequence[dict]) -> list[float]:
    """y positions between two neighbouring rows of different kinds."""
    return [i - 0.5 for i in range(1, len(rows)) if rows[i].get("kind") != rows[i - 1].get("kind")]


def _shade(kind: str | None, number: int, count: int):
    """The colour of the ``number``-th of ``count`` methods of ``kind``: darker first, lighter after."""
    from matplotlib import colormaps

    name = KINDS.get(kind, ("", "Greys"))[1]
    position = 0.85 - 0.4 * (number / max(count - 1, 1)) if count > 1 else 0.8
    return colormaps[name](position)


def _kind_colours(rows: Sequence[dict]) -> list:
    totals: dict = {}
    for row in rows:
        totals[row.get("kind")] = totals.get(row.get("kind"), 0) + 1
    seen: dict = {}
    colours = []
    for row in rows:
        kind = row.get("kind")
        seen[kind] = seen.get(kind, -1) + 1
        colours.append(_shade(kind, seen[kind], totals[kind]))
    return colours


def _legend_of_kinds(ax, rows: Sequence[dict]) -> None:
    from matplotlib.lines import Line2D

    shown = [k for k in KINDS if any(r.get("kind") == k for r in rows)]
    handles = [Line2D([], [], color=_shade(k, 0, 1), marker="o", linestyle="none") for k in shown]
    ax.legend(handles, [KINDS[k][0] for k in shown], fontsize=8, loc="best", title="kind", title_fontsize=8)


def _spread_labels(fig, ax, labels: list, *, tries: int = 41) -> None:
    """Move point labels up or down, a line at a time, so that no two overlap and each stays inside ``ax``
    vertically (the nearest free place; with none free, the place with the least overlap)."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    def extent(label):  # the text's box alone (an Annotation's own extent includes its leader line)
        label.update_positions(renderer)
        return Text.get_window_extent(label, renderer)

    if not labels:
        return
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # the layout (and so each label's place) is settled first
    inside = ax.get_window_extent(renderer)
    taken = []
    for label in labels:
        x0, y0 = label.xyann
        line = extent(label).height * 72 / fig.dpi + 1.0  # its height in points
        best, least = (x0, y0), math.inf
        for attempt in range(tries):  # offsets 0, -1, +1, -2, +2, ... lines
            label.xyann = (x0, y0 + line * ((attempt + 1) // 2) * (1 if attempt % 2 == 0 else -1))
            box = extent(label)
            overlap = sum(b.width * b.height for b in (Bbox.intersection(box, other) for other in taken) if b)
            if box.y0 < inside.y0 or box.y1 > inside.y1:
                overlap += box.width * box.height  # outside the axes: as bad as covering another label
            if overlap < least:
                best, least = label.xyann, overlap
            if overlap == 0:
                break
        label.xyann = best
        taken.append(extent(label))
