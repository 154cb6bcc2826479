"""The catalogue index: a dataset's items in a Chroma collection, searched by cosine distance.

SemSR grounds the titles an LLM generates in the real catalogue by nearest neighbours over text
embeddings; this module is that step. One :class:`CatalogueIndex` wraps one Chroma collection:

* **Store** -- an on-disk ``chromadb.PersistentClient`` folder (default ``vectorstore/``), or a
  Chroma server (``chroma run --path DIR --host 127.0.0.1 --port 8000``) for the scale-out path,
  reached with ``chroma_host="HOST:PORT"``.
* **Embeddings are injected** -- the collection is created with ``embedding_function=None`` and every
  add and query passes vectors from our :class:`~agentrec.retrieval.embedders.Embedder` (Chroma's default
  embedding function downloads a model and fails offline).
* **The collection records what it was built from** (embedder fingerprint and dimension, dataset
  fingerprint, item count, text digests, HNSW settings, agentrec version), so opening it with another
  embedder raises :class:`IndexMismatchError` instead of returning meaningless neighbours.
* **Batched** -- :meth:`CatalogueIndex.match` embeds all texts in one call and sends one query.

Typical use::

    from agentrec.data.dataset import PreparedDataset
    from agentrec.retrieval.embedders import get_embedder
    from agentrec.retrieval.index import CatalogueIndex

    dataset = PreparedDataset.load("data/ml-100k")
    index = CatalogueIndex.build(dataset, get_embedder("minilm"))      # reused if already built
    matches = index.match(["toy story", "the godfather part 2"], k=10)
    matches.item_ids[0, 0], matches.distances[0, 0]                     # nearest item, its distance

Distances are cosine distances, ``1 - cosine similarity``: 0 for the same direction, 2 at most.
chromadb and langchain are imported inside the functions that use them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agentrec.core import __version__
from agentrec.core.errors import DamagedFileError, MismatchError, NotFoundError, ServiceError, UsageError
from agentrec.core.templates import item_texts, load_template, template_source, texts_digest
from agentrec.retrieval.embedders import get_embedder, item_embeddings

logger = logging.getLogger(__name__)

DEFAULT_STORE = "vectorstore"
FALLBACK_MAX_BATCH = 5000  # when the client cannot tell its own limit
STATE_BUILDING, STATE_COMPLETE = "building", "complete"
STORE_FILE = "chroma.sqlite3"  # the SQLite file of an on-disk Chroma store
# the small tables Chroma reads when a client starts; a damaged one makes chromadb panic
_STARTUP_TABLES = ("migrations", "tenants", "databases", "collections", "collection_metadata", "segments",
                   "segment_metadata", "max_seq_id")


class IndexMismatchError(MismatchError):
    """The collection was built from another embedder, dataset, item text or HNSW setting."""


class IndexNotFoundError(NotFoundError):
    """The store or the collection asked for does not exist."""


@dataclass(frozen=True)
class HNSWSettings:
    """HNSW graph settings of a collection; Chroma fixes them when the collection is created.

    Names are chromadb 1.x's ``configuration={"hnsw": {...}}`` keys (the legacy metadata keys in
    brackets). Higher ``ef_search`` and ``max_neighbors`` raise recall and cost time and memory.
    """

    space: str = "cosine"  # (hnsw:space) distance = 1 - cosine similarity; the only one supported
    ef_construction: int = 200  # (hnsw:construction_ef) candidate list size while inserting
    # (hnsw:search_ef) candidate list size while searching (max(ef_search, k) is used). 400, not
    # Chroma's 100: at 100, recall@100 against exact search fell to 0.92 on MovieLens item texts
    # (benchmarks/results/index_recall.md); 400 keeps it >= 0.996 for 1-3x the latency.
    ef_search: int = 400
    max_neighbors: int = 16  # (hnsw:M) graph edges per node

    def __post_init__(self):
        if self.space != "cosine":
            raise UsageError(f"HNSW space {self.space!r} is not supported: the index reports cosine distances")
        for name in ("ef_construction", "ef_search", "max_neighbors"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"HNSW {name} must be positive, got {getattr(self, name)}")

    def to_chroma(self) -> dict:
        return asdict(self)


@dataclass
class Matches:
    """Nearest catalogue items for ``n`` queries, nearest first in every row.

    Attributes:
        item_ids: ``(n, k)`` int64 item ids (1..n_items); 0 where the search found fewer than ``k``.
        distances: ``(n, k)`` float32 cosine distances (``1 - cosine similarity``); ``inf`` where
            ``item_ids`` is 0.
    """

    item_ids: np.ndarray
    distances: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)


def default_collection_name(dataset, embedder) -> str:
    """``DATASET-FINGERPRINT12-EMBEDDER``, made to fit Chroma's name rules."""
    return sanitise_collection_name(f"{dataset.name}-{dataset.fingerprint[:12]}-{embedder.name}")


