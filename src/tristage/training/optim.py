"""The optimizer and learning-rate schedule of a training stage.

AdamW with weight decay on matrices only; the speaker classifier's parameters get their own
groups at `lr x classifier_lr_scale`; linear warm-up, then cosine down to `min_lr_ratio x lr`.
"""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to min_ratio (step counts from 0)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(model, stage_params, classifier_lr_scale: float = 1.0):
    """-> (AdamW over the trainable parameters, its LambdaLR schedule)."""
    sp = stage_params
    lr = sp.lr * sp.lr_scale
    groups = []
    for is_classifier in (False, True):
        trainable = [p for n, p in model.named_parameters()
                     if p.requires_grad and n.startswith("speaker_classifier.") == is_classifier]
        for decay in (True, False):
            selected = [p for p in trainable if (p.dim() >= 2) == decay]
            if selected:
                groups.append(dict(params=selected, weight_decay=sp.weight_decay if decay else 0.0,
                                   lr=lr * (classifier_lr_scale if is_classifier else 1.0)))
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, sp.warmup_steps, sp.steps, sp.min_lr_ratio))
    return optimizer, scheduler
