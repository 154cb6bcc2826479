"""One way to train a run: a spec (model, SemSR variant, embedder, signals, settings) and one function.

``agentrec train``, ``agentrec compare``, the Python API (:func:`agentrec.train`) and the benchmarks
all build, wrap and train a model through :func:`train_run` (or :func:`train_or_reuse`, which keys
a run folder by the spec and the dataset's fingerprint and trains only when no finished run is there).

The recipe, in order: seed torch (initial weights follow the seed), build the model from its Config
(config file < ``--set`` < ``--embedding-size``), load the LLM item table when a SemSR variant asks
for one (the embedder's cache makes a second call free), wrap the model (SemSR-I: initialise its item
table; SemSR-F: :class:`~agentrec.models.semantic.SemanticFusion`), train with early stopping on
validation, write the run folder, and draw its learning curve (``RUN/learning_curve.png``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agentrec.core.config import check_model_config, jsonable, merge_into, parse_setting, read_config_file
from agentrec.core.errors import UsageError
from agentrec.models import MODELS
from agentrec.models.semantic import SemanticFusion, semantic_init
from agentrec.pipelines import plots
from agentrec.retrieval.embedders import DEFAULT_EMBEDDER, item_embeddings
from agentrec.signals.store import load_signals
from agentrec.training import distributed
from agentrec.training.runs import LEARNING_CURVE_FILE, RUN_FILE, WEIGHTS_FILE, RunInfo, read_run, train_popularity
from agentrec.training.trainer import TrainConfig, set_seed, train_model

logger = logging.getLogger(__name__)

VARIANTS = {None: "plain", "init": "SemSR-I", "fusion": "SemSR-F"}


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides what a run learns (not where it is written).

    Attributes:
        model: a name from :data:`agentrec.models.MODELS` (``pop``, ``gru4rec``, ``narm``, ``srgnn``,
            ``niser``, ``msgat``).
        variant: ``None`` (the plain model), ``"init"`` (SemSR-I) or ``"fusion"`` (SemSR-F).
        embedder: the item-text embedder of a SemSR variant (``minilm``, ``smollm2``, ``st:ID``, ``hf:ID``).
        signals: LaMAR signals appended to the item texts of a SemSR variant, ``SET`` or ``SET:aspect,aspect``.
        train: training settings (epochs, batch size, learning rate, early stopping...).
        model_settings: the model Config's fields to change (``{"sigma": 16}``); unknown names are errors.
    """

    model: str
    variant: str | None = None
    embedder: str = DEFAULT_EMBEDDER
    signals: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    model_settings: dict = field(default_factory=dict)

    def __post_init__(self):
        MODELS.entry(self.model)  # an unknown model is a UsageError listing the known ones
        if self.variant not in VARIANTS:
            raise UsageError(f"--semantic {self.variant!r}: choose init (SemSR-I) or fusion (SemSR-F)")
        if self.variant and self.model == "pop":
            raise UsageError("--semantic needs a session model; pop (the popularity floor) has no item table")
        if self.signals and not self.variant:
            raise UsageError("--signals augments the LLM item texts of --semantic init|fusion; add --semantic")

    def describe(self) -> str:
        variant = f" + {VARIANTS[self.variant]} ({self.embedder})" if self.variant else ""
        return f"{self.model}{variant}"

    def key(self, dataset) -> str:
        """A short digest of the spec and the dataset's fingerprint: one run folder per distinct run."""
        spec = jsonable(asdict(self))
        if not self.variant:  # the embedder and signals only matter to a SemSR variant
            spec.pop("embedder"), spec.pop("signals")
        if spec["train"].get("negatives") is None:  # the full softmax: keys of runs made before the option stay
            spec["train"].pop("negatives", None)
        if "device" in spec["train"]:  # where it trains is not what it is: a GPU's checkpoint serves a CPU rerun
            spec["train"]["device"] = "auto"  # (and keys of runs made with the default stay as they were)
        if self.model == "pop":  # the popularity floor is counted, not trained
            spec = {"model": "pop", "exclude_history": self.train.exclude_history}
        payload = {"spec": spec, "dataset": dataset.fingerprint}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def build_train_config(config_path, flags: dict) -> TrainConfig:
    """Training settings: the config file's ``train`` section, then the flags that are not None."""
    section = read_config_file(config_path).get("train", {})
    return merge_into(TrainConfig, section, flags, where="train settings", source=f"{config_path}: train")


def build_model_config(name: str, config_path=None, *, embedding_size: int | None = None, settings=()):
    """Model ``name``'s Config from the config file, ``--set NAME=VALUE`` and ``--embedding-size``, range-checked.

    Needs no dataset, so a bad value is found before any data is read. ``settings`` holds
    ``NAME=VALUE`` strings or is a dict of already-typed values.
    """
    cls = MODELS.load(name)
    section = read_config_file(config_path).get("model", {})
    if isinstance(settings, dict):
        flags = dict(settings)
        spelled = {}
    else:
        flags = dict(parse_setting(s, cls.Config) for s in settings)
        spelled = {setting: f"--set {setting}" for setting in flags}
    if embedding_size is not None:
        flags["embedding_size"] = embedding_size
        spelled.pop("embedding_size", None)  # the flag wins over --set: name the flag
    return merge_into(cls.Config, section, flags, where=f"{name} settings", source=f"{config_path}: model",
                      spelled=spelled, check=check_model_config)


def build_model(name: str, dataset, config_path=None, *, embedding_size: int | None = None, settings=()):
    """A fresh, untrained model ``name`` sized for ``dataset``'s catalogue."""
    model_config = build_model_config(name, config_path, embedding_size=embedding_size, settings=settings)
    return MODELS.load(name)(dataset.n_items, model_config)


