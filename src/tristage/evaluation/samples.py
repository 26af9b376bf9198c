"""A fixed set of synthesis requests, and writing their audio + `samples.json`.

The plan is chosen from the validation rows by seed alone, so every stage (and every run)
speaks the same requests: `matched` pairs (speaker and emotion reference from one utterance)
and `cross` pairs (speaker A with the emotion reference of another speaker B), the test of
emotion transfer that stage 2 is for.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tristage.features.codec import codec_speaks


def _ref(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "speaker": row["speaker"], "emotion": row.get("emotion") or None}


def sample_plan(rows: Sequence[Mapping[str, Any]], n: int, seed: int,
                n_cross: int | None = None) -> list[dict[str, Any]]:
    """`n` matched requests (speakers in turn, so as many distinct speakers as possible) + cross requests
    for the first `n_cross` of them (default `n`).

    rows: dicts with id, text, speaker, caption, emotion (the validation split)."""
    if not rows:
        return []
    rng = random.Random(seed)
    by_speaker: dict[str, list[Mapping[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: str(r["id"])):
        by_speaker.setdefault(str(r["speaker"]), []).append(r)
    speakers = sorted(by_speaker)
    rng.shuffle(speakers)
    chosen: list[Mapping[str, Any]] = []
    while len(chosen) < n and any(by_speaker.values()):
        for s in speakers:
            if by_speaker[s] and len(chosen) < n:
                chosen.append(by_speaker[s].pop(rng.randrange(len(by_speaker[s]))))
    plan = []
    for i, r in enumerate(chosen):
        plan.append(
            {
                "name": f"matched_{i:02d}",
                "kind": "matched",
                "text": r["text"],
                "caption": r.get("caption") or "",
                "speaker_ref": _ref(r),
                "emotion_ref": _ref(r),
            }
        )
    for i, a in enumerate(chosen[: n if n_cross is None else n_cross]):
        # the emotion of the next chosen utterance from another speaker (prefer another emotion)
        others = [b for b in chosen if b["speaker"] != a["speaker"]]
        if not others:
            continue
        diff = [b for b in others if (b.get("emotion") or None) != (a.get("emotion") or None)]
        b = (diff or others)[i % len(diff or others)]
        plan.append(
            {
                "name": f"cross_{i:02d}",
                "kind": "cross",
                "text": a["text"],
                "caption": b.get("caption") or "",
                "speaker_ref": _ref(a),
                "emotion_ref": _ref(b),
            }
        )
    return plan


def write_samples(
    out_dir: Path,
    stage: str,
    plan: Sequence[Mapping[str, Any]],
    wavs: Sequence[np.ndarray],
    sample_rate: int,
    codec: Mapping[str, Any],
    extra: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict]:
    """Write `<out_dir>/<stage>/<name>.wav` for each request; return the samples.json entries."""
    import soundfile as sf

    from tristage.fsio import atomic_path

    entries = []
    for i, (req, wav) in enumerate(zip(plan, wavs)):
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        path = out_dir / stage / f"{req['name']}.wav"
        with atomic_path(path, suffix=".wav") as tmp:
            sf.write(tmp, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
        entry = {**req, "stage": stage, "wav": f"{stage}/{req['name']}.wav", "sample_rate": sample_rate,
                 "seconds": round(len(wav) / sample_rate, 3), "codec": dict(codec),
                 "is_speech": codec_speaks(codec)}
        if extra:
            entry.update(extra[i])
        entries.append(entry)
    return entries
