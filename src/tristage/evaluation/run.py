"""The `evaluate` stage: every trained stage on the same validation split, probes, audio samples.

    doc = run_evaluate(params, tracker)   # -> the dict written to metrics/evaluate.json

Per stage (`evaluate.stages`, each read from `models/<stage>/`):
- mel_loss / mel_top1 of the decoder on the validation split (the training stages' own split:
  same seed and val_fraction, so no stage saw these utterances);
- speaker_acc of the GRL's speaker classifier on the emotion vector, and its band status. In a
  stage whose chain never trained the classifier (stage1), it is None: a random classifier's
  accuracy says nothing;
- speaker_probe_acc / emotion_probe_acc: fresh logistic-regression probes fitted on the frozen
  emotion vectors (fixed split by seed). The speaker probe should fall from stage1 to stage2:
  that, not the GRL classifier, is the proof that the emotion vector lost the speaker;
- caption_cosine_mean: the stage's own caption module (its trained adapters, eval mode) vs the
  caption encoder on the caption_vectors stage's held-out captions (evaluation/captions.py);
  `table_caption_cosine_mean` (top level) is the raw table's figure from caption_vectors;
- audio: the fixed sample plan (matched and cross speaker/emotion pairs) generated with the
  delay pattern and decoded by the features stage's codec. The model's stop head decides each
  sample's length (`max_sample_frames` caps it); `duration_ratio` is the median of predicted /
  true length, the true one being the utterance whose text is spoken. With a random-init codec the audio
  is not speech, and `samples.json` and the metrics say so.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tristage.device import resolve_device
from tristage.environment import deterministic_torch
from tristage.errors import UserError
from tristage.evaluation.captions import caption_cosine, heldout_states
from tristage.evaluation.criteria import seed_criteria
from tristage.evaluation.metrics import evaluate_document, stage_metrics
from tristage.evaluation.probes import center_crop, run_probes
from tristage.evaluation.samples import write_samples
from tristage.features.codec import codec_speaks

log = logging.getLogger("tristage.evaluate")

# codes (K, T) long -> (wav float32 (N,), sample_rate)
Vocoder = Callable[[torch.Tensor], tuple[np.ndarray, int]]


def classifier_trained(stage: str) -> bool:
    """True when `stage` or a stage before it trained the speaker classifier (GRL on)."""
    from tristage.training.presets import PRESETS

    while stage is not None:
        if PRESETS[stage].grl:
            return True
        stage = PRESETS[stage].previous
    return False


def synthesize(model, data, table, plan: list[dict], ep, max_ref: int, device: str) -> list[torch.Tensor]:
    """Codes (K, T) for each request of the plan; the model's stop head decides T (capped at
    `max_sample_frames`); sampling seeded per request."""
    pos = {ex.id: i for i, ex in enumerate(data.examples)}
    out = []
    for r, req in enumerate(plan):
        spk_i, emo_i = pos[req["speaker_ref"]["id"]], pos[req["emotion_ref"]["id"]]
        gen = torch.Generator(device=device).manual_seed(ep.seed + r)
        codes = model.generate(req["text"], table.encode(req["caption"]),
                               center_crop(data.features(spk_i)[0], max_ref),
                               center_crop(data.features(emo_i)[0], max_ref), n_frames=ep.max_sample_frames,
                               temperature=ep.temperature, top_k=ep.top_k, greedy=ep.temperature == 0,
                               generator=gen)
        out.append(codes.cpu())
    return out


def true_frames(data, plan: list[dict]) -> list[int]:
    """Frames of the utterance whose text each request speaks (its speaker reference, in the plan)."""
    pos = {ex.id: i for i, ex in enumerate(data.examples)}
    return [data.examples[pos[req["speaker_ref"]["id"]]].n_frames for req in plan]


def duration_ratio(predicted: list[int], true: list[int]) -> float | None:
    """Median of predicted / true length over the requests (1.0 = the model ends where the speaker did)."""
    ratios = [p / t for p, t in zip(predicted, true) if t > 0]
    return float(np.median(ratios)) if ratios else None


def default_vocoder(features_dir: Path, device: str) -> tuple[Vocoder, dict]:
    """The features stage's codec (the very weights that made the training codes)."""
    from tristage.features.codec import decode_codes, load_codec
    from tristage.fsio import read_json

    codec = load_codec(features_dir, device=device)
    info = read_json(Path(features_dir) / "meta.json")["codec"]  # name, path, pretrained, sample_rate, ...
    return (lambda codes: decode_codes(codec, codes)), {
        k: info.get(k) for k in ("name", "kind", "path", "pretrained", "speech")
    }


