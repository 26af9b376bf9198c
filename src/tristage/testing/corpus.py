"""Tiny synthetic corpora for tests and for trying stages on "another synthesizer".

Not speech: each utterance is a harmonic tone whose f0 depends on the speaker and whose
contour, rate and energy depend on the emotion, so speaker and emotion are both
recoverable from the log-mel, which is all the pipeline's tests need. Deterministic
from the seed; a few milliseconds per clip.

    write_tone_corpus(out_dir, n_speakers=4, utts_per_speaker=8, sample_rate=16000)
        -> out_dir/manifest.jsonl + out_dir/wavs/*.wav  (contract manifest format)
    write_prepared(out_dir, ...) -> out_dir/manifest.parquet written directly in the
        prepared schema (for unit tests of stages after `prepare`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EMOTIONS = ("neutral", "happy", "sad", "angry")
WORDS = ("the quick brown fox jumps over a lazy dog while seven bright birds sing "
         "near an old stone bridge under the calm evening sky").split()
GENDERS = ("female", "male")
ACCENTS = ("American", "British", "Scottish", "Indian")


def _tone(rng: np.random.Generator, sr: int, dur: float, f0: float, emotion: str, noisy: bool) -> np.ndarray:
    t = np.arange(int(sr * dur)) / sr
    contour = {"neutral": 0.0, "happy": 0.25, "sad": -0.15, "angry": 0.1}[emotion]
    vibrato = {"neutral": 0.0, "happy": 0.04, "sad": 0.01, "angry": 0.08}[emotion]
    f = f0 * (1 + contour * t / dur + vibrato * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    amp = {"neutral": 0.3, "happy": 0.4, "sad": 0.15, "angry": 0.6}[emotion]
    x = sum(amp / k * np.sin(k * phase) for k in range(1, 6))
    syll = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + 2 * (emotion == "angry")) * t) ** 2  # syllable-like envelope
    x = x * syll
    if noisy:
        x = x + 0.02 * rng.standard_normal(len(t))
    fade = np.minimum(1, np.minimum(t, t[::-1]) / 0.02)
    return (x * fade).astype(np.float32)


def _rows(n_speakers: int, utts_per_speaker: int, seed: int):
    rng = np.random.default_rng(seed)
    for s in range(n_speakers):
        gender = GENDERS[s % 2]
        f0 = (200.0 if gender == "female" else 110.0) * (1 + 0.08 * (s // 2))
        accent = ACCENTS[s % len(ACCENTS)]
        for u in range(utts_per_speaker):
            emotion = EMOTIONS[u % len(EMOTIONS)]
            n_words = int(rng.integers(3, 8))
            text = " ".join(rng.choice(WORDS, n_words)).capitalize() + "."
            dur = float(np.round(0.6 + 0.12 * n_words * (0.8 if emotion in ("happy", "angry") else 1.1), 2))
            noisy = bool(rng.random() < 0.25)
            speed = "quickly" if emotion in ("happy", "angry") else "slowly"
            pitch = "high" if f0 > 190 else "low" if f0 < 130 else "moderate"
            caption = (f"A {gender} speaker with a {pitch}-pitched {accent} voice speaks {speed} "
                       f"in a {'noisy' if noisy else 'clean'} recording, sounding {emotion}.")
            # a record literal; `duplicates` pairs its shape with synthesis/folder.py's (other fields)
            yield dict(
                id=f"spk{s:02d}_{u:03d}",
                speaker=f"spk{s:02d}",
                text=text,
                caption=caption,
                emotion=emotion,
                gender=gender,
                pitch=pitch,
                speed=speed,
                accent=accent,
                modulation="animated" if emotion in ("happy", "angry") else "monotone",
                quality="noisy" if noisy else "clean",
                language="en",
                _f0=f0,
                _dur=dur,
                _noisy=noisy,
                _seed=int(rng.integers(1 << 31)),
            )


def write_tone_corpus(out_dir: str | Path, n_speakers: int = 4, utts_per_speaker: int = 8,
                      sample_rate: int = 16000, seed: int = 0) -> Path:
    """Write wavs + a contract manifest (`manifest.jsonl`); return the manifest path."""
    import soundfile as sf

    out = Path(out_dir)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for row in _rows(n_speakers, utts_per_speaker, seed):
        rng = np.random.default_rng(row["_seed"])
        wav = _tone(rng, sample_rate, row["_dur"], row["_f0"], row["emotion"], row["_noisy"])
        rel = f"wavs/{row['id']}.wav"
        sf.write(out / rel, wav, sample_rate, subtype="PCM_16")
        rec = {k: v for k, v in row.items() if not k.startswith("_")}
        rec["audio"] = rel
        rec["duration"] = round(len(wav) / sample_rate, 4)
        lines.append(json.dumps(rec))
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def write_prepared(out_dir: str | Path, n_speakers: int = 4, utts_per_speaker: int = 8,
                   sample_rate: int = 16000, seed: int = 0) -> Path:
    """Write a tone corpus and its prepared manifest (`manifest.parquet`) in one folder,
    bypassing the `prepare` stage; return the parquet path."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    from tristage.data.manifest import PREPARED_COLUMNS, prepared_schema

    out = Path(out_dir)
    manifest = write_tone_corpus(out, n_speakers, utts_per_speaker, sample_rate, seed)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows:
        info = sf.info(out / r["audio"])
        r["duration"] = float(info.frames / info.samplerate)
        r["sample_rate"] = int(info.samplerate)
    cols = {c: [r.get(c) for r in rows] for c in PREPARED_COLUMNS}
    table = pa.table(cols, schema=prepared_schema())
    path = out / "manifest.parquet"
    pq.write_table(table, path)
    return path


