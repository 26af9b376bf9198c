"""ONE trainer for the three stages; what differs between stages is data (`presets.py`).

    metrics = train_stage("stage2", params, tracker)   # -> the dict written to metrics/stage2.json

Reads its inputs from `params.<stage>`; writes `models/<stage>/` (model.safetensors,
config.json, trainer_state.pt, checkpoints/step-XXXXXX/), `metrics/<stage>.json` and
`plots/<stage>/` (train.tsv, losses.png, speaker_acc.png). Resumes exactly from the newest
valid checkpoint written with the same config (fingerprint), else starts fresh.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tristage.errors import UserError
from tristage.fsio import atomic_path, write_json
from tristage.model.config import TTSConfig
from tristage.model.tts import build_model
from tristage.synthesis.folder import export_model_folder
from tristage.training import checkpoint as ck
from tristage.training import ddp
from tristage.training.band import SpeakerAccBand, band_status, dann_lambda
from tristage.training.data import Sources, TrainData, load_sources, to_device
from tristage.training.plots import plot_losses, plot_speaker_acc, write_tsv
from tristage.training.presets import PRESETS, apply_preset, set_train_mode

log = logging.getLogger("tristage.training")

# Params that don't change the trained weights (a resume is allowed across them).
COSMETIC = {"out_dir", "metrics", "plots_dir", "log_every", "keep_last", "checkpoint_every", "device",
            "prepared", "features", "caption_vectors", "speaker_mapping", "init_from"}


class NonFiniteLoss(UserError):
    pass


def _rel(p: Path, base: Path | None) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path(base).resolve())) if base else str(p)
    except ValueError:
        return str(p)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to min_ratio (step counts from 0)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def _file_sha(path: Path) -> str:
    return ck.sha256(path) if path.is_file() else ""


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_config(stage: str, params, sp, src: Sources) -> tuple[TTSConfig, Path | None]:
    """The architecture: from stage1.model for stage1; from the previous stage's config.json after."""
    preset = PRESETS[stage]
    if not preset.needs_init:
        sizes = params.stage1.model.resolved()
        cfg = TTSConfig(n_codebooks=src.n_codebooks, codebook_size=src.codebook_size, n_mels=src.n_mels,
                        caption_dim=int(src.table.dim), n_speakers=max(len(src.mapping), 1),
                        preset=params.stage1.model.preset, **sizes)
        init = None
    else:
        init = Path(sp.init_from)
        cfg = TTSConfig.from_dict(json.loads((init / "config.json").read_text()))
        for k, v in (("n_codebooks", src.n_codebooks), ("codebook_size", src.codebook_size), ("n_mels", src.n_mels),
                     ("caption_dim", int(src.table.dim))):
            if getattr(cfg, k) != v:
                raise UserError(f"{init / 'config.json'}: {k}={getattr(cfg, k)} but the data has {v}; "
                                f"rerun {preset.previous} on the current features (dvc repro {preset.previous})")
        if len(src.mapping) > cfg.n_speakers:
            raise UserError(f"{sp.speaker_mapping}: {len(src.mapping)} speakers but the {preset.previous} model "
                            f"has a {cfg.n_speakers}-way speaker classifier; rerun {preset.previous}")
    cfg.caption_module, cfg.caption_table = src.caption_module, src.caption_table
    cfg.caption_vectors, cfg.peft = src.caption_vectors, dict(src.peft)
    cfg.codec, cfg.caption_encoder = src.codec, src.caption_encoder
    return cfg, init


def check_init(stage: str, sp, base: Path | None) -> None:
    preset = PRESETS[stage]
    if not preset.needs_init:
        return
    if sp.init_from is None:
        raise UserError(f"{stage}.init_from: required (the {preset.previous} output folder, e.g. models/{preset.previous})")
    for name in ("model.safetensors", "config.json"):
        p = Path(sp.init_from) / name
        if not p.is_file():
            raise UserError(f"{_rel(p, base)} not found: run {preset.previous} first (dvc repro {preset.previous})")


