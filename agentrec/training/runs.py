"""Run folders: what a trained model leaves on disk, and the one place test metrics are computed.

A run folder holds::

    run.json              model name and config, training config, dataset name/path/fingerprint,
                          validation history, best epoch, and (after ``evaluate``) test metrics
    weights.safetensors   the model's tensors (safetensors: loading never unpickles code)
    learning_curve.png    loss and the validation metric per epoch (drawn by ``pipelines.train.train_run`` after the
                          run is saved; the popularity floor has none)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

from agentrec.core import fsutil
from agentrec.core.devices import resolve_device
from agentrec.core.errors import DamagedFileError, MismatchError, NotFoundError, TrainingDivergedError, UsageError
from agentrec.core.metrics import DEFAULT_KS, RankingResult, rank_samples
from agentrec.core.ranking import rank_products
from agentrec.data.dataset import PreparedDataset
from agentrec.models import model_class
from agentrec.models.popularity import Popularity
from agentrec.models.semantic import FusionConfig, SemanticFusion

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
WEIGHTS_FILE = "weights.safetensors"
LEARNING_CURVE_FILE = "learning_curve.png"  # drawn after save_run, so not part of the atomic swap
# all a run folder holds; save_run replaces it whole
RUN_ENTRIES = frozenset({RUN_FILE, WEIGHTS_FILE, LEARNING_CURVE_FILE})


class DatasetMismatchError(MismatchError):
    """A run is being used with a dataset other than the one it was trained on."""


@dataclass
class RunInfo:
    model: str
    model_config: dict
    train_config: dict
    dataset: dict  # name, path, fingerprint, n_items
    history: list = field(default_factory=list)  # one dict per epoch: loss, valid metrics, seconds
    best_epoch: int | None = None
    valid: dict = field(default_factory=dict)  # metrics of the selected checkpoint on validation
    test: dict = field(default_factory=dict)  # filled by evaluate, never during training
    semantic: dict = field(default_factory=dict)  # SemSR variant: mode (init/fusion), embedder, ...
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=float) + "\n"


def save_run(out: str | Path, info: RunInfo, state: dict) -> Path:
    """Write ``run.json`` and the tensors of ``state`` (name -> tensor) into the run folder ``out``.

    The folder is built aside and swapped in whole (:func:`agentrec.core.fsutil.atomic_dir`): a killed
    write leaves the previous run or this one, never new weights beside an old ``run.json``. A
    previous run in ``out`` is replaced, as before; a folder holding anything else is refused.

    Raises:
        UsageError: ``out`` is a file, or a folder holding files that are not part of a run.
    """
    from safetensors.torch import save_file

    out = Path(out)
    fsutil.recover(out)
    fsutil.refuse_foreign(out, RUN_ENTRIES, what="a run folder")
    with fsutil.atomic_dir(out) as temp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(temp / WEIGHTS_FILE))
        fsutil.test_pause(f"wrote {WEIGHTS_FILE}")
        (temp / RUN_FILE).write_text(info.to_json(), encoding="utf-8")
    return out


# the JSON type of each run.json key (every RunInfo field is a key); the first four have no default
_RUN_TYPES = {"model": str, "model_config": dict, "train_config": dict, "dataset": dict, "history": list,
             "best_epoch": (int, type(None)), "valid": dict, "test": dict, "semantic": dict, "extra": dict}
_REQUIRED_KEYS = ("model", "model_config", "train_config", "dataset")
_RETRAIN = "train the run again with 'agentrec train' (or restore the file)"


def read_run(run: str | Path) -> RunInfo:
    """The record of run folder ``run``.

    Raises:
        NotFoundError: ``run`` holds no ``run.json``.
        DamagedFileError: ``run.json`` is not JSON, or a key is missing, unknown or of the wrong type;
            the message names the file and the line/column or key.
    """
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise NotFoundError(f"{run} is not a run folder (no {RUN_FILE}); train one with 'agentrec train'")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM from a hand edit is read as one
    except json.JSONDecodeError as error:
        raise DamagedFileError(f"{path.resolve()}:{error.lineno}:{error.colno}: not valid JSON ({error.msg}); "
                               f"{_RETRAIN}") from None
    except UnicodeDecodeError as error:
        raise DamagedFileError(f"{path.resolve()}: not UTF-8 text (byte {error.start}); {_RETRAIN}") from None
    if not isinstance(data, dict):
        raise DamagedFileError(f"{path.resolve()}: expected a JSON object, found {type(data).__name__}; {_RETRAIN}")
    for key in _REQUIRED_KEYS:
        if key not in data:
            raise DamagedFileError(f"{path.resolve()}: missing key {key!r}; {_RETRAIN}")
    known = [f.name for f in fields(RunInfo)]
    for key, value in data.items():
        if key not in known:
            raise DamagedFileError(f"{path.resolve()}: unknown key {key!r} (known: {', '.join(known)}); "
                                   f"{_RETRAIN}")
        expected = _RUN_TYPES.get(key, object)
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not object):
            raise DamagedFileError(f"{path.resolve()}: key {key!r} holds {type(value).__name__} {value!r:.40}, "
                                   f"not {_json_type(expected)}; {_RETRAIN}")
    return RunInfo(**data)


def _json_type(types) -> str:
    names = {str: "a string", dict: "an object", list: "a list", int: "an integer", type(None): "null"}
    return " or ".join(names[t] for t in (types if isinstance(types, tuple) else (types,)))


def check_dataset(info: RunInfo, dataset) -> None:
    if info.dataset.get("fingerprint") != dataset.fingerprint:
        raise DatasetMismatchError(
            f"this run was trained on dataset {info.dataset.get('name')!r} "
            f"(fingerprint {str(info.dataset.get('fingerprint'))[:12]}, {info.dataset.get('path')}) "
            f"but the given dataset is {dataset.name!r} (fingerprint {dataset.fingerprint[:12]}, {dataset.path}); "
            "item ids would not line up. Evaluate it on the dataset it was trained on, or train again."
        )


def load_model(run: str | Path, dataset, *, device: str = "cpu"):
    """Rebuild the model of a run folder for ``dataset`` (checked against the run's fingerprint).

    ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``; see :func:`agentrec.core.devices.resolve_device`)
    is where the weights are loaded and the model runs; checkpoints are device-free, so any run loads anywhere.

    Raises:
        DamagedFileError: ``weights.safetensors`` is missing a tensor, truncated or corrupted, or does
            not fit the model ``run.json`` describes; the message names the file and the tensor.
        TrainingDivergedError: a tensor holds NaN or infinite values (the run diverged in training),
            so its scores would be meaningless.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file


    target = resolve_device(device)  # a missing GPU fails before anything is read
    info = read_run(run)
    check_dataset(info, dataset)
    run_file = (Path(run) / RUN_FILE).resolve()
    try:
        cls = model_class(info.model)
    except ValueError as error:
        raise DamagedFileError(f"{run_file}: key 'model': {error}; {_RETRAIN}") from None
    try:
        model = cls.from_config(info.model_config, dataset) if hasattr(cls, "from_config") else cls(dataset.n_items)
    except TypeError as error:  # a key the model's Config does not have
        raise DamagedFileError(f"{run_file}: key 'model_config' does not fit model {info.model!r} ({error}); "
                               f"{_RETRAIN}") from None
    weights = (Path(run) / WEIGHTS_FILE).resolve()
    if not weights.exists():
        raise NotFoundError(f"{weights} is missing: the run folder is incomplete; {_RETRAIN}")
    if not weights.is_file():
        raise DamagedFileError(f"{weights} is not a file; {_RETRAIN}")
    try:
        state = load_file(str(weights))  # on the CPU (checked there), then the model moves to the device
    except (SafetensorError, OSError) as error:
        raise DamagedFileError(f"{weights}: truncated or corrupted ({error}); {_RETRAIN}") from None
    if info.model != "pop":  # the popularity floor is counted, not trained: nothing to diverge
        _check_finite_weights(state, weights)
    try:
        if info.semantic.get("mode") == "fusion":
            model = SemanticFusion(model, state["llm_items"].cpu().numpy(),
                                   FusionConfig(output_size=info.semantic.get("output_size")))
        model.load_state_dict(state)
    except KeyError as error:
        raise DamagedFileError(f"{weights}: no tensor {error.args[0]!r}, which model {info.model!r} needs; "
                               f"{_RETRAIN}") from None
    except RuntimeError as error:  # torch: missing/unexpected keys or shapes that do not fit the config
        reason = " ".join(str(error).split())
        raise DamagedFileError(f"{weights}: does not fit the model in {run_file.name} ({reason[:300]}); "
                               f"{_RETRAIN}") from None
    if hasattr(model, "to"):
        model.to(target)
    if hasattr(model, "eval"):
        model.eval()
    return info, model


