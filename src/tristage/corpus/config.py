"""Params of the `corpus` stage: the embedded demo corpus synthesised with espeak-ng."""
from __future__ import annotations

from tristage.schema import Field, Fraction, Path, PosInt, Section


class CorpusParams(Section):
    out_dir: Path = Path("data/raw")  # wavs/*.wav + manifest.jsonl
    n_speakers: int = Field(12, ge=1, le=500)
    utts_per_speaker: int = Field(60, ge=1)
    seed: int = 1234
    workers: PosInt = 2
    noisy_fraction: Fraction = 0.2
    reverb_fraction: Fraction = 0.2
