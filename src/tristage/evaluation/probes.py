"""Fresh linear probes on frozen vectors: how much speaker (or emotion) a vector still carries.

The GRL's own classifier is trained against the encoder, so its accuracy says little on its
own; a new probe fitted after training, on a fixed split, is the real test of
disentanglement: speaker_probe_acc should fall from stage 1 to stage 2, emotion_probe_acc
should stay high.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    chance: float  # accuracy of always guessing the most frequent test label
    n_train: int
    n_test: int
    n_classes: int


def fixed_split(labels: Sequence, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split by label (every class with >= 2 items lands on both sides),
    deterministic in `seed`."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for lab in sorted(set(labels.tolist()), key=str):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        if len(idx) < 2:
            train.extend(idx.tolist())
            continue
        n_test = min(len(idx) - 1, max(1, int(round(len(idx) * test_fraction))))
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return np.sort(np.array(train, dtype=int)), np.sort(np.array(test, dtype=int))


def probe_accuracy(vectors: np.ndarray, labels: Sequence, seed: int = 0, test_fraction: float = 0.3,
                   max_iter: int = 2000) -> ProbeResult | None:
    """Fit a logistic-regression probe on a fixed split of (vectors [N, D], labels [N]); None if
    fewer than two classes can be tested."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(vectors, dtype=np.float64)
    y = np.asarray([str(v) for v in labels])
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"probe: vectors {x.shape} and labels ({len(y)}) do not match")
    train, test = fixed_split(y, test_fraction, seed)
    if len(test) == 0 or len(set(y[train])) < 2 or len(set(y[test])) < 2:
        return None
    scaler = StandardScaler().fit(x[train])
    clf = LogisticRegression(max_iter=max_iter, random_state=seed)
    clf.fit(scaler.transform(x[train]), y[train])
    acc = float((clf.predict(scaler.transform(x[test])) == y[test]).mean())
    _, counts = np.unique(y[test], return_counts=True)
    return ProbeResult(acc, float(counts.max() / counts.sum()), len(train), len(test), len(set(y.tolist())))


# the probes of one stage's model ------------------------------------------------------------
def center_crop(mel: torch.Tensor, n: int) -> torch.Tensor:
    """The middle `n` frames of a mel (all of it when shorter)."""
    s = max(0, (mel.shape[0] - n) // 2)
    return mel[s:s + n]


@torch.no_grad()
def emotion_vectors(
    model, data, indices: list[int], max_frames: int, device: str, batch: int = 32
) -> np.ndarray:
    """The emotion vector of each utterance from its own mel (center crop) -> (N, d_model)."""
    from tristage.features.mel import pad_mels

    model.eval()
    out = []
    for i in range(0, len(indices), batch):
        mels = [center_crop(data.features(j)[0], max_frames) for j in indices[i:i + batch]]
        mel, mask = pad_mels(mels)
        out.append(model.emotion_vector(mel.to(device), mask.to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.d_model), np.float32)


def probe_subset(n: int, limit: int, seed: int) -> list[int]:
    if n <= limit:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, limit, replace=False).tolist())


def run_probes(model, data, manifest, ep, max_frames: int, device: str) -> dict[str, Any]:
    idx = probe_subset(len(data.examples), ep.max_probe_utterances, ep.seed)
    vecs = emotion_vectors(model, data, idx, max_frames, device)
    speakers = [data.examples[i].speaker for i in idx]
    res: dict[str, Any] = {}
    sp = probe_accuracy(vecs, speakers, seed=ep.seed, test_fraction=ep.probe_test_fraction)
    res.update(speaker_probe_acc=sp and sp.accuracy, speaker_probe_chance=sp and sp.chance)
    emo = None
    if "emotion" in manifest.columns:
        by_id = manifest.drop_duplicates("id").set_index("id")["emotion"]
        labels = [by_id.get(data.examples[i].id) for i in idx]
        keep = [k for k, lab in enumerate(labels) if isinstance(lab, str) and lab]
        if keep:
            emo = probe_accuracy(vecs[keep], [labels[k] for k in keep], seed=ep.seed,
                                 test_fraction=ep.probe_test_fraction)
    res.update(emotion_probe_acc=emo and emo.accuracy, emotion_probe_chance=emo and emo.chance,
               n_probe_utterances=len(idx))
    return res
