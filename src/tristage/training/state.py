"""The training loop's state (`TrainState`) and one step's sums (`StepSums`), with named fields.

`TrainState` is what the loop carries from step to step besides the model, optimizer, scheduler,
sampler and RNG; all of it goes into `trainer_state.pt` (plain Python values, so
`torch.load(weights_only=True)` reads it back) and comes back on resume.
"""
from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np

from tristage.training import ddp


@dataclasses.dataclass
class TrainState:
    window_size: int  # steps in the moving window of train metrics
    step: int = 0  # optimizer steps done
    history: list[dict] = dataclasses.field(default_factory=list)  # logged rows (train.tsv)
    window: collections.deque = dataclasses.field(default=None)  # the last `window_size` step records
    best: dict = dataclasses.field(default_factory=lambda: dict(step=-1, val_mel_loss=float("inf")))
    initial: dict[str, float] = dataclasses.field(default_factory=dict)  # mel_loss before training
    band_log: list[dict] = dataclasses.field(default_factory=list)  # band warnings and their advice
    samples_seen: int = 0
    train_time: float = 0.0  # seconds inside training steps
    resumed_from: int | None = None  # not saved: the step this run resumed from
    last_good: Path | None = None  # not saved: the newest checkpoint written or loaded

    def __post_init__(self):
        if self.window is None:
            self.window = collections.deque(maxlen=self.window_size)

    def window_mean(self, key: str) -> float | None:
        vals = [r[key] for r in self.window if key in r]
        return float(np.mean(vals)) if vals else None

    def to_dict(self) -> dict:
        return plain(dict(step=self.step, history=list(self.history), window=list(self.window),
                          best=dict(self.best), initial=dict(self.initial), band_log=list(self.band_log),
                          samples_seen=self.samples_seen, train_time=self.train_time))

    def load(self, saved: dict) -> None:
        self.step = int(saved["step"])
        self.history = list(saved["history"])
        self.window.extend(saved["window"])
        self.best, self.initial = dict(saved["best"]), dict(saved["initial"])
        self.band_log = list(saved["band_log"])
        self.samples_seen, self.train_time = int(saved["samples_seen"]), float(saved["train_time"])


@dataclasses.dataclass
class StepSums:
    """One optimizer step's sums over its micro-batches (and, after `all_reduce`, over ranks)."""
    mel_loss: float = 0.0  # sum of the micro-batch means
    mel_correct: float = 0.0
    mel_count: float = 0.0
    speaker_loss: float = 0.0  # sum of the micro-batch means
    speaker_correct: float = 0.0
    speaker_count: float = 0.0
    nonfinite: float = 0.0  # micro-batches with a non-finite loss
    samples: float = 0.0
    kl: float = 0.0  # sum of the micro-batch PEFT KL terms (unweighted)
    ortho: float = 0.0  # sum of the micro-batch PEFT orthogonality terms (unweighted)
    align: float = 0.0  # sum of the micro-batch guided-attention losses (unweighted; 0 when off)

    def add(self, out: dict, n_samples: int, finite: bool, speaker: bool) -> None:
        self.mel_loss += out["mel_loss"].item()
        self.mel_correct += out["mel_correct"].item()
        self.mel_count += out["mel_count"].item()
        self.speaker_loss += out["speaker_loss"].item() if speaker else 0.0
        self.speaker_correct += out["speaker_correct"].item() if speaker else 0.0
        self.speaker_count += out["speaker_count"].item() if speaker else 0.0
        self.nonfinite += 0.0 if finite else 1.0
        self.samples += n_samples
        self.kl += float(out["kl"].item())
        self.ortho += float(out["ortho"].item())
        self.align += float(out["align_loss"].item()) if "align_loss" in out else 0.0

    def all_reduce(self, dist: ddp.Dist) -> "StepSums":
        return StepSums(*ddp.all_reduce_sum(dataclasses.astuple(self), dist))


def plain(x):
    """numpy scalars -> Python numbers, recursively (torch.load(weights_only=True) rejects numpy)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(plain(v) for v in x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x
