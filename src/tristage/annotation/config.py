"""Params of the `annotate` stage (the captions use the lexicon of `caption_vectors.lexicon`)."""
from __future__ import annotations

import copy

from pydantic import model_validator

from tristage.audio.levels import DEFAULT_LEVELS, DEFAULT_QUALITY, FITTED
from tristage.schema import Field, NonNegFloat, NonNegInt, Path, PosInt, Section


class QualityParams(Section):
    """Fixed thresholds (noise is absolute, not relative to the corpus)."""
    rt60_s: NonNegFloat = DEFAULT_QUALITY["rt60_s"]  # estimated RT60 >= this -> "reverberant"
    snr_db: list[float] = list(
        DEFAULT_QUALITY["snr_db"]
    )  # very noisy < a <= noisy < b <= slightly noisy < c <= clean

    @model_validator(mode="after")
    def _ascending(self) -> QualityParams:
        if len(self.snr_db) != 3 or sorted(self.snr_db) != self.snr_db:
            raise ValueError(f"snr_db must be 3 ascending thresholds, got {self.snr_db}")
        return self


class AnnotateParams(Section):
    manifest: Path = Path("data/prepared/manifest.parquet")
    out_dir: Path = Path(
        "data/annotated"
    )  # manifest.parquet, bins.json, failed.jsonl, measures/ (resume cache)
    metrics: Path = Path("metrics/annotate.json")
    overwrite: bool = (
        False  # true: replace attribute columns with the measured bins (captions stay untouched)
    )
    captions: bool = True    # write a caption for rows without one
    seed: int = 1234
    workers: NonNegInt = 2   # processes measuring audio (0 = in process)
    shard_size: PosInt = 64  # rows per resume unit (measures/shard-*.parquet)
    min_group: PosInt = 20   # pitch bins per gender for genders with at least this many measured rows
    # attribute -> its lexicon values, low to high; bins are equal-width between the corpus's 5th and 95th
    # percentile of the feature (pitch: log f0 per gender; speed: words/s; modulation: f0 spread in semitones)
    levels: dict[str, list[str]] = Field(default_factory=lambda: copy.deepcopy(DEFAULT_LEVELS))
    quality: QualityParams = QualityParams()
    # a bins.json (another corpus's, e.g. a model folder's) to bin with as it is instead of fitting bins on
    # this corpus: `tristage finetune` keeps the base corpus's bins, so its captions mean the same
    bins: Path | None = None

    @model_validator(mode="after")
    def _levels(self) -> AnnotateParams:
        for attr, values in self.levels.items():
            if attr not in FITTED:
                raise ValueError(
                    f"levels.{attr}: no measure for it; measured attributes: {', '.join(FITTED)}"
                )
            if len(values) < 2 or len(set(values)) != len(values):
                raise ValueError(f"levels.{attr}: need at least 2 distinct values, got {values}")
        return self
