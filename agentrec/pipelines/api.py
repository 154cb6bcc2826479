"""The Python API: prepare a dataset, train a run, evaluate it once, recommend for histories; an LLM recommender.

The package root re-exports these names lazily (:mod:`agentrec`), so ``import agentrec`` stays light::

    import agentrec
    data = agentrec.prepare("ml-100k", out="data/ml-100k")          # agentrec.load_dataset(path) for an existing folder
    run = agentrec.train("niser", data, out="runs/niser", epochs=5)  # variant="fusion" -> SemSR-F; returns a Run
    print(run.evaluate())                                             # test metrics, once
    run = agentrec.load_run("runs/niser")
    recs = run.recommend([["50", "172", "181"]], k=10)                # histories of ORIGINAL item ids
    llm = agentrec.LLMRecommender(data, strategy="fscot")             # engine/model/index options as on the CLI
    llm.recommend([["50", "172", "181"]], k=10)                       # an ad-hoc session, grounded in the catalogue

**Item ids** are the dataset's original ids everywhere here (``original_id`` in ``items.jsonl``, strings;
ints are accepted and converted), never agentrec's internal ids 1..n. A history is a list of them,
oldest first. Both ``recommend`` methods take a list of histories and return one list of
:class:`Recommendation` per history, in the same order, best first; ``score`` is higher-is-better
everywhere. An unknown id, an empty history or a value of the wrong type is a
:class:`~agentrec.core.errors.UsageError` that names the value and the history's index.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentrec.core import fsutil
from agentrec.core.config import merge_into
from agentrec.core.devices import resolve_device
from agentrec.core.errors import AgentrecError, UsageError
from agentrec.core.metrics import chunk_rows
from agentrec.core.options import COUNT, check_writable
from agentrec.data.api import prepare_dataset
from agentrec.data.dataset import PreparedDataset, Samples
from agentrec.data.protocols import PROTOCOLS
from agentrec.data.sources import SOURCES, get_loader
from agentrec.llm import EngineConfig
from agentrec.llm.prompts import PromptBuilder, PromptConfig, validate_strategy
from agentrec.pipelines.hybrid import model_scores
from agentrec.pipelines.predict import Candidates, GenerationConfig, generate_candidates, open_cache, resolve_engine
from agentrec.pipelines.train import RunSpec, build_model_config, train_run
from agentrec.retrieval.embedders import DEFAULT_EMBEDDER
from agentrec.retrieval.index import CatalogueIndex
from agentrec.training import distributed
from agentrec.training.runs import RUN_ENTRIES, RunInfo, evaluate_run, load_model, read_run
from agentrec.training.trainer import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["LLMRecommender", "Recommendation", "Run", "load_dataset", "load_run", "prepare", "train"]


@dataclass(frozen=True)
class Recommendation:
    """One recommended item."""

    item_id: str  # the dataset's original id (items.jsonl's original_id)
    title: str  # its title ("" when the dataset has none)
    score: float  # higher is better: the session model's score, or 1 - cosine distance for the LLM


# ================================================================================================ datasets
def prepare(name: str, out: str | Path, *, source: str | Path | None = None, protocol: str | None = None,
            force: bool = False, skip_bad: bool = False, **options) -> PreparedDataset:
    """Load the source ``name``, apply a protocol and write the prepared dataset to ``out`` (``agentrec data prepare``).

    ``out`` is written whole or not at all. A folder that already holds this very dataset (same
    fingerprint) is kept and reused as it is; one holding another dataset is replaced only with
    ``force``.

    Args:
        name: a source from :data:`agentrec.data.sources.SOURCES` (``ml-100k``, ``recbole``, ``amazon2023``...).
        out: the dataset folder.
        source: the source's file or folder (not needed for ``ml-100k``, ``ml-latest-small``, ``synthetic``).
        protocol: ``leave-one-out``, ``semsr``, ``gap`` or ``m2``; default: the source's usual one.
        force: replace a folder that holds another dataset.
        skip_bad: skip malformed source lines (counted in the load report) instead of stopping at the first.
        **options: the loader's and the protocol's settings by name, as on the command line: e.g.
            ``meta=``, ``locale=``, ``items=``, ``sessions=`` (loaders); ``max_history=``, ``gap_s=``,
            ``test_sessions=`` (protocols); ``seed=`` goes to whichever takes it. Each is checked: an
            option that neither the source nor the protocol takes is a UsageError naming it.

    Returns:
        The :class:`~agentrec.data.dataset.PreparedDataset` (``.saved`` says written, replaced or kept).
    """
    if name not in SOURCES:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(SOURCES)}")
    protocol_name = protocol or SOURCES[name].default_protocol
    if protocol_name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol_name!r}; choose one of: {', '.join(PROTOCOLS)}")
    protocol_fields = set(inspect.signature(PROTOCOLS[protocol_name]).parameters)
    loader_fields = set(inspect.signature(get_loader(name)).parameters) - {"source", "skip_bad"}
    protocol_options, loader_options = {}, {}
    for key, value in options.items():
        if value is None:  # not given, as on the command line
            continue
        taken = False
        if key in protocol_fields:
            protocol_options[key], taken = value, True
        if key in loader_fields:
            loader_options[key], taken = value, True
        if not taken:
            raise UsageError(f"prepare({name!r}): no option {key}={value!r}; source {name!r} takes "
                             f"{', '.join(sorted(loader_fields)) or 'none'}, protocol {protocol_name!r} takes "
                             f"{', '.join(sorted(protocol_fields)) or 'none'}")
    return prepare_dataset(name, out=out, source=source, protocol=protocol, skip_bad=skip_bad,
                           protocol_options=protocol_options, loader_options=loader_options, force=force)


def load_dataset(path: str | Path) -> PreparedDataset:
    """The prepared dataset in folder ``path`` (checked against its ``stats.json`` as it loads)."""
    return PreparedDataset.load(path)


def _as_dataset(data, what: str = "data") -> PreparedDataset:
    if isinstance(data, PreparedDataset):
        return data
    if isinstance(data, (str, Path)):
        return PreparedDataset.load(data)
    raise UsageError(f"{what} must be a PreparedDataset (from agentrec.prepare or agentrec.load_dataset) or a "
                     f"dataset folder, got {type(data).__name__} {data!r:.60}")


class _Catalogue:
    """Original ids <-> internal ids and titles of one dataset; checks the histories users pass."""

    def __init__(self, dataset: PreparedDataset):
        self.dataset = dataset
        column = dataset.items["original_id"] if "original_id" in dataset.items else dataset.items["item_id"]
        self.original_ids = [str(value) for value in column.tolist()]  # internal id i is row i - 1
        self.internal = {original: i for i, original in enumerate(self.original_ids, 1)}
        self.titles = dataset.titles()

    def histories(self, histories) -> list[list[int]]:
        """Internal ids of each history of original ids; a UsageError names any value that is not one."""
        if isinstance(histories, (str, bytes)) or not isinstance(histories, (list, tuple)):
            raise UsageError(f"histories must be a list of histories, each a list of item ids (e.g. [['50', '172']]), "
                             f"got {type(histories).__name__} {histories!r:.80}")
        if not histories:
            raise UsageError("histories is an empty list: pass at least one history, e.g. [['50', '172']]")
        out = []
        for index, history in enumerate(histories):
            if isinstance(history, (str, bytes)) or not isinstance(history, (list, tuple, np.ndarray)):
                raise UsageError(f"history {index} must be a list of item ids, got {type(history).__name__} "
                                 f"{history!r:.80}" + ("; a single history goes in a list: [[...]]"
                                                       if isinstance(history, (str, int)) else ""))
            if len(history) == 0:
                raise UsageError(f"history {index} is empty: a history needs at least one item id")
            ids = []
            for item in history:
                if isinstance(item, (bool, np.bool_)) or not isinstance(item, (str, int, np.integer)):
                    raise UsageError(f"history {index}: item id {item!r} is a {type(item).__name__}, not an "
                                     f"original item id (a string such as {self.original_ids[0]!r}; ints are "
                                     "converted)")
                key = str(int(item)) if isinstance(item, (int, np.integer)) else item
                found = self.internal.get(key)
                if found is None:
                    raise UsageError(f"history {index}: unknown item id {item!r}: dataset {self.dataset.name!r} "
                                     f"has no item with that original id ({self.dataset.n_items:,} items, ids such "
                                     f"as {', '.join(repr(i) for i in self.original_ids[:3])})")
                ids.append(found)
            out.append(ids)
        return out

    def recommendation(self, item: int, score: float) -> Recommendation:
        return Recommendation(item_id=self.original_ids[item - 1], title=self.titles[item - 1], score=float(score))


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError(f"k must be a whole number >= 1, got {k!r}")
    return int(k)


def _query_samples(histories: list[list[int]]) -> Samples:
    """Ad-hoc sessions as samples; the target is a placeholder (0, padding) that nothing reads."""
    return Samples.from_lists(histories, [0] * len(histories))


# ================================================================================================ runs
def train(model: str, data, *, out: str | Path, variant: str | None = None, embedder: str = DEFAULT_EMBEDDER,
          signals: str | None = None, settings: dict | None = None, epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, weight_decay: float | None = None,
          lr_step: int | None = None, lr_gamma: float | None = None, select_metric: str | None = None,
          patience: int | None = None, exclude_history: bool | None = None, seed: int | None = None,
          threads: int | None = None, eval_memory_mb: float | None = None, max_train_samples: int | None = None,
          bucket: int | None = None, device: str | None = None, precision: str | None = None,
          negatives: int | None = None, nproc: int = 1, progress: bool = False) -> Run:
    """Train ``model`` on ``data`` into the run folder ``out`` (``agentrec train``), through :func:`train_run`.

    Args:
        model: a name from :data:`agentrec.models.MODELS` (``pop``, ``gru4rec``, ``narm``, ``srgnn``,
            ``niser``, ``msgat``).
        data: a PreparedDataset or its folder.
        out: the run folder; written whole at the end (a previous run there is replaced).
        variant: None (the plain model), ``"init"`` (SemSR-I) or ``"fusion"`` (SemSR-F).
        embedder: the item-text embedder of a SemSR variant.
        signals: LaMAR signals appended to the item texts of a SemSR variant (``SET`` or ``SET:aspect,...``).
        settings: the model Config's fields to change, e.g. ``{"embedding_size": 64}``.
        epochs, batch_size, lr, weight_decay, lr_step, lr_gamma, select_metric, patience, exclude_history,
            seed, threads, eval_memory_mb, max_train_samples, bucket: training settings
            (:class:`~agentrec.training.trainer.TrainConfig`); None keeps the default. Each is
            type- and range-checked before any work.
        device: where training runs: ``"auto"`` (the default: CUDA when torch sees a GPU, else the CPU),
            ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; an unavailable GPU is a UsageError before any work. The
            returned run loads its model on the same device.
        precision: of the training steps: ``"fp32"`` (the default), ``"bf16"`` (autocast) or ``"auto"``.
        negatives: sampled softmax: each batch scored against its own targets and this many uniformly drawn
            items (``agentrec.training.losses``); None (the default) scores every item.
        nproc: train data-parallel in this many processes (torch DDP: ``agentrec train --nproc``, started here
            through ``torch.distributed.run``; see :mod:`agentrec.training.distributed`). ``batch_size`` is the
            global batch and ``threads`` are per process. It needs ``data`` in a folder, and ``bucket`` and
            ``eval_memory_mb`` at their defaults (``agentrec train`` has no options for them). Called inside a
            torchrun job, the job's ranks train together whatever ``nproc`` says.
        progress: progress bars.

    Returns:
        The :class:`Run` (validation metrics of the selected epoch in ``run.info.valid``; test is
        computed only by :meth:`Run.evaluate`).
    """
    flags = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, lr_step=lr_step,
                 lr_gamma=lr_gamma, select_metric=select_metric, patience=patience, exclude_history=exclude_history,
                 seed=seed, threads=threads, eval_memory_mb=eval_memory_mb, max_train_samples=max_train_samples,
                 bucket=bucket, device=device, precision=precision, negatives=negatives)
    train_config = merge_into(TrainConfig, {}, flags, where="train settings")
    resolve_device(train_config.device)  # a missing GPU is found before any work
    if settings is not None and not isinstance(settings, dict):
        raise UsageError(f"settings must be a dict of model settings, e.g. {{'embedding_size': 64}}, got "
                         f"{type(settings).__name__} {settings!r:.60}")
    spec = RunSpec(model=model, variant=variant, embedder=embedder, signals=signals, train=train_config,
                   model_settings=dict(settings or {}))
    if spec.model != "pop":
        build_model_config(model, settings=spec.model_settings)  # an unknown or out-of-range setting fails now
    elif spec.model_settings:
        raise UsageError(f"pop (the popularity floor) has no model settings, got {spec.model_settings}")
    COUNT.check("nproc", nproc)
    check_writable("out", out)  # before any work, not after training
    fsutil.refuse_foreign(out, RUN_ENTRIES, what="a run folder")
    dataset = _as_dataset(data)
    if nproc > 1 and distributed.launched_world() is None:
        _train_in_ranks(nproc, spec, dataset, out, flags, progress=progress)
    else:
        train_run(spec, dataset, out, progress=progress)
    return Run(out, dataset=dataset, device=train_config.device)


def _train_in_ranks(nproc: int, spec: RunSpec, dataset, out, flags: dict, *, progress: bool) -> None:
    """``agentrec train --nproc N`` for :func:`train`'s checked settings, given to the ranks as a config file."""
    import json
    import tempfile

    if spec.model == "pop":
        raise UsageError("nproc: pop (the popularity floor) is counted, not trained; leave nproc at 1")
    not_options = sorted(name for name in ("bucket", "eval_memory_mb") if flags.get(name) is not None)
    if not_options:
        leave = "it at its default" if len(not_options) == 1 else "them at their defaults"
        raise UsageError(f"nproc {nproc}: {', '.join(not_options)} cannot be given to the ranks (agentrec train "
                         f"has no such option); leave {leave}")
    if dataset.path is None:
        raise UsageError(f"nproc {nproc}: the ranks read the dataset from its folder; save it first "
                         "(PreparedDataset.save) or pass the folder")
    distributed.check_launch(nproc, spec.train.device)
    n_train = min(len(dataset.train), spec.train.max_train_samples or len(dataset.train))
    distributed.check_batches(spec.train.batch_size, n_train, nproc)
    options = {name: value for name, value in flags.items() if value is not None}
    options.update(model=spec.model, data=str(Path(dataset.path).resolve()), out=str(Path(out).resolve()),
                   nproc=nproc, quiet=not progress, model_settings=spec.model_settings)
    if spec.variant:
        options.update(semantic=spec.variant, embedder=spec.embedder)
    if spec.signals:
        options["signals"] = spec.signals
    with tempfile.TemporaryDirectory(prefix="agentrec-ranks-") as folder:
        config = Path(folder) / "train.json"
        config.write_text(json.dumps(options), encoding="utf-8")
        code = distributed.launch(nproc, ["train", "--config", str(config)], threads=spec.train.threads)
    if code:
        raise AgentrecError(f"training in {nproc} processes failed (exit code {code}); the failing rank printed why "
                            "on standard error")


