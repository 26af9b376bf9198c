"""synthesis: KV-cache speed-up of generation, and the real-time factor of synthesis.

    python -m benchmarks.synthesis            # tiny preset, 500 frames cached vs uncached, RTF
    python -m benchmarks.synthesis --quick    # 200 frames
    python -m benchmarks.synthesis --cuda     # also the seed preset's RTF on CUDA (when available)

Random-init models (speed does not depend on the weights): the tiny preset's decoder at the
demo's codec sizes (4 codebooks x 256, 31.25 frames/s at 16 kHz), greedy, stop head off so
every run makes exactly the asked number of frames.
- cache: the same 500 frames with the KV cache (one frame per step against cached keys/values)
  and without (the whole sequence recomputed every step); the codes are checked identical;
  goal >= 5x on CPU.
- RTF: seconds of compute (generation with the cache + decoding with the small random-init DAC)
  per second of audio, for a batch of 1 and a batch of 8 (per request).
"""

from __future__ import annotations

import argparse
import time


def _model(preset: str, max_frames: int, device: str):
    import torch

    from tristage.model.config import PRESETS, TTSConfig
    from tristage.model.folder import BakedCaptions
    from tristage.model.tts import TTS

    sizes = dict(PRESETS[preset], max_frames=max(max_frames, PRESETS[preset]["max_frames"]))
    cfg = TTSConfig(
        n_codebooks=4,
        codebook_size=256 if preset == "tiny" else 1024,
        n_mels=80,
        caption_dim=64,
        n_speakers=12,
        preset=preset,
        **sizes,
    )
    torch.manual_seed(0)
    return TTS(cfg, BakedCaptions(torch.randn(100, 64))).to(device).eval()


def _time(fn, device: str) -> tuple[float, object]:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


TEXT = "The quick brown fox jumps over the lazy dog near the old stone bridge."


def cache_ratio(frames: int, device: str) -> str:
    import torch

    m = _model("tiny", frames, device)
    mel = torch.randn(160, 80)
    gen = lambda cache: m.generate(
        TEXT,
        list(range(1, 20)),
        mel,
        n_frames=frames,
        greedy=True,
        use_cache=cache,
        stop=False,
    )
    gen(True)  # warm-up
    t_cached, a = _time(lambda: gen(True), device)
    t_full, b = _time(lambda: gen(False), device)
    same = bool(torch.equal(a, b))
    ratio = t_full / t_cached
    # the goal is a CPU one: on a GPU the tiny preset's uncached steps are launch-bound, not compute-bound
    goal = (">= 5x (ok)" if ratio >= 5 else ">= 5x (MISSED)") if device == "cpu" else "none on GPU"
    return (
        f"| KV cache, tiny preset, {frames} frames, {device} | uncached {t_full:.2f} s "
        f"| cached {t_cached:.2f} s "
        f"| {ratio:.1f}x | {goal}; identical codes: {same} |"
    )


def rtf(preset: str, frames: int, device: str, batch: int) -> str:
    import torch

    from tristage.features.codec import decode_codes, random_init
    from tristage.features.config import CodecParams, DacParams

    m = _model(preset, frames, device)
    cp = CodecParams(kind="dac", dac=DacParams(codebook_size=m.cfg.codebook_size))
    codec = random_init(cp.dac.dac_kwargs(), cp.seed).to(device)
    fps = cp.sample_rate / 512
    mels = [torch.randn(160, 80) for _ in range(batch)]

    def run():
        codes = m.generate_batch(
            [TEXT] * batch, [list(range(1, 20))] * batch, mels, max_frames=frames, greedy=True, stop=False
        )
        return [decode_codes(codec, c)[0] for c in codes]

    run()  # warm-up
    took, wavs = _time(run, device)
    audio = sum(len(w) for w in wavs) / cp.sample_rate
    return (
        f"| RTF, {preset} preset, batch {batch}, {device} | {audio / batch:.1f} s of audio per request "
        f"({frames} frames at {fps:.2f}/s) | {took:.2f} s | RTF {took / audio:.3f} "
        "| < 1 = faster than real time |"
    )


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: at these sizes a second thread mostly waits, and on a "
        "loaded 2-core machine 2 threads ran 20-30x slower; 0 = torch's default)",
    )
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    frames = 200 if a.quick else 500
    print(
        f"synthesis benchmark (torch threads {torch.get_num_threads()}, "
        f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
        "random-init weights)\n"
    )
    print("| what | baseline | ours | ratio | goal |\n|---|---|---|---|---|")
    print(cache_ratio(frames, "cpu"))
    print(rtf("tiny", 250, "cpu", 1))
    print(rtf("tiny", 250, "cpu", 8))
    if torch.cuda.is_available() and (a.cuda or not a.quick):
        print(cache_ratio(frames, "cuda"))
        print(rtf("seed", 250, "cuda", 1))
        print(rtf("seed", 250, "cuda", 8))
    print(
        f"\ncommand: python -m benchmarks.synthesis{' --quick' if a.quick else ''}"
        f"{' --cuda' if a.cuda else ''}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
