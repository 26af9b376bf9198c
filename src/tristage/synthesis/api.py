"""Speak with a trained model: the Python API.

    from tristage.synthesis import TTS
    tts = TTS.from_pretrained("models/stage3")
    wav, sr = tts.synthesize("Hello there.", caption="A woman speaks quickly.", speaker_ref="a.wav",
                             attributes={"pitch": "low"}, seed=0, max_seconds=8)

- `speaker_ref` / `emotion_ref`: a path to an audio file (any sample rate, mono or stereo: the
  channels are averaged, the rate converted to the model's mel rate), a `(samples, sample_rate)`
  pair, or the name of a reference stored in the model folder (`tts.speakers`: one per validation
  speaker). A reference longer than the training references (`max_ref_frames` mel frames, about
  2.6 s at the demo's settings) is centre-cropped to that length; a shorter one is used whole (no
  padding); under 0.1 s is an error. `emotion_ref=None`: the speaker reference carries the emotion.
- `attributes` edits the caption with the lexicon the caption table was built with: the phrase that
  states an attribute is replaced by the first phrase of the new value, or the phrase is appended
  when the caption states none. An unknown attribute or value is an error listing the valid ones.
- The length is the model's: its end-of-speech head stops generation; `max_seconds` caps it.
- With a random-init codec (`tts.is_speech` False) the audio is not speech: `tts.note` says so.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tristage.errors import UserError
from tristage.synthesis.folder import load_codec_from_folder, load_folder, load_references

MIN_REF_SECONDS = 0.1
RANDOM_CODEC_NOTE = (
    "the codec is random-init: the audio is NOT speech, only proof that the synthesis path runs "
    "(train with official DAC weights, features.codec.weights, for speech)"
)

Reference = str | os.PathLike | tuple[np.ndarray, int] | None


@dataclasses.dataclass
class Request:
    """One synthesis request (the API's arguments; one JSONL row of `tristage synthesize --requests`)."""

    text: str
    caption: str = ""
    speaker_ref: Reference = None
    emotion_ref: Reference = None
    attributes: dict[str, str] = dataclasses.field(default_factory=dict)
    seed: int = 0
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    max_seconds: float = 10.0

    def sampling_key(self) -> tuple:
        return (self.seed, self.temperature, self.top_k, self.top_p)


@dataclasses.dataclass
class Result:
    wav: np.ndarray  # float32 (N,)
    sample_rate: int
    n_frames: int  # codec frames the model generated
    stopped: bool  # True: the end-of-speech head ended it; False: max_seconds did
    caption: str  # the caption after attribute edits
    seconds_taken: float  # this request's share of its batch's wall time

    @property
    def duration(self) -> float:
        return len(self.wav) / self.sample_rate

    @property
    def rtf(self) -> float:
        """Real-time factor: seconds of compute per second of audio (< 1 is faster than real time)."""
        return self.seconds_taken / max(self.duration, 1e-9)


def edit_caption(
    caption: str, attributes: dict[str, str] | None, lexicon: dict[str, dict[str, list[str]]]
) -> str:
    """Replace (or add) attribute values in a caption with the lexicon's phrases."""
    from tristage.captions.lexicon import Matcher

    caption = " ".join(str(caption or "").split())
    for attr, value in (attributes or {}).items():
        if attr not in lexicon:
            raise UserError(f"unknown attribute {attr!r}; valid: {', '.join(sorted(lexicon))}")
        values = lexicon[attr]
        match = {v.lower(): v for v in values}.get(str(value).lower())
        if match is None:
            raise UserError(f"unknown value {value!r} for {attr}; valid: {', '.join(values)}")
        phrase = values[match][0]
        spans = [s for s in Matcher(lexicon).spans(caption) if s[2] == attr]
        if spans:
            for start, end, _, _ in reversed(spans):  # every phrase stating this attribute
                caption = caption[:start] + phrase + caption[end:]
        else:
            body = caption.rstrip(" .")
            caption = f"{body}, {phrase}." if body else f"{phrase[:1].upper()}{phrase[1:]}."
    return caption


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples float32 (N,) mono, sample rate) from any file soundfile reads; channels averaged."""
    import soundfile as sf

    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - unreadable audio is the user's input
        raise UserError(f"{path}: cannot read audio ({exc})") from None
    return wav.mean(axis=1), int(sr)


class TTS:
    """A trained model folder, ready to speak. Build it with `TTS.from_pretrained(folder)`."""

    def __init__(self, folder: Path, model, cfg, info: dict, table, codec, device: str):
        self.folder, self.model, self.cfg, self.info, self.table = folder, model, cfg, info, table
        self.codec, self.device = codec, device
        self.references = load_references(folder, info)
        from tristage.features.config import MelParams

        self.mel_params = MelParams(**info["mel"])
        self.lexicon: dict[str, dict[str, list[str]]] = info.get("lexicon") or {}
        self.frames_per_second = float(info["frames_per_second"])
        self.max_ref_frames = int(info["max_ref_frames"])

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, device: str = "cpu", codec_weights: str | None = None
    ) -> "TTS":
        """Load `models/<stage>/` (or a copy of it anywhere); `codec_weights` overrides the path of
        official codec weights when the folder moved away from them."""
        folder = Path(folder)
        model, cfg, info, table = load_folder(folder, device)
        codec = load_codec_from_folder(folder, info, device, codec_weights)
        return cls(folder, model, cfg, info, table, codec, device)

    # what a caller can choose from --------------------------------------------------------
    @property
    def speakers(self) -> list[str]:
        """Names of the stored reference voices (validation speakers)."""
        return sorted(self.references)

    @property
    def attributes(self) -> dict[str, list[str]]:
        return {a: list(v) for a, v in self.lexicon.items()}

    @property
    def sample_rate(self) -> int:
        return int(self.info["codec"].get("sample_rate") or 0)

    @property
    def is_speech(self) -> bool:
        return bool(self.info["codec"].get("pretrained"))

    @property
    def note(self) -> str:
        base = self.info.get("note", "")
        return f"{base}; {RANDOM_CODEC_NOTE}" if not self.is_speech else base

    @property
    def max_seconds(self) -> float:
        """The longest output the model's positions allow."""
        return self.cfg.max_frames / self.frames_per_second

    # conditioning -------------------------------------------------------------------------
    def reference_mel(self, ref: Reference, what: str = "speaker_ref") -> torch.Tensor:
        """A reference (path, (samples, rate) or stored name) -> log-mel (T, n_mels), centre-cropped."""
        from tristage.features.mel import log_mel

        if ref is None:
            if not self.references:
                raise UserError(f"{what}: required (this model folder stores no reference voices)")
            ref = self.speakers[0]
        if isinstance(ref, str) and ref in self.references:
            mel = self.references[ref]
        else:
            if isinstance(ref, (str, os.PathLike)):
                if not Path(ref).is_file():
                    valid = ", ".join(self.speakers) or "none stored"
                    raise UserError(
                        f"{what}: {ref} is neither an audio file nor a stored reference ({valid})"
                    )
                wav, sr = load_audio(ref)
            else:
                wav, sr = np.asarray(ref[0], dtype=np.float32), int(ref[1])
                wav = wav.mean(axis=1) if wav.ndim == 2 else wav.reshape(-1)
            if len(wav) < MIN_REF_SECONDS * sr:
                raise UserError(
                    f"{what}: {len(wav) / max(sr, 1):.3f} s of audio; at least {MIN_REF_SECONDS} s needed"
                )
            target = self.mel_params.sample_rate
            if sr != target:
                import librosa

                wav = librosa.resample(wav.astype(np.float32), orig_sr=sr, target_sr=target)
            mel = log_mel(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), self.mel_params)[0]
        n = self.max_ref_frames
        s = max(0, (mel.shape[0] - n) // 2)
        return mel[s : s + n].float()

    def request(self, text: str, **kw: Any) -> Request:
        return Request(text=text, **kw)

    def check(self, req: Request) -> str:
        """Validate one request before any work; return its edited caption."""
        if not isinstance(req.text, str) or not req.text.strip():
            raise UserError("text: empty")
        if not (isinstance(req.max_seconds, (int, float)) and req.max_seconds > 0):
            raise UserError(f"max_seconds: {req.max_seconds!r} (must be > 0)")
        if req.temperature is None or req.temperature < 0:
            raise UserError(f"temperature: {req.temperature!r} (must be >= 0; 0 = greedy)")
        if req.top_k is not None and req.top_k < 1:
            raise UserError(f"top_k: {req.top_k!r} (must be >= 1 or null)")
        if req.top_p is not None and not 0 < req.top_p <= 1:
            raise UserError(f"top_p: {req.top_p!r} (must be in (0, 1] or null)")
        return edit_caption(req.caption, req.attributes, self.lexicon)

    # synthesis ----------------------------------------------------------------------------
    def synthesize(
        self,
        text: str,
        caption: str = "",
        speaker_ref: Reference = None,
        emotion_ref: Reference = None,
        attributes: dict[str, str] | None = None,
        seed: int = 0,
        temperature: float = 0.8,
        top_k: int | None = 50,
        top_p: float | None = None,
        max_seconds: float = 10.0,
    ) -> tuple[np.ndarray, int]:
        """One request -> (wav float32 (N,), sample rate)."""
        res = self.synthesize_batch(
            [
                Request(
                    text,
                    caption,
                    speaker_ref,
                    emotion_ref,
                    dict(attributes or {}),
                    seed,
                    temperature,
                    top_k,
                    top_p,
                    max_seconds,
                )
            ]
        )[0]
        return res.wav, res.sample_rate

    def synthesize_batch(self, requests: Sequence[Request], batch_size: int = 8) -> list[Result]:
        """Many requests, batched on the device: requests with the same sampling settings (seed,
        temperature, top_k, top_p) share a batch and a random generator, so a batch's output is
        reproducible. Raises UserError on the first bad request (check them first to skip bad ones)."""
        if self.codec is None:
            raise UserError(f"{self.folder}: this model folder has no codec to decode audio with")
        prepared = []
        for req in requests:
            caption = self.check(req)
            spk = self.reference_mel(req.speaker_ref, "speaker_ref")
            emo = None if req.emotion_ref is None else self.reference_mel(req.emotion_ref, "emotion_ref")
            frames = max(1, min(self.cfg.max_frames, math.ceil(req.max_seconds * self.frames_per_second)))
            prepared.append((req, caption, spk, emo, frames))
        results: list[Result | None] = [None] * len(prepared)
        groups: dict[tuple, list[int]] = {}
        for i, (req, *_rest) in enumerate(prepared):
            groups.setdefault(req.sampling_key(), []).append(i)
        for (seed, temperature, top_k, top_p), idx in groups.items():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                t0 = time.perf_counter()
                gen = torch.Generator(device=self.device).manual_seed(int(seed))
                codes = self.model.generate_batch(
                    [prepared[i][0].text for i in chunk],
                    [self.table.encode(prepared[i][1]) for i in chunk],
                    [prepared[i][2] for i in chunk],
                    [prepared[i][3] for i in chunk],
                    max_frames=[prepared[i][4] for i in chunk],
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    greedy=temperature == 0,
                    generator=gen,
                )
                wavs = [self.decode(c) for c in codes]
                share = (time.perf_counter() - t0) / len(chunk)
                for i, c, (wav, sr) in zip(chunk, codes, wavs):
                    results[i] = Result(
                        wav=wav,
                        sample_rate=sr,
                        n_frames=int(c.shape[1]),
                        stopped=int(c.shape[1]) < prepared[i][4],
                        caption=prepared[i][1],
                        seconds_taken=share,
                    )
        return results  # type: ignore[return-value]

    def decode(self, codes: torch.Tensor) -> tuple[np.ndarray, int]:
        from tristage.features.codec import decode_codes

        wav, sr = decode_codes(self.codec, codes)
        return np.clip(wav, -1.0, 1.0).astype(np.float32), sr


def parse_set(items: Sequence[str]) -> dict[str, str]:
    """["pitch=high", "speed=slow"] -> {"pitch": "high", "speed": "slow"} (CLI --set)."""
    out = {}
    for item in items:
        m = re.match(r"^\s*([^=]+?)\s*=\s*(.+?)\s*$", item)
        if not m:
            raise UserError(f"--set {item!r}: expected attribute=value, e.g. pitch=high")
        out[m.group(1)] = m.group(2)
    return out


def write_wav(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> Path:
    import soundfile as sf

    from tristage.fsio import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(tmp, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return path
