"""Range checks of settings and options, run before any work, raised as a :class:`UsageError` that names them.

One rule serves the Python API, config files and the command line. A library config checks its own
fields with the field's name (``COUNT.check("epochs", 0)``) and raises :class:`OptionError`;
whoever knows how the user gave the value re-labels the error with :meth:`OptionError.as_typed`:
the CLI as ``--epochs``, a config file as ``cfg.json: train.epochs``, ``--set`` as ``--set dropout``.

This module is in the bottom layer: it imports nothing of agentrec but :mod:`agentrec.core.errors`.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from agentrec.core.errors import UsageError


class OptionError(UsageError):
    """A setting out of range. ``option`` is the field name until :meth:`as_typed` spells it as the user typed it.

    Attributes:
        option: the field name (``max_history``), or the spelling as typed once ``typed`` is True.
        reason: what is wrong, e.g. ``must be >= 1, got 0``.
        typed: whether ``option`` is already spelled as the user typed it.
    """

    def __init__(self, option: str, reason: str, *, typed: bool = False):
        super().__init__(f"{option} {reason}")
        self.option = option
        self.reason = reason
        self.typed = typed

    def as_typed(self, spelling: str) -> OptionError:
        """The same error, naming the setting as the user gave it (``--max-history``)."""
        return OptionError(spelling, self.reason, typed=True)


def flag(name: str) -> str:
    """The command-line spelling of a setting: ``max_history`` -> ``--max-history``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Range:
    """An interval a number must lie in; ``None`` (an unset optional setting) always passes.

    NaN and infinities are refused whatever the bounds: no setting means anything with them.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is excluded
    high_open: bool = False  # True: high itself is excluded
    integer: bool = False  # a whole number (a count, a size, a seed)
    note: str = ""  # why, when the bound is not obvious (appended to the message)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{low}, {high}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return "a number"

    def contains(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def check(self, name: str, value) -> None:
        """Raise :class:`OptionError` for ``name`` unless ``value`` is None or a number in the range."""
        if value is None:
            return
        note = f" ({self.note})" if self.note else ""
        kinds = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "a whole number" if self.integer else "a number"
            raise OptionError(name, f"must be {kind} {self}, got {value!r}{note}")
        if not math.isfinite(value) or not self.contains(value):
            raise OptionError(name, f"must be {self}, got {_number(value)}{note}")


def _number(value) -> str:
    """``4294967295`` whole, ``0.001`` short: how a bound or a value reads in a message."""
    if value is None:
        return ""
    if isinstance(value, numbers.Integral) or (math.isfinite(value) and float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


# The ranges most settings need; a config names the one that fits each field.
COUNT = Range(1, integer=True)  # sizes, counts, epochs, threads, batch sizes
NON_NEGATIVE_INT = Range(0, integer=True)  # retries, seeds, optional extras
POSITIVE = Range(0, low_open=True)  # learning rates, seconds, megabytes, scales
NON_NEGATIVE = Range(0)  # penalties, temperatures
UNIT = Range(0, 1)  # weights and shares that may be 0 or 1
DROPOUT = Range(0, 1, high_open=True)  # a dropout of 1 drops everything
SEED = Range(0, 2**32 - 1, integer=True)  # numpy's global seed takes 32 bits


def check_choice(name: str, value, choices) -> None:
    """Raise :class:`OptionError` unless ``value`` is one of ``choices`` (all listed in the message)."""
    if value not in choices:
        raise OptionError(name, f"must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclass(frozen=True)
class Names:
    """A comma-separated list of names, each one of ``choices`` (``--fields title,genres``)."""

    choices: tuple[str, ...]

    def check(self, name: str, value) -> None:
        if value is None:
            return
        given = [part.strip() for part in str(value).split(",") if part.strip()]
        unknown = [part for part in given if part not in self.choices]
        if unknown or not given:
            raise OptionError(name, f"takes comma-separated names from {', '.join(self.choices)}; "
                                    f"got {', '.join(map(repr, unknown)) if unknown else 'none'}")


@dataclass(frozen=True)
class Writable:
    """An output path that must be writable, as a rule beside the ranges (see :func:`check_writable`)."""

    folder: bool = True  # a folder to create, or a file whose parent is created

    def check(self, name: str, value) -> None:
        check_writable(name, value, folder=self.folder)


def check_writable(name: str, path: str | Path | None, *, folder: bool = True) -> None:
    """Refuse, before any work, an output path that cannot be written.

    The nearest existing ancestor must be a folder we may write into, and the path itself, when it
    exists, must be a folder (``folder=True``) or a file (``folder=False``). Run as root, permission
    bits are not enforced, but a file in the way still is.

    Args:
        name: the setting's field name (``out``), for the error.
        path: the output; None passes (an optional output that is not given).
        folder: whether the output is a folder (created) or a file (its parent is created).
    """
    if path is None:
        return
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise OptionError(name, f"{path} is a file, not a folder")
        if not folder and path.is_dir():
            raise OptionError(name, f"{path} is a folder; give a file name")
        target = path if folder else path.parent
        if not os.access(target, os.W_OK | os.X_OK):
            raise OptionError(name, f"{path}: no permission to write in {target}")
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OptionError(name, f"{path} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OptionError(name, f"{path} cannot be created: no permission to write in {ancestor}")
