"""training: throughput (samples/s) and the data loader's overhead vs in-memory batches.

    python -m benchmarks.training            # tiny model, fake corpus (48 utterances), 40 steps
    python -m benchmarks.training --quick    # 15 steps
    python -m benchmarks.training --cuda     # also: all three stages on CUDA (when available)

Same model, same batches, same number of steps, in one run:
- loader: every step builds its batch with `TrainData.next_batch` (sampler, crops, references,
  padding) as the trainer does;
- in-memory: the same batches built beforehand, the loop only trains.
Overhead = (loader time - in-memory time) / in-memory time; goal at most 10%.
With CUDA, runs stage1 -> stage2 -> stage3 through `train_stage` on the GPU and prints each
stage's samples/s and mel_loss.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _loop(model, opt, get_batch, steps: int) -> float:
    import torch

    t0 = time.perf_counter()
    for i in range(steps):
        batch = get_batch(i)
        out = model(batch, speaker_head=True, grl_lambda=1.0)
        (out["mel_loss"] + 0.1 * out["speaker_loss"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize() if torch.cuda.is_available() and next(model.parameters()).is_cuda else None
    return time.perf_counter() - t0


def loader_overhead(steps: int, batch_size: int) -> tuple[float, float, float, float]:
    import torch

    from tristage.config import load_params
    from tristage.model.config import PRESETS, TTSConfig
    from tristage.model.tts import TTS
    from tristage.testing.fakes import FakeCaptionPEFT, fake_sources
    from tristage.training.data import TrainData

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    src = fake_sources(n_speakers=12, utts_per_speaker=20, n_codebooks=4, codebook_size=256, n_mels=80,
                       min_frames=60, max_frames=170)
    sp = load_params(None, [f"stage1.batch_size={batch_size}"]).stage1
    cfg = TTSConfig(n_codebooks=4, codebook_size=256, n_mels=80, caption_dim=src.table.dim, n_speakers=12,
                    **PRESETS["tiny"])

    def fresh():
        torch.manual_seed(0)
        m = TTS(cfg, FakeCaptionPEFT(src.table))
        return m, torch.optim.AdamW(m.parameters(), 2e-4)

    data = TrainData(src, sp, cfg.max_text_len, cfg.max_frames)
    for i in data.train_idx:  # warm the feature cache: both runs read features from memory
        data.features(i)
    state = data.sampler.state_dict()
    m, o = fresh()
    _loop(m, o, lambda i: data.next_batch(), 3)  # warm-up (allocator, threads)
    data.sampler.load_state_dict(state)
    t0 = time.perf_counter()
    pre = [data.next_batch() for _ in range(steps)]
    t_build = time.perf_counter() - t0
    data.sampler.load_state_dict(state)
    m, o = fresh()
    t_loader = _loop(m, o, lambda i: data.next_batch(), steps)
    m, o = fresh()
    t_mem = _loop(m, o, lambda i: pre[i], steps)
    return t_loader, t_mem, t_build, steps * batch_size / t_loader


def cuda_stages(steps: int) -> list[str]:
    import torch

    from tristage.config import load_params
    from tristage.testing.fakes import fake_sources, write_tiny_params
    from tristage.training.trainer import train_stage

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        p = write_tiny_params(Path(tmp), steps=steps, device="cuda", batch_size=16)
        params = load_params(
            p,
            [
                f"stage1.model.{k}=null"
                for k in (
                    "d_model",
                    "n_layer",
                    "n_head",
                    "cond_dim",
                    "cond_layers",
                    "cond_heads",
                    "speaker_latents",
                    "emo_dim",
                    "classifier_hidden",
                    "max_frames",
                    "max_text_len",
                )
            ],
        )
        src = fake_sources(n_speakers=12, utts_per_speaker=20, n_codebooks=4, codebook_size=256, n_mels=80,
                           min_frames=60, max_frames=170, table_dir=Path(tmp) / "caption_vectors")
        for s in ("stage1", "stage2", "stage3"):
            t0 = time.perf_counter()
            m = train_stage(s, params, None, sources=src)
            lines.append(f"{s} on {torch.cuda.get_device_name(0)}: {m['samples_per_s']:.0f} samples/s, "
                         f"mel_loss {m['initial_train_mel_loss']:.3f} -> {m['mel_loss']:.3f}, "
                         f"{time.perf_counter() - t0:.1f} s for {steps} steps")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cuda", action="store_true", help="also run the three stages on CUDA if available")
    a = ap.parse_args(argv)
    steps = 15 if a.quick else a.steps
    os.environ.setdefault("TRISTAGE_NO_PROGRESS", "1")
    t_loader, t_mem, t_build, sps = loader_overhead(steps, a.batch_size)
    over = (t_loader - t_mem) / t_mem
    print(
        f"training (tiny preset, batch {a.batch_size}, {steps} steps, {os.cpu_count()} cores): "
        "with the loader "
        f"{t_loader:.2f} s ({sps:.1f} samples/s); in-memory batches {t_mem:.2f} s; loader overhead "
        f"{100 * over:+.1f}% (noise included); building the batches alone {t_build:.3f} s = "
        f"{100 * t_build / t_mem:.1f}% of the in-memory time (goal <= 10%: "
        f"{'ok' if max(over, t_build / t_mem) <= 0.10 else 'MISSED'})"
    )
    import torch

    if a.cuda and torch.cuda.is_available():
        for line in cuda_stages(200):
            print(line)
    elif a.cuda:
        print("CUDA: not available on this machine; three-stage GPU run skipped")
    print(f"command: python -m benchmarks.training --steps {steps} --batch-size {a.batch_size}"
          + (" --cuda" if a.cuda else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
