"""The hybrid against LLMs of known skill: does it beat its model when the LLM knows, and equal it when not?

Issue 14 measured the old hybrid rules with an OpenAI-compatible server that played an LLM of known skill;
this script does the same in process, with scripted engines, on a prepared dataset and the session-model
run folders of a ``compare`` output (``OUT/runs/NAME-KEY``; its Chroma store ``OUT/vectorstore`` is reused):

* ``half``: writes the true next item's title for every other session (validation and test alike), the
  title of a random other item for the rest;
* ``never``: writes the title of a random item other than the target, always.

For each model and LLM, :func:`agentrec.pipelines.hybrid.predict_hybrid` chooses the fusion on the first
``--sessions`` validation sessions (the default grid and noise guard) and measures it once on the first
``--sessions`` test sessions; the table gives the model alone, the LLM alone and the hybrid on the same
sessions (Recall@20 / MRR@20 in %), and the paired 95% bootstrap interval of hybrid - model
(:func:`agentrec.pipelines.compare.paired_difference`, 1,000 resamples, seed 0). Seconds, not minutes:
nothing is generated for real.

    agentrec compare --out runs/compare                     # trains the models this script reads
    python benchmarks/hybrid_known_skill.py --data data/ml-100k --compare runs/compare --models semsr-f,niser \\
        --out benchmarks/results/hybrid_known_skill_ml-100k.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from agentrec.data.dataset import PreparedDataset
from agentrec.llm import Generation
from agentrec.pipelines.compare import paired_difference
from agentrec.pipelines.hybrid import predict_hybrid
from agentrec.retrieval.index import CatalogueIndex


class Scripted:
    """Answers the i-th chat it is sent with ``answers[i]``: predict_hybrid sends the validation sessions
    first, then the test sessions, each in split order (one step per session: FS)."""

    name = "scripted"

    def __init__(self, answers: list[str], fingerprint: str):
        self.answers, self.fingerprint, self.sent = answers, fingerprint, 0

    def generate(self, chats, params):
        out = [Generation(text=self.answers[self.sent + i], tokens_in=1, tokens_out=1, finish_reason="stop")
               for i in range(len(chats))]
        self.sent += len(chats)
        return out


def answers(dataset, kind: str, n: int, seed: int) -> list[str]:
    """The titles a ``half`` or ``never`` LLM writes for the first ``n`` validation, then test sessions."""
    rng = np.random.default_rng(seed)
    titles = dataset.titles()
    out = []
    for split in ("valid", "test"):
        samples = dataset.split(split)
        for row in range(min(n, len(samples))):
            target = int(samples.target[row])
            wrong = target
            while wrong == target:
                wrong = int(rng.integers(1, dataset.n_items + 1))
            out.append(titles[(target if kind == "half" and row % 2 == 0 else wrong) - 1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--compare", required=True, type=Path, help="a compare output folder (its runs and index)")
    parser.add_argument("--models", default="semsr-f,niser", help="run names under COMPARE/runs, comma-separated")
    parser.add_argument("--sessions", type=int, default=300, help="validation and test sessions each")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    dataset = PreparedDataset.load(args.data)
    index = CatalogueIndex.build(dataset, "minilm", store=args.compare / "vectorstore", progress=False)
    pct = lambda metrics: f"{100 * metrics['recall@20']:.1f} / {100 * metrics['mrr@20']:.1f}"
    lines = [f"# The hybrid against LLMs of known skill ({dataset.name}, {args.sessions} validation and "
             f"{args.sessions} test sessions)", "",
             f"`python benchmarks/hybrid_known_skill.py --data {args.data} --compare {args.compare} --models "
             f"{args.models} --sessions {args.sessions}`; Recall@20 / MRR@20 in %; the fusion chosen on validation "
             "(default grid, noise guard); hybrid - model: paired 95% bootstrap interval, 1,000 resamples.", "",
             "| model | LLM | model alone | LLM alone | hybrid | fusion | hybrid - model R@20 | hybrid - model MRR@20 |",
             "|---|---|---|---|---|---|---|---|"]
    records = []
    for name in args.models.split(","):
        (run,) = sorted((args.compare / "runs").glob(f"{name}-*"))
        for kind in ("half", "never"):
            engine = Scripted(answers(dataset, kind, args.sessions, args.seed), f"scripted|{kind}")
            result = predict_hybrid(dataset, run, "fs", engine, k=20, limit=args.sessions,
                                    valid_sessions=args.sessions, index=index, cache=False)
            difference = paired_difference(result.ranks, result.model_ranks, metrics=("recall@20", "mrr@20"))
            interval = lambda m: (f"{100 * difference[m]['point']:+.1f} [{100 * difference[m]['lo']:+.1f}, "
                                  f"{100 * difference[m]['hi']:+.1f}]")
            fusion = result.config.label + (" (none qualified)" if result.selection.fell_back else "")
            lines.append(f"| {result.model} | {kind} | {pct(result.model_metrics)} | {pct(result.llm.metrics)} | "
                         f"{pct(result.metrics)} | {fusion} | {interval('recall@20')} | {interval('mrr@20')} |")
            records.append({"model": result.model, "llm": kind, "hybrid": result.summary(),
                            "difference": difference})
            print(lines[-1], flush=True)
            print(result.selection.grid_table(), flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(records, indent=2, default=float) + "\n")
    print(text)


if __name__ == "__main__":
    main()
