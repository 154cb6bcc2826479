"""``agentrec signals generate | report | merge``: LaMAR semantic signals.

``generate`` is :func:`agentrec.signals.generate.generate_signals` (the engine made by
:func:`agentrec.llm.get_engine` once the templates are checked); ``report`` is
:func:`agentrec.signals.report.signal_report`; ``merge`` (of ``generate --shard I/N`` sets) is
:func:`agentrec.signals.merge.merge_signal_sets`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

import agentrec.llm
from agentrec.cli.configfile import with_config
from agentrec.cli.options import (
    REQUIRED,
    DeviceOption,
    EmbedderOption,
    QuietOption,
    checked,
    engine_options,
    set_verbosity,
    split_names,
    torch_threads,
)
from agentrec.core.errors import UsageError
from agentrec.core.options import (
    COUNT,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    SEED,
    Names,
    OptionError,
    Range,
    Writable,
    check_writable,
)
from agentrec.cli.ray_options import (
    RAY_RULES,
    ActorRetriesOption,
    ActorsOption,
    ActorTimeoutOption,
    CpusPerActorOption,
    GpusPerActorOption,
    RayAddressOption,
    RayFlag,
    ray_config,
)
from agentrec.core.shards import parse_shard
from agentrec.core.templates import ITEM_FIELDS
from agentrec.llm import EngineConfig
from agentrec.signals.cleaning import ASPECT_NAMES

app = typer.Typer(
    help="LaMAR semantic signals: generate per-item usage scenarios, intents and summaries with an LLM "
    "(crash-safe, resumable), measure them, and use them in item texts.\n\n"
    "Typical flow: 'agentrec signals generate --data data/ml-100k --out signals/ml-100k-smollm2', then "
    "'agentrec signals report signals/ml-100k-smollm2' and "
    "'agentrec train --model niser --semantic fusion --signals signals/ml-100k-smollm2:usage ...'.",
    no_args_is_help=True,
)


def parse_items(items: str | None) -> list[int] | None:
    """``--items 1,2,3`` -> ``[1, 2, 3]``."""
    if not items:
        return None
    try:
        return [int(i) for i in items.replace(" ", "").split(",") if i]
    except ValueError:
        raise OptionError("--items", f"takes comma-separated item ids, e.g. 1,2,3; got {items!r}", typed=True) from None


@app.command("generate")
@with_config(required=("data", "out"))
@engine_options(defaults={"batch_size": 16})
@checked(out=Writable(), limit=COUNT, max_new_tokens=COUNT, temperature=NON_NEGATIVE, seed=SEED,
         empty_retries=NON_NEGATIVE_INT, max_chars=Range(8, integer=True), chunk_size=COUNT, threads=COUNT,
         fields=Names(ITEM_FIELDS), aspects=Names(ASPECT_NAMES), **RAY_RULES)
def generate(
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder." + REQUIRED)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Signal set folder: created, or resumed when it was made with the same settings." + REQUIRED)] = None,
    aspects: Annotated[str, typer.Option(help="Comma-separated LaMAR aspects: " + ", ".join(ASPECT_NAMES) + ".")] = ",".join(ASPECT_NAMES),
    limit: Annotated[Optional[int], typer.Option(help="Only the first N items of the catalogue (ids 1..N).")] = None,
    items: Annotated[Optional[str], typer.Option(help="Only these item ids, comma-separated.")] = None,
    shard: Annotated[Optional[str], typer.Option(help="I/N: only the selected items whose index i has i % N == I (0 <= I < N); each shard writes its own --out, combined with 'agentrec signals merge'.")] = None,
    fields: Annotated[str, typer.Option(help="Item metadata shown to the model, comma-separated (title, year, genres, brand, categories, price, description); absent fields are skipped.")] = "title,year,genres,brand,categories,description",
    prompts: Annotated[Optional[Path], typer.Option(help="Folder with your own aspect_usage/intent/summary.jinja (default: the shipped ones).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most generated tokens per signal.")] = 48,
    temperature: Annotated[float, typer.Option(help="First attempt's temperature (0: greedy).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    empty_retries: Annotated[int, typer.Option(help="Extra attempts, sampled, for an output that is empty after cleaning (--retries is the openai engine's network retries).")] = 2,
    max_chars: Annotated[int, typer.Option(help="Cleaned signals are cut to this many characters at a word boundary.")] = 240,
    chunk_size: Annotated[int, typer.Option(help="Signals per engine call; each chunk is written durably before the next.")] = 64,
    threads: Annotated[int, typer.Option(help="Torch threads.")] = 1,
    ray: RayFlag = False,
    ray_address: RayAddressOption = None,
    actors: ActorsOption = 2,
    cpus_per_actor: CpusPerActorOption = 1.0,
    gpus_per_actor: GpusPerActorOption = 0.0,
    actor_timeout_s: ActorTimeoutOption = 600.0,
    actor_retries: ActorRetriesOption = 1,
    quiet: QuietOption = False,
    engine: str = "hf",
    engine_config: Optional[EngineConfig] = None,
):
    """Generate LaMAR signals for every catalogue item (or --limit / --items), resuming what a set already has.

    Safe to kill at any moment: rerun the same command and it finishes the set with no item missing,
    none duplicated, and no generation repeated for items already written. With --ray the chunks run on a
    pool of Ray actors (a local cluster, or --ray-address), stored as they come back; the set equals the one
    made without --ray (use as many torch threads per actor, --cpus-per-actor, as --threads here).

    Examples:

      agentrec signals generate --data data/ml-100k --out signals/ml-100k-smollm2

      agentrec signals generate --data data/ml-100k --out signals/ml-100k-smollm2 --ray --actors 2 --chunk-size 16

      agentrec signals generate --data data/beauty --aspects usage --engine openai --base-url http://127.0.0.1:8000/v1 --out signals/beauty-llama
    """
    set_verbosity(quiet=quiet)
    from agentrec.data.dataset import PreparedDataset
    from agentrec.llm.prompts import validate_aspects
    from agentrec.signals.cleaning import parse_aspects
    from agentrec.signals.generate import SignalConfig, generate_signals

    if limit is not None and items:
        raise UsageError("give --limit or --items, not both")
    shard_parts = parse_shard(shard)
    ray_settings = ray_config(ray=ray, ray_address=ray_address, actors=actors, cpus_per_actor=cpus_per_actor,
                              gpus_per_actor=gpus_per_actor, actor_timeout_s=actor_timeout_s,
                              actor_retries=actor_retries, engine=engine, engine_config=engine_config)
    if ray_settings is not None:
        from agentrec.llm.raypool import import_ray

        import_ray()  # not installed: the install command, before any work
    wanted = parse_items(items)
    torch_threads(threads)
    config = SignalConfig(aspects=parse_aspects(aspects), fields=split_names(fields), max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, retries=empty_retries, max_chars=max_chars,
                          chunk_size=chunk_size, prompts=str(prompts) if prompts else None)
    dataset = PreparedDataset.load(data)
    item_ids = wanted or (range(1, min(limit, dataset.n_items) + 1) if limit is not None else None)
    outside = [i for i in item_ids or () if not 1 <= i <= dataset.n_items]
    if outside:  # before any model loads
        raise OptionError("--items", f"has ids outside the catalogue (1..{dataset.n_items}): "
                                     f"{', '.join(map(str, outside[:5]))}", typed=True)
    validate_aspects(config.aspects, config.prompts)  # before the engine: vllm loads its model when made
    if ray_settings is None:
        llm = agentrec.llm.get_engine(engine, engine_config)
        result = generate_signals(dataset, out, llm, config=config, item_ids=item_ids, progress=not quiet,
                                  shard=shard_parts)
    else:
        from agentrec.llm.raypool import RayPool, driver_engine

        llm = driver_engine(engine, engine_config)  # renders the prompts; the actors make their own engines
        with RayPool(engine, engine_config, ray_settings) as pool:
            result = generate_signals(dataset, out, llm, config=config, item_ids=item_ids, progress=not quiet,
                                      shard=shard_parts, ray=pool)
    typer.echo(result.describe())
    (Path(out) / "last_run.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    typer.echo(f"\nreport it with: agentrec signals report {out}")


@app.command("report")
@with_config()
@checked(path=Writable(), dedup_out=Writable(), threads=COUNT,
         threshold=Range(0, 1, low_open=True, note="a cosine similarity"))
def report(
    path: Annotated[Path, typer.Argument(help="Signal set folder.")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset folder (default: the one recorded in the set's manifest).")] = None,
    embedder: EmbedderOption = "minilm",
    threshold: Annotated[float, typer.Option(help="Cosine similarity from which two items' signals count as near duplicates.")] = 0.9,
    dedup: Annotated[bool, typer.Option("--dedup", help="Also write a copy of the set without near duplicates (in item id order, later ones are removed).")] = False,
    dedup_out: Annotated[Optional[Path], typer.Option(help="Folder of the de-duplicated copy (default: SET-dedup).")] = None,
    threads: Annotated[int, typer.Option(help="Torch threads for embedding.")] = 1,
    device: DeviceOption = "auto",
):
    """Coverage, distinct-1/2, exact and near-duplicate rates, novelty against the item's metadata, and
    per-genre (category) repetitiveness; writes report.md and report.json into the set.

    Examples:

      agentrec signals report signals/ml-100k-smollm2

      agentrec signals report signals/ml-100k-smollm2 --dedup --threshold 0.92
    """
    set_verbosity(quiet=True)
    from agentrec.retrieval.embedders import get_embedder
    from agentrec.signals.report import format_report, signal_report

    embedder_object = get_embedder(embedder, device=device)  # where the signals are embedded; not in the fingerprint
    torch_threads(threads)
    target = (dedup_out or path.with_name(path.name + "-dedup")) if dedup or dedup_out else None
    found = signal_report(path, dataset=data, embedder=embedder_object, threshold=threshold, dedup_out=target)
    typer.echo(format_report(found))
    typer.echo(f"\nwrote {path / 'report.md'} and {path / 'report.json'}")


@app.command("merge")
@with_config()
def merge(
    out: Annotated[Path, typer.Argument(help="The merged signal set folder to write (new, or --force).")],
    parts: Annotated[list[Path], typer.Argument(help="The shards' signal sets ('agentrec signals generate --shard I/N').")],
    force: Annotated[bool, typer.Option("--force", help="Replace what OUT holds.")] = False,
):
    """Merge the signal sets of 'signals generate --shard I/N' into one set that 'signals report' and --signals read.

    Checks that the sets come from one run (dataset and catalogue fingerprints, engine, sampling, cleaning,
    fields, templates) and that no (item, aspect) pair is in two sets; reports the coverage per aspect.

    Example:

      agentrec signals merge signals/ml-100k signals/ml-100k-0 signals/ml-100k-1
    """
    set_verbosity(quiet=True)
    check_writable("out", out)
    from agentrec.signals.merge import describe_coverage, merge_signal_sets

    coverage = merge_signal_sets(out, parts, force=force)
    typer.echo(f"merged {len(parts)} signal sets into {out} ({coverage['items']:,} catalogue items)")
    typer.echo(describe_coverage(coverage))
    typer.echo(f"\nreport it with: agentrec signals report {out}")
