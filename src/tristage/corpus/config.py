"""Params of the `corpus` stage: the embedded demo corpus synthesised with espeak-ng."""
from __future__ import annotations

from pydantic import model_validator

from tristage.schema import Field, Fraction, Path, PosInt, Section


class CorpusParams(Section):
    out_dir: Path = Path("data/raw")  # wavs/*.wav + manifest.jsonl
    # 7 accents x gender variants x 4 pitches x 3 rates allow 336 distinct speakers
    n_speakers: int = Field(12, ge=1, le=336)
    utts_per_speaker: int = Field(60, ge=1)
    seed: int = 1234
    workers: PosInt = 2
    noisy_fraction: Fraction = 0.2
    reverb_fraction: Fraction = 0.2

    @model_validator(mode="after")
    def _fractions(self) -> "CorpusParams":
        if self.noisy_fraction + self.reverb_fraction > 1:
            raise ValueError(f"noisy_fraction + reverb_fraction must be at most 1 "
                             f"(got {self.noisy_fraction} + {self.reverb_fraction})")
        return self
