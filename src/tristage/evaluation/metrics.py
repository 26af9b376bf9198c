"""The layout of `metrics/evaluate.json` (contract keys per stage, the final stage's at the top)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from tristage.training.band import band_status, wilson_interval

# The audio judges' figures of a row (ground_truth, resynthesis, each stage; evaluation/audio.py), the plotted
# ones first
SUMMARY_KEYS = (
    "wer",
    "cer",
    "speaker_sim",
    "dnsmos_ovrl",
    "pitch_agreement",
    "speed_agreement",
    "emotion_transfer_acc",
)
EXTRA_KEYS = (
    "speaker_sim_other",
    "dnsmos_sig",
    "dnsmos_bak",
    "pitch_agreement_coarse",
    "speed_agreement_coarse",
    "emotion_acc_matched",
)

# Every evaluated stage carries these keys (None where it cannot be measured, e.g. no GRL in stage 1).
CONTRACT_KEYS = ("mel_loss", "mel_top1", "speaker_acc", "speaker_acc_band", "caption_cosine_mean",
                 "emotion_probe_acc", "speaker_probe_acc")


def stage_metrics(
    values: Mapping[str, Any], band: Sequence[float], caption_cosine_mean: float | None
) -> dict:
    """One stage's dict: the contract keys (in order), then any extra measurements."""
    out = {k: values.get(k) for k in CONTRACT_KEYS}
    acc, n = values.get("speaker_acc"), values.get("speaker_acc_n")
    out["speaker_acc_band"] = band_status(acc, band, n)  # the 95% interval's verdict (edge: can't tell)
    if acc is not None and n:
        out["speaker_acc_ci95"] = [round(v, 4) for v in wilson_interval(acc, n)]
    out["caption_cosine_mean"] = caption_cosine_mean
    out.update({k: v for k, v in values.items() if k not in out})
    return out


def evaluate_document(per_stage: Mapping[str, Mapping[str, Any]], final_stage: str, band: Sequence[float],
                      extra: Mapping[str, Any] | None = None) -> dict:
    """{contract keys of the final stage, "final_stage", "speaker_acc_band_range", <stage>: {...}, ...extra}.

    The top level repeats the final stage's keys so `dvc metrics show` lists them directly."""
    doc: dict[str, Any] = {k: per_stage[final_stage].get(k) for k in CONTRACT_KEYS}
    doc["final_stage"] = final_stage
    doc["speaker_acc_band_range"] = list(band)
    for stage, d in per_stage.items():
        doc[stage] = dict(d)
    doc.update(extra or {})
    return doc
