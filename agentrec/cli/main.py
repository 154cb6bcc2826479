"""The ``agentrec`` command line: a thin typer layer over library calls.

Heavy libraries are imported inside the commands, so ``agentrec --help`` stays fast.
"""

from __future__ import annotations

import dataclasses

import functools
import inspect
import json
import logging
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from agentrec.core.options import (
    COUNT,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    SEED,
    UNIT,
    Names,
    OptionError,
    Range,
    Writable,
    check_writable,
    flag,
)
from agentrec.core.templates import ITEM_FIELDS

app = typer.Typer(
    help="LLMs as session-based recommendation agents, with retrieval.\n\n"
    "Quick start: 'agentrec compare --out runs/compare' puts the LLM, the hybrid, the session models and the "
    "popularity floor side by side on MovieLens-100K, offline. Step by step: 'agentrec data prepare ml-100k "
    "--out data/ml-100k', 'agentrec train --model niser --data data/ml-100k --out runs/niser', "
    "'agentrec evaluate runs/niser', 'agentrec predict --strategy fscot --data data/ml-100k --out runs/fscot.jsonl'.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare datasets in agentrec's canonical format and inspect them.", no_args_is_help=True)
app.add_typer(data_app, name="data")

logger = logging.getLogger("agentrec")


class DatasetName(str, Enum):
    ml_100k = "ml-100k"
    ml_latest_small = "ml-latest-small"
    recbole = "recbole"
    amazon2014 = "amazon2014"
    amazon2018 = "amazon2018"
    amazon2023 = "amazon2023"
    m2 = "m2"
    synthetic = "synthetic"


class ProtocolName(str, Enum):
    leave_one_out = "leave-one-out"
    semsr = "semsr"
    gap = "gap"
    m2 = "m2"


