"""SemSR-I, SemSR-F and re-ranking, as composition over every session model."""

import numpy as np
import pytest
import torch
from test_models_contract import cycle_dataset

from agentrec.core.metrics import rank_samples
from agentrec.data.dataset import Samples
from agentrec.models import MODELS, model_class
from agentrec.models.semantic import Reranked, SemanticFusion, semantic_init
from agentrec.training.runs import RunInfo, dataset_ref, evaluate_model, load_model, save_run
from agentrec.training.trainer import TrainConfig, set_seed, train_model

NEURAL = [name for name in MODELS if name != "pop"]


def llm_table(n_items, dim, seed=0):
    table = np.random.default_rng(seed).normal(size=(n_items + 1, dim)).astype(np.float32)
    table[0] = 0
    return table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-9)


@pytest.mark.parametrize("name", NEURAL)
def test_fusion_wraps_every_model_and_learns(name):
    ds = cycle_dataset()
    set_seed(0)
    model = SemanticFusion(model_class(name)(ds.n_items, model_class(name).Config(embedding_size=16)),
                           llm_table(ds.n_items, 24))
    train_model(model, ds, TrainConfig(epochs=12, batch_size=32, lr=0.01, lr_gamma=1.0, patience=12,
                                       select_metric="mrr@10"), progress=False)
    assert evaluate_model(model, ds, "valid", ks=(1,)).metrics["recall@1"] > 0.9


def test_llm_table_is_frozen_and_saved(tmp_path):
    ds = cycle_dataset()
    table = llm_table(ds.n_items, 24)
    model = SemanticFusion(model_class("niser")(ds.n_items, model_class("niser").Config(embedding_size=16)), table)
    assert all(p is not model.llm_items for p in model.parameters())
    batch = model.make_batch(ds.train, np.arange(16))
    model.loss(batch).backward()
    assert model.base.item_embedding.weight.grad is not None and model.llm_items.grad is None
    info = RunInfo(model="niser", model_config=model.config_dict(), train_config={}, dataset=dataset_ref(ds),
                   semantic=model.fusion_dict())
    save_run(tmp_path, info, model.state_dict())
    _, back = load_model(tmp_path, ds)
    model.eval()
    np.testing.assert_array_equal(back.llm_items.numpy(), table)
    index = np.arange(6)
    torch.testing.assert_close(model.score_chunk(ds.test, index), back.score_chunk(ds.test, index))


def test_one_item_session_has_no_attention_term():
    ds = cycle_dataset()
    model = SemanticFusion(model_class("gru4rec")(ds.n_items, model_class("gru4rec").Config(embedding_size=8)),
                           llm_table(ds.n_items, 6)).eval()
    batch = model.make_batch(Samples.from_lists([[4]], [5]), np.array([0]))
    with torch.no_grad():
        s_l = model.llm_session(batch)
        expected = model.w3(torch.cat([torch.zeros(1, 6), model.llm_items[4].view(1, -1)], dim=1))
    torch.testing.assert_close(s_l, expected)


def test_semantic_init_projects_and_rescales():
    set_seed(0)
    model = model_class("narm")(50, model_class("narm").Config(embedding_size=8))
    before = model.item_embedding.weight[1:].std().item()
    rng = np.random.default_rng(0)
    # a table whose variance lives in 3 directions: PCA to 8 dims keeps essentially all of it
    table = np.zeros((51, 32), dtype=np.float32)
    table[1:] = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 32))
    described = semantic_init(model, table)
    weight = model.item_embedding.weight.detach().numpy()
    assert "PCA 32->8" in described["projection"] and "100.0%" in described["projection"]
    assert weight[1:].std() == pytest.approx(before, rel=1e-2)
    # PCA keeps the geometry: pairwise distances shrink or grow by one common factor
    d_llm = np.linalg.norm(table[1:, None] - table[None, 1:], axis=-1)
    d_init = np.linalg.norm(weight[1:, None] - weight[None, 1:], axis=-1)
    ratio = d_init[np.triu_indices(50, 1)] / d_llm[np.triu_indices(50, 1)]
    assert ratio.std() / ratio.mean() < 1e-3


def test_semantic_init_with_fewer_llm_dims_keeps_random_columns():
    set_seed(0)
    model = model_class("gru4rec")(10, model_class("gru4rec").Config(embedding_size=8))
    tail = model.item_embedding.weight[1:, 4:].detach().clone()
    described = semantic_init(model, llm_table(10, 4))
    assert "4 random dims kept" in described["projection"]
    torch.testing.assert_close(model.item_embedding.weight[1:, 4:], tail)


class TableScorer:
    def __init__(self, rows):
        self.rows = torch.tensor(rows, dtype=torch.float32)

    def score_chunk(self, samples, index):
        return self.rows[torch.as_tensor(index)].clone()


def test_rerank_changes_order_inside_the_list_only():
    inf = float("-inf")
    # first ranks items 1 > 2 > 3 > 4 > 5; second prefers 3 > 2 > 1 and loves 5 (outside the top 3)
    first = TableScorer([[inf, 5, 4, 3, 2, 1]] * 3)
    second = TableScorer([[inf, 1, 2, 3, 0, 9]] * 3)
    samples = Samples.from_lists([[1], [1], [1]], [3, 1, 5])
    plus = Reranked(first, second, k=3)
    ranks = rank_samples(lambda i: plus.score_chunk(samples, i), samples, 5, ks=(3,)).ranks
    base = rank_samples(lambda i: first.score_chunk(samples, i), samples, 5, ks=(3,)).ranks
    assert base.tolist() == [3, 1, 5]
    # inside the top 3 the order is now 3, 2, 1; item 5 stays outside, behind item 4
    assert ranks.tolist() == [1, 3, 5]


@pytest.mark.parametrize("name", ["niser", "msgat"])
def test_fusion_keeps_the_wrapped_models_cosine_scoring(name):
    # NISER and MSGAT score sigma/scale * cosine; the fused vectors must be scored the same way,
    # so no fused logit can exceed that scale (MSGAT once applied its scale in logits, which the
    # fusion bypassed: plain dot products of unnormalised fused vectors)
    ds = cycle_dataset()
    set_seed(0)
    base = model_class(name)(ds.n_items, model_class(name).Config(embedding_size=16))
    scale = base.config.sigma if name == "niser" else base.config.scale
    model = SemanticFusion(base, llm_table(ds.n_items, 24)).eval()
    with torch.no_grad():
        model.w4.weight.mul_(50.0)  # fused vectors far from unit length
        model.w5.weight.mul_(50.0)
        scores = model.score_chunk(ds.test, np.arange(6))[:, 1:]
        sessions = model.encode(model.make_batch(ds.test, np.arange(6)))
        table = model.item_table()
    cosine = torch.nn.functional.normalize(sessions, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).t()
    torch.testing.assert_close(scores, scale * cosine[:, 1:])


def test_msgat_scores_are_scaled_cosines():
    ds = cycle_dataset()
    set_seed(0)
    model = model_class("msgat")(ds.n_items, model_class("msgat").Config(embedding_size=16)).eval()
    with torch.no_grad():
        scores = model.score_chunk(ds.test, np.arange(6))[:, 1:]
        sessions = model.encode(model.make_batch(ds.test, np.arange(6)))
    table = torch.nn.functional.normalize(model.item_embedding.weight, dim=-1)
    torch.testing.assert_close(scores, model.config.scale * sessions @ table[1:].t())
