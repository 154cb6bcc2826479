"""The catalogue index on real local components: the shipped MiniLM model, Chroma on disk, a Chroma server.

Most tests share one module-scoped index over a 198-item synthetic catalogue, so the model loads
once and the items are embedded once; later builds read the embedding cache in the dataset folder.

The one fake is :class:`HashEmbedder`, used where a *second* embedder is needed (mismatch checks).
Its geometry: every distinct text gets a fixed pseudo-random unit vector seeded by the text's
sha256, so a text is at distance 0 from itself and unrelated to every other text.
"""

from __future__ import annotations

import hashlib
import math
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from agentrec.retrieval.embedders import Embedder
from agentrec.retrieval.index import (
    CatalogueIndex,
    HNSWSettings,
    IndexMismatchError,
    IndexNotFoundError,
    _parse_host,
    sanitise_collection_name,
)

FIXTURES = Path(__file__).parent / "fixtures"
# chromadb warns when it reads back a collection created without an embedding function (ours never has one)
pytestmark = [pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


class HashEmbedder(Embedder):
    """A second embedder with its own fingerprint and dimension (geometry in the module docstring)."""

    name = "hash"

    def __init__(self, dimension: int = 8, fingerprint: str | None = None):
        self.dimension = dimension
        self._fingerprint = fingerprint or f"hash|dim={dimension}"

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def embed(self, texts, *, batch_size=64, progress=False):
        rows = [np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little"))
                .standard_normal(self.dimension) for t in texts]
        rows = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dimension)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@contextmanager
def fresh_chroma_state():
    """Make the next client read its store from disk, as a new process would.

    Chroma shares one System per store path inside a process (a private class-level cache); an empty
    cache is swapped in for the block and the old one put back after it, so the module's other
    clients keep working. Clients made inside the block must not be used after it.
    """
    from chromadb.api.shared_system_client import SharedSystemClient

    saved = SharedSystemClient._identifier_to_system, SharedSystemClient._identifier_to_refcount
    SharedSystemClient._identifier_to_system, SharedSystemClient._identifier_to_refcount = {}, {}
    try:
        yield
    finally:
        SharedSystemClient._identifier_to_system, SharedSystemClient._identifier_to_refcount = saved


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from agentrec.data.api import prepare_dataset

    return prepare_dataset("synthetic", out=tmp_path_factory.mktemp("synthetic"), protocol="m2",
                           loader_options={"items": 200, "sessions": 600, "seed": 0})


@pytest.fixture(scope="module")
def minilm():
    from agentrec.retrieval.embedders import get_embedder

    return get_embedder("minilm")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def index(dataset, minilm, store) -> CatalogueIndex:
    return CatalogueIndex.build(dataset, minilm, store=store, progress=False)


@pytest.fixture(scope="module")
def texts(dataset) -> list[str]:
    from agentrec.core.templates import item_texts

    return item_texts(dataset.items)


@pytest.fixture(scope="module")
def lower_titles(dataset) -> list[str]:
    """Every title in lower case: near its item, but not a copy of any document."""
    return [title.lower() for title in dataset.titles()]


@pytest.fixture(scope="module")
def query_vectors(minilm, lower_titles) -> np.ndarray:
    return minilm.embed(lower_titles)  # (198, 384), embedded once for the module


# ---------------------------------------------------------------------------------------------- no model
def test_collection_names_follow_chroma_rules():
    rule = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,61}[a-zA-Z0-9]")
    for raw in ("ml-100k-867c92e22f9a-st:sentence-transformers/all-MiniLM-L6-v2", "a", "x" * 80, "_odd name!"):
        assert rule.fullmatch(sanitise_collection_name(raw)), raw
    assert sanitise_collection_name("a" * 70 + "1") != sanitise_collection_name("a" * 70 + "2")


def test_chroma_host_parsing():
    assert _parse_host("127.0.0.1:8000") == ("127.0.0.1", 8000, False)
    assert _parse_host("https://chroma.example.org:443") == ("chroma.example.org", 443, True)
    with pytest.raises(ValueError, match="HOST:PORT"):
        _parse_host("localhost")