class Split(str, Enum):
    valid = "valid"
    test = "test"


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def user_errors(func):
    """Turn expected failures into one clear line on stderr and exit code 1.

    A setting a library refused by its field name (``max_history``) is named as typed (``--max-history``).
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from jinja2 import TemplateError

        from agentrec.core.errors import AgentrecError

        try:
            return func(*args, **kwargs)
        except (AgentrecError, FileNotFoundError, ValueError, RuntimeError) as error:
            if isinstance(error, OptionError) and not error.typed:
                error = error.as_typed(flag(error.option))
            typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        except TemplateError as error:  # a user's template (--prompts) with a missing variable or bad syntax
            typer.secho(f"error: {type(error).__name__}: {error}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper


def checked(**rules):
    """Check the named options against their rules (a :class:`~agentrec.core.options.Range`, or
    :class:`~agentrec.core.options.Writable` for an output) before the command does anything.

    Settings whose library config range-checks them (train, protocol and compare settings) need no
    rule here; these are the options of commands whose work starts before a config would object
    (a model loads, a dataset is read), and outputs that would otherwise fail after the work.
    """

    def decorate(func):
        signature = inspect.signature(func)
        unknown = sorted(set(rules) - set(signature.parameters))
        if unknown:  # a typo here would silently check nothing
            raise TypeError(f"{func.__name__} has no option {unknown}")
        hints = typing.get_type_hints(func, include_extras=True)
        arguments = {name for name in rules  # positional arguments are named by their metavar (RUN), not --run
                     if any(isinstance(m, typer.models.ArgumentInfo) for m in getattr(hints[name], "__metadata__", ()))}

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            given = signature.bind(*args, **kwargs)
            given.apply_defaults()
            for name, rule in rules.items():
                if name in arguments:
                    check_argument(name.upper(), rule, given.arguments[name])
                else:
                    rule.check(name, given.arguments[name])
            return func(*args, **kwargs)

        return wrapper

    return decorate


def check_argument(metavar: str, rule, value) -> None:
    """Check a positional argument; an error names it by its metavar (``RUN``), as ``--help`` shows it."""
    try:
        rule.check(metavar, value)
    except OptionError as error:
        raise error.as_typed(metavar) from None


@data_app.command("prepare")
@user_errors
@checked(out=Writable(), items=COUNT, sessions=COUNT, seed=SEED)
def data_prepare(
    name: Annotated[DatasetName, typer.Argument(help="Source format or bundled dataset.")],
    out: Annotated[Path, typer.Option(help="Folder to write the prepared dataset to.")],
    source: Annotated[Optional[Path], typer.Option(help="Input file or folder (not needed for ml-100k, ml-latest-small, synthetic).")] = None,
    meta: Annotated[Optional[Path], typer.Option(help="Amazon metadata file (meta_<Category>...).")] = None,
    protocol: Annotated[Optional[ProtocolName], typer.Option(help="Split protocol; default depends on the dataset (MovieLens: leave-one-out, Amazon: semsr, M2 and synthetic: m2).")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Count and skip malformed lines instead of stopping at the first.")] = False,
    max_history: Annotated[Optional[int], typer.Option(help="Most recent items kept per history (default 50).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the semsr user split, or of the synthetic generator.")] = None,
    items: Annotated[Optional[int], typer.Option(help="synthetic: catalogue size.")] = None,
    sessions: Annotated[Optional[int], typer.Option(help="synthetic: number of sessions (default 2 x items).")] = None,
    locale: Annotated[Optional[str], typer.Option(help="m2: locale to keep (default UK).")] = None,
    gap_s: Annotated[Optional[int], typer.Option(help="gap protocol: inactivity in seconds that starts a new session (default 1800).")] = None,
    min_item_count: Annotated[Optional[int], typer.Option(help="semsr/gap: drop items seen fewer times.")] = None,
    min_user_interactions: Annotated[Optional[int], typer.Option(help="semsr/leave-one-out: drop users with fewer interactions.")] = None,
    valid_fraction: Annotated[Optional[float], typer.Option(help="semsr/gap/m2: share of users or sessions for validation.")] = None,
    test_fraction: Annotated[Optional[float], typer.Option(help="semsr/gap/m2: share of users or sessions for test.")] = None,
    test_sessions: Annotated[Optional[int], typer.Option(help="m2: exact number of most recent sessions for test.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a different dataset already in --out (the same dataset is kept as it is).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Load a source, apply a protocol and write the canonical dataset (items.jsonl, splits, stats.json).

    The folder is written aside and swapped into --out whole: a killed prepare leaves the old dataset
    or the new one, never a mix.

    Examples:

      agentrec data prepare ml-100k --protocol leave-one-out --out data/ml-100k

      agentrec data prepare recbole --source path/to/ml-1m --out data/ml-1m

      agentrec data prepare amazon2014 --source reviews_Beauty_5.json.gz --meta meta_Beauty.json.gz --out data/beauty

      agentrec data prepare synthetic --items 10000 --sessions 50000 --seed 1 --out data/syn
    """
    _setup_logging(verbose)
    from agentrec.data.api import prepare_dataset

    options = {
        "max_history": max_history, "seed": seed, "gap_s": gap_s, "min_item_count": min_item_count,
        "min_user_interactions": min_user_interactions, "valid_fraction": valid_fraction,
        "test_fraction": test_fraction, "test_sessions": test_sessions,
    }
    loader_options = {"meta": meta, "locale": locale, "items": items, "sessions": sessions, "seed": seed}
    dataset = prepare_dataset(
        name.value, out=out, source=source, protocol=protocol.value if protocol else None, skip_bad=skip_bad,
        protocol_options={k: v for k, v in options.items() if v is not None},
        loader_options=loader_options, force=force,
    )
    typer.echo(format_stats(dataset.stats))
    if dataset.saved == "kept":
        typer.echo(f"\n{out} already holds this dataset (same fingerprint); kept it as it is")
    else:
        typer.echo(f"\n{'replaced' if dataset.saved == 'replaced' else 'wrote'} {out}")


@data_app.command("stats")
@user_errors
def data_stats(
    path: Annotated[Path, typer.Argument(help="A prepared dataset folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json as it is.")] = False,
):
    """Print the counts, filtering steps, protocol and sources of a prepared dataset."""
    from agentrec.core.errors import DamagedFileError
    from agentrec.data.dataset import STATS_FILE, read_stats, rebuild_hint

    stats = read_stats(path)
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    try:
        text = format_stats(stats)
    except (KeyError, TypeError, AttributeError) as error:
        raise DamagedFileError(f"{path / STATS_FILE}: a key is missing or malformed ({type(error).__name__}: "
                               f"{error}); {rebuild_hint(path)}") from None
    typer.echo(text)