def _caption_cosine(path: Path) -> float | None:
    from tristage.fsio import read_json

    if not Path(path).is_file():
        log.warning("%s not found: caption_cosine_mean is None (run caption_vectors)", path)
        return None
    v = read_json(path).get("caption_cosine_mean")
    return None if v is None else float(v)


@dataclass
class _Run:
    """What every stage is evaluated with, and what the stages add up: the sample `plan` (made once, from
    the first stage's validation rows) and the `samples.json` entries."""

    params: Any
    src: Any  # training.data.Sources
    device: str
    band: tuple[float, float]  # stage2.speaker_acc_band
    held: Any  # the caption_vectors stage's held-out captions (evaluation/captions.py), or None
    vocoder: Vocoder
    codec_info: dict
    judges: Any  # evaluation.audio.AudioJudges
    plan: list[dict] | None = None
    entries: list[dict] = field(default_factory=list)

    @property
    def ep(self):
        return self.params.evaluate


def _check_models(ep) -> None:
    for stage in ep.stages:
        if not (Path(ep.models_dir) / stage / "model.safetensors").is_file():
            raise UserError(f"{Path(ep.models_dir) / stage}/model.safetensors not found: run {stage} first "
                            f"(dvc repro {stage}), or drop it from evaluate.stages")


def _stage_values(run: _Run, stage: str, model, data) -> dict[str, Any]:
    """Validation losses, the GRL classifier's accuracy (where the chain trained it) and the probes."""
    from tristage.training.validation import validate

    ep, sp = run.ep, run.params.stage(stage)
    trained = classifier_trained(stage)
    val = validate(model, data.val_batches(ep.batch_size), run.device, speaker=trained)
    values: dict[str, Any] = dict(mel_loss=val.get("val_mel_loss"), mel_top1=val.get("val_mel_top1"),
                                  speaker_acc=val.get("val_speaker_acc") if trained else None,
                                  speaker_acc_n=val.get("val_speaker_n") if trained else None,
                                  speaker_loss=val.get("val_speaker_loss") if trained else None)
    values.update(run_probes(model, data, run.src.manifest, ep, sp.max_ref_frames, run.device))
    values.update(n_val_utterances=len(data.val_idx), speaker_classifier_trained=trained,
                  n_skipped_too_long=data.n_skipped_too_long,
                  n_skipped_text_too_long=data.n_skipped_text_too_long)
    return values


def _stage_samples(run: _Run, stage: str, model, data) -> float | None:
    """Generate, decode and write the plan's samples, hand them to the audio judges -> duration_ratio."""
    ep, sp = run.ep, run.params.stage(stage)
    if run.plan is None:
        run.plan = run.judges.plan(data)  # sample_plan of the validation rows + unseen speakers' requests
    codes = synthesize(model, data, run.src.table, run.plan, ep, sp.max_ref_frames, run.device)
    wavs, sr = [], 0
    for c in codes:
        wav, sr = run.vocoder(c)
        wavs.append(wav)
    truth = true_frames(data, run.plan)
    ratio = duration_ratio([int(c.shape[1]) for c in codes], truth)
    run.entries += write_samples(
        Path(ep.samples_dir),
        stage,
        run.plan,
        wavs,
        sr,
        run.codec_info,
        extra=[dict(n_frames=int(c.shape[1]), true_frames=t) for c, t in zip(codes, truth)],
    )
    run.judges.add_stage(stage, model, data, run.plan, wavs, sr, sp.max_ref_frames, run.device,
                         length_source="model")
    return ratio


def _evaluate_stage(run: _Run, stage: str) -> dict[str, Any]:
    """One stage's model, loaded from `models/<stage>/` -> its metrics (before the audio judges' rows)."""
    from tristage.model.folder import load_model
    from tristage.training.data import TrainData

    model, cfg = load_model(Path(run.ep.models_dir) / stage, run.device, table=run.src.table)
    data = TrainData(run.src, run.params.stage(stage), cfg.max_text_len, cfg.max_frames,
                     frontend=cfg.text_frontend, voice=cfg.phoneme_voice)
    values = _stage_values(run, stage, model, data)
    values["duration_ratio"] = _stage_samples(run, stage, model, data)
    metrics = stage_metrics(values, run.band, caption_cosine(model.caption_peft, run.src.table, run.held))
    log.info("%s: mel_loss %.4f top1 %.3f speaker_acc %s speaker_probe %s emotion_probe %s", stage,
             values["mel_loss"] or math.nan, values["mel_top1"] or math.nan, _fmt(values["speaker_acc"]),
             _fmt(values["speaker_probe_acc"]), _fmt(values["emotion_probe_acc"]))
    return metrics


