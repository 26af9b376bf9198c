"""Device resolution, in one place: `auto` | `cpu` | `cuda` | `cuda:N` -> a torch device string.

    resolve_device("auto", "features.device")            # "cuda" if a GPU is visible, else "cpu"
    resolve_device("cuda", "stage1.device", local_rank=1)  # "cuda:1" (a DDP process's own GPU)
    deterministic_kernels()                                # same code, data, seed -> same bits
"""
from __future__ import annotations

import os

from tristage.errors import UserError


def deterministic_kernels() -> None:
    """Kernels that give the same bits run after run. With more than one CPU thread the parallel
    scatter-adds of a backward pass (index_put with accumulate, the caption adapters' gathers) summed
    in another order each run: two stage1 runs of the same code differed after a few steps (measured:
    177 of 206 tensors after 40 steps on 2 threads; 0 with this, at no measurable cost). Ops without a
    deterministic kernel warn instead of failing; CUDA's matmuls need the cuBLAS workspace below,
    set before the first one."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(pref: str, key: str = "device", local_rank: int | None = None) -> str:
    """`pref` as a device string; with `local_rank`, CUDA means that rank's GPU. Asking for CUDA where none
    is visible is a one-line error that names the params `key`."""
    import torch

    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise UserError(f"{key}: {pref} requested but no CUDA device is visible; set {key}: auto or cpu")
    if local_rank is not None:
        return f"cuda:{local_rank}"
    return "cuda" if pref == "auto" else pref