def format_stats(stats: dict) -> str:
    counts = stats["counts"]
    protocol = stats["protocol"]
    params = ", ".join(f"{k}={v}" for k, v in protocol["params"].items())
    lines = [
        f"dataset   {stats['dataset']}   fingerprint {stats.get('fingerprint', '?')[:12]}",
        f"protocol  {protocol['name']} ({params})",
        f"          ties: {protocol['tie_rule']}",
    ]
    if stats.get("time_note"):
        lines.append(f"          time: {stats['time_note']}")
    lines += [
        "",
        f"items {counts['items']:,} (with title {counts['items_with_title']:,})   sequences {counts['sequences']:,}   "
        f"events {counts['events']:,}   mean length {counts['mean_sequence_length']}",
        "",
        f"{'split':<7}{'samples':>10}{'sessions':>10}{'mean hist':>11}{'unseen targets':>16}",
    ]
    for split in ("train", "valid", "test"):
        unseen = counts.get(f"{split}_targets_unseen_in_train", "-")
        lines.append(f"{split:<7}{counts[f'{split}_samples']:>10,}{counts[f'{split}_sessions']:>10,}"
                     f"{counts[f'{split}_mean_history']:>11}{unseen:>16}")
    lines += ["", "raw: " + ", ".join(f"{k} {v:,}" for k, v in stats["raw"].items())]
    lines.append("filtering:")
    for row in stats["filtering"]:
        removed = ", ".join(f"{k} {v:,}" for k, v in row.items() if k not in ("step", "reason"))
        lines.append(f"  - {row['step']}: {row['reason']} ({removed})")
    report = stats["load_report"]["counts"]
    lines.append("load report: " + (", ".join(f"{k} {v:,}" for k, v in report.items()) or "nothing dropped"))
    for example in stats["load_report"].get("bad_line_examples", [])[:5]:
        lines.append(f"  {example}")
    return "\n".join(lines)


class ModelName(str, Enum):
    pop = "pop"
    gru4rec = "gru4rec"
    narm = "narm"
    srgnn = "srgnn"
    niser = "niser"
    msgat = "msgat"


class SemanticMode(str, Enum):
    init = "init"
    fusion = "fusion"


@app.command("train")
@user_errors
@checked(out=Writable())
def train(
    model: Annotated[ModelName, typer.Option(help="Model to train (pop is the popularity floor).")],
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    out: Annotated[Path, typer.Option(help="Run folder to write (run.json, weights.safetensors).")],
    config: Annotated[Optional[Path], typer.Option(help="JSON file with 'train' and 'model' sections; flags given here win over it.")] = None,
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
    embedder: Annotated[str, typer.Option(help="Item-text embedder for --semantic: minilm (offline default), smollm2, st:HUB_ID, hf:HUB_ID.")] = "minilm",
    signals: Annotated[Optional[str], typer.Option(help="With --semantic: LaMAR signals in the item texts, SET or SET:aspect,aspect (from 'agentrec signals generate').")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
):
    """Train a model on the train split, selecting the epoch on validation; test is never touched.

    Precedence: flags > --config file > defaults. Example:

      agentrec train --model niser --data data/ml-100k --out runs/niser --epochs 20 --set sigma=16
    """
    _setup_logging(False)
    from agentrec.core.errors import UsageError
    from agentrec.core.metrics import format_metrics
    from agentrec.data.dataset import PreparedDataset
    from agentrec.pipelines.train import RunSpec, build_model_config, build_train_config, train_run

    if signals and semantic is None:
        raise ValueError("--signals augments the LLM item texts of --semantic init|fusion; add --semantic")
    flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "lr_step": lr_step,
             "lr_gamma": lr_gamma, "patience": patience, "select_metric": select_metric,
             "exclude_history": exclude_history, "seed": seed, "threads": threads,
             "max_train_samples": max_train_samples}
    # every setting is range-checked here, before the dataset is read
    train_config = build_train_config(config, flags)
    model_config = None if model == ModelName.pop else build_model_config(
        model.value, config, embedding_size=embedding_size, settings=model_option or [])
    dataset = PreparedDataset.load(data)
    if not len(dataset.train):
        raise UsageError(f"--data {data}: the train split is empty; prepare the dataset with more data or other "
                         "protocol options (see 'agentrec data stats')")
    spec = RunSpec(model=model.value, variant=semantic.value if semantic else None, embedder=embedder,
                   signals=signals, train=train_config,
                   model_settings=dataclasses.asdict(model_config) if model_config is not None else {})
    info = train_run(spec, dataset, out, progress=not quiet)
    if info.semantic:
        typer.echo(f"semantic variant: {info.semantic}")
    if info.history:
        typer.echo(f"best epoch {info.best_epoch} of {len(info.history)} by validation {train_config.select_metric}; "
                   f"median {info.extra['median_samples_per_second']:.0f} training samples/s")
    typer.echo(f"{info.model} on {dataset.name}: validation ({len(dataset.valid):,} samples)")
    typer.echo(format_metrics(info.valid))
    typer.echo(f"\nwrote {out}; test it once with 'agentrec evaluate {out}'")


