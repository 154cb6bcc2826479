"""Train a session model: Adam, step learning-rate decay, early stopping on a validation metric, optionally
a wall-clock budget and bf16 training steps (``TrainConfig.time_budget_s``, ``precision``).

The checkpoint kept is the one with the best validation metric; test is never looked at here
(``agentrec evaluate`` does that, once, on the kept checkpoint).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agentrec.core.devices import DEVICE_NAME, DEVICES_HELP, resolve_device
from agentrec.core.errors import TrainingDivergedError, UsageError
from agentrec.core.metrics import DEFAULT_KS
from agentrec.core.options import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, SEED, OptionError, Range
from agentrec.training import distributed
from agentrec.training.losses import training_loss
from agentrec.training.runs import RunInfo, dataset_ref, save_run

logger = logging.getLogger(__name__)

METRIC_FAMILIES = ("recall", "mrr", "ndcg")  # what evaluate_model reports at every K
PRECISIONS = ("fp32", "bf16", "auto")  # of the training steps; validation and evaluation always score in fp32


@dataclass
class TrainConfig:
    """Training settings; defaults follow SR-GNN / NISER as SemSR uses them."""

    epochs: int = 30  # upper bound; early stopping usually ends sooner
    batch_size: int = 100  # SemSR: mini-batch size 100
    lr: float = 1e-3
    weight_decay: float = 1e-5  # L2 penalty (SR-GNN: 1e-5)
    lr_step: int = 3  # decay the learning rate every lr_step epochs ...
    lr_gamma: float = 0.1  # ... by this factor (SR-GNN); 1.0 keeps it constant
    select_metric: str = "recall@100"  # validation metric for early stopping (SemSR: Recall@100)
    patience: int = 3  # epochs without improvement before stopping
    exclude_history: bool = False  # remove history items from the candidates when validating
    seed: int = 0
    threads: int = 1  # torch intra-op threads; one is often fastest on a shared 2-core machine
    eval_memory_mb: float = 256.0
    max_train_samples: int | None = None  # train on a seeded subsample (quick experiments)
    bucket: int = 50  # sort each run of `bucket` batches by history length (less padding); 0 = plain shuffle
    # wall-clock cap on training and validating: no epoch starts once this many seconds have passed since the
    # first one started (the epoch running when it passes finishes, and the best-on-validation epoch is kept);
    # None = no cap. Wall time depends on the machine and its load, so a run the cap stops may differ from one
    # it does not: run.json records why training stopped (extra.stopped_by).
    time_budget_s: float | None = None
    # bf16: the forward pass of each training step under torch.autocast (matrix products in bfloat16, the loss
    # in fp32; weights, gradients and the optimiser stay fp32). Measured on NISER, MovieLens-100K, one thread: half
    # the time of an fp32 epoch on an AMD EPYC with AVX-512 BF16, about the same on a Xeon with AMX, and slower on
    # a CPU that has no native bf16 (8x with AVX2 alone). auto: bf16 where the hardware has it (resolve_precision)
    precision: str = "fp32"
    # where the model, its batches and validation run: auto (CUDA when torch sees one, else the CPU), cpu, cuda or
    # cuda:N (agentrec.core.devices.resolve_device). Checkpoints are saved from CPU copies, so any device loads them
    device: str = "auto"
    # sampled softmax (agentrec.training.losses): each batch is scored against its own targets and this many items
    # drawn uniformly from the catalogue, logQ-corrected, instead of every item; None = the full softmax
    negatives: int | None = None

    def __post_init__(self):
        """Range-check every field before any work; an :class:`OptionError` names the field."""
        for name in ("epochs", "batch_size", "lr_step", "patience", "threads", "max_train_samples"):
            COUNT.check(name, getattr(self, name))
        POSITIVE.check("lr", self.lr)
        NON_NEGATIVE.check("weight_decay", self.weight_decay)
        Range(0, 1, low_open=True, note="1 keeps the learning rate constant").check("lr_gamma", self.lr_gamma)
        POSITIVE.check("eval_memory_mb", self.eval_memory_mb)
        POSITIVE.check("time_budget_s", self.time_budget_s)
        COUNT.check("negatives", self.negatives)
        NON_NEGATIVE_INT.check("bucket", self.bucket)
        SEED.check("seed", self.seed)
        if self.precision not in PRECISIONS:
            raise OptionError("precision", f"must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if not DEVICE_NAME.match(str(self.device).strip().lower()):
            raise OptionError("device", f"must be {DEVICES_HELP}; got {self.device!r}")
        self.device = str(self.device).strip().lower()
        family, _, k = str(self.select_metric).partition("@")
        if family not in METRIC_FAMILIES or not k.isdigit() or int(k) < 1:
            raise OptionError("select_metric", f"must be one of {', '.join(f + '@K' for f in METRIC_FAMILIES)} with "
                                               f"K a whole number >= 1 (e.g. recall@100, mrr@20); got {self.select_metric!r}")
        self.select_metric = f"{family}@{int(k)}"  # recall@020 is the recall@20 that evaluate_model reports


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``fp32`` or ``bf16`` for a :attr:`TrainConfig.precision`: ``auto`` is bf16 on a GPU that supports it and
    on a CPU with native bf16 arithmetic (the ``avx512_bf16`` or ``amx_bf16`` flag), else fp32."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device_type == "cpu" and cpu_has_native_bf16() else "fp32"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux ``/proc/cpuinfo`` flags); False where that cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def set_seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_indices(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: int) -> list[np.ndarray]:
    """Shuffled batches. With ``bucket``, samples of similar history length share a batch, so
    padding (and the time spent on it) shrinks, while batch order stays random."""
    order = rng.permutation(len(lengths))
    if bucket > 1:
        span = batch_size * bucket
        order = np.concatenate([
            chunk[np.argsort(lengths[chunk], kind="stable")]
            for chunk in np.split(order, range(span, len(order), span))
        ])
    batches = np.split(order, range(batch_size, len(order), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def train_model(model, dataset, config: TrainConfig, *, out: str | Path | None = None, progress: bool = True,
                semantic: dict | None = None, world: distributed.World | None = None) -> RunInfo:
    """Train ``model`` on ``dataset.train``, select on ``dataset.valid``, save to ``out``.

    ``world`` (a joined :class:`~agentrec.training.distributed.World`, from ``distributed.process_group``) makes
    this one rank of a data-parallel job: the model is wrapped in DistributedDataParallel, each rank takes its slice
    of every global batch and of validation, and rank 0 alone saves (see :mod:`agentrec.training.distributed`).

    Returns the run record: per-epoch loss, throughput and validation metrics, the best epoch and
    its validation metrics.
    """
    import torch

    if len(dataset.valid) == 0:  # before any work: there would be no epoch to select
        raise UsageError(f"the validation split of dataset {dataset.name!r} ({dataset.path}) is empty, so no epoch "
                         "can be selected; prepare it again with a validation split")
    # before any work: a missing GPU is a UsageError; a rank trains on the device its process group chose
    device = world.device if world is not None else resolve_device(config.device)
    torch.set_num_threads(config.threads)  # per rank, in a data-parallel job
    set_seed(config.seed)
    if world is not None:
        progress = progress and world.main
        torch.manual_seed(config.seed + world.rank)  # dropout masks differ by rank; weights come from rank 0 (DDP)
    rng = np.random.default_rng(config.seed)
    train = dataset.train
    if config.max_train_samples is not None and config.max_train_samples < len(train):
        train = train.subset(np.sort(rng.choice(len(train), config.max_train_samples, replace=False)))
    if world is not None:
        distributed.check_batches(config.batch_size, len(train), world.size)
    model.to(device)  # before the optimiser is built, so it holds the parameters on the device
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    ks = tuple(sorted(set(DEFAULT_KS) | {int(config.select_metric.split("@")[1])}))
    device_type = device.type
    precision = resolve_precision(config.precision, device_type)
    loss_fn = training_loss(model, train, config.negatives, seed=config.seed)  # model.loss when negatives is None
    # a rank computes its slice's loss through DDP, which averages the gradients over the ranks in backward
    step_loss = loss_fn if world is None else distributed.data_parallel(model, loss_fn, world)

    history, best, best_state, best_epoch, stale = [], -math.inf, None, None, 0
    stopped_by = "epochs"  # or "patience", "time budget"
    began = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        batches = batch_indices(np.minimum(train.lengths, model.config.max_history), config.batch_size, rng, config.bucket)
        if world is not None:  # every rank takes a step on every batch: skip one too short to give each a sample
            batches = [index for index in batches if len(index) >= world.size]
        started, started_cpu = time.perf_counter(), time.process_time()
        total_loss, seen = 0.0, 0
        bar = _bar(len(train), f"epoch {epoch}") if progress else None
        for number, index in enumerate(batches, start=1):
            local = index if world is None else index[world.rank::world.size]  # a rank's slice of the global batch
            batch = model.make_batch(train, local, device=device)
            try:
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = step_loss(batch)
            except TrainingDivergedError as error:  # a model's own check (e.g. a NaN attention parameter)
                if world is None:
                    raise TrainingDivergedError(f"training diverged at epoch {epoch}, batch {number} of "
                                                f"{len(batches)} (lr {config.lr:g}): {error}") from None
                logger.error("rank %d: %s", world.rank, error)
                loss = torch.tensor(math.nan)  # every rank meets it in the summed loss below, and stops there
            value = loss.item()
            if world is not None:  # the global batch's mean loss, the same number on every rank
                value = float(distributed.all_sum([value * len(local)], world)[0]) / len(index)
            if not math.isfinite(value):  # before the step: the weights that made it are never kept
                if bar is not None:
                    bar.close()
                raise TrainingDivergedError(
                    f"training diverged: the loss is {value} at epoch {epoch}, batch {number} of {len(batches)} "
                    f"(lr {config.lr:g}); nothing was saved. Lower --lr (the default is {TrainConfig.lr:g}) "
                    "and train again")
            optimizer.zero_grad(set_to_none=True)
            if world is None:
                loss.backward()
            else:  # weighted so that DDP's average over ranks is the gradient of the global batch's mean loss
                (loss * (world.size * len(local) / len(index))).backward()
            optimizer.step()
            total_loss += value * len(index)
            seen += len(index)
            if bar is not None:
                bar.update(len(index))
                bar.set_postfix(loss=f"{value:.3f}", sps=f"{seen / (time.perf_counter() - started):.0f}")
        train_seconds = time.perf_counter() - started
        train_cpu_seconds = time.process_time() - started_cpu
        if world is not None:  # the CPU time of every rank: samples per CPU second stay comparable
            train_cpu_seconds = float(distributed.all_sum([train_cpu_seconds], world)[0])
        scheduler.step()
        model.eval()
        _check_finite(model, config, epoch, bar)  # a finite last loss can still leave non-finite weights
        try:
            valid = distributed.evaluate_sharded(model, dataset, "valid", world, ks=ks,
                                                 exclude_history=config.exclude_history,
                                                 memory_budget_mb=config.eval_memory_mb)
        except TrainingDivergedError as error:
            raise TrainingDivergedError(f"training diverged: validating after epoch {epoch} "
                                        f"(lr {config.lr:g}): {error}") from None
        if valid.extra.get("nonfinite_targets"):
            # non-finite scores rank last, so their metric is low, but never select such an epoch
            if bar is not None:
                bar.close()
            raise TrainingDivergedError(
                f"training diverged: after epoch {epoch} the model gives {valid.extra['nonfinite_targets']} of "
                f"{valid.n} validation targets a non-finite score (lr {config.lr:g}); nothing was saved. "
                f"Lower --lr (the default is {TrainConfig.lr:g}) and train again")
        score = valid.metrics[config.select_metric]
        row = {
            "epoch": epoch,
            "loss": total_loss / seen,
            "train_seconds": train_seconds,
            "samples_per_second": seen / train_seconds,
            # CPU time of this process: on a shared machine it moves far less with the load than wall time
            "train_cpu_seconds": train_cpu_seconds,
            "samples_per_cpu_second": seen / max(train_cpu_seconds, 1e-9),
            "valid_seconds": valid.seconds,
            "valid": valid.metrics,
        }
        history.append(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.3f}", sps=f"{row['samples_per_second']:.0f}",
                            **{config.select_metric: f"{score:.4f}"})
            bar.close()
        logger.info("epoch %d: loss %.4f, %.0f samples/s, valid %s %.4f", epoch, row["loss"],
                    row["samples_per_second"], config.select_metric, score)
        if math.isfinite(score) and score > best:  # NaN (an empty split) is never a best
            best, best_epoch, stale = score, epoch, 0
            # a CPU copy: GPU memory holds one model, and the saved checkpoint loads on any device
            best_state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                logger.info("no improvement in %d epochs: stopping after epoch %d", stale, epoch)
                stopped_by = "patience"
                break
        elapsed = time.perf_counter() - began
        # in a data-parallel job every rank stops when any clock has passed the budget
        if distributed.any_rank(config.time_budget_s is not None and elapsed >= config.time_budget_s
                                and epoch < config.epochs, world):
            logger.info("time budget of %.0f s spent (%.0f s): stopping after epoch %d, keeping epoch %d",
                        config.time_budget_s, elapsed, epoch, best_epoch)
            stopped_by = "time budget"
            break
    if best_state is None:  # cannot happen with finite scores on a non-empty split; never save a guess
        raise TrainingDivergedError(
            f"no epoch gave a finite validation {config.select_metric} (lr {config.lr:g}); nothing was saved. "
            f"Lower --lr (the default is {TrainConfig.lr:g}) and train again")
    model.load_state_dict(best_state)
    model.eval()
    info = RunInfo(
        model=getattr(model, "base", model).name,
        model_config=model.config_dict(),
        semantic=semantic or {},
        train_config=asdict(config),
        dataset=dataset_ref(dataset),
        history=history,
        best_epoch=best_epoch,
        valid=history[best_epoch - 1]["valid"],
        extra={
            "train_samples": len(train),
            "stopped_by": stopped_by,  # epochs (ran them all), patience (early stopping) or time budget
            "precision": precision,  # of the training steps, with auto resolved
            "device": str(device),  # where training ran, with auto resolved (train_config.device is as asked)
            "train_wall_s": time.perf_counter() - began,  # training and validation, every epoch
            "median_samples_per_second": float(np.median([h["samples_per_second"] for h in history])),
            "median_samples_per_cpu_second": float(np.median([h["samples_per_cpu_second"] for h in history])),
            "paper": getattr(model, "paper", ""),
            "reference": getattr(model, "reference", ""),
            "world_size": world.size if world is not None else 1,  # ranks that trained it (data-parallel: > 1)
            "backend": world.backend if world is not None else None,  # gloo or nccl in a data-parallel job
        },
    )
    if out is not None and (world is None or world.main):  # rank 0 alone writes the run
        save_run(out, info, model.state_dict())
    return info


def _check_finite(model, config: TrainConfig, epoch: int, bar) -> None:
    """Raise :class:`TrainingDivergedError` naming the first parameter with a NaN or infinite value."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            if bar is not None:
                bar.close()
            raise TrainingDivergedError(
                f"training diverged: after epoch {epoch} the weights {name!r} hold NaN or infinite values "
                f"(lr {config.lr:g}); nothing was saved. Lower --lr (the default is {TrainConfig.lr:g}) "
                "and train again")


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", leave=True, dynamic_ncols=True)
