"""``agentrec train`` and ``agentrec evaluate``: session models on a prepared dataset.

``train`` is :func:`agentrec.pipelines.train.train_run`; ``evaluate`` is :func:`agentrec.training.runs.evaluate_run`.
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from agentrec.cli.configfile import ConfigFile, convert, with_config
from agentrec.cli.options import (
    ARGV_KEY,
    DEVICE_HELP,
    EMBEDDER_HELP,
    REQUIRED,
    SIGNALS_HELP,
    DeviceOption,
    ModelName,
    QuietOption,
    SemanticMode,
    Split,
    check_argument,
    checked,
    choices_help,
    set_verbosity,
)
from agentrec.core.errors import UsageError
from agentrec.core.options import COUNT, POSITIVE, OptionError, Writable
from agentrec.models import MODELS
from agentrec.training.losses import NEGATIVES_HELP

app = typer.Typer()

TRAIN_CONFIG_HELP = ("A TOML or JSON file of train's options (keys as the option names, with _ or -), and the model's "
                     "settings in a [model] or [model_settings] table (as --set); the older layout "
                     '{"train": {...}, "model": {...}} is read too. Flags given here win over it.')


class TrainPrecision(str, Enum):
    """The precision of the training steps (TrainConfig.precision)."""

    fp32 = "fp32"
    bf16 = "bf16"
    auto = "auto"


@app.command("train")
@with_config(required=("model", "data", "out"), sections=("train",), keep=("model", "model_settings"),
             help=TRAIN_CONFIG_HELP)
@checked(out=Writable())
def train(
    model: Annotated[Optional[ModelName], typer.Option(help="Model to train: " + choices_help(MODELS) + "." + REQUIRED)] = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder." + REQUIRED)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder to write (run.json, weights.safetensors, learning_curve.png)." + REQUIRED)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Most epochs (default 30; early stopping usually ends sooner).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size (default 100, as SemSR).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (default 0.001).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="L2 penalty (default 1e-5, as SR-GNN).")] = None,
    lr_step: Annotated[Optional[int], typer.Option(help="Decay the learning rate every N epochs (default 3).")] = None,
    lr_gamma: Annotated[Optional[float], typer.Option(help="Decay factor (default 0.1; 1 keeps it constant).")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after N epochs without validation improvement (default 3).")] = None,
    select_metric: Annotated[Optional[str], typer.Option(help="Validation metric for early stopping: recall@K, mrr@K or ndcg@K (default recall@100, as SemSR).")] = None,
    embedding_size: Annotated[Optional[int], typer.Option(help="Item and session vector size (default 100).")] = None,
    model_option: Annotated[Optional[list[str]], typer.Option("--set", help="Model setting NAME=VALUE, e.g. --set sigma=8 --set hidden_size=64; see the model's Config.")] = None,
    exclude_history: Annotated[Optional[bool], typer.Option("--exclude-history/--allow-history", help="Remove items already in the session from the candidates when validating (default: allow).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for initialisation and shuffling (default 0).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads (default 1: often fastest on a small shared machine).")] = None,
    max_train_samples: Annotated[Optional[int], typer.Option(help="Train on a seeded subsample of this many samples.")] = None,
    semantic: Annotated[Optional[SemanticMode], typer.Option(help="SemSR variant: 'init' starts the item table from LLM item embeddings (SemSR-I); 'fusion' adds a frozen LLM item table and session branch (SemSR-F).")] = None,
    embedder: Annotated[str, typer.Option(help=EMBEDDER_HELP + " For --semantic.")] = "minilm",
    signals: Annotated[Optional[str], typer.Option(help="With --semantic: " + SIGNALS_HELP)] = None,
    device: Annotated[Optional[str], typer.Option(help=DEVICE_HELP + " Default auto.")] = None,
    precision: Annotated[Optional[TrainPrecision], typer.Option(help="Precision of the training steps: fp32 (the default), bf16 (autocast: matrix products in bfloat16, weights and optimiser in fp32), or auto (bf16 where the device computes it natively).")] = None,
    negatives: Annotated[Optional[int], typer.Option(help=NEGATIVES_HELP)] = None,
    nproc: Annotated[Optional[int], typer.Option(help="Train data-parallel in N processes (torch DDP, started through torch.distributed.run; gloo on the CPU, NCCL with one GPU each). --batch-size is the global batch, split across them; --threads is per process. Default 1; under torchrun, its world size.")] = None,
    quiet: QuietOption = False,
    config_file: ConfigFile | None = None,
    typer_context: typer.Context | None = None,
):
    """Train a model on the train split, selecting the epoch on validation; test is never touched.

    Precedence: flags > --config file > defaults. Example:

      agentrec train --model niser --data data/ml-100k --out runs/niser --epochs 20 --set sigma=16

    With --nproc N (or under 'torchrun --nproc-per-node N -m agentrec train ...') N ranks train one run
    data-parallel; rank 0 writes it and prints the summary.
    """
    from agentrec.training import distributed

    world = distributed.launched_world()  # None unless this process is one rank of a torchrun job
    set_verbosity(quiet=quiet or (world is not None and not world.main))  # ranks other than 0 keep quiet
    from agentrec.core.devices import resolve_device
    from agentrec.core.metrics import format_metrics
    from agentrec.data.dataset import PreparedDataset
    from agentrec.pipelines.train import RunSpec, build_model_config, build_train_config, train_run
    from agentrec.training.runs import LEARNING_CURVE_FILE

    COUNT.check("nproc", nproc)
    if world is not None and nproc not in (None, world.size):
        raise UsageError(f"--nproc {nproc}: this process is one of {world.size} ranks started by torchrun; leave "
                         f"--nproc out, or give {world.size}")
    if signals and semantic is None:
        raise UsageError("--signals augments the LLM item texts of --semantic init|fusion; add --semantic")
    flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "lr_step": lr_step,
             "lr_gamma": lr_gamma, "patience": patience, "select_metric": select_metric,
             "exclude_history": exclude_history, "seed": seed, "threads": threads,
             "max_train_samples": max_train_samples, "device": device,
             "precision": precision.value if precision is not None else None, "negatives": negatives}
    # every setting is range-checked here, before the dataset is read
    train_config = build_train_config(None, flags)
    resolve_device(train_config.device)  # a missing GPU is found before the dataset is read
    model_config = None
    if model != ModelName("pop"):
        settings = model_settings(model.value, config_file, model_option or [])
        try:
            model_config = build_model_config(model.value, embedding_size=embedding_size, settings=settings)
        except OptionError as error:
            raise relabel_setting(error, settings, config_file, embedding_size) from None
    dataset = PreparedDataset.load(data)
    if not len(dataset.train):
        raise UsageError(f"--data {data}: the train split is empty; prepare the dataset with more data or other "
                         "protocol options (see 'agentrec data stats')")
    spec = RunSpec(model=model.value, variant=semantic.value if semantic else None, embedder=embedder,
                   signals=signals, train=train_config,
                   model_settings=dataclasses.asdict(model_config) if model_config is not None else {})
    if world is None and (nproc or 1) > 1:  # everything is checked: start the ranks, each this same command
        if spec.model == "pop":
            raise UsageError("--nproc: pop (the popularity floor) is counted, not trained; leave --nproc out")
        distributed.check_launch(nproc, train_config.device)
        n_train = len(dataset.train) if train_config.max_train_samples is None else train_config.max_train_samples
        distributed.check_batches(train_config.batch_size, min(n_train, len(dataset.train)), nproc)
        code = distributed.launch(nproc, command_line(typer_context), threads=train_config.threads)
        if code:
            raise typer.Exit(code)  # the failed rank has printed why
        return  # rank 0 printed the summary
    info = train_run(spec, dataset, out, progress=not quiet and (world is None or world.main))
    if world is not None and not world.main:
        return
    if info.semantic:
        typer.echo(f"semantic variant: {info.semantic}")
    if info.history:
        typer.echo(f"best epoch {info.best_epoch} of {len(info.history)} by validation {train_config.select_metric}; "
                   f"median {info.extra['median_samples_per_second']:.0f} training samples/s")
    typer.echo(f"{info.model} on {dataset.name}: validation ({len(dataset.valid):,} samples)")
    typer.echo(format_metrics(info.valid))
    curve = Path(out) / LEARNING_CURVE_FILE
    typer.echo(f"\nwrote {out}" + (f" (learning curve: {curve})" if info.history and curve.exists() else "")
               + f"; test it once with 'agentrec evaluate {out}'")


def command_line(context: typer.Context | None) -> list[str]:
    """This command's arguments as typed (``train --model narm ...``, kept by the root group), for the ranks to
    run it again; the process's own arguments when the command was not started through the root group."""
    import sys

    typed = context.meta.get(ARGV_KEY) if context is not None else None
    return list(typed) if typed is not None else sys.argv[1:]


