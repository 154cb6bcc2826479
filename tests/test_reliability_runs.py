"""Reliability of runs (issue 12, items 1 and 6): a diverged model is never a hit, training stops on a
non-finite loss, evaluate refuses non-finite weights, and damaged files name themselves.

Everything here is tiny (a 12-item cycle catalogue, the 4-item RecBole fixture, an 8-dimension hash
embedder), so it runs in the default CI tier.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_index import HashEmbedder, fresh_chroma_state
from test_models_contract import cycle_dataset
from typer.testing import CliRunner

from agentrec.core.errors import AgentrecError, DamagedFileError, NotFoundError, TrainingDivergedError
from agentrec.core.metrics import metrics_from_ranks, rank_samples, target_ranks
from agentrec.data.dataset import PreparedDataset, Samples
from agentrec.models import model_class
from agentrec.pipelines.hybrid import HybridConfig, hybrid_ranks
from agentrec.training.runs import (
    RUN_FILE,
    WEIGHTS_FILE,
    RunInfo,
    dataset_ref,
    evaluate_run,
    load_model,
    read_run,
    save_run,
)
from agentrec.training.trainer import TrainConfig, train_model

pytestmark = [pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

NAN, INF = math.nan, math.inf
FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# ================================================================================================ ranks
def test_a_nan_target_ranks_last_never_first():
    # 4 items; before the fix a NaN target counted no item >= it: rank 0, a hit at every K
    scores = torch.tensor([[-INF, 0.1, NAN, 0.5, 0.9],
                           [-INF, NAN, NAN, NAN, NAN]])
    assert target_ranks(scores, torch.tensor([2, 3])).tolist() == [4, 4]
    assert metrics_from_ranks(target_ranks(scores, torch.tensor([2, 3])), ks=(1, 3))["recall@3"] == 0.0


@pytest.mark.parametrize("value", [INF, -INF])
def test_an_infinite_target_ranks_last(value):
    scores = torch.tensor([[-INF, 0.1, value, 0.5, 0.9]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [4]


def test_nan_scores_of_other_items_count_against_the_model():
    scores = torch.tensor([[-INF, 0.1, NAN, 0.5, 0.9]])
    # target 4 (0.9): the NaN item counts as a tie -> 2; target 3 (0.5): 0.9 above, NaN tied -> 3;
    # target 1 (0.1): everything else is above or NaN -> 4
    assert [target_ranks(scores, torch.tensor([t])).item() for t in (4, 3, 1)] == [2, 3, 4]


def test_rank_samples_counts_nonfinite_targets_and_keeps_exclusion():
    table = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4],
                          [0.0, NAN, NAN, NAN, NAN],
                          [0.0, 0.1, 0.2, INF, 0.4]])
    samples = Samples.from_lists([[4], [1], [1]], [4, 2, 3])
    result = rank_samples(lambda index: table[torch.as_tensor(index)], samples, 4, ks=(1, 100),
                          exclude_history=True)
    # sample 0: target in its history -> a miss; sample 1: all NaN -> last; sample 2: +inf target -> last
    assert math.isinf(result.ranks[0]) and result.ranks[1:].tolist() == [4, 4]
    assert result.metrics["recall@1"] == 0.0
    assert result.extra["nonfinite_targets"] == 2  # the excluded target's -inf is not the model's


def test_hybrid_nonfinite_target_ranks_last_and_nan_counts_against_the_model():
    model = np.array([-INF, 8.0, 1.0, 3.0, 6.0, 1.0, 6.0, 2.0, 0.5])
    candidates = np.array([[5, 3, 7]])
    broken = model.copy()
    broken[7] = NAN
    # target 7 among the LLM's candidates, scored NaN: last in the catalogue, not near the top
    for config in (HybridConfig(), HybridConfig(fill=False), HybridConfig(weight=0.0), HybridConfig(weight=1.0)):
        ranks, _, _ = hybrid_ranks(candidates, broken[None], [7], config, k=5)
        assert ranks.tolist() == [8.0], config
    # target 6 outside: NaN item 2 now counts like a tie, as in the evaluator: 3 -> 4 at w = 0
    broken = model.copy()
    broken[2] = NAN
    ranks, _, _ = hybrid_ranks(candidates, broken[None], [6], HybridConfig(weight=0.0), k=5)
    assert ranks.tolist() == [4.0] == target_ranks(torch.tensor(broken[None]), torch.tensor([6])).tolist()
    # a NaN candidate counts as the model's best (against the model): target 3 moves from 1st to 2nd
    ranks, _, _ = hybrid_ranks(candidates, model[None], [3], HybridConfig(), k=5)
    assert ranks.tolist() == [1.0]
    broken = model.copy()
    broken[5] = NAN
    ranks, _, _ = hybrid_ranks(candidates, broken[None], [3], HybridConfig(), k=5)
    assert ranks.tolist() == [2.0]


# ================================================================================================ training
def tiny_model(ds, name="narm"):
    torch.manual_seed(0)
    return model_class(name)(ds.n_items, model_class(name).Config(embedding_size=8))


def test_an_absurd_learning_rate_stops_training_with_a_clear_error(tmp_path):
    ds = cycle_dataset(n_train=64)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"(?s)diverged.*epoch \d.*lr 1e\+12.*Lower --lr"):
        train_model(tiny_model(ds), ds, TrainConfig(epochs=4, batch_size=16, lr=1e12, patience=4), out=out,
                    progress=False)
    assert not out.exists()  # nothing of the diverged state is kept


def test_a_nonfinite_loss_stops_before_the_step(tmp_path):
    ds = cycle_dataset(n_train=64)
    model = tiny_model(ds)
    calls, loss = [], model.loss

    def poisoned(batch):
        calls.append(1)
        value = loss(batch)
        return value * NAN if len(calls) == 2 else value

    model.loss = poisoned
    with pytest.raises(TrainingDivergedError, match=r"the loss is nan at epoch 1, batch 2 of 4 .*Lower --lr"):
        train_model(model, ds, TrainConfig(epochs=2, batch_size=16), out=tmp_path / "run", progress=False)
    assert all(bool(torch.isfinite(t).all()) for t in model.state_dict().values())  # no step on the NaN
    assert not (tmp_path / "run").exists()


def test_nonfinite_validation_scores_are_never_selected(tmp_path):
    ds = cycle_dataset(n_train=64)
    model = tiny_model(ds)
    model.score_chunk = lambda samples, index: torch.full((len(index), ds.n_items + 1), NAN)
    # every rank is n_items = 12 < 100: recall@100 would be 1.0 and this epoch "best"
    with pytest.raises(TrainingDivergedError, match="60 of 60 validation targets a non-finite score"):
        train_model(model, ds, TrainConfig(epochs=2, batch_size=16), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """The 4-item RecBole fixture, prepared (leave-one-out) once for the module."""
    from agentrec.cli.main import app

    data = tmp_path_factory.mktemp("tiny") / "d"
    result = runner.invoke(app, ["data", "prepare", "recbole", "--source", str(FIXTURES / "recbole" / "tiny"),
                                 "--protocol", "leave-one-out", "--out", str(data)])
    assert result.exit_code == 0, result.output
    return data


def test_cli_train_with_an_absurd_lr_exits_1_with_one_line(tiny_data, tmp_path):
    from agentrec.cli.main import app

    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "narm", "--data", str(tiny_data), "--out", str(run),
                                 "--lr", "1e12", "--quiet"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = error_lines(result.output)
    assert "diverged" in line and "Lower --lr" in line and "epoch 1" in line
    assert not run.exists()


# ================================================================================================ evaluate
def saved_run(folder, data, *, poison: str | None = None):
    """A NISER run on the prepared dataset ``data``; ``poison`` names a tensor set to NaN."""
    ds = PreparedDataset.load(data)
    model = tiny_model(ds, "niser")
    state = model.state_dict()
    if poison:
        state[poison][0] = NAN
    info = RunInfo(model="niser", model_config=model.config_dict(), train_config={}, dataset=dataset_ref(ds))
    save_run(folder, info, state)
    return folder


def test_evaluate_refuses_a_run_with_nan_weights(tiny_data, tmp_path):
    from agentrec.cli.main import app

    run = saved_run(tmp_path / "run", tiny_data, poison="item_embedding.weight")
    with pytest.raises(TrainingDivergedError, match=r"tensor 'item_embedding.weight' in weights.safetensors "
                                                    r"holds \d+ NaN or infinite values") as caught:
        evaluate_run(run)
    assert str(run.resolve()) in str(caught.value)
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 1 and len(error_lines(result.output)) == 1
    assert json.loads((run / RUN_FILE).read_text())["test"] == {}  # no test numbers recorded


@pytest.mark.parametrize("damage", ["half", "header", "empty"])
def test_truncated_weights_name_the_file(tiny_data, tmp_path, damage):
    run = saved_run(tmp_path / "run", tiny_data)
    weights = run / WEIGHTS_FILE
    raw = weights.read_bytes()
    weights.write_bytes({"half": raw[: len(raw) // 2], "header": raw[:5], "empty": b""}[damage])
    with pytest.raises(DamagedFileError, match="truncated or corrupted") as caught:
        load_model(run, PreparedDataset.load(tiny_data))
    assert str(weights.resolve()) in str(caught.value) and "agentrec train" in str(caught.value)


def test_missing_weights_or_a_missing_tensor_name_themselves(tiny_data, tmp_path):
    from safetensors.torch import load_file, save_file

    ds = PreparedDataset.load(tiny_data)
    run = saved_run(tmp_path / "run", tiny_data)
    weights = run / WEIGHTS_FILE
    state = load_file(str(weights))
    del state["item_embedding.weight"]
    save_file(state, str(weights))
    with pytest.raises(DamagedFileError, match="item_embedding.weight") as caught:
        load_model(run, ds)
    assert str(weights.resolve()) in str(caught.value)
    weights.unlink()
    with pytest.raises(NotFoundError, match=f"{WEIGHTS_FILE} is missing"):
        load_model(run, ds)


@pytest.mark.parametrize("text, expected", [
    ('{"model": "niser", "model_con', r"run.json:1:\d+: not valid JSON"),
    ("", r"run.json:1:1: not valid JSON"),
    ("[1, 2]", "expected a JSON object, found list"),
    (None, "missing key 'model_config'"),
    ("unknown", "unknown key 'surprise'"),
    ("wrong type", "key 'history' holds str"),
])
def test_a_bad_run_json_names_the_file_and_the_key(tiny_data, tmp_path, text, expected):
    run = saved_run(tmp_path / "run", tiny_data)
    path = run / RUN_FILE
    data = json.loads(path.read_text())
    if text is None:
        del data["model_config"]
        text = json.dumps(data)
    elif text == "unknown":
        text = json.dumps({**data, "surprise": 1})
    elif text == "wrong type":
        text = json.dumps({**data, "history": "epoch 1"})
    path.write_text(text)
    with pytest.raises(DamagedFileError, match=expected) as caught:
        read_run(run)
    assert str(path.resolve()) in str(caught.value)
    with pytest.raises(DamagedFileError):
        evaluate_run(run, data=tiny_data)


def test_a_model_config_that_does_not_fit_names_run_json(tiny_data, tmp_path):
    run = saved_run(tmp_path / "run", tiny_data)
    path = run / RUN_FILE
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "model_config": {**data["model_config"], "embedding_size": 16}}))
    with pytest.raises(DamagedFileError, match="does not fit the model"):
        load_model(run, PreparedDataset.load(tiny_data))
    path.write_text(json.dumps({**data, "model_config": {"nope": 1}}))
    with pytest.raises(DamagedFileError, match="key 'model_config' does not fit model 'niser'"):
        load_model(run, PreparedDataset.load(tiny_data))


# ================================================================================================ caches and stores
class CountingEmbedder(HashEmbedder):
    def __init__(self):
        super().__init__(dimension=8)
        self.calls = 0

    def embed(self, texts, *, batch_size=64, progress=False):
        self.calls += 1
        return super().embed(texts, batch_size=batch_size, progress=progress)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "nan", "wrong shape"])
def test_a_damaged_embedding_cache_is_rebuilt(tmp_path, caplog, damage):
    from agentrec.retrieval.embedders import item_embeddings

    ds, embedder, cache = cycle_dataset(n_train=8), CountingEmbedder(), tmp_path / "embeddings"
    first = item_embeddings(ds, embedder, cache=cache, progress=False)
    (path,) = cache.glob("*.npy")
    raw = path.read_bytes()
    if damage == "nan":
        np.save(path, np.full_like(first, NAN))
    elif damage == "wrong shape":
        np.save(path, first[:3])
    else:
        path.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\x93NUMPY nonsense", "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="agentrec.retrieval.embedders"):
        again = item_embeddings(ds, embedder, cache=cache, progress=False)
    np.testing.assert_array_equal(again, first)
    assert embedder.calls == 2  # embedded again ...
    assert any(str(path.resolve()) in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.load(path), first)  # ... and the cache file is whole again
    item_embeddings(ds, embedder, cache=cache, progress=False)
    assert embedder.calls == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pages"])
def test_a_corrupted_chroma_store_is_one_clear_error(tmp_path, damage):
    from agentrec.retrieval.index import STORE_FILE, CatalogueIndex

    ds, embedder, store = cycle_dataset(n_train=8), HashEmbedder(), tmp_path / "store"
    with fresh_chroma_state():
        CatalogueIndex.build(ds, embedder, store=store, progress=False)
    path = store / STORE_FILE
    raw = bytearray(path.read_bytes())
    if damage == "garbage":
        raw = b"this is not a database" * 50
    elif damage == "truncated":
        raw = raw[: len(raw) // 3]
    else:  # random bytes over the pages after the first: the schema and Chroma's own tables
        rng = np.random.default_rng(0)
        raw[4096:] = rng.integers(0, 256, len(raw) - 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    for call in (CatalogueIndex.open, CatalogueIndex.build):
        with fresh_chroma_state(), pytest.raises(DamagedFileError) as caught:
            call(ds, embedder, store=store, **({"progress": False} if call is CatalogueIndex.build else {}))
        message = str(caught.value)
        assert str(path.resolve()) in message and "delete the folder" in message and "agentrec index build" in message
        assert isinstance(caught.value, AgentrecError) and "\n" not in message


def test_a_blocked_embedding_cache_is_not_a_blocker(tmp_path, caplog):
    from agentrec.retrieval.embedders import item_embeddings

    ds, embedder, cache = cycle_dataset(n_train=8), CountingEmbedder(), tmp_path / "embeddings"
    first = item_embeddings(ds, embedder, cache=cache, progress=False)
    (path,) = cache.glob("*.npy")
    path.unlink()
    path.mkdir()  # something in the way of the cache file
    with caplog.at_level(logging.WARNING, logger="agentrec.retrieval.embedders"):
        np.testing.assert_array_equal(item_embeddings(ds, embedder, cache=cache, progress=False), first)
    assert any("continuing without it" in r.getMessage() for r in caplog.records)
    assert not list(cache.glob("*.partial.npy"))


def test_a_store_that_is_a_file_is_a_usage_error(tmp_path):
    from agentrec.core.errors import UsageError
    from agentrec.retrieval.index import CatalogueIndex

    store = tmp_path / "store"
    store.write_text("not a folder")
    with pytest.raises(UsageError, match="--store .* is a file"):
        CatalogueIndex.build(cycle_dataset(n_train=8), HashEmbedder(), store=store, progress=False)


# ================================================================================================ found on the way
def test_an_empty_validation_split_is_refused_before_training():
    from agentrec.core.errors import UsageError

    ds = cycle_dataset(n_train=16)
    ds.valid = Samples.from_lists([], [])
    with pytest.raises(UsageError, match="validation split .* is empty"):
        train_model(tiny_model(ds), ds, TrainConfig(epochs=1, batch_size=16), progress=False)


def test_evaluating_popularity_one_row_at_a_time_leaves_its_counts_alone():
    from agentrec.models.popularity import Popularity

    # a one-row chunk made the expanded count row contiguous: the evaluator's -inf for padding was
    # written into the counts (and into the saved weights)
    model = Popularity(3).fit(Samples.from_lists([[1], [2]], [2, 3]))
    test = Samples.from_lists([[1]], [3])
    rank_samples(lambda index: model.score_chunk(test, index), test, 3)
    assert np.isfinite(model.counts).all()
