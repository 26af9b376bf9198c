"""caption_vectors: table lookup + caption PEFT vs the T5 encoder forward, on the same caption batch.

    python -m benchmarks.caption_vectors            # T5-base and flan-t5-large sizes (random init)
    python -m benchmarks.caption_vectors --quick    # T5-base size only, fewer repeats
    python -m benchmarks.caption_vectors --device cuda

For each encoder size (built from a T5Config, random weights: timing only), on one batch of B
captions drawn from the demo corpus's caption generator:
- encoder: `T5EncoderModel` forward in inference mode (the frozen encoder a trainer without the
  table runs every step), on the captions' T5-length token ids;
- table, inference: `CaptionPEFT` in eval mode: the adapters are baked into the table once per
  weight update (timed separately), then a caption batch is a gather. The KL is computed only when a
  caller reads it (validation's loss does; generation does not): the row times the states alone, and
  the batch read with its KL is printed beside it;
- table, training: `CaptionPEFT` in train mode, forward (LoRA, VAE sampling, orthogonality) AND
  backward, no cache: what a training step pays for its captions. The backward starts from a fixed
  gradient of the caption states (what the decoder's cross-attention sends back) plus the KL and
  orthogonality terms: the module's own cost, not a stand-in loss's;
- the same two with the contextualiser (`caption_vectors.contextualiser`, the default 2 layers x 128,
  its output projection made non-zero), twice: with its corrections cached, as a training stage runs
  when its corpus's captions fit in `caption_cache_mb` (`CaptionPEFT.cache_context`, computed once per
  run before the first step: its cost per 1,000 captions is printed), and computed for every batch,
  as a corpus too big for that cache runs.
The table has the shape of a real build (tokens, attribute values and pieces, contexts; its rows are
the demo generator's, built from 2,000 captions) padded with vocabulary-fallback rows to a T5-sized
vocabulary; its vectors are random (timing only). The three are timed round-robin, one call each
per repeat after a warm-up, so a load change on a shared machine hits all three alike; the ratio is
taken per repeat and its median and spread (10th-90th percentile) printed, in wall time and in
process CPU time (which a busy shared machine inflates less). Memory: encoder weights
vs table + adapters (fp32). The process sets glibc's malloc as every stage does
(`tristage.environment.tune_malloc`): freed tensor memory stays in the process, so a step does not
re-fault the pages of the last one (both sides get it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

SIZES = {
    "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, feed_forward_proj="relu"),
    "flan-t5-large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
                          feed_forward_proj="gated-gelu"),
}
VOCAB_ROWS = 32000  # vocabulary-fallback rows, as a T5 tokenizer's vocabulary gives
GOALS = {"inference": 1000, "training": 100}


def demo_captions(n: int, seed: int) -> list[str]:
    from tristage.corpus.build import ACCENTS
    from tristage.corpus.text import EMOTION, MODULATION, PITCH, QUALITY, SPEED, caption

    values = dict(
        gender=["female", "male"],
        pitch=list(PITCH),
        speed=list(SPEED),
        modulation=list(MODULATION),
        quality=list(QUALITY),
        emotion=list(EMOTION),
        accent=[a[1] for a in ACCENTS],
    )
    rng = np.random.default_rng(seed)
    return [caption(rng, {k: v[int(rng.integers(len(v)))] for k, v in values.items()}) for _ in range(n)]


def bench_table(dim: int, n_build: int = 2000, seed: int = 0):
    """A table with a real build's rows (demo captions, our tokenizer), random vectors of width `dim`."""
    from tristage.captions.build import TableBuilder, tokenized_units
    from tristage.captions.encoder import train_tokenizer
    from tristage.captions.lexicon import LEXICON
    from tristage.captions.tokenize import CaptionParser
    from tristage.captions.vectors import VOCAB, CaptionVectorTable

    captions = demo_captions(n_build, seed)
    tok = train_tokenizer(captions, 1000)
    parser = CaptionParser(tok, LEXICON)
    units = tokenized_units(parser, captions)
    builder = TableBuilder()
    builder.add(units, [np.zeros((sum(len(u.positions) for u in us), 4), np.float32) for us in units])
    t = builder.finish(dict(name="bench", lexicon=LEXICON, end_token=parser.end_token, attribute_pieces=True,
                            context_keys=True), tokenizer=tok)
    names = t.tokens + [f"{VOCAB}v{i}" for i in range(VOCAB_ROWS)]
    kinds, bases = t.kinds + ["vocab"] * VOCAB_ROWS, t.bases + [f"v{i}" for i in range(VOCAB_ROWS)]
    vectors = np.random.default_rng(seed).standard_normal((len(names), dim)).astype(np.float32)
    return CaptionVectorTable(names, kinds, bases, vectors, t.meta, tokenizer=tok)


