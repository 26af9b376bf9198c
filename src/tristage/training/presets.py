"""What each stage trains: a table, not `if stage == ...` in the trainer.

- stage1: everything trains except the speaker classifier; GRL off. The classifier exists
  from the start (so every checkpoint has the same keys) but trains only where the GRL is on.
- stage2: speaker_encoder + speaker_perceiver frozen; the emotion vector is computed in the
  forward pass (never cached) and feeds the speaker classifier through the GRL
  (`grl_lambda`, `speaker_loss_weight`); the classifier trains.
- stage3: every conditioner frozen (speaker, emotion, the caption adapters, and the classifier): the
  decoder alone trains, as the seed has it (~40-50% of the parameters at its scale); GRL off;
  lr x0.5 (the params value `stage3.lr_scale`, default 0.5: the one place it is set).
- finetune (`tristage finetune`, not a DAG stage): a trained model folder on a new voice's recordings,
  split as stage 3: the decoder alone trains (the speaker and emotion conditioners, the classifier and
  the caption module stay as trained; the caption module is the folder's adapter-baked table, so
  nothing could train there anyway); its lr and steps are `finetune.train` (finetune/config.py).
A stage's `unfreeze` param trains some of its preset's frozen modules anyway (`stage3.unfreeze:
[caption_peft]` is stage 3 as it was before the caption adapters counted as conditioners).
Frozen modules run in eval mode, so their outputs do not drift (no dropout noise either).
"""
from __future__ import annotations

import dataclasses

CONDITIONERS = ("speaker_encoder", "speaker_perceiver", "emotion_encoder", "emotion_perceiver",
                "emovec_layer", "emo_layer")


@dataclasses.dataclass(frozen=True)
class StagePreset:
    frozen: tuple[str, ...]  # top-level module names whose parameters don't train
    grl: bool  # speaker classifier on the emotion vector behind the GRL
    needs_init: bool  # starts from the previous stage's model.safetensors
    previous: str | None  # the stage to run first


PRESETS: dict[str, StagePreset] = {
    "stage1": StagePreset(frozen=("speaker_classifier",), grl=False, needs_init=False, previous=None),
    "stage2": StagePreset(frozen=("speaker_encoder", "speaker_perceiver"), grl=True, needs_init=True,
                          previous="stage1"),
    "stage3": StagePreset(frozen=CONDITIONERS + ("caption_peft", "speaker_classifier"), grl=False,
                          needs_init=True, previous="stage2"),
    "finetune": StagePreset(frozen=CONDITIONERS + ("caption_peft", "speaker_classifier"), grl=False,
                            needs_init=True, previous="stage3"),
}


def stage_preset(stage: str, stage_params=None) -> StagePreset:
    """The stage's preset, with the modules its params' `unfreeze` names trained after all."""
    preset = PRESETS[stage]
    unfreeze = set(getattr(stage_params, "unfreeze", None) or ())
    if not unfreeze:
        return preset
    return dataclasses.replace(preset, frozen=tuple(m for m in preset.frozen if m not in unfreeze))


def apply_preset(model, preset: StagePreset) -> dict:
    """Set requires_grad per the preset; return trainable / total parameter counts."""
    names = {n for n, _ in model.named_children()}
    unknown = set(preset.frozen) - names
    if unknown:
        raise ValueError(f"preset freezes unknown modules {sorted(unknown)}")
    for name, module in model.named_children():
        frozen = name in preset.frozen
        for p in module.parameters():
            p.requires_grad_(not frozen)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    modules = [n for n, m in model.named_children() if any(p.requires_grad for p in m.parameters())]
    return dict(trainable_params=trainable, total_params=total,
                trainable_fraction=round(trainable / max(total, 1), 6), trainable_modules=modules)


def set_train_mode(model, preset: StagePreset) -> None:
    """train() for the trainable modules, eval() for the frozen ones."""
    model.train()
    for name, module in model.named_children():
        if name in preset.frozen:
            module.eval()