def _check_finite_weights(state: dict, weights: Path) -> None:
    """Refuse weights with NaN or infinite values: their scores would rank nothing meaningfully."""
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise TrainingDivergedError(
                    f"{weights.parent}: tensor {name!r} in {weights.name} holds {bad} NaN or infinite values "
                    f"of {tensor.numel()}: the run diverged in training (or the file is damaged), so it cannot be "
                    "evaluated. Train it again with a lower --lr")


def score_fn(model, samples):
    """Bind a model to a split: index array -> score chunk."""
    return lambda index: model.score_chunk(samples, index)


def evaluate_model(model, dataset, split: str = "valid", *, ks=DEFAULT_KS, exclude_history: bool = False,
                   memory_budget_mb: float = 256.0, progress: bool = False, precision: str | None = None,
                   threads: int | None = None) -> RankingResult:
    """Rank every target of ``split`` against the full catalogue.

    Args:
        precision: None ranks the model's own scores (``score_chunk``), as training's validation does.
            ``"fp32"`` or ``"bf16"`` rank a model whose scores are products (``scores_are_products``:
            every session model here) through :func:`agentrec.core.ranking.rank_products`: session queries
            times the item table, a chunk at a time, with exact ranks in both precisions (bf16 re-scores its
            near-ties). Any other model (the popularity floor, a re-ranker) is ranked from its scores;
            ``result.extra["precision"]`` says which path ran ("scores" for that one).
        threads: torch threads (and counting threads on the product path); None keeps the current setting.

    The model's scores are computed where the model is (its device). The product path ranks on the CPU
    (:func:`~agentrec.core.ranking.rank_products` is CPU-only): a model on a GPU computes its session
    queries there, and they are moved to the CPU, with the item table, for the product and the ranks.
    """
    if precision not in (None, "fp32", "bf16"):
        raise UsageError(f"precision must be fp32 or bf16, not {precision!r}")
    samples = dataset.split(split)
    if precision is not None and getattr(model, "scores_are_products", False):
        import torch

        with torch.no_grad():
            table = model.scoring_table().cpu()  # a no-op for a model on the CPU

        def queries(index):
            return model.query_chunk(samples, index).cpu()  # computed on the model's device, ranked on the CPU

        return rank_products(queries, table, samples, dataset.n_items,
                             precision=precision, threads=threads, ks=ks, exclude_history=exclude_history,
                             memory_budget_mb=memory_budget_mb, progress=progress, desc=split)
    result = _with_threads(threads, lambda: rank_samples(
        score_fn(model, samples), samples, dataset.n_items, ks=ks, exclude_history=exclude_history,
        memory_budget_mb=memory_budget_mb, progress=progress, desc=f"{split}"))
    result.extra["precision"] = "scores"
    return result