@app.command("evaluate")
@user_errors
@checked(memory_mb=POSITIVE)
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by 'agentrec train'.")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset folder (default: the one the run was trained on; it must have the same fingerprint).")] = None,
    split: Annotated[Split, typer.Option(help="Split to evaluate.")] = Split.test,
    exclude_history: Annotated[Optional[bool], typer.Option("--exclude-history/--allow-history", help="Default: as the run was trained.")] = None,
    memory_mb: Annotated[float, typer.Option(help="Memory budget for one chunk of scores.")] = 256.0,
):
    """Rank every test target against the full catalogue; print Recall, MRR and NDCG at 10, 20, 100."""
    _setup_logging(False)
    from agentrec.core.metrics import format_metrics
    from agentrec.training.runs import evaluate_run

    if split == Split.test:  # the test metrics go into RUN/run.json: an unwritable run is found before evaluating
        check_argument("RUN", Writable(), run)
    info, result = evaluate_run(run, data=data, split=split.value, exclude_history=exclude_history,
                                memory_budget_mb=memory_mb, progress=True)
    variant = f" + SemSR-{info.semantic['mode'][0].upper()} ({info.semantic.get('embedder')})" if info.semantic else ""
    typer.echo(f"{info.model}{variant} on {info.dataset['name']} ({info.dataset.get('protocol')}), {split.value}: {result.describe()}")
    typer.echo(format_metrics(result.metrics))
    typer.echo(f"({result.seconds:.2f} s)")


