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
    DEVICE_HELP,
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
from agentrec.core.options import COUNT, NON_NEGATIVE, UNIT, OptionError, Range, Writable, flag
from agentrec.llm import EngineConfig
from agentrec.llm.prompts import STRATEGIES
from agentrec.models import MODELS

app = typer.Typer()

CONFIG_HELP = ("A TOML or JSON file of compare's options (keys as the option names, with _ or -), or the "
               "manifest.json a comparison wrote, to run it again (its configuration is read; versions, commit "
               "and timings are ignored; --out defaults to its folder). Flags given here win over it.")


HYBRID_KEYS = {"c": "rrf_c"}  # HybridConfig fields spelled otherwise on the command line
TRAINING_PANEL = "Training of the session models"
# A manifest written before compare recorded these trained with the defaults of that time (TrainConfig's and the
# models'): its rerun trains the same way.
TRAINING_BEFORE_RECORDED = {"train_batch_size": 100, "lr": 0.001, "lr_step": 3, "lr_gamma": 0.1,
                            "weight_decay": 1e-5, "embedding_size": 100, "precision": "fp32"}


def grid_options(grid: dict) -> dict:
    """The options of a recorded :class:`~agentrec.pipelines.hybrid.FusionGrid` (one ``c`` and rule: the CLI's)."""
    options = {"weight_grid": ",".join(f"{w:g}" for w in grid.get("weights", ())),
               "candidates_grid": ",".join(str(m) for m in grid.get("candidates", ()))}
    if grid.get("c"):
        options["rrf_c"] = grid["c"][0]
    if grid.get("fusions"):
        options["fusion"] = grid["fusions"][0]
    if "fill" in grid:
        options["fill"] = grid["fill"]
    return {key: value for key, value in options.items() if value != ""}


def parse_numbers(option: str, text: str, rule: Range) -> tuple:
    """``"0, 0.1,0.5"`` -> ``(0.0, 0.1, 0.5)``, each value checked by ``rule``; an error names ``option``."""
    values = []
    for part in split_names(text):
        try:
            values.append(int(part) if rule.integer else float(part))
        except ValueError:
            raise OptionError(option, f"must be comma-separated {'whole ' if rule.integer else ''}numbers, got "
                                      f"{part!r}") from None
        rule.check(option, values[-1])
    if not values:
        raise OptionError(option, "needs at least one value")
    return tuple(values)


def manifest_options(data: dict, path: Path) -> dict:
    """The options of the comparison a ``manifest.json`` records; any other file is returned as it is.

    Read: ``config`` (:class:`~agentrec.pipelines.compare.CompareConfig`, ``hybrid_config`` and ``hybrid_grid``
    flattened into ``--weight``, ``--candidates``, ``--weight-grid``, ``--candidates-grid``, ``--rrf-c``...; a
    fusion rule retired since, rerank or blend, is dropped, so the fusion is chosen on validation),
    ``llm.engine`` (the engine's name, before the first ``|`` of its fingerprint), ``llm.engine_config``
    and ``dataset.path``. Everything else (command, created, git, packages, timings, runs, outputs) is a
    record of the run, not its configuration. A manifest written before the session models' training settings
    (``train_batch_size``, ``lr``...) were recorded reruns with the settings of that time
    (:data:`TRAINING_BEFORE_RECORDED`).
    """
    if not (isinstance(data.get("config"), dict) and isinstance(data.get("dataset"), dict)):
        return data
    options = {}
    for key, value in data["config"].items():
        if key == "hybrid_config":  # None: the fusion was chosen on validation
            if isinstance(value, dict) and value.get("fusion") in {f.value for f in FusionName}:
                options.update({HYBRID_KEYS.get(k, k): v for k, v in value.items()})
        elif key == "hybrid_grid":
            options.update(grid_options(value) if isinstance(value, dict) else {})
        elif key in ("strategies", "models") and isinstance(value, list):
            options[key] = ",".join(map(str, value))
        elif key == "max_train_samples" and value is None:
            options[key] = 0  # all samples
        elif key == "train_budget_s" and value is None:
            continue  # no cap: the option's default
        else:
            options[key] = value
    if "train_batch_size" not in data["config"]:  # written before the training settings were recorded
        options = {**TRAINING_BEFORE_RECORDED, **options}
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
         rrf_c=NON_NEGATIVE, valid_sessions=COUNT, threads=COUNT, max_train_samples=Range(0, integer=True, note="0 trains on all samples"))
