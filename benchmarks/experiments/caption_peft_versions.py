"""Experiment (not part of `make bench`): the caption PEFT's training step of this checkout against the one
of an earlier commit, side by side in one process.

    python -m benchmarks.experiments.caption_peft_versions --old 167ea3a
    python -m benchmarks.experiments.caption_peft_versions --old 167ea3a --sizes t5-base,flan-t5-large

The old `src/tristage/captions/peft.py` is read with `git show <old>:...` and run as a module of its
own (it imports nothing of the package's own that this checkout lacks); both build their `CaptionPEFT`
from the same table with the same `PeftParams()`. `benchmarks/caption_vectors.py`'s batch, encoder and
timed training step (`timed_calls`) and its round robin: per repeat the frozen encoder's forward, then
old, new, old, new, so drift on a shared machine hits both alike. Printed: each one's step and its ratio
to the encoder, median [p10-p90], and the median over repeats of old / new (the speed-up), taken per
pair of neighbouring calls.
"""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np

from benchmarks.experiments import caption_step_args, caption_step_setup

PEFT = "src/tristage/captions/peft.py"


def load_old(commit: str):
    """The module `peft.py` of `commit`, loaded under its own name (from git, no file written)."""
    root = Path(__file__).resolve().parents[2]
    try:
        src = subprocess.run(["git", "show", f"{commit}:{PEFT}"], cwd=root, check=True, capture_output=True,
                             text=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"--old {commit}: git show failed: {e.stderr.strip()}") from None
    mod = sys.modules["peft_old"] = types.ModuleType("peft_old")  # its dataclasses look themselves up there
    exec(compile(src, f"{commit}:{PEFT}", "exec"), mod.__dict__)
    return mod


def measure(name: str, old_mod, old: str, batch: int, repeats: int, warmup: int) -> str:
    import torch

    from benchmarks.caption_vectors import round_robin, spread, timed_calls
    from tristage.captions.config import PeftParams
    from tristage.captions.peft import CaptionPEFT

    run = timed_calls(name, batch, "cpu")
    mods = {"old": old_mod.CaptionPEFT(run.table, PeftParams()).train(),
            "new": CaptionPEFT(run.table, PeftParams()).train()}
    step = {k: (lambda m=m: run.training(m)) for k, m in mods.items()}
    fns = dict(encoder=run.encoder, old=step["old"], new=step["new"], old2=step["old"], new2=step["new"])
    wall, _ = round_robin(fns, repeats, warmup, lambda: None)
    t = {k: np.concatenate([wall[k], wall[k + "2"]]) for k in ("old", "new")}
    enc = np.concatenate([wall["encoder"], wall["encoder"]])
    head = (f"caption_peft_versions [{name} size, d={run.cfg.d_model}, cpu, {torch.get_num_threads()} "
            f"threads, batch {batch}, vae_decoder: {PeftParams().vae_decoder}; median [p10-p90] of "
            f"{2 * repeats} calls each]")
    return (f"{head}: encoder forward {spread(wall['encoder'] * 1e3)} ms; {old}: step "
            f"{spread(t['old'] * 1e3)} ms = {spread(enc / t['old'])}x; this checkout: step "
            f"{spread(t['new'] * 1e3)} ms = {spread(enc / t['new'])}x; speed-up (old / new, per pair) "
            f"{spread(t['old'] / t['new'])}")


def main(argv: list[str] | None = None) -> None:
    ap = caption_step_args(__doc__)
    ap.add_argument("--old", required=True, help="the commit to compare with")
    a = ap.parse_args(argv)
    options = caption_step_setup(a)
    old_mod = load_old(a.old)
    for name in a.sizes.split(","):
        print(measure(name, old_mod, a.old, a.batch, a.repeats, a.warmup), flush=True)
    print(f"command: python -m benchmarks.experiments.caption_peft_versions --old {a.old} {options}")


if __name__ == "__main__":
    main()
