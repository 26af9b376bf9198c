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
- `attributes` edits the caption with the lexicon the caption table was built with, keeping it a
  well-formed sentence (`tristage.captions.edit`): the phrase that states an attribute is replaced by
  a phrase of the new value that fits the same slot ("a low voice" -> "a very deep voice"), and a value
  the caption does not state is said after its verb ("speaks slowly") or in a sentence of its own. An
  unknown attribute or value is an error listing the valid ones. The web page and `tristage synthesize
  --set` edit with the same code.
- No caption: the model never trained on one (it tends to end the speech at once), so a neutral caption
  written from the lexicon (`default_caption`) is used, with a `SynthesisWarning`; so is no speaker
  reference (the first stored voice is used), and a clip the model ended within `SHORT_SECONDS`.
  `Result.warnings` holds them; `synthesize_batch(..., warn=False)` leaves the telling to the caller.
- The length is the model's: its end-of-speech head stops generation; `max_seconds` caps it.
- With a random-init codec (`tts.is_speech` False) the audio is not speech: `tts.note` says so.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tristage.captions.edit import CaptionEditor, edit_caption
from tristage.errors import UserError
from tristage.features.codec import codec_speaks
from tristage.model.folder import load_codec_from_folder, load_folder, load_references

__all__ = ["TTS", "Request", "Result", "SynthesisWarning", "default_caption", "edit_caption", "parse_set",
           "write_wav"]

MIN_REF_SECONDS = 0.1
SHORT_SECONDS = 0.25  # a clip the model ends sooner than this gets a warning
# the values of a caption that states nothing in particular (those the lexicon has)
NEUTRAL = {"pitch": "moderate", "speed": "moderate", "modulation": "moderate", "emotion": "neutral",
           "quality": "clean"}
RANDOM_CODEC_NOTE = (
    "the codec is random-init: the audio is NOT speech, only proof that the synthesis path runs "
    "(train with official DAC weights, features.codec.weights, for speech)"
)

Reference = str | os.PathLike | tuple[np.ndarray, int] | None


class SynthesisWarning(UserWarning):
    """A request served, but not quite as asked: no caption, no speaker reference, a near-empty clip."""


def default_caption(lexicon: dict[str, dict[str, list[str]]]) -> str:
    """The caption used for a request without one: the `NEUTRAL` values the lexicon has, written by the
    annotate stage's own caption writer (the style of the captions the model trained on), seeded."""
    from tristage.annotation.captions import CaptionWriter

    attrs = {a: v for a, v in NEUTRAL.items() if v in lexicon.get(a, {})}
    return CaptionWriter(lexicon).write(attrs, np.random.default_rng(0))


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
    warnings: list[str] = dataclasses.field(default_factory=list)  # one line each (see SynthesisWarning)

    @property
    def duration(self) -> float:
        return len(self.wav) / self.sample_rate

    @property
    def rtf(self) -> float:
        """Real-time factor: seconds of compute per second of audio (< 1 is faster than real time)."""
        return self.seconds_taken / max(self.duration, 1e-9)