def sanitise_collection_name(name: str) -> str:
    """A valid Chroma collection name: 3-63 of ``[a-zA-Z0-9_-]``, starting and ending with a letter or digit.

    Other characters (``:``, ``/``, ``.``) become ``-``; a name that had to be shortened keeps a
    hash of the original so that two long names stay apart.
    """
    clean = re.sub(r"[^a-zA-Z0-9_-]+", "-", name).strip("-_")
    if len(clean) > 63:
        clean = clean[:54].rstrip("-_") + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return clean if len(clean) >= 3 else (clean + "-idx").strip("-")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _parse_host(chroma_host: str) -> tuple[str, int, bool]:
    match = re.fullmatch(r"(?:(https?)://)?([^:/]+):(\d+)/?", chroma_host.strip())
    if not match:
        raise UsageError(f"chroma host {chroma_host!r} is not HOST:PORT (for example 127.0.0.1:8000)")
    scheme, host, port = match.groups()
    return host, int(port), scheme == "https"


def _describe(store, chroma_host) -> str:
    return f"Chroma server {chroma_host}" if chroma_host else f"store {store}"


def _damaged_store(store: str | Path, reason: str) -> DamagedFileError:
    folder = Path(store).resolve()
    return DamagedFileError(f"{folder / STORE_FILE}: the Chroma store is damaged ({reason}); delete the folder "
                            f"{folder} and run 'agentrec index build --data DATASET --store {store}' again")


def check_store_file(store: str | Path) -> None:
    """Refuse a damaged ``chroma.sqlite3`` in ``store`` with one :class:`DamagedFileError`.

    chromadb answers a damaged file with a long traceback or a Rust panic. This check is cheap
    whatever the store's size: the SQLite header, the schema, and the few small tables Chroma reads
    at start-up, opened read-only. A locked or busy file is left to chromadb.
    """
    import sqlite3

    path = Path(store) / STORE_FILE
    if not path.is_file() or path.stat().st_size == 0:  # chromadb makes an empty file a new store
        return
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head != b"SQLite format 3\x00":
        raise _damaged_store(store, "not an SQLite database: bad header")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table in _STARTUP_TABLES:
                if table in tables:
                    connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        if getattr(error, "sqlite_errorcode", None) in (11, 26) or "malformed" in str(error) \
                or "not a database" in str(error):  # SQLITE_CORRUPT, SQLITE_NOTADB
            raise _damaged_store(store, str(error)) from None
        logger.debug("could not pre-check %s (%s); leaving it to chromadb", path, error)


def _is_damage(error: BaseException) -> bool:
    """True for chromadb's answers to a damaged SQLite file (an internal error, or a Rust panic)."""
    text = str(error)
    return type(error).__name__ in ("InternalError", "PanicException") and (
        "malformed" in text or "not a database" in text or "code: 11" in text or "code: 26" in text)


@contextmanager
def _store_guard(store: str | Path | None, chroma_host: str | None = None):
    """Turn chromadb's errors for a damaged on-disk store into one :class:`DamagedFileError`."""
    try:
        yield
    except BaseException as error:  # a Rust panic (pyo3 PanicException) is not an Exception
        if chroma_host is None and store is not None and _is_damage(error):
            raise _damaged_store(store, " ".join(str(error).split())[:200]) from None
        raise


def _guarded(method):
    """Run a classmethod with ``store=``/``chroma_host=`` keywords under :func:`_store_guard`."""

    @functools.wraps(method)
    def wrapper(cls, *args, store: str | Path = DEFAULT_STORE, chroma_host: str | None = None, **kwargs):
        with _store_guard(store, chroma_host):
            return method(cls, *args, store=store, chroma_host=chroma_host, **kwargs)

    return wrapper


