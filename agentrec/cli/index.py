"""``agentrec index build | query``: the catalogue in Chroma.

``build`` is :meth:`agentrec.retrieval.index.CatalogueIndex.build`; ``query`` is
:meth:`agentrec.retrieval.index.CatalogueIndex.open` then ``match`` (or ``exact_match``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from agentrec.cli.configfile import with_config
from agentrec.cli.options import (
    EMBEDDER_HELP,
    REQUIRED,
    SIGNALS_HELP,
    ChromaHostOption,
    DeviceOption,
    EmbedderOption,
    QuietOption,
    StoreOption,
    checked,
    set_verbosity,
    torch_threads,
)
from agentrec.core.options import COUNT, check_writable

app = typer.Typer(
    help="Embed a dataset's catalogue into a Chroma collection and search it by cosine distance.\n\n"
    "Typical flow: 'agentrec index build --data data/ml-100k', then "
    "'agentrec index query \"toy story\" --data data/ml-100k'.",
    no_args_is_help=True,
)


@app.command("build")
@with_config(required=("data",))
@checked(ef_construction=COUNT, ef_search=COUNT, max_neighbors=COUNT, threads=COUNT)
def build(
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder." + REQUIRED)] = None,
    embedder: EmbedderOption = "minilm",
    store: StoreOption = Path("vectorstore"),
    chroma_host: ChromaHostOption = None,
    collection: Annotated[Optional[str], typer.Option(help="Collection name (default: DATASET-FINGERPRINT-EMBEDDER).")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Replace a collection that was built from another embedder, dataset, item text or HNSW settings.")] = False,
    ef_construction: Annotated[int, typer.Option(help="HNSW candidate list size while inserting.")] = 200,
    ef_search: Annotated[int, typer.Option(help="HNSW candidate list size while searching (fixed at creation).")] = 400,
    max_neighbors: Annotated[int, typer.Option(help="HNSW graph edges per node (M).")] = 16,
    threads: Annotated[int, typer.Option(help="Torch threads for embedding (default 1: often fastest on a small shared machine).")] = 1,
    signals: Annotated[Optional[str], typer.Option(help=SIGNALS_HELP + " The default collection name gets a sig-... suffix.")] = None,
    device: DeviceOption = "auto",
    quiet: QuietOption = False,
):
    """Embed every item's text and store it in a Chroma collection; a complete matching collection is reused.

    Item vectors are cached in the dataset folder: building again (other store, settings, after a crash) embeds nothing.

    Examples:

      agentrec index build --data data/ml-100k

      agentrec index build --data data/ml-100k --embedder smollm2 --store vectorstore

      agentrec index build --data data/syn --chroma-host 127.0.0.1:8000 --ef-search 200 --rebuild
    """
    set_verbosity(quiet=quiet)
    from agentrec.data.dataset import PreparedDataset
    from agentrec.retrieval.embedders import get_embedder
    from agentrec.retrieval.index import CatalogueIndex, HNSWSettings

    if chroma_host is None:
        check_writable("store", store)
    # where the item texts are embedded; the device is not in the embedder's fingerprint, so the vectors cached
    # in the dataset folder and the collection are the same whichever device made them
    embedder_object = get_embedder(embedder, device=device)  # a bad name or a missing GPU fails before any work
    torch_threads(threads)
    started = time.perf_counter()
    dataset = PreparedDataset.load(data)
    hnsw = HNSWSettings(ef_construction=ef_construction, ef_search=ef_search, max_neighbors=max_neighbors)
    signal_texts = None
    if signals:
        from agentrec.retrieval.index import default_collection_name, sanitise_collection_name
        from agentrec.signals.store import load_signals, signals_tag

        signal_texts, signal_info = load_signals(signals, dataset)
        typer.echo(f"signals: {', '.join(signal_info['aspects'])} from {signal_info['set']} (coverage "
                   f"{', '.join(f'{a} {100 * c:.1f}%' for a, c in signal_info['coverage'].items())})")
        collection = collection or sanitise_collection_name(
            f"{default_collection_name(dataset, embedder_object)}-{signals_tag(signal_info)}")
    index = CatalogueIndex.build(dataset, embedder_object, store=store, chroma_host=chroma_host, collection=collection,
                                 signals=signal_texts, hnsw=hnsw, rebuild=rebuild, progress=not quiet)
    seconds = time.perf_counter() - started
    typer.echo(f"collection  {index.name}  ({'reused' if index.reused else 'built'}, {index.location})")
    typer.echo(f"items       {index.count:,}   dimension {index.dimension}   {seconds:.1f} s")
    where = f"--chroma-host {chroma_host}" if chroma_host else f"--store {store}"
    where += f" --collection {index.name}" if signals else ""
    typer.echo(f"\nsearch it with: agentrec index query \"TEXT\" --data {data} {where} --embedder {embedder}")


@app.command("query")
@with_config()
@checked(k=COUNT, threads=COUNT)
def query(
    texts: Annotated[list[str], typer.Argument(help="One or more texts, e.g. titles an LLM wrote; all are embedded and searched in one batch.")],
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder: picks its default collection and checks the collection was built from it.")] = None,
    store: StoreOption = Path("vectorstore"),
    chroma_host: ChromaHostOption = None,
    collection: Annotated[Optional[str], typer.Option(help="Collection name (default: the dataset's, or the store's only one for this embedder).")] = None,
    embedder: Annotated[str, typer.Option(help=EMBEDDER_HELP + " Must be the one the collection was built with.")] = "minilm",
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
    from agentrec.data.dataset import PreparedDataset
    from agentrec.retrieval.index import CatalogueIndex

    torch_threads(threads)
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