# ---------------------------------------------------------------- index: the catalogue in Chroma (agentrec.retrieval.index)
index_app = typer.Typer(
    help="Embed a dataset's catalogue into a Chroma collection and search it by cosine distance.\n\n"
    "Typical flow: 'agentrec index build --data data/ml-100k', then "
    "'agentrec index query \"toy story\" --data data/ml-100k'.",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")

_EMBEDDER_HELP = "Item-text embedder: minilm (offline default), smollm2, st:HUB_ID_OR_PATH, hf:HUB_ID_OR_PATH."
_STORE_HELP = "Folder of the on-disk Chroma store (ignored with --chroma-host)."
_HOST_HELP = "HOST:PORT of a Chroma server (started with 'chroma run --path DIR --port 8000') to use instead of --store."


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


@index_app.command("build")
@user_errors
@checked(ef_construction=COUNT, ef_search=COUNT, max_neighbors=COUNT, threads=COUNT)
def index_build(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    embedder: Annotated[str, typer.Option(help=_EMBEDDER_HELP)] = "minilm",
    store: Annotated[Path, typer.Option(help=_STORE_HELP)] = Path("vectorstore"),
    chroma_host: Annotated[Optional[str], typer.Option(help=_HOST_HELP)] = None,
    collection: Annotated[Optional[str], typer.Option(help="Collection name (default: DATASET-FINGERPRINT-EMBEDDER).")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Replace a collection that was built from another embedder, dataset, item text or HNSW settings.")] = False,
    ef_construction: Annotated[int, typer.Option(help="HNSW candidate list size while inserting.")] = 200,
    ef_search: Annotated[int, typer.Option(help="HNSW candidate list size while searching (fixed at creation).")] = 400,
    max_neighbors: Annotated[int, typer.Option(help="HNSW graph edges per node (M).")] = 16,
    threads: Annotated[int, typer.Option(help="Torch threads for embedding (default 1: often fastest on a small shared machine).")] = 1,
    signals: Annotated[Optional[str], typer.Option(help="LaMAR signals in the item texts, SET or SET:aspect,aspect (from 'agentrec signals generate'); the default collection name gets a sig-... suffix.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
):
    """Embed every item's text and store it in a Chroma collection; a complete matching collection is reused.

    Item vectors are cached in the dataset folder: building again (other store, settings, after a crash) embeds nothing.

    Examples:

      agentrec index build --data data/ml-100k

      agentrec index build --data data/ml-100k --embedder smollm2 --store vectorstore

      agentrec index build --data data/syn --chroma-host 127.0.0.1:8000 --ef-search 200 --rebuild
    """
    _setup_logging(False)
    import time

    from agentrec.data.dataset import PreparedDataset
    from agentrec.retrieval.index import CatalogueIndex, HNSWSettings

    if chroma_host is None:
        check_writable("store", store)

    _torch_threads(threads)
    started = time.perf_counter()
    dataset = PreparedDataset.load(data)
    hnsw = HNSWSettings(ef_construction=ef_construction, ef_search=ef_search, max_neighbors=max_neighbors)
    signal_texts = None
    if signals:
        from agentrec.cli.signals import load_signal_option
        from agentrec.retrieval.embedders import get_embedder
        from agentrec.retrieval.index import default_collection_name, sanitise_collection_name
        from agentrec.signals.signals import signals_tag

        signal_texts, signal_info = load_signal_option(signals, dataset)
        collection = collection or sanitise_collection_name(
            f"{default_collection_name(dataset, get_embedder(embedder))}-{signals_tag(signal_info)}")
    index = CatalogueIndex.build(dataset, embedder, store=store, chroma_host=chroma_host, collection=collection,
                                 signals=signal_texts,
                                 hnsw=hnsw, rebuild=rebuild, progress=not quiet)
    seconds = time.perf_counter() - started
    typer.echo(f"collection  {index.name}  ({'reused' if index.reused else 'built'}, {index.location})")
    typer.echo(f"items       {index.count:,}   dimension {index.dimension}   {seconds:.1f} s")
    where = f"--chroma-host {chroma_host}" if chroma_host else f"--store {store}"
    where += f" --collection {index.name}" if signals else ""
    typer.echo(f"\nsearch it with: agentrec index query \"TEXT\" --data {data} {where} --embedder {embedder}")


@index_app.command("query")
@user_errors
@checked(k=COUNT, threads=COUNT)
def index_query(
    texts: Annotated[list[str], typer.Argument(help="One or more texts, e.g. titles an LLM wrote; all are embedded and searched in one batch.")],
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder: picks its default collection and checks the collection was built from it.")] = None,
    store: Annotated[Path, typer.Option(help=_STORE_HELP)] = Path("vectorstore"),
    chroma_host: Annotated[Optional[str], typer.Option(help=_HOST_HELP)] = None,
    collection: Annotated[Optional[str], typer.Option(help="Collection name (default: the dataset's, or the store's only one for this embedder).")] = None,
    embedder: Annotated[str, typer.Option(help=_EMBEDDER_HELP + " Must be the one the collection was built with.")] = "minilm",
    k: Annotated[int, typer.Option("--k", "-k", help="Nearest items to list per text.")] = 10,
    exact: Annotated[bool, typer.Option("--exact", help="Exact search over every item vector instead of HNSW (for checking).")] = False,
    threads: Annotated[int, typer.Option(help="Torch threads for embedding.")] = 1,
):
    """List the catalogue items nearest to each text, by cosine distance (0 = same direction).

    Examples:

      agentrec index query "toy story" --data data/ml-100k

      agentrec index query "the godfather" "heat" --data data/ml-100k --k 5

      agentrec index query "wireless headphones" --chroma-host 127.0.0.1:8000 --collection my-catalogue
    """
    _setup_logging(False)
    from agentrec.data.dataset import PreparedDataset
    from agentrec.retrieval.index import CatalogueIndex

    _torch_threads(threads)
    dataset = PreparedDataset.load(data) if data else None
    index = CatalogueIndex.open(dataset, embedder, store=store, chroma_host=chroma_host, collection=collection)
    matches = index.exact_match(texts, k) if exact else index.match(texts, k)
    found = [int(i) for i in matches.item_ids.ravel() if i]
    titles = dict(zip(found, index.titles(found)))
    width = min(60, max([len("title")] + [len(t) for t in titles.values()]))
    for row, text in enumerate(texts):
        if row:
            typer.echo("")
        typer.echo(f"query: {text!r}   ({index.name}, {'exact' if exact else 'HNSW'} search)")
        typer.echo(f"{'rank':>4}  {'item':>7}  {'title':<{width}}  {'distance':>8}")
        for rank, (item, distance) in enumerate(zip(matches.item_ids[row], matches.distances[row]), 1):
            if item:
                title = titles[int(item)]
                title = title if len(title) <= width else title[: width - 3] + "..."
                typer.echo(f"{rank:>4}  {item:>7}  {title:<{width}}  {distance:>8.4f}")



# ---------------------------------------------------------------- predict: an LLM as the recommender (agentrec.pipelines.predict)
class StrategyName(str, Enum):
    fs = "fs"
    zcot = "zcot"
    fscot = "fscot"


class EngineName(str, Enum):
    hf = "hf"
    openai = "openai"
    langchain = "langchain"
    vllm = "vllm"


# options every LLM command has (predict, compare, signals generate): one definition, one help text
ChatBatchOption = Annotated[int, typer.Option(help="hf: chats per generate call.")]
DeviceOption = Annotated[str, typer.Option(help="hf: cpu, cuda, cuda:N or auto.")]
BaseUrlOption = Annotated[Optional[str], typer.Option(help="openai: server URL, e.g. http://127.0.0.1:8000/v1.")]
ApiKeyOption = Annotated[Optional[str], typer.Option(envvar="OPENAI_API_KEY", help="openai: API key (local servers ignore it).")]
ConcurrencyOption = Annotated[int, typer.Option(help="openai, langchain: requests in flight at once.")]
TensorParallelOption = Annotated[int, typer.Option(help="vllm: GPUs per model.")]
EnforceEagerOption = Annotated[bool, typer.Option("--enforce-eager", help="vllm: skip compilation and graph capture (starts much sooner, generates slower).")]


class FusionName(str, Enum):
    rerank = "rerank"
    blend = "blend"


@app.command("predict")
@user_errors
@checked(out=Writable(folder=False), cache_file=Writable(folder=False), k=COUNT, limit=COUNT,
         examples=NON_NEGATIVE_INT, seed=SEED, max_history=COUNT, title_tokens=COUNT, rationale_tokens=COUNT,
         temperature=NON_NEGATIVE, chunk_size=COUNT, batch_size=COUNT, threads=COUNT, concurrency=COUNT,
         timeout_s=POSITIVE, retries=NON_NEGATIVE_INT, tensor_parallel_size=COUNT, max_model_len=COUNT,
         ground_distance=Range(0, 2, note="a cosine distance"), candidates=COUNT, weight=UNIT,
         fields=Names(ITEM_FIELDS))
def predict_command(
    strategy: Annotated[StrategyName, typer.Option(help="Prompting strategy (SemSR 3.2): fs (few-shot), zcot (zero-shot chain of thought, two steps), fscot (few-shot chain of thought, two steps).")],
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    out: Annotated[Path, typer.Option(help="JSON-lines file to write, one line per session (a .summary.json is written beside it).")],
    engine: Annotated[EngineName, typer.Option(help="hf (transformers, offline default), openai (an OpenAI-compatible server: --base-url), langchain (--model PROVIDER:MODEL), vllm (in-process vLLM).")] = EngineName.hf,
    model: Annotated[Optional[str], typer.Option(help="smollm2 (shipped, the default for hf and vllm), a hub id or a local folder; openai: the served model name (default: the server's first); langchain: PROVIDER:MODEL.")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Grounded list length: the K catalogue items nearest to the generated title.")] = 20,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N sessions of the split.")] = None,
    split: Annotated[Split, typer.Option(help="Split whose sessions are predicted (few-shot examples always come from train).")] = Split.test,
    prompts: Annotated[Optional[Path], typer.Option(help="Folder with your own templates (fs.jinja, zcot_rationale.jinja, zcot_title.jinja, fscot.jinja); default: the shipped ones.")] = None,
    examples: Annotated[int, typer.Option(help="Few-shot examples per prompt (fs, fscot), drawn from train.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the example draw and of sampling.")] = 0,
    vary_examples: Annotated[bool, typer.Option("--vary-examples", help="Draw examples per session instead of once for the run (loses the shared prompt prefix).")] = False,
    fields: Annotated[str, typer.Option(help="Item text fields shown in prompts, comma-separated: title, year, genres, brand, categories, price, description.")] = "title",
    max_history: Annotated[int, typer.Option(help="Most recent session items shown.")] = 10,
    title_tokens: Annotated[int, typer.Option(help="Most new tokens of a title step.")] = 32,
    rationale_tokens: Annotated[int, typer.Option(help="Most new tokens of a rationale step (zcot, fscot).")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")] = 0.0,
    chunk_size: Annotated[int, typer.Option(help="Sessions per engine call; each chunk is cached before the next.")] = 256,
    batch_size: ChatBatchOption = 8,
    device: DeviceOption = "auto",
    threads: Annotated[int, typer.Option(help="Torch threads (default 1: often fastest on a small shared machine).")] = 1,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
    concurrency: ConcurrencyOption = 8,
    timeout_s: Annotated[float, typer.Option(help="openai: seconds per request.")] = 120.0,
    retries: Annotated[int, typer.Option(help="openai: retries on connection errors, 429 and 5xx, with exponential backoff.")] = 4,
    tensor_parallel_size: TensorParallelOption = 1,
    prefix_caching: Annotated[bool, typer.Option("--prefix-caching/--no-prefix-caching", help="vllm: reuse the KV cache of shared prompt prefixes.")] = True,
    max_model_len: Annotated[Optional[int], typer.Option(help="vllm: context length (default: the model's).")] = None,
    enforce_eager: EnforceEagerOption = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the generation cache (nothing read, nothing written).")] = False,
    cache_file: Annotated[Optional[Path], typer.Option(help="Generation cache file (default ~/.cache/agentrec/generations.sqlite).")] = None,
    embedder: Annotated[str, typer.Option(help=_EMBEDDER_HELP)] = "minilm",
    store: Annotated[Path, typer.Option(help=_STORE_HELP + " The index is built there on first use.")] = Path("vectorstore"),
    chroma_host: Annotated[Optional[str], typer.Option(help=_HOST_HELP)] = None,
    ground_distance: Annotated[float, typer.Option(help="Cosine distance above which a generated title counts as ungrounded (hallucinated).")] = 0.4,
    hybrid: Annotated[Optional[Path], typer.Option(help="Hybrid mode: a run folder (e.g. a SemSR-F run from 'agentrec train --semantic fusion') whose model re-ranks the LLM's grounded candidates; trained on this dataset.")] = None,
    candidates: Annotated[int, typer.Option(help="Hybrid: the generated title's M nearest items are the candidates.")] = 50,
    fusion: Annotated[FusionName, typer.Option(help="Hybrid: rerank (the model's score alone) or blend (weighted with the LLM's retrieval similarity, both min-max normalised over the candidates).")] = FusionName.rerank,
    weight: Annotated[float, typer.Option(help="Hybrid blend: weight of the LLM's similarity (1 - weight on the model's score).")] = 0.5,
    fill: Annotated[bool, typer.Option("--fill/--no-fill", help="Hybrid: continue the list after the candidates with the model's own ranking of the rest of the catalogue.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or progress lines.")] = False,
):
    """Recommend with an LLM: prompt each session, generate a title, ground it in the catalogue, report Recall/MRR@K.

    Defaults run offline: the hf engine with SmolLM2-135M-Instruct and the MiniLM catalogue index.

    Examples:

      agentrec predict --strategy fs --data data/ml-100k --limit 100 --out runs/llm/fs.jsonl

      agentrec predict --strategy zcot --data data/ml-100k --engine openai --base-url http://127.0.0.1:8000/v1 --out runs/llm/zcot.jsonl

      agentrec predict --strategy fscot --data data/beauty --engine vllm --model meta-llama/Meta-Llama-3-8B-Instruct --out runs/llm/fscot.jsonl

      agentrec predict --strategy fscot --data data/ml-100k --limit 50 --hybrid runs/semsr-f --out runs/llm/hybrid.jsonl
    """
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from agentrec.llm.engines import EngineConfig, get_engine
    from agentrec.llm.prompts import PromptConfig, validate_strategy
    from agentrec.pipelines.predict import GenerationConfig, predict

    if chroma_host is None:
        check_writable("store", store)
    _torch_threads(threads)
    prompt_config = PromptConfig(examples=examples, seed=seed, vary_examples=vary_examples,
                                 fields=tuple(f.strip() for f in fields.split(",") if f.strip()),
                                 max_history=max_history, prompts=str(prompts) if prompts else None)
    generation = GenerationConfig(title_tokens=title_tokens, rationale_tokens=rationale_tokens, temperature=temperature,
                                  seed=seed, chunk_size=chunk_size)
    engine_config = EngineConfig(model=model, device=device, batch_size=batch_size, threads=threads, base_url=base_url,
                                 api_key=api_key, concurrency=concurrency, timeout_s=timeout_s, retries=retries,
                                 tensor_parallel_size=tensor_parallel_size, prefix_caching=prefix_caching,
                                 max_model_len=max_model_len, enforce_eager=enforce_eager)
    validate_strategy(strategy.value, prompt_config)  # before the engine: vllm loads its model when made
    llm = get_engine(engine.value, engine_config)
    common = dict(k=k, limit=limit, out=out, split=split.value, prompts=prompt_config, generation=generation,
                  embedder=embedder, store=store, chroma_host=chroma_host,
                  cache=False if no_cache else (cache_file or True), ground_distance=ground_distance,
                  progress=not quiet)
    if hybrid is not None:
        from agentrec.pipelines.hybrid import HybridConfig, predict_hybrid

        config = HybridConfig(candidates=candidates, fusion=fusion.value, weight=weight, fill=fill)
        result = predict_hybrid(data, hybrid, strategy.value, llm, config=config, **common)
    else:
        result = predict(data, strategy.value, llm, **common)
    typer.echo(result.describe())
    also = f", {out.with_suffix('.llm.jsonl')} (the LLM alone)" if hybrid is not None else ""
    typer.echo(f"\nwrote {out}{also} and {out.with_suffix('.summary.json')}")


# ---------------------------------------------------------------- compare: every method on the same sessions (agentrec.pipelines.compare)
@app.command("compare")
@user_errors
@checked(out=Writable(), store=Writable(), cache_file=Writable(folder=False), candidates=COUNT, weight=UNIT,
         batch_size=COUNT, max_train_samples=Range(0, integer=True, note="0 trains on all samples"))
def compare_command(
    out: Annotated[Path, typer.Option(help="Output folder: tables (md, csv, json), recall_at_k.png, manifest.json, and the checkpoints, LLM rows and generation cache a rerun reuses.")],
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder (default: data/ml-100k, prepared with leave-one-out if missing).")] = None,
    strategies: Annotated[str, typer.Option(help="LLM strategies, comma-separated (fs, zcot, fscot); empty for none.")] = "fs,zcot,fscot",
    models: Annotated[str, typer.Option(help="Session models and SemSR variants, comma-separated: gru4rec, narm, srgnn, niser, msgat, semsr-i, semsr-f, semsr-i+, semsr-f+ (the popularity floor is always shown).")] = "niser,semsr-i,semsr-f,semsr-i+,semsr-f+",
    base: Annotated[str, typer.Option(help="Session model the SemSR variants wrap.")] = "niser",
    hybrid: Annotated[bool, typer.Option("--hybrid/--no-hybrid", help="A hybrid row per strategy: the LLM's candidates re-ranked by --hybrid-model.")] = True,
    hybrid_model: Annotated[str, typer.Option(help="Model that re-ranks the candidates (trained if not in --models).")] = "semsr-f",
    candidates: Annotated[int, typer.Option(help="Hybrid: candidates per session (the generated title's M nearest items).")] = 50,
    fusion: Annotated[FusionName, typer.Option(help="Hybrid: rerank or blend.")] = FusionName.rerank,
    weight: Annotated[float, typer.Option(help="Hybrid blend: weight of the LLM's similarity.")] = 0.5,
    fill: Annotated[bool, typer.Option("--fill/--no-fill", help="Hybrid: fill the list after the candidates from the model's own ranking.")] = True,
    llm_sessions: Annotated[int, typer.Option(help="LLM and hybrid rows run on the first N test sessions; every other method is also reported on exactly those.")] = 30,
    engine: Annotated[EngineName, typer.Option(help="LLM engine (hf: SmolLM2, offline).")] = EngineName.hf,
    model: Annotated[Optional[str], typer.Option(help="LLM: as for 'agentrec predict --model'.")] = None,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
    batch_size: ChatBatchOption = 8,
    embedder: Annotated[str, typer.Option(help=_EMBEDDER_HELP)] = "minilm",
    epochs: Annotated[int, typer.Option(help="Training budget of the session models: most epochs (reduced default, stated in the outputs).")] = 3,
    max_train_samples: Annotated[Optional[int], typer.Option(help="Train on a seeded subsample of this many samples (default 10,000; 0 = all).")] = 10_000,
    patience: Annotated[int, typer.Option(help="Early-stopping patience (validation Recall@100).")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of training, few-shot examples, sampling and bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of sessions for the intervals and the noise test.")] = 1000,
    threads: Annotated[int, typer.Option(help="Torch threads (default 1: often fastest on a small shared machine).")] = 1,
    cache_file: Annotated[Optional[Path], typer.Option(help="Generation cache (default OUT/generations.sqlite).")] = None,
    store: Annotated[Optional[Path], typer.Option(help="Chroma store folder (default OUT/vectorstore).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines or bars.")] = False,
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
    """
    import shlex
    import sys

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("chromadb", "httpx", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from agentrec.llm.engines import EngineConfig
    from agentrec.pipelines.compare import CompareConfig, run_compare
    from agentrec.pipelines.hybrid import HybridConfig

    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())
    config = CompareConfig(
        strategies=split(strategies), models=split(models), base=base, hybrid=hybrid, hybrid_model=hybrid_model,
        hybrid_config=HybridConfig(candidates=candidates, fusion=fusion.value, weight=weight, fill=fill),
        llm_sessions=llm_sessions, embedder=embedder, epochs=epochs,
        max_train_samples=max_train_samples or None, patience=patience, seed=seed, threads=threads,
        bootstrap=bootstrap)
    engine_config = EngineConfig(model=model, batch_size=batch_size, threads=threads, base_url=base_url,
                                 api_key=api_key)
    result = run_compare(out, config, data=data, engine=engine.value, engine_config=engine_config,
                         cache_file=cache_file, store=store, progress=not quiet,
                         command=shlex.join(["agentrec", *sys.argv[1:]]))
    typer.echo(result.table())
    typer.echo(f"\n* best in its column; ~ within noise of it ({result.manifest['noise']}); "
               "values in %, ± half the bootstrap interval")
    typer.echo(f"cost: {result.manifest['cost']}")
    trained = f"{len(result.trained)} models trained" if result.trained else "no model trained (all reused)"
    typer.echo(f"\n{trained}; {result.generated} chats sent to the LLM; {result.seconds:.0f} s wall, "
               f"{result.manifest['cpu_seconds']:.0f} s CPU")
    typer.echo(f"wrote {out}/compare.md, compare.csv, compare.json, recall_at_k.png, manifest.json")


# ---------------------------------------------------------------- signals: LaMAR semantic signals (agentrec.signals.signals)
from agentrec.cli.signals import signals_app  # noqa: E402  (it uses the helpers above)

app.add_typer(signals_app, name="signals")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