def connect(store: str | Path = DEFAULT_STORE, chroma_host: str | None = None, *, create: bool = True):
    """A Chroma client: a server when ``chroma_host`` ("HOST:PORT") is given, else the folder ``store``.

    Telemetry is off. With ``create=False`` a missing folder raises :class:`IndexNotFoundError`
    instead of becoming an empty store; a damaged ``chroma.sqlite3`` raises :class:`DamagedFileError`.
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if chroma_host:
        host, port, ssl = _parse_host(chroma_host)
        return chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=settings)
    if Path(store).exists() and not Path(store).is_dir():
        raise UsageError(f"--store {store} is a file, not a Chroma store folder; pass a folder")
    if not create and not Path(store).is_dir():
        raise IndexNotFoundError(f"no Chroma store at {store}; build one with 'agentrec index build --data DATASET "
                                 f"--store {store}'")
    check_store_file(store)
    with _store_guard(store):
        return chromadb.PersistentClient(path=str(store), settings=settings)


def max_batch_size(client) -> int:
    """Most records one add or query may carry for this client (``FALLBACK_MAX_BATCH`` if it cannot say)."""
    get = getattr(client, "get_max_batch_size", None)
    try:
        size = int(get()) if get else FALLBACK_MAX_BATCH
    except Exception:  # an old server without the endpoint
        size = FALLBACK_MAX_BATCH
    return max(1, size)


def _configuration(collection) -> dict:
    """The collection's configuration, without chromadb's warning about the 'legacy' (absent) embedding function."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="legacy embedding function config", category=DeprecationWarning)
        return collection.configuration or {}


def _hnsw_from_configuration(configuration: dict) -> HNSWSettings | None:
    hnsw = (configuration or {}).get("hnsw") or {}
    try:
        return HNSWSettings(space=hnsw["space"], ef_construction=hnsw["ef_construction"],
                            ef_search=hnsw["ef_search"], max_neighbors=hnsw["max_neighbors"])
    except (KeyError, ValueError):
        return None


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, leave=False)


