"""The speaker_acc band of stage2 (seed: keep speaker_acc at 30-60%), as a small pure monitor.

It holds no lambda and no weight: `training/adversary.py` (the GRL's one owner) asks it what
to do and applies the answer.

    band = SpeakerAccBand(low=0.3, high=0.6, patience=3, control="warn", factor=2.0,
                          grl_lambda_max=3.0, grl_lambda_min=0.1)
    d = band.update(acc, grl_lambda=1.0, speaker_loss_weight=0.1)   # once per band check
    d.status               # "below" | "in" | "above"
    d.warning              # the advice after `patience` checks out of band, else None
    d.changes              # {"grl_lambda": (old, new)} proposed when control == "auto"

Out of band for `patience` checks in a row:
- above: the emotion vector still tells the speakers apart (the GRL has too little effect):
  raise grl_lambda (auto: x factor, at most grl_lambda_max);
- below: the classifier can't find the speaker in the emotion vector. With the classifier's
  own updates (stage2.classifier_steps) it keeps up, so this means the speaker has left the
  vector (the README's measured finding: the fresh speaker probe falls), not that the
  classifier isn't learning. The GRL pushes the emotion encoder with speaker_loss_weight x
  grl_lambda, while Adam normalises the weight away on the classifier's side; so the seed's
  remedy (raise speaker_loss_weight) is no remedy in principle. Auto lowers grl_lambda instead
  (/ factor, at least grl_lambda_min).
The counter restarts after each warning / adjustment.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence


@dataclasses.dataclass
class BandDecision:
    status: str
    warning: str | None = None
    changes: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


def band_status(acc: float | None, band: Sequence[float]) -> str | None:
    """"below" / "in" / "above" the band [low, high] (inclusive); None when there is no accuracy."""
    if acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return None
    low, high = band
    return "below" if acc < low else "above" if acc > high else "in"


def dann_lambda(base: float, progress: float) -> float:
    """DANN warm-up: base * (2 / (1 + exp(-10 p)) - 1), p in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    return base * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


class SpeakerAccBand:
    def __init__(self, low: float, high: float, patience: int, control: str, factor: float = 2.0,
                 grl_lambda_max: float = 3.0, grl_lambda_min: float = 0.1):
        assert control in ("warn", "auto"), control
        self.low, self.high, self.patience, self.control, self.factor = low, high, patience, control, factor
        self.grl_lambda_max, self.grl_lambda_min = float(grl_lambda_max), float(grl_lambda_min)
        self.streak = 0  # checks in a row outside the band on the same side
        self.side = "in"

    def update(self, acc: float, grl_lambda: float, speaker_loss_weight: float) -> BandDecision:
        """Status of `acc`; after `patience` checks out of band the advice and (auto) the proposed change
        of the values in effect now (`grl_lambda`: the base lambda, before any warm-up)."""
        status = band_status(acc, (self.low, self.high))
        if status == "in":
            self.streak, self.side = 0, "in"
            return BandDecision(status)
        self.streak = self.streak + 1 if status == self.side else 1
        self.side = status
        if self.streak < self.patience:
            return BandDecision(status)
        self.streak = 0
        band = f"[{self.low:.2f}, {self.high:.2f}]"
        if status == "above":
            msg = (f"speaker_acc {acc:.3f} above the band {band} for {self.patience} checks: the emotion "
                   f"vector still carries speaker identity (the GRL has too little effect); raise "
                   f"stage2.grl_lambda (now {grl_lambda:g}; the seed suggests 2.0-3.0)")
            new = min(grl_lambda * self.factor, self.grl_lambda_max)
            limit = f"grl_lambda_max={self.grl_lambda_max:g}"
        else:
            msg = (f"speaker_acc {acc:.3f} below the band {band} for {self.patience} checks: the "
                   f"classifier can't find the speaker in the emotion vector, i.e. the speaker has left it "
                   f"(the GRL's aim; check speaker_probe_acc in metrics/evaluate.json), not a classifier "
                   f"that isn't learning (unless stage2.classifier_steps is 0). To move back into the band "
                   f"lower stage2.grl_lambda (now {grl_lambda:g}); a larger stage2.speaker_loss_weight (now "
                   f"{speaker_loss_weight:g}, the seed's remedy) also scales the reversed gradient on the "
                   f"emotion encoder (weight x lambda)")
            new = max(grl_lambda / self.factor, self.grl_lambda_min)
            limit = f"grl_lambda_min={self.grl_lambda_min:g}"
        changes: dict[str, tuple[float, float]] = {}
        if self.control == "auto":
            if (new > grl_lambda) if status == "above" else (new < grl_lambda):
                changes["grl_lambda"] = (grl_lambda, new)
                msg += f"; band_control=auto: grl_lambda {grl_lambda:g} -> {new:g}"
            else:
                msg += f"; grl_lambda is at its limit {limit}"
        return BandDecision(status, msg, changes)

    def state_dict(self) -> dict:
        return dict(streak=self.streak, side=self.side)

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.side = int(state["streak"]), str(state["side"])