def compare(
    out: Annotated[Optional[Path], typer.Option(help="Output folder: tables (md, csv, json), figures (forest.png, cost_quality.png, recall_at_k.png), manifest.json, and the checkpoints, LLM rows and generation cache a rerun reuses." + REQUIRED)] = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder (default: data/ml-100k, prepared with leave-one-out if missing).")] = None,
    strategies: Annotated[str, typer.Option(help="LLM strategies, comma-separated (" + ", ".join(STRATEGIES) + "); empty for none. FS alone by default, so that the default run fits about 15 minutes on two cores; fs,zcot,fscot for all (CoT strategies cost 3-4 times as much per session).")] = "fs",
    models: Annotated[str, typer.Option(help="Session models and SemSR variants, comma-separated: " + ", ".join(m for m in MODELS if m != "pop") + ", semsr-i, semsr-f, semsr-i+, semsr-f+ (the popularity floor is always shown). NISER and SemNISER-F by default; niser,semsr-i,semsr-f,semsr-i+,semsr-f+ for all of SemSR's variants.")] = "niser,semsr-f",
    base: Annotated[str, typer.Option(help="Session model the SemSR variants wrap.")] = "niser",
    hybrid: Annotated[bool, typer.Option("--hybrid/--no-hybrid", help="A hybrid row per strategy: the LLM's grounded list fused with --hybrid-model, the fusion chosen on validation sessions.")] = True,
    hybrid_model: Annotated[str, typer.Option(help="Model fused with the LLM's grounded lists (trained if not in --models).")] = "semsr-f",
    valid_sessions: Annotated[int, typer.Option(help="Hybrid: the LLM also writes titles for the first N validation sessions, where each hybrid's w and M are chosen (validation Recall@20, ties by MRR@20, then the smaller w); never on test.")] = 100,
    weight_grid: Annotated[str, typer.Option(help="Hybrid: the weights w tried on validation (0 is the model's ranking exactly).")] = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
    candidates_grid: Annotated[str, typer.Option(help="Hybrid: the M tried on validation (the LLM's grounded top-M, at most 100, and the model's top-M).")] = "5,20,50,100",
    weight: Annotated[Optional[float], typer.Option(help="Hybrid: fix w (the LLM's share) instead of choosing it on validation; with --candidates, no validation sessions are generated.")] = None,
    candidates: Annotated[Optional[int], typer.Option(help="Hybrid: fix M instead of choosing it on validation.")] = None,
    fusion: Annotated[FusionName, typer.Option(help="Hybrid: the fusion rule; rrf: (1 - w) / (c + model rank) + w / (c + LLM position).")] = FusionName.rrf,
    rrf_c: Annotated[float, typer.Option(help="Hybrid: the constant c of the reciprocal-rank fusion.")] = 60.0,
    fill: Annotated[bool, typer.Option("--fill/--no-fill", help="Hybrid: list the whole catalogue (items in neither top-M list keep the model's order), or the candidates alone.")] = True,
    llm_sessions: Annotated[int, typer.Option(help="LLM and hybrid rows run on the first N test sessions; every other method is also reported on exactly those.")] = 100,
    embedder: EmbedderOption = "minilm",
    epochs: Annotated[int, typer.Option(help="Session models: most epochs (early stopping on validation Recall@100 usually ends sooner).", rich_help_panel=TRAINING_PANEL)] = 8,
    max_train_samples: Annotated[Optional[int], typer.Option(help="Session models: train on a seeded subsample of this many samples (default, or 0: the whole training split).", rich_help_panel=TRAINING_PANEL)] = None,
    patience: Annotated[int, typer.Option(help="Session models: stop after N epochs without a better validation Recall@100.", rich_help_panel=TRAINING_PANEL)] = 2,
    train_batch_size: Annotated[int, typer.Option(help="Session models: training batch size (--batch-size is the LLM engine's).", rich_help_panel=TRAINING_PANEL)] = 256,
    lr: Annotated[float, typer.Option(help="Session models: Adam learning rate.", rich_help_panel=TRAINING_PANEL)] = 0.005,
    lr_step: Annotated[int, typer.Option(help="Session models: decay the learning rate every N epochs.", rich_help_panel=TRAINING_PANEL)] = 3,
    lr_gamma: Annotated[float, typer.Option(help="Session models: learning-rate decay factor (1 keeps it constant).", rich_help_panel=TRAINING_PANEL)] = 0.2,
    weight_decay: Annotated[float, typer.Option(help="Session models: L2 penalty.", rich_help_panel=TRAINING_PANEL)] = 0.0,
    embedding_size: Annotated[int, typer.Option(help="Session models: item and session vector size.", rich_help_panel=TRAINING_PANEL)] = 64,
    precision: Annotated[str, typer.Option(help="Session models: training steps in fp32 or bf16 (torch.autocast: half the time of an epoch on a CPU with AVX-512 BF16, slower on one without native bf16); auto picks bf16 where the CPU has it. Validation and test always rank in fp32.", rich_help_panel=TRAINING_PANEL)] = "auto",
    train_budget_s: Annotated[Optional[float], typer.Option(help="Session models: wall-clock cap on each model's training in seconds (no epoch starts after it; the best epoch so far is kept, and the outputs say the budget stopped it). Default: no cap.", rich_help_panel=TRAINING_PANEL)] = None,
    rerank_depth: Annotated[int, typer.Option(help="SemSR-I+/F+ re-order this many of their top items by the plain model.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of training, few-shot examples, sampling and bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of sessions for the intervals and the noise test.")] = 1000,
    level: Annotated[float, typer.Option(help="Confidence level of the intervals and of the noise test.")] = 0.95,
    threads: ThreadsOption = 1,
    device: Annotated[str, typer.Option(help=DEVICE_HELP + " Here: training and evaluating the session models, the SemSR item table and the catalogue index's embedder, the hybrid's scoring (the hf LLM's device is --llm-device).")] = "auto",
    cache_file: Annotated[Optional[Path], typer.Option(help="Generation cache (default OUT/generations.sqlite).")] = None,
    store: Annotated[Optional[Path], typer.Option(help="Chroma store folder (default OUT/vectorstore).")] = None,
    quiet: QuietOption = False,
    engine: str = "hf",
    engine_config: Optional[EngineConfig] = None,
):
    """Compare LLM-only, hybrid, session models, SemSR variants and the popularity floor on the same test sessions.

    Prints one aligned table per set of sessions (Recall, MRR, NDCG at 10, 20, 100 with bootstrap intervals and
    noise marks; tokens, wall and CPU seconds per 1,000 sessions; training seconds) and writes it to OUT as
    markdown, CSV and JSON, with three figures (a forest plot of Recall@20 and MRR@20 with their intervals, cost
    against quality, Recall@K against K) and a manifest for repeating the run. A rerun with
    the same settings reuses checkpoints and generations.

    Examples:

      agentrec compare --out runs/compare

      agentrec compare --data data/ml-100k --strategies fs,zcot,fscot --models niser,semsr-f --llm-sessions 200 --out runs/cmp

      agentrec compare --engine openai --base-url http://127.0.0.1:8000/v1 --llm-sessions 943 --out runs/cmp-llama

      agentrec compare --config runs/compare/manifest.json
    """
    set_verbosity(quiet=quiet)
    from agentrec.core.devices import resolve_device
    from agentrec.pipelines.compare import CompareConfig, run_compare

    resolve_device(device)  # a malformed name or a missing GPU: one line, before anything is read or trained
    from agentrec.pipelines.hybrid import FusionGrid, HybridConfig

    # what is not fixed is chosen on validation; both fixed: a given fusion, no validation sessions
    grid = FusionGrid(weights=parse_numbers("weight_grid", weight_grid, UNIT) if weight is None else (weight,),
                      candidates=parse_numbers("candidates_grid", candidates_grid, COUNT) if candidates is None else
                      (candidates,), c=(rrf_c,), fusions=(fusion.value,), fill=fill)
    fixed = HybridConfig(candidates=candidates, fusion=fusion.value, weight=weight, c=rrf_c, fill=fill) \
        if weight is not None and candidates is not None else None
    config = CompareConfig(
        strategies=split_names(strategies), models=split_names(models), base=base, hybrid=hybrid,
        hybrid_model=hybrid_model, hybrid_grid=grid, hybrid_config=fixed, valid_sessions=valid_sessions,
        llm_sessions=llm_sessions, embedder=embedder, epochs=epochs, max_train_samples=max_train_samples or None,
        patience=patience, train_batch_size=train_batch_size, lr=lr, lr_step=lr_step, lr_gamma=lr_gamma,
        weight_decay=weight_decay, embedding_size=embedding_size, precision=precision, train_budget_s=train_budget_s,
        seed=seed, threads=threads, device=device, rerank_depth=rerank_depth, bootstrap=bootstrap, level=level)
    result = run_compare(out, config, data=data, engine=engine, engine_config=engine_config, cache_file=cache_file,
                         store=store, progress=not quiet, command=shlex.join(["agentrec", *sys.argv[1:]]))
    typer.echo(result.table())
    typer.echo(f"\n* best in its column; ~ within noise of it ({result.manifest['noise']}); "
               "values in %, ± half the bootstrap interval")
    typer.echo(f"cost: {result.manifest['cost']}")
    trained = f"{len(result.trained)} models trained" if result.trained else "no model trained (all reused)"
    typer.echo(f"\n{trained}; {result.generated} chats sent to the LLM; {result.seconds:.0f} s wall, "
               f"{result.manifest['cpu_seconds']:.0f} s CPU")
    written = [*result.manifest["outputs"], "manifest.json"]
    typer.echo(f"wrote {out}/" + ", ".join(name for name in written if not name.endswith(".png")))
    figures = [str(Path(out) / name) for name in written if name.endswith(".png")]
    if figures:
        typer.echo("figures: " + ", ".join(figures))
