"""features: batched torch log-mel vs librosa per file, and DAC encode speed (CPU, and GPU when present).

    python -m benchmarks.features            # 64 clips of 1.5-4 s for mel; 8 s of audio for the small DAC,
                                             # 4 s for the full one
    python -m benchmarks.features --quick    # 16 clips, less audio

In one run, on the same clips:
- mel: `tristage.features.mel.log_mel` on zero-padded length buckets of 10 s (what the
  stage does; padding and copies included) vs `librosa.feature.melspectrogram` + log, one call per file;
  goal >= 5x.
- DAC encode real-time factor x (audio seconds / encode seconds, higher is faster) for the
  stage's default small random-init config and for the full 44.1 kHz `dac.DAC()` config
  (random init; the speed does not depend on the weights); with CUDA, the same on the GPU
  (goal >= 200x for the full codec).
Prints a markdown table; `main()` returns its rows.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def _clips(n: int, sr: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = np.arange(int(sr * rng.uniform(1.5, 4.0))) / sr
        f0 = rng.uniform(100, 250)
        x = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 6)) + 0.01 * rng.standard_normal(
            len(t)
        )
        out.append(x.astype(np.float32))
    return out


def _best(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_mel(n_clips: int, repeat: int) -> list[dict]:
    import librosa
    import torch

    from tristage.features.config import MelParams
    from tristage.features.mel import log_mel

    mp = MelParams()
    clips = _clips(n_clips, mp.sample_rate)
    audio_s = sum(map(len, clips)) / mp.sample_rate
    from tristage.features.extract import _pad, batches

    # the stage's length buckets (features.batch_seconds of padded audio per batch),
    # padding included in the time
    groups = [[clips[i] for i in b] for b in batches([len(c) for c in clips], int(10.0 * mp.sample_rate))]

    def ours(device: str):
        for g in groups:
            log_mel(_pad(g, device), mp)
        if device == "cuda":
            torch.cuda.synchronize()

    def ref():
        for c in clips:
            m = librosa.feature.melspectrogram(
                y=c,
                sr=mp.sample_rate,
                n_fft=mp.n_fft,
                hop_length=mp.hop_length,
                win_length=mp.win_length,
                n_mels=mp.n_mels,
                fmin=mp.fmin,
                fmax=mp.fmax,
                power=mp.power,
                center=True,
                pad_mode="constant",
            )
            np.log(np.maximum(m, mp.log_floor))

    t_ref = _best(ref, repeat)
    t_cpu = _best(lambda: ours("cpu"), repeat)
    rows = [
        dict(
            what=f"log-mel, {n_clips} clips ({audio_s:.0f} s)",
            baseline=f"librosa per file {t_ref * 1e3:.0f} ms",
            ours=f"torch bucketed batches CPU {t_cpu * 1e3:.0f} ms",
            ratio=t_ref / t_cpu,
            goal=">= 5x",
        )
    ]
    if torch.cuda.is_available():
        t_gpu = _best(lambda: ours("cuda"), repeat)  # includes the host -> device copies
        rows.append(
            dict(
                what=rows[0]["what"],
                baseline=rows[0]["baseline"],
                ours=f"torch batched CUDA {t_gpu * 1e3:.1f} ms",
                ratio=t_ref / t_gpu,
                goal=">= 5x",
            )
        )
    return rows


def bench_dac(name: str, kwargs: dict, seconds: float, device: str, repeat: int) -> dict:
    import torch

    from tristage.features.codec import encode, random_init

    model = random_init(kwargs, seed=0).to(device)
    sr = int(model.sample_rate)
    n_clips = 4
    n = int(sr * seconds / n_clips)
    # (B, N): each clip (1.5-4 s) cut or repeated to N samples (the GPU rows ask for more than 1.5 s)
    x = torch.from_numpy(np.stack([np.resize(c, n) for c in _clips(n_clips, sr, 1)]))
    x = x.to(device)

    def run():
        encode(model, x, [n] * n_clips)
        if device == "cuda":
            torch.cuda.synchronize()

    t = _best(run, repeat)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return dict(what=f"DAC encode {name} ({params:.1f}M params, {sr} Hz), {n_clips} x {n / sr:.1f} s",
                baseline="real time", ours=f"{device} {t * 1e3:.0f} ms", ratio=seconds / t,
                goal=">= 200x (full, GPU)" if device == "cuda" and "full" in name else "-")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    import torch

    from tristage.features.config import CodecParams

    n_clips, repeat, small_s, full_s = (16, 2, 4.0, 2.0) if a.quick else (64, 3, 8.0, 4.0)
    rows = bench_mel(n_clips, repeat)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        rows.append(bench_dac("small (stage default)", CodecParams().dac.dac_kwargs(), small_s, dev, repeat))
        rows.append(bench_dac("full 44.1 kHz", {}, full_s if dev == "cpu" else 4 * full_s, dev, repeat))
    print(f"features benchmark ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'})\n")
    print("| what | baseline | ours | ratio | goal |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['baseline']} | {r['ours']} | {r['ratio']:.1f}x | {r['goal']} |")
    print(f"\ncommand: python -m benchmarks.features{' --quick' if a.quick else ''}")
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
