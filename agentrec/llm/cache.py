"""A generation cache on disk, so a rerun or a resumed run makes no repeated engine calls.

One SQLite file (default ``$AGENTREC_CACHE/generations.sqlite``, i.e. ``~/.cache/agentrec``) maps a
key to a :class:`~agentrec.llm.base.Generation`. The key is the sha256 of::

    {"model": engine fingerprint, "template": template digest, "chat": rendered messages,
     "params": sampling parameters}

so changing the model, a template's source, the rendered prompt or any sampling setting misses, and
nothing else does. SQLite rather than a JSON-lines file: lookups by key without reading the whole
file, and atomic writes that several processes can share (WAL journal). Failed generations are
never stored; results of a batch that partly failed are (see :func:`cached_generate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from agentrec.core.assets import cache_dir
from agentrec.core.errors import ServiceError
from agentrec.llm.base import Engine, EngineError, Generation, SamplingParams, generate_reporting

logger = logging.getLogger(__name__)

CACHE_FILE = "generations.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    tokens_in INTEGER,
    tokens_out INTEGER,
    finish_reason TEXT,
    created REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def generation_key(model: str, template_digest: str, chat: list[dict], params: SamplingParams) -> str:
    """sha256 over everything that decides a generation (see the module docstring)."""
    payload = {"model": model, "template": template_digest, "chat": chat, "params": params.to_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class GenerationCache:
    """Generations by key in one SQLite file."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get_many(self, keys: list[str]) -> dict[str, Generation]:
        """The cached generations among ``keys`` (missing keys are absent from the result)."""
        found: dict[str, Generation] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
            chunk = unique[start : start + 500]
            rows = self._db.execute(
                f"SELECT key, text, tokens_in, tokens_out, finish_reason FROM generations "
                f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for key, text, tokens_in, tokens_out, finish_reason in rows:
                found[key] = Generation(text=text, tokens_in=tokens_in, tokens_out=tokens_out,
                                        finish_reason=finish_reason)
        return found

    def put_many(self, model: str, items: list[tuple[str, Generation]]) -> None:
        now = time.time()
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(key, model, g.text, g.tokens_in, g.tokens_out, g.finish_reason, now) for key, g in items])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        self._db.close()


@dataclass
class CachedBatch:
    """Generations of one batch and where they came from."""

    generations: list[Generation]
    cached: list[bool]  # True where the generation came from the cache
    engine_seconds: float  # wall-clock time of the engine call (0 when everything was cached)

    @property
    def hits(self) -> int:
        return sum(self.cached)


@dataclass
class CacheLookup:
    """One batch looked up in the cache: what it has, and the chats the engine must still generate.

    :func:`lookup` makes it, :meth:`complete` stores the engine's generations and gives the
    :class:`CachedBatch`; :func:`cached_generate` is the two with the engine call between them, and a Ray driver
    (:mod:`agentrec.pipelines.predict`) sends :attr:`missing_chats` to an actor instead.
    """

    model: str  # the engine fingerprint the keys were made with
    keys: list[str]  # one per chat of the batch
    found: dict[str, Generation]  # cached generations by key
    first: dict[str, int]  # missing key -> the first chat of the batch that has it
    chats: list[list[dict]]

    @property
    def missing(self) -> list[str]:
        return list(self.first)

    @property
    def missing_chats(self) -> list[list[dict]]:
        """The chats to generate: one per missing key (a chat repeated in the batch is generated once)."""
        return [self.chats[i] for i in self.first.values()]

    def keep(self, cache: GenerationCache | None, generations: list[Generation | None]) -> None:
        """Store the generations made for :attr:`missing_chats` (None: failed, not stored)."""
        kept = [(key, g) for key, g in zip(self.missing, generations) if g is not None]
        if cache is not None and kept:
            cache.put_many(self.model, kept)

    def complete(self, cache: GenerationCache | None, generations: list[Generation], *,
                 engine_seconds: float = 0.0) -> CachedBatch:
        """The batch, once ``generations`` (one per :attr:`missing_chats`) are made; they are stored in ``cache``."""
        if len(generations) != len(self.first):
            raise ServiceError(f"the engine returned {len(generations)} generations for {len(self.first)} chats")
        new = dict(zip(self.missing, generations))
        if cache is not None and new:
            cache.put_many(self.model, list(new.items()))
        found = {**self.found, **new}
        cached = [self.first.get(key) != i for i, key in enumerate(self.keys)]  # a repeat is not generated again
        return CachedBatch(generations=[found[key] for key in self.keys], cached=cached, engine_seconds=engine_seconds)


def lookup(model: str, chats: list[list[dict]], params: SamplingParams, *, template_digest: str,
           cache: GenerationCache | None) -> CacheLookup:
    """Look ``chats`` up in ``cache`` (None: nothing is cached) for the engine of fingerprint ``model``."""
    keys = [generation_key(model, template_digest, chat, params) for chat in chats]
    found = cache.get_many(keys) if cache is not None else {}
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in found:
            first.setdefault(key, i)
    return CacheLookup(model=model, keys=keys, found=found, first=first, chats=chats)


def cached_generate(engine: Engine, chats: list[list[dict]], params: SamplingParams, *, template_digest: str,
                    cache: GenerationCache | None, progress=None) -> CachedBatch:
    """Generate for ``chats``, calling ``engine`` once for the chats the cache lacks.

    With ``cache=None`` every chat goes to the engine. Repeated chats in one batch are generated once.
    When the engine fails part-way (:class:`~agentrec.llm.base.EngineError`), the generations it did
    return are stored before the error is raised again, so a rerun resumes where it stopped. ``progress``
    (an :class:`agentrec.core.progress.LLMProgress`) counts the chats: the cached ones at once, the others per
    engine batch (:func:`~agentrec.llm.base.generate_reporting`).
    """
    found = lookup(engine.fingerprint, chats, params, template_digest=template_digest, cache=cache)
    missing = found.missing_chats
    if progress is not None and len(chats) > len(missing):
        progress.update(len(chats) - len(missing))
    seconds = 0.0
    made: list[Generation] = []
    if missing:
        started = time.perf_counter()
        try:
            made = generate_reporting(engine, missing, params, progress) if progress is not None else \
                engine.generate(missing, params)
        except EngineError as error:
            found.keep(cache, list(error.partial))
            if cache is not None and any(g is not None for g in error.partial):
                logger.warning("kept %d generations in %s before the error",
                               sum(g is not None for g in error.partial), cache.path)
            raise
        seconds = time.perf_counter() - started
        if len(made) != len(missing):
            raise ServiceError(f"engine {engine.name} returned {len(made)} generations for {len(missing)} chats")
    return found.complete(cache, made, engine_seconds=seconds)
