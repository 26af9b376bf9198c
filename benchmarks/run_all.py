"""Run every benchmark script and write benchmarks/RESULTS.md (`make bench`).

Each script in this folder measures its figures against a baseline in the same run and
prints them; this runner records the machine, the date, the exact command and each
script's output, so a figure in RESULTS.md can always be reproduced.

    python -m benchmarks.run_all                 # all scripts, their default (full) sizes
    python -m benchmarks.run_all --only features --args "--quick"
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"__init__.py", "run_all.py"}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def scripts(only: list[str] | None) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if p.name not in SKIP)
    if only:
        found = [p for p in found if p.stem in only]
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="benchmark names (file stems) to run")
    ap.add_argument("--args", default="", help="extra arguments passed to every script")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    a = ap.parse_args(argv)
    env = dict(os.environ, TRISTAGE_TRACKING="0", PYTHONUNBUFFERED="1")
    sections, failed = [], []
    for script in scripts(a.only):
        cmd = [sys.executable, "-m", f"benchmarks.{script.stem}", *shlex.split(a.args)]
        shown = " ".join(["python", "-m", f"benchmarks.{script.stem}", *shlex.split(a.args)])
        print(f"== {shown}", flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True)
        took = time.perf_counter() - t0
        out = (r.stdout + ("\n" + r.stderr if r.returncode else "")).strip()
        print(out, flush=True)
        status = "ok" if r.returncode == 0 else f"FAILED (exit {r.returncode})"
        if r.returncode:
            failed.append(script.stem)
        sections.append(
            f"## {script.stem}\n\nCommand: `{shown}` ({took:.0f} s, {status})\n\n```\n{out}\n```\n"
        )
    header = (f"# Benchmark results\n\nWritten by `make bench` (`python -m benchmarks.run_all`) on "
              f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.\n\nMachine: {machine()}.\n\n"
              "Every figure is a ratio against a baseline measured in the same run on the same machine; "
              "absolute times vary with load on shared machines.\n\n")
    a.out.write_text(header + "\n".join(sections))
    print(f"wrote {a.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
