"""torchrun / DDP plumbing: process group set-up and gathering features across ranks with gradients.

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the master
address; :func:`init_distributed` reads them (gloo on CPU, NCCL on GPU). Without them everything runs as one
process and the gathers are the identity.

:func:`gather_rows` concatenates every rank's rows in rank order and keeps the graph: its backward sums the
gradient of the gathered tensor over ranks (every rank computes the same loss on the same gathered tensor) and
hands each rank the rows it contributed. With DDP averaging parameter gradients over ranks, the result is the
gradient of the loss of the whole global batch, as if one process had seen it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistributedContext", "init_distributed", "gather_rows", "all_true"]


@dataclass
class DistributedContext:
    """Where this process sits.

    Attributes:
        rank: global rank (0 on one process).
        world_size: number of processes.
        local_rank: rank on this node (picks the GPU).
        device: the device this process trains on.
        distributed: whether a process group is initialised.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op on one process)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group this context created."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
            self.distributed = False


def init_distributed(device: Optional[str] = None, backend: Optional[str] = None) -> DistributedContext:
    """Initialise the process group from torchrun's environment, or describe a single process.

    Args:
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available). Under torchrun each rank takes
            ``cuda:LOCAL_RANK``.
        backend: process-group backend; default NCCL for CUDA, gloo for CPU.

    Returns:
        DistributedContext: this process's rank, world size and device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
        dev = torch.device("cuda", local if world > 1 else (torch.device(kind).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(kind)
    if world <= 1:
        return DistributedContext(device=dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                              device=dev, distributed=True)


class _GatherRows(torch.autograd.Function):
    """All-gather of equally sized tensors along dim 0, differentiable."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows, ctx.rank = x.shape[0], rank
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return (grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows],)


def _sizes(n: int, device: torch.device) -> List[int]:
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def gather_rows(x: Tensor, ctx: DistributedContext, grad: bool = True) -> Tensor:
    """Every rank's rows of ``x`` concatenated in rank order (ranks may contribute different numbers of rows).

    Args:
        x: ``(n_rank, ...)`` this rank's rows.
        ctx: the distributed context (identity on one process).
        grad: keep the graph (floating-point ``x``): the backward hands each rank the gradient of its own rows,
            summed over ranks. Every rank must then use the result in its loss, so that every rank runs the
            backward's collective. False for labels and weights.

    Returns:
        ``(sum of n_rank, ...)``.
    """
    if not ctx.distributed:
        return x
    sizes = _sizes(x.shape[0], x.device)
    longest = max(sizes)
    padded = torch.cat([x, x.new_zeros((longest - x.shape[0],) + tuple(x.shape[1:]))]) if longest > x.shape[0] \
        else x
    if grad and torch.is_grad_enabled():
        if not padded.requires_grad:  # e.g. a rank without phrases: still take part in the backward's all-reduce
            padded = padded.detach().requires_grad_()
        gathered = _GatherRows.apply(padded)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        gathered = torch.cat(parts)
    keep = torch.cat([torch.arange(r * longest, r * longest + s, device=x.device) for r, s in enumerate(sizes)])
    return gathered.index_select(0, keep)


def all_true(flag: bool, ctx: DistributedContext) -> bool:
    """Whether ``flag`` holds on every rank (a collective: every rank must call it)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.long, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
