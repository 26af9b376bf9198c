"""Speaker embeddings for the speaker-similarity judge: 16 kHz float audio -> unit vector.

    enc = load_speaker_encoder(None)     # resemblyzer: the GE2E encoder inside its wheel
    enc = load_speaker_encoder(Path("/models/wavlm-base-plus-sv"))  # a local HF x-vector / encoder folder
    cosine(enc(a), enc(b))

GE2E is weaker than WavLM + ECAPA (what F5-TTS and NeMo report) but runs offline; compare rows, not papers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from tristage.errors import UserError

SAMPLE_RATE = 16000
Embedder = Callable[[np.ndarray], np.ndarray]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0


def _resemblyzer():
    """The resemblyzer module. Its VAD dependency (webrtcvad) imports pkg_resources, whose deprecation
    warning says nothing about this run and would be the last line a `make demo` prints: silenced here."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*declare_namespace", category=DeprecationWarning)
        import resemblyzer
    return resemblyzer


class ResemblyzerEncoder:
    name = "resemblyzer GE2E (wheel weights)"

    def __init__(self, device: str = "cpu"):
        module = _resemblyzer()
        self._encoder = module.VoiceEncoder(device, verbose=False)
        self._preprocess = module.preprocess_wav

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        x = self._preprocess(
            np.asarray(wav, np.float32), source_sr=None
        )  # already 16 kHz: volume + VAD trim only
        if len(x) < SAMPLE_RATE // 10:  # VAD removed (nearly) everything: embed the raw clip
            x = np.asarray(wav, np.float32)
        return self._encoder.embed_utterance(x)  # (256,) unit norm


class HuggingFaceSpeakerEncoder:
    """A local folder: its x-vector head (e.g. WavLM-SV) if it has one, else mean-pooled hidden states."""

    def __init__(self, path: Path, device: str = "cpu"):
        import torch
        from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioXVector

        self.name = f"transformers speaker encoder {Path(path).name}"
        self._torch, self._device = torch, device
        self._features = AutoFeatureExtractor.from_pretrained(str(path))
        try:
            self._model, self._xvector = AutoModelForAudioXVector.from_pretrained(str(path)), True
        except (ValueError, KeyError):
            self._model, self._xvector = AutoModel.from_pretrained(str(path)), False
        self._model.to(device).eval()

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        inputs = self._features(np.asarray(wav, np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt")
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        with self._torch.no_grad():
            out = self._model(**inputs)
        emb = out.embeddings if self._xvector else out.last_hidden_state.mean(dim=1)  # (1, D)
        v = emb[0].float().cpu().numpy()
        return v / max(float(np.linalg.norm(v)), 1e-12)


def load_speaker_encoder(path: Path | None, device: str = "cpu") -> Embedder:
    if path is None:
        try:
            return ResemblyzerEncoder(device)
        except ImportError as exc:
            raise UserError(
                f"evaluate.audio_metrics.speaker_sim: resemblyzer cannot load ({exc}); pip install "
                "resemblyzer, set evaluate.speaker_encoder to a local folder, or switch it off"
            ) from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(
            f"evaluate.speaker_encoder: {path} is not a local Hugging Face model folder (no config.json)"
        )
    try:
        return HuggingFaceSpeakerEncoder(path, device)
    except Exception as exc:
        raise UserError(f"evaluate.speaker_encoder: cannot load {path}: {str(exc).splitlines()[0]}") from None
