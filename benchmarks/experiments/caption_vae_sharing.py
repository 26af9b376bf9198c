"""Experiment (not part of `make bench`): how much of the caption PEFT's training step the seed's one VAE per
attribute value costs, against one VAE per attribute (7 instead of 26 for the demo lexicon).

    python -m benchmarks.experiments.caption_vae_sharing                 # T5-base size
    python -m benchmarks.experiments.caption_vae_sharing --sizes t5-base,flan-t5-large

`benchmarks/caption_vectors.py`'s table, caption batch, encoder and timed training step (`timed_calls`),
and its round robin: per repeat, the frozen encoder's forward, then a train-mode forward + backward of
`CaptionPEFT` as the stage builds it (a VAE per attribute value), then the same with every attribute
row's VAE slot set to its attribute's, so all the values of an attribute share one VAE. No
contextualiser. The second is the upper bound of what sharing can save: sharing only the decoders (the
10 MiB a T5-base step reads and writes three times), with the encoders, latents and biases kept per
value, would land between the two. It is not an option of the stage; the orthogonality is then computed
over the attributes' mean paths, not the values'.
"""
from __future__ import annotations

import argparse
import copy


def per_attribute(table):
    """A shallow copy of `table` whose attribute rows all take their attribute's VAE slot."""
    from tristage.captions.vectors import ATTRIBUTE_KINDS

    shared = copy.copy(table)
    slots, attrs = table.adapter_ids.clone(), {}
    for i, (base, kind) in enumerate(zip(table.bases, table.kinds)):
        if kind in ATTRIBUTE_KINDS:  # base "<pitch:high>" -> attribute "pitch"
            slots[i] = attrs.setdefault(base[1:].split(":")[0], len(attrs))
    shared.adapter_ids = slots
    return shared, len(attrs)


def measure(name: str, batch: int, repeats: int, warmup: int) -> str:
    import torch

    from benchmarks.caption_vectors import round_robin, spread, timed_calls
    from tristage.captions.config import PeftParams
    from tristage.captions.peft import CaptionPEFT

    run = timed_calls(name, batch, "cpu")
    shared, n_attr = per_attribute(run.table)
    modules = {"value": CaptionPEFT(run.table, PeftParams()).train(),
               "attribute": CaptionPEFT(shared, PeftParams()).train()}
    fns = dict(encoder=run.encoder, **{k: (lambda m=m: run.training(m)) for k, m in modules.items()})
    wall, _ = round_robin(fns, repeats, warmup, lambda: None)
    parts = []
    for k, m in modules.items():
        mib = m.vae_dec_w.numel() * 4 / 2**20
        parts.append(f"one VAE per {k} ({m.vae_dec_w.shape[0]} VAEs, decoders {mib:.1f} MiB): step "
                     f"{spread(wall[k] * 1e3)} ms = {spread(wall['encoder'] / wall[k])}x")
    return (f"caption_vae_sharing [{name} size, d={run.cfg.d_model}, cpu, {torch.get_num_threads()} threads, "
            f"batch {batch}, {n_attr} attributes; median [p10-p90] of {repeats} round-robin repeats]: "
            f"encoder forward {spread(wall['encoder'] * 1e3)} ms; " + "; ".join(parts))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="t5-base")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import torch

    from tristage.environment import tune_malloc

    tune_malloc()  # as every stage and the caption_vectors benchmark do
    torch.set_num_threads(a.threads)
    for name in a.sizes.split(","):
        print(measure(name, a.batch, a.repeats, a.warmup), flush=True)
    print(f"command: python -m benchmarks.experiments.caption_vae_sharing --sizes {a.sizes} "
          f"--batch {a.batch} --repeats {a.repeats} --warmup {a.warmup} --threads {a.threads}")


if __name__ == "__main__":
    main()
