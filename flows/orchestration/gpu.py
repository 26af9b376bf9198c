"""GPU slots: a Prefect global concurrency limit `gpu` plus a per-device file lock.

The Prefect limit (one slot per visible GPU; one slot on a CPU machine) bounds how many
training tasks run at once, across flow runs and processes, and shows them in the UI.
It does not say *which* GPU a holder got, so inside the slot a task claims one device
with an exclusive `flock` on `<lock_dir>/gpu<i>.lock`; the device goes into the
stage's `CUDA_VISIBLE_DEVICES`. Two runs started at once never share a GPU.

    with gpu_slot(lock_dir) as device:        # device: "0", "1", ... or "" on CPU
        env["CUDA_VISIBLE_DEVICES"] = device
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

GPU_LIMIT = "gpu"


def visible_gpus() -> list[str]:
    """Device ids this process may use: `CUDA_VISIBLE_DEVICES` if set, else `nvidia-smi -L`.

    An empty list means a CPU machine (it still gets one slot, device "")."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def n_slots(devices: Sequence[str]) -> int:
    return max(1, len(devices))


def ensure_gpu_limit(limit: int, name: str = GPU_LIMIT) -> int:
    """Create the Prefect global concurrency limit `name` with `limit` slots if it is missing.

    An existing limit is left as it is (an admin may have changed it on purpose);
    returns the limit in force."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
            return int(existing.limit)
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            log.info("created Prefect global concurrency limit %r with %d slot(s)", name, limit)
        except ObjectAlreadyExists:  # created by a run started at the same moment
            pass
        return int(client.read_global_concurrency_limit_by_name(name).limit)


@contextlib.contextmanager
def claim_device(devices: Sequence[str], lock_dir: Path, poll_s: float = 0.5,
                 timeout_s: float | None = None) -> Iterator[str]:
    """Hold an exclusive lock on one of `devices` (or on the single CPU slot) and yield its id.

    Within a Prefect slot a free device exists unless a process outside Prefect holds one;
    then this waits (polling) rather than share."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    slots = list(devices) or [""]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        for i, dev in enumerate(slots):
            path = lock_dir / (f"gpu{dev}.lock" if dev else "cpu.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                yield dev
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{lock_dir}: no free device among {slots} after {timeout_s} s")
        time.sleep(poll_s)


@contextlib.contextmanager
def gpu_slot(lock_dir: Path, devices: Sequence[str] | None = None, limit_name: str = GPU_LIMIT,
             use_prefect: bool = True) -> Iterator[str]:
    """One slot of the Prefect limit `gpu` and one device lock; yields the CUDA_VISIBLE_DEVICES value."""
    devices = visible_gpus() if devices is None else list(devices)
    if not use_prefect:
        with claim_device(devices, lock_dir) as dev:
            yield dev
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(limit_name, occupy=1):
        with claim_device(devices, lock_dir) as dev:
            yield dev
