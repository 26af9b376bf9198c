"""Experiment (not part of `make bench`): how much of the caption PEFT's training step the seed's one VAE per
attribute value costs, against one VAE per attribute (7 instead of 26 for the demo lexicon).

    python -m benchmarks.experiments.caption_vae_sharing                 # T5-base size
    python -m benchmarks.experiments.caption_vae_sharing --sizes t5-base,flan-t5-large

`benchmarks/caption_vectors.py`'s table, caption batch, encoder and timed training step (`timed_calls`),
and its round robin: per repeat, the frozen encoder's forward, then train-mode forward + backward of
`CaptionPEFT` three ways, no contextualiser:
- `vae_decoder: value`, the seed's design: a VAE per attribute value;
- `vae_decoder: attribute`: the decoder matrices shared within an attribute; each value keeps its
  encoder, latent distribution and output bias (the decoders are the 10 MiB of a T5-base step);
- every attribute row's VAE slot set to its attribute's, so all the values of an attribute share one
  whole VAE: the upper bound of what sharing can save. Not an option of the stage: it would merge the
  values' encoders too, and the orthogonality would then be over the attributes' mean paths.
"""
from __future__ import annotations

import copy

from benchmarks.experiments import caption_step_args, caption_step_setup


def per_attribute(table):
    """A shallow copy of `table` whose attribute rows all take their attribute's VAE slot
    (`table.value_attribute`)."""
    shared = copy.copy(table)
    slots, rows = table.adapter_ids.clone(), table.is_attribute
    slots[rows] = table.value_attribute[slots[rows]]
    shared.adapter_ids = slots
    return shared, int(table.value_attribute.max()) + 1


def measure(name: str, batch: int, repeats: int, warmup: int) -> str:
    import torch

    from benchmarks.caption_vectors import round_robin, spread, timed_calls
    from tristage.captions.config import PeftParams
    from tristage.captions.peft import CaptionPEFT

    run = timed_calls(name, batch, "cpu")
    shared, n_attr = per_attribute(run.table)
    modules = {"value": CaptionPEFT(run.table, PeftParams(vae_decoder="value")).train(),
               "decoder": CaptionPEFT(run.table, PeftParams(vae_decoder="attribute")).train(),
               "attribute": CaptionPEFT(shared, PeftParams(vae_decoder="value")).train()}
    fns = dict(encoder=run.encoder, **{k: (lambda m=m: run.training(m)) for k, m in modules.items()})
    wall, _ = round_robin(fns, repeats, warmup, lambda: None)
    labels = dict(value="one VAE per value (the seed's; vae_decoder: value)",
                  decoder="decoders per attribute, encoders per value (vae_decoder: attribute)",
                  attribute="one whole VAE per attribute (upper bound)")
    parts = []
    for k, m in modules.items():
        mib = m.vae_dec_w.numel() * 4 / 2**20
        parts.append(f"{labels[k]}: {m.vae_mu_w.shape[0]} encoders, {m.vae_dec_w.shape[0]} decoders "
                     f"({mib:.1f} MiB): step {spread(wall[k] * 1e3)} ms = "
                     f"{spread(wall['encoder'] / wall[k])}x")
    return (f"caption_vae_sharing [{name} size, d={run.cfg.d_model}, cpu, {torch.get_num_threads()} threads, "
            f"batch {batch}, {n_attr} attributes; median [p10-p90] of {repeats} round-robin repeats]: "
            f"encoder forward {spread(wall['encoder'] * 1e3)} ms; " + "; ".join(parts))


def main(argv: list[str] | None = None) -> None:
    a = caption_step_args(__doc__).parse_args(argv)
    options = caption_step_setup(a)
    for name in a.sizes.split(","):
        print(measure(name, a.batch, a.repeats, a.warmup), flush=True)
    print(f"command: python -m benchmarks.experiments.caption_vae_sharing {options}")


if __name__ == "__main__":
    main()
