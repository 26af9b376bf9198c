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


def constant_buffers(model) -> list[str]:
    """Qualified names of the model's non-persistent buffers, registered or still None. Here they are
    constants that every rank derives alike from the same files (the caption table and what is built
    from it), so DDP need not broadcast them at every forward as it does the persistent ones (a
    BatchNorm's running statistics)."""
    return sorted(f"{name}.{b}" if name else b for name, m in model.named_modules()
                  for b in m._non_persistent_buffers_set)


def wrap(model, d: Dist):
    """`model` in DistributedDataParallel. Its constant buffers (`constant_buffers`: the caption table,
    its contextualiser, the cache of its corrections, GBs at the seed's scale) stay out of the broadcast
    from rank 0 that DDP runs before every forward; the persistent ones are still synced."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    DDP._set_params_and_buffers_to_ignore_for_model(model, constant_buffers(model))
    return DDP(model, device_ids=[d.local_rank] if d.device.startswith("cuda") else None,
               find_unused_parameters=False)


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
