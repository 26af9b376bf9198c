"""Gradient reversal layer (Ganin et al., 2016): identity forward, -lambda * grad backward."""
from __future__ import annotations

import torch
import torch.nn as nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    return _GradReverse.apply(x, lambd)


class GradientReversal(nn.Module):
    """No parameters; lambda is given per call (it may follow a schedule or the band control)."""

    def forward(self, x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
        return grad_reverse(x, lambd)