def load_run(path: str | Path, data=None, *, device: str = "cpu") -> Run:
    """The run in folder ``path``; ``data`` (a PreparedDataset or folder) defaults to the one the run records.

    ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``) is where its model is loaded and scores.
    """
    resolve_device(device)  # a malformed name or a missing GPU fails now, not at first use
    return Run(path, dataset=data, device=device)


class Run:
    """A trained run folder: its record, its test metrics (computed once), recommendations for histories.

    Attributes:
        path: the run folder.
        info: its record (:class:`~agentrec.training.runs.RunInfo`: model, settings, dataset,
            validation history, and ``test`` once evaluated).
    """

    def __init__(self, path: str | Path, *, dataset=None, device: str = "cpu"):
        """
        Args:
            path: a run folder written by :func:`train` or ``agentrec train``.
            dataset: the dataset it was trained on (a PreparedDataset or its folder); default: the
                folder the run records, loaded on first use. A dataset with another fingerprint is
                refused when the model loads.
            device: where the model is loaded and scores (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``).
        """
        self.path = Path(path)
        self.device = device
        self.info: RunInfo = read_run(self.path)
        if dataset is not None and not isinstance(dataset, (PreparedDataset, str, Path)):
            _as_dataset(dataset, "dataset")  # raises, naming the type
        self._dataset = dataset
        self._model = None
        self._catalogue: _Catalogue | None = None

    def __repr__(self) -> str:
        mode = (self.info.semantic or {}).get("mode")
        label = self.info.model + (f" + SemSR-{mode[0].upper()}" if mode else "")
        return f"Run({str(self.path)!r}, model={label!r}, dataset={self.info.dataset.get('name')!r})"

    @property
    def dataset(self) -> PreparedDataset:
        """The dataset of the run, loaded on first use."""
        if not isinstance(self._dataset, PreparedDataset):
            where = self._dataset or self.info.dataset.get("path")
            if where is None:
                raise UsageError(f"{self.path}: the run does not record its dataset's folder; pass it: "
                                 f"agentrec.load_run({str(self.path)!r}, data=FOLDER)")
            self._dataset = PreparedDataset.load(where)
        return self._dataset

    @property
    def model(self):
        """The trained model, loaded on first use (checked against the dataset's fingerprint)."""
        if self._model is None:
            self.info, self._model = load_model(self.path, self.dataset, device=self.device)
        return self._model

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """Metrics of the selected checkpoint on ``split`` (Recall, MRR and NDCG at 10, 20 and 100, as fractions).

        Test is computed **once**: the first call writes the metrics into ``run.json`` (with the
        protocol and the number of sessions, see ``run.info.test``), and every later call (from this
        object, or a run loaded again) returns the stored metrics without computing anything.
        Validation is computed on each call and not stored.
        """
        if split not in ("test", "valid"):
            raise UsageError(f"split must be 'test' or 'valid', got {split!r}")
        if split == "test":
            self.info = read_run(self.path)  # evaluated meanwhile (another process, the CLI)?
            if self.info.test:
                return {key: float(value) for key, value in self.info.test.items() if "@" in key}
        info, result = evaluate_run(self.path, split=split, dataset=self.dataset, model=self.model)
        if split == "test":
            self.info = info
        return {key: float(value) for key, value in result.metrics.items()}

    def recommend(self, histories, k: int = 10, *, exclude_seen: bool = False) -> list[list[Recommendation]]:
        """The top-``k`` items for each history, by the run's model.

        Args:
            histories: a list of histories, each a list of original item ids, oldest first.
            k: items per history (at most the catalogue's size).
            exclude_seen: leave out the items of the history itself (by default they may be recommended,
                as the evaluation protocol allows).

        Returns:
            One list per history, in order, of up to ``k`` :class:`Recommendation`, best first (ties:
            the smaller internal id first); ``score`` is the model's score (higher is better). Histories
            are scored in chunks, one model call per chunk.
        """
        catalogue = self._catalogue_of()
        ids = catalogue.histories(histories)
        k = _check_k(k)
        model, n_items = self.model, self.dataset.n_items
        samples = _query_samples(ids)
        out: list[list[Recommendation]] = []
        step = chunk_rows(n_items)  # (step, N + 1) scores at a time
        for start in range(0, len(ids), step):
            rows = np.arange(start, min(len(ids), start + step))
            scores = model_scores(model, samples, rows)  # (B, N + 1), column 0 -inf
            scores[np.isnan(scores)] = -np.inf  # never recommended
            if exclude_seen:
                for j, row in enumerate(rows):
                    scores[j, ids[row]] = -np.inf
            for row_scores in scores:
                top = _top_k(row_scores, k)
                out.append([catalogue.recommendation(int(i), row_scores[i]) for i in top])
        return out

    def _catalogue_of(self) -> _Catalogue:
        if self._catalogue is None:
            self._catalogue = _Catalogue(self.dataset)
        return self._catalogue


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Ids of the ``k`` best finite-or-``+inf`` scores of ``(N + 1,)`` ``scores``, best first, ties by the smaller id;
    ``-inf`` entries (padding, excluded items) are never listed, so fewer than ``k`` may come back."""
    allowed = np.flatnonzero(scores > -np.inf)
    if len(allowed) <= k:
        chosen = allowed
    else:
        kth = -np.partition(-scores[allowed], k - 1)[k - 1]  # the k-th best score
        above = allowed[scores[allowed] > kth]
        ties = allowed[scores[allowed] == kth][: k - len(above)]  # the smaller ids among equals
        chosen = np.concatenate([above, ties])
    order = np.lexsort((chosen, -scores[chosen]))  # by score, best first, then by id
    return chosen[order]


# ================================================================================================ LLM
class LLMRecommender:
    """An LLM as the recommender for ad-hoc sessions (SemSR section 3.2), grounded in the catalogue.

    For each history it renders the strategy's prompts (few-shot examples drawn from the train split,
    as :func:`~agentrec.pipelines.predict.predict` does), generates in one batched engine call per
    step, parses a title from each answer and grounds all titles with one
    :meth:`~agentrec.retrieval.index.CatalogueIndex.match` call (:func:`generate_candidates`).

    Example::

        llm = LLMRecommender(data, strategy="fscot")                      # hf engine, SmolLM2, offline
        llm = LLMRecommender(data, "fs", engine="openai",
                             engine_config=EngineConfig(base_url="http://127.0.0.1:8000/v1"))
        recs = llm.recommend([["50", "172", "181"]], k=10)
    """

    def __init__(self, data, strategy: str = "fs", *, engine="hf", model: str | None = None,
                 engine_config: EngineConfig | None = None, index: CatalogueIndex | None = None,
                 embedder: str = DEFAULT_EMBEDDER, store: str | Path = "vectorstore", chroma_host: str | None = None,
                 prompts: PromptConfig | None = None, generation: GenerationConfig | None = None, cache=True,
                 progress: bool = False):
        """
        Args:
            data: a PreparedDataset or its folder.
            strategy: ``fs``, ``zcot`` or ``fscot`` (:data:`agentrec.llm.prompts.STRATEGIES`).
            engine: an engine name (``hf``, the default; ``openai``, ``vllm``, ``langchain``) made from
                ``engine_config``, or an engine object (anything with the :class:`~agentrec.llm.Engine`
                interface).
            model: the engine's model (``smollm2``, a hub id or a folder...); a shortcut for
                ``engine_config.model``, for an engine given by name.
            engine_config: the engine's settings (:class:`~agentrec.llm.EngineConfig`: device, batch
                size, base URL, tensor parallelism...), as on the command line.
            index: a :class:`~agentrec.retrieval.index.CatalogueIndex`; default: built (or reused) from
                ``embedder`` in ``store`` (a folder) or on the Chroma server ``chroma_host``.
            prompts: what goes into the prompts (:class:`~agentrec.llm.prompts.PromptConfig`).
            generation: sampling and chunking (:class:`~agentrec.pipelines.predict.GenerationConfig`).
            cache: the generation cache: True for the default file, a path, a GenerationCache, or False.
            progress: progress bars while the index is built.

        The templates are checked before any model loads, and the index is built (or reused) here,
        so that a store that does not fit fails now rather than after generating.
        """
        self.prompts = prompts or PromptConfig()
        self.plan = validate_strategy(strategy, self.prompts)  # a broken template fails before any model loads
        self.dataset = _as_dataset(data)
        if model is not None:
            if not (engine is None or isinstance(engine, str)):
                raise UsageError("model= names the model of an engine made by name; an engine object has its own")
            engine_config = dataclasses.replace(engine_config or EngineConfig(), model=model)
        self.engine = resolve_engine(engine, engine_config)
        self.generation = generation or GenerationConfig()
        self.cache = open_cache(cache)
        if index is None:
            index = CatalogueIndex.build(self.dataset, embedder, store=store, chroma_host=chroma_host,
                                         progress=progress)
        self.index = index
        self._catalogue = _Catalogue(self.dataset)

    def __repr__(self) -> str:
        return (f"LLMRecommender({self.dataset.name!r}, strategy={self.plan.name!r}, "
                f"engine={getattr(self.engine, 'fingerprint', self.engine)!r})")

    def candidates(self, histories, k: int = 10) -> Candidates:
        """The grounded candidates of each history, with the raw answers, parsed titles and token counts.

        Returns:
            :class:`~agentrec.pipelines.predict.Candidates`; row ``i`` is ``histories[i]``.
        """
        ids = self._catalogue.histories(histories)
        k = min(_check_k(k), self.dataset.n_items)
        builder = PromptBuilder(self.dataset, self.prompts, samples=_query_samples(ids), engine=self.engine)
        return generate_candidates(builder, self.plan, self.engine, self.index, k=k, generation=self.generation,
                                   cache=self.cache)

    def recommend(self, histories, k: int = 10) -> list[list[Recommendation]]:
        """The ``k`` catalogue items nearest to the title the LLM writes for each history.

        Args:
            histories: a list of histories, each a list of original item ids, oldest first.
            k: items per history (at most the catalogue's size).

        Returns:
            One list per history, in order, best first; ``score`` = 1 - cosine distance between the
            generated title and the item (higher is better). An answer with no parseable title gives
            an empty list (``candidates(...).raw`` shows what the model wrote).
        """
        found = self.candidates(histories, k)
        return [[self._catalogue.recommendation(int(item), 1.0 - float(distance))
                 for item, distance in zip(ids, distances) if item > 0]
                for ids, distances in zip(found.item_ids, found.distances)]
