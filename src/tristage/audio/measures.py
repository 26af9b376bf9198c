"""What a caption says about speech, measured from the audio: one implementation for `annotate`
(captions for a corpus) and `evaluate` (does generated audio follow its caption?).

    m = measure(wav, sr, text)          # -> Measures(f0_hz=212.4, pitch_std_st=2.9, voiced_s=1.62, ...)
    bins = AttributeBins.fit(df)        # df: one row per utterance, the Measures columns (+ `gender`)
    bins.assign(df)                     # -> {"pitch": ["high", ...], "speed": [...], "modulation": [...],
                                        #     "quality": [...]}
    AttributeBins.from_dict(json.loads(text)) == AttributeBins.from_dict(bins.to_dict())

Measures (all cheap, numpy + scipy, about 20 ms of CPU per second of audio):
- `f0_hz`: median F0 of the voiced frames. F0 from a YIN tracker (cumulative mean normalised
  difference, 16 kHz, 64 ms frames, 10 ms hop); a frame is voiced when its YIN aperiodicity is
  below `VOICING_THRESHOLD` and it is not near-silent. NaN when no frame is voiced.
- `pitch_std_st`: spread of F0 over the voiced frames in semitones (std of 12*log2(f0/median)),
  the intonation measure behind `modulation`.
- `voiced_s`: voiced frames x hop; `speech_s`: the span from the first to the last frame
  above an energy gate (40 dB below the loudest 20 ms frame and 10 dB above the 5th percentile),
  pauses inside included.
- `speaking_rate`: words of `text` per second of `speech_s` (NaN without text). Words per
  *voiced* second follows the voice more than the pace (voicing differs between voices): on
  the demo corpus its rank correlation with the set rate is 0.23 per speaker, against 0.75
  per utterance for words per speech span.
- `snr_db`: an energy estimate, not a trained model: 20 ms frame powers; noise power = their
  3rd percentile, speech power = mean of the frames above the median; SNR = 10 log10 of
  (speech - noise) / noise, clipped to [-5, 60] dB. It needs some pause (a few % of the frames,
  as leading/trailing silence gives): speech with no pause at all reads 15-20 dB even when clean.
- `rt60_s`: a reverberation-time estimate from the fastest energy decay: 60 dB divided by the
  99th percentile of the 40 ms fall rate (dB/s) of frames 25 dB above the floor. Dry speech
  stops within tens of ms (estimate < 0.1 s); a room's tail caps the fall (RT60 0.3-0.9 s
  rooms give 0.2-0.6 s). NaN when too little stands 25 dB above the noise floor.

Attribute bins (dataspeech-style): a fitted attribute (pitch, speed, modulation) gets
equal-width bins between the 5th and 95th percentile of its feature (log F0 for pitch, words
per second for speed, semitones for modulation) over the corpus, per group (pitch per
`gender` where the group has at least `min_group` rows, the whole corpus otherwise); values
outside go to the end bins. `quality` uses fixed thresholds on `rt60_s` and `snr_db`, since
noise is absolute, not relative to the corpus.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from tristage.audio.levels import DEFAULT_LEVELS, DEFAULT_QUALITY, FITTED, QUALITY_LEVELS  # re-exported

SR = 16000
FRAME = 1024            # 64 ms F0 analysis window (at 16 kHz; YIN runs at YIN_SR)
HOP = 160               # 10 ms
YIN_SR = 8000
FMIN, FMAX = 50.0, 550.0
VOICING_THRESHOLD = 0.25  # YIN aperiodicity below this -> voiced
SILENCE_DB = -45.0        # frames quieter than the loudest frame by more than this are never voiced
FLOOR_DBFS = -70.0        # nor frames below this absolute level (digital silence)
SNR_RANGE = (-5.0, 60.0)
WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


@dataclass(frozen=True)
class Measures:
    f0_hz: float
    pitch_std_st: float
    voiced_s: float
    speech_s: float
    duration_s: float
    n_words: int
    speaking_rate: float
    snr_db: float
    rt60_s: float

    def to_dict(self) -> dict[str, float]:
        return {
            k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


MEASURE_COLUMNS = tuple(f.name for f in fields(Measures))


def count_words(text: str | None) -> int:
    return len(WORD.findall(text)) if text else 0


def to_mono_16k(wav: np.ndarray, sr: int) -> np.ndarray:
    """float64 mono at 16 kHz (polyphase resampling)."""
    x = np.asarray(wav, dtype=np.float64)
    if x.ndim == 2:  # (n, channels) as soundfile gives it
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise ValueError(f"audio must be 1-D or (samples, channels), got shape {x.shape}")
    if sr != SR:
        from scipy.signal import resample_poly

        g = math.gcd(int(sr), SR)
        x = resample_poly(x, SR // g, int(sr) // g)
    return x


def _frames(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """(n_frames, length) views, frames centred on i*hop (zero padded at both ends)."""
    x = np.pad(x, (length // 2, length // 2))
    n = 1 + max(0, (len(x) - length) // hop)
    return np.lib.stride_tricks.sliding_window_view(x, length)[::hop][:n]


def yin(x: np.ndarray, sr: int = SR) -> tuple[np.ndarray, np.ndarray]:
    """(f0 Hz (n_frames,), aperiodicity (n_frames,)) of 16 kHz audio, one frame every HOP samples.

    YIN at YIN_SR (8 kHz is plenty below FMAX and 4x cheaper) on 64 ms frames:
    d(tau) = sum_j (x_j - x_{j+tau})^2 over a window W = frame - max_lag, from FFT
    correlations; cmndf(tau) = d(tau) * tau / sum_{k<=tau} d(k); the period is the first dip
    below 0.1 (else the global minimum) refined by a parabola; aperiodicity = cmndf there.
    """
    from scipy.signal import resample_poly

    if sr % YIN_SR:
        raise ValueError(f"yin: sample rate {sr} is not a multiple of {YIN_SR}")
    step = sr // YIN_SR
    x = (resample_poly(x, 1, step) if step > 1 else x).astype(np.float32)
    frame, hop = FRAME // (SR // YIN_SR), HOP // (SR // YIN_SR)
    min_lag, max_lag = int(YIN_SR / FMAX), math.ceil(YIN_SR / FMIN)
    win = frame - max_lag
    frames = _frames(x, frame, hop)                                 # (n, frame)
    n_fft = 1 << math.ceil(math.log2(frame + win))
    spec = np.fft.rfft(frames, n_fft)                               # (n, n_fft/2+1)
    head = np.fft.rfft(frames[:, :win], n_fft)
    np.conjugate(head, out=head)
    acf = np.fft.irfft(spec * head, n_fft)[:, : max_lag + 1]        # (n, max_lag+1): sum_j x_j x_{j+tau}
    sq = np.cumsum(np.pad(frames ** 2, ((0, 0), (1, 0))), axis=1)   # (n, frame+1)
    energy = sq[:, win: win + max_lag + 1] - sq[:, : max_lag + 1]   # (n, max_lag+1): sum_j x_{j+tau}^2
    diff = np.maximum(energy[:, :1] + energy - 2 * acf, 0.0)
    diff[:, 0] = 0.0
    cum = np.cumsum(diff[:, 1:], axis=1)
    cmndf = np.ones_like(diff)
    taus = np.arange(1, max_lag + 1)
    cmndf[:, 1:] = diff[:, 1:] * taus / np.maximum(cum, 1e-12)

    seg = cmndf[:, min_lag: max_lag + 1]                            # (n, L)
    below = seg < 0.1
    local_min = np.zeros_like(below)
    local_min[:, 1:-1] = (seg[:, 1:-1] <= seg[:, :-2]) & (seg[:, 1:-1] <= seg[:, 2:])
    cand = below & local_min
    first = np.where(cand.any(axis=1), cand.argmax(axis=1), seg.argmin(axis=1))
    rows = np.arange(len(seg))
    idx = np.clip(first, 1, seg.shape[1] - 2)
    a, b, c = seg[rows, idx - 1], seg[rows, idx], seg[rows, idx + 1]
    denom = a - 2 * b + c
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    shift = np.clip(shift, -1, 1)
    lag = min_lag + idx + shift
    return (YIN_SR / lag).astype(np.float64), seg[rows, first].astype(np.float64)


def _frame_power_db(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    fr = _frames(x, length, hop)
    return 10 * np.log10(np.mean(fr ** 2, axis=1) + 1e-12)


def snr_estimate(power_db: np.ndarray) -> float:
    """Energy SNR estimate from 20 ms frame powers (dB), see the module doc."""
    power = 10 ** (power_db / 10)
    if len(power) < 4 or power.max() <= 1e-11:
        return float("nan")
    noise = max(float(np.percentile(power, 3)), 1e-12)
    speech = float(power[power >= np.median(power)].mean())
    snr = 10 * math.log10(max(speech - noise, 1e-12) / noise)
    return float(np.clip(snr, *SNR_RANGE))


def rt60_estimate(power_db: np.ndarray, hop_s: float = 0.01) -> float:
    """Reverberation time estimate (s) from the fastest energy decay, see the module doc; NaN when
    too little of the signal stands 25 dB above the floor (noisy or very short audio)."""
    lag = 4
    floor = float(np.percentile(power_db, 5))
    fall = (power_db[:-lag] - power_db[lag:]) / (lag * hop_s)  # dB/s
    ok = (power_db[:-lag] > floor + 25) & (power_db[:-lag] > power_db.max() - 40)
    if ok.sum() < 6:
        return float("nan")
    fastest = float(np.percentile(fall[ok], 99))
    return float(min(60.0 / fastest, 5.0)) if fastest > 0 else 5.0


def measure(wav: np.ndarray, sr: int, text: str | None = None) -> Measures:
    """Measure one utterance (any rate, mono or (samples, channels)); raises ValueError on empty or
    non-finite audio."""
    x = to_mono_16k(wav, sr)
    if len(x) == 0:
        raise ValueError("empty audio")
    if not np.isfinite(x).all():
        raise ValueError("non-finite samples")
    duration = len(x) / SR
    f0, aperiodicity = yin(x)                                       # (n,), (n,)
    power_db = _frame_power_db(x, int(0.032 * SR), HOP)
    n = min(len(f0), len(power_db))
    f0, aperiodicity, power_db = f0[:n], aperiodicity[:n], power_db[:n]
    audible = (power_db > power_db.max() - abs(SILENCE_DB)) & (power_db > FLOOR_DBFS)
    voiced = audible & (aperiodicity < VOICING_THRESHOLD) & (f0 > FMIN) & (f0 < FMAX)
    short_db = _frame_power_db(x, int(0.02 * SR), HOP)              # 20 ms frames, 10 ms hop
    gate = max(short_db.max() - 40, float(np.percentile(short_db, 5)) + 10, FLOOR_DBFS)
    active = np.nonzero(short_db > gate)[0]
    speech_s = float((active[-1] - active[0] + 1) * HOP / SR) if len(active) else 0.0
    if voiced.any():
        semis = 12 * np.log2(f0[voiced] / np.median(f0[voiced]))
        f0_hz, pitch_std = float(np.median(f0[voiced])), float(np.std(semis))
    else:
        f0_hz = pitch_std = float("nan")
    n_words = count_words(text)
    rate = n_words / speech_s if n_words and speech_s > 0 else float("nan")
    return Measures(
        f0_hz=f0_hz,
        pitch_std_st=pitch_std,
        voiced_s=min(float(voiced.sum() * HOP / SR), duration),
        speech_s=speech_s,
        duration_s=duration,
        n_words=n_words,
        speaking_rate=rate,
        snr_db=snr_estimate(short_db),
        rt60_s=rt60_estimate(short_db),
    )


# -- binning ------------------------------------------------------------------------------------

def _transform(values: np.ndarray, how: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if how == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log(v), np.nan)
    return v


def _group_key(value) -> str:
    """A group column's value as a key; "" for missing (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _edges(values: np.ndarray, n_levels: int) -> list[float] | None:
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return None
    lo, hi = np.percentile(v, [5, 95])
    if hi <= lo:
        return None
    return [float(e) for e in np.linspace(lo, hi, n_levels + 1)[1:-1]]


