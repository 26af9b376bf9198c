"""Params of the `prepare` and `speaker_mapping` stages."""
from __future__ import annotations

from pydantic import model_validator

from tristage.schema import Field, Path, PosFloat, PosInt, Section


class PrepareParams(Section):
    manifest: Path = Path("data/raw/manifest.jsonl")  # JSONL or Parquet
    out_dir: Path = Path("data/prepared")  # manifest.parquet + rejects.jsonl
    metrics: Path = Path("metrics/prepare.json")
    # source column name -> contract name, e.g. {"wav": "audio", "spk": "speaker"}
    columns: dict[str, str] = {}
    min_duration: PosFloat = 0.3  # seconds
    max_duration: PosFloat = 30.0
    silence_dbfs: float = Field(-60.0, le=0)  # RMS below this is "silent"
    workers: PosInt = 2
    batch_rows: PosInt = 8192
    check_audio: bool = True  # False: trust the manifest (scale simulation only)

    @model_validator(mode="after")
    def _durations(self) -> "PrepareParams":
        if self.min_duration >= self.max_duration:
            raise ValueError(
                f"min_duration ({self.min_duration}) must be below max_duration ({self.max_duration})"
            )
        return self


class SpeakerMappingParams(Section):
    manifest: Path = Path("data/annotated/manifest.parquet")  # JSONL or Parquet
    output: Path = Path("data/speakers/speaker_mapping.json")
    metrics: Path = Path("metrics/speaker_mapping.json")
    top_k: PosInt = 500
    min_samples: PosInt = 50
