"""What a caption module returns (`CaptionStates`), and every table row through one (`enhanced_table`)."""
from __future__ import annotations

import torch
import torch.nn as nn


class CaptionStates:
    """A caption batch's states and the PEFT's two losses. `kl` may be given as a function that computes
    it: it then runs on the first read (inference computes it only for a caller that reads it, such as
    validation's loss; synthesis never does)."""

    __slots__ = ("states", "mask", "ortho", "_kl")

    def __init__(self, states: torch.Tensor, mask: torch.Tensor, kl, ortho: torch.Tensor):
        self.states = states  # (B, L, dim), zero at masked positions
        self.mask = mask  # (B, L) bool
        self.ortho = ortho  # () unweighted
        self._kl = kl  # () unweighted, or a function -> it

    @property
    def kl(self) -> torch.Tensor:
        if callable(self._kl):
            self._kl = self._kl()
        return self._kl


@torch.no_grad()
def enhanced_table(caption_module: nn.Module, n_rows: int, chunk: int = 4096) -> torch.Tensor:
    """Every table row through a caption module in eval mode (LoRA / VAE mean path), without the
    contextualiser (rows, not a caption) -> (n_rows, dim) float32 on the CPU."""
    was = caption_module.training
    caption_module.eval()
    dev = next((b.device for b in caption_module.buffers()), torch.device("cpu"))
    kw = {"context": False} if getattr(caption_module, "context", None) is not None else {}
    out = []
    for s in range(0, n_rows, chunk):
        ids = torch.arange(s, min(n_rows, s + chunk), device=dev)[None]  # (1, n)
        out.append(caption_module(ids, torch.ones_like(ids, dtype=torch.bool), **kw).states[0].float().cpu())
    caption_module.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)
