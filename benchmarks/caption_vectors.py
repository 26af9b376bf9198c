"""caption_vectors: table lookup + caption PEFT vs the T5 encoder forward, on the same caption batch.

    python -m benchmarks.caption_vectors            # T5-base and flan-t5-large sizes (random init)
    python -m benchmarks.caption_vectors --quick    # T5-base size only
    python -m benchmarks.caption_vectors --device cuda

For each encoder size (built from a T5Config, random weights: timing only), in one run on the
same batch of caption token ids (B captions, lengths like the demo corpus's):
- encoder: `T5EncoderModel` forward, inference mode;
- table: `CaptionPEFT` (eval, inference mode) over a vector table of the same width: the
  adapters are baked into the table once per weight update (timed separately), then a caption
  batch is a gather; and the training-mode forward (LoRA + VAE sampling + orthogonality, with
  autograd, no cache), what a training step pays. The table has the shape a real build gives
  (tokens, attribute values and pieces, contexts, vocabulary fallback rows).
Median of several repeats after one warm-up. Memory: encoder weights vs table + adapters
(fp32 bytes). Goal: table path at least 100x faster per caption batch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

SIZES = {
    "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, feed_forward_proj="relu"),
    "flan-t5-large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
                          feed_forward_proj="gated-gelu"),
}
# a table shaped like a real build on a larger caption corpus
ROWS = dict(token=600, attribute=400, context=6000, vocab=32000)
N_VALUES = 60  # attribute values (VAEs)


def fake_table(dim: int, seed: int = 0):
    import numpy as np

    from tristage.captions.vectors import UNK, CaptionVectorTable

    tokens, kinds, bases = [UNK], ["unk"], [UNK]
    for i in range(ROWS["token"]):
        tokens.append(f"t{i}"), kinds.append("token"), bases.append(f"t{i}")
    for i in range(ROWS["attribute"]):
        tokens.append(f"<a:{i % N_VALUES}>\tp{i}"), kinds.append("attribute"), bases.append(f"<a:{i % N_VALUES}>")
    for i in range(ROWS["context"]):
        b = f"t{i % ROWS['token']}"
        tokens.append(f"x{i}\t{b}\t"), kinds.append("context"), bases.append(b)
    for i in range(ROWS["vocab"]):
        tokens.append(f"<vocab>\tv{i}"), kinds.append("vocab"), bases.append(f"v{i}")
    vec = np.random.default_rng(seed).standard_normal((len(tokens), dim)).astype(np.float32)
    return CaptionVectorTable(tokens, kinds, bases, vec, {"name": "bench", "pretrained": False})


def _median_time(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, batch: int, length: int, repeats: int, device: str) -> dict:
    import torch
    from transformers import T5Config, T5EncoderModel

    from tristage.captions.config import PeftParams
    from tristage.captions.peft import CaptionPEFT

    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    cfg = T5Config(vocab_size=32128, dropout_rate=0.0, **SIZES[name])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    enc = T5EncoderModel(cfg).eval().to(device)
    t_init = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).to(device)  # (B, L)
    ids_enc = torch.randint(5, 32000, (batch, length), generator=g).to(device) * mask
    table = fake_table(cfg.d_model)
    peft = CaptionPEFT(table, PeftParams()).eval().to(device)
    # a table caption: mostly context / token rows, about a third attribute rows
    pick = torch.randint(1, 1 + ROWS["token"] + ROWS["attribute"] + ROWS["context"], (batch, length), generator=g)
    ids_tab = pick.to(device) * mask

    with torch.inference_mode():
        t_enc = _median_time(lambda: enc(input_ids=ids_enc, attention_mask=mask.long()).last_hidden_state,
                             repeats, sync)
        t0 = time.perf_counter()
        peft(ids_tab, mask)  # first call bakes the enhanced table (once per parameter update)
        sync()
        t_bake = time.perf_counter() - t0
        t_tab = _median_time(lambda: peft(ids_tab, mask), max(repeats, 20), sync)
    peft.train()
    t_train = _median_time(lambda: peft(ids_tab, mask), max(repeats, 10), sync)  # training: no cache, with grad
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    enc_mb = nbytes(enc.parameters()) / 2**20
    table_mb = table.vectors.numel() * 4 / 2**20
    adapters_mb = nbytes(peft.parameters()) / 2**20
    del enc
    return dict(encoder=name, batch=batch, max_len=length, tokens=int(lengths.sum()), d=cfg.d_model,
                encoder_ms=1e3 * t_enc, table_peft_ms=1e3 * t_tab, speedup=t_enc / t_tab,
                bake_ms=1e3 * t_bake, train_forward_ms=1e3 * t_train, train_speedup=t_enc / t_train,
                encoder_mb=enc_mb, table_mb=table_mb, adapters_mb=adapters_mb,
                memory_saved_mb=enc_mb - table_mb - adapters_mb, init_s=t_init, device=device)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=48, help="max caption tokens (the demo corpus: 25-45)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="t5-base size only")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    import torch

    if a.device == "cpu":
        torch.set_num_threads(max(1, min(os.cpu_count() or 1, 16)))
    rows = []
    for name in (["t5-base"] if a.quick else list(SIZES)):
        r = measure(name, a.batch, a.length, a.repeats, a.device)
        rows.append(r)
        print(f"caption_vectors [{name} size, d={r['d']}, {a.device}, {torch.get_num_threads()} threads]: "
              f"batch of {r['batch']} captions ({r['tokens']} tokens): encoder forward {r['encoder_ms']:.1f} ms; "
              f"table lookup + PEFT {r['table_peft_ms']:.2f} ms = {r['speedup']:.0f}x faster "
              f"(goal >= 100x: {'ok' if r['speedup'] >= 100 else 'MISSED'}; baking the adapters into the table "
              f"after a weight update {r['bake_ms']:.0f} ms); in training (train mode, VAE sampling, autograd, no "
              f"cache) {r['train_forward_ms']:.1f} ms = {r['train_speedup']:.0f}x; memory: encoder weights "
              f"{r['encoder_mb']:.0f} MiB vs table {r['table_mb']:.0f} MiB + adapters {r['adapters_mb']:.0f} MiB "
              f"(saves {r['memory_saved_mb']:.0f} MiB)", flush=True)
    print(f"command: python -m benchmarks.caption_vectors --batch {a.batch} --length {a.length} --repeats "
          f"{a.repeats}" + (" --quick" if a.quick else "") + (f" --device {a.device}" if a.device != "cpu" else ""))
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