@dataclass
class AttributeBins:
    """Fitted bin edges (in the transformed feature space) per attribute and group; JSON-serialisable.

    `bins[attribute]["groups"]` maps a group value (e.g. "female") or "*" (everyone) to the
    n_levels - 1 inner edges.
    """

    bins: dict[str, dict[str, Any]]
    quality: dict[str, Any]

    @classmethod
    def fit(cls, table, levels: Mapping[str, Sequence[str]] | None = None, min_group: int = 20,
            quality: Mapping[str, Any] | None = None) -> AttributeBins:
        """Fit on `table` (a DataFrame or a mapping column -> sequence) with the Measures columns."""
        levels = dict(DEFAULT_LEVELS if levels is None else levels)
        out: dict[str, dict[str, Any]] = {}
        for attr, lv in levels.items():
            if attr not in FITTED:
                raise ValueError(
                    f"no measured feature for attribute {attr!r}; fitted ones: {', '.join(FITTED)}"
                )
            if len(lv) < 2:
                raise ValueError(f"attribute {attr!r}: need at least 2 levels")
            feature, how, group_col = FITTED[attr]
            values = _transform(np.asarray(table[feature], dtype=np.float64), how)
            groups: dict[str, list[float]] = {}
            everyone = _edges(values, len(lv))
            if everyone is not None:
                groups["*"] = everyone
            if group_col is not None and group_col in table:
                keys = np.asarray([_group_key(g) for g in table[group_col]], dtype=object)
                for g in sorted(set(keys) - {""}):
                    sel = keys == g
                    if sel.sum() >= min_group:
                        e = _edges(values[sel], len(lv))
                        if e is not None:
                            groups[g] = e
            out[attr] = dict(
                feature=feature, transform=how, group_by=group_col, levels=list(lv), groups=groups
            )
        q = dict(DEFAULT_QUALITY if quality is None else quality)
        return cls(bins=out, quality=dict(rt60_s=float(q["rt60_s"]), snr_db=[float(s) for s in q["snr_db"]]))

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, "bins": self.bins, "quality": self.quality}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttributeBins:
        if data.get("format") != 1 or "bins" not in data or "quality" not in data:
            raise ValueError("not an AttributeBins dict (format 1 with `bins` and `quality`)")
        return cls(bins={k: dict(v) for k, v in data["bins"].items()}, quality=dict(data["quality"]))

    @property
    def attributes(self) -> list[str]:
        return [*self.bins, "quality"]

    def assign(self, table) -> dict[str, list[str | None]]:
        """Lexicon values per attribute for each row of `table` (None where the feature is NaN)."""
        out: dict[str, list[str | None]] = {}
        n = len(table["snr_db"])
        for attr, spec in self.bins.items():
            values = _transform(np.asarray(table[spec["feature"]], dtype=np.float64), spec["transform"])
            col = spec["group_by"]
            groups = table[col] if col is not None and col in table else [None] * n
            res: list[str | None] = []
            for v, g in zip(values, groups):
                edges = spec["groups"].get(_group_key(g)) or spec["groups"].get("*")
                res.append(None if not np.isfinite(v) or edges is None
                           else spec["levels"][int(np.searchsorted(edges, v, side="right"))])
            out[attr] = res
        snr = np.asarray(table["snr_db"], dtype=np.float64)
        rt60 = np.asarray(table["rt60_s"], dtype=np.float64) if "rt60_s" in table else np.full(n, np.nan)
        res = []
        for s, r in zip(snr, rt60):
            if np.isfinite(r) and r >= self.quality["rt60_s"]:
                res.append("reverberant")
            elif not np.isfinite(s):
                res.append(None)
            else:
                res.append(QUALITY_LEVELS[int(np.searchsorted(self.quality["snr_db"], s, side="right"))])
        out["quality"] = res
        return out

    def assign_one(
        self, m: Measures | Mapping[str, float], gender: str | None = None
    ) -> dict[str, str | None]:
        """`assign` for one utterance (e.g. a generated sample in `evaluate`)."""
        row = m.to_dict() if isinstance(m, Measures) else dict(m)
        table = {k: [v] for k, v in row.items()}
        table["gender"] = [gender]
        return {k: v[0] for k, v in self.assign(table).items()}


def coarse(value: str | None) -> str | None:
    """A level reduced to low / moderate / high style classes: "very low" -> "low",
    "slightly high" -> "moderate", "slightly fast" -> "moderate"; others unchanged. Used to compare
    the fine bins with a corpus that labels only three classes."""
    if value is None:
        return None
    if value.startswith("very ") and value not in ("very noisy",):
        return value[5:]
    if value.startswith("slightly ") and value not in ("slightly noisy",):
        return "moderate"
    return value
