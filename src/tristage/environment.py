"""The environment defaults of every stage: offline and quiet, and the same numbers on any host.

Stages (`tristage.stage`), the Prefect flow's `dvc` calls, `make serve`'s Prefect server and
the tests all take them from here; an explicit setting in the user's environment wins.

`REPRODUCIBLE_ENV` pins each numeric library to its AVX2 code path, so an x86-64 host with AVX-512
(which numpy, OpenBLAS, MKL, oneDNN, PyTorch and CTranslate2 would otherwise use, with other
float rounding) computes the same bits as one without. Together with a fixed number of torch
threads per stage (`stageN.threads`, `features.threads`), a fresh `dvc repro` reproduces the
committed `dvc.lock` and metrics on any such host. These are read when each library loads, so
`tristage.stage` applies them before anything imports numpy or torch. `TRISTAGE_REPRODUCIBLE=0`
leaves every library on its native code path (faster on AVX-512 hosts; results then differ in the
last bits between hosts, and a rerun there no longer matches the committed outputs).
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


REPRODUCIBLE_ENV: dict[str, str] = {
    # numpy's ufunc loops: no AVX-512 targets (numpy >= 2.3 names, then the older ones)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_SKX AVX512_CLX "
                                "AVX512_CNL AVX512_KNL AVX512_KNM",
    "OPENBLAS_CORETYPE": "Haswell",    # numpy's / scipy's OpenBLAS kernels (else SkylakeX, Zen, ...)
    "ATEN_CPU_CAPABILITY": "avx2",     # PyTorch's vectorised CPU kernels
    "MKL_CBWR": "AVX2",                # PyTorch's MKL (matrix products): conditional numerical repro.
    "ONEDNN_MAX_CPU_ISA": "AVX2",      # PyTorch's oneDNN kernels
    "CT2_FORCE_CPU_ISA": "AVX2",       # CTranslate2 (the Whisper judge)
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # deterministic cuBLAS on a GPU (use_deterministic_algorithms)
}


def reproducible() -> bool:
    return os.environ.get("TRISTAGE_REPRODUCIBLE", "1") != "0"


def apply_quiet_env(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Fill in `QUIET_ENV` (and, unless TRISTAGE_REPRODUCIBLE=0, `REPRODUCIBLE_ENV` on x86-64) where
    `environ` (default `os.environ`) has no value; return it."""
    import platform

    env = os.environ if environ is None else environ
    pinned = REPRODUCIBLE_ENV if env.get("TRISTAGE_REPRODUCIBLE", "1") != "0" else {}
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pinned = {k: v for k, v in pinned.items() if k == "CUBLAS_WORKSPACE_CONFIG"}
    for key, value in {**QUIET_ENV, **pinned}.items():
        env.setdefault(key, value)
    return env


def deterministic_torch(threads: int) -> None:
    """Torch's share of reproducibility: `threads` intra-op threads (0 = torch's default: every core, so the
    float sums depend on the host) and deterministic algorithms (where they exist; no error elsewhere)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if reproducible():
        torch.use_deterministic_algorithms(True, warn_only=True)


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
        libc.gnu_get_libc_version  # not glibc: AttributeError
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    return bool(mmap_ok) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
