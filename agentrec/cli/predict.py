"""``agentrec predict``: an LLM as the recommender, alone or fused with a trained model (``--hybrid``).

``predict`` is :func:`agentrec.pipelines.predict.predict`; with ``--hybrid RUN`` it is
:func:`agentrec.pipelines.hybrid.predict_hybrid`. ``merge-predictions`` (of ``predict --shard I/N`` files) is
:func:`agentrec.pipelines.predict.merge_predictions`.

Typed with nothing but ``--strategy``, it runs on the offline default: MovieLens-100K in
``data/ml-100k`` (prepared when missing, as ``compare`` does), the first :data:`DEFAULT_LIMIT` test
sessions, written to ``runs/predict/STRATEGY-DATASET.jsonl``; it prints those three choices first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agentrec.cli.configfile import with_config
from agentrec.cli.options import (
    DEVICE_HELP,
    FIELDS_HELP,
    REQUIRED,
    STORE_HELP,
    ChromaHostOption,
    EmbedderOption,
    FusionName,
    QuietOption,
    Split,
    StrategyName,
    ThreadsOption,
    checked,
    choices_help,
    engine_options,
    set_verbosity,
    split_names,
    torch_threads,
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
from agentrec.core.errors import UsageError
from agentrec.core.options import (
    COUNT,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    SEED,
    UNIT,
    Names,
    Range,
    Writable,
    check_writable,
)
from agentrec.core.shards import parse_shard
from agentrec.core.templates import ITEM_FIELDS
from agentrec.llm import EngineConfig
from agentrec.llm.prompts import STRATEGIES, PromptConfig, validate_strategy

app = typer.Typer()

# Sessions predicted when --limit is not given: SmolLM2 (hf, one CPU thread) writes an FSCoT session in about
# 3 s on a shared 2-core machine, so the default run (index build and model load included) takes about 3 minutes.
DEFAULT_LIMIT = 50
DEFAULT_OUT = Path("runs/predict")


@app.command("predict")
@with_config(required=("strategy",))
@engine_options()
@checked(cache_file=Writable(folder=False), k=COUNT, limit=COUNT, examples=NON_NEGATIVE_INT, seed=SEED,
         max_history=COUNT, title_tokens=COUNT, rationale_tokens=COUNT, temperature=NON_NEGATIVE, chunk_size=COUNT,
         threads=COUNT, ground_distance=Range(0, 2, note="a cosine distance"), candidates=COUNT, weight=UNIT,
         rrf_c=NON_NEGATIVE, valid_sessions=COUNT,
         fields=Names(ITEM_FIELDS), **RAY_RULES)
def predict(
    strategy: Annotated[Optional[StrategyName], typer.Option(help="Prompting strategy (SemSR 3.2): " + choices_help(STRATEGIES) + "." + REQUIRED)] = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder (default: data/ml-100k, MovieLens-100K prepared with leave-one-out if missing).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="JSON-lines file to write, one line per session, with a .summary.json and a histogram of the grounding distances (.distances.png) beside it (default: runs/predict/STRATEGY-DATASET.jsonl).")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Grounded list length: the K catalogue items nearest to the generated title.")] = 20,
    limit: Annotated[Optional[int], typer.Option(help=f"Only the first N sessions of the split (default {DEFAULT_LIMIT}: minutes on a CPU; --all for every session).")] = None,
    all_sessions: Annotated[bool, typer.Option("--all", help="Predict every session of the split (instead of the default --limit).")] = False,
    shard: Annotated[Optional[str], typer.Option(help="I/N: only the selected sessions whose index i has i % N == I (0 <= I < N), for running one job on N machines; combine the N files with 'agentrec merge-predictions'.")] = None,
    split: Annotated[Split, typer.Option(help="Split whose sessions are predicted (few-shot examples always come from train).")] = Split.test,
    prompts: Annotated[Optional[Path], typer.Option(help="Folder with your own templates (fs.jinja, zcot_rationale.jinja, zcot_title.jinja, fscot.jinja); default: the shipped ones.")] = None,
    examples: Annotated[int, typer.Option(help="Few-shot examples per prompt (fs, fscot), drawn from train.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the example draw and of sampling.")] = 0,
    vary_examples: Annotated[bool, typer.Option("--vary-examples", help="Draw examples per session instead of once for the run (loses the shared prompt prefix).")] = False,
    fields: Annotated[str, typer.Option(help=FIELDS_HELP)] = "title",
    max_history: Annotated[int, typer.Option(help="Most recent session items shown.")] = 10,
    title_tokens: Annotated[int, typer.Option(help="Most new tokens of a title step.")] = 32,
    rationale_tokens: Annotated[int, typer.Option(help="Most new tokens of a rationale step (zcot, fscot).")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")] = 0.0,
    chunk_size: Annotated[int, typer.Option(help="Sessions per engine call; each chunk is cached before the next.")] = 256,
    threads: ThreadsOption = 1,
    device: Annotated[str, typer.Option(help=DEVICE_HELP + " Here: the catalogue index's embedder and, with --hybrid, the run's model (the hf LLM's device is --llm-device).")] = "auto",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the generation cache (nothing read, nothing written).")] = False,
    cache_file: Annotated[Optional[Path], typer.Option(help="Generation cache file (default ~/.cache/agentrec/generations.sqlite).")] = None,
    embedder: EmbedderOption = "minilm",
    store: Annotated[Path, typer.Option(help=STORE_HELP + " The index is built there on first use.")] = Path("vectorstore"),
    chroma_host: ChromaHostOption = None,
    ground_distance: Annotated[float, typer.Option(help="Cosine distance above which a generated title counts as ungrounded (hallucinated).")] = 0.4,
    hybrid: Annotated[Optional[Path], typer.Option(help="Hybrid mode: a run folder (e.g. a SemSR-F run from 'agentrec train --semantic fusion') whose model is fused with the LLM's grounded list; trained on this dataset. The fusion's weight and M are chosen on validation sessions unless both are given.", rich_help_panel="Hybrid")] = None,
    valid_sessions: Annotated[int, typer.Option(help="Hybrid: the LLM also writes titles for the first N validation sessions, where w and M are chosen (validation Recall@20, ties by MRR@20, then the smaller w); about 1.3 s per FS session with SmolLM2 on one thread.", rich_help_panel="Hybrid")] = 100,
    candidates: Annotated[Optional[int], typer.Option(help="Hybrid: M, fixed: the LLM's grounded top-M (and the model's top-M) are the candidates (default: chosen on validation from 5, 20, 50, 100).", rich_help_panel="Hybrid")] = None,
    weight: Annotated[Optional[float], typer.Option(help="Hybrid: w, fixed: the LLM's share of the fusion; 0 is the model's ranking exactly, 1 lists the LLM's top-M first (default: chosen on validation from 0, 0.1, ..., 1).", rich_help_panel="Hybrid")] = None,
    fusion: Annotated[FusionName, typer.Option(help="Hybrid: the fusion rule; rrf: (1 - w) / (c + model rank) + w / (c + LLM position).", rich_help_panel="Hybrid")] = FusionName.rrf,
    rrf_c: Annotated[float, typer.Option(help="Hybrid: the constant c of the reciprocal-rank fusion.", rich_help_panel="Hybrid")] = 60.0,
    fill: Annotated[bool, typer.Option("--fill/--no-fill", help="Hybrid: list the whole catalogue (items in neither top-M list keep the model's order), or the candidates alone.", rich_help_panel="Hybrid")] = True,
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
    """Recommend with an LLM: prompt each session, generate a title, ground it in the catalogue, report Recall/MRR@K.

    Defaults run offline: the hf engine with SmolLM2-135M-Instruct and the MiniLM catalogue index, on the
    first 50 test sessions of MovieLens-100K (prepared in data/ml-100k when missing).

    Examples:

      agentrec predict --strategy fscot

      agentrec predict --strategy fs --data data/ml-100k --limit 100 --out runs/llm/fs.jsonl

      agentrec predict --strategy zcot --data data/ml-100k --engine openai --base-url http://127.0.0.1:8000/v1 --all

      agentrec predict --strategy fscot --data data/beauty --engine vllm --model meta-llama/Meta-Llama-3-8B-Instruct --all

      agentrec predict --strategy fs --data data/ml-100k --hybrid runs/semsr-f --out runs/llm/hybrid.jsonl

      agentrec predict --strategy fs --data data/ml-100k --hybrid runs/semsr-f --weight 0.3 --candidates 20

      agentrec predict --strategy fs --data data/ml-100k --limit 200 --chunk-size 25 --ray --actors 2
    """
    set_verbosity(quiet=quiet)
    if all_sessions and limit is not None:
        raise UsageError("give --limit N or --all, not both")
    shard_parts = parse_shard(shard)
    if shard_parts is not None and hybrid is not None:
        raise UsageError("--shard is not offered with --hybrid; shard the LLM alone and merge with "
                         "'agentrec merge-predictions'")
    ray_settings = ray_config(ray=ray, ray_address=ray_address, actors=actors, cpus_per_actor=cpus_per_actor,
                              gpus_per_actor=gpus_per_actor, actor_timeout_s=actor_timeout_s,
                              actor_retries=actor_retries, engine=engine, engine_config=engine_config)
    if ray_settings is not None:
        if hybrid is not None:
            raise UsageError("--ray is not offered with --hybrid; run the LLM alone with --ray (its generations are "
                             "cached), then the same --hybrid command without --ray reads them from the cache")
        from agentrec.llm.raypool import import_ray

        import_ray()  # not installed: the install command, before any work
    given_data = data is not None
    data = data if given_data else default_data_folder()
    given_out = out is not None
    out = out if given_out else default_out(strategy.value, data, hybrid)
    check_writable("out", out, folder=False)  # before any work: the defaults are checked like given values
    if chroma_host is None:
        check_writable("store", store)
    from agentrec.retrieval.embedders import get_embedder

    embedder = get_embedder(embedder, device=device)  # a bad name, device or missing GPU: one line, before any work
    if all_sessions:
        limit_text = f"every {split.value} session (--all)"
    elif limit is None:
        limit = DEFAULT_LIMIT
        limit_text = f"the first {limit} {split.value} sessions (the default; --limit N or --all for more)"
    else:
        limit_text = f"the first {limit} {split.value} sessions"
    if shard_parts is not None:
        limit_text += f", shard {shard_parts[0]}/{shard_parts[1]} (index i with i % {shard_parts[1]} == {shard_parts[0]})"
    prompt_config = PromptConfig(examples=examples, seed=seed, vary_examples=vary_examples,
                                 fields=split_names(fields), max_history=max_history,
                                 prompts=str(prompts) if prompts else None)
    validate_strategy(strategy.value, prompt_config)  # a broken template of --prompts fails now, before any work

    data_text = str(data)
    if not given_data:
        prepared = prepare_default_data(data)
        data_text += f" (the offline default: MovieLens-100K, leave-one-out{'; prepared now' if prepared else ''})"
    typer.echo(f"data:  {data_text}")
    typer.echo(f"out:   {out}" + ("" if given_out else " (the default)"))
    if hybrid is not None and (weight is None or candidates is None):
        typer.echo(f"limit: {limit_text}")
        typer.echo(f"valid: the first {valid_sessions} validation sessions, where the hybrid's "
                   f"{' and '.join(n for n, v in (('w', weight), ('M', candidates)) if v is None)} are chosen "
                   "(--weight and --candidates fix them)\n")
    else:
        typer.echo(f"limit: {limit_text}\n")

    from agentrec.pipelines.predict import GenerationConfig
    from agentrec.pipelines.predict import predict as predict_llm

    torch_threads(threads)
    generation = GenerationConfig(title_tokens=title_tokens, rationale_tokens=rationale_tokens, temperature=temperature,
                                  seed=seed, chunk_size=chunk_size)
    common = dict(k=k, limit=limit, out=out, split=split.value, engine_config=engine_config, prompts=prompt_config,
                  generation=generation, embedder=embedder, store=store, chroma_host=chroma_host,
                  cache=False if no_cache else (cache_file or True), ground_distance=ground_distance,
                  progress=not quiet)
    if hybrid is not None:
        from agentrec.pipelines.hybrid import FusionGrid, predict_hybrid

        default = FusionGrid()  # what is not given is chosen on validation; both given: no validation sessions
        grid = FusionGrid(weights=default.weights if weight is None else (weight,),
                          candidates=default.candidates if candidates is None else (candidates,), c=(rrf_c,),
                          fusions=(fusion.value,), fill=fill)
        result = predict_hybrid(data, hybrid, strategy.value, engine, grid=grid, valid_sessions=valid_sessions,
                                device=device, **common)
    elif ray_settings is not None:
        from agentrec.llm.raypool import RayPool

        with RayPool(engine, engine_config, ray_settings) as pool:
            result = predict_llm(data, strategy.value, engine, shard=shard_parts, ray=pool, **common)
    else:
        result = predict_llm(data, strategy.value, engine, shard=shard_parts, **common)
    typer.echo(result.describe())
    llm_alone = out.with_suffix(".llm.jsonl")
    also = f", {llm_alone} (the LLM alone)" if hybrid is not None and llm_alone.exists() else ""
    typer.echo(f"\nwrote {out}{also} and {out.with_suffix('.summary.json')}")
    histogram = (llm_alone if hybrid is not None else out).with_suffix(".distances.png")
    if histogram.exists():
        typer.echo(f"grounding distances: {histogram}")


@app.command("merge-predictions")
@with_config()
def merge_predictions(
    out: Annotated[Path, typer.Argument(help="The merged JSON-lines file to write (its .summary.json beside it).")],
    parts: Annotated[list[Path], typer.Argument(help="The shard files of 'agentrec predict --shard I/N', each with its .summary.json.")],
    partial: Annotated[bool, typer.Option("--partial", help="Merge although some selected sessions are in no file (they are reported).")] = False,
    quiet: QuietOption = False,
):
    """Merge the outputs of 'agentrec predict --shard I/N' into one file, as one unsharded run.

    Checks that the files come from one run (strategy, engine, dataset fingerprint, split, K, the sessions
    selected, prompt and sampling settings), that no session is in two files and that every selected session
    is in one; writes the sessions in split order and recomputes Recall/MRR/NDCG from the merged ranks.

    Example:

      agentrec merge-predictions runs/fs.jsonl runs/fs-0.jsonl runs/fs-1.jsonl
    """
    set_verbosity(quiet=quiet)
    check_writable("out", out, folder=False)
    from agentrec.core.metrics import format_metrics
    from agentrec.pipelines.predict import merge_predictions as merge

    summary = merge(out, parts, allow_partial=partial)
    coverage = summary["coverage"]
    k = summary["k"]
    typer.echo(f"{summary['strategy']} with {summary['engine']} on {summary['dataset']} ({summary['split']}): "
               f"{coverage['sessions']:,} of {coverage['selected']:,} selected sessions from {len(parts)} files"
               + (f"; missing samples {coverage['missing'][:10]}" if coverage["missing"] else ""))
    typer.echo(format_metrics(summary["metrics"], ks=tuple(sorted({min(10, k), k}))))
    typer.echo(f"\nwrote {out} and {out.with_suffix('.summary.json')}")


def default_data_folder() -> Path:
    """Where the offline default dataset lives (``compare``'s :data:`~agentrec.pipelines.compare.DEFAULT_DATA`)."""
    from agentrec.pipelines.compare import DEFAULT_DATA

    return Path(DEFAULT_DATA)


def prepare_default_data(folder: Path) -> bool:
    """Prepare MovieLens-100K (leave-one-out) in ``folder`` unless it is there; True when it was prepared now."""
    from agentrec.data.api import prepare_dataset
    from agentrec.data.dataset import STATS_FILE

    if (folder / STATS_FILE).exists():
        return False
    typer.echo(f"preparing MovieLens-100K (leave-one-out) in {folder} ...")
    prepare_dataset("ml-100k", out=folder, protocol="leave-one-out")
    return True


def default_out(strategy: str, data: Path, hybrid: Path | None) -> Path:
    """``runs/predict/STRATEGY-DATASET.jsonl`` (``...-hybrid-RUN.jsonl`` with ``--hybrid``)."""
    name = f"{strategy}-{Path(data).resolve().name}" + (f"-hybrid-{Path(hybrid).resolve().name}" if hybrid else "")
    return DEFAULT_OUT / f"{name}.jsonl"
