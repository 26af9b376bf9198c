"""Params of the `features` stage: log-mel for the perceivers, DAC codes for the decoder."""
from __future__ import annotations

from typing import Literal

from tristage.schema import Path, PosInt, Section


class MelParams(Section):
    sample_rate: PosInt = 16000
    n_fft: PosInt = 1024
    win_length: PosInt = 1024
    hop_length: PosInt = 256
    n_mels: PosInt = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0


class CodecParams(Section):
    weights: Path | None = None  # local DAC weights (.pth); None -> small seeded random-init DAC
    seed: int = 1234


class FeaturesParams(Section):
    manifest: Path = Path("data/prepared/manifest.parquet")
    out_dir: Path = Path("data/features")
    metrics: Path = Path("metrics/features.json")
    shard_size: PosInt = 64
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    num_workers: int = 2
    mel: MelParams = MelParams()
    codec: CodecParams = CodecParams()
