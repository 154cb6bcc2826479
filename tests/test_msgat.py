"""MSGAT on tiny inputs with known answers: its sparse attention, its graphs, its scores, its learning."""

import numpy as np
import pandas as pd
import pytest
import torch

from agentrec.data.dataset import PreparedDataset, Samples
from agentrec.models.base import Batch
from agentrec.models.msgat import MSGAT, MSGATConfig, entmax, session_overlap
from agentrec.training.trainer import TrainConfig, train_model


def bisection_entmax(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """A slow, plainly correct alpha-entmax over the last dim, in float64: 200 bisection steps on tau."""
    z = x.double() * (alpha.double() - 1)
    beta = 1 / (alpha.double() - 1)
    low, high = z.max(-1, keepdim=True).values - 1, z.max(-1, keepdim=True).values
    for _ in range(200):
        mid = (low + high) / 2
        over = ((z - mid).clamp(min=0) ** beta).sum(-1, keepdim=True) >= 1
        low, high = torch.where(over, mid, low), torch.where(over, high, mid)
    p = (z - low).clamp(min=0) ** beta
    return p / p.sum(-1, keepdim=True)


def sparsemax(x: torch.Tensor) -> torch.Tensor:
    """Sparsemax by sorting (Martins and Astudillo, 2016), over the last dim."""
    ordered = x.sort(-1, descending=True).values
    k = torch.arange(1, x.size(-1) + 1, dtype=x.dtype)
    cumulative = ordered.cumsum(-1)
    support = (1 + k * ordered > cumulative).sum(-1, keepdim=True)  # size of the support
    tau = (cumulative.gather(-1, support - 1) - 1) / support.to(x.dtype)
    return (x - tau).clamp(min=0)


# ----- the sparse attention ---------------------------------------------------------------------


def test_entmax_at_two_is_sparsemax():
    x = torch.randn(50, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    torch.testing.assert_close(entmax(x, 2.0), sparsemax(x))


def test_entmax_of_a_worked_example():
    # alpha = 2 (sparsemax) of [1, 0.5, -1]: tau = 0.25 puts [0.75, 0.25, 0] on the simplex.
    torch.testing.assert_close(entmax(torch.tensor([[1.0, 0.5, -1.0]]), 2.0), torch.tensor([[0.75, 0.25, 0.0]]))
    # equal scores give the uniform distribution for any alpha
    torch.testing.assert_close(entmax(torch.zeros(1, 4), 1.3), torch.full((1, 4), 0.25))


@pytest.mark.parametrize("alpha", [1.05, 1.3, 1.5, 1.8, 2.0])
def test_entmax_sums_to_one_with_exact_zeros(alpha):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 12, generator=generator) * 4
    p = entmax(x, alpha)
    torch.testing.assert_close(p.sum(-1), torch.ones(64))
    assert (p >= 0).all()
    assert (p == 0).any(), "scores this spread out must leave some entries at exactly zero"
    torch.testing.assert_close(p.double(), bisection_entmax(x, torch.tensor(alpha)), atol=1e-5, rtol=1e-4)


def test_entmax_per_row_alpha_and_masked_entries():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 7, generator=generator)
    alpha = 1 + torch.rand(3, 5, 1, generator=generator)  # one alpha per row, in (1, 2)
    masked = x.masked_fill(torch.arange(7) >= 4, float("-inf"))  # the last three entries masked
    p = entmax(masked, alpha)
    assert (p[..., 4:] == 0).all()
    torch.testing.assert_close(p[..., :4].double(), bisection_entmax(x[..., :4], alpha), atol=1e-5, rtol=1e-4)
    # along another dim: the same answer as on the transposed scores
    torch.testing.assert_close(entmax(masked.transpose(1, 2), alpha.transpose(1, 2), dim=1), p.transpose(1, 2))


def test_entmax_gradients_match_finite_differences():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, dtype=torch.float64, generator=generator).requires_grad_()
    alpha = (1.1 + 0.8 * torch.rand(4, 1, dtype=torch.float64, generator=generator)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, alpha: entmax(x, alpha), (x, alpha))


def test_entmax_refuses_alpha_above_two():
    with pytest.raises(ValueError, match="alpha"):
        entmax(torch.zeros(2, 3), 2.5)


# ----- graphs and scores ------------------------------------------------------------------------


def test_session_overlap_by_hand():
    # item sets {1,2,3}, {2,3,4}, {5}: Jaccard(0, 1) = 2/4; the third shares nothing; diagonal 1
    nodes = np.array([[1, 2, 3], [2, 3, 4], [5, 0, 0]])
    expected = np.array([[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]]) / np.array([[1.5], [1.5], [1.0]])
    np.testing.assert_allclose(session_overlap(nodes), expected)


