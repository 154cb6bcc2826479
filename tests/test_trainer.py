"""The trainer's stopping rules (epochs, patience, a wall-clock budget) and bf16 training steps, on the cycle data."""

from __future__ import annotations

import json

import pytest
import torch
from test_models_contract import cycle_dataset

from agentrec.models import model_class
from agentrec.training.runs import evaluate_model
from agentrec.training.trainer import TrainConfig, train_model


def niser(ds, size=16):
    torch.manual_seed(0)
    return model_class("niser")(ds.n_items, model_class("niser").Config(embedding_size=size))


def test_a_spent_time_budget_stops_after_the_running_epoch_and_keeps_the_best(tmp_path):
    ds = cycle_dataset(n_train=64)
    # a budget smaller than any epoch: the first epoch finishes, no second one starts
    info = train_model(niser(ds), ds, TrainConfig(epochs=5, batch_size=16, patience=5, time_budget_s=1e-6),
                       out=tmp_path / "run", progress=False)
    assert len(info.history) == 1 and info.best_epoch == 1
    assert info.extra["stopped_by"] == "time budget" and info.extra["train_wall_s"] > 0
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["extra"]["stopped_by"] == "time budget" and saved["train_config"]["time_budget_s"] == 1e-6


def test_the_record_says_why_training_stopped():
    ds = cycle_dataset(n_train=64)
    info = train_model(niser(ds), ds, TrainConfig(epochs=2, batch_size=16, patience=5), progress=False)
    assert len(info.history) == 2 and info.extra["stopped_by"] == "epochs"
    # a budget that is not reached changes nothing
    again = train_model(niser(ds), ds, TrainConfig(epochs=2, batch_size=16, patience=5, time_budget_s=3600.0),
                        progress=False)
    assert again.extra["stopped_by"] == "epochs" and [h["loss"] for h in again.history] == [
        h["loss"] for h in info.history]
    # recall@100 of 12 items is 1 from the first epoch on, so no later epoch is better: patience 1 stops after two
    stalled = train_model(niser(ds), ds, TrainConfig(epochs=6, batch_size=16, patience=1), progress=False)
    assert len(stalled.history) == 2 and stalled.extra["stopped_by"] == "patience" and stalled.best_epoch == 1


def test_bf16_steps_learn_and_keep_fp32_weights():
    ds = cycle_dataset()
    model = niser(ds, 32)
    info = train_model(model, ds, TrainConfig(epochs=10, batch_size=32, lr=0.01, lr_gamma=1.0, patience=10,
                                              select_metric="mrr@10", seed=1, precision="bf16"), progress=False)
    assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    assert info.train_config["precision"] == "bf16"
    assert evaluate_model(model, ds, "valid", ks=(1,)).metrics["recall@1"] > 0.9


def test_unknown_precision_and_budget_are_refused():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto; got .fp16."):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="time_budget_s must be > 0"):
        TrainConfig(time_budget_s=0)


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    import agentrec.training.trainer as trainer

    assert trainer.resolve_precision("fp32") == "fp32" and trainer.resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert trainer.resolve_precision("auto") == "fp32"  # emulated bf16 is slower than fp32 (8x with AVX2 alone)
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    assert trainer.resolve_precision("auto") == "bf16"
    ds = cycle_dataset(n_train=32)
    info = train_model(niser(ds), ds, TrainConfig(epochs=1, batch_size=16, precision="auto"), progress=False)
    assert info.train_config["precision"] == "auto" and info.extra["precision"] == "bf16"