class _Settings(dict):
    """Model settings with where each came from (``--set sigma`` or ``cfg.toml: model.sigma``)."""

    def __init__(self):
        super().__init__()
        self.labels: dict[str, str] = {}


def model_settings(name: str, config_file: ConfigFile | None, typed: list[str]) -> _Settings:
    """The model's settings from the file's ``[model]`` / ``[model_settings]`` table, then ``--set``,
    typed by the model's Config; an unknown name or a wrong type is a UsageError naming where it came from."""
    from agentrec.core.config import parse_setting

    config_cls = MODELS.load(name).Config
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    settings = _Settings()
    for table in ("model", "model_settings"):
        for key, value in ((config_file.sections.get(table) or {}) if config_file else {}).items():
            label = f"{config_file.path}: {table}.{key}"
            if key not in fields:
                raise UsageError(f"{label}: {name} has no such setting; it has {', '.join(sorted(fields))}")
            settings[key] = convert(value, hints[key], label)
            settings.labels[key] = label
    for text in typed:
        key, value = parse_setting(text, config_cls)
        settings[key] = value
        settings.labels[key] = f"--set {key}"
    return settings


def relabel_setting(error: OptionError, settings: _Settings, config_file, embedding_size) -> OptionError:
    """A model setting refused by its field name, named as the user gave it."""
    if error.typed or (error.option == "embedding_size" and embedding_size is not None):
        return error  # --embedding-size: named by the flag, or by its config-file key (with_config does that)
    if error.option in settings.labels:
        return error.as_typed(settings.labels[error.option])
    return error


