"""The sampled softmax of ``agentrec.training.losses`` (``--negatives``): the full softmax when every item is a
candidate, gradients only where they belong, its range checks, and a training run with it from the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_models_contract import cycle_dataset
from typer.testing import CliRunner

from agentrec.cli.main import app
from agentrec.core.options import OptionError
from agentrec.models import model_class
from agentrec.models.semantic import SemanticFusion
from agentrec.training.losses import SampledSoftmax, training_loss
from agentrec.training.runs import evaluate_model
from agentrec.training.trainer import TrainConfig, train_model


def niser(n_items, size=16, seed=0):
    torch.manual_seed(seed)
    return model_class("niser")(n_items, model_class("niser").Config(embedding_size=size))


def fusion(n_items, size=16, seed=0):
    table = np.random.default_rng(seed).standard_normal((n_items + 1, 8)).astype(np.float32)
    table[0] = 0.0
    return SemanticFusion(niser(n_items, size, seed), table)


def batch_of(model, ds, n=24):
    model.train()
    torch.manual_seed(1)  # item dropout draws the same mask in both losses
    return model.make_batch(ds.train, np.arange(n))


@pytest.mark.parametrize("build", [niser, fusion], ids=["niser", "semsr-f"])
def test_every_item_as_a_candidate_is_the_full_softmax_with_its_gradients(build):
    ds = cycle_dataset(n_items=12, n_train=64)
    full_model, sampled_model = build(ds.n_items), build(ds.n_items)
    full = full_model.loss(batch_of(full_model, ds))
    sampled = training_loss(sampled_model, ds.train, ds.n_items)(batch_of(sampled_model, ds))  # K = N
    torch.testing.assert_close(sampled, full)
    full.backward()
    sampled.backward()
    for (name, a), (_, b) in zip(full_model.named_parameters(), sampled_model.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    # more negatives than items is the same loss
    torch.testing.assert_close(training_loss(build(ds.n_items), ds.train, 10**6)(batch_of(build(ds.n_items), ds)),
                               full.detach())


def test_a_sample_scores_the_batch_targets_and_the_draws_once_each_with_their_inclusion_probability():
    n_items, targets = 1000, np.array([5] * 90 + [7] * 10)  # item 5: 90% of the training targets
    sampler = SampledSoftmax(n_items, 50, targets, seed=3)
    batch_targets = torch.tensor([5, 7, 5, 900])
    ids, log_q = sampler.candidates(batch_targets)
    assert torch.equal(ids, torch.unique(ids)) and {5, 7, 900} <= set(ids.tolist()) and 0 not in ids.tolist()
    assert 3 + 40 <= len(ids) <= 3 + 50  # 50 draws with replacement, duplicates removed
    q = log_q.exp()
    assert bool(((q > 0) & (q <= 1)).all())
    where = {int(i): float(p) for i, p in zip(ids, q)}
    uniform = 1 - (1 - 1 / n_items) ** 50
    assert where[900] == pytest.approx(uniform, rel=1e-5)  # never a training target: only the draws bring it
    assert where[5] == pytest.approx(1 - (1 - uniform) * (1 - 0.9) ** 4, rel=1e-5)  # in almost every batch
    assert where[5] > where[7] > where[900]
    again = SampledSoftmax(n_items, 50, targets, seed=3).candidates(batch_targets)[0]
    assert torch.equal(ids, again)  # the draws follow the seed


def test_gradients_reach_the_encoder_and_only_the_rows_a_step_touched():
    ds = cycle_dataset(n_items=400, n_train=64)
    model = niser(ds.n_items)
    batch = batch_of(model, ds, n=16)
    sampler = SampledSoftmax(ds.n_items, 20, ds.train.target, seed=0)
    sampler.generator.manual_seed(5)
    ids, _ = sampler.candidates(batch.targets)
    sampler.generator.manual_seed(5)  # the loss draws the same candidates
    loss = sampler(model, batch)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    touched = set(ids.tolist()) | set(batch.items.flatten().tolist())
    rows = model.item_embedding.weight.grad.abs().sum(1)
    assert all(rows[i] > 0 for i in ids.tolist())
    untouched = [i for i in range(1, ds.n_items + 1) if i not in touched]
    assert untouched and float(rows[untouched].abs().sum()) == 0.0
    encoder = [p.grad for name, p in model.named_parameters() if name != "item_embedding.weight"]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in encoder)


@pytest.mark.parametrize("value", [0, -3, 2.5, "many"])
def test_out_of_range_negatives_are_refused_by_name(value):
    with pytest.raises(OptionError, match="negatives"):
        TrainConfig(negatives=value)


def test_a_model_that_does_not_score_by_products_is_refused():
    ds = cycle_dataset(n_items=12, n_train=16)

    class Odd(type(niser(12))):
        def score(self, sessions, table):
            return -torch.cdist(self.score_query(sessions), table)

    with pytest.raises(Exception, match="cannot score a sample"):
        training_loss(Odd(ds.n_items), ds.train, 4)


def test_training_with_negatives_learns_the_next_item_and_repeats():
    ds = cycle_dataset(n_items=60, n_train=800)
    config = TrainConfig(epochs=8, batch_size=32, lr=0.01, lr_gamma=1.0, patience=8, select_metric="mrr@10",
                         seed=1, negatives=8)
    model = niser(ds.n_items, 32)
    info = train_model(model, ds, config, progress=False)
    assert info.train_config["negatives"] == 8
    assert evaluate_model(model, ds, "valid", ks=(10,)).metrics["recall@10"] > 0.9
    again = train_model(niser(ds.n_items, 32), ds, config, progress=False)
    assert [h["loss"] for h in again.history] == [h["loss"] for h in info.history]


def test_cli_trains_with_negatives_and_evaluates(tmp_path, tiny_data):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--model", "niser", "--data", str(tiny_data), "--out", str(run),
                                      "--epochs", "2", "--embedding-size", "8", "--negatives", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["train_config"]["negatives"] == 2
    result = CliRunner().invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert "recall" in result.output and "mrr" in result.output
    refused = CliRunner().invoke(app, ["train", "--model", "niser", "--data", str(tiny_data), "--out",
                                       str(tmp_path / "bad"), "--negatives", "0"])
    assert refused.exit_code == 1 and "--negatives" in refused.output