def _log_outputs(tracker, ep, src, plots: list[Path]) -> None:
    """Tags, plots, samples and the final stage's model to the tracking run."""
    tracker.set_tags(dict(codec=src.codec, caption_encoder=src.caption_encoder))
    for p in plots:
        tracker.log_artifact(p, artifact_path="plots")
    tracker.log_artifact(ep.samples_dir, artifact_path="samples")
    log_model(tracker, Path(ep.models_dir) / ep.stages[-1], ep.register_model)


def run_evaluate(
    params, tracker=None, sources=None, vocoder: tuple[Vocoder, dict] | None = None
) -> dict[str, Any]:
    from tristage.evaluation.audio import AudioJudges
    from tristage.evaluation.plots import write_plots
    from tristage.fsio import write_json
    from tristage.training.data import load_sources

    ep = params.evaluate
    deterministic_torch(ep.threads)
    band = tuple(params.stage2.speaker_acc_band)
    device = resolve_device(ep.device, "evaluate.device")
    _check_models(ep)
    src = sources if sources is not None else load_sources(ep)
    table_cos = _caption_cosine(ep.caption_metrics)
    held = heldout_states(src.table)
    voc, codec_info = vocoder if vocoder is not None else default_vocoder(ep.features, device)
    pretrained_codec = codec_speaks(codec_info)
    # audio judges (evaluation/audio.py): collect per stage, judge once at the end
    judges = AudioJudges(params, src, voc, codec_info, device)
    run = _Run(params, src, device, band, held, voc, codec_info, judges)
    per_stage = {stage: _evaluate_stage(run, stage) for stage in ep.stages}
    audio_rows = judges.finish(tracker)  # ground_truth, resynthesis, <stage>: wer, cer, speaker_sim, ...
    for stage in ep.stages:
        per_stage[stage].update(audio_rows.get(stage, {}))
    note = _note(src, pretrained_codec)
    write_json(Path(ep.samples_dir) / "samples.json", dict(note=note, samples=run.entries))
    trainable = {s: _trainable_fraction(Path(ep.models_dir) / s) for s in ep.stages}
    doc = evaluate_document(per_stage, ep.stages[-1], band, extra=dict(
        seed_criteria=seed_criteria(per_stage, trainable, band),
        codec=src.codec, caption_encoder=src.caption_encoder, audio_is_speech=pretrained_codec, note=note,
        n_samples=len(run.entries), sample_from=ep.sample_from, audio_judges=judges.info(),
        table_caption_cosine_mean=table_cos,
        n_heldout_captions=len(held.captions) if held else 0,
        **{row: audio_rows[row] for row in ("ground_truth", "resynthesis") if row in audio_rows}))
    write_json(ep.metrics, doc)
    plots = write_plots(Path(ep.plots_dir), per_stage, band)
    if tracker is not None:
        _log_outputs(tracker, ep, src, plots)
    return doc


def log_model(tracker, folder: Path, register_as: str | None) -> None:
    """The final stage's model folder as an MLflow pyfunc model of this run (never fails the stage)."""
    if not getattr(tracker, "active", False) or not (folder / "synthesis.json").is_file():
        return
    try:
        from tristage.synthesis.pyfunc import log_synthesis_model

        info = log_synthesis_model(folder, "model", register_as)
        log.info("logged %s as the MLflow model %s%s", folder, info.model_uri,
                 f", registered as {register_as}" if register_as else "")
    except Exception as exc:  # tracking must never stop the stage
        log.warning(
            "could not log %s as an MLflow model: %s", folder, str(exc).splitlines()[0] if str(exc) else exc
        )


def _trainable_fraction(folder: Path) -> float | None:
    """The stage's trainable fraction, as its training run recorded it (models/<stage>/training.json)."""
    from tristage.fsio import read_json

    p = folder / "training.json"
    return read_json(p).get("trainable_fraction") if p.is_file() else None


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _note(src, pretrained_codec: bool) -> str:
    parts = [f"codec: {src.codec}", f"caption encoder: {src.caption_encoder}"]
    if not pretrained_codec:
        parts.append(
            "the codec is a random-init DAC: the samples are not speech, only proof that synthesis runs"
        )
    return "; ".join(parts)
