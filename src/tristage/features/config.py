"""Params of the `features` stage: log-mel for the perceivers, DAC codes for the decoder."""
from __future__ import annotations

from typing import Literal

from tristage.schema import NonNegInt, Path, PosFloat, PosInt, Section


class MelParams(Section):
    sample_rate: PosInt = 16000
    n_fft: PosInt = 1024
    win_length: PosInt = 1024
    hop_length: PosInt = 256
    n_mels: PosInt = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0
    power: PosFloat = 1.0        # 1 = magnitude, 2 = power spectrogram
    log_floor: PosFloat = 1e-5   # log(max(mel, floor))


class CodecParams(Section):
    weights: Path | None = None  # local official DAC weights (.pth); None -> small seeded random-init DAC
    seed: int = 1234
    # the random-init DAC's config (ignored with `weights`: the file's own kwargs are used)
    sample_rate: PosInt = 16000
    encoder_dim: PosInt = 16
    encoder_rates: list[PosInt] = [2, 4, 8, 8]  # hop = product = 512 -> 31.25 frames/s at 16 kHz
    decoder_dim: PosInt = 128
    decoder_rates: list[PosInt] = [8, 8, 4, 2]
    n_codebooks: PosInt = 4
    codebook_size: PosInt = 256
    codebook_dim: PosInt = 8

    def dac_kwargs(self) -> dict:
        return dict(encoder_dim=self.encoder_dim, encoder_rates=list(self.encoder_rates),
                    decoder_dim=self.decoder_dim, decoder_rates=list(self.decoder_rates),
                    n_codebooks=self.n_codebooks, codebook_size=self.codebook_size,
                    codebook_dim=self.codebook_dim, sample_rate=self.sample_rate)


class FeaturesParams(Section):
    manifest: Path = Path("data/annotated/manifest.parquet")
    out_dir: Path = Path("data/features")
    metrics: Path = Path("metrics/features.json")
    shard_size: PosInt = 64
    batch_seconds: PosFloat = 10.0  # padded audio seconds per codec / mel batch (length-bucketed)
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    num_workers: NonNegInt = 2      # DataLoader workers reading + resampling audio (0 = in process)
    threads: NonNegInt = 0          # torch CPU threads (0 = torch's default)
    mel: MelParams = MelParams()
    codec: CodecParams = CodecParams()
