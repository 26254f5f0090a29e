"""Contextualized semantic similarity (STML, docs/design.md §7): the pseudo labels W of one batch,
computed from the teacher's embeddings with matrix operations only (no loop over the batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def contextual_similarity(
    teacher_g: torch.Tensor, image_ids: torch.Tensor, sigma: float, topk: int
) -> torch.Tensor:
    """W = (W_P + W_C) / 2 for a batch of N embeddings (N = images x views).

    teacher_g: [N, d] teacher g embeddings (L2-normalized here);
    image_ids: [N] dataset index of each row (views and repeats of one image share it);
    topk: k = neighbours x views.
    """
    z = F.normalize(teacher_g.to(torch.promote_types(teacher_g.dtype, torch.float32)), dim=1)
    n = z.shape[0]
    k = min(topk, n)
    # unit vectors: ||z_i - z_j||^2 = 2 - 2 z_i.z_j, so W_P needs only the one product
    w_p = torch.exp((z @ z.T).clamp_max_(1.0).sub_(1.0).mul_(2.0 / sigma))

    # Neighbour sets are ranked on W_P with same-image pairs forced to the top (the final W
    # keeps the plain W_P). Each row ranks itself first, then its same-image pairs by index
    # (keys 4 and (2, 3], above any W_P <= 1), so the order never depends on top-k's tie rule
    # for them, and every R(i) holds i even when an image repeats more than k times.
    same_image = image_ids[:, None] == image_ids[None, :]
    by_index = 2.0 + (n - torch.arange(n, device=z.device, dtype=z.dtype)) / n
    rank_by = torch.where(same_image, by_index[None, :], w_p)
    rank_by.diagonal().fill_(4.0)
    neighbours = torch.topk(rank_by, k, dim=1, sorted=True).indices  # [N, k]

    # k-reciprocal sets: V(i, j) = 1 when j is in i's top-k and i in j's. R(i) lies inside
    # i's top-k, so everything below works on the k columns of each row: O(N k^2), never the
    # dense N x N x N products (V V^T, expansion @ W~_C).
    in_topk = torch.zeros_like(w_p).scatter_(1, neighbours, 1.0)
    v = in_topk * in_topk.T
    member = v.gather(1, neighbours)  # [N, k]: is neighbours[i, b] in R(i)?
    # pair[i, a, b] = V(neighbours[i, a], neighbours[i, b])
    pair = v[neighbours[:, :, None], neighbours[:, None, :]]
    # W~_C(i, j) = |R(i) & R(j)| / |R(i)| for j in R(i), else 0 (values at i's top-k columns)
    overlap = torch.bmm(pair, member.unsqueeze(2)).squeeze(2)
    w_c_tilde = member * overlap / member.sum(dim=1, keepdim=True)

    # Query expansion: W_C_hat(i) = mean of the W~_C rows of i's top round(k/2) neighbours
    # (itself included), as a scatter of their k values each.
    half = int(round(k / 2))
    expansion = neighbours[:, :half]
    columns = neighbours[expansion].reshape(n, half * k)
    values = w_c_tilde[expansion].reshape(n, half * k) / half
    w_c_hat = torch.zeros_like(w_p).scatter_add_(1, columns, values)
    w_c = (w_c_hat + w_c_hat.T) / 2
    return (w_p + w_c) / 2
