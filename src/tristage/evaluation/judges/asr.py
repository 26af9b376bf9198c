"""Speech recognisers for the intelligibility judge: 16 kHz float audio -> transcript.

    asr = load_asr(None)                 # pocketsphinx: the English model inside its wheel, offline
    asr = load_asr(None, lm=build_lm(train_texts, tmp / "lm.arpa"))   # ... with an LM of the training texts
    asr = load_asr(Path("/models/whisper-small"))   # a local Hugging Face ASR folder (transformers pipeline)
    asr(wav_16k)                         # -> "the quick brown fox"

pocketsphinx is weak on synthetic voices (high absolute WER even on clean espeak-ng speech):
read its WER against the ground-truth row, not on its own.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tristage.errors import UserError

SAMPLE_RATE = 16000
Transcriber = Callable[[np.ndarray], str]


def build_lm(sentences: Sequence[str], path: Path) -> Path:
    """A trigram ARPA language model (pocketsphinx's own builder) of the normalised `sentences` -> `path`."""
    from pocketsphinx.lm import ArpaBoLM

    from tristage.evaluation.judges.text import normalize

    lines = [t for t in (normalize(s) for s in sentences) if t]
    if not lines:
        raise ValueError("build_lm: no sentences")
    model = ArpaBoLM(text="\n".join(lines), add_start=True, case="lower")
    model.compute()
    buf = io.StringIO()
    model.write(buf)
    path.write_text(buf.getvalue())
    return path


class PocketSphinxASR:
    """pocketsphinx 5 with its en-us acoustic model and dictionary; its general LM or an ARPA file `lm`."""

    def __init__(self, lm: Path | None = None):
        from pocketsphinx import Decoder

        self.name = "pocketsphinx en-us" + (" + LM of the training transcripts" if lm else " (general LM)")
        kw = {"lm": str(lm)} if lm else {}
        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", **kw)

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


def load_asr(path: Path | None, device: str = "cpu", lm: Path | None = None) -> Transcriber:
    """pocketsphinx (with the ARPA `lm` if given) when `path` is None, else the local folder (UserError
    naming `evaluate.asr`)."""
    if path is None:
        try:
            return PocketSphinxASR(lm)
        except ImportError:
            raise UserError(
                "evaluate.audio_metrics.intelligibility: the `pocketsphinx` package is missing; "
                "pip install pocketsphinx, set evaluate.asr to a local ASR folder, or switch it off"
            ) from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"evaluate.asr: {path} is not a local Hugging Face model folder (no config.json)")
    try:
        return HuggingFaceASR(path, device)
    except Exception as exc:  # a broken folder: say which param points at it
        raise UserError(
            f"evaluate.asr: cannot load {path} as an ASR pipeline: {str(exc).splitlines()[0]}"
        ) from None
