"""Train and test one RecBole 1.2.1 model on pre-split benchmark files; runs inside RecBole's venv.

Started by ``benchmarks/recbole_peer.py`` with the python of the RecBole virtual environment,
never imported by agentrec::

    .cache/recbole-venv/bin/python benchmarks/_recbole_runner.py SPEC.json

``SPEC.json`` holds ``model`` (RecBole class name), ``dataset`` (atomic-file name), ``config``
(RecBole config dict), ``threads``, ``anomaly`` (leave RecBole's autograd anomaly mode on), ``mode``
(``"full"``: fit with early stopping, then test the best checkpoint; ``"throughput"``: one
training epoch only) and ``out`` (where the result JSON goes). The result holds per-epoch training
seconds (``Trainer._train_epoch`` only: no validation, no checkpointing), validation metrics, the
best epoch, the test metrics and seconds, the peak RSS of this process, and a digest of every
sample RecBole built, decoded back to our item ids, so the caller can check both sides saw the
same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time
import warnings

# RecBole 1.2.1 calls pandas APIs that pandas 2.x deprecates, once per field: keep the log readable.
warnings.filterwarnings("ignore", category=FutureWarning)
# RecBole's checkpoints pickle its whole config; torch >= 2.6 refuses them by default.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import torch  # noqa: E402
from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import get_model, get_trainer, init_logger, init_seed  # noqa: E402


def samples_digest(dataset) -> tuple[int, str, int]:
    """(rows, sha256 of the sorted ``"h1 h2 ...|target"`` lines in original tokens, longest history)."""
    inter = dataset.inter_feat
    ids = inter[dataset.config["ITEM_ID_FIELD"] + dataset.config["LIST_SUFFIX"]].numpy()
    lengths = inter[dataset.config["ITEM_LIST_LENGTH_FIELD"]].numpy()
    targets = inter[dataset.config["ITEM_ID_FIELD"]].numpy()
    tokens = dataset.field2id_token[dataset.config["ITEM_ID_FIELD"]]
    lines = sorted(" ".join(tokens[ids[i, : lengths[i]]]) + "|" + tokens[targets[i]] for i in range(len(targets)))
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest(), int(lengths.max(initial=0))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(spec_path: str) -> None:
    with open(spec_path) as handle:
        spec = json.load(handle)
    started = time.perf_counter()
    config = Config(model=spec["model"], dataset=spec["dataset"], config_dict=spec["config"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    # Importing any sequential model imports the whole package, SINE included, and SINE's module
    # switches autograd anomaly detection on for the process (about 2x slower training).
    model_class = get_model(config["model"])
    torch.autograd.set_detect_anomaly(bool(spec["anomaly"]))
    torch.set_num_threads(int(spec["threads"]))
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    item_tokens = [str(t) for t in dataset.field2id_token[config["ITEM_ID_FIELD"]][1:]]
    result = {
        "model": spec["model"],
        "recbole_version": __import__("recbole").__version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "n_items_ranked": int(dataset.item_num) - 1,  # item_num counts the [PAD] token
        "item_tokens_sha256": hashlib.sha256("\n".join(sorted(item_tokens, key=int)).encode()).hexdigest(),
        "train_batches": len(train_data),
        "splits": {},
        "setup_seconds": time.perf_counter() - started,
    }
    for name, loader in (("train", train_data), ("valid", valid_data), ("test", test_data)):
        rows, digest, longest = samples_digest(loader._dataset)
        result["splits"][name] = {"samples": rows, "sha256": digest, "longest_history": longest}
    print(f"RecBole {spec['model']}: {result['splits']['train']['samples']} training samples in "
          f"{result['train_batches']} batches; ranks {result['n_items_ranked']} items", file=sys.stderr, flush=True)

    epochs: list[dict] = []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train_epoch(train_data, epoch_idx, loss_func=None, show_progress=False):
        anomaly = torch.is_anomaly_enabled()
        t0, cpu0 = time.perf_counter(), time.process_time()
        loss = train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        samples = len(train_data._dataset)
        epochs.append({"epoch": epoch_idx + 1, "loss": float(loss) / len(train_data), "train_seconds": seconds,
                       "samples_per_second": samples / seconds, "train_cpu_seconds": cpu_seconds,
                       "samples_per_cpu_second": samples / max(cpu_seconds, 1e-9), "anomaly_mode": anomaly})
        print(f"RecBole {spec['model']} epoch {epoch_idx + 1}: {samples / seconds:.0f} samples/s "
              f"(anomaly mode {'on' if anomaly else 'off'})", file=sys.stderr, flush=True)
        return loss

    def timed_valid_epoch(valid_data, show_progress=False):
        t0 = time.perf_counter()
        score, metrics = valid_epoch(valid_data, show_progress=show_progress)
        epochs[-1].update(valid_seconds=time.perf_counter() - t0, valid={k: float(v) for k, v in metrics.items()})
        return score, metrics

    trainer._train_epoch, trainer._valid_epoch = timed_train_epoch, timed_valid_epoch

    if spec["mode"] == "throughput":
        trainer._train_epoch(train_data, 0)
    else:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        valid_metric = config["valid_metric"].lower()
        scores = [e["valid"][valid_metric] for e in epochs]
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # first epoch with the best score
        result["best_epoch"] = best + 1
        result["valid"] = epochs[best]["valid"]
        checkpoint = torch.load(trainer.saved_model_file, map_location=config["device"], weights_only=False)
        model.load_state_dict(checkpoint["state_dict"])
        model.load_other_parameter(checkpoint.get("other_parameter"))
        t0 = time.perf_counter()
        test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        result["test_seconds"] = time.perf_counter() - t0
        result["test"] = {k: float(v) for k, v in test.items()}
        result["checkpoint_epoch"] = int(checkpoint["epoch"]) + 1
    result["history"] = epochs
    result["peak_rss_mb"] = peak_rss_mb()
    result["wall_seconds"] = time.perf_counter() - started
    with open(spec["out"], "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
