"""Time the synthetic source end to end: generate, prepare (Amazon-M2 protocol), save.

Usage::

    python benchmarks/synthetic_scale.py --items 100000 --sessions 200000 --seed 0

Prints a markdown table with the wall time of each stage and the process's peak resident memory
after it (``resource.getrusage``; the peak only grows, so each row is the peak so far).
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from agentrec.data.prepare import prepare
from agentrec.data.protocols import GivenSessions
from agentrec.data.synthetic import load_synthetic, n_categories_for


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=None, help="default: 2 * items (at most 2,000,000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rows = []

    def stage(name, fn):
        started = time.perf_counter()
        result = fn()
        rows.append((name, time.perf_counter() - started, peak_rss_mib()))
        return result

    raw = stage("generate", lambda: load_synthetic(items=args.items, sessions=args.sessions, seed=args.seed))
    n_events, n_sessions = len(raw.events), raw.events["user"].nunique()
    data = stage("prepare (m2)", lambda: prepare(raw, GivenSessions()))
    with tempfile.TemporaryDirectory() as tmp:
        stage("save", lambda: data.save(Path(tmp) / "synthetic"))
        disk_mib = sum(f.stat().st_size for f in (Path(tmp) / "synthetic").iterdir()) / 2**20

    counts = data.stats["counts"]
    print(f"synthetic items={args.items} sessions={n_sessions} seed={args.seed}: "
          f"{n_events:,} events, {n_categories_for(args.items)} categories; "
          f"train/valid/test samples {counts['train_samples']:,}/{counts['valid_samples']:,}/"
          f"{counts['test_samples']:,}; {disk_mib:,.1f} MiB on disk")
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.system()}\n")
    print("| stage | seconds | peak RSS so far (MiB) |")
    print("|---|---:|---:|")
    for name, seconds, rss in rows:
        print(f"| {name} | {seconds:.2f} | {rss:,.0f} |")
    print(f"| **total** | {sum(r[1] for r in rows):.2f} | {rows[-1][2]:,.0f} |")


if __name__ == "__main__":
    main()
