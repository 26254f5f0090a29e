"""Pseudo labels, losses, EMA and nearest-neighbour batches against straightforward
references written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    kl_distillation,
    relaxed_contrastive,
    row_normalized_distances,
    stml_loss,
)
from training.sampler import NeighbourBatchSampler, nearest_neighbour_table
from training.similarity import contextual_similarity
from training.teacher import ema_update


def loop_reference(z: torch.Tensor, ids: list[int], sigma: float, k: int) -> np.ndarray:
    """The paper's contextual similarity, one row at a time, in float64 Python."""
    z = F.normalize(z.double(), dim=1).numpy()
    n = len(z)
    w_p = np.array(
        [[math.exp(-float(((z[i] - z[j]) ** 2).sum()) / sigma) for j in range(n)] for i in range(n)]
    )
    forced = [[1.0 if ids[i] == ids[j] else w_p[i][j] for j in range(n)] for i in range(n)]
    # each row ranks itself first, then same-image pairs (forced to 1), ties by index
    rank = [[2.0 if i == j else forced[i][j] for j in range(n)] for i in range(n)]
    nn = [sorted(range(n), key=lambda j, i=i: (-rank[i][j], j))[:k] for i in range(n)]
    reciprocal = [{j for j in nn[i] if i in nn[j]} for i in range(n)]
    w_c_tilde = np.zeros((n, n))
    for i in range(n):
        for j in reciprocal[i]:
            w_c_tilde[i][j] = len(reciprocal[i] & reciprocal[j]) / len(reciprocal[i])
    half = int(round(k / 2))
    w_c_hat = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            w_c_hat[i][j] = sum(w_c_tilde[m][j] for m in nn[i][:half]) / half
    w_c = (w_c_hat + w_c_hat.T) / 2
    return (w_p + w_c) / 2


def batch_with_repeats(seed: int, images: int = 14, views: int = 2, dim: int = 24):
    """Image ids as an NN batch has them: some images appear twice, every image in `views` views."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, images - 3, size=images)  # forces repeats
    all_ids = np.tile(ids, views)
    z = torch.from_numpy(rng.normal(size=(len(all_ids), dim)))
    # views of one image lie close together, as augmentations of one picture do
    for i in range(len(all_ids)):
        first = int(np.flatnonzero(all_ids == all_ids[i])[0])
        if first != i:
            z[i] = z[first] + 0.3 * torch.from_numpy(rng.normal(size=dim))
    return z, torch.from_numpy(all_ids)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [4, 10])
def test_vectorized_similarity_equals_loop_reference(seed: int, k: int) -> None:
    z, ids = batch_with_repeats(seed)
    expected = loop_reference(z, ids.tolist(), sigma=3.0, k=k)
    got64 = contextual_similarity(z, ids, sigma=3.0, topk=k).numpy()
    got32 = contextual_similarity(z.float(), ids, sigma=3.0, topk=k).double().numpy()
    assert np.abs(got64 - expected).max() < 1e-12
    assert np.abs(got32 - expected).max() < 1e-6


def test_similarity_is_symmetric_and_bounded() -> None:
    z, ids = batch_with_repeats(7, images=60, dim=64)
    w = contextual_similarity(z.float(), ids, sigma=3.0, topk=10)
    assert torch.allclose(w, w.T, atol=1e-7)
    assert float(w.min()) >= 0.0 and float(w.max()) <= 1.0 + 1e-6
    # the same image in two views is a strong positive; W_P alone bounds W below
    same = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool)
    assert float(w[same].mean()) > float(w[~same].mean())
    assert float(w.min()) >= math.exp(-4 / 3.0) / 2 - 1e-6


def direct_rc(x: torch.Tensor, w: torch.Tensor, delta: float) -> torch.Tensor:
    d = torch.cdist(x.double(), x.double())
    d = d / d.mean(dim=1, keepdim=True)
    n = len(x)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += (
                    w[i, j] * d[i, j] ** 2
                    + (1 - w[i, j]) * torch.clamp(delta - d[i, j], min=0) ** 2
                )
    return total / (n * (n - 1))


def test_relaxed_contrastive_matches_direct_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    w = torch.rand(12, 12, generator=gen, dtype=torch.float64)
    w = (w + w.T) / 2
    got = relaxed_contrastive(row_normalized_distances(x), w, 1.0)
    assert abs(float(got) - float(direct_rc(x, w, 1.0))) < 1e-10


def test_kl_is_zero_for_identical_heads_and_positive_otherwise() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 6, generator=gen)
    d = row_normalized_distances(x)
    assert abs(float(kl_distillation(d, d))) < 1e-6
    other = row_normalized_distances(torch.randn(10, 6, generator=gen))
    assert float(kl_distillation(d, other)) > 1e-3


def test_losses_and_gradients_are_finite_even_with_duplicate_rows() -> None:
    gen = torch.Generator().manual_seed(2)
    f = torch.randn(16, 8, generator=gen)
    g = torch.randn(16, 12, generator=gen)
    f[3] = f[2]  # identical embeddings: distance 0 off the diagonal
    g[3] = g[2]
    f.requires_grad_(True)
    g.requires_grad_(True)
    ids = torch.arange(16) % 8
    w = contextual_similarity(g.detach(), ids, 3.0, 4)
    terms = stml_loss(f, g, w, 1.0)
    terms.total.backward()
    assert all(math.isfinite(v) for v in terms.as_floats().values())
    assert torch.isfinite(f.grad).all() and torch.isfinite(g.grad).all()
    assert float(f.grad.abs().sum()) > 0 and float(g.grad.abs().sum()) > 0
    # KL reaches f only: g's gradient comes from RC(g) alone
    g2 = g.detach().clone().requires_grad_(True)
    relaxed_contrastive(row_normalized_distances(g2), w, 1.0).div(2).backward()
    assert torch.allclose(g.grad, g2.grad, atol=1e-6)


def test_ema_update_math() -> None:
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    student[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for name, value in teacher.state_dict().items():
        source = student.state_dict()[name]
        if value.dtype.is_floating_point:
            assert torch.allclose(value, 0.9 * before[name] + 0.1 * source)
        else:
            assert torch.equal(value, source)


def test_nearest_neighbour_table_starts_with_self() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x[10] = x[11]  # an exact duplicate must not push the image itself out of its row
    table = nearest_neighbour_table(x, 5)
    assert table.shape == (50, 5)
    assert (table[:, 0] == np.arange(50)).all()
    assert table[10, 1] == 11 and table[11, 1] == 10
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    for i in range(50):
        others = np.argsort(d[i], kind="stable")
        others = others[others != i][:4]
        assert set(table[i, 1:]) == set(others)


def test_neighbour_batches_compose_queries_with_their_neighbours() -> None:
    rng = np.random.default_rng(1)
    table = nearest_neighbour_table(rng.normal(size=(250, 8)).astype(np.float32), 5)
    sampler = NeighbourBatchSampler(table, batch_size=40, seed=3)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 250 // 40
    queries = []
    for batch in batches:
        indices = [i for i, _ in batch]
        assert len(indices) == 40
        groups = np.array(indices).reshape(8, 5)
        for group in groups:
            assert (group == table[group[0]]).all()  # a query followed by its 4 neighbours
            queries.append(group[0])
        assert len({s for _, s in batch}) == 40  # every slot has its own augmentation seed
    assert len(queries) == len(set(queries))  # no query twice in an epoch
    again = NeighbourBatchSampler(table, 40, seed=3)
    again.set_epoch(0)
    assert list(again) == batches  # replayable: what --resume relies on
    again.set_epoch(1)
    assert list(again) != batches
