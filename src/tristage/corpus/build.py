"""The embedded demo corpus: English speech synthesised locally with espeak-ng.

    build_corpus(params.corpus) -> {"utterances": 720, "speakers": 12, "total_duration_s": ...}
        writes <out_dir>/wavs/<id>.wav (16-bit mono, 22.05 kHz) and <out_dir>/manifest.jsonl

Each speaker is a fixed combination of accent voice x gender variant x base pitch x base rate.
Each utterance has an emotion/style (neutral, happy, sad, angry, bored: pitch offset, pitch
range, rate and loudness), a recording quality (clean, noisy: added noise at 5-15 dB SNR,
reverberant: a synthetic exponentially decaying impulse response), a generated sentence and
a free-form caption phrased from the true attributes.

Everything is decided up front from `seed` in the parent process (`plan_corpus`), so the
output does not depend on the number of workers. libespeak-ng keeps state between
utterances inside a process (glottal phase, echo buffers): the same text does not give the
same samples twice in one process. So every utterance is rendered in a fresh worker
process (`maxtasksperchild=1`); the first synthesis in a process is deterministic.
Voice variants with breath noise (f2, f3, f5) are not deterministic even then; not used.
"""
from __future__ import annotations

import itertools
import json
import logging
import multiprocessing as mp
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tristage.corpus.config import CorpusParams
from tristage.corpus.text import caption, sentence

log = logging.getLogger(__name__)

# espeak-ng voice -> accent label
ACCENTS = (("en-us", "American"), ("en", "British"), ("en-gb-scotland", "Scottish"), ("en-029", "Caribbean"),
           ("en-us-nyc", "New York"), ("en-gb-x-gbclan", "Lancastrian"), ("en-gb-x-gbcwmd", "West Midlands"))
VARIANTS = {"female": ("f1", "f4"), "male": ("m1", "m3", "m4", "m6", "m7")}
BASE_PITCHES = (35, 45, 55, 65)  # espeakPITCH, 0..100, 50 = the variant's own
BASE_RATES = (150, 170, 190)  # words per minute

# emotion -> (pitch offset, pitch range 0..100, rate factor, volume 0..200)
EMOTIONS = {
    "neutral": (0, 50, 1.00, 100),
    "happy": (12, 90, 1.12, 120),
    "sad": (-10, 25, 0.80, 55),
    "angry": (5, 70, 1.20, 170),
    "bored": (-4, 0, 0.92, 85),
}
SAMPLE_RATE = 22050  # libespeak-ng's native rate


@dataclass(frozen=True)
class Speaker:
    name: str
    voice: str  # "en-gb-scotland+f1"
    accent: str
    gender: str
    pitch: int
    rate: int


@dataclass(frozen=True)
class Utterance:
    id: str
    speaker: Speaker
    text: str
    emotion: str
    quality: str
    snr_db: float
    rt60_s: float
    seed: int

    @property
    def settings(self) -> dict[str, int]:
        """The espeak-ng parameters this utterance is spoken with."""
        dp, rng, rate_f, volume = EMOTIONS[self.emotion]
        return dict(pitch=int(np.clip(self.speaker.pitch + dp, 0, 100)), range_=rng,
                    rate=int(round(self.speaker.rate * rate_f)), volume=volume)

    def attributes(self) -> dict[str, str]:
        """The true style attributes (contract attribute columns + emotion)."""
        s = self.settings
        pitch = "low" if s["pitch"] < 40 else "high" if s["pitch"] > 60 else "moderate"
        speed = "slow" if s["rate"] < 155 else "fast" if s["rate"] > 195 else "moderate"
        modulation = "monotone" if s["range_"] <= 20 else "expressive" if s["range_"] >= 75 else "moderate"
        return dict(gender=self.speaker.gender, pitch=pitch, speed=speed, accent=self.speaker.accent,
                    modulation=modulation, quality=self.quality, emotion=self.emotion)


