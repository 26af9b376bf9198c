"""Speech recognisers for the intelligibility judge: 16 kHz float audio -> transcript.

    asr = load_asr(None)                 # pocketsphinx: the English model inside its wheel, offline
    asr = load_asr(Path("/models/whisper-small"))   # a local Hugging Face ASR folder (transformers pipeline)
    asr(wav_16k)                         # -> "the quick brown fox"

pocketsphinx is weak on synthetic voices (high absolute WER even on clean espeak-ng speech):
read its WER against the ground-truth row, not on its own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from tristage.errors import UserError

SAMPLE_RATE = 16000
Transcriber = Callable[[np.ndarray], str]


class PocketSphinxASR:
    """pocketsphinx 5 with its default en-us acoustic model, language model and dictionary."""

    name = "pocketsphinx en-us (wheel model)"

    def __init__(self):
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def __call__(self, wav: np.ndarray) -> str:
        pcm = (np.clip(np.asarray(wav, np.float32), -1.0, 1.0) * 32767).astype(np.int16)
        self._decoder.start_utt()
        self._decoder.process_raw(pcm.tobytes(), full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


class HuggingFaceASR:
    """Any local transformers ASR folder (Whisper, wav2vec2 CTC, ...) through the ASR pipeline."""

    def __init__(self, path: Path, device: str = "cpu"):
        from transformers import pipeline

        self.name = f"transformers ASR {Path(path).name}"
        self._pipe = pipeline("automatic-speech-recognition", model=str(path), device=device)

    def __call__(self, wav: np.ndarray) -> str:
        out = self._pipe({"raw": np.asarray(wav, np.float32), "sampling_rate": SAMPLE_RATE})
        return str(out.get("text", "")) if isinstance(out, dict) else str(out)


def load_asr(path: Path | None, device: str = "cpu") -> Transcriber:
    """pocketsphinx when `path` is None, else the local folder (UserError naming `evaluate.asr`)."""
    if path is None:
        try:
            return PocketSphinxASR()
        except ImportError:
            raise UserError("evaluate.audio_metrics.intelligibility: the `pocketsphinx` package is missing; "
                            "pip install pocketsphinx, set evaluate.asr to a local ASR folder, or switch it off") from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"evaluate.asr: {path} is not a local Hugging Face model folder (no config.json)")
    try:
        return HuggingFaceASR(path, device)
    except Exception as exc:  # a broken folder: say which param points at it
        raise UserError(f"evaluate.asr: cannot load {path} as an ASR pipeline: {str(exc).splitlines()[0]}") from None
