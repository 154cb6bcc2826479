"""Name -> factory tables: the single source of truth for models, engines, strategies and sources.

A registry holds names, help text and the dotted path of each class or factory; the class is
imported only when one is built, so the CLI can list every choice without importing torch, vllm or
chromadb. Adding a model or an engine is one file plus one ``add`` line in its package's registry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from agentrec.core.errors import UsageError


@dataclass(frozen=True)
class Entry:
    """One registered name.

    Attributes:
        name: what users type (``--model niser``).
        target: ``"package.module:attribute"``, imported on :meth:`load`.
        help: one line for ``--help`` and error messages.
    """

    name: str
    target: str
    help: str = ""

    def load(self):
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


class Registry:
    """An ordered table of :class:`Entry`, one per name.

    Args:
        kind: what the entries are, for messages ("model", "engine").
        option: the CLI option that picks one (``--model``), for messages.
    """

    def __init__(self, kind: str, option: str):
        self.kind = kind
        self.option = option
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: str, help: str = "") -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        entry = Entry(name, target, help)
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        """The names, in registration order (as iterating a dict gives its keys)."""
        return iter(self._entries)

    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries.values())

    def entry(self, name: str) -> Entry:
        """The entry called ``name``; an unknown name is a :class:`UsageError` listing the known ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UsageError(f"{self.option} {name!r}: unknown {self.kind}; choose one of "
                             f"{', '.join(self._entries)}") from None

    def load(self, name: str):
        """Import and return the class or factory registered as ``name``."""
        return self.entry(name).load()

    def help_text(self) -> str:
        """``name: help`` for each entry, for ``--help``."""
        return "; ".join(f"{e.name}: {e.help}" if e.help else e.name for e in self._entries.values())
