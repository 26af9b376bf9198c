"""What a finished training stage leaves behind: its metrics and its files.

`models/<stage>/` (model.safetensors, config.json, trainer_state.pt, training.json),
`metrics/<stage>.json` and `plots/<stage>/` (train.tsv and val.tsv for `dvc plots`, losses.png,
speaker_acc.png).
Every output says where its figures come from (`provenance`: codec and caption encoder,
random-init or pretrained).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tristage.fsio import atomic_path, write_json
from tristage.model.config import TTSConfig
from tristage.training.band import band_advice, band_status
from tristage.training.plots import plot_losses, plot_speaker_acc, write_logs
from tristage.training.state import TrainState

log = logging.getLogger("tristage.training")


def provenance(cfg: TTSConfig) -> str:
    return f"codec: {cfg.codec}; caption encoder: {cfg.caption_encoder}"


def final_metrics(state: TrainState, counts: dict, world: int, cfg: TTSConfig, adversary=None,
                  band: tuple[float, float] | None = None) -> dict[str, Any]:
    """The dict written to metrics/<stage>.json (non-finite values become None)."""
    last_eval = next((r for r in reversed(state.history) if "val_mel_loss" in r), {})
    mean = state.window_mean
    metrics: dict[str, Any] = dict(mel_loss=mean("mel_loss"), mel_top1=mean("mel_top1"), **counts)
    metrics.update(val_mel_loss=last_eval.get("val_mel_loss"), val_mel_top1=last_eval.get("val_mel_top1"),
                   initial_mel_loss=state.initial.get("initial_mel_loss"),
                   initial_train_mel_loss=state.initial.get("initial_train_mel_loss"),
                   steps=state.step, samples_per_s=state.samples_seen / max(state.train_time, 1e-9),
                   best_step=state.best["step"], best_val_mel_loss=state.best["val_mel_loss"],
                   world_size=world, codec=cfg.codec, caption_encoder=cfg.caption_encoder,
                   resumed_from_step=state.resumed_from)
    if adversary is not None:
        acc = mean("speaker_acc")
        val_acc = last_eval.get("val_speaker_acc")
        n = last_eval.get("val_speaker_n") if val_acc is not None else None
        metrics.update(speaker_loss=mean("speaker_loss"), speaker_acc=acc, val_speaker_acc=val_acc,
                       val_speaker_n=n,
                       speaker_acc_band=band_status(val_acc if val_acc is not None else acc, band, n),
                       band_warnings=len(state.band_log), **adversary.metrics())
        metrics["band_advice"] = band_advice(metrics["speaker_acc_band"], adversary.band.adversary,
                                             metrics["grl_lambda"], metrics["speaker_loss_weight"])
    metrics = {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in metrics.items()}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def write_model(out: Path, model, trainer_state: dict, stage: str, fingerprint: str, info: dict) -> None:
    """models/<stage>/: weights (safetensors), trainer_state.pt, training.json; each atomic. The config and
    what synthesis needs come from `synthesis.folder.export_model_folder`."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"stage": stage, "fingerprint": fingerprint})
    with atomic_path(out / "trainer_state.pt") as tmp:
        torch.save(trainer_state, tmp)
    write_json(out / "training.json", info)


def write_reports(stage: str, stage_params, history: list[dict], metrics: dict, cfg: TTSConfig, speaker: bool,
                  tracker=None) -> None:
    """metrics/<stage>.json, plots/<stage>/ (train.tsv: the train rows, val.tsv: the validation rows; the
    charts), and the same to the tracker."""
    sp = stage_params
    write_json(sp.metrics, metrics)
    plots = Path(sp.plots_dir)
    write_logs(history, plots)
    title = f"{stage} ({provenance(cfg)})"
    plot_losses(history, plots / "losses.png", title)
    if speaker:
        plot_speaker_acc(history, tuple(sp.speaker_acc_band), plots / "speaker_acc.png", title)
    if tracker is not None:
        tracker.set_tags({"codec": cfg.codec, "caption_encoder": cfg.caption_encoder})
        for path in sorted(plots.glob("*")):
            tracker.log_artifact(path, artifact_path="plots")
    log.info("%s: mel_loss %.4f (initial %.4f), val_mel_loss %s; %s", stage, metrics["mel_loss"],
             metrics["initial_train_mel_loss"] or float("nan"), metrics["val_mel_loss"], provenance(cfg))