def _with_threads(threads: int | None, work):
    """``work()`` with ``threads`` torch threads (None: as they are)."""
    if not threads:
        return work()
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return work()
    finally:
        torch.set_num_threads(before)


def train_popularity(dataset, out: str | Path, *, ks=DEFAULT_KS, exclude_history: bool = False) -> RunInfo:
    """Fit the popularity floor and record its validation metrics (it has nothing to select)."""

    model = Popularity(dataset.n_items).fit(dataset.train)
    valid = evaluate_model(model, dataset, "valid", ks=ks, exclude_history=exclude_history)
    info = RunInfo(
        model="pop",
        model_config={},
        train_config={"exclude_history": exclude_history},
        dataset=dataset_ref(dataset),
        valid=valid.metrics,
    )
    save_run(out, info, model.state_dict())
    return info


def dataset_ref(dataset) -> dict:
    return {
        "name": dataset.name,
        "path": str(Path(dataset.path).resolve()) if dataset.path else None,
        "fingerprint": dataset.fingerprint,
        "n_items": dataset.n_items,
        "protocol": dataset.stats.get("protocol", {}).get("name"),
    }


def evaluate_run(run: str | Path, *, data: str | Path | None = None, split: str = "test", ks=DEFAULT_KS,
                 exclude_history: bool | None = None, memory_budget_mb: float = 256.0,
                 progress: bool = False, dataset: PreparedDataset | None = None,
                 model=None, precision: str = "fp32", threads: int | None = None,
                 device: str = "cpu") -> tuple[RunInfo, RankingResult]:
    """Evaluate the run's selected checkpoint on ``split`` (test by default) and record the result.

    ``dataset`` (already loaded) takes the place of ``data`` (its folder; default: the one the run
    records), and ``model`` (already loaded from this run by :func:`load_model`) saves loading it again.
    ``precision`` (``"fp32"`` or ``"bf16"``) is the product's precision; both give the same exact ranks
    (see :func:`evaluate_model`); ``threads`` are torch threads (None: as they are). ``device`` (``auto``,
    ``cpu``, ``cuda``, ``cuda:N``) is where the loaded model runs; the product and the ranks stay on the CPU.
    Test metrics are written into ``run.json`` with the precision used; validation metrics are only returned.
    """
    if precision not in ("fp32", "bf16"):
        raise UsageError(f"precision must be fp32 or bf16, not {precision!r}")
    resolve_device(device)  # a malformed name or a missing GPU fails before anything is read

    info = read_run(run)
    if dataset is None:
        data_path = data or info.dataset.get("path")
        if data_path is None:
            raise UsageError("the run does not record its dataset path; pass --data")
        dataset = PreparedDataset.load(data_path)
    if model is None:
        info, model = load_model(run, dataset, device=device)
    else:
        check_dataset(info, dataset)
    if exclude_history is None:
        exclude_history = bool(info.train_config.get("exclude_history", False))
    result = evaluate_model(model, dataset, split, ks=ks, exclude_history=exclude_history,
                            memory_budget_mb=memory_budget_mb, progress=progress, precision=precision, threads=threads)
    if split == "test":
        info.test = {**result.metrics, "samples": result.n, "protocol": result.describe(), "seconds": result.seconds,
                     "precision": result.extra["precision"]}
        fsutil.atomic_write_text(Path(run) / RUN_FILE, info.to_json())
    return info, result