PIECE_GAP = 0.15  # seconds of silence between the pieces of a long text


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples float32 (N,) mono, sample rate) from any file soundfile reads; channels averaged."""
    import soundfile as sf

    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # unreadable audio is the user's input
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
        self.caption_editor = CaptionEditor(self.lexicon)
        self.default_caption = default_caption(self.lexicon)  # for a request without a caption
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
        return codec_speaks(self.info["codec"])

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

        if ref is None or (isinstance(ref, str) and not ref.strip()):
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
        return self.prepare(req)[0]

    def prepare(self, req: Request) -> tuple[str, list[str]]:
        """Validate one request before any work: (its caption, edited and defaulted, and the warnings
        the request earns: no caption, no speaker reference). A bad value is a UserError naming it."""
        if not isinstance(req.text, str) or not req.text.strip():
            raise UserError("text: empty")
        _check_number("max_seconds", req.max_seconds, "must be > 0", lambda v: v > 0)
        _check_number("temperature", req.temperature, "must be >= 0; 0 = greedy", lambda v: v >= 0)
        _check_number("top_k", req.top_k, "must be an integer >= 1 or null", lambda v: v >= 1, integer=True,
                      optional=True)
        _check_number("top_p", req.top_p, "must be in (0, 1] or null", lambda v: 0 < v <= 1, optional=True)
        _check_number("seed", req.seed, "must be an integer from -2**63 to 2**64 - 1",
                      lambda v: -(2**63) <= v < 2**64, integer=True)
        if req.caption is not None and not isinstance(req.caption, str):
            raise UserError(f"caption: {req.caption!r} (must be text)")
        if req.attributes is not None and not isinstance(req.attributes, dict):
            raise UserError(f'attributes: {req.attributes!r} (must be a mapping, e.g. {{"pitch": "high"}})')
        notes = []
        caption = " ".join((req.caption or "").split())
        if not caption:
            caption = self.default_caption
            notes.append(
                "caption: none given; the model was trained with one and may end the speech at once "
                f"without it, so a neutral one is used: {caption!r}"
            )
        if req.speaker_ref is None or (isinstance(req.speaker_ref, str) and not req.speaker_ref.strip()):
            if self.references:
                notes.append(
                    f"speaker_ref: none given; the stored voice {self.speakers[0]!r} is used "
                    f"(stored: {', '.join(self.speakers)}; or pass an audio file)"
                )
        return self.caption_editor.edit(caption, req.attributes), notes

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
        """One request -> (wav float32 (N,), sample rate); its warnings as `SynthesisWarning`s."""
        req = Request(
            text, caption, speaker_ref, emotion_ref, dict(attributes or {}), seed, temperature, top_k, top_p,
            max_seconds,
        )
        res = self.synthesize_batch([req], warn=False)[0]
        _warn(res.warnings, stacklevel=3)
        return res.wav, res.sample_rate

    def synthesize_batch(
        self, requests: Sequence[Request], batch_size: int = 8, warn: bool = True
    ) -> list[Result]:
        """Many requests, batched on the device: requests with the same sampling settings (seed,
        temperature, top_k, top_p) share a batch and a random generator, so a batch's output is
        reproducible. Raises UserError on the first bad request (check them first to skip bad ones).
        Each result's `warnings` are also issued as `SynthesisWarning`s, unless `warn` is False."""
        if self.codec is None:
            raise UserError(f"{self.folder}: this model folder has no codec to decode audio with")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size: {batch_size!r} (must be an integer >= 1)")
        prepared = []
        for req in requests:
            caption, notes = self.prepare(req)
            spk = self.reference_mel(req.speaker_ref, "speaker_ref")
            emo = None if req.emotion_ref is None else self.reference_mel(req.emotion_ref, "emotion_ref")
            frames = max(1, min(self.cfg.max_frames, math.ceil(req.max_seconds * self.frames_per_second)))
            prepared.append((req, caption, spk, emo, frames, notes))
        # a text longer than the model's max_text_len is spoken piece by piece (split at sentence, then
        # clause, then word boundaries; model/text.py split_text) and the pieces' audio joined: never cut
        jobs = [(i, piece) for i, p in enumerate(prepared) for piece in self.text_pieces(p[0].text)]
        out: list[list] = [[] for _ in prepared]  # per request: (codes, wav, sr, seconds) of its pieces
        groups: dict[tuple, list[int]] = {}
        for j, (i, _piece) in enumerate(jobs):
            groups.setdefault(prepared[i][0].sampling_key(), []).append(j)
        for (seed, temperature, top_k, top_p), idx in groups.items():
            for start in range(0, len(idx), batch_size):
                chunk = [jobs[j] for j in idx[start : start + batch_size]]
                t0 = time.perf_counter()
                gen = torch.Generator(device=self.device).manual_seed(int(seed))
                codes = self.model.generate_batch(
                    [piece for _i, piece in chunk],
                    [self.table.encode(prepared[i][1]) for i, _p in chunk],
                    [prepared[i][2] for i, _p in chunk],
                    [prepared[i][3] for i, _p in chunk],
                    max_frames=[prepared[i][4] for i, _p in chunk],
                    temperature=float(temperature),
                    top_k=None if top_k is None else int(top_k),
                    top_p=None if top_p is None else float(top_p),
                    greedy=temperature == 0,
                    generator=gen,
                )
                share = (time.perf_counter() - t0) / len(chunk)
                for (i, _p), c in zip(chunk, codes):
                    out[i].append((c, *self.decode(c), share))
        results = [self._result(p, parts) for p, parts in zip(prepared, out)]
        if warn:
            _warn([w for r in results for w in r.warnings], stacklevel=3)  # type: ignore[union-attr]
        return results  # type: ignore[return-value]

    def text_pieces(self, text: str) -> list[str]:
        """`text` as one piece, or as several when it is longer than the model's max_text_len."""
        from tristage.model.text import TextTooLong, split_text

        def fits(piece: str) -> bool:
            try:
                self.model.text_ids(piece)
                return True
            except TextTooLong:
                return False

        return split_text(text, fits)

    def _result(self, prepared: tuple, parts: list[tuple]) -> Result:
        """One request's Result from its pieces' (codes, wav, sample rate, seconds), joined by PIECE_GAP s."""
        _req, caption, _spk, _emo, cap, notes = prepared
        sr = parts[0][2]
        gap = np.zeros(int(PIECE_GAP * sr), np.float32)
        wav = np.concatenate([x for k, (_c, w, *_r) in enumerate(parts) for x in ((gap, w) if k else (w,))])
        frames = [int(c.shape[1]) for c, *_r in parts]
        res = Result(wav=wav, sample_rate=sr, n_frames=sum(frames), stopped=all(n < cap for n in frames),
                     caption=caption, seconds_taken=sum(p[3] for p in parts), warnings=list(notes))
        if len(parts) > 1:
            res.warnings.append(f"text: longer than the model's max_text_len ({self.cfg.max_text_len} "
                                f"tokens); spoken in {len(parts)} pieces split at sentence and clause "
                                "boundaries")
        if res.stopped and res.duration < SHORT_SECONDS:
            res.warnings.append(
                f"the model ended the speech after {res.n_frames} frame(s) ({res.duration:.2f} s); try "
                "another seed or caption, or check that the model was trained long enough"
            )
        return res

    def resynthesize(self, wav: np.ndarray | str | os.PathLike, sample_rate: int | None = None
                     ) -> tuple[np.ndarray, int]:
        """Audio through this model's own codec, encoded and decoded: what the codec keeps of it (the
        ceiling of anything the model can say). `wav`: samples (N,) or (N, channels) at `sample_rate`, any
        rate, or an audio file's path -> (wav float32, the codec's sample rate)."""
        from tristage.features.codec import encode
        from tristage.features.extract import resample

        if self.codec is None:
            raise UserError(f"{self.folder}: this model folder has no codec to resynthesize with")
        if isinstance(wav, (str, os.PathLike)):
            wav, sample_rate = load_audio(wav)
        x = np.asarray(wav, dtype=np.float32)
        x = x.mean(axis=1) if x.ndim == 2 else x.reshape(-1)
        if sample_rate is None or int(sample_rate) <= 0:
            raise UserError(f"sample_rate: {sample_rate!r} (the rate of the samples given; must be > 0)")
        if not len(x) or not np.isfinite(x).all():
            raise UserError("wav: empty or not finite")
        x = resample(x, int(sample_rate), self.sample_rate)
        codes = encode(self.codec, torch.from_numpy(x)[None].to(self.device), [len(x)])[0]
        return self.decode(codes)

    def decode(self, codes: torch.Tensor) -> tuple[np.ndarray, int]:
        from tristage.features.codec import decode_codes

        wav, sr = decode_codes(self.codec, codes)
        return np.clip(wav, -1.0, 1.0).astype(np.float32), sr


def _warn(messages: Sequence[str], stacklevel: int) -> None:
    for msg in messages:
        warnings.warn(msg, SynthesisWarning, stacklevel=stacklevel)


def _check_number(
    name: str, value: Any, rule: str, ok, integer: bool = False, optional: bool = False
) -> None:
    """UserError naming `name` unless `value` is a number (an integer where `integer`) that passes `ok`."""
    if value is None and optional:
        return
    kind = numbers.Integral if integer else numbers.Real
    bad = isinstance(value, bool) or not isinstance(value, kind) or (not integer and math.isnan(value))
    if bad or not ok(value):
        raise UserError(f"{name}: {value!r} ({rule})")


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
    """Write a 16-bit wav atomically; a path that cannot be written is a UserError naming it."""
    import soundfile as sf

    from tristage.fsio import atomic_path

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".wav") as tmp:
            sf.write(tmp, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    except OSError as exc:
        raise UserError(f"{path}: cannot write the wav ({exc.strerror or exc})") from None
    return path
