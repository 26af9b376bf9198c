"""The measuring module shared by `annotate` and `evaluate`, on real espeak-ng speech made here."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tristage.audio.measures import (
    DEFAULT_LEVELS,
    MEASURE_COLUMNS,
    AttributeBins,
    Measures,
    coarse,
    count_words,
    measure,
)
from tristage.corpus.build import add_noise, add_reverb, trim_silence

TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank.",
         "Please call Stella and ask her to bring these things with her from the store.",
         "She sells sea shells by the sea shore every single summer morning.",
         "A large red balloon floated slowly over the quiet little village."]


@pytest.fixture(scope="module")
def tts():
    from tristage.corpus.espeak import Espeak

    return Espeak.get()


def speak(tts, text, voice="en-us+m3", **kw) -> np.ndarray:
    """Speech with 0.25 s of silence at both ends, as recordings have."""
    x = tts.synth(text, voice, **kw).astype(np.float32) / 32768.0
    pad = np.zeros(tts.sample_rate // 4, np.float32)
    return np.concatenate([pad, trim_silence(x, tts.sample_rate, pad_s=0.0), pad])


def test_f0_follows_the_set_pitch(tts):
    low = [measure(speak(tts, t, pitch=15), tts.sample_rate, t) for t in TEXTS[:2]]
    high = [measure(speak(tts, t, pitch=85), tts.sample_rate, t) for t in TEXTS[:2]]
    for lo, hi in zip(low, high):
        assert 60 < lo.f0_hz < hi.f0_hz < 400
        assert hi.f0_hz / lo.f0_hz > 1.3  # espeak's pitch 15 -> 85 is more than 4 semitones
        assert lo.voiced_s > 0.3 and lo.voiced_s <= lo.duration_s


def test_speaking_rate_follows_the_set_rate(tts):
    slow = [measure(speak(tts, t, rate=110), tts.sample_rate, t) for t in TEXTS[:2]]
    fast = [measure(speak(tts, t, rate=300), tts.sample_rate, t) for t in TEXTS[:2]]
    for s, f in zip(slow, fast):
        assert s.n_words == f.n_words > 5
        assert f.speaking_rate > 1.8 * s.speaking_rate
        # words per minute as set, within a loose factor (pauses included)
        assert 110 / 60 * 0.6 < s.speaking_rate < 110 / 60 * 1.6


def test_noise_and_reverb_are_seen(tts):
    sr = tts.sample_rate
    x = speak(tts, TEXTS[2])
    rng = np.random.default_rng(0)
    clean, noisy = measure(x, sr, TEXTS[2]), measure(add_noise(x, rng, 5.0), sr, TEXTS[2])
    wet = measure(add_reverb(x, rng, sr, 0.8), sr, TEXTS[2])
    assert clean.snr_db > 25 and noisy.snr_db < 15
    assert clean.rt60_s < 0.2 < wet.rt60_s
    assert abs(noisy.f0_hz / clean.f0_hz - 1) < 0.1  # the pitch survives 5 dB of noise


def test_monotone_speech_has_less_pitch_variation(tts):
    flat = measure(speak(tts, TEXTS[3], range_=0), tts.sample_rate)
    lively = measure(speak(tts, TEXTS[3], range_=100), tts.sample_rate)
    assert flat.pitch_std_st < lively.pitch_std_st
    assert np.isnan(flat.speaking_rate)  # no text, no rate


def test_bins_order_voices_and_speeds_and_round_trip(tts):
    rows = []
    for i, (pitch, rate) in enumerate([(p, r) for p in (10, 50, 90) for r in (100, 175, 320)]):
        for t in TEXTS[:2]:
            m = measure(speak(tts, t, pitch=pitch, rate=rate), tts.sample_rate, t)
            rows.append(dict(m.to_dict(), set_pitch=pitch, set_rate=rate, gender="male"))
    df = pd.DataFrame(rows)
    bins = AttributeBins.fit(df, min_group=5)
    assert set(bins.bins["pitch"]["groups"]) == {"*", "male"}
    got = bins.assign(df)
    pitch_rank = {v: i for i, v in enumerate(DEFAULT_LEVELS["pitch"])}
    speed_rank = {v: i for i, v in enumerate(DEFAULT_LEVELS["speed"])}
    df["pitch_level"] = [pitch_rank[v] for v in got["pitch"]]
    df["speed_level"] = [speed_rank[v] for v in got["speed"]]
    by_pitch = df.groupby("set_pitch")["pitch_level"].mean()
    by_rate = df.groupby("set_rate")["speed_level"].mean()
    assert by_pitch.is_monotonic_increasing and by_pitch.iloc[0] < by_pitch.iloc[-1]
    assert by_rate.is_monotonic_increasing and by_rate.iloc[0] < by_rate.iloc[-1]
    assert all(coarse(v) == "low" for v in np.array(got["pitch"])[df.set_pitch == 10])
    assert set(got["quality"]) <= {"clean", "slightly noisy"}

    again = AttributeBins.from_dict(json.loads(json.dumps(bins.to_dict())))
    assert again.assign(df) == got
    one = again.assign_one(Measures(**{k: df.iloc[0][k] for k in MEASURE_COLUMNS}), gender="male")
    assert one == {k: v[0] for k, v in got.items()}
    # an unknown group falls back to the whole-corpus bins; NaN features give None
    nan_row = dict(df.iloc[0][list(MEASURE_COLUMNS)], f0_hz=float("nan"))
    assert again.assign_one(nan_row, gender="robot")["pitch"] is None
    assert again.assign_one(df.iloc[0][list(MEASURE_COLUMNS)].to_dict(), gender="robot")["pitch"] is not None


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        measure(np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="non-finite"):
        measure(np.full(16000, np.nan, np.float32), 16000)
    silent = measure(np.zeros(16000, np.float32), 16000, "two words")
    assert np.isnan(silent.f0_hz) and silent.voiced_s == 0
    with pytest.raises(ValueError, match="not an AttributeBins"):
        AttributeBins.from_dict({"bins": {}})
    with pytest.raises(ValueError, match="no measured feature"):
        AttributeBins.fit({"snr_db": [1.0]}, levels={"accent": ["a", "b"]})


def test_count_words_and_coarse():
    assert count_words("It's a dog-eat-dog world, isn't it?") == 8  # dog-eat-dog: three spoken words
    assert count_words(None) == 0
    assert [coarse(v) for v in ("very low", "slightly high", "fast", "very noisy", "slightly noisy")] == \
        ["low", "moderate", "fast", "very noisy", "slightly noisy"]