def small_model(**overrides) -> MSGAT:
    torch.manual_seed(0)
    return MSGAT(9, MSGATConfig(embedding_size=20, **overrides)).eval()


@pytest.mark.parametrize("inter_session", [False, True])
def test_shapes(inter_session):
    model = small_model(inter_session=inter_session)
    samples = Samples.from_lists([[1, 2, 3], [4], [5, 6, 5, 7, 8], []], [4, 5, 9, 1])
    batch = model.make_batch(samples, np.arange(4))
    with torch.no_grad():
        sessions = model.encode(batch)
        logits = model(batch)
    assert sessions.shape == (4, 20)
    assert logits.shape == (4, 10)
    assert torch.isinf(logits[:, 0]).all() and torch.isfinite(logits[:, 1:]).all()  # the empty history too


def test_width_not_a_multiple_of_the_heads():
    model = MSGAT(9, MSGATConfig(embedding_size=16)).eval()  # 2d = 32 over 5 heads
    batch = model.make_batch(Samples.from_lists([[1, 2], [3]], [3, 4]), np.arange(2))
    with torch.no_grad():
        assert torch.isfinite(model(batch)[:, 1:]).all()


def test_padding_does_not_change_scores():
    model = small_model()
    alone = Samples.from_lists([[3, 4, 3]], [5])
    together = Samples.from_lists([[3, 4, 3], [1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3]], [5, 9, 2])
    with torch.no_grad():
        torch.testing.assert_close(model.score_chunk(alone, np.array([0]))[0],
                                   model.score_chunk(together, np.array([0, 1, 2]))[0])


def test_scoring_in_slices_changes_nothing_when_sessions_are_independent():
    model = small_model()
    samples = Samples.from_lists([[1, 2], [3, 4, 5], [6], [7, 8, 1, 2], [2, 2, 3]], [3, 6, 7, 3, 4])
    with torch.no_grad():
        whole = model.score_chunk(samples, np.arange(5))
        model.config.score_batch = 2
        torch.testing.assert_close(model.score_chunk(samples, np.arange(5)), whole)


def test_inter_session_channel_depends_on_batch_mates_but_not_on_padding():
    model = small_model(inter_session=True)
    samples = Samples.from_lists([[1, 2, 3], [2, 3, 4], [7, 8]], [4, 5, 9])
    batch = model.make_batch(samples, np.arange(3))
    # the same three sessions padded four columns wider
    items = np.pad(batch.items.numpy(), ((0, 0), (0, 4)))
    lengths = batch.lengths.numpy()
    wide = Batch(items=torch.from_numpy(items), lengths=batch.lengths,
                 extra={k: torch.from_numpy(v) for k, v in model.extra_inputs(items, lengths).items()})
    wide.extra["overlap"] = batch.extra["overlap"]
    with torch.no_grad():
        torch.testing.assert_close(model(wide), model(batch))
        alone = model.score_chunk(samples, np.array([0]))[0]
        assert not torch.allclose(alone, model(batch)[0])  # documented: the batch is its neighbourhood


def test_training_step_reaches_every_parameter():
    model = small_model(inter_session=True).train()
    samples = Samples.from_lists([[1, 2, 3], [2, 3, 4], [7, 8], [5]], [4, 5, 9, 6])
    model.loss(model.make_batch(samples, np.arange(4))).backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert silent == []


# ----- learning ---------------------------------------------------------------------------------


def successor_dataset(n_items=12, seed=0) -> PreparedDataset:
    """Item k is always followed by item k + 1: histories are runs k, k+1, ..., the target the next."""
    rng = np.random.default_rng(seed)

    def make(n):
        histories, targets = [], []
        for _ in range(n):
            length = int(rng.integers(1, 6))
            start = int(rng.integers(1, n_items - length + 1))
            histories.append(list(range(start, start + length)))
            targets.append(start + length)
        return Samples.from_lists(histories, targets)

    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "original_id": [str(i) for i in range(1, n_items + 1)],
                          "title": [f"item {i}" for i in range(1, n_items + 1)]})
    return PreparedDataset(items=items, train=make(300), valid=make(60), test=make(60),
                           stats={"fingerprint": "x", "dataset": "toy"})


def test_learns_the_successor():
    ds = successor_dataset()
    torch.manual_seed(0)
    model = MSGAT(ds.n_items, MSGATConfig(embedding_size=20))
    info = train_model(model, ds, TrainConfig(epochs=12, batch_size=32, lr=0.01, lr_gamma=1.0, patience=12,
                                              select_metric="mrr@10", seed=0), progress=False)
    from agentrec.training.runs import evaluate_model

    recall_at_1 = evaluate_model(model, ds, "valid", ks=(1,)).metrics["recall@1"]
    assert recall_at_1 > 0.9, (recall_at_1, [round(h["loss"], 3) for h in info.history])
