"""The momentum teacher: an exponential moving average of the student (docs/method.md, "Networks")."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of the student, always in eval mode (batch norm uses its averaged statistics)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """phi <- m * phi + (1 - m) * theta for parameters and floating-point buffers (batch-norm statistics).
    Integer buffers (num_batches_tracked) are copied."""
    t_params: list[torch.Tensor] = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if t_params:
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1 - momentum)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        if t_buf.dtype.is_floating_point:
            t_buf.mul_(momentum).add_(s_buf, alpha=1 - momentum)
        else:
            t_buf.copy_(s_buf)