def caption_batch(table, batch: int, seed: int):
    """(ids (B, L) table rows, mask (B, L)) for `batch` demo captions not used to build the table."""
    import torch

    rows = [table.encode(c) for c in demo_captions(batch, seed + 1)]
    L = max(len(r) for r in rows)
    ids = torch.zeros(batch, L, dtype=torch.long)
    mask = torch.zeros(batch, L, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, :len(r)], mask[b, :len(r)] = torch.tensor(r), True
    return ids, mask


def bench_contextualiser(dim: int):
    """The default contextualiser's shape (2 layers x 128), output projection non-zero, frozen."""
    import torch

    from tristage.captions.config import ContextualiserParams
    from tristage.captions.contextual import Contextualiser, frozen

    p = ContextualiserParams()
    torch.manual_seed(0)
    ctx = Contextualiser(dim, p.width, p.layers, p.heads)
    with torch.no_grad():
        ctx.out.weight.normal_(0, 0.02)
    return frozen(ctx)


def round_robin(fns: dict, repeats: int, warmup: int, sync) -> tuple[dict, dict]:
    """Wall and process-CPU seconds per call of each fn, timed in turn (fn1, fn2, ... per repeat) after
    `warmup` rounds. CPU time counts the work done, not the time spent waiting for a core that other
    processes hold: on a shared machine it is the steadier of the two."""
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            if i >= warmup:
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    return {k: np.asarray(v) for k, v in wall.items()}, {k: np.asarray(v) for k, v in cpu.items()}


def spread(x: np.ndarray) -> str:
    return f"{np.median(x):.3g} [{np.percentile(x, 10):.3g}-{np.percentile(x, 90):.3g}]"


def timed_calls(name: str, batch: int, device: str):
    """The random-init T5 encoder of size `name`, the benchmark table and a batch of `batch` captions, and
    the calls every comparison here times:
    - encoder(): the frozen encoder's forward on the batch (T5-length token ids);
    - training(module): a train-mode caption module's forward and backward, from a fixed gradient of the
      caption states plus the KL and orthogonality terms, then its gradients dropped;
    - inference(module, kl=False): an eval-mode module's call under inference mode, its KL read if `kl`
      (as validation does; generation reads the states alone);
    - corpus(): the captions (table rows) a training stage would cache the contextualiser's corrections
      of: 1,000 more demo captions and the batch's.
    -> a namespace (cfg, enc, table, ids, mask, encoder, training, inference, corpus); ids and mask on
    `device`."""
    from types import SimpleNamespace

    import torch
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=32128, dropout_rate=0.0, **SIZES[name])
    torch.manual_seed(0)
    enc = T5EncoderModel(cfg).eval().to(device)
    table = bench_table(cfg.d_model)
    ids, mask = caption_batch(table, batch, seed=0)
    # the encoder's input: T5 tokenizes a caption into about as many tokens as the table has rows for it
    g = torch.Generator().manual_seed(0)
    ids_enc = (torch.randint(5, 32000, ids.shape, generator=g) * mask).to(device)
    g_states = torch.randn(ids.shape + (cfg.d_model,), generator=g).to(device) * mask[..., None].to(device)
    ids, mask = ids.to(device), mask.to(device)
    one = torch.ones((), device=device)

    def encoder():
        with torch.inference_mode():
            enc(input_ids=ids_enc, attention_mask=mask.long()).last_hidden_state

    def training(module):
        out = module(ids, mask)
        torch.autograd.backward([out.states, out.kl, out.ortho], [g_states, one, one])
        module.zero_grad(set_to_none=True)

    def inference(module, kl=False):
        with torch.inference_mode():
            out = module(ids, mask)
            if kl:
                out.kl.item()

    def corpus():
        rows = [table.encode(c) for c in demo_captions(1000, seed=2)]
        return rows + [r[m].tolist() for r, m in zip(ids.cpu(), mask.cpu())]

    return SimpleNamespace(cfg=cfg, enc=enc, table=table, ids=ids, mask=mask, encoder=encoder,
                           training=training, inference=inference, corpus=corpus)


