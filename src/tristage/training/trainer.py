"""ONE trainer for the three stages; what differs between stages is data (`presets.py`).

    metrics = train_stage("stage2", params, tracker)   # -> the dict written to metrics/stage2.json

Reads its inputs from `params.<stage>`; writes `models/<stage>/` (model.safetensors,
config.json, trainer_state.pt, checkpoints/step-XXXXXX/), `metrics/<stage>.json` and
`plots/<stage>/` (train.tsv, losses.png, speaker_acc.png). Resumes exactly from the newest
valid checkpoint written with the same config (fingerprint), else starts fresh.

The rooms: `build.py` (architecture and initial weights), `optim.py` (optimizer, schedule),
`adversary.py` (the GRL: lambda, speaker loss weight, band, classifier updates),
`state.py` (loop state), `validation.py`, `fingerprint.py` + `checkpoint.py` + `resume.py` (resume),
`outputs.py` (metrics and files). This module is the loop that ties them together.
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tristage.environment import deterministic_torch
from tristage.errors import UserError
from tristage.model.folder import export_model_folder
from tristage.model.tts import build_model
from tristage.training import checkpoint as ck
from tristage.training import ddp
from tristage.training.adversary import SpeakerAdversary
from tristage.training.build import check_init, load_init_weights, rel, resolve_config
from tristage.training.config import forward_args as decoder_forward_args
from tristage.training.data import Sources, TrainData, load_sources, to_device
from tristage.training.fingerprint import combine, data_fingerprint, run_fingerprint_parts
from tristage.training.optim import build_optimizer
from tristage.training.outputs import final_metrics, provenance, write_model, write_reports
from tristage.training.presets import apply_preset, set_train_mode, stage_preset
from tristage.training.resume import RunCheckpoints
from tristage.training.state import StepSums, TrainState, plain
from tristage.training.validation import validate

log = logging.getLogger("tristage.training")


class NonFiniteLoss(UserError):
    pass


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train_stage(stage: str, params, tracker=None, sources: Sources | None = None) -> dict[str, Any]:
    stage_params = params.stage(stage)
    check_init(stage, stage_params, params.base_dir)
    deterministic_torch(stage_params.threads)
    dist = ddp.init(stage_params.device, f"{stage}.device")
    try:
        return _Trainer(stage, params, stage_params, dist, tracker, sources).run()
    finally:
        ddp.shutdown(dist)


class _Trainer:
    def __init__(self, stage, params, sp, dist: ddp.Dist, tracker, sources):
        self.stage, self.params, self.sp, self.dist, self.tracker = stage, params, sp, dist, tracker
        self.preset = stage_preset(stage, sp)
        self.base = params.base_dir
        if dist.is_main:
            log.info(
                "%s: preset frozen=%s grl=%s lr=%g x %g",
                stage,
                list(self.preset.frozen),
                self.preset.grl,
                sp.lr,
                sp.lr_scale,
            )
        self.src = sources if sources is not None else load_sources(sp)
        if self.preset.grl and not self.src.mapping:
            raise UserError(
                f"{sp.speaker_mapping}: no speakers selected; the stage2 speaker classifier needs at "
                "least 2 (lower speaker_mapping.min_samples)"
            )
        self.cfg, init = resolve_config(stage, params, sp, self.src)
        self.data = TrainData(self.src, sp, self.cfg.max_text_len, self.cfg.max_frames, dist.rank, dist.world,
                              self.cfg.text_frontend, self.cfg.phoneme_voice)
        if init is None:  # stage1 fixes the architecture; later stages keep its rate with its weights
            self.cfg.text_rate = self.data.text_rate()
        _seed_all(sp.seed)
        model = build_model(self.cfg, self.src.table)
        init_sha = load_init_weights(model, init, self.preset.previous)
        self.counts = apply_preset(model, self.preset)
        if dist.is_main:
            counts = self.counts
            log.info("%s: trainable %s / %s parameters (%.1f%%); frozen: %s", stage,
                     f"{counts['trainable_params']:,}", f"{counts['total_params']:,}",
                     100 * counts["trainable_fraction"], ", ".join(self.preset.frozen))
        self.model = model.to(dist.device)
        self.ddp_model = self.model
        if dist.enabled:
            self.ddp_model = ddp.wrap(self.model, dist)
        if sp.epochs is not None:  # passes over the training split -> steps (every later use reads sp.steps)
            steps = max(1, round(sp.epochs * len(self.data.sampler)))
            self.sp = sp = sp.model_copy(update=dict(steps=steps))
            if dist.is_main:
                log.info("%s: %g epochs of %d batches = %d steps", stage, sp.epochs, len(self.data.sampler),
                         steps)
        self.val = self.data.val_batches(sp.batch_size)
        self.cache_captions()
        self.adversary = SpeakerAdversary.from_params(sp, model, dist, grl=self.preset.grl)
        self.opt, self.sched = build_optimizer(
            model, sp, self.adversary.classifier_lr_scale if self.adversary else 1.0)
        self.out = Path(sp.out_dir)
        parts, code_files = run_fingerprint_parts(stage, sp, self.cfg, init_sha, dist.world,
                                                  data_fingerprint(self.src, self.data.examples))
        self.fingerprint = combine(parts)
        self.checkpoints = RunCheckpoints(stage, self.out / "checkpoints", self.base, self.fingerprint, parts,
                                          code_files, dist)
        self.state = TrainState(window_size=sp.window)

    def cache_captions(self) -> None:
        """The caption module's per-caption work done once for the corpus, where it has any
        (`CaptionPEFT.cache_context`: the contextualiser's corrections)."""
        cache = getattr(self.model.caption_peft, "cache_context", None)
        if cache is None:
            return
        info = cache([e.caption for e in self.data.examples], self.sp.caption_cache_mb)
        if self.dist.is_main and info["skipped"] != "no contextualiser":
            how = f"computed per batch: {info['skipped']}" if info["skipped"] else "cached"
            log.info("%s: caption contextualiser %s for %d captions (%d rows, %.1f MiB, %.1f s)", self.stage,
                     how, info["captions"], info["rows"], info["mib"], info["seconds"])
            if self.tracker is not None:
                self.tracker.set_tags({"caption_context": how})

    # --- checkpoints and resume ---------------------------------------------------------
    def trainer_state(self) -> dict:
        return plain(
            dict(
                **self.state.to_dict(),
                fingerprint=self.fingerprint,
                optimizer=self.opt.state_dict(),
                scheduler=self.sched.state_dict(),
                sampler=self.data.sampler.state_dict(),
                rng=ck.rng_state(),
                adversary=self.adversary.state_dict() if self.adversary else {},
            )
        )

    def load_trainer_state(self, saved: dict) -> None:
        self.state.load(saved)
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.data.sampler.load_state_dict(saved["sampler"])
        if self.adversary:
            self.adversary.load_state_dict(saved["adversary"])
        ck.set_rng_state(saved["rng"])

    def maybe_resume(self) -> None:
        """Resume the newest valid checkpoint of this very run (same code, params, data, world size);
        else start from step 0 and say why in one line (`resume.py`)."""
        found = self.checkpoints.find(needs_adversary=self.adversary is not None)
        if found is None:
            return
        try:
            self.model.load_state_dict(found.model_state, strict=True)
        except RuntimeError as exc:
            raise UserError(
                f"{rel(found.folder, self.base)}: weights don't fit the model ({str(exc).splitlines()[0]}); "
                f"delete {rel(self.checkpoints.root, self.base)} to start fresh"
            ) from None
        self.load_trainer_state(found.trainer_state)
        self.state.resumed_from = self.state.step
        self.state.last_good = found.folder
        if self.dist.is_main:
            log.info(
                "%s: resuming from %s (step %d of %d)",
                self.stage,
                rel(found.folder, self.base),
                self.state.step,
                self.sp.steps,
            )
        ddp.barrier(self.dist)

    def save_checkpoint(self) -> None:
        if self.dist.is_main:
            self.state.last_good = self.checkpoints.save(self.state.step, self.model.state_dict(),
                                                         self.trainer_state(), self.sp.keep_last,
                                                         keep={self.state.best["step"]})
        ddp.barrier(self.dist)

    # --- one step -----------------------------------------------------------------------
    def autocast(self):
        if self.dist.device.startswith("cuda") and self.sp.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def loss_of(self, out: dict) -> torch.Tensor:
        weights = self.sp.peft  # the caption adapters' loss terms (this stage's own weights)
        loss = out["mel_loss"] + weights.kl_weight * out["kl"] + weights.orthogonality_weight * out["ortho"]
        loss = loss + out["stop_loss"]  # end-of-speech head (model/decoder.py stop_loss)
        if "align_loss" in out:
            loss = loss + self.sp.guided_attention.weight * out["align_loss"]
        if self.adversary:
            loss = loss + self.adversary.speaker_term(out)
        return loss

    def train_step(self) -> dict[str, float]:
        sp, adv = self.sp, self.adversary
        forward_args = {**(adv.forward_args(self.state.step) if adv else {}), **decoder_forward_args(sp)}
        set_train_mode(self.model, self.preset)
        t0 = time.perf_counter()
        sums = StepSums()
        for micro in range(sp.grad_accum):
            batch = to_device(self.data.next_batch(), self.dist.device)
            sync = self.dist.enabled and micro < sp.grad_accum - 1
            with (self.ddp_model.no_sync() if sync else nullcontext()), self.autocast():
                out = self.ddp_model(batch, **forward_args)
                loss = self.loss_of(out)
            finite = bool(torch.isfinite(loss))
            if finite:
                (loss / sp.grad_accum).backward()
            if adv:
                adv.remember(out, batch)
            sums.add(out, batch["codes"].shape[0], finite, speaker=adv is not None)
        sums = sums.all_reduce(self.dist)
        if sums.nonfinite > 0:
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(self._nonfinite_msg(sums.mel_loss))
        gnorm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], sp.grad_clip
        )
        if not torch.isfinite(gnorm):
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(self._nonfinite_msg(float("nan"), what="gradient norm"))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if adv:
            adv.classifier_updates()
        self.state.step += 1
        elapsed = time.perf_counter() - t0
        self.state.train_time += elapsed
        self.state.samples_seen += int(sums.samples)
        n_micro = sp.grad_accum * self.dist.world
        rec = dict(mel_loss=sums.mel_loss / n_micro, mel_top1=sums.mel_correct / max(sums.mel_count, 1),
                   kl=sums.kl / n_micro, ortho=sums.ortho / n_micro,  # the PEFT losses, unweighted
                   samples_per_s=sums.samples / elapsed, lr=self.sched.get_last_lr()[0])
        if forward_args.get("align"):
            rec["align_loss"] = sums.align / n_micro  # unweighted
        if adv:
            rec.update(speaker_loss=sums.speaker_loss / n_micro,
                       speaker_acc=sums.speaker_correct / max(sums.speaker_count, 1), **adv.last_used)
        return rec

    def _nonfinite_msg(self, value: float, what: str = "loss") -> str:
        last_good = self.state.last_good
        keep = (f"the last good checkpoint is kept: {rel(last_good, self.base)}" if last_good
                else "no checkpoint was written yet")
        return (
            f"{self.stage}: non-finite {what} ({value}) at step {self.state.step + 1}; "
            f"stopped, {keep}. Lower "
            f"{self.stage}.lr or raise {self.stage}.warmup_steps (a changed config starts fresh)"
        )

    # --- evaluation and logging -----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        return validate(self.model, self.val, self.dist.device, speaker=self.adversary is not None,
                        autocast=self.autocast)

    def log_row(self, row: dict) -> None:
        self.state.history.append(row)
        if self.dist.is_main and self.tracker is not None:
            self.tracker.log_metrics(
                {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))},
                step=row["step"],
            )

    def on_eval(self, ev: dict, band_only: bool = False) -> dict:
        """Band check and best-so-far of one validation pass (`band_only`: a band check between evaluations,
        which doesn't pick the best checkpoint)."""
        row, state = dict(ev), self.state
        if self.adversary:
            acc = ev.get("val_speaker_acc", state.window_mean("speaker_acc"))
            if acc is not None:
                dec = self.adversary.check_band(state.step, acc, last=state.step == self.sp.steps,
                                                n=ev.get("val_speaker_n"))
                row["band_status"] = dec.status
                if dec.warning and self.dist.is_main:
                    log.warning("%s step %d: %s", self.stage, state.step, dec.warning)
                if dec.warning:
                    state.band_log.append(dict(step=state.step, status=dec.status, message=dec.warning,
                                               changes={k: list(v) for k, v in dec.changes.items()}))
        if not band_only and "val_mel_loss" in ev and ev["val_mel_loss"] < state.best["val_mel_loss"]:
            state.best = dict(step=state.step, val_mel_loss=float(ev["val_mel_loss"]))
        return row

    def step_row(self, rec: dict) -> dict | None:
        """The row to log after this step (train window means, evaluation), or None."""
        sp, step = self.sp, self.state.step
        last = step == sp.steps
        row = None
        if step % sp.log_every == 0 or last:
            row = dict(step=step, **{k: self.state.window_mean(k) for k in rec})
            # the values in effect now, not window means: the last row agrees with metrics/<stage>.json
            row.update({k: rec[k] for k in ("lr", "grl_lambda", "speaker_loss_weight") if k in rec})
        evaluation = step % sp.eval_every == 0 or last
        if evaluation or (self.adversary and self.adversary.band_due(step)):
            row = dict(row or dict(step=step), **self.on_eval(self.evaluate(), band_only=not evaluation))
        return row

    def plateau(self) -> bool:
        """`patience` evaluations in a row without a better val mel_loss (derived from the history, so a
        resumed run counts the same)."""
        if not self.sp.patience:
            return False
        best = self.state.best["step"]
        evals = [r["step"] for r in self.state.history if "val_mel_loss" in r and r["step"] > 0]
        return len([s for s in evals if s > best]) >= self.sp.patience

    def hand_over(self) -> dict[str, Any]:
        """The weights the next stage starts from: the best validation step's (handover: best, loaded from
        its checkpoint) or the last step's. -> the metrics that say which."""
        sp, state = self.sp, self.state
        best = state.best["step"]
        step = state.step
        if sp.handover == "best" and 0 < best != state.step:
            folder = ck.step_dir(self.checkpoints.root, best)
            model_state, _ = ck.load_checkpoint(folder, self.dist.device)
            self.model.load_state_dict(model_state, strict=True)
            step = best
            if self.dist.is_main:
                log.info("%s: handing over step %d (best val mel_loss %.4f), not the last step %d",
                         self.stage, best, state.best["val_mel_loss"], state.step)
        val = state.best["val_mel_loss"] if step == best else next(
            (r["val_mel_loss"] for r in reversed(state.history) if "val_mel_loss" in r), None)
        return dict(handover=sp.handover, handover_step=step, handover_val_mel_loss=val)

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        sp, state = self.sp, self.state
        self.maybe_resume()
        if self.adversary and self.dist.is_main:
            self.adversary.describe_start(self.stage)
        if state.step == 0 and not state.initial:
            ev = self.evaluate()
            state.initial = dict(initial_mel_loss=ev.get("val_mel_loss", float("nan")))
            self.log_row(dict(step=0, **ev))
        bar = tqdm(total=sp.steps, initial=state.step, desc=self.stage, file=sys.stderr, mininterval=2.0,
                   disable=not self.dist.is_main or os.environ.get("TRISTAGE_NO_PROGRESS") == "1")
        while state.step < sp.steps:
            rec = self.train_step()
            state.window.append(rec)
            state.initial.setdefault("initial_train_mel_loss", rec["mel_loss"])
            bar.update(1)
            best_before = state.best["step"]
            row = self.step_row(rec)
            if row is not None:
                if "mel_loss" in row:
                    bar.set_postfix(mel_loss=f"{row['mel_loss']:.3f}", top1=f"{row['mel_top1']:.3f}")
                self.log_row(row)
            plateau = self.plateau()
            # a new best is always checkpointed, so it can be handed over (handover: best) after a resume too
            if (state.step % sp.checkpoint_every == 0 or state.step == sp.steps or plateau
                    or state.best["step"] != best_before):
                self.save_checkpoint()
            if plateau:
                if self.dist.is_main:
                    log.info("%s: stopping at step %d of %d: val mel_loss has not improved for %d "
                             "evaluations (patience; best %.4f at step %d)", self.stage, state.step, sp.steps,
                             sp.patience, state.best["val_mel_loss"], state.best["step"])
                break
        bar.close()
        handed = self.hand_over()
        metrics = final_metrics(state, self.counts, self.dist.world, self.cfg, self.adversary,
                                tuple(sp.speaker_acc_band) if self.adversary else None)
        metrics.update(handed, stopped_early=state.step < sp.steps)
        # the PEFT losses (unweighted, moving window) and the utterances skipped for exceeding max_frames
        metrics.update(kl=state.window_mean("kl"), ortho=state.window_mean("ortho"),
                       n_skipped_too_long=self.data.n_skipped_too_long,
                       n_skipped_text_too_long=self.data.n_skipped_text_too_long)
        if self.dist.is_main:
            self.write_outputs(metrics)
        ddp.barrier(self.dist)
        return metrics

    def write_outputs(self, metrics: dict) -> None:
        best = self.state.best["step"]
        info = dict(stage=self.stage, fingerprint=self.fingerprint, frozen=list(self.preset.frozen),
                    grl=self.preset.grl, best_checkpoint=f"checkpoints/step-{best:06d}" if best > 0 else None,
                    **self.counts,
                    band_log=self.state.band_log, grl_log=self.adversary.changes if self.adversary else [],
                    note=provenance(self.cfg))
        write_model(self.out, self.model, self.trainer_state(), self.stage, self.fingerprint, info)
        # config.json (no absolute paths) + what synthesis needs:
        # baked caption table, codec, speakers, references
        export_model_folder(
            self.out, self.stage, self.model, self.cfg, self.src, self.data, self.sp.max_ref_frames
        )
        write_reports(self.stage, self.sp, self.state.history, metrics, self.cfg, self.adversary is not None,
                      self.tracker)
