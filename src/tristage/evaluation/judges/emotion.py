"""Emotion transfer: does the generated audio carry the emotion of its emotion reference?

Per stage, a logistic-regression probe is fitted on the model's own emotion vectors of the
training utterances (labels from the manifest's `emotion`), then applied to the emotion vector
the same model computes from the generated audio's log-mel. For a cross request (speaker A,
emotion reference of B) the hit is `prediction == B's emotion`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class EmotionProbe:
    """emotion vectors (N, D) -> labels, fitted on one model's vectors."""

    def __init__(self, vectors: np.ndarray, labels: Sequence[str], seed: int = 0, max_iter: int = 2000):
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x, y = np.asarray(vectors, np.float64), np.asarray([str(v) for v in labels])
        if len(set(y.tolist())) < 2:
            raise ValueError("EmotionProbe: need at least two emotions to fit a probe")
        self._scaler = StandardScaler().fit(x)
        self._clf = LogisticRegression(max_iter=max_iter, random_state=seed).fit(self._scaler.transform(x), y)
        self.classes = [str(c) for c in self._clf.classes_]

    def predict(self, vectors: np.ndarray) -> list[str]:
        x = np.asarray(vectors, np.float64).reshape(len(vectors), -1)
        return [str(v) for v in self._clf.predict(self._scaler.transform(x))]


@torch.no_grad()
def audio_emotion_vectors(
    model, wavs: Sequence[np.ndarray], sample_rate: int, mel_params, max_frames: int, device: str
) -> np.ndarray:
    """The model's emotion vector of each clip, from the features stage's log-mel -> (N, D)."""
    import librosa

    from tristage.features.mel import log_mel

    model.eval()
    out = []
    for wav in wavs:
        x = np.asarray(wav, np.float32)
        if sample_rate != mel_params.sample_rate:
            x = librosa.resample(x, orig_sr=sample_rate, target_sr=mel_params.sample_rate)
        mel = log_mel(torch.from_numpy(x), mel_params)[0]  # (T, n_mels)
        start = max(0, (mel.shape[0] - max_frames) // 2)
        mel = mel[start : start + max_frames]
        out.append(model.emotion_vector(mel[None].to(device)).float().cpu().numpy()[0])
    return np.stack(out) if out else np.zeros((0, model.cfg.d_model), np.float32)
