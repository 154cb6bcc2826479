"""``agentrec data prepare | stats``: datasets in agentrec's canonical format.

``prepare`` is :func:`agentrec.data.api.prepare_dataset`; ``stats`` is :func:`agentrec.data.dataset.read_stats`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from agentrec.cli.configfile import with_config
from agentrec.cli.options import (
    REQUIRED,
    ProtocolName,
    SourceName,
    checked,
    choices_help,
    set_verbosity,
)
from agentrec.core.errors import DamagedFileError
from agentrec.core.options import COUNT, SEED, Writable
from agentrec.data.protocols import PROTOCOLS
from agentrec.data.sources import SOURCES

app = typer.Typer(help="Prepare datasets in agentrec's canonical format and inspect them.", no_args_is_help=True)


@app.command("prepare")
@with_config(required=("out",))
@checked(out=Writable(), items=COUNT, sessions=COUNT, seed=SEED)
def prepare(
    name: Annotated[SourceName, typer.Argument(help="Source format or bundled dataset: " + choices_help(SOURCES) + ".")],
    out: Annotated[Optional[Path], typer.Option(help="Folder to write the prepared dataset to." + REQUIRED)] = None,
    source: Annotated[Optional[Path], typer.Option(help="Input file or folder (not needed for ml-100k, ml-latest-small, synthetic).")] = None,
    meta: Annotated[Optional[Path], typer.Option(help="Amazon metadata file (meta_<Category>...).")] = None,
    protocol: Annotated[Optional[ProtocolName], typer.Option(help="Split protocol: " + choices_help(PROTOCOLS) + ". Default: the dataset's usual one (MovieLens: leave-one-out, Amazon: semsr, M2 and synthetic: m2).")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Count and skip malformed lines instead of stopping at the first.")] = False,
    max_history: Annotated[Optional[int], typer.Option(help="Most recent items kept per history (default 50).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the semsr user split, or of the synthetic generator.")] = None,
    items: Annotated[Optional[int], typer.Option(help="synthetic: catalogue size.")] = None,
    sessions: Annotated[Optional[int], typer.Option(help="synthetic: number of sessions (default 2 x items).")] = None,
    mean_length: Annotated[Optional[float], typer.Option(help="synthetic: mean session length, at least 2 (default 5).")] = None,
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
    set_verbosity(verbose=verbose)
    from agentrec.data.api import prepare_dataset

    options = {
        "max_history": max_history, "seed": seed, "gap_s": gap_s, "min_item_count": min_item_count,
        "min_user_interactions": min_user_interactions, "valid_fraction": valid_fraction,
        "test_fraction": test_fraction, "test_sessions": test_sessions,
    }
    loader_options = {"meta": meta, "locale": locale, "items": items, "sessions": sessions, "seed": seed,
                      "mean_length": mean_length}
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


@app.command("stats")
@with_config()
def stats(
    path: Annotated[Path, typer.Argument(help="A prepared dataset folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json as it is.")] = False,
):
    """Print the counts, filtering steps, protocol and sources of a prepared dataset."""
    from agentrec.data.dataset import STATS_FILE, read_stats, rebuild_hint

    found = read_stats(path)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    try:
        text = format_stats(found)
    except (KeyError, TypeError, AttributeError) as error:
        raise DamagedFileError(f"{path / STATS_FILE}: a key is missing or malformed ({type(error).__name__}: "
                               f"{error}); {rebuild_hint(path)}") from None
    typer.echo(text)


def format_stats(stats: dict) -> str:
    """A prepared dataset's stats.json as the aligned text ``data stats`` prints."""
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
