"""Run folders: what a trained model leaves on disk, and the one place test metrics are computed.

A run folder holds::

    run.json              model name and config, training config, dataset name/path/fingerprint,
                          validation history, best epoch, and (after ``evaluate``) test metrics
    weights.safetensors   the model's tensors (safetensors: loading never unpickles code)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from agentrec.errors import MismatchError

from agentrec.metrics import DEFAULT_KS, RankingResult, rank_samples

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
WEIGHTS_FILE = "weights.safetensors"


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
    """Write ``run.json`` and the tensors of ``state`` (name -> tensor)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / WEIGHTS_FILE))
    (out / RUN_FILE).write_text(info.to_json())
    return out


def read_run(run: str | Path) -> RunInfo:
    path = Path(run) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{run} is not a run folder (no {RUN_FILE}); train one with 'agentrec train'")
    return RunInfo(**json.loads(path.read_text()))


def check_dataset(info: RunInfo, dataset) -> None:
    if info.dataset.get("fingerprint") != dataset.fingerprint:
        raise DatasetMismatchError(
            f"this run was trained on dataset {info.dataset.get('name')!r} "
            f"(fingerprint {str(info.dataset.get('fingerprint'))[:12]}, {info.dataset.get('path')}) "
            f"but the given dataset is {dataset.name!r} (fingerprint {dataset.fingerprint[:12]}, {dataset.path}); "
            "item ids would not line up. Evaluate it on the dataset it was trained on, or train again."
        )


def load_model(run: str | Path, dataset):
    """Rebuild the model of a run folder for ``dataset`` (checked against the run's fingerprint)."""
    from safetensors.torch import load_file

    from agentrec.models import model_class

    info = read_run(run)
    check_dataset(info, dataset)
    cls = model_class(info.model)
    model = cls.from_config(info.model_config, dataset) if hasattr(cls, "from_config") else cls(dataset.n_items)
    state = load_file(str(Path(run) / WEIGHTS_FILE))
    if info.semantic.get("mode") == "fusion":
        from agentrec.models.semantic import FusionConfig, SemanticFusion

        model = SemanticFusion(model, state["llm_items"].numpy(),
                               FusionConfig(output_size=info.semantic.get("output_size")))
    model.load_state_dict(state)
    if hasattr(model, "eval"):
        model.eval()
    return info, model


def score_fn(model, samples):
    """Bind a model to a split: index array -> score chunk."""
    return lambda index: model.score_chunk(samples, index)


def evaluate_model(model, dataset, split: str = "valid", *, ks=DEFAULT_KS, exclude_history: bool = False,
                   memory_budget_mb: float = 256.0, progress: bool = False) -> RankingResult:
    samples = dataset.split(split)
    return rank_samples(score_fn(model, samples), samples, dataset.n_items, ks=ks, exclude_history=exclude_history,
                        memory_budget_mb=memory_budget_mb, progress=progress, desc=f"{split}")


def train_popularity(dataset, out: str | Path, *, ks=DEFAULT_KS, exclude_history: bool = False) -> RunInfo:
    """Fit the popularity floor and record its validation metrics (it has nothing to select)."""
    from agentrec.models.popularity import Popularity

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
                 progress: bool = False) -> tuple[RunInfo, RankingResult]:
    """Evaluate the run's selected checkpoint on ``split`` (test by default) and record the result."""
    from agentrec.data.dataset import PreparedDataset

    info = read_run(run)
    data_path = data or info.dataset.get("path")
    if data_path is None:
        raise ValueError("the run does not record its dataset path; pass --data")
    dataset = PreparedDataset.load(data_path)
    info, model = load_model(run, dataset)
    if exclude_history is None:
        exclude_history = bool(info.train_config.get("exclude_history", False))
    result = evaluate_model(model, dataset, split, ks=ks, exclude_history=exclude_history,
                            memory_budget_mb=memory_budget_mb, progress=progress)
    if split == "test":
        info.test = {**result.metrics, "samples": result.n, "protocol": result.describe(), "seconds": result.seconds}
        (Path(run) / RUN_FILE).write_text(info.to_json())
    return info, result
