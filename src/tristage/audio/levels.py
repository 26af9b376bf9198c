"""The attribute levels that measured audio is binned into, and which measure feeds each.

Kept apart from `measures.py` (numpy/librosa work) so that the params schema
(`annotation/config.py`) can name them without every stage depending on the measuring code.
"""
from __future__ import annotations

# the order is low -> high; these are the lexicon's own values (params `caption_vectors.lexicon`)
DEFAULT_LEVELS: dict[str, list[str]] = {
    "pitch": ["very low", "low", "slightly low", "moderate", "slightly high", "high", "very high"],
    "speed": ["slow", "slightly slow", "moderate", "slightly fast", "fast"],
    "modulation": ["monotone", "moderate", "expressive"],
}
# attribute -> (feature column, transform before binning, group column or None)
FITTED = {"pitch": ("f0_hz", "log", "gender"), "speed": ("speaking_rate", "linear", None),
          "modulation": ("pitch_std_st", "linear", None)}
QUALITY_LEVELS = ["very noisy", "noisy", "slightly noisy", "clean"]
DEFAULT_QUALITY = {"rt60_s": 0.2, "snr_db": [10.0, 18.0, 25.0]}  # see AttributeBins.assign
