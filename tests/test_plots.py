"""The figures (:mod:`agentrec.pipelines.plots`): each function writes a PNG that matplotlib reads back, from
small synthetic inputs; a failed figure never costs the results it shows; importing the module stays light.

The train, predict and compare pipelines' own figures are checked in ``test_cli.py``, ``test_predict.py``
and ``test_compare.py``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import numpy as np

from agentrec.pipelines import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(source) -> np.ndarray:
    """The pixels of a PNG file or bytes, after checking the signature and that it is not a blank canvas."""
    from matplotlib.image import imread

    data = source if isinstance(source, bytes) else source.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000  # a drawn figure, not an empty canvas
    pixels = imread(io.BytesIO(data), format="png")  # (H, W, 4) floats in [0, 1]
    assert pixels.ndim == 3 and pixels.shape[0] >= 200 and pixels.shape[1] >= 600
    assert pixels[..., :3].std() > 0.05  # something is drawn on it
    return pixels


def records(n: int, methods) -> list[dict]:
    """compare.json-style rows: (name, kind, recall@20, mrr@20, CPU s per 1k) -> records with +-5 % intervals."""
    rows = []
    for name, kind, recall, mrr, cpu in methods:
        rows.append({"method": name, "kind": kind, "n": n, "recall@20": recall, "recall@20_lo": max(0, recall - 0.05),
                     "recall@20_hi": recall + 0.05, "mrr@20": mrr, "mrr@20_lo": max(0, mrr - 0.02),
                     "mrr@20_hi": mrr + 0.02, "cpu_s_per_1k": cpu})
    return rows


METHODS = [("Popularity", "floor", 0.05, 0.02, 0.02), ("NISER", "session", 0.21, 0.06, 0.9),
           ("SemNISER-F", "semantic", 0.23, 0.07, 1.4), ("LLM FS", "llm", 0.05, 0.03, 4200.0),
           ("Hybrid FS -> SemNISER-F", "hybrid", 0.24, 0.08, 4210.0)]


def test_forest_plot_of_two_tables(tmp_path):
    tables = [{"title": "Table 1: every method on the same 30 sessions", "n": 30, "rows": records(30, METHODS)},
              {"title": "Table 2: session models on the whole test split", "n": 943, "rows": records(943, METHODS[:3])}]
    path = tmp_path / "forest.png"
    assert plots.plot_forest(tables, path) == path
    read_png(path)
    assert os.listdir(tmp_path) == ["forest.png"]  # written aside and renamed: no temporary left
    buffer = io.BytesIO()
    plots.plot_forest(tables[:1], buffer, metrics=("recall@20",), level=0.9)  # a file object, one panel
    read_png(buffer.getvalue())


def test_forest_plot_reads_compare_json(tmp_path):
    """The figures can be drawn again from a compare.json (the plots take its records)."""
    from agentrec.pipelines.compare import CompareConfig, Row, make_table, table_records

    ranks = np.array([1.0, 3.0, np.inf, 25.0, 2.0, np.inf])
    rows = [Row(name="Popularity", kind="floor", ranks=ranks * 4, timed_sessions=6, wall_s=0.1, cpu_s=0.01),
            Row(name="NISER", kind="session", ranks=ranks, timed_sessions=6, wall_s=0.1, cpu_s=0.05)]
    table = make_table("Table 1", rows, config=CompareConfig(bootstrap=20))
    saved = json.loads(json.dumps({"tables": [{"title": table.title, "n": table.n, "rows": table_records(table)}]},
                                  default=float))
    plots.plot_forest(saved["tables"], tmp_path / "forest.png")
    plots.plot_cost_quality(saved["tables"][0]["rows"], tmp_path / "cost.png", title="Table 1")
    read_png(tmp_path / "forest.png")
    read_png(tmp_path / "cost.png")


def test_cost_quality_scatter_leaves_out_a_method_without_cost(tmp_path):
    rows = records(30, METHODS)
    rows[0]["cpu_s_per_1k"] = None  # no timing: not on a log axis, named under it
    rows.append({**rows[1], "method": "NARM", "kind": "a kind of its own"})  # an unknown kind still draws
    path = plots.plot_cost_quality(rows, tmp_path / "cost_quality.png", title="Table 1: 30 sessions")
    read_png(path)


def test_recall_at_k_curve(tmp_path):
    rng = np.random.default_rng(0)
    curves = [{"method": name, "kind": kind, "ranks": np.where(rng.random(40) < 0.5, rng.integers(1, 150, 40), np.inf)}
              for name, kind, *_ in METHODS]
    curves.append({"method": "empty", "kind": "llm", "ranks": np.array([])})
    path = plots.plot_recall_at_k(curves, tmp_path / "recall_at_k.png", n=40)
    read_png(path)


def test_learning_curve_with_the_best_epoch_marked(tmp_path):
    history = [{"epoch": e, "loss": 8.0 / e, "valid": {"recall@100": 0.3 + 0.02 * e - 0.002 * e * e}}
               for e in range(1, 8)]
    path = plots.plot_learning_curve(history, tmp_path / "learning_curve.png", metric="recall@100", best_epoch=5,
                                     title="niser on ml-toy")
    read_png(path)
    one = plots.plot_learning_curve(history[:1], tmp_path / "one.png", metric="recall@100", best_epoch=1)
    read_png(one)


def test_distance_histogram(tmp_path):
    distances = np.random.default_rng(0).uniform(0.0, 0.8, 60).tolist()
    path = plots.plot_distances(distances, tmp_path / "fs.distances.png", threshold=0.4, unparseable=7,
                                title="fs with scripted on ml-toy (test)")
    read_png(path)
    none = plots.plot_distances([], tmp_path / "none.png", threshold=0.4, unparseable=3)  # every output unparseable
    read_png(none)


def test_best_effort_logs_a_failed_figure_and_goes_on(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="agentrec.pipelines.plots"):
        with plots.best_effort(tmp_path / "x.png"):
            plots.plot_distances(["not a number"], tmp_path / "x.png", threshold=0.4)
        reached = True
    assert reached and not (tmp_path / "x.png").exists()
    assert "could not draw" in caplog.text and "Traceback" in caplog.text


def test_a_failed_figure_leaves_compare_tables_written(tmp_path, monkeypatch, caplog):
    from agentrec.pipelines.compare import CompareConfig, CompareResult, Row, make_table, write_outputs

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in drawing")

    config = CompareConfig(bootstrap=10)
    ranks = np.array([1.0, 3.0, np.inf, 2.0])
    rows = [Row(name="Pop", kind="floor", ranks=ranks, timed_sessions=4, wall_s=0.1, cpu_s=0.1)]
    manifest = {"dataset": {"name": "toy", "protocol": "leave-one-out", "fingerprint": "f" * 64},
                "created": "now", "git": {"commit": None}, "llm": None, "command": "test"}
    result = CompareResult(out=tmp_path, tables=[make_table("Table 1", rows, config=config)], manifest=manifest,
                           trained=[], generated=0, seconds=1.0)
    (tmp_path / "forest.png").write_bytes(b"an old figure")
    monkeypatch.setattr(plots, "plot_forest", broken)
    with caplog.at_level(logging.WARNING):
        write_outputs(result, config)
    written = json.loads((tmp_path / "manifest.json").read_text())["outputs"]
    assert set(written) == {"compare.md", "compare.csv", "compare.json", "cost_quality.png", "recall_at_k.png"}
    assert not (tmp_path / "forest.png").exists()  # no figure outlives its tables
    assert "could not draw forest.png" in caplog.text and "a bug in drawing" in caplog.text
    markdown = (tmp_path / "compare.md").read_text()
    assert "(cost_quality.png)" in markdown and "(forest.png)" not in markdown


def test_importing_plots_stays_light():
    code = "import sys, agentrec.pipelines.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