def write_feature_store(
    folder: str | Path,
    n: int,
    shard_size: int = 1024,
    n_mels: int = 80,
    n_codebooks: int = 4,
    codebook_size: int = 256,
    seed: int = 0,
) -> Path:
    """A features folder in the real format (shards, index, meta) with random short utterances
    (1-3 s at 31.25 codec / 62.5 mel frames per second): for scale tests of the readers."""
    import pandas as pd
    import torch

    from tristage.features import store as st
    from tristage.fsio import atomic_path, write_json

    out = Path(folder)
    rng = np.random.default_rng(seed)
    recs = []
    for s, start in enumerate(range(0, n, shard_size)):
        ids = [f"utt{i:07d}" for i in range(start, min(n, start + shard_size))]
        T = rng.integers(31, 94, len(ids))
        mels = [
            torch.from_numpy(rng.standard_normal((2 * t, n_mels), dtype=np.float32).astype(np.float16))
            for t in T
        ]
        codes = [
            torch.from_numpy(rng.integers(0, codebook_size, (n_codebooks, t)).astype(np.int16)) for t in T
        ]
        durs = [float(t) / 31.25 for t in T]
        st.write_shard(st.shard_path(out, s), mels, codes, ids, durs, [], "synthetic", n_mels, n_codebooks)
        recs += [dict(id=u, shard=s, row=r, n_frames=int(t), n_mel_frames=int(2 * t), duration=d)
                 for r, (u, t, d) in enumerate(zip(ids, T, durs))]
    with atomic_path(out / st.INDEX, suffix=".parquet") as tmp:
        pd.DataFrame(recs).to_parquet(tmp, index=False)
    write_json(
        out / st.META,
        dict(
            format=st.FORMAT,
            n_mels=n_mels,
            n_codebooks=n_codebooks,
            codebook_size=codebook_size,
            frames_per_second=31.25,
            mel_frames_per_second=62.5,
            codec=dict(name="synthetic", pretrained=False),
            n_utterances=n,
        ),
    )
    return out