def load_llm_table(dataset, embedder: str = DEFAULT_EMBEDDER, *, template=None, signals=None,
                   progress: bool = True, device: str = "cpu") -> np.ndarray:
    """``(n_items + 1, d)`` LLM item embeddings (row 0 zero), cached in the dataset folder; embedded on ``device``."""
    return item_embeddings(dataset, embedder, template=template, signals=signals, progress=progress, device=device)


def train_run(spec: RunSpec, dataset, out: str | Path, *, config_path=None, progress: bool = True,
              llm_table: np.ndarray | None = None) -> RunInfo:
    """Build, wrap and train the run ``spec`` describes on ``dataset``; write the run folder ``out``.

    Args:
        spec: the run to make.
        dataset: a :class:`~agentrec.data.dataset.PreparedDataset`.
        out: the run folder (written atomically; an existing run there is replaced).
        config_path: a config file whose ``model`` section sits under ``spec.model_settings``.
        progress: progress bars.
        llm_table: the LLM item table, when the caller already holds it (compare shares one table).

    Returns:
        The run record (validation metrics of the selected epoch; test is never computed here). A
        trained model's folder also gets ``learning_curve.png`` (:func:`write_learning_curve`).

    Run as a rank of a torchrun job (``agentrec train --nproc N``, ``torchrun -m agentrec train``), this joins the
    job's process group (gloo on the CPU, NCCL on CUDA), trains data-parallel, and leaves the group when done or
    failed; rank 0 writes the run and its curve, and every rank returns once they are on disk
    (:mod:`agentrec.training.distributed`).
    """
    world = distributed.launched_world()
    if spec.model == "pop":
        if world is not None and world.size > 1:
            raise UsageError("pop (the popularity floor) is counted, not trained: build it in one process, "
                             "without --nproc or torchrun")
        return train_popularity(dataset, out, exclude_history=spec.train.exclude_history)
    with distributed.process_group(world, spec.train.device) as world:
        info = _train_network(spec, dataset, out, config_path=config_path, progress=progress, llm_table=llm_table,
                              world=world)
        if world is None or world.main:
            write_learning_curve(out, info, dataset_name=dataset.name)
        distributed.barrier(world)  # the other ranks return once the run is on disk
    return info


def _train_network(spec: RunSpec, dataset, out, *, config_path, progress: bool, llm_table, world) -> RunInfo:
    """:func:`train_run` for a session model, in one process or as one rank of ``world``."""
    main = world is None or world.main
    set_seed(spec.train.seed)  # before the model exists: initial weights follow the seed too
    net = build_model(spec.model, dataset, config_path, settings=dict(spec.model_settings))
    described = None
    if spec.variant is not None:
        signal_texts, signal_info = (load_signals(spec.signals, dataset) if spec.signals else (None, None))
        if llm_table is None:
            with distributed.rank_zero_first(world):  # rank 0 fills the dataset's embedding cache, the others read it
                llm_table = load_llm_table(dataset, spec.embedder, signals=signal_texts, progress=progress and main,
                                           # the training device (auto: a GPU if any; a rank's own GPU)
                                           device=str(world.device) if world is not None else spec.train.device)
        if spec.variant == "init":
            described = semantic_init(net, llm_table)
        else:
            net = SemanticFusion(net, llm_table)
            described = net.fusion_dict()
        described["embedder"] = spec.embedder
        if signal_info:
            described["signals"] = signal_info
        logger.info("semantic variant: %s", described)
    return train_model(net, dataset, spec.train, out=out, progress=progress, semantic=described, world=world)


def write_learning_curve(run: str | Path, info: RunInfo, *, dataset_name: str | None = None) -> Path | None:
    """``RUN/learning_curve.png``: training loss and the validation selection metric per epoch, best epoch marked.

    Drawn from ``info.history`` after the run folder is saved, and written atomically on its own: a
    failure to draw is a logged warning, and the saved run stands. Returns the file, or None when there
    is no history (the popularity floor) or drawing failed.
    """
    if not info.history:
        return None
    path = Path(run) / LEARNING_CURVE_FILE
    metric = info.train_config.get("select_metric", "recall@100")
    samples = info.extra.get("train_samples")
    variant = f" + SemSR-{info.semantic['mode'][0].upper()}" if info.semantic.get("mode") else ""  # init, fusion
    title = (f"{info.model}{variant} on {dataset_name or info.dataset.get('name')}"
             + (f", {samples:,} training samples" if samples else "")
             + f": best epoch {info.best_epoch} of {len(info.history)} by validation {metric}")
    with plots.best_effort(path):
        plots.plot_learning_curve(info.history, path, metric=metric, best_epoch=info.best_epoch, title=title)
        return path
    return None


def train_or_reuse(spec: RunSpec, dataset, runs_dir: str | Path, *, name: str | None = None, progress: bool = True,
                   llm_table: np.ndarray | None = None) -> tuple[Path, bool]:
    """The run folder ``runs_dir/NAME-KEY`` for ``spec`` on ``dataset``: reused when finished, else trained.

    Returns:
        ``(folder, reused)``.
    """
    folder = Path(runs_dir) / f"{name or spec.model}-{spec.key(dataset)}"
    if (folder / RUN_FILE).exists() and (folder / WEIGHTS_FILE).exists():
        read_run(folder)  # a damaged record is named now, not later
        logger.info("reusing %s (%s)", folder, spec.describe())
        return folder, True
    logger.info("training %s into %s", spec.describe(), folder)
    train_run(spec, dataset, folder, progress=progress, llm_table=llm_table)
    return folder, False


def replace_train(spec: RunSpec, **changes) -> RunSpec:
    """``spec`` with some training settings changed."""
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **changes))
