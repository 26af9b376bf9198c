"""The speaker_acc band of stage2 (seed: keep speaker_acc at 30-60%), as a small pure monitor.

It holds no lambda and no weight: `training/adversary.py` (the GRL's one owner) asks it what
to do and applies the answer.

    band = SpeakerAccBand(low=0.3, high=0.6, patience=3, control="warn", factor=2.0,
                          grl_lambda_max=3.0, grl_lambda_min=0.1)
    d = band.update(acc, grl_lambda=1.0, speaker_loss_weight=0.1)   # once per band check
    d.status               # "below" | "in" | "above"
    d.warning              # the advice after `patience` checks out of band, else None
    d.changes              # {"grl_lambda": (old, new)} proposed when control == "auto"

Out of band for `patience` checks in a row (`REMEDIES`, the one statement of the advice):
- above: the emotion vector still tells the speakers apart (the GRL has too little effect):
  raise grl_lambda (auto: x factor, at most grl_lambda_max);
- below, the project's adversary (stage2.adversary: project): the classifier can't find the speaker
  in the emotion vector. With the classifier's own updates (stage2.classifier_steps) it keeps up,
  so this means the speaker has left the vector, not that the classifier isn't learning. The GRL
  pushes the emotion encoder with speaker_loss_weight x grl_lambda, while Adam normalises the
  weight away on the classifier's side; so the remedy is a weaker reversal: lower grl_lambda
  (auto: / factor, at least grl_lambda_min).
- the seed's plain GRL (stage2.adversary: seed) warns at the seed's thresholds (> 80%, < 20%) with
  the seed's advice (raise lambda to 2-3; raise speaker_loss_weight 0.1 -> 0.2 or lower min_samples).
The counter restarts after each warning / adjustment. A check whose 95% interval straddles a band
edge (`edge`) counts as inside.
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


def wilson_interval(acc: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy measured on `n` utterances."""
    if n <= 0:
        return 0.0, 1.0
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def band_status(acc: float | None, band: Sequence[float], n: int | None = None) -> str | None:
    """"below" / "in" / "above" the band [low, high] (inclusive); None when there is no accuracy.

    With `n` (the utterances `acc` was measured on) the verdict is the 95% interval's: "in" / "below" /
    "above" only when the whole interval is inside / below / above the band, "edge" when it straddles a
    band edge (the measurement can't tell), so float noise or one utterance can't flip it."""
    if acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return None
    low, high = band
    if n is None:
        return "below" if acc < low else "above" if acc > high else "in"
    lo, hi = wilson_interval(float(acc), int(n))
    if hi < low:
        return "below"
    if lo > high:
        return "above"
    return "in" if low <= lo and hi <= high else "edge"


def dann_lambda(base: float, progress: float) -> float:
    """DANN warm-up: base * (2 / (1 + exp(-10 p)) - 1), p in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    return base * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


# The one remedy per side of the band, per adversary (stage2.adversary), used by the band warnings, the
# sweep's next grid and the docs: (param, direction, the factors a sweep tries).
REMEDIES = {
    "project": {"above": ("stage2.grl_lambda", "raise", (2.0, 3.0)),
                "below": ("stage2.grl_lambda", "lower", (0.5, 0.25))},
    "seed": {"above": ("stage2.grl_lambda", "raise", (2.0, 3.0)),
             "below": ("stage2.speaker_loss_weight", "raise", (2.0,))},
}
# The seed's own warning thresholds (train/speaker_acc > 80%: the GRL has no effect; < 20%: the classifier
# isn't learning); its healthy band is 30-60% (stage2.speaker_acc_band).
SEED_THRESHOLDS = (0.2, 0.8)


def band_advice(status: str, adversary: str = "project", grl_lambda: float | None = None,
                speaker_loss_weight: float | None = None) -> str | None:
    """What to change when speaker_acc is `status` ("above" / "below") the band; None inside it."""
    if status not in ("above", "below"):
        return None
    param, direction, _factors = REMEDIES[adversary][status]
    now = {"stage2.grl_lambda": grl_lambda, "stage2.speaker_loss_weight": speaker_loss_weight}[param]
    value = f" (now {now:g})" if now is not None else ""
    if status == "above":
        why = "the emotion vector still carries the speaker (the GRL has too little effect)"
        return f"{why}: {direction} {param}{value}; the seed suggests 2.0-3.0"
    if adversary == "seed":
        return (f"the speaker classifier isn't learning (the seed's reading): {direction} {param}{value}, "
                "0.1 -> 0.2, or lower speaker_mapping.min_samples")
    return (f"the classifier, kept up to date by its own updates (stage2.classifier_steps), can't find the "
            f"speaker in the emotion vector: the speaker has left it (check speaker_probe_acc in "
            f"metrics/evaluate.json); to move back into the band {direction} {param}{value}")


class SpeakerAccBand:
    def __init__(self, low: float, high: float, patience: int, control: str, factor: float = 2.0,
                 grl_lambda_max: float = 3.0, grl_lambda_min: float = 0.1, adversary: str = "project"):
        assert control in ("warn", "auto"), control
        self.low, self.high, self.patience, self.control, self.factor = low, high, patience, control, factor
        self.grl_lambda_max, self.grl_lambda_min = float(grl_lambda_max), float(grl_lambda_min)
        self.adversary = adversary
        self.streak = 0  # checks in a row outside the band on the same side
        self.side = "in"

    def update(self, acc: float, grl_lambda: float, speaker_loss_weight: float,
               n: int | None = None) -> BandDecision:
        """Status of `acc` (measured on `n` utterances: `band_status`'s interval verdict); after `patience`
        checks clearly out of band the advice and (auto) the proposed change of the values in effect now
        (`grl_lambda`: the base lambda, before any warm-up). An `edge` check counts as in the band.
        The seed's adversary warns at the seed's thresholds (below 20%, above 80%) instead."""
        status = band_status(acc, (self.low, self.high), n)
        warn_at = SEED_THRESHOLDS if self.adversary == "seed" else (self.low, self.high)
        side = band_status(acc, warn_at, n)
        if side in ("in", "edge"):
            self.streak, self.side = 0, "in"
            return BandDecision(status)
        self.streak = self.streak + 1 if side == self.side else 1
        self.side = side
        if self.streak < self.patience:
            return BandDecision(status)
        self.streak = 0
        band = f"[{warn_at[0]:.2f}, {warn_at[1]:.2f}]"
        msg = (f"speaker_acc {acc:.3f} {side} {band} for {self.patience} checks: "
               + band_advice(side, self.adversary, grl_lambda, speaker_loss_weight))
        changes: dict[str, tuple[float, float]] = {}
        param, _direction, _factors = REMEDIES[self.adversary][side]
        if self.control == "auto" and param == "stage2.grl_lambda":
            new = (min(grl_lambda * self.factor, self.grl_lambda_max) if side == "above"
                   else max(grl_lambda / self.factor, self.grl_lambda_min))
            if (new > grl_lambda) if side == "above" else (new < grl_lambda):
                changes["grl_lambda"] = (grl_lambda, new)
                msg += f"; band_control=auto: grl_lambda {grl_lambda:g} -> {new:g}"
            else:
                limit = f"grl_lambda_max={self.grl_lambda_max:g}" if side == "above" else \
                    f"grl_lambda_min={self.grl_lambda_min:g}"
                msg += f"; grl_lambda is at its limit {limit}"
        return BandDecision(status, msg, changes)

    def state_dict(self) -> dict:
        return dict(streak=self.streak, side=self.side)

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.side = int(state["streak"]), str(state["side"])
