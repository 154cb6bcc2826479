"""The errors a user can cause and fix, under one base class.

Everything raised as an :class:`AgentrecError` is something a person did or can change: a malformed
file, an unknown id, an option out of range, a dead server, a folder made for another dataset. The
message names the file and line, the option as typed, the key or the value. The CLI prints such an
error as one red line and exits 1; any other exception is a bug and keeps its full traceback.

Each class also derives from the built-in exception a caller would expect (``ValueError`` for bad
values, ``FileNotFoundError`` for a missing file, ``RuntimeError`` for a failed service), so code that
catches those keeps working.

This module is the bottom layer: it imports nothing of agentrec.
"""

from __future__ import annotations

from pathlib import Path


class AgentrecError(Exception):
    """Base of every error a user can cause and fix; the message says what and where."""


class UsageError(AgentrecError, ValueError):
    """An option or argument is out of range or inconsistent; the message names it as typed."""


class DataFormatError(AgentrecError, ValueError):
    """A source file is malformed. The message names the file and the line."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


class DamagedFileError(AgentrecError, ValueError):
    """A file agentrec wrote earlier is truncated, corrupted or incomplete; the message names it
    and says how to rebuild it."""


class NotFoundError(AgentrecError, FileNotFoundError):
    """A file, folder, collection or id the user named does not exist."""


class MismatchError(AgentrecError, ValueError):
    """Two things that must belong together do not (fingerprints, settings, versions)."""


class ServiceError(AgentrecError, RuntimeError):
    """A server or engine failed for good after retries; the message names it."""


class TrainingDivergedError(AgentrecError, RuntimeError):
    """Training produced a non-finite loss or non-finite weights (lower the learning rate)."""


class LockedError(AgentrecError, RuntimeError):
    """Another process holds the lock of a store this one would write (a signal set being generated)."""
