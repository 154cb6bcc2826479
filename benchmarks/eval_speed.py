"""Full-ranking evaluation against the matrix-product limit, measured in the same process (issue 15, item 4).

For each shape (sessions x items x d), kind of session vectors and thread count, this alternates the
bare matrix product that full ranking computes, in fp32 and in bf16 (a chunk of B sessions x d times
d x (n + 1) items, into a preallocated buffer: the "limit"), with the whole evaluation by
``agentrec.core.ranking.rank_products`` (every test target ranked against the full catalogue, exact
ranks) in fp32 and in bf16. Rates count only the product's FLOPs, 2 * sessions * d * (n + 1). Each
evaluation is set beside the limit measured just before it, so a machine shared with other work slows
both alike; the table gives medians over ``--repeats``.

The setting is NISER's scoring: unit item vectors and sigma (16) times a unit session vector.

* ``trained``: each session vector is its target's vector plus noise of a random size, so targets rank
  as a trained model's do (Recall@20 about 0.5, a long tail of deep ranks);
* ``untrained``: random session vectors (an initialised model: targets in the dense middle of the
  score distribution, the hardest case for bf16, whose near-ties are many).

It also runs, once per setting, the bf16 ranking without its C loops (``AGENTREC_NATIVE=0``: numpy's passes,
as on a machine without a C compiler) and today's path (``rank_samples`` over fp32 score chunks), counts ranks
that differ, and with ``--run`` checks a real trained run: its test ranks from the model's scores, the fp32
product and the bf16 product must be equal.

    python benchmarks/eval_speed.py --out benchmarks/results/eval_speed.md --run /tmp/h15/niser
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

SIGMA = 16.0


def session_vectors(table, targets, kind: str, seed: int):
    """``(S, d)`` NISER-like queries: sigma * a unit vector, near the target's (``trained``) or random."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n, d = len(targets), table.shape[1]
    if kind == "untrained":
        raw = torch.randn(n, d, generator=g)
    else:
        noise = 1.5 + 2.5 * torch.rand(n, 1, generator=g)  # cos(q, e_t) from 0.55 to 0.25
        raw = table[torch.from_numpy(targets)] + noise * torch.randn(n, d, generator=g) / d**0.5
    return SIGMA * torch.nn.functional.normalize(raw, dim=1)


def bare_product_rate(rows: int, table, dtype, repeats: int) -> float:
    """GFLOP/s of (rows x d) @ (d x width), median of ``repeats``: the better of two layouts, the whole width into
    one preallocated buffer, and a block of columns at a time into a small one (as bf16 ranking computes it;
    its output stays in the cache, which makes the product itself faster on a large catalogue)."""
    import torch

    from agentrec.core.ranking import BLOCK_BYTES, MIN_COLUMNS

    width, d = table.shape
    left = torch.randn(rows, d).to(dtype)
    right = table.to(dtype).t()
    out = torch.empty(rows, width, dtype=dtype)
    columns = max(MIN_COLUMNS, BLOCK_BYTES // (2 * rows))
    block = torch.empty(rows * columns, dtype=dtype)

    def whole():
        torch.matmul(left, right, out=out)

    def blocked():
        for first in range(0, width, columns):
            last = min(width, first + columns)
            torch.matmul(left, right[:, first:last], out=block[: rows * (last - first)].view(rows, last - first))

    rates = []
    for product in (whole, blocked):
        product()  # warm-up: oneDNN builds its kernel on first use
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            product()
            times.append(time.perf_counter() - started)
        rates.append(2 * rows * d * width / statistics.median(times) / 1e9)
    return max(rates)


def run_setting(n_sessions: int, n_items: int, d: int, kind: str, threads: int, args) -> dict:
    import torch

    from agentrec.core.metrics import rank_samples
    from agentrec.core.ranking import product_rows, rank_products
    from agentrec.data.dataset import Samples

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(n_items + 1, d, generator=g), dim=1)
    table[0] = 0.0
    targets = torch.randint(1, n_items + 1, (n_sessions,), generator=g).numpy()
    queries = session_vectors(table, targets, kind, seed=1).numpy()
    samples = Samples.from_lists([[1]] * n_sessions, targets)
    chunk = lambda index: torch.from_numpy(queries[index])  # noqa: E731  (a model would encode here)
    flop = 2 * n_sessions * d * (n_items + 1) / 1e9
    rows = {p: product_rows(n_items, 4 if p == "fp32" else 2, args.memory_mb) for p in ("fp32", "bf16")}
    out = {p: {"limit": [], "rate": [], "ratio": [], "extra": None, "ranks": None} for p in ("fp32", "bf16")}
    for _ in range(args.repeats):
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            limit = bare_product_rate(rows[precision], table, dtype, args.limit_repeats)
            result = rank_products(chunk, table, samples, n_items, precision=precision, threads=threads,
                                   memory_budget_mb=args.memory_mb)
            record = out[precision]
            record["limit"].append(limit)
            record["rate"].append(flop / result.seconds)
            record["ratio"].append(flop / result.seconds / limit)
            record["extra"], record["ranks"], record["recall"] = result.extra, result.ranks, result.metrics["recall@20"]
    # the bf16 path without the C loops (numpy's passes, as on a machine without a C compiler), once
    os.environ["AGENTREC_NATIVE"] = "0"
    try:
        numpy_path = rank_products(chunk, table, samples, n_items, precision="bf16", threads=threads,
                                   memory_budget_mb=args.memory_mb)
    finally:
        del os.environ["AGENTREC_NATIVE"]
    started = time.perf_counter()
    today = rank_samples(lambda index: chunk(index) @ table.t(), samples, n_items, memory_budget_mb=args.memory_mb)
    today_rate = flop / (time.perf_counter() - started)
    exact = out["fp32"]["ranks"]
    return {
        "shape": f"{n_sessions:,} x {n_items + 1:,} x {d}", "kind": kind, "threads": threads,
        "sessions": n_sessions, "flop": flop, "out": out, "today_rate": today_rate,
        "numpy_rate": flop / numpy_path.seconds, "numpy_identical": bool(np.array_equal(exact, numpy_path.ranks)),
        "identical": bool(np.array_equal(exact, out["bf16"]["ranks"])),
        "today_differs": int((today.ranks != exact).sum()),
    }


