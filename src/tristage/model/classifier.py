"""Speaker classifier on the emotion vector (sits behind the gradient reversal layer).

Its input is standardised per feature over the batch (BatchNorm without affine; running
statistics in eval mode). The emotion vector of a stage-1 model varies little around a large
constant (speaker information sits in small deviations that a linear probe finds after
standardising); without this the classifier sees a near-constant input, stays at chance, and
the GRL has nothing to push against. It also means the emotion encoder can't "hide" the
speaker by shrinking the deviations: only removing them lowers the classifier's accuracy.
`standardize = False` (the seed's plain GRL, `stage2.adversary: seed`; the model config's
`classifier_standardize`) reads the raw vector; the statistics stay in the state dict either way.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SpeakerClassifier(nn.Module):
    def __init__(self, d_in: int, hidden: int, n_speakers: int, standardize: bool = True):
        super().__init__()
        self.standardize = standardize
        self.norm = nn.BatchNorm1d(d_in, affine=False)
        self.fc = nn.Linear(d_in, hidden)
        self.out = nn.Linear(hidden, max(n_speakers, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (B, d_in) -> logits (B, n_speakers)
        if not self.standardize:
            pass
        elif self.training and x.shape[0] == 1:  # batch statistics need 2+ rows: use the running ones
            x = F.batch_norm(
                x, self.norm.running_mean, self.norm.running_var, training=False, eps=self.norm.eps
            )
        else:
            x = self.norm(x)
        return self.out(F.gelu(self.fc(x)))
