"""The one list of environment defaults that keep every tool offline and quiet.

Stages (`tristage.stage`), the Prefect flow's `dvc` calls, `make serve`'s Prefect server and
the tests all take them from here; an explicit setting in the user's environment wins.
"""
from __future__ import annotations

import os
from typing import MutableMapping

QUIET_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",                       # no hub downloads at run time
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",           # no fork warnings from the tokenizers library
}


def apply_quiet_env(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Fill in `QUIET_ENV` where `environ` (default `os.environ`) has no value; return it."""
    env = os.environ if environ is None else environ
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)
    return env


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest value glibc accepts on 64-bit


def tune_malloc() -> bool:
    """Keep freed tensor memory in the process instead of giving it back to the kernel (glibc only).

    PyTorch's CPU tensors come from malloc, and glibc serves big blocks with mmap and returns them on
    free (and trims its heap), so a training step that frees its activations and gradients re-faults
    every page of them the next step. Measured on the caption PEFT's step at T5-base size (2 cores):
    thousands of page faults in some steps and about 30% of the median time. This raises the mmap
    threshold to 32 MiB (the most glibc allows) and never trims: the process keeps its peak heap, as
    PyTorch's CUDA caching allocator does on a GPU. `TRISTAGE_MALLOC=system` leaves glibc as it is.
    True when applied."""
    if os.environ.get("TRISTAGE_MALLOC", "").lower() == "system":
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (not glibc: AttributeError)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    return bool(mmap_ok) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
