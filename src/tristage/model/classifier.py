"""Speaker classifier on the emotion vector (sits behind the gradient reversal layer)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SpeakerClassifier(nn.Module):
    def __init__(self, d_in: int, hidden: int, n_speakers: int):
        super().__init__()
        self.fc = nn.Linear(d_in, hidden)
        self.out = nn.Linear(hidden, max(n_speakers, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (B, d_in) -> logits (B, n_speakers)
        return self.out(F.gelu(self.fc(x)))