class CatalogueIndex:
    """One dataset's catalogue in one Chroma collection; build it with :meth:`build`, reopen it with :meth:`open`.

    Attributes:
        client: the Chroma client (on-disk or HTTP).
        collection: the Chroma collection (created with ``embedding_function=None``).
        embedder: the :class:`~agentrec.retrieval.embedders.Embedder` that embeds queries; its fingerprint
            equals the one the collection was built with.
        name: the collection's name.
        hnsw: the HNSW settings read back from the collection's configuration.
        reused: True when :meth:`build` found the collection complete and embedded nothing.
    """

    def __init__(self, client, collection, embedder, *, table: np.ndarray | None = None, reused: bool = False,
                 location: str = ""):
        self.client = client
        self.collection = collection
        self.embedder = embedder
        self.name = collection.name
        self.reused = reused
        self.location = location
        self.hnsw = _hnsw_from_configuration(_configuration(collection))
        self.n_items = int(self.metadata["items"])  # ids are 1..n_items
        self.max_batch = max_batch_size(client)  # asked once: a server answers over HTTP
        self._table = table  # (n_items + 1, d) unit rows, row 0 zeros; read from Chroma when first needed

    # ------------------------------------------------------------------ construction
    @classmethod
    @_guarded
    def build(cls, dataset, embedder, *, store: str | Path = DEFAULT_STORE, chroma_host: str | None = None,
              collection: str | None = None, template=None, signals: dict | None = None,
              hnsw: HNSWSettings = HNSWSettings(), rebuild: bool = False, progress: bool = True) -> CatalogueIndex:
        """Embed every item's text and add it to a collection, or reuse the collection if it is already complete.

        Args:
            dataset: a :class:`~agentrec.data.dataset.PreparedDataset`.
            embedder: an Embedder or its name (``"minilm"``...).
            store: folder of the on-disk Chroma store (ignored when ``chroma_host`` is given).
            chroma_host: ``"HOST:PORT"`` of a Chroma server to use instead of ``store``.
            collection: collection name (default :func:`default_collection_name`).
            template: Jinja template of the item text (default ``prompts/item_text.jinja``).
            signals: extra item text by aspect, as :func:`agentrec.core.templates.item_texts` takes it.
            hnsw: HNSW settings, fixed at creation.
            rebuild: replace a complete collection that was built from something else.
            progress: progress bars while embedding and adding.

        Item vectors come from :func:`~agentrec.retrieval.embedders.item_embeddings`, which caches them in the
        dataset folder, so a rebuild after a crash or with new HNSW settings embeds nothing.

        Raises:
            IndexMismatchError: the collection exists, is complete and was built from another
                embedder, dataset, item text or HNSW settings, and ``rebuild`` is False.
        """

        embedder = get_embedder(embedder) if isinstance(embedder, str) else embedder
        client = connect(store, chroma_host)
        name = collection or default_collection_name(dataset, embedder)
        where = _describe(store, chroma_host)
        texts = item_texts(dataset.items, template=template, signals=signals)
        wanted = {
            "agentrec_version": __version__,
            "embedder_name": embedder.name,
            "embedder_fingerprint": embedder.fingerprint,
            "dataset_name": dataset.name,
            "dataset_fingerprint": dataset.fingerprint,
            "items": int(dataset.n_items),
            "template_digest": _digest(template_source(template or load_template())),
            "texts_digest": texts_digest(texts),
            "hnsw": json.dumps(hnsw.to_chroma(), sort_keys=True),
        }

        existing = _get_collection(client, name)
        if existing is not None:
            found = dict(existing.metadata or {})
            if "agentrec_version" not in found and not rebuild:
                raise IndexMismatchError(f"collection {name!r} in {where} was not built by agentrec; choose another "
                                         f"--collection, or pass --rebuild (rebuild=True) to replace it")
            complete = found.get("state") == STATE_COMPLETE and existing.count() == dataset.n_items
            differences = [key for key in ("embedder_fingerprint", "dataset_fingerprint", "texts_digest", "hnsw")
                           if found.get(key) != wanted[key]]
            if complete and not differences:
                logger.info("collection %s in %s is complete (%d items); reusing it", name, where, existing.count())
                existing = client.get_collection(name, embedding_function=None)
                return cls(client, existing, embedder, reused=True, location=where)
            if complete and not rebuild:
                detail = "; ".join(f"{key}: collection has {found.get(key)!r}, asked for {wanted[key]!r}"
                                   for key in differences)
                raise IndexMismatchError(
                    f"collection {name!r} in {where} was built from something else ({detail}). Pass --rebuild "
                    f"(rebuild=True) to replace it, or use another --collection or --store")
            logger.info("replacing collection %s in %s (%s)", name, where,
                        "rebuild asked" if complete else "an unfinished build")
            client.delete_collection(name)

        table = item_embeddings(dataset, embedder, template=template, signals=signals, progress=progress)
        # (n_items + 1, d); row 0 is padding and is not added
        metadata = {**wanted, "dimension": int(table.shape[1]), "state": STATE_BUILDING}
        created = client.create_collection(name, configuration={"hnsw": hnsw.to_chroma()}, metadata=metadata,
                                           embedding_function=None)
        configuration = _configuration(created)
        if _hnsw_from_configuration(configuration) != hnsw:
            raise ServiceError(f"Chroma did not keep the HNSW settings: asked for {hnsw}, "
                               f"collection has {configuration.get('hnsw')}")

        item_ids = dataset.items["item_id"].to_numpy().astype(np.int64)
        titles = dataset.titles()
        chunk = max_batch_size(client)
        with _progress(len(item_ids), f"add to {name}", progress) as bar:
            for start in range(0, len(item_ids), chunk):
                ids = item_ids[start : start + chunk]
                created.add(
                    ids=[str(i) for i in ids],
                    embeddings=table[ids],
                    documents=texts[start : start + chunk],
                    metadatas=[{"item_id": int(i), "title": titles[j]} for j, i in enumerate(ids, start)],
                )
                bar.update(len(ids))
        created.modify(metadata={**metadata, "state": STATE_COMPLETE})  # modify replaces the whole mapping
        created = client.get_collection(name, embedding_function=None)
        logger.info("built collection %s in %s: %d items, %d dimensions", name, where, created.count(),
                    table.shape[1])
        return cls(client, created, embedder, table=table, location=where)

    @classmethod
    @_guarded
    def open(cls, dataset, embedder, *, store: str | Path = DEFAULT_STORE, chroma_host: str | None = None,
             collection: str | None = None) -> CatalogueIndex:
        """Open a complete collection built by :meth:`build`, checking it against ``embedder`` (and ``dataset``).

        Args:
            dataset: the PreparedDataset it must have been built from, or None to skip that check;
                then ``collection`` names it, or the store must hold a single agentrec collection
                built with this embedder.
            embedder: an Embedder or its name; it must be the one the collection was built with.
            store, chroma_host, collection: as in :meth:`build`.

        Raises:
            IndexNotFoundError: no such store or collection, or its build did not finish.
            IndexMismatchError: the collection was built with another embedder (fingerprint or
                dimension) or from another dataset.
        """

        embedder = get_embedder(embedder) if isinstance(embedder, str) else embedder
        client = connect(store, chroma_host, create=False)
        where = _describe(store, chroma_host)
        rebuild_hint = (f"agentrec index build --data DATASET --embedder {embedder.name} "
                        + (f"--chroma-host {chroma_host}" if chroma_host else f"--store {store}"))
        if collection is None and dataset is not None:
            collection = default_collection_name(dataset, embedder)
        if collection is None:
            candidates = [c for c in client.list_collections()
                          if (c.metadata or {}).get("embedder_name") == embedder.name]
            if len(candidates) != 1:
                listing = ", ".join(c.name for c in client.list_collections()) or "none"
                raise IndexNotFoundError(f"{len(candidates)} collections in {where} were built with embedder "
                                         f"{embedder.name!r}; name one with --collection (collections: {listing})")
            collection = candidates[0].name

        found = _get_collection(client, collection)
        if found is None:
            listing = ", ".join(c.name for c in client.list_collections()) or "none"
            raise IndexNotFoundError(f"no collection {collection!r} in {where} (collections there: {listing}); "
                                     f"build it with '{rebuild_hint}'")
        metadata = dict(found.metadata or {})
        if metadata.get("state") != STATE_COMPLETE:
            raise IndexNotFoundError(f"collection {collection!r} in {where} is not a complete agentrec index "
                                     f"(an unfinished build?); build it again with '{rebuild_hint}'")
        if metadata.get("embedder_fingerprint") != embedder.fingerprint:
            raise IndexMismatchError(
                f"collection {collection!r} was built with embedder {metadata.get('embedder_fingerprint')!r} "
                f"({metadata.get('embedder_name')}, {metadata.get('dimension')} dims), but the query embedder is "
                f"{embedder.fingerprint!r} ({embedder.name}); query with --embedder {metadata.get('embedder_name')}, "
                f"or rebuild with '{rebuild_hint} --rebuild'")
        if int(metadata.get("dimension", -1)) != int(embedder.dimension):
            raise IndexMismatchError(
                f"collection {collection!r} holds {metadata.get('dimension')}-dimensional vectors but embedder "
                f"{embedder.fingerprint!r} makes {embedder.dimension}; rebuild with '{rebuild_hint} --rebuild'")
        if dataset is not None and metadata.get("dataset_fingerprint") != dataset.fingerprint:
            raise IndexMismatchError(
                f"collection {collection!r} was built from dataset {metadata.get('dataset_name')} "
                f"({str(metadata.get('dataset_fingerprint'))[:12]}), not {dataset.name} ({dataset.fingerprint[:12]}); "
                f"rebuild with '{rebuild_hint} --rebuild'")
        return cls(client, found, embedder, location=where)

    # ------------------------------------------------------------------ facts
    @property
    def metadata(self) -> dict:
        """What the collection was built from (embedder, dataset, digests, HNSW, version)."""
        return dict(self.collection.metadata or {})

    @property
    def count(self) -> int:
        return int(self.collection.count())

    @property
    def dimension(self) -> int:
        return int(self.metadata["dimension"])

    def __repr__(self) -> str:
        return f"CatalogueIndex({self.name!r}, {self.count} items, {self.dimension} dims, {self.location})"

    # ------------------------------------------------------------------ search
    def embed(self, texts: list[str]) -> np.ndarray:
        """``(n, d)`` unit query vectors, in one embedder call."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.asarray(self.embedder.embed(list(texts), progress=False), dtype=np.float32)

    def match(self, texts: list[str], k: int = 10) -> Matches:
        """The ``k`` nearest items to each text by HNSW search: one embedder call, one Chroma query.

        ``k`` is capped at the catalogue size. The query is split only when ``len(texts)`` exceeds
        the client's max batch size.
        """
        return self.match_vectors(self.embed(texts), k)

    def match_vectors(self, vectors: np.ndarray, k: int = 10) -> Matches:
        """As :meth:`match`, for ``(n, d)`` query vectors."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))  # (n, d)
        k = self._check_k(k)
        item_ids = np.zeros((len(vectors), k), dtype=np.int64)
        distances = np.full((len(vectors), k), np.inf, dtype=np.float32)
        for start in range(0, len(vectors), self.max_batch):
            # Record ids are str(item_id) by construction; not fetching metadatas halves the query time.
            result = self.collection.query(query_embeddings=vectors[start : start + self.max_batch], n_results=k,
                                           include=["distances"])
            for row, (ids, dists) in enumerate(zip(result["ids"], result["distances"]), start):
                # HNSW may return fewer than k; the rest stays (0, inf)
                item_ids[row, : len(ids)] = np.asarray(ids, dtype=np.int64)
                distances[row, : len(dists)] = dists
        return Matches(item_ids=item_ids, distances=distances)

    def exact_match(self, queries: list[str] | np.ndarray, k: int = 10, *, memory_budget_mb: float = 256.0) -> Matches:
        """The exact ``k`` nearest items: one matrix product against every item vector per chunk of queries.

        Args:
            queries: texts (embedded in one call) or ``(n, d)`` vectors.
            k: neighbours per query, capped at the catalogue size.
            memory_budget_mb: most memory for one chunk's ``(chunk, n_items)`` distances and their
                partition indices (12 bytes per entry).

        Ties are broken by the smaller item id.
        """
        if isinstance(queries, np.ndarray):
            vectors = np.atleast_2d(queries.astype(np.float32))
        else:
            vectors = self.embed(list(queries))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1.0, norms)  # cosine, as Chroma's cosine space does
        k = self._check_k(k)
        items = self.item_table()[1:]  # (n_items, d), row i is item i + 1
        n = len(vectors)
        item_ids = np.zeros((n, k), dtype=np.int64)
        distances = np.zeros((n, k), dtype=np.float32)
        rows = max(1, int(memory_budget_mb * 2**20 // (12 * max(len(items), 1))))
        for start in range(0, n, rows):
            distance = vectors[start : start + rows] @ items.T  # (chunk, n_items) similarities...
            np.subtract(1.0, distance, out=distance)  # ...made distances in place
            top = np.argpartition(distance, k - 1, axis=1)[:, :k] if k < len(items) else \
                np.broadcast_to(np.arange(len(items)), distance.shape).copy()
            top_distance = np.take_along_axis(distance, top, axis=1)
            order = np.lexsort((top, top_distance), axis=1)  # by distance, then by item id
            item_ids[start : start + rows] = np.take_along_axis(top, order, axis=1) + 1
            distances[start : start + rows] = np.take_along_axis(top_distance, order, axis=1)
        return Matches(item_ids=item_ids, distances=distances)

    def item_table(self) -> np.ndarray:
        """``(n_items + 1, d)`` item vectors as stored in the collection; row 0 (padding) is zero.

        Kept from :meth:`build`, or read back from Chroma (in chunks) the first time it is needed.
        """
        if self._table is None:
            n = self.n_items
            table = np.zeros((n + 1, self.dimension), dtype=np.float32)
            chunk = self.max_batch
            for start in range(1, n + 1, chunk):
                ids = [str(i) for i in range(start, min(start + chunk, n + 1))]
                got = self.collection.get(ids=ids, include=["embeddings"])
                table[np.asarray(got["ids"], dtype=np.int64)] = np.asarray(got["embeddings"], dtype=np.float32)
            self._table = table
        return self._table

    def titles(self, item_ids) -> list[str]:
        """Titles of ``item_ids`` (any order, repeats allowed) from the collection's metadata, in one get."""
        item_ids = [int(i) for i in np.asarray(item_ids).ravel()]
        if not item_ids:
            return []
        unique = sorted(set(item_ids))
        got = self.collection.get(ids=[str(i) for i in unique], include=["metadatas"])
        by_id = {int(m["item_id"]): m.get("title") or "" for m in got["metadatas"]}
        return [by_id.get(i, "") for i in item_ids]

    def _check_k(self, k: int) -> int:
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        return min(int(k), self.n_items)

    # ------------------------------------------------------------------ LangChain
    def as_langchain(self):
        """A ``langchain_chroma.Chroma`` vector store over this collection, embedding with our embedder.

        Example::

            retriever = index.as_langchain().as_retriever(search_kwargs={"k": 5})
            retriever.invoke("toy story")  # Documents with metadata {"item_id": ..., "title": ...}
        """
        from langchain_chroma import Chroma

        return Chroma(client=self.client, collection_name=self.name, embedding_function=langchain_embeddings(self.embedder))


def langchain_embeddings(embedder):
    """A ``langchain_core.embeddings.Embeddings`` that embeds with an agentrec Embedder."""
    from langchain_core.embeddings import Embeddings

    class EmbedderEmbeddings(Embeddings):
        def __init__(self, inner):
            self.inner = inner

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.inner.embed(list(texts)).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.inner.embed([text])[0].tolist()

    return EmbedderEmbeddings(embedder)


def _get_collection(client, name: str):
    """The collection called ``name`` (no embedding function), or None."""
    if name not in {c.name for c in client.list_collections()}:
        return None
    return client.get_collection(name, embedding_function=None)
