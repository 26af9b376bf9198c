"""The GRL's one owner: the speaker adversary of stage2.

`stage2.grl_lambda` travels params.yaml -> `Stage2Params` -> `SpeakerAdversary` -> the model's
forward (`speaker_head=True, grl_lambda=...`) -> `GradientReversal`. Only this object holds or
changes the lambda and the speaker loss weight, and every change is logged with its reason.

    adversary = SpeakerAdversary.from_params(stage2_params, model, dist)   # None if the stage has no GRL
    out = model(batch, **adversary.forward_args(step))   # speaker_head=True, grl_lambda=<effective>
    loss = loss + adversary.speaker_term(out)            # speaker_loss_weight * speaker_loss
    adversary.remember(out, batch)                       # detached emotion vectors of the step
    adversary.classifier_updates()                       # `classifier_steps` classifier-only updates
    decision = adversary.check_band(step, acc, last=step == steps)   # band_control: warn | auto

What it owns:
- `grl_lambda`: the base lambda (configured, then raised / lowered by `band_control: auto`); the effective
  lambda of a step is the base, or with `grl_warmup` the DANN ramp of it (`lambda_at(step)`);
- `speaker_loss_weight` (configured; the band advises on it but auto control leaves it: see band.py);
- the band monitor (`band.py`) that advises those changes;
- the speaker classifier's own optimizer and its extra updates on the detached emotion vectors;
- its state (values, band streak, classifier optimizer, change log) for an exact resume.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from tristage.training import ddp
from tristage.training.band import BandDecision, SpeakerAccBand, dann_lambda

log = logging.getLogger("tristage.training")


class SpeakerAdversary:
    def __init__(self, classifier: torch.nn.Module, dist: ddp.Dist, *, grl_lambda: float,
                 speaker_loss_weight: float, warmup: bool, total_steps: int, band: SpeakerAccBand,
                 band_check_every: int, classifier_steps: int, classifier_lr_scale: float, lr: float,
                 weight_decay: float):
        self.classifier, self.dist = classifier, dist
        self.configured = dict(grl_lambda=float(grl_lambda), speaker_loss_weight=float(speaker_loss_weight))
        self.grl_lambda = float(grl_lambda)  # base lambda in effect now (before warm-up)
        self.speaker_loss_weight = float(speaker_loss_weight)
        self.warmup, self.total_steps = warmup, total_steps
        self.band, self.band_check_every = band, band_check_every
        self.classifier_steps = classifier_steps
        self.classifier_lr_scale = classifier_lr_scale
        self.n_changes = 0
        self.changes: list[dict] = []  # every change of a value in effect: step, name, old, new, reason
        self.last_used: dict[str, float] = {}  # the values of the last training step
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (emotion vectors, speaker labels)
        # extra classifier-only updates: its own optimizer, constant lr
        self.optimizer = None
        if classifier_steps > 0:
            self.optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr * classifier_lr_scale,
                                               betas=(0.9, 0.98), eps=1e-8, weight_decay=weight_decay)

    @classmethod
    def from_params(cls, stage_params, model, dist: ddp.Dist, grl: bool = True) -> "SpeakerAdversary | None":
        """The adversary of a stage whose preset turns the GRL on (`grl`), else None."""
        if not grl:
            return None
        sp = stage_params
        low, high = sp.speaker_acc_band
        band = SpeakerAccBand(low, high, sp.band_patience, sp.band_control, sp.band_factor, sp.grl_lambda_max,
                              sp.grl_lambda_min, adversary=sp.adversary)
        seed = sp.adversary == "seed"  # the seed's plain GRL: the classifier learns only from the joint loss
        model.speaker_classifier.standardize = not seed
        return cls(model.speaker_classifier, dist, grl_lambda=sp.grl_lambda,
                   speaker_loss_weight=sp.speaker_loss_weight, warmup=sp.grl_warmup, total_steps=sp.steps,
                   band=band, band_check_every=sp.band_check_every or sp.eval_every,
                   classifier_steps=0 if seed else sp.classifier_steps,
                   classifier_lr_scale=sp.classifier_lr_scale,
                   lr=sp.lr * sp.lr_scale, weight_decay=sp.weight_decay)

    # --- the values in effect ---------------------------------------------------------
    def lambda_at(self, step: int) -> float:
        """The effective lambda of training step `step` (counted from 0)."""
        if self.warmup:
            return dann_lambda(self.grl_lambda, step / self.total_steps)
        return self.grl_lambda

    def forward_args(self, step: int) -> dict:
        """Keyword arguments of the model's forward for training step `step`."""
        lam = self.lambda_at(step)
        self.last_used = dict(grl_lambda=lam, speaker_loss_weight=self.speaker_loss_weight)
        return dict(speaker_head=True, grl_lambda=lam)

    def speaker_term(self, out: dict) -> torch.Tensor:
        return self.speaker_loss_weight * out["speaker_loss"]

    def describe_start(self, stage: str) -> None:
        """Log where the values come from, once at the start (or after a resume)."""
        ramp = (f"; grl_warmup: the effective lambda ramps 0 -> {self.grl_lambda:g} (DANN schedule over "
                f"{self.total_steps} steps)" if self.warmup else "")
        log.info("%s: GRL lambda %g, speaker_loss_weight %g (band_control=%s, a band check every %d steps)%s",
                 stage, self.grl_lambda, self.speaker_loss_weight, self.band.control, self.band_check_every,
                 ramp)
        first = self.band_check_every * self.band.patience
        if self.band.control == "auto" and first >= self.total_steps:
            log.warning("%s: band_control=auto can act first at step %d, but the stage ends at step %d "
                        "(changes are never made at the last step): lower %s.band_check_every or "
                        "%s.band_patience", stage, first, self.total_steps, stage, stage)

    # --- the classifier's own updates -------------------------------------------------
    def remember(self, out: dict, batch: dict) -> None:
        if self.optimizer is not None:
            self._pending.append((out["emo_vec"].detach().float(), batch["speaker"]))

    def classifier_updates(self) -> None:
        """`classifier_steps` updates of the speaker classifier alone on this step's detached emotion
        vectors, so it keeps up with the emotion encoder and the GRL pushes against a real adversary."""
        pending, self._pending = self._pending, []
        if self.optimizer is None or not pending:
            return
        clf = self.classifier
        clf.train()
        params = [p for p in clf.parameters() if p.requires_grad]
        for _ in range(self.classifier_steps):  # every rank runs every update (DDP: same collectives)
            self.optimizer.zero_grad(set_to_none=True)
            loss = sum(F.cross_entropy(clf(emo), labels, ignore_index=-100, reduction="sum")
                       / (labels != -100).sum().clamp(min=1) for emo, labels in pending)
            (loss / len(pending)).backward()
            ddp.average_gradients(params, self.dist)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # --- the band ---------------------------------------------------------------------
    def band_due(self, step: int) -> bool:
        """A band check (validation pass) after training step `step`, besides the evaluations."""
        return step % self.band_check_every == 0
    def check_band(self, step: int, acc: float, last: bool = False, n: int | None = None) -> BandDecision:
        """Ask the band monitor (`acc` measured on `n` utterances); apply its proposed changes (auto
        control), except at the `last` step, where a change could not be used any more."""
        decision = self.band.update(acc, self.grl_lambda, self.speaker_loss_weight, n)
        if decision.changes and last:
            decision.warning += " (not applied: this was the stage's last step)"
            decision.changes = {}
        for name, (old, new) in decision.changes.items():
            self._set(step, name, new, f"band_control=auto: speaker_acc {acc:.3f} {decision.status} the band")
        if decision.changes:
            self.n_changes += 1
        return decision

    def _set(self, step: int, name: str, value: float, reason: str) -> None:
        old = getattr(self, name)
        setattr(self, name, float(value))
        self.changes.append(dict(step=step, name=name, old=old, new=float(value), reason=reason))
        if self.dist.is_main:
            log.info("step %d: %s %g -> %g (%s)", step, name, old, value, reason)

    # --- reporting and resume ---------------------------------------------------------
    def metrics(self) -> dict:
        """Configured vs final values. `grl_lambda` / `speaker_loss_weight` (contract keys) are the values
        used in the last training step, i.e. the same as `*_final`."""
        used = self.last_used or dict(grl_lambda=self.lambda_at(self.total_steps - 1),
                                      speaker_loss_weight=self.speaker_loss_weight)
        return dict(grl_lambda=used["grl_lambda"], speaker_loss_weight=used["speaker_loss_weight"],
                    grl_lambda_configured=self.configured["grl_lambda"],
                    grl_lambda_final=used["grl_lambda"],
                    speaker_loss_weight_configured=self.configured["speaker_loss_weight"],
                    speaker_loss_weight_final=used["speaker_loss_weight"],
                    band_changes=self.n_changes, adversary=self.band.adversary,
                    classifier_steps=self.classifier_steps)

    def state_dict(self) -> dict:
        return dict(grl_lambda=self.grl_lambda, speaker_loss_weight=self.speaker_loss_weight,
                    n_changes=self.n_changes, changes=[dict(c) for c in self.changes],
                    band=self.band.state_dict(),
                    last_used=dict(self.last_used),
                    optimizer=self.optimizer.state_dict() if self.optimizer is not None else {})

    def load_state_dict(self, state: dict) -> None:
        self.grl_lambda = float(state["grl_lambda"])
        self.speaker_loss_weight = float(state["speaker_loss_weight"])
        self.n_changes, self.changes = int(state["n_changes"]), [dict(c) for c in state["changes"]]
        self.last_used = dict(state["last_used"])
        self.band.load_state_dict(state["band"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
