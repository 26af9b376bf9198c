"""Device resolution, in one place: `auto` | `cpu` | `cuda` | `cuda:N` -> a torch device string.

    resolve_device("auto", "features.device")            # "cuda" if a GPU is visible, else "cpu"
    resolve_device("cuda", "stage1.device", local_rank=1)  # "cuda:1" (a DDP process's own GPU)
"""
from __future__ import annotations

from tristage.errors import UserError


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
