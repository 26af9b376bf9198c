"""Distributed data parallel: the same entry point runs alone or under
`torchrun --nproc_per_node N python -m steps.stage1` (NCCL on GPU, gloo on CPU).
Only rank 0 writes files and logs; every rank reads the same checkpoint on resume.
"""
from __future__ import annotations

import dataclasses
import os

from tristage.device import resolve_device


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(pref: str = "auto", key: str = "device") -> Dist:
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(pref, key, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def all_reduce_sum(values, d: Dist):
    """Sum a list of floats over ranks (identity when alone)."""
    if not d.enabled:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def average_gradients(params, d: Dist) -> None:
    """All-reduce (mean) the gradients of `params` across ranks: for updates made outside the DDP wrapper."""
    if not d.enabled:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= d.world


def barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