def measure(name: str, batch: int, repeats: int, warmup: int, device: str) -> dict:
    import torch

    from tristage.captions.config import CaptionAdapters
    from tristage.captions.peft import CaptionPEFT

    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    run = timed_calls(name, batch, device)
    cfg, enc, table, ids, mask = run.cfg, run.enc, run.table, run.ids, run.mask
    peft_eval = CaptionPEFT(table, CaptionAdapters()).eval().to(device)
    peft_train = CaptionPEFT(table, CaptionAdapters()).train().to(device)
    table.contextualiser = bench_contextualiser(cfg.d_model)
    ctx_eval = CaptionPEFT(table, CaptionAdapters()).eval().to(device)
    ctx_train = CaptionPEFT(table, CaptionAdapters()).train().to(device)
    batch_eval = CaptionPEFT(table, CaptionAdapters()).eval().to(device)  # contextualiser run per batch
    batch_train = CaptionPEFT(table, CaptionAdapters()).train().to(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        peft_eval(ids, mask)  # first call bakes the enhanced table (once per parameter update)
    sync()
    t_bake = time.perf_counter() - t0
    # the corrections of a corpus's captions, computed once per run (here 1,000 more demo captions)
    corpus = run.corpus()
    sync()
    t0 = time.perf_counter()
    ctx_train.cache_context(corpus, max_mb=1e9)
    sync()
    t_cache = time.perf_counter() - t0
    ctx_eval.cache_context(corpus, max_mb=1e9)
    with torch.inference_mode():
        ctx_eval(ids, mask), batch_eval(ids, mask)
    inference = run.inference

    fns = dict(encoder=run.encoder, inference=lambda: inference(peft_eval),
               inference_kl=lambda: inference(peft_eval, kl=True),
               training=lambda: run.training(peft_train),
               inference_ctx=lambda: inference(ctx_eval), training_ctx=lambda: run.training(ctx_train),
               inference_ctx_batch=lambda: inference(batch_eval),
               training_ctx_batch=lambda: run.training(batch_train))
    t, c = round_robin(fns, repeats, warmup, sync)
    nbytes = lambda ts: sum(x.numel() * x.element_size() for x in ts)
    uniq = torch.unique(ids[mask])
    return dict(
        encoder=name,
        batch=batch,
        tokens=int(mask.sum()),
        unique_rows=len(uniq),
        d=cfg.d_model,
        times=t,
        ratio_inference=t["encoder"] / t["inference"],
        ratio_training=t["encoder"] / t["training"],
        ratio_inference_kl=t["encoder"] / t["inference_kl"],
        cpu_ratio_inference=c["encoder"] / c["inference"],
        cpu_ratio_training=c["encoder"] / c["training"],
        ratio_inference_ctx=t["encoder"] / t["inference_ctx"],
        ratio_training_ctx=t["encoder"] / t["training_ctx"],
        ratio_inference_ctx_batch=t["encoder"] / t["inference_ctx_batch"],
        ratio_training_ctx_batch=t["encoder"] / t["training_ctx_batch"],
        bake_ms=1e3 * t_bake,
        cache_ms_per_1000=1e3 * t_cache / len(corpus) * 1000,
        encoder_mb=nbytes(enc.parameters()) / 2**20,
        table_mb=table.vectors.numel() * 4 / 2**20,
        adapters_mb=nbytes(peft_train.parameters()) / 2**20,
        table_rows=len(table),
        vae_decoder=CaptionAdapters().vae_decoder,
        device=device,
    )


def report(r: dict, threads: int) -> str:
    ms = {k: v * 1e3 for k, v in r["times"].items()}
    ok = lambda ratio, goal: "ok" if np.median(ratio) >= goal else "MISSED"
    return (
        f"caption_vectors [{r['encoder']} size, d={r['d']}, {r['device']}, {threads} threads, vae_decoder: "
        f"{r['vae_decoder']}]: batch of "
        f"{r['batch']} demo captions ({r['tokens']} tokens, {r['unique_rows']} distinct table rows of "
        f"{r['table_rows']}); ms, median [p10-p90] of {len(ms['encoder'])} round-robin repeats: encoder "
        f"forward {spread(ms['encoder'])}; table + PEFT inference {spread(ms['inference'])} = "
        f"{spread(r['ratio_inference'])}x (goal >= {GOALS['inference']}x: "
        f"{ok(r['ratio_inference'], GOALS['inference'])}), with its KL read (validation) "
        f"{spread(ms['inference_kl'])} = {spread(r['ratio_inference_kl'])}x; training forward + backward "
        f"{spread(ms['training'])} = {spread(r['ratio_training'])}x (goal >= {GOALS['training']}x: "
        f"{ok(r['ratio_training'], GOALS['training'])}); in process CPU time (steadier under load) inference "
        f"{spread(r['cpu_ratio_inference'])}x, training {spread(r['cpu_ratio_training'])}x; "
        f"with the contextualiser (2 x 128), its corrections cached (computed once per run, "
        f"{r['cache_ms_per_1000']:.0f} ms per 1,000 captions): inference {spread(ms['inference_ctx'])} ms = "
        f"{spread(r['ratio_inference_ctx'])}x ({ok(r['ratio_inference_ctx'], GOALS['inference'])}), training "
        f"{spread(ms['training_ctx'])} ms = {spread(r['ratio_training_ctx'])}x "
        f"({ok(r['ratio_training_ctx'], GOALS['training'])}); computed every batch (a corpus over "
        f"caption_cache_mb): inference {spread(ms['inference_ctx_batch'])} ms = "
        f"{spread(r['ratio_inference_ctx_batch'])}x, training {spread(ms['training_ctx_batch'])} ms = "
        f"{spread(r['ratio_training_ctx_batch'])}x; "
        "baking the adapters into the table after a weight "
        f"update {r['bake_ms']:.0f} ms; memory: encoder weights {r['encoder_mb']:.0f} MiB vs table "
        f"{r['table_mb']:.0f} MiB + adapters {r['adapters_mb']:.0f} MiB"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="t5-base size only, 5 repeats")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    import torch

    from tristage.environment import tune_malloc

    tune_malloc()

    if a.quick:
        a.repeats = min(a.repeats, 5)
    if a.device == "cpu":
        torch.set_num_threads(max(1, min(os.cpu_count() or 1, 16)))
    rows = []
    sizes = ["t5-base"] if a.quick else [n for n in a.sizes.split(",") if n]
    unknown = set(sizes) - set(SIZES)
    if unknown:
        ap.error(f"--sizes: unknown {sorted(unknown)}; known: {', '.join(SIZES)}")
    for name in sizes:
        rows.append(measure(name, a.batch, a.repeats, a.warmup, a.device))
        print(report(rows[-1], torch.get_num_threads()), flush=True)
    print(
        f"command: python -m benchmarks.caption_vectors --batch {a.batch} --repeats {a.repeats} --warmup "
        f"{a.warmup}"
        + (" --quick" if a.quick else f" --sizes {','.join(sizes)}")
        + (f" --device {a.device}" if a.device != "cpu" else "")
    )
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
