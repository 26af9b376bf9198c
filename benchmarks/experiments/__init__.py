"""Experiments: measurements run by hand to decide a design question, not part of `make bench`."""
from __future__ import annotations

import argparse


def caption_step_args(doc: str) -> argparse.ArgumentParser:
    """The options every caption-step experiment takes: encoder sizes, batch, round-robin repeats and
    warm-up, CPU threads."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--sizes", default="t5-base")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    return ap


def caption_step_setup(a: argparse.Namespace) -> str:
    """Sets the process up as every stage and the caption_vectors benchmark do (freed memory kept,
    `tristage.environment.tune_malloc`; `a.threads` threads) -> those options as a command line."""
    import torch

    from tristage.environment import tune_malloc

    tune_malloc()
    torch.set_num_threads(a.threads)
    return (f"--sizes {a.sizes} --batch {a.batch} --repeats {a.repeats} --warmup {a.warmup} "
            f"--threads {a.threads}")
