"""STML losses (docs/design.md §7): relaxed contrastive loss on row-mean-normalized distances and KL
self-distillation from the g head to the f head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def row_normalized_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances divided by their row mean (zero diagonal included, not detached)."""
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    # The diagonal is exactly 0; elsewhere the clamp keeps sqrt's gradient finite.
    d = torch.where(off, d2.clamp_min(1e-12).sqrt(), torch.zeros_like(d2))
    return d / d.mean(dim=1, keepdim=True).clamp_min(1e-12)


def relaxed_contrastive(d: torch.Tensor, w: torch.Tensor, delta: float) -> torch.Tensor:
    """From normalized distances d: sum_{i!=j} [W d^2 + (1 - W) relu(delta - d)^2] / (N(N-1))."""
    n = d.shape[0]
    off = 1.0 - torch.eye(n, dtype=d.dtype, device=d.device)
    pull = w * d.pow(2)
    push = (1.0 - w) * F.relu(delta - d).pow(2)
    return ((pull + push) * off).sum() / (n * (n - 1))


def kl_distillation(d_f: torch.Tensor, d_g: torch.Tensor) -> torch.Tensor:
    """KL(softmax(-d_g) || softmax(-d_f)) per row, summed and divided by N; d_g is detached."""
    log_q = F.log_softmax(-d_f, dim=1)
    p = F.softmax(-d_g.detach(), dim=1)
    return F.kl_div(log_q, p, reduction="sum") / d_f.shape[0]


@dataclass
class LossTerms:
    total: torch.Tensor
    rc_f: torch.Tensor
    rc_g: torch.Tensor
    kl: torch.Tensor
    supervised: torch.Tensor | None = None  # semi-supervised runs: the labelled rows' loss

    def as_floats(self) -> dict[str, float]:
        names = ("total", "rc_f", "rc_g", "kl") + (
            ("supervised",) if self.supervised is not None else ()
        )
        return {k: float(getattr(self, k).detach()) for k in names}

    def plus_supervised(self, loss: torch.Tensor, weight: float) -> LossTerms:
        """These terms with `weight x loss` added to the total."""
        return LossTerms(self.total + weight * loss, self.rc_f, self.rc_g, self.kl, loss)


def stml_loss(f: torch.Tensor, g: torch.Tensor, w: torch.Tensor, delta: float) -> LossTerms:
    """1/2 [RC(f) + RC(g)] + KL(g -> f), in float32 whatever the autocast dtype."""
    d_f = row_normalized_distances(f.float())
    d_g = row_normalized_distances(g.float())
    w = w.float()
    rc_f = relaxed_contrastive(d_f, w, delta)
    rc_g = relaxed_contrastive(d_g, w, delta)
    kl = kl_distillation(d_f, d_g)
    return LossTerms((rc_f + rc_g) / 2 + kl, rc_f, rc_g, kl)


def ntxent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent on two views ([N, D] each; row i of both is one image): over the 2N
    unit vectors, each row's cross-entropy of its other view against all 2N - 1 others, mean.
    The value of pytorch-metric-learning's SelfSupervisedLoss(NTXentLoss(temperature)) in one
    [2N, 2N] matrix (tests/test_losses.py); its pair form costs ~0.6 s a step at N = 120."""
    z = F.normalize(torch.cat([first, second]).float(), dim=1)
    n = first.shape[0]
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    pair = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, pair)
