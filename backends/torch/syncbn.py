"""Synchronised BatchNorm for data-parallel runs: statistics of the global batch, as flax's
sharded BatchNorm computes them.

On CUDA this is :class:`torch.nn.SyncBatchNorm` (``convert_sync_batchnorm``). That class refuses
CPU tensors, so a CPU run under ``torchrun`` (the ``gloo`` process group) uses
:class:`GlooSyncBatchNorm`: the same computation written with a differentiable all-reduce (a sum
whose backward all-reduces the gradients, as ``torch.distributed.nn.functional.all_reduce``,
deprecated, did).
Either way the state_dict keys and buffers are BatchNorm2d's, so checkpoints do not change.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GlooSyncBatchNorm", "synchronise_batchnorm"]


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the whole process group's batch:
    the mean from an all-reduced sum, then the biased variance from an all-reduced sum of squared
    deviations (two passes, no ``E[x^2] - E[x]^2`` cancellation); the running variance takes the
    unbiased one, as :class:`torch.nn.BatchNorm2d` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), count]))
        total = sums[c]
        mean = sums[:c] / total
        centred = x - mean.view(1, c, 1, 1)
        var = all_reduce((centred * centred).sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (total / (total - 1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


class _AllReduceSum(torch.autograd.Function):
    """The sum over the process group, with the sum of the gradients as its backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.clone()
        dist.all_reduce(out)
        return out


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x)


def synchronise_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm2d synchronised over the default process group."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlooSyncBatchNorm  # same state, a forward over the global batch
    return model
