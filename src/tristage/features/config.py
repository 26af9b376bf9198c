"""Params of the `features` stage: log-mel for the perceivers, DAC codes for the decoder."""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from tristage.schema import Field, NonNegFloat, NonNegInt, Path, PosFloat, PosInt, Section


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


class DacParams(Section):
    """The random-init DAC's config (`kind: dac` without `weights`; official weights carry their own)."""

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


class MelVQParams(Section):
    """The mel VQ codec (`features/melvq.py`), fitted on the training split's audio."""

    sample_rate: PosInt = 22050
    n_fft: PosInt = 1024
    hop_length: PosInt = 256  # mel frames; a code frame is `stack` of them
    n_mels: PosInt = 80
    fmin: NonNegFloat = 0.0
    fmax: PosFloat | None = None  # None = sample_rate / 2
    stack: PosInt = 2  # mel frames per code frame: 22050 / (256 * 2) = 43 code frames/s
    n_codebooks: PosInt = 8
    codebook_size: int = Field(256, ge=2, le=32767)  # codes are stored as int16
    fit_frames: PosInt = 200_000  # code frames k-means sees at most (drawn by the seed)
    kmeans_iters: PosInt = 20
    griffin_lim_iters: PosInt = 32
    # decoding: the decoded log-mel averaged over this many frames (1 2 1 for 3; odd, 1 = none) before
    # Griffin-Lim. Measured on 60 validation clips: Whisper WER gap to the recordings 0.100 without, 0.005
    # with 3 (docs/codec.md, benchmarks/experiments/codec_decoding.py)
    smooth_frames: PosInt = 3

    @field_validator("smooth_frames")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"smooth_frames must be odd (a centred kernel), got {v}")
        return v

    def config(self):
        from tristage.features.melvq import MelVQConfig

        return MelVQConfig(**self.model_dump())


class CodecParams(Section):
    kind: Literal["melvq", "dac"] = "melvq"
    weights: Path | None = None  # kind dac: local official DAC weights (.pth); None -> seeded random-init DAC
    # kind melvq: a fitted codec's folder (codec.json + codec.safetensors, e.g. a model folder's `codec/`) to
    # encode with as it is, instead of fitting one (fine-tuning a model on new data keeps its codec)
    fitted: Path | None = None
    seed: int = 1234
    melvq: MelVQParams = MelVQParams()
    dac: DacParams = DacParams()

    @model_validator(mode="after")
    def _weights_are_dac(self):
        if self.weights is not None and self.kind != "dac":
            raise ValueError("features.codec.weights is DAC weights: set features.codec.kind: dac")
        if self.fitted is not None and self.kind != "melvq":
            raise ValueError("features.codec.fitted is a fitted mel VQ codec: set features.codec.kind: melvq")
        return self


class FeaturesParams(Section):
    manifest: Path = Path("data/annotated/manifest.parquet")
    out_dir: Path = Path("data/features")
    metrics: Path = Path("metrics/features.json")
    shard_size: PosInt = 64
    batch_seconds: PosFloat = 10.0  # padded audio seconds per codec / mel batch (length-bucketed)
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    num_workers: NonNegInt = 2      # DataLoader workers reading + resampling audio (0 = in process)
    # torch CPU threads: fixed, so float sums are the same on any host (0 = every core)
    threads: NonNegInt = 2
    mel: MelParams = MelParams()
    codec: CodecParams = CodecParams()