def real_run_check(run: Path, threads: int, args) -> dict:
    """A trained run's test ranks three ways: the model's scores, the fp32 product, the bf16 product."""
    import torch

    from agentrec.data.dataset import PreparedDataset
    from agentrec.training.runs import evaluate_model, load_model, read_run

    torch.set_num_threads(threads)
    info = read_run(run)
    dataset = PreparedDataset.load(args.data or info.dataset["path"])
    _, model = load_model(run, dataset)
    results = {p: evaluate_model(model, dataset, "test", precision=p, threads=threads) for p in (None, "fp32", "bf16")}
    ranks = [r.ranks for r in results.values()]
    return {"run": str(run), "model": info.model, "dataset": dataset.name, "n": len(ranks[0]),
            "n_items": dataset.n_items, "recall@20": results["fp32"].metrics["recall@20"],
            "seconds": {str(p): r.seconds for p, r in results.items()},
            "identical": all(np.array_equal(ranks[0], r) for r in ranks[1:])}


def median(values) -> float:
    return statistics.median(values)


def markdown(settings: list[dict], real: list[dict], args, load: tuple, seconds: float) -> str:
    import torch

    from agentrec.core import native

    lines = [
        f"# Full-ranking evaluation against the matrix-product limit ({time.strftime('%Y-%m-%d')})",
        "",
        "Exact full-catalogue ranks (`agentrec.core.ranking.rank_products`: every target against every item, ties "
        "and NaN against the model) beside the bare matrix product they need, measured alternately in the same "
        "process. GFLOP/s count only the product, 2 x sessions x d x (items + 1); the limit is the median "
        "GFLOP/s of the bare (B x d) @ (d x items) product, the better of two layouts (the whole width into one "
        "preallocated buffer; a block of columns at a time into a 4 MB one, as bf16 ranking computes it), B the "
        "chunk the ranking uses (about 32 MB of scores, at least 128 sessions: B = "
        f"{settings[0]['out']['fp32']['extra']['chunk_rows']} sessions in fp32, "
        f"{settings[0]['out']['bf16']['extra']['chunk_rows']} in bf16 for the first shape). "
        f"Medians over {args.repeats} alternations; *ratio* is the median of each evaluation's rate over the "
        "limit measured just before it.",
        "",
        "| shape (sessions x items x d) | session vectors | threads | fp32 limit | fp32 ranking | fp32 ratio | "
        "bf16 limit | bf16 ranking | bf16 ratio | bf16 ranking / fp32 limit | bf16 sessions/s | ranks identical | "
        "bf16 without C | today's path |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for s in settings:
        f, b = s["out"]["fp32"], s["out"]["bf16"]
        rate_b = median(b["rate"])
        lines.append(
            f"| {s['shape']} | {s['kind']} | {s['threads']} | {median(f['limit']):.1f} | {median(f['rate']):.1f} | "
            f"{median(f['ratio']):.0%} | {median(b['limit']):.1f} | {rate_b:.1f} | {median(b['ratio']):.0%} | "
            f"{rate_b / median(f['limit']):.1f}x | {rate_b / s['flop'] * s['sessions']:,.0f} | "
            f"{'yes' if s['identical'] and s['numpy_identical'] else '**NO**'} | {s['numpy_rate']:.1f} | "
            f"{s['today_rate']:.1f} |")
    lines += [
        "",
        "*ranks identical*: the bf16 ranks, with and without the C loops, equal the fp32 ones. *bf16 without C*: "
        "the bf16 ranking with `AGENTREC_NATIVE=0` (numpy's passes over the product, as on a machine without a "
        "C compiler), GFLOP/s, one run. The C loops (`agentrec/core/_scan.c`): "
        + ("used" if native.scan_bf16() is not None else "**not available**, so both bf16 columns are numpy's") + ".",
        "",
        "*today's path*: `rank_samples` over fp32 score chunks (the model's `score_chunk`, as training's "
        "validation still ranks), GFLOP/s, one run. Where its ranks differ from the exact ones, two scores "
        "lie within fp32 rounding of each other: "
        + ", ".join(f"{s['today_differs']} of {s['sessions']:,} ({s['shape']}, {s['kind']}, {s['threads']} "
                    "thread(s))" for s in settings if s["today_differs"]) + "."
        if any(s["today_differs"] for s in settings) else
        "*today's path*: `rank_samples` over fp32 score chunks (the model's `score_chunk`, as training's "
        "validation still ranks), GFLOP/s, one run; its ranks equal the exact ones in every setting.",
        "",
        "Where the bf16 time goes (last alternation): share of the time in the products, float64 re-scores per "
        "session, sessions whose bf16 band held more than a quarter of the catalogue and were scored again in fp32.",
        "",
        "| shape | session vectors | threads | Recall@20 | product share | re-scored / session | rows again in fp32 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in settings:
        b = s["out"]["bf16"]
        e = b["extra"]
        seconds_b = s["flop"] / b["rate"][-1]
        lines.append(f"| {s['shape']} | {s['kind']} | {s['threads']} | {b['recall']:.3f} | "
                     f"{e['product_seconds'] / seconds_b:.0%} | {e['rescored'] / s['sessions']:.1f} | "
                     f"{e['fp32_rows']:,} |")
    if real:
        lines += ["", "A trained run, its test split ranked three ways (the model's scores as before, the fp32 product, "
                  "the bf16 product):", "",
                  "| run | model | dataset | test samples | items | Recall@20 | seconds (scores / fp32 / bf16) | "
                  "ranks identical |", "|---|---|---|---:|---:|---:|---|---|"]
        for r in real:
            sec = " / ".join(f"{v:.2f}" for v in r["seconds"].values())
            lines.append(f"| `{r['run']}` | {r['model']} | {r['dataset']} | {r['n']:,} | {r['n_items']:,} | "
                         f"{r['recall@20']:.4f} | {sec} | {'yes' if r['identical'] else '**NO**'} |")
    lines += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({_cpu_name()}), torch {torch.__version__}; shared "
        f"with other engineers' jobs: load average {load[0]:.2f} at the start, {load[1]:.2f} at the end "
        f"(on 2 cores), so every figure is a median beside a limit measured under the same load. "
        f"The whole run took {seconds:.0f} s.",
        f"Command: `python benchmarks/eval_speed.py {' '.join(args.argv)}`.",
        "",
    ]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                bf16 = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "no native bf16"
                return f"{line.split(':', 1)[1].strip()}, {bf16}"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="12000x100000x100,12000x20000x100,3000x504913x64",
                        help="comma-separated SESSIONSxITEMSxD (items without the padding row)")
    parser.add_argument("--kinds", default="trained,untrained", help="session vectors: trained, untrained")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of limit and ranking per setting")
    parser.add_argument("--limit-repeats", type=int, default=5, help="bare products per limit measurement")
    parser.add_argument("--memory-mb", type=float, default=256.0, help="budget for one chunk of scores")
    parser.add_argument("--run", type=Path, action="append", default=[], help="a trained run folder to check")
    parser.add_argument("--data", type=Path, default=None, help="its dataset (default: as the run records)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file for the results")
    args = parser.parse_args()
    args.argv = sys.argv[1:]

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    settings = []
    for shape in args.shapes.split(","):
        n_sessions, n_items, d = (int(x) for x in shape.lower().split("x"))
        for kind in args.kinds.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                setting = run_setting(n_sessions, n_items, d, kind, threads, args)
                f, b = setting["out"]["fp32"], setting["out"]["bf16"]
                print(f"{setting['shape']} {kind} threads={threads}: fp32 {median(f['rate']):.1f} / limit "
                      f"{median(f['limit']):.1f} GFLOP/s ({median(f['ratio']):.0%}); bf16 {median(b['rate']):.1f} / "
                      f"limit {median(b['limit']):.1f} ({median(b['ratio']):.0%}); identical {setting['identical']}; "
                      f"today {setting['today_rate']:.1f}", flush=True)
                settings.append(setting)
    real = [real_run_check(run, 1, args) for run in args.run]
    for r in real:
        print(f"{r['run']}: identical {r['identical']} {r['seconds']}", flush=True)
    text = markdown(settings, real, args, (load_start, os.getloadavg()[0]), time.perf_counter() - started)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
