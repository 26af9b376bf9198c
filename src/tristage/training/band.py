"""The speaker_acc band of stage2 (seed: keep speaker_acc at 30-60%), as a small pure class.

    band = SpeakerAccBand(low=0.3, high=0.6, patience=3, control="warn", grl_lambda=1.0,
                          speaker_loss_weight=0.1, grl_lambda_max=3.0, speaker_loss_weight_max=0.4)
    d = band.update(acc)   # once per evaluation
    d.status               # "below" | "in" | "above"
    d.warning              # the seed's advice after `patience` evaluations out of band, else None
    d.changes              # {"grl_lambda": (old, new)} etc. when control == "auto"

Out of band for `patience` evaluations in a row:
- above: the emotion vector still tells the speakers apart (the GRL has too little effect):
  raise grl_lambda (auto: x factor, at most grl_lambda_max);
- below: the classifier isn't learning: raise speaker_loss_weight (auto: x factor, at most
  speaker_loss_weight_max).
The counter restarts after each warning / adjustment.
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class BandDecision:
    status: str
    warning: str | None = None
    changes: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


def band_status(acc: float, low: float, high: float) -> str:
    return "below" if acc < low else "above" if acc > high else "in"


def dann_lambda(base: float, progress: float) -> float:
    """DANN warm-up: base * (2 / (1 + exp(-10 p)) - 1), p in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    return base * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


class SpeakerAccBand:
    def __init__(self, low: float, high: float, patience: int, control: str, grl_lambda: float,
                 speaker_loss_weight: float, grl_lambda_max: float, speaker_loss_weight_max: float,
                 factor: float = 2.0):
        assert control in ("warn", "auto"), control
        self.low, self.high, self.patience, self.control, self.factor = low, high, patience, control, factor
        self.grl_lambda, self.speaker_loss_weight = float(grl_lambda), float(speaker_loss_weight)
        self.grl_lambda_max, self.speaker_loss_weight_max = float(grl_lambda_max), float(speaker_loss_weight_max)
        self.streak = 0  # evaluations in a row outside the band on the same side
        self.side = "in"
        self.n_changes = 0

    def update(self, acc: float) -> BandDecision:
        status = band_status(acc, self.low, self.high)
        if status == "in":
            self.streak, self.side = 0, "in"
            return BandDecision(status)
        self.streak = self.streak + 1 if status == self.side else 1
        self.side = status
        if self.streak < self.patience:
            return BandDecision(status)
        self.streak = 0
        band = f"[{self.low:.2f}, {self.high:.2f}]"
        changes: dict[str, tuple[float, float]] = {}
        if status == "above":
            msg = (f"speaker_acc {acc:.3f} above the band {band} for {self.patience} evaluations: the emotion "
                   f"vector still carries speaker identity (the GRL has too little effect); raise "
                   f"stage2.grl_lambda (now {self.grl_lambda:g}; the seed suggests 2.0-3.0)")
            if self.control == "auto":
                new = min(self.grl_lambda * self.factor, self.grl_lambda_max)
                if new > self.grl_lambda:
                    changes["grl_lambda"] = (self.grl_lambda, new)
                    self.grl_lambda = new
                else:
                    msg += f"; grl_lambda is at its limit grl_lambda_max={self.grl_lambda_max:g}"
        else:
            msg = (f"speaker_acc {acc:.3f} below the band {band} for {self.patience} evaluations: the speaker "
                   f"classifier is not learning; raise stage2.speaker_loss_weight (now "
                   f"{self.speaker_loss_weight:g}; the seed suggests 0.2), or check that the speaker mapping "
                   f"has enough utterances per speaker (speaker_mapping.min_samples)")
            if self.control == "auto":
                new = min(self.speaker_loss_weight * self.factor, self.speaker_loss_weight_max)
                if new > self.speaker_loss_weight:
                    changes["speaker_loss_weight"] = (self.speaker_loss_weight, new)
                    self.speaker_loss_weight = new
                else:
                    msg += f"; speaker_loss_weight is at its limit {self.speaker_loss_weight_max:g}"
        if changes:
            self.n_changes += 1
            msg += "; band_control=auto: " + ", ".join(f"{k} {a:g} -> {b:g}" for k, (a, b) in changes.items())
        return BandDecision(status, msg, changes)

    def state_dict(self) -> dict:
        return dict(grl_lambda=self.grl_lambda, speaker_loss_weight=self.speaker_loss_weight, streak=self.streak,
                    side=self.side, n_changes=self.n_changes)

    def load_state_dict(self, s: dict) -> None:
        self.grl_lambda, self.speaker_loss_weight = float(s["grl_lambda"]), float(s["speaker_loss_weight"])
        self.streak, self.side, self.n_changes = int(s["streak"]), str(s["side"]), int(s["n_changes"])