class Precision(str, Enum):
    """The precision of evaluation's score product (the ranks are exact either way)."""

    fp32 = "fp32"
    bf16 = "bf16"


@app.command("evaluate")
@with_config()
@checked(memory_mb=POSITIVE, threads=COUNT)
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by 'agentrec train'.")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset folder (default: the one the run was trained on; it must have the same fingerprint).")] = None,
    split: Annotated[Split, typer.Option(help="Split to evaluate.")] = Split.test,
    exclude_history: Annotated[Optional[bool], typer.Option("--exclude-history/--allow-history", help="Default: as the run was trained.")] = None,
    memory_mb: Annotated[float, typer.Option(help="Memory budget for one chunk of scores.")] = 256.0,
    precision: Annotated[Precision, typer.Option(help="Precision of the session-by-catalogue product: bf16 is faster on CPUs that multiply bf16 natively (AVX512-BF16, AMX); the near-ties are re-scored, so the ranks are exactly those of fp32.")] = Precision.fp32,
    threads: Annotated[Optional[int], typer.Option(help="Threads that rank chunks of sessions side by side, each with one torch thread for its product (default: torch's own count, one per core).")] = None,
    device: DeviceOption = "auto",
):
    """Rank every test target against the full catalogue; print Recall, MRR and NDCG at 10, 20, 100."""
    from agentrec.core.devices import resolve_device
    from agentrec.core.metrics import format_metrics
    from agentrec.training.runs import evaluate_run

    resolve_device(device)  # a malformed name or a missing GPU: one line, before the run is read
    if split == Split.test:  # the test metrics go into RUN/run.json: an unwritable run is found before evaluating
        check_argument("RUN", Writable(), run)
    info, result = evaluate_run(run, data=data, split=split.value, exclude_history=exclude_history,
                                memory_budget_mb=memory_mb, progress=True, precision=precision.value, threads=threads,
                                device=device)
    variant = f" + SemSR-{info.semantic['mode'][0].upper()} ({info.semantic.get('embedder')})" if info.semantic else ""
    typer.echo(f"{info.model}{variant} on {info.dataset['name']} ({info.dataset.get('protocol')}), {split.value}: "
               f"{result.describe()}")
    typer.echo(format_metrics(result.metrics))
    typer.echo(f"({result.seconds:.2f} s, {_precision_note(result.extra)})")


def _precision_note(extra: dict) -> str:
    if extra.get("precision") == "scores":
        return "ranked from the model's scores"
    return f"{extra['precision']} product, {extra['threads']} thread(s)"
