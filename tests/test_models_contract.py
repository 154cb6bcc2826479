"""The contract every session model must keep, run against every model in the registry."""

import numpy as np
import pandas as pd
import pytest
import torch

from agentrec.data.dataset import PreparedDataset, Samples
from agentrec.models import MODELS, model_class
from agentrec.training.trainer import TrainConfig, train_model

NEURAL = [name for name in MODELS if name != "pop"]


def cycle_dataset(n_items=12, n_train=400, seed=0) -> PreparedDataset:
    """Item k is always followed by item k+1 (wrapping): an obvious next item."""
    rng = np.random.default_rng(seed)

    def make(n):
        histories, targets = [], []
        for _ in range(n):
            start, length = rng.integers(1, n_items + 1), rng.integers(1, 6)
            seq = [(start - 1 + j) % n_items + 1 for j in range(length + 1)]
            histories.append(seq[:-1])
            targets.append(seq[-1])
        return Samples.from_lists(histories, targets)

    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "original_id": [str(i) for i in range(1, n_items + 1)],
                          "title": [f"item {i}" for i in range(1, n_items + 1)]})
    return PreparedDataset(items=items, train=make(n_train), valid=make(60), test=make(60),
                           stats={"fingerprint": "cycle", "dataset": "cycle"})


@pytest.mark.parametrize("name", NEURAL)
def test_learns_the_obvious_next_item(name):
    ds = cycle_dataset()
    model = model_class(name)(ds.n_items, model_class(name).Config(embedding_size=32))
    info = train_model(model, ds, TrainConfig(epochs=15, batch_size=32, lr=0.01, lr_gamma=1.0, patience=15,
                                              select_metric="mrr@10", seed=1),
                       progress=False)
    from agentrec.training.runs import evaluate_model

    result = evaluate_model(model, ds, "valid", ks=(1,))
    assert result.metrics["recall@1"] > 0.9, (name, result.metrics, info.history[-1]["loss"])


@pytest.mark.parametrize("name", NEURAL)
def test_padding_does_not_change_a_sessions_scores(name):
    ds = cycle_dataset()
    torch.manual_seed(0)
    model = model_class(name)(ds.n_items, model_class(name).Config(embedding_size=16)).eval()
    short = Samples.from_lists([[3, 4]], [5])
    mixed = Samples.from_lists([[3, 4], [1, 2, 3, 4, 5, 6, 7, 8]], [5, 9])
    with torch.no_grad():
        alone = model.score_chunk(short, np.array([0]))[0]
        together = model.score_chunk(mixed, np.array([0, 1]))[0]
    torch.testing.assert_close(alone, together)
    assert torch.isinf(alone[0]) and alone[0] < 0  # padding is never a candidate


@pytest.mark.parametrize("name", NEURAL)
def test_scores_cover_the_catalogue(name):
    ds = cycle_dataset()
    model = model_class(name)(ds.n_items).eval()
    batch = model.make_batch(ds.valid, np.arange(7))
    with torch.no_grad():
        assert model.encode(batch).shape == (7, model.config.embedding_size)
        assert model(batch).shape == (7, ds.n_items + 1)


@pytest.mark.parametrize("name", NEURAL)
def test_save_load_round_trip(name, tmp_path):
    from agentrec.training.runs import RunInfo, dataset_ref, load_model, save_run

    ds = cycle_dataset()
    model = model_class(name)(ds.n_items, model_class(name).Config(embedding_size=16)).eval()
    info = RunInfo(model=name, model_config=model.config_dict(), train_config={}, dataset=dataset_ref(ds))
    save_run(tmp_path, info, model.state_dict())
    _, back = load_model(tmp_path, ds)
    index = np.arange(5)
    with torch.no_grad():
        torch.testing.assert_close(model.score_chunk(ds.test, index), back.score_chunk(ds.test, index))


def test_same_seed_same_weights_and_history():
    ds = cycle_dataset(n_train=120)
    runs = []
    from agentrec.training.trainer import set_seed

    for _ in range(2):
        set_seed(7)  # as the CLI does before building a model
        model = model_class("niser")(ds.n_items, model_class("niser").Config(embedding_size=8))
        info = train_model(model, ds, TrainConfig(epochs=2, batch_size=16, seed=7, patience=5), progress=False)
        runs.append((model.state_dict(), [h["loss"] for h in info.history]))
    assert runs[0][1] == runs[1][1]
    for key in runs[0][0]:
        torch.testing.assert_close(runs[0][0][key], runs[1][0][key], rtol=0, atol=0)


def test_bucketed_batches_cover_every_sample_once():
    from agentrec.training.trainer import batch_indices

    lengths = np.random.default_rng(0).integers(1, 50, size=1003)
    batches = batch_indices(lengths, 10, np.random.default_rng(1), bucket=7)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1003))
    assert max(len(b) for b in batches) == 10
    # bucketing really groups similar lengths: mean spread inside a batch is far below random batches
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[b]) for b in batch_indices(lengths, 10, np.random.default_rng(1), bucket=0)])
    assert spread < random_spread / 3


def test_cached_scoring_table_follows_weight_updates():
    ds = cycle_dataset()
    model = model_class("niser")(ds.n_items, model_class("niser").Config(embedding_size=8)).eval()
    index = np.arange(4)
    with torch.no_grad():
        before = model.score_chunk(ds.test, index)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    model.loss(model.make_batch(ds.train, np.arange(16))).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model.score_chunk(ds.test, index)
    with torch.enable_grad():
        uncached = model.score_chunk(ds.test, index).detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, uncached)