def train_stage(stage: str, params, tracker=None, sources: Sources | None = None) -> dict[str, Any]:
    sp = params.stage(stage)
    check_init(stage, sp, params.base_dir)
    d = ddp.init(sp.device)
    try:
        return _Trainer(stage, params, sp, d, tracker, sources).run()
    finally:
        ddp.shutdown(d)


class _Trainer:
    def __init__(self, stage, params, sp, d: ddp.Dist, tracker, sources):
        self.stage, self.params, self.sp, self.d, self.tracker = stage, params, sp, d, tracker
        self.preset = PRESETS[stage]
        self.base = params.base_dir
        if d.is_main:
            log.info("%s: preset frozen=%s grl=%s lr=%g x %g", stage, list(self.preset.frozen), self.preset.grl,
                     sp.lr, sp.lr_scale)
        self.src = sources if sources is not None else load_sources(sp, params.caption_vectors.peft.model_dump())
        if self.preset.grl and not self.src.mapping:
            raise UserError(f"{sp.speaker_mapping}: no speakers selected; the stage2 speaker classifier needs at "
                            "least 2 (lower speaker_mapping.min_samples)")
        self.cfg, init = resolve_config(stage, params, sp, self.src)
        _seed_all(sp.seed)
        model = build_model(self.cfg, self.src.table)
        self.init_sha = ""
        if init is not None:
            from safetensors.torch import load_file

            wpath = init / "model.safetensors"
            self.init_sha = _file_sha(wpath)
            missing, unexpected = model.load_state_dict(load_file(str(wpath)), strict=False)
            if missing or unexpected:
                raise UserError(f"{wpath}: weights don't match its config.json (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]}); rerun {self.preset.previous}")
        self.counts = apply_preset(model, self.preset)
        if d.is_main:
            c = self.counts
            log.info("%s: trainable %s / %s parameters (%.1f%%); frozen: %s", stage, f"{c['trainable_params']:,}",
                     f"{c['total_params']:,}", 100 * c["trainable_fraction"], ", ".join(self.preset.frozen))
        self.model = model.to(d.device)
        self.ddp_model = self.model
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp_model = DDP(self.model, device_ids=[d.local_rank] if d.device.startswith("cuda") else None,
                                 find_unused_parameters=False)
        self.data = TrainData(self.src, sp, self.cfg.max_text_len, self.cfg.max_frames, d.rank, d.world)
        self.val = self.data.val_batches(sp.batch_size)
        lr = sp.lr * sp.lr_scale
        cls_scale = getattr(sp, "classifier_lr_scale", 1.0)
        groups = []
        for is_cls in (False, True):
            ps = [p for n, p in model.named_parameters()
                  if p.requires_grad and n.startswith("speaker_classifier.") == is_cls]
            for decay in (True, False):
                sel = [p for p in ps if (p.dim() >= 2) == decay]
                if sel:
                    groups.append(dict(params=sel, weight_decay=sp.weight_decay if decay else 0.0,
                                       lr=lr * (cls_scale if is_cls else 1.0)))
        self.opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, sp.warmup_steps, sp.steps, sp.min_lr_ratio))
        # extra classifier-only updates (stage2.classifier_steps): its own optimizer, constant lr
        self.cls_opt = None
        if self.preset.grl and getattr(sp, "classifier_steps", 0) > 0:
            self.cls_opt = torch.optim.AdamW(model.speaker_classifier.parameters(), lr=lr * cls_scale,
                                             betas=(0.9, 0.98), eps=1e-8, weight_decay=sp.weight_decay)
        self.band = None
        if self.preset.grl:
            lo, hi = sp.speaker_acc_band
            self.band = SpeakerAccBand(lo, hi, sp.band_patience, sp.band_control, sp.grl_lambda,
                                       sp.speaker_loss_weight, sp.grl_lambda_max, sp.speaker_loss_weight_max,
                                       sp.band_factor)
        self.peft = params.caption_vectors.peft
        self.out = Path(sp.out_dir)
        self.ckroot = self.out / "checkpoints"
        self.fingerprint = self._fingerprint()
        self.step = 0
        self.history: list[dict] = []
        self.window: collections.deque = collections.deque(maxlen=sp.window)
        self.best = dict(step=-1, val_mel_loss=float("inf"))
        self.initial: dict[str, float] = {}
        self.band_log: list[dict] = []
        self.resumed_from = None
        self.samples_seen = 0
        self.train_time = 0.0
        self.last_good: Path | None = None

    # ---------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        sec = {k: v for k, v in self.sp.model_dump(mode="json").items() if k not in COSMETIC}
        blob = json.dumps(dict(stage=self.stage, params=sec, cfg=self.cfg.to_dict(), init=self.init_sha,
                               peft=self.peft.model_dump(mode="json"), world=self.d.world,
                               data=self._data_fingerprint()), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _data_fingerprint(self) -> str:
        """Changes when the upstream data does (so a persisted checkpoint isn't resumed on new data)."""
        h = hashlib.sha256()
        idx = self.src.store.index
        h.update(json.dumps(self.src.store.meta, sort_keys=True, default=str).encode())
        h.update("|".join(f"{i}:{n}" for i, n in zip(idx["id"].astype(str), idx["n_frames"])).encode())
        h.update(json.dumps(self.src.mapping, sort_keys=True).encode())
        h.update("|".join(f"{e.id}:{e.speaker}:{len(e.text)}:{len(e.caption)}" for e in self.data.examples).encode())
        return h.hexdigest()[:16]

    def trainer_state(self) -> dict:
        return _plain(dict(step=self.step, fingerprint=self.fingerprint, optimizer=self.opt.state_dict(),
                    cls_optimizer=self.cls_opt.state_dict() if self.cls_opt else {},
                    scheduler=self.sched.state_dict(), sampler=self.data.sampler.state_dict(), rng=ck.rng_state(),
                    band=self.band.state_dict() if self.band else {}, history=list(self.history),
                    window=list(self.window), best=dict(self.best), initial=dict(self.initial),
                    band_log=list(self.band_log), samples_seen=self.samples_seen, train_time=self.train_time))

    def load_trainer_state(self, st: dict) -> None:
        self.step = int(st["step"])
        self.opt.load_state_dict(st["optimizer"])
        if self.cls_opt:
            self.cls_opt.load_state_dict(st["cls_optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.data.sampler.load_state_dict(st["sampler"])
        if self.band:
            self.band.load_state_dict(st["band"])
        self.history = list(st["history"])
        self.window.extend(st["window"])
        self.best, self.initial = dict(st["best"]), dict(st["initial"])
        self.band_log = list(st["band_log"])
        self.samples_seen, self.train_time = int(st["samples_seen"]), float(st["train_time"])
        ck.set_rng_state(st["rng"])

    def maybe_resume(self) -> None:
        folder, notes = ck.find_resumable(self.ckroot, self.fingerprint)
        if self.d.is_main:
            for n in notes:
                log.warning("%s: %s", self.stage, n)
        if folder is None:
            if ck.list_checkpoints(self.ckroot):
                if self.d.is_main:
                    log.info("%s: no checkpoint matches this config (fingerprint %s); starting fresh",
                             self.stage, self.fingerprint)
                    ck.clear(self.ckroot)
            ddp.barrier(self.d)
            return
        model_state, st = ck.load_checkpoint(folder)
        self.model.load_state_dict(model_state, strict=False)
        self.load_trainer_state(st)
        self.resumed_from = self.step
        self.last_good = folder
        if self.d.is_main:
            log.info("%s: resuming from %s (step %d of %d)", self.stage, _rel(folder, self.base), self.step,
                     self.sp.steps)
        ddp.barrier(self.d)

    # ---------------------------------------------------------------------------------
    def autocast(self):
        if self.d.device.startswith("cuda") and self.sp.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def grl_lambda(self) -> float | None:
        if not self.band:
            return None
        lam = self.band.grl_lambda
        return dann_lambda(lam, self.step / self.sp.steps) if self.sp.grl_warmup else lam

    def loss_of(self, out: dict, lam: float | None) -> torch.Tensor:
        loss = out["mel_loss"] + self.peft.kl_weight * out["kl"] + self.peft.orthogonality_weight * out["ortho"]
        loss = loss + out["stop_loss"]  # end-of-speech head (model/decoder.py stop_loss)
        if lam is not None:
            loss = loss + self.band.speaker_loss_weight * out["speaker_loss"]
        return loss

    def train_step(self) -> dict[str, float]:
        sp, lam = self.sp, self.grl_lambda()
        set_train_mode(self.model, self.preset)
        t0 = time.perf_counter()
        sums = np.zeros(8)  # mel_loss, mel_correct, mel_count, spk_loss, spk_correct, spk_count, nonfinite, n
        emo_vecs = []  # (emotion vectors, speaker labels) of this step, for the extra classifier updates
        for micro in range(sp.grad_accum):
            batch = to_device(self.data.next_batch(), self.d.device)
            sync = self.d.enabled and micro < sp.grad_accum - 1
            with (self.ddp_model.no_sync() if sync else nullcontext()), self.autocast():
                out = self.ddp_model(batch, grl_lambda=lam)
                loss = self.loss_of(out, lam)
            finite = bool(torch.isfinite(loss))
            if finite:
                (loss / sp.grad_accum).backward()
            if self.cls_opt is not None:
                emo_vecs.append((out["emo_vec"].detach().float(), batch["speaker"]))
            sums += [out["mel_loss"].item(), out["mel_correct"].item(), out["mel_count"].item(),
                     out["speaker_loss"].item() if lam is not None else 0.0,
                     out["speaker_correct"].item() if lam is not None else 0.0,
                     out["speaker_count"].item() if lam is not None else 0.0, 0.0 if finite else 1.0,
                     batch["codes"].shape[0]]
        sums = np.array(ddp.all_reduce_sum(sums.tolist(), self.d))
        if sums[6] > 0:
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(self._nonfinite_msg(sums[0]))
        gnorm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], sp.grad_clip)
        if not torch.isfinite(gnorm):
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(self._nonfinite_msg(float("nan"), what="gradient norm"))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.classifier_updates(emo_vecs)
        self.step += 1
        dt = time.perf_counter() - t0
        self.train_time += dt
        self.samples_seen += int(sums[7])
        n_micro = sp.grad_accum * self.d.world
        rec = dict(mel_loss=sums[0] / n_micro, mel_top1=sums[1] / max(sums[2], 1), samples_per_s=sums[7] / dt,
                   lr=self.sched.get_last_lr()[0])
        if lam is not None:
            rec.update(speaker_loss=sums[3] / n_micro, speaker_acc=sums[4] / max(sums[5], 1), grl_lambda=lam,
                       speaker_loss_weight=self.band.speaker_loss_weight)
        return rec

    def classifier_updates(self, emo_vecs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """`classifier_steps` updates of the speaker classifier alone on this step's detached emotion
        vectors, so it keeps up with the emotion encoder and the GRL pushes against a real adversary."""
        if self.cls_opt is None or not emo_vecs:
            return
        import torch.nn.functional as F

        clf = self.model.speaker_classifier
        clf.train()
        params = [p for p in clf.parameters() if p.requires_grad]
        for _ in range(self.sp.classifier_steps):  # every rank runs every update (DDP: same collectives)
            self.cls_opt.zero_grad(set_to_none=True)
            loss = sum(F.cross_entropy(logits, y, ignore_index=-100, reduction="sum") / (y != -100).sum().clamp(min=1)
                       for logits, y in ((clf(e), y) for e, y in emo_vecs))
            (loss / len(emo_vecs)).backward()
            ddp.average_gradients(params, self.d)
            self.cls_opt.step()
        self.cls_opt.zero_grad(set_to_none=True)

    def _nonfinite_msg(self, value: float, what: str = "loss") -> str:
        keep = (f"the last good checkpoint is kept: {_rel(self.last_good, self.base)}" if self.last_good
                else "no checkpoint was written yet")
        return (f"{self.stage}: non-finite {what} ({value}) at step {self.step + 1}; stopped, {keep}. Lower "
                f"{self.stage}.lr or raise {self.stage}.warmup_steps (a changed config starts fresh)")

    def evaluate(self) -> dict[str, float]:
        return validate(self.model, self.val, self.d.device, speaker=self.band is not None, autocast=self.autocast)

    def window_mean(self, key: str) -> float | None:
        vals = [r[key] for r in self.window if key in r]
        return float(np.mean(vals)) if vals else None

    def log_row(self, row: dict) -> None:
        self.history.append(row)
        if self.d.is_main and self.tracker is not None:
            self.tracker.log_metrics({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))},
                                     step=row["step"])

    def on_eval(self, ev: dict) -> dict:
        row = dict(ev)
        if self.band:
            acc = ev.get("val_speaker_acc", self.window_mean("speaker_acc"))
            if acc is not None:
                dec = self.band.update(acc)
                row["band_status"] = dec.status
                if dec.warning and self.d.is_main:
                    log.warning("%s step %d: %s", self.stage, self.step, dec.warning)
                if dec.warning:
                    self.band_log.append(dict(step=self.step, status=dec.status, message=dec.warning,
                                              changes={k: list(v) for k, v in dec.changes.items()}))
        if "val_mel_loss" in ev and ev["val_mel_loss"] < self.best["val_mel_loss"]:
            self.best = dict(step=self.step, val_mel_loss=float(ev["val_mel_loss"]))
        return row

    def save_checkpoint(self) -> None:
        if self.d.is_main:
            folder = ck.save_checkpoint(self.ckroot, self.step, self.model.state_dict(), self.trainer_state(),
                                        self.fingerprint)
            ck.prune(self.ckroot, self.sp.keep_last, {self.best["step"]})
            self.last_good = folder
        ddp.barrier(self.d)

    # ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        sp = self.sp
        self.maybe_resume()
        if self.step == 0 and not self.initial:
            ev = self.evaluate()
            self.initial = dict(initial_mel_loss=ev.get("val_mel_loss", float("nan")))
            self.log_row(dict(step=0, **ev))
        bar = tqdm(total=sp.steps, initial=self.step, desc=self.stage, file=sys.stderr, mininterval=2.0,
                   disable=not self.d.is_main or os.environ.get("TRISTAGE_NO_PROGRESS") == "1")
        while self.step < sp.steps:
            rec = self.train_step()
            self.window.append(rec)
            if "initial_train_mel_loss" not in self.initial:
                self.initial["initial_train_mel_loss"] = rec["mel_loss"]
            bar.update(1)
            last = self.step == sp.steps
            row = None
            if self.step % sp.log_every == 0 or last:
                row = dict(step=self.step, **{k: self.window_mean(k) for k in rec})
                row.update(lr=rec["lr"], **({"grl_lambda": rec["grl_lambda"]} if "grl_lambda" in rec else {}))
                bar.set_postfix(mel_loss=f"{row['mel_loss']:.3f}", top1=f"{row['mel_top1']:.3f}")
            if self.step % sp.eval_every == 0 or last:
                row = dict(row or dict(step=self.step), **self.on_eval(self.evaluate()))
            if row is not None:
                self.log_row(row)
            if self.step % sp.checkpoint_every == 0 or last:
                self.save_checkpoint()
        bar.close()
        metrics = self.final_metrics()
        if self.d.is_main:
            self.write_outputs(metrics)
        ddp.barrier(self.d)
        return metrics

    def final_metrics(self) -> dict[str, Any]:
        last_eval = next((r for r in reversed(self.history) if "val_mel_loss" in r), {})
        m: dict[str, Any] = dict(mel_loss=self.window_mean("mel_loss"), mel_top1=self.window_mean("mel_top1"),
                                 **self.counts)
        m.update(val_mel_loss=last_eval.get("val_mel_loss"), val_mel_top1=last_eval.get("val_mel_top1"),
                 initial_mel_loss=self.initial.get("initial_mel_loss"),
                 initial_train_mel_loss=self.initial.get("initial_train_mel_loss"),
                 steps=self.step, samples_per_s=self.samples_seen / max(self.train_time, 1e-9),
                 best_step=self.best["step"], best_val_mel_loss=self.best["val_mel_loss"],
                 world_size=self.d.world, codec=self.cfg.codec, caption_encoder=self.cfg.caption_encoder,
                 resumed_from_step=self.resumed_from)
        if self.band:
            lo, hi = self.sp.speaker_acc_band
            acc = self.window_mean("speaker_acc")
            val_acc = last_eval.get("val_speaker_acc")
            m.update(speaker_loss=self.window_mean("speaker_loss"), speaker_acc=acc,
                     grl_lambda=self.grl_lambda(), speaker_loss_weight=self.band.speaker_loss_weight,
                     val_speaker_acc=val_acc,
                     speaker_acc_band=band_status(val_acc if val_acc is not None else acc, lo, hi),
                     band_warnings=len(self.band_log), band_changes=self.band.n_changes)
        m = {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in m.items()}
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}

    def write_outputs(self, metrics: dict) -> None:
        sp = self.sp
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / "model.safetensors") as tmp:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(tmp),
                      metadata={"stage": self.stage, "fingerprint": self.fingerprint})
        # config.json (no absolute paths) + what synthesis needs: baked caption table, codec, speakers, references
        export_model_folder(self.out, self.stage, self.model, self.cfg, self.src, self.data, sp.max_ref_frames)
        with atomic_path(self.out / "trainer_state.pt") as tmp:
            torch.save(self.trainer_state(), tmp)
        info = dict(stage=self.stage, fingerprint=self.fingerprint, frozen=list(self.preset.frozen),
                    grl=self.preset.grl, best_checkpoint=f"checkpoints/step-{self.best['step']:06d}"
                    if self.best["step"] > 0 else None, band_log=self.band_log,
                    note=_provenance(self.cfg))
        write_json(self.out / "training.json", info)
        write_json(sp.metrics, metrics)
        plots = Path(sp.plots_dir)
        write_tsv(self.history, plots / "train.tsv")
        title = f"{self.stage} ({_provenance(self.cfg)})"
        plot_losses(self.history, plots / "losses.png", title)
        if self.band:
            plot_speaker_acc(self.history, tuple(sp.speaker_acc_band), plots / "speaker_acc.png", title)
        if self.tracker is not None:
            self.tracker.set_tags({"codec": self.cfg.codec, "caption_encoder": self.cfg.caption_encoder})
            for p in sorted(plots.glob("*")):
                self.tracker.log_artifact(p, artifact_path="plots")
        log.info("%s: mel_loss %.4f (initial %.4f), val_mel_loss %s; %s", self.stage, metrics["mel_loss"],
                 metrics["initial_train_mel_loss"] or float("nan"), metrics["val_mel_loss"], _provenance(self.cfg))


