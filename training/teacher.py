"""The EMA teacher update: every parameter and floating buffer (BN running statistics)
becomes m * teacher + (1 - m) * student; integer buffers are copied."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    student_state = student.state_dict()
    for name, value in teacher.state_dict().items():
        source = student_state[name]
        if value.dtype.is_floating_point:
            value.mul_(momentum).add_(source.detach().to(value.dtype), alpha=1.0 - momentum)
        else:
            value.copy_(source)
