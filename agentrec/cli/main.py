"""The ``agentrec`` command: the root typer app, its command groups, logging, and the error handler.

Each command group is one module (:mod:`agentrec.cli.data`, ``train``, ``index``, ``predict``,
``compare``, ``signals``); each command is one library call, imported when the command runs, so
``agentrec --help`` imports no torch, chromadb, transformers or vllm.

Errors (documented in the root ``--help``):

* exit 0: done;
* exit 1: an error the user can fix (:class:`~agentrec.core.errors.AgentrecError`: a bad file, an
  unknown id, an option out of range, a dead server) is one red line ``error: ...`` on stderr;
  ``AGENTREC_DEBUG=1`` prints its traceback first. Anything else is a bug and keeps its full
  traceback (Python's exit status 1);
* exit 2: click's usage errors (an unknown option, a choice not offered, a missing option).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import typer
from typer.core import TyperGroup

from agentrec.cli import compare, data, index, predict, signals, train
from agentrec.cli.options import ARGV_KEY
from agentrec.core.errors import AgentrecError
from agentrec.core.options import OptionError, flag

EPILOG = ("Exit codes: 0 done; 1 an error you can fix, printed as one red line 'error: ...' (AGENTREC_DEBUG=1 adds "
          "its traceback), or a bug, printed with its full traceback; 2 a usage error (an unknown option, a choice "
          "that is not offered, a missing option). Every command takes --config FILE (TOML or JSON) with its "
          "options; flags win over the file.")


def describe(error: AgentrecError) -> str:
    """The one line a user error prints: an option refused by its field name (``max_history``) is named
    as typed (``--max-history``)."""
    if isinstance(error, OptionError) and not error.typed:
        error = error.as_typed(flag(error.option))
    return f"error: {error}"


def debug() -> bool:
    return os.environ.get("AGENTREC_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


class AgentrecGroup(TyperGroup):
    """The root group: runs a command and turns a user error into one red line and exit code 1.

    In a rank of a data-parallel job (``agentrec train --nproc N``) other than rank 0, a user error that every rank
    meets alike is left to rank 0 to print (:func:`agentrec.training.distributed.rank_error_line`).
    """

    def parse_args(self, ctx, args):
        ctx.meta[ARGV_KEY] = list(args)  # as typed: agentrec train --nproc N starts its ranks with them
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except AgentrecError as error:
            if debug():
                traceback.print_exception(error)
            line = describe(error)
            if os.environ.get("RANK", "0") != "0":  # a rank of a torchrun job (no torch import otherwise)
                from agentrec.training.distributed import rank_error_line

                line = rank_error_line(error, line)
            if line is not None:
                typer.secho(line, err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=AgentrecGroup,
    help="LLMs as session-based recommendation agents, with retrieval.\n\n"
    "Quick start: 'agentrec compare --out runs/compare' puts the LLM, the hybrid, the session models and the "
    "popularity floor side by side on MovieLens-100K, offline; 'agentrec predict --strategy fscot' runs one LLM "
    "strategy on a sample of it. Step by step: 'agentrec data prepare ml-100k --out data/ml-100k', "
    "'agentrec train --model niser --data data/ml-100k --out runs/niser', 'agentrec evaluate runs/niser', "
    "'agentrec predict --strategy fscot --data data/ml-100k --out runs/fscot.jsonl'.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def setup_logging() -> None:
    """Log agentrec's progress to stderr (commands set the level: --quiet, --verbose); other libraries log
    warnings only."""
    handler = _AboveBars()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("agentrec").setLevel(logging.INFO)


class _AboveBars(logging.StreamHandler):
    """A stderr handler that writes through tqdm, so a log line lands above the progress bars drawn at that
    moment instead of inside one (tqdm is imported on the first line logged, keeping ``--help`` light)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- logging must never raise; the standard handler reports it
            self.handleError(record)


# groups by name (agentrec data ...); a module added without a name gives top-level commands (agentrec train)
app.add_typer(data.app, name="data")
app.add_typer(train.app)  # train, evaluate
app.add_typer(index.app, name="index")
app.add_typer(predict.app)  # predict
app.add_typer(compare.app)  # compare
app.add_typer(signals.app, name="signals")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