@torch.no_grad()
def validate(model, batches: list[dict], device: str, speaker: bool, autocast=nullcontext) -> dict[str, float]:
    """Token-weighted val_mel_loss / val_mel_top1 over fixed batches; with `speaker`, also the speaker
    classifier's accuracy and loss on the emotion vector (GRL at lambda 0: a plain forward)."""
    if not batches:
        return {}
    model.eval()
    lam = 0.0 if speaker else None
    tot = np.zeros(6)  # mel_loss*count, mel_correct, mel_count, spk_correct, spk_count, spk_loss*count
    for batch in batches:
        batch = to_device(batch, device)
        with autocast():
            out = model(batch, grl_lambda=lam)
        n = float(out["mel_count"])
        tot += [out["mel_loss"].item() * n, out["mel_correct"].item(), n,
                out["speaker_correct"].item() if speaker else 0.0,
                out["speaker_count"].item() if speaker else 0.0,
                out["speaker_loss"].item() * float(out["speaker_count"]) if speaker else 0.0]
    res = dict(val_mel_loss=tot[0] / max(tot[2], 1), val_mel_top1=tot[1] / max(tot[2], 1))
    if speaker and tot[4] > 0:
        res.update(val_speaker_acc=tot[3] / tot[4], val_speaker_loss=tot[5] / tot[4])
    return res


def _plain(x):
    """numpy scalars -> Python numbers, recursively (torch.load(weights_only=True) rejects numpy)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _provenance(cfg: TTSConfig) -> str:
    return f"codec: {cfg.codec}; caption encoder: {cfg.caption_encoder}"