def make_speakers(n: int, seed: int) -> list[Speaker]:
    """`n` distinct speakers, alternating gender, accents spread evenly; deterministic from `seed`."""
    rng = np.random.default_rng([seed, 0])
    combos = {g: list(itertools.product(range(len(ACCENTS)), VARIANTS[g], BASE_PITCHES, BASE_RATES))
              for g in VARIANTS}
    capacity = min(len(c) for c in combos.values()) * 2
    if n > capacity:
        raise ValueError(f"corpus.n_speakers={n}: at most {capacity} distinct speakers can be made")
    for g in combos:
        combos[g] = [combos[g][i] for i in rng.permutation(len(combos[g]))]
        # spread accents: sort stably by how many earlier combos share the accent
        seen: dict[int, int] = {}
        ranked = []
        for c in combos[g]:
            ranked.append((seen.get(c[0], 0), c))
            seen[c[0]] = seen.get(c[0], 0) + 1
        combos[g] = [c for _, c in sorted(ranked, key=lambda rc: rc[0])]
    speakers = []
    for i in range(n):
        gender = ("female", "male")[i % 2]
        acc, variant, pitch, rate = combos[gender][i // 2]
        voice, accent = ACCENTS[acc]
        speakers.append(Speaker(f"spk{i:03d}", f"{voice}+{variant}", accent, gender, pitch, rate))
    return speakers


def plan_corpus(p: CorpusParams) -> list[Utterance]:
    """Every utterance of the corpus, decided from `p.seed` alone."""
    rng = np.random.default_rng([p.seed, 1])
    utts = []
    emotions = list(EMOTIONS)
    for spk in make_speakers(p.n_speakers, p.seed):
        # each speaker gets every emotion equally often (emotion independent of speaker)
        emos = [emotions[i % len(emotions)] for i in range(p.utts_per_speaker)]
        emos = [emos[i] for i in rng.permutation(len(emos))]
        for u, emotion in enumerate(emos):
            r = rng.random()
            quality = "noisy" if r < p.noisy_fraction else \
                "reverberant" if r < p.noisy_fraction + p.reverb_fraction else "clean"
            utts.append(Utterance(id=f"{spk.name}_{u:04d}", speaker=spk, text=sentence(rng), emotion=emotion,
                                  quality=quality, snr_db=float(rng.uniform(5, 15)),
                                  rt60_s=float(rng.uniform(0.3, 0.9)),
                                  seed=int(rng.integers(2**31))))
    return utts


# -- rendering (in worker processes) ----------------------------------------------------------

def trim_silence(x: np.ndarray, sr: int, threshold: float = 1e-3, pad_s: float = 0.1) -> np.ndarray:
    """Cut leading/trailing samples quieter than `threshold`, keeping `pad_s` of silence."""
    loud = np.nonzero(np.abs(x) > threshold)[0]
    if len(loud) == 0:
        return x
    pad = int(pad_s * sr)
    return x[max(0, loud[0] - pad): loud[-1] + pad]


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """Add pinkish noise (white noise through a one-pole low-pass) at `snr_db` below the speech power."""
    white = rng.standard_normal(len(x))
    from scipy.signal import lfilter

    noise = lfilter([1.0], [1.0, -0.9], white)
    speech_power = np.mean(x[np.abs(x) > 1e-3] ** 2) if np.any(np.abs(x) > 1e-3) else np.mean(x ** 2)
    noise *= np.sqrt(speech_power / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
    return (x + noise).astype(np.float32)


def add_reverb(x: np.ndarray, rng: np.random.Generator, sr: int, rt60_s: float) -> np.ndarray:
    """Convolve with a synthetic room: a direct path plus exponentially decaying noise (-60 dB at rt60)."""
    from scipy.signal import fftconvolve

    n = int(rt60_s * sr)
    t = np.arange(n) / sr
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s) * 0.25
    ir[0] = 1.0
    y = fftconvolve(x, ir)[: len(x) + n // 2]
    rms_in, rms_out = np.sqrt(np.mean(x ** 2)), np.sqrt(np.mean(y ** 2))
    return (y * (rms_in / max(rms_out, 1e-9))).astype(np.float32)


def render(utt: Utterance) -> np.ndarray:
    """The utterance's audio, float32 in [-1, 1] at SAMPLE_RATE. Call in a fresh process."""
    from tristage.corpus.espeak import Espeak

    tts = Espeak.get()
    if tts.sample_rate != SAMPLE_RATE:
        raise RuntimeError(f"libespeak-ng runs at {tts.sample_rate} Hz, expected {SAMPLE_RATE}")
    x = tts.synth(utt.text, utt.speaker.voice, **utt.settings).astype(np.float32) / 32768.0
    x = trim_silence(x, SAMPLE_RATE)
    rng = np.random.default_rng(utt.seed)
    if utt.quality == "noisy":
        x = add_noise(x, rng, utt.snr_db)
    elif utt.quality == "reverberant":
        x = add_reverb(x, rng, SAMPLE_RATE, utt.rt60_s)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 0.97:
        x = x * (0.97 / peak)
    return x


def _render_to_file(job: tuple[Utterance, str]) -> tuple[str, int]:
    import soundfile as sf

    utt, wav_dir = job
    x = render(utt)
    sf.write(Path(wav_dir) / f"{utt.id}.wav", x, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return utt.id, len(x)


def manifest_row(utt: Utterance, n_samples: int) -> dict:
    attrs = utt.attributes()
    rng = np.random.default_rng([utt.seed, 7])
    row = dict(id=utt.id, audio=f"wavs/{utt.id}.wav", text=utt.text, speaker=utt.speaker.name,
               caption=caption(rng, attrs), emotion=utt.emotion, language="en",
               duration=round(n_samples / SAMPLE_RATE, 4))
    row.update({k: attrs[k] for k in ("gender", "pitch", "speed", "accent", "modulation", "quality")})
    return row


def _preload() -> None:
    """Import what workers need once, in the parent: each utterance gets a freshly forked
    worker, which would otherwise import scipy and soundfile again (about 0.3 s each).
    The espeak library is only mapped here (dlopen), not initialised: its state stays fresh."""
    import ctypes

    import espeakng_loader
    import scipy.signal  # noqa: F401
    import soundfile  # noqa: F401

    ctypes.CDLL(espeakng_loader.get_library_path())


def build_corpus(p: CorpusParams, tracker=None) -> dict:
    """Synthesise the corpus into `p.out_dir` (replaced atomically); return counts."""
    from tqdm import tqdm

    from tristage.fsio import atomic_dir

    utts = plan_corpus(p)
    _preload()
    ctx = mp.get_context("fork")
    with atomic_dir(p.out_dir) as tmp:
        wav_dir = tmp / "wavs"
        wav_dir.mkdir()
        lengths: dict[str, int] = {}
        with ctx.Pool(p.workers, maxtasksperchild=1) as pool:
            jobs = pool.imap_unordered(_render_to_file, [(u, str(wav_dir)) for u in utts], chunksize=1)
            for uid, n in tqdm(jobs, total=len(utts), desc="corpus", unit="utt", mininterval=1.0):
                lengths[uid] = n
        rows = [manifest_row(u, lengths[u.id]) for u in utts]
        with open(tmp / "manifest.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / "speakers.json").write_text(
            json.dumps([asdict(s) for s in make_speakers(p.n_speakers, p.seed)], indent=1) + "\n"
        )
    total = sum(r["duration"] for r in rows)
    metrics = {"utterances": len(rows), "speakers": p.n_speakers, "total_duration_s": round(total, 2)}
    for q in ("clean", "noisy", "reverberant"):
        metrics[f"quality_{q}"] = sum(r["quality"] == q for r in rows)
    log.info(
        "corpus: %d utterances, %d speakers, %.1f s of audio in %s", len(rows), p.n_speakers, total, p.out_dir
    )
    return metrics
