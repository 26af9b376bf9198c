"""Experiment (not part of `make bench`): what the mel VQ codec's decoding loses, judged by Whisper.

    make demo                                          # data/features (the fitted codec) + data/annotated
    python -m benchmarks.experiments.codec_decoding    # the validation clips, every variant below

For each validation utterance of stage1's split (seen speakers), the Whisper tiny.en judge of
`evaluate` transcribes the recording and the recording through the codec decoded several ways: the
unquantised log-mel, the fitted codebooks with `smooth_frames` 1, 3 and 5 (`--smooth`), only the first
k of them (`--fewer k ...`, smooth 3), and with `--extra` codebooks fitted here on the training split's
residual after the fitted ones. It prints each variant's WER and its gap to the recording's WER, paired
over the same clips (mean +- standard error).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np


def _stats(x: np.ndarray) -> str:
    return f"{x.mean():.3f} +- {x.std(ddof=1) / math.sqrt(len(x)):.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--features", default="data/features")
    ap.add_argument("--extra", type=int, default=8, help="codebooks fitted on top of the codec's (0: none)")
    ap.add_argument("--fit-frames", type=int, default=100_000)
    ap.add_argument("--smooth", type=int, nargs="+", default=[1, 3, 5],
                    help="smooth_frames of the fitted codebooks")
    ap.add_argument("--fewer", type=int, nargs="*", default=[],
                    help="also decode with only the first k fitted codebooks (smooth 3)")
    ap.add_argument("--seed", type=int, default=1)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)

    import librosa
    import soundfile as sf
    import torch

    from tristage.config import load_params
    from tristage.data.manifest import read_prepared
    from tristage.data.split import TRAIN, VAL, split_ids
    from tristage.evaluation.judges.asr import load_asr
    from tristage.evaluation.judges.text import error_rates
    from tristage.features import melvq
    from tristage.features.codec import load_codec

    sp = load_params(a.params).stage1
    man = read_prepared(sp.prepared)
    split = split_ids(man["id"], man["speaker"], sp.val_fraction, sp.heldout_speakers, sp.seed)
    root = Path(sp.prepared).parent
    codec = load_codec(a.features)
    cfg = codec.cfg

    def wav_of(row) -> np.ndarray:
        wav, sr = sf.read(root / row.audio, dtype="float32")
        return wav if sr == cfg.sample_rate else librosa.resample(wav, orig_sr=sr, target_sr=cfg.sample_rate)

    def frames(wav: np.ndarray) -> torch.Tensor:  # (T, stack * n_mels), standardised as the codec encodes
        x = melvq.stack_frames(melvq.log_mel(torch.from_numpy(wav), cfg, codec.basis), cfg.stack)
        return ((x[:max(1, -(-len(wav) // codec.hop_length))] - codec.mean) / codec.std).double()

    if a.extra:
        gen = torch.Generator().manual_seed(a.seed)
        train = torch.cat([frames(wav_of(r)) for r in man.itertuples() if split[r.id] == TRAIN])
        residual = train[torch.randperm(len(train), generator=gen)[:a.fit_frames]]
        for c in codec.codebooks.double():
            residual = residual - c[melvq._nearest(residual, c)]
        extra = []
        for _ in range(a.extra):
            c = melvq.kmeans(residual, cfg.codebook_size, cfg.kmeans_iters, gen)
            residual = residual - c[melvq._nearest(residual, c)]
            extra.append(c)
        books = torch.cat([codec.codebooks.double(), torch.stack(extra)])

    def variant(codebooks: torch.Tensor, smooth: int) -> melvq.MelVQCodec:
        """The fitted codec's standardisation with these codebooks (K', V', D), decoding as the stage does."""
        vcfg = dataclasses.replace(cfg, n_codebooks=codebooks.shape[0], codebook_size=codebooks.shape[1],
                                   smooth_frames=smooth)
        return melvq.MelVQCodec(vcfg, codec.mean, codec.std, codebooks.float(), codec.seed)

    K = codec.n_codebooks
    codecs = {f"{K} books, smooth {s}": variant(codec.codebooks, s) for s in a.smooth}
    codecs.update({f"first {k} books, smooth 3": variant(codec.codebooks[:k], 3) for k in a.fewer})
    if a.extra:
        codecs[f"{K + a.extra} books, smooth 1"] = variant(books, 1)
    variants = ["recording", "unquantised", *codecs]
    asr = load_asr(None)
    wer: dict[str, list[float]] = {v: [] for v in variants}
    rows = [r for r in man.itertuples() if split[r.id] == VAL]
    for i, row in enumerate(rows):
        wav = wav_of(row)
        x = frames(wav)
        # the unquantised log-mel through the same decoding: one codebook, each frame its own centroid
        clips = {"recording": wav, "unquantised": variant(x[None], 1).decode(torch.arange(len(x))[None])[0]}
        for v, c in codecs.items():
            clips[v] = c.decode(c.encode(wav))[0]
        for v, clip in clips.items():
            audio = librosa.resample(np.asarray(clip, np.float32), orig_sr=cfg.sample_rate, target_sr=16000)
            wer[v].append(error_rates(row.text, asr(audio))[0])
        print(f"\r{i + 1}/{len(rows)} clips", end="", flush=True)
    print()
    ref = np.array(wer["recording"])
    print(f"{len(rows)} validation clips, judge {asr.name}")
    for v in variants:
        x = np.array(wer[v])
        print(f"{v:24s} WER {_stats(x)}   gap to the recording {_stats(x - ref)}")
    print("command: python -m benchmarks.experiments.codec_decoding " + " ".join(argv))


if __name__ == "__main__":
    main()
