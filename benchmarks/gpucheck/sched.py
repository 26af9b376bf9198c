"""GPU scheduling without Prefect's server: flows/orchestration/gpu.py on a real GPU machine.

    python3 .gpucheck/sched.py      # from the repo root, PYTHONPATH=src:.

Checks, printing PASS/FAIL per check (exit 1 if any FAIL):
1. visible_gpus() with CUDA_VISIBLE_DEVICES unset comes from `nvidia-smi -L` and is ["0"] (one H100);
2. claim_device(devices, lock_dir) holds the device; a second claim (same process, and from another
   process) with timeout_s=1 raises TimeoutError, as the module documents (it polls, never shares);
3. a child started with CUDA_VISIBLE_DEVICES=<claimed id> sees exactly one CUDA device;
4. after release the device can be claimed again; gpu_slot(use_prefect=False) gives the same id;
5. prefect was never imported.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

failures: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}: {name}{(' -- ' + detail) if detail else ''}", flush=True)
    if not ok:
        failures.append(name)


def main() -> int:
    orig = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    print(f"CUDA_VISIBLE_DEVICES in the environment: {orig!r} (unset for this check)")
    from flows.orchestration import gpu

    smi = shutil.which("nvidia-smi")
    print(f"nvidia-smi: {smi}")
    devices = gpu.visible_gpus()
    print(f"visible_gpus() = {devices!r}; n_slots = {gpu.n_slots(devices)}")
    check("visible_gpus() from nvidia-smi == ['0']", smi is not None and devices == ["0"], repr(devices))

    os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    check("visible_gpus() follows CUDA_VISIBLE_DEVICES", gpu.visible_gpus() == ["0"])
    del os.environ["CUDA_VISIBLE_DEVICES"]

    here = Path(__file__).resolve().parents[2]
    env_base = dict(os.environ)
    env_base["PYTHONPATH"] = os.pathsep.join(
        [str(here / "src"), str(here)] + [p for p in env_base.get("PYTHONPATH", "").split(os.pathsep) if p])

    with tempfile.TemporaryDirectory() as tmp:
        lock_dir = Path(tmp) / "locks"
        with gpu.claim_device(devices, lock_dir) as dev:
            print(f"claimed device {dev!r}; lock files: {sorted(p.name for p in lock_dir.iterdir())}")
            check("claim_device yields the device", dev == (devices[0] if devices else ""), repr(dev))
            lock = lock_dir / (f"gpu{dev}.lock" if dev else "cpu.lock")
            check("lock file holds our pid", lock.read_text().strip() == str(os.getpid()))

            t0 = time.monotonic()
            try:
                with gpu.claim_device(devices, lock_dir, poll_s=0.1, timeout_s=1.0) as dev2:
                    check("second claim (same process) refused", False, f"got {dev2!r}")
            except TimeoutError as e:
                check("second claim (same process) refused", True,
                      f"TimeoutError after {time.monotonic() - t0:.1f} s: {e}")

            code = ("import sys, time\nfrom pathlib import Path\nfrom flows.orchestration import gpu\n"
                    f"try:\n    with gpu.claim_device({list(devices)!r}, Path({str(lock_dir)!r}), "
                    "poll_s=0.1, timeout_s=1.0) as d:\n        print('GOT', repr(d)); sys.exit(3)\n"
                    "except TimeoutError as e:\n    print('TIMEOUT', e); sys.exit(0)\n")
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_base,
                               timeout=60)
            check("second claim (other process) refused", r.returncode == 0,
                  (r.stdout + r.stderr).strip()[-300:])

            env = dict(env_base, CUDA_VISIBLE_DEVICES=dev)
            r = subprocess.run(
                [sys.executable, "-c",
                 "import os, torch; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), "
                 "torch.cuda.is_available(), torch.cuda.device_count(), "
                 "torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); "
                 "print('COUNT', torch.cuda.device_count())"],
                capture_output=True, text=True, env=env, timeout=120)
            out = (r.stdout + r.stderr).strip()
            print(f"child with CUDA_VISIBLE_DEVICES={dev!r}: {out[-500:]}")
            counts = [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("COUNT ")]
            count = int(counts[-1]) if r.returncode == 0 and counts else -1
            if smi is None:
                print("SKIP: child sees one CUDA device (no nvidia-smi: not a GPU machine)")
            else:
                check("child sees exactly one CUDA device", count == 1, f"device_count={count}")

        with gpu.claim_device(devices, lock_dir, poll_s=0.1, timeout_s=2.0) as dev3:
            first = devices[0] if devices else ""
            check("device free again after release", dev3 == first, repr(dev3))
        with gpu.gpu_slot(lock_dir, use_prefect=False) as dev4:
            check("gpu_slot(use_prefect=False) yields the same device", dev4 == first, repr(dev4))

    check("prefect not imported", "prefect" not in sys.modules)
    print(f"sched: {len(failures)} failure(s){': ' + ', '.join(failures) if failures else ''}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
