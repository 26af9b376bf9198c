"""Validation of a model on fixed batches (used by the trainer at each evaluation and by `evaluate`).

    res = validate(model, data.val_batches(16), "cpu", speaker=True)
    res["val_mel_loss"], res["val_mel_top1"], res["val_speaker_acc"], res["val_speaker_loss"]
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch

from tristage.training.data import to_device


@dataclasses.dataclass
class ValTotals:
    """Sums over the validation batches (losses weighted by their token / utterance counts)."""
    mel_loss: float = 0.0  # sum of mel_loss x mel_count
    mel_correct: float = 0.0
    mel_count: float = 0.0
    speaker_correct: float = 0.0
    speaker_count: float = 0.0
    speaker_loss: float = 0.0  # sum of speaker_loss x speaker_count


@torch.no_grad()
def validate(model, batches: list[dict], device: str, speaker: bool,
             autocast=nullcontext) -> dict[str, float]:
    """Token-weighted val_mel_loss / val_mel_top1 over fixed batches; with `speaker`, also the speaker
    classifier's accuracy and loss on the emotion vector (speaker head on, GRL at lambda 0)."""
    if not batches:
        return {}
    model.eval()
    tot = ValTotals()
    for batch in batches:
        batch = to_device(batch, device)
        with autocast():
            out = model(batch, speaker_head=speaker)
        n_tokens = float(out["mel_count"])
        tot.mel_loss += out["mel_loss"].item() * n_tokens
        tot.mel_correct += out["mel_correct"].item()
        tot.mel_count += n_tokens
        if speaker:
            tot.speaker_correct += out["speaker_correct"].item()
            tot.speaker_count += out["speaker_count"].item()
            tot.speaker_loss += out["speaker_loss"].item() * float(out["speaker_count"])
    n_tokens = max(tot.mel_count, 1)
    res = dict(val_mel_loss=tot.mel_loss / n_tokens, val_mel_top1=tot.mel_correct / n_tokens)
    if speaker and tot.speaker_count > 0:
        res.update(val_speaker_acc=tot.speaker_correct / tot.speaker_count,
                   val_speaker_loss=tot.speaker_loss / tot.speaker_count,
                   val_speaker_n=int(tot.speaker_count))
    return res
