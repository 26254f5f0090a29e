"""The SimCLR baseline's NT-Xent (training/losses.ntxent) against pytorch-metric-learning's own
SelfSupervisedLoss(NTXentLoss), the loss the accuracy benchmark names: value and gradient."""

import pytest
import torch
from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss

from training.losses import ntxent


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_ntxent_equals_pytorch_metric_learning(temperature: float) -> None:
    torch.manual_seed(0)
    a = torch.randn(24, 16, requires_grad=True)
    b = (a.detach() + 0.5 * torch.randn(24, 16)).requires_grad_(True)
    ours = ntxent(a, b, temperature)
    theirs = SelfSupervisedLoss(NTXentLoss(temperature=temperature))(a, b)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5, abs=1e-6)
    ours_grad = torch.autograd.grad(ours, (a, b))
    theirs_grad = torch.autograd.grad(theirs, (a, b))
    for mine, ref in zip(ours_grad, theirs_grad, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6)


def test_ntxent_rewards_matching_views() -> None:
    torch.manual_seed(1)
    a = torch.randn(32, 8)
    assert float(ntxent(a, a, 0.1)) < float(ntxent(a, torch.randn(32, 8), 0.1))
