"""``agentrec compare``: every method on the same sessions, in one table.

``compare`` is :func:`agentrec.pipelines.compare.run_compare`. ``--config OUT/manifest.json`` reruns a
comparison from the manifest it wrote: the manifest's configuration (``config``, the LLM's engine and
``engine_config``, the dataset's path) becomes the options, its record of versions, commit and timings
is ignored, and ``--out`` defaults to the manifest's folder (so checkpoints and generations are reused).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from agentrec.cli.configfile import with_config
from agentrec.cli.options import (
    ENGINE_FLAGS,
    ENGINE_SHARED,
    REQUIRED,
    EmbedderOption,
    FusionName,
    QuietOption,
    ThreadsOption,
    checked,
    engine_options,
    set_verbosity,
    split_names,
)
from agentrec.core.options import COUNT, UNIT, Range, Writable, flag
from agentrec.llm import EngineConfig
from agentrec.llm.prompts import STRATEGIES
from agentrec.models import MODELS

app = typer.Typer()

CONFIG_HELP = ("A TOML or JSON file of compare's options (keys as the option names, with _ or -), or the "
               "manifest.json a comparison wrote, to run it again (its configuration is read; versions, commit "
               "and timings are ignored; --out defaults to its folder). Flags given here win over it.")


def manifest_options(data: dict, path: Path) -> dict:
    """The options of the comparison a ``manifest.json`` records; any other file is returned as it is.

    Read: ``config`` (:class:`~agentrec.pipelines.compare.CompareConfig`, ``hybrid_config`` flattened),
    ``llm.engine`` (the engine's name, before the first ``|`` of its fingerprint), ``llm.engine_config``
    and ``dataset.path``. Everything else (command, created, git, packages, timings, runs, outputs) is a
    record of the run, not its configuration.
    """
    if not (isinstance(data.get("config"), dict) and isinstance(data.get("dataset"), dict)):
        return data
    options = {}
    for key, value in data["config"].items():
        if key == "hybrid_config" and isinstance(value, dict):
            options.update(value)
        elif key in ("strategies", "models") and isinstance(value, list):
            options[key] = ",".join(map(str, value))
        elif key == "max_train_samples" and value is None:
            options[key] = 0  # all samples
        else:
            options[key] = value
    llm = data.get("llm") or {}
    if llm.get("engine"):
        options["engine"] = str(llm["engine"]).split("|")[0]
    for field, value in (llm.get("engine_config") or {}).items():
        if field not in ENGINE_SHARED:  # threads: the comparison's own --threads
            options[ENGINE_FLAGS.get(field, flag(field))[2:]] = value
    if data["dataset"].get("path"):
        options["data"] = data["dataset"]["path"]
    options["out"] = str(Path(path).parent)
    return options


@app.command("compare")
@with_config(required=("out",), reader=manifest_options, help=CONFIG_HELP)
@engine_options()
@checked(out=Writable(), store=Writable(), cache_file=Writable(folder=False), candidates=COUNT, weight=UNIT,
         threads=COUNT, max_train_samples=Range(0, integer=True, note="0 trains on all samples"))
def compare(
    out: Annotated[Optional[Path], typer.Option(help="Output folder: tables (md, csv, json), recall_at_k.png, manifest.json, and the checkpoints, LLM rows and generation cache a rerun reuses." + REQUIRED)] = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder (default: data/ml-100k, prepared with leave-one-out if missing).")] = None,
    strategies: Annotated[str, typer.Option(help="LLM strategies, comma-separated (" + ", ".join(STRATEGIES) + "); empty for none.")] = "fs,zcot,fscot",
    models: Annotated[str, typer.Option(help="Session models and SemSR variants, comma-separated: " + ", ".join(m for m in MODELS if m != "pop") + ", semsr-i, semsr-f, semsr-i+, semsr-f+ (the popularity floor is always shown).")] = "niser,semsr-i,semsr-f,semsr-i+,semsr-f+",
    base: Annotated[str, typer.Option(help="Session model the SemSR variants wrap.")] = "niser",
    hybrid: Annotated[bool, typer.Option("--hybrid/--no-hybrid", help="A hybrid row per strategy: the LLM's candidates re-ranked by --hybrid-model.")] = True,
    hybrid_model: Annotated[str, typer.Option(help="Model that re-ranks the candidates (trained if not in --models).")] = "semsr-f",
    candidates: Annotated[int, typer.Option(help="Hybrid: candidates per session (the generated title's M nearest items).")] = 50,
    fusion: Annotated[FusionName, typer.Option(help="Hybrid: rerank or blend.")] = FusionName.rerank,
    weight: Annotated[float, typer.Option(help="Hybrid blend: weight of the LLM's similarity.")] = 0.5,
    fill: Annotated[bool, typer.Option("--fill/--no-fill", help="Hybrid: fill the list after the candidates from the model's own ranking.")] = True,
    llm_sessions: Annotated[int, typer.Option(help="LLM and hybrid rows run on the first N test sessions; every other method is also reported on exactly those.")] = 30,
    embedder: EmbedderOption = "minilm",
    epochs: Annotated[int, typer.Option(help="Training budget of the session models: most epochs (reduced default, stated in the outputs).")] = 3,
    max_train_samples: Annotated[Optional[int], typer.Option(help="Train on a seeded subsample of this many samples (default 10,000; 0 = all).")] = 10_000,
    patience: Annotated[int, typer.Option(help="Early-stopping patience (validation Recall@100).")] = 2,
    rerank_depth: Annotated[int, typer.Option(help="SemSR-I+/F+ re-order this many of their top items by the plain model.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of training, few-shot examples, sampling and bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of sessions for the intervals and the noise test.")] = 1000,
    level: Annotated[float, typer.Option(help="Confidence level of the intervals and of the noise test.")] = 0.95,
    threads: ThreadsOption = 1,
    cache_file: Annotated[Optional[Path], typer.Option(help="Generation cache (default OUT/generations.sqlite).")] = None,
    store: Annotated[Optional[Path], typer.Option(help="Chroma store folder (default OUT/vectorstore).")] = None,
    quiet: QuietOption = False,
    engine: str = "hf",
    engine_config: Optional[EngineConfig] = None,
):
    """Compare LLM-only, hybrid, session models, SemSR variants and the popularity floor on the same test sessions.

    Prints one aligned table per set of sessions (Recall, MRR, NDCG at 10, 20, 100 with bootstrap intervals and
    noise marks; tokens, wall and CPU seconds per 1,000 sessions; training seconds) and writes it to OUT as
    markdown, CSV and JSON, with Recall@K against K as a PNG and a manifest for repeating the run. A rerun with
    the same settings reuses checkpoints and generations.

    Examples:

      agentrec compare --out runs/compare

      agentrec compare --data data/ml-100k --strategies fs --models niser,semsr-f --llm-sessions 100 --out runs/cmp

      agentrec compare --engine openai --base-url http://127.0.0.1:8000/v1 --llm-sessions 943 --out runs/cmp-llama

      agentrec compare --config runs/compare/manifest.json
    """
    set_verbosity(quiet=quiet)
    from agentrec.pipelines.compare import CompareConfig, run_compare
    from agentrec.pipelines.hybrid import HybridConfig

    config = CompareConfig(
        strategies=split_names(strategies), models=split_names(models), base=base, hybrid=hybrid,
        hybrid_model=hybrid_model,
        hybrid_config=HybridConfig(candidates=candidates, fusion=fusion.value, weight=weight, fill=fill),
        llm_sessions=llm_sessions, embedder=embedder, epochs=epochs, max_train_samples=max_train_samples or None,
        patience=patience, seed=seed, threads=threads, rerank_depth=rerank_depth, bootstrap=bootstrap, level=level)
    result = run_compare(out, config, data=data, engine=engine, engine_config=engine_config, cache_file=cache_file,
                         store=store, progress=not quiet, command=shlex.join(["agentrec", *sys.argv[1:]]))
    typer.echo(result.table())
    typer.echo(f"\n* best in its column; ~ within noise of it ({result.manifest['noise']}); "
               "values in %, ± half the bootstrap interval")
    typer.echo(f"cost: {result.manifest['cost']}")
    trained = f"{len(result.trained)} models trained" if result.trained else "no model trained (all reused)"
    typer.echo(f"\n{trained}; {result.generated} chats sent to the LLM; {result.seconds:.0f} s wall, "
               f"{result.manifest['cpu_seconds']:.0f} s CPU")
    typer.echo(f"wrote {out}/compare.md, compare.csv, compare.json, recall_at_k.png, manifest.json")
