"""Experiment (not part of `make bench`): the caption PEFT's training step (or inference) of this checkout
against the one of an earlier commit, side by side in one process.

    python -m benchmarks.experiments.caption_peft_versions --old 167ea3a
    python -m benchmarks.experiments.caption_peft_versions --old 167ea3a --sizes t5-base,flan-t5-large
    python -m benchmarks.experiments.caption_peft_versions --old cd1156d --inference --context

The old `src/tristage/captions/peft.py` is read with `git show <old>:...` and run as a module of its
own (it imports nothing of the package's own that this checkout lacks); both build their `CaptionPEFT`
from the same table with the same `PeftParams()`. `benchmarks/caption_vectors.py`'s batch, encoder and
timed training step (`timed_calls`) and its round robin: per repeat the frozen encoder's forward, old,
new, the encoder again, new, old, so drift on a shared machine hits both alike and each takes the place
right after the encoder (the coldest caches) half the time. Printed: each one's call and its ratio to
the encoder, median [p10-p90], and the median over repeats of old / new (the speed-up), taken per pair
of neighbouring calls. `--inference`: eval mode under `torch.inference_mode()` instead (the adapters
baked before the timing), the states alone; `--context` adds the benchmark's contextualiser, its
corrections cached for 1,000 demo captions and the batch, as a training stage caches its corpus.
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


def measure(name: str, old_mod, old: str, batch: int, repeats: int, warmup: int, inference: bool,
            context: bool) -> str:
    import torch

    from benchmarks.caption_vectors import (
        bench_contextualiser,
        round_robin,
        spread,
        timed_calls,
    )
    from tristage.captions.config import PeftParams
    from tristage.captions.peft import CaptionPEFT

    run = timed_calls(name, batch, "cpu")
    if context:
        run.table.contextualiser = bench_contextualiser(run.cfg.d_model)
    mods = {"old": old_mod.CaptionPEFT(run.table, PeftParams()).train(not inference),
            "new": CaptionPEFT(run.table, PeftParams()).train(not inference)}
    if context:
        corpus = run.corpus()
        for m in mods.values():
            m.cache_context(corpus, max_mb=1e9)
    call = run.inference if inference else run.training
    if inference:
        for m in mods.values():
            call(m)  # bakes the adapters (once per weight update)
    step = {k: (lambda m=m: call(m)) for k, m in mods.items()}
    fns = dict(encoder=run.encoder, old=step["old"], new=step["new"], encoder2=run.encoder, new2=step["new"],
               old2=step["old"])
    wall, _ = round_robin(fns, repeats, warmup, lambda: None)
    t = {k: np.concatenate([wall[k], wall[k + "2"]]) for k in ("old", "new")}
    enc = np.concatenate([wall["encoder"], wall["encoder2"]])
    what = "inference" if inference else "training step"
    head = (f"caption_peft_versions [{name} size, d={run.cfg.d_model}, cpu, {torch.get_num_threads()} "
            f"threads, batch {batch}, vae_decoder: {PeftParams().vae_decoder}, {what}"
            f"{', contextualiser cached' if context else ''}; median [p10-p90] of {2 * repeats} calls each]")
    return (f"{head}: encoder forward {spread(enc * 1e3)} ms; {old}: "
            f"{spread(t['old'] * 1e3)} ms = {spread(enc / t['old'])}x; this checkout: "
            f"{spread(t['new'] * 1e3)} ms = {spread(enc / t['new'])}x; speed-up (old / new, per pair) "
            f"{spread(t['old'] / t['new'])}")


def main(argv: list[str] | None = None) -> None:
    ap = caption_step_args(__doc__)
    ap.add_argument("--old", required=True, help="the commit to compare with")
    ap.add_argument("--inference", action="store_true", help="eval-mode inference instead of a training step")
    ap.add_argument("--context", action="store_true", help="with the contextualiser, its corrections cached")
    a = ap.parse_args(argv)
    options = caption_step_setup(a)
    old_mod = load_old(a.old)
    for name in a.sizes.split(","):
        print(measure(name, old_mod, a.old, a.batch, a.repeats, a.warmup, a.inference, a.context), flush=True)
    flags = (" --inference" if a.inference else "") + (" --context" if a.context else "")
    print(f"command: python -m benchmarks.experiments.caption_peft_versions --old {a.old}{flags} {options}")


if __name__ == "__main__":
    main()
