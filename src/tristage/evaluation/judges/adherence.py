"""Caption adherence: measure pitch and speaking rate of the audio with the `annotate` stage's own
code (`tristage.audio.measures`: YIN median F0, words per second of the speech span), bin them with the bins
fitted on the training corpus, and compare with the caption's requested value.

    judge = AdherenceJudge.from_manifest(annotated_df)   # bins fitted on the corpus' measured columns
    judge(wav_16k, text, gender="female")   # -> {"pitch_measured": "high", "speed_measured": "moderate", ...}
    agreement(requested, measured)          # exact bin match; `coarse=True`: low / moderate / high classes
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_RATE = 16000
ATTRIBUTES = ("pitch", "speed")


def agreement(requested: str | None, measured: str | None, coarse: bool = False) -> float | None:
    """1.0 / 0.0 when both are known, None otherwise."""
    from tristage.audio.measures import coarse as to_coarse

    if not requested or not measured:
        return None
    if coarse:
        return float(to_coarse(str(requested)) == to_coarse(str(measured)))
    return float(str(requested) == str(measured))


class AdherenceJudge:
    name = "tristage.audio.measures (annotate's YIN F0 + speaking rate, corpus-fitted bins)"

    def __init__(self, bins):
        self.bins = bins

    @classmethod
    def from_file(cls, path) -> "AdherenceJudge":
        """The annotate stage's own fitted bins (`<annotate.out_dir>/bins.json`)."""
        from tristage.audio.measures import AttributeBins
        from tristage.fsio import read_json

        return cls(AttributeBins.from_dict(read_json(path)))

    @classmethod
    def from_manifest(cls, manifest) -> "AdherenceJudge":
        """Bins fitted on the corpus' measured columns (the annotate stage's f0_hz, speaking_rate, ...)."""
        from tristage.audio.measures import MEASURE_COLUMNS, AttributeBins

        missing = [c for c in ("f0_hz", "speaking_rate") if c not in manifest.columns]
        if missing:
            raise KeyError(f"the manifest lacks the measured columns {missing}: run the `annotate` stage")
        table = {c: manifest[c].to_numpy() for c in MEASURE_COLUMNS if c in manifest.columns}
        if "gender" in manifest.columns:
            table["gender"] = manifest["gender"].tolist()
        table.setdefault("snr_db", np.full(len(manifest), np.nan))
        table.setdefault("pitch_std_st", np.full(len(manifest), np.nan))
        return cls(AttributeBins.fit(table))

    @classmethod
    def from_recordings(cls, items) -> "AdherenceJudge":
        """Bins fitted on recordings measured here: `items` yields (wav 16 kHz, text, gender). For a manifest
        without the annotate stage's columns; the same measuring code, on a sample of the training split."""
        from tristage.audio.measures import MEASURE_COLUMNS, AttributeBins, measure

        rows = []
        for wav, text, gender in items:
            try:
                rows.append(
                    {**measure(np.asarray(wav, np.float64), SAMPLE_RATE, text).to_dict(), "gender": gender}
                )
            except ValueError:
                continue
        if not rows:
            raise KeyError("no measurable training recordings to fit the attribute bins on")
        table = {c: np.asarray([r[c] for r in rows], np.float64) for c in MEASURE_COLUMNS}
        table["gender"] = [r["gender"] for r in rows]
        return cls(AttributeBins.fit(table))

    def __call__(self, wav: np.ndarray, text: str, gender: str | None = None) -> dict[str, Any]:
        from tristage.audio.measures import measure

        try:
            m = measure(np.asarray(wav, np.float64), SAMPLE_RATE, text)
        except ValueError:  # empty / non-finite audio: nothing measurable
            return {f"{a}_measured": None for a in ATTRIBUTES} | dict(f0_hz=None, speaking_rate=None)
        bins = self.bins.assign_one(m, gender=gender)
        f0, rate = m.f0_hz, m.speaking_rate
        return {
            **{f"{a}_measured": bins.get(a) for a in ATTRIBUTES},
            "f0_hz": None if not np.isfinite(f0) else round(float(f0), 2),
            "speaking_rate": None if not np.isfinite(rate) else round(float(rate), 3),
        }
