"""``agentrec signals ...``: LaMAR semantic signals (:mod:`agentrec.signals.signals`), a thin typer layer.

Registered on the main app by :mod:`agentrec.cli.main`; heavy libraries are imported inside the commands.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from agentrec.cli.main import (
    _EMBEDDER_HELP,
    ApiKeyOption,
    BaseUrlOption,
    ChatBatchOption,
    ConcurrencyOption,
    DeviceOption,
    EnforceEagerOption,
    EngineName,
    TensorParallelOption,
    _torch_threads,
    checked,
    user_errors,
)
from agentrec.core.options import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, SEED, Names, OptionError, Range, Writable
from agentrec.core.templates import ITEM_FIELDS

signals_app = typer.Typer(
    help="LaMAR semantic signals: generate per-item usage scenarios, intents and summaries with an LLM "
    "(crash-safe, resumable), measure them, and use them in item texts.\n\n"
    "Typical flow: 'agentrec signals generate --data data/ml-100k --out signals/ml-100k-smollm2', then "
    "'agentrec signals report signals/ml-100k-smollm2' and "
    "'agentrec train --model niser --semantic fusion --signals signals/ml-100k-smollm2:usage ...'.",
    no_args_is_help=True,
)

SIGNALS_OPTION_HELP = ("A signal set from 'agentrec signals generate', as SET or SET:aspect,aspect (e.g. "
                       "signals/ml:usage,intent): the chosen signals are added to every item's text.")


def _parse_items(items: str | None) -> list[int] | None:
    if not items:
        return None
    try:
        return [int(i) for i in items.replace(" ", "").split(",") if i]
    except ValueError:
        raise ValueError(f"--items takes comma-separated item ids, e.g. 1,2,3; got {items!r}") from None


@signals_app.command("generate")
@user_errors
@checked(out=Writable(), limit=COUNT, max_new_tokens=COUNT, temperature=NON_NEGATIVE, seed=SEED,
         retries=NON_NEGATIVE_INT, max_chars=Range(8, integer=True), chunk_size=COUNT, batch_size=COUNT,
         threads=COUNT, concurrency=COUNT, tensor_parallel_size=COUNT, fields=Names(ITEM_FIELDS))
def signals_generate(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    out: Annotated[Path, typer.Option(help="Signal set folder: created, or resumed when it was made with the same settings.")],
    aspects: Annotated[str, typer.Option(help="Comma-separated LaMAR aspects: usage, intent, summary.")] = "usage,intent,summary",
    engine: Annotated[EngineName, typer.Option(help="hf (transformers, offline default), openai (--base-url), langchain (--model PROVIDER:MODEL), vllm.")] = EngineName.hf,
    model: Annotated[Optional[str], typer.Option(help="smollm2 (shipped, default for hf and vllm), a hub id or a local folder; openai: the served model; langchain: PROVIDER:MODEL.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N items of the catalogue (ids 1..N).")] = None,
    items: Annotated[Optional[str], typer.Option(help="Only these item ids, comma-separated.")] = None,
    fields: Annotated[str, typer.Option(help="Item metadata shown to the model, comma-separated (title, year, genres, brand, categories, price, description); absent fields are skipped.")] = "title,year,genres,brand,categories,description",
    prompts: Annotated[Optional[Path], typer.Option(help="Folder with your own aspect_usage/intent/summary.jinja (default: the shipped ones).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most generated tokens per signal.")] = 48,
    temperature: Annotated[float, typer.Option(help="First attempt's temperature (0: greedy).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    retries: Annotated[int, typer.Option(help="Extra attempts, sampled, for an output that is empty after cleaning.")] = 2,
    max_chars: Annotated[int, typer.Option(help="Cleaned signals are cut to this many characters at a word boundary.")] = 240,
    chunk_size: Annotated[int, typer.Option(help="Signals per engine call; each chunk is written durably before the next.")] = 64,
    batch_size: ChatBatchOption = 16,
    device: DeviceOption = "auto",
    threads: Annotated[int, typer.Option(help="Torch threads.")] = 1,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
    concurrency: ConcurrencyOption = 8,
    tensor_parallel_size: TensorParallelOption = 1,
    enforce_eager: EnforceEagerOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Generate LaMAR signals for every catalogue item (or --limit / --items), resuming what a set already has.

    Safe to kill at any moment: rerun the same command and it finishes the set with no item missing,
    none duplicated, and no generation repeated for items already written.

    Examples:

      agentrec signals generate --data data/ml-100k --out signals/ml-100k-smollm2

      agentrec signals generate --data data/beauty --aspects usage --engine openai --base-url http://127.0.0.1:8000/v1 --out signals/beauty-llama
    """
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from agentrec.data.dataset import PreparedDataset
    from agentrec.llm.engines import EngineConfig, get_engine
    from agentrec.llm.prompts import validate_aspects
    from agentrec.signals.signals import SignalConfig, generate_signals, parse_aspects

    if limit is not None and items:
        raise ValueError("give --limit or --items, not both")
    _torch_threads(threads)
    config = SignalConfig(aspects=parse_aspects(aspects), fields=tuple(f.strip() for f in fields.split(",") if f.strip()),
                          max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, retries=retries,
                          max_chars=max_chars, chunk_size=chunk_size, prompts=str(prompts) if prompts else None)
    dataset = PreparedDataset.load(data)
    item_ids = _parse_items(items) or (range(1, min(limit, dataset.n_items) + 1) if limit is not None else None)
    outside = [i for i in item_ids or () if not 1 <= i <= dataset.n_items]
    if outside:  # before any model loads
        raise OptionError("--items", f"has ids outside the catalogue (1..{dataset.n_items}): "
                                     f"{', '.join(map(str, outside[:5]))}", typed=True)
    engine_config = EngineConfig(model=model, device=device, batch_size=batch_size, threads=threads, base_url=base_url,
                                 api_key=api_key, concurrency=concurrency, tensor_parallel_size=tensor_parallel_size,
                                 enforce_eager=enforce_eager)
    validate_aspects(config.aspects, config.prompts)  # before the engine: vllm loads its model when made
    llm = get_engine(engine.value, engine_config)
    result = generate_signals(dataset, out, llm, config=config, item_ids=item_ids, progress=not quiet)
    typer.echo(result.describe())
    (Path(out) / "last_run.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    typer.echo(f"\nreport it with: agentrec signals report {out}")


@signals_app.command("report")
@user_errors
@checked(path=Writable(), dedup_out=Writable(), threads=COUNT,
         threshold=Range(0, 1, low_open=True, note="a cosine similarity"))
def signals_report(
    path: Annotated[Path, typer.Argument(help="Signal set folder.")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset folder (default: the one recorded in the set's manifest).")] = None,
    embedder: Annotated[str, typer.Option(help=_EMBEDDER_HELP)] = "minilm",
    threshold: Annotated[float, typer.Option(help="Cosine similarity from which two items' signals count as near duplicates.")] = 0.9,
    dedup: Annotated[bool, typer.Option("--dedup", help="Also write a copy of the set without near duplicates (in item id order, later ones are removed).")] = False,
    dedup_out: Annotated[Optional[Path], typer.Option(help="Folder of the de-duplicated copy (default: SET-dedup).")] = None,
    threads: Annotated[int, typer.Option(help="Torch threads for embedding.")] = 1,
):
    """Coverage, distinct-1/2, exact and near-duplicate rates, novelty against the item's metadata, and
    per-genre (category) repetitiveness; writes report.md and report.json into the set.

    Examples:

      agentrec signals report signals/ml-100k-smollm2

      agentrec signals report signals/ml-100k-smollm2 --dedup --threshold 0.92
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from agentrec.signals.signals import format_report, signal_report

    _torch_threads(threads)
    target = (dedup_out or path.with_name(path.name + "-dedup")) if dedup or dedup_out else None
    report = signal_report(path, dataset=data, embedder=embedder, threshold=threshold, dedup_out=target)
    typer.echo(format_report(report))
    typer.echo(f"\nwrote {path / 'report.md'} and {path / 'report.json'}")


def load_signal_option(spec: str | None, dataset) -> tuple[dict | None, dict | None]:
    """``--signals`` of ``index build`` and ``train``: ``(signals for item_texts, description)`` or ``(None, None)``."""
    if not spec:
        return None, None
    from agentrec.signals.signals import load_signals

    signals, info = load_signals(spec, dataset)
    typer.echo(f"signals: {', '.join(info['aspects'])} from {info['set']} "
               f"(coverage {', '.join(f'{a} {100 * c:.1f}%' for a, c in info['coverage'].items())})")
    return signals, info