def test_hnsw_settings_are_checked():
    assert HNSWSettings().to_chroma() == {"space": "cosine", "ef_construction": 200, "ef_search": 400,
                                          "max_neighbors": 16}
    with pytest.raises(ValueError, match="cosine"):
        HNSWSettings(space="l2")
    with pytest.raises(ValueError, match="ef_search"):
        HNSWSettings(ef_search=0)


def test_import_stays_light():
    code = ("import sys, agentrec.retrieval.index\n"
            "print(','.join(m for m in ('chromadb', 'langchain_chroma', 'langchain_core', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------- real model + Chroma
@pytest.mark.integration
def test_build_records_provenance_and_hnsw_settings(index, dataset, minilm, store):
    import chromadb
    from chromadb.config import Settings

    assert index.count == dataset.n_items == 198 and index.dimension == 384 and not index.reused
    meta = index.metadata
    assert meta["embedder_fingerprint"] == minilm.fingerprint and meta["dataset_fingerprint"] == dataset.fingerprint
    assert meta["items"] == 198 and meta["state"] == "complete" and meta["agentrec_version"]
    assert len(meta["template_digest"]) == 64 and len(meta["texts_digest"]) == 64
    # read back by another client: the settings were fixed at creation
    other = chromadb.PersistentClient(path=str(store), settings=Settings(anonymized_telemetry=False))
    hnsw = other.get_collection(index.name, embedding_function=None).configuration["hnsw"]
    assert {key: hnsw[key] for key in ("space", "ef_construction", "ef_search", "max_neighbors")} == \
        HNSWSettings().to_chroma()
    assert index.hnsw == HNSWSettings()


@pytest.mark.integration
def test_item_text_finds_its_own_item_at_distance_zero(index, texts):
    assert len(set(texts)) == len(texts)
    # every stored vector finds itself; the text path (embed, then query) does too
    for matches, ids in ((index.match_vectors(index.item_table()[1:], k=3), np.arange(1, 199)),
                         (index.match(texts[100:130], k=3), np.arange(101, 131))):
        assert matches.item_ids.shape == matches.distances.shape == (len(ids), 3)
        assert (matches.item_ids[:, 0] == ids).all()
        assert np.abs(matches.distances[:, 0]).max() < 1e-4
        assert (np.diff(matches.distances, axis=1) >= -1e-6).all()  # nearest first


@pytest.mark.integration
def test_titles_alone_find_their_item(index, query_vectors):
    matches = index.match_vectors(query_vectors, k=1)
    assert (matches.item_ids[:, 0] == np.arange(1, 199)).mean() > 0.95


@pytest.mark.integration
def test_hnsw_equals_exact_on_a_small_catalogue(index, lower_titles, query_vectors):
    approx, exact = index.match_vectors(query_vectors, k=10), index.exact_match(query_vectors, k=10)
    np.testing.assert_allclose(approx.distances, exact.distances, atol=1e-5)
    assert all(set(a) == set(e) for a, e in zip(approx.item_ids.tolist(), exact.item_ids.tolist()))
    # a memory budget of one row per chunk gives the same answer; so do texts
    assert (index.exact_match(query_vectors, k=10, memory_budget_mb=1e-6).item_ids == exact.item_ids).all()
    assert (index.exact_match(lower_titles[:5], k=10).item_ids == exact.item_ids[:5]).all()
    # k is capped at the catalogue size
    assert index.exact_match(query_vectors[:2], k=1000).item_ids.shape == (2, 198)


@pytest.mark.integration
def test_many_texts_cost_one_embedder_call_and_one_query(index, dataset, monkeypatch):
    calls = {"embed": 0, "query": 0}

    def counting(name, inner):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return inner(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(index.embedder, "embed", counting("embed", index.embedder.embed))
    monkeypatch.setattr(index.collection, "query", counting("query", index.collection.query))
    matches = index.match(dataset.titles()[:50], k=5)
    assert calls == {"embed": 1, "query": 1}
    assert matches.item_ids.shape == (50, 5)


@pytest.mark.integration
def test_persistence_round_trip(index, dataset, minilm, store, query_vectors, monkeypatch):
    before = index.match_vectors(query_vectors, k=10)
    table = index.item_table()
    with fresh_chroma_state():
        reopened = CatalogueIndex.open(dataset, minilm, store=store)
        assert reopened.client is not index.client and reopened.count == 198
        after = reopened.match_vectors(query_vectors, k=10)
        assert (after.item_ids == before.item_ids).all()
        np.testing.assert_allclose(after.distances, before.distances, atol=1e-6)
        np.testing.assert_allclose(reopened.item_table(), table, atol=1e-6)  # read back from Chroma

        # building again finds the complete collection and embeds nothing
        import agentrec.retrieval.embedders

        def no_embedding(*args, **kwargs):
            raise AssertionError("a complete collection must be reused, not embedded again")

        monkeypatch.setattr(agentrec.retrieval.embedders, "item_embeddings", no_embedding)
        again = CatalogueIndex.build(dataset, minilm, store=store, progress=False)
        assert again.reused and again.name == index.name and again.count == 198


@pytest.mark.integration
def test_opening_with_another_embedder_raises(index, dataset, minilm, store):
    fake = HashEmbedder(dimension=8)
    with pytest.raises(IndexMismatchError) as error:
        CatalogueIndex.open(dataset, fake, store=store, collection=index.name)
    message = str(error.value)
    assert minilm.fingerprint in message and fake.fingerprint in message
    assert "agentrec index build" in message and "--embedder hash" in message
    # same fingerprint, other dimension
    with pytest.raises(IndexMismatchError, match="384"):
        CatalogueIndex.open(dataset, HashEmbedder(dimension=8, fingerprint=minilm.fingerprint), store=store,
                            collection=index.name)
    # the fake's own default collection was never built
    with pytest.raises(IndexNotFoundError, match="agentrec index build"):
        CatalogueIndex.open(dataset, fake, store=store)
    with pytest.raises(IndexNotFoundError, match="no Chroma store"):
        CatalogueIndex.open(dataset, minilm, store=store / "missing")


@pytest.mark.integration
def test_build_refuses_another_embedder_unless_rebuild(dataset, minilm, tmp_path):
    fake = HashEmbedder(dimension=8)
    built = CatalogueIndex.build(dataset, fake, store=tmp_path, collection="catalogue", progress=False)
    assert built.dimension == 8 and built.match(["x"], k=3).item_ids.shape == (1, 3)
    with pytest.raises(IndexMismatchError, match="rebuild"):
        CatalogueIndex.build(dataset, minilm, store=tmp_path, collection="catalogue", progress=False)
    rebuilt = CatalogueIndex.build(dataset, minilm, store=tmp_path, collection="catalogue", rebuild=True,
                                   progress=False)
    assert rebuilt.metadata["embedder_fingerprint"] == minilm.fingerprint and rebuilt.dimension == 384

    # an unfinished build cannot be opened, and the next build replaces it without asking
    rebuilt.collection.modify(metadata={**rebuilt.metadata, "state": "building"})
    with pytest.raises(IndexNotFoundError, match="unfinished"):
        CatalogueIndex.open(dataset, minilm, store=tmp_path, collection="catalogue")
    assert not CatalogueIndex.build(dataset, minilm, store=tmp_path, collection="catalogue", progress=False).reused


@pytest.mark.integration
def test_adds_and_queries_are_chunked_below_the_max_batch_size(index, dataset, minilm, query_vectors, tmp_path,
                                                                monkeypatch):
    from chromadb.api.client import Client
    from chromadb.api.models.Collection import Collection

    calls = {"add": [], "query": []}
    add, query = Collection.add, Collection.query

    def counting_add(self, *args, **kwargs):
        calls["add"].append(len(kwargs["ids"]))
        return add(self, *args, **kwargs)

    def counting_query(self, *args, **kwargs):
        calls["query"].append(len(kwargs["query_embeddings"]))
        return query(self, *args, **kwargs)

    monkeypatch.setattr(Client, "get_max_batch_size", lambda self: 16)
    monkeypatch.setattr(Collection, "add", counting_add)
    monkeypatch.setattr(Collection, "query", counting_query)
    small = CatalogueIndex.build(dataset, minilm, store=tmp_path, progress=False)
    assert calls["add"] == [16] * 12 + [6] and small.count == 198
    chunked = small.match_vectors(query_vectors[:40], k=5)
    assert calls["query"] == [16, 16, 8]
    np.testing.assert_allclose(chunked.distances, index.match_vectors(query_vectors[:40], k=5).distances, atol=1e-5)


@pytest.mark.integration
def test_langchain_retriever_returns_the_item(index, dataset):
    title = dataset.titles()[6]
    docs = index.as_langchain().as_retriever(search_kwargs={"k": 5}).invoke(title)
    assert len(docs) == 5 and docs[0].metadata["item_id"] == 7 and docs[0].metadata["title"] == title
    # LangChain calls it a score; for Chroma it is the same cosine distance
    _, langchain_distance = index.as_langchain().similarity_search_with_score(title, k=1)[0]
    assert langchain_distance == pytest.approx(float(index.match([title], k=1).distances[0, 0]), abs=1e-5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_chroma_server_through_chroma_host(index, dataset, minilm, query_vectors, tmp_path):
    chroma = Path(sys.executable).parent / "chroma"
    if not chroma.exists():
        pytest.skip("the 'chroma' console script is not installed next to this Python")
    port = _free_port()
    server = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the Chroma server did not start")
                time.sleep(0.2)
        host = f"127.0.0.1:{port}"
        remote = CatalogueIndex.build(dataset, minilm, chroma_host=host, progress=False)
        assert remote.count == 198 and "Chroma server" in remote.location
        local = index.match_vectors(query_vectors, k=10)
        got = remote.match_vectors(query_vectors, k=10)
        np.testing.assert_allclose(got.distances, local.distances, atol=1e-5)
        assert remote.match(["x"], k=3).item_ids.shape == (1, 3)  # the text path over HTTP
        reopened = CatalogueIndex.open(None, minilm, chroma_host=host)  # the server's only minilm collection
        assert reopened.name == index.name
        assert reopened.titles([7, 3, 7]) == [dataset.titles()[6], dataset.titles()[2], dataset.titles()[6]]
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.integration
def test_cli_build_and_query(minilm, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import agentrec.retrieval.embedders
    from agentrec.cli.main import app
    from agentrec.data.api import prepare_dataset

    # the same shipped model, loaded once for the module
    monkeypatch.setattr(agentrec.retrieval.embedders, "get_embedder", lambda name, **_: minilm)

    data, vectors = tmp_path / "tiny", tmp_path / "vectors"
    prepare_dataset("recbole", out=data, source=FIXTURES / "recbole" / "tiny", protocol="leave-one-out")
    runner = CliRunner()
    result = runner.invoke(app, ["index", "build", "--data", str(data), "--store", str(vectors), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "built" in result.output and "dimension 384" in result.output
    result = runner.invoke(app, ["index", "query", "seven samurai", "ten", "--data", str(data),
                                 "--store", str(vectors), "--k", "2"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if re.match(r"\s+\d+\s+\d+\s", line)]
    assert len(rows) == 4 and rows[0][:4] == ["1", "1", "Seven", "Samurai"]
    assert float(rows[0][-1]) < 0.5 and "distance" in result.output
    result = runner.invoke(app, ["index", "query", "x", "--store", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no Chroma store" in result.output


def test_fake_embedder_geometry():
    fake = HashEmbedder(dimension=16)
    a, b, a_again = fake.embed(["a", "b", "a"])
    assert math.isclose(float(a @ a_again), 1.0, abs_tol=1e-6) and abs(float(a @ b)) < 0.99
