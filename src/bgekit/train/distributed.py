"""Cross-process helpers for training under torchrun / accelerate (any backend: gloo, NCCL)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every process in rank order; this process's slice keeps its
    autograd graph (the others arrive as constants), so each process back-propagates the
    loss over the whole gathered batch into its own inputs. Every process must pass the
    same shape."""
    rank, size = world()
    if size == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(size)]
    dist.all_gather(parts, t.detach().contiguous())
    parts[rank] = t
    return torch.cat(parts, dim=0)
