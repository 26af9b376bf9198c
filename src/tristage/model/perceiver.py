"""Conditioning encoder (log-mel -> frame features) and perceiver resampler (-> K latents).

Used twice: `speaker_encoder` + `speaker_perceiver` (reference mel of another utterance of the
speaker -> `speaker_latents` prefix vectors) and `emotion_encoder` + `emotion_perceiver`
(reference mel -> one latent, then `emovec_layer` -> `emo_layer` -> the emotion vector).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from tristage.model.layers import MLP, Attention, Block, key_mask


# one config dataclass per component, as nanoGPT's GPTConfig (style.md): alike fields, separate owners
@dataclasses.dataclass
class EncoderConfig:
    n_mels: int = 80
    d_model: int = 96
    n_layer: int = 1
    n_head: int = 4
    dropout: float = 0.0


class ConditioningEncoder(nn.Module):
    """Two convolutions (the second halves the frame rate) then transformer blocks."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(
            [Block(cfg.d_model, cfg.n_head, dropout=cfg.dropout) for _ in range(cfg.n_layer)]
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # mel (B, T, n_mels), mask (B, T) bool -> (B, T', C), (B, T') with T' = ceil(T / 2)
        x = mel.masked_fill(~mask[..., None], 0.0).transpose(1, 2)  # (B, n_mels, T)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T', C)
        mask = mask[:, ::2]  # (B, T')
        am = key_mask(mask)  # (B, 1, 1, T')
        for block in self.blocks:
            x = block(x, mask=am)
        return self.ln_f(x), mask


# one config dataclass per component, as nanoGPT's GPTConfig (style.md): alike fields, separate owners
@dataclasses.dataclass
class PerceiverConfig:
    d_model: int = 96
    n_latents: int = 8
    n_layer: int = 1
    n_head: int = 4
    d_out: int = 128
    dropout: float = 0.0


class PerceiverResampler(nn.Module):
    """Learned latents attend to [inputs; latents] (Flamingo-style), n_layer times."""

    def __init__(self, cfg: PerceiverConfig):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(cfg.n_latents, cfg.d_model) * 0.02)
        self.layers = nn.ModuleList()
        for _ in range(cfg.n_layer):
            self.layers.append(nn.ModuleDict(dict(
                ln_x=nn.LayerNorm(cfg.d_model), ln_q=nn.LayerNorm(cfg.d_model),
                attn=Attention(cfg.d_model, cfg.n_head, dropout=cfg.dropout),
                ln_m=nn.LayerNorm(cfg.d_model), mlp=MLP(cfg.d_model, cfg.dropout))))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x (B, T, C), mask (B, T) bool -> (B, n_latents, d_out)
        B = x.shape[0]
        lat = self.latents[None].expand(B, -1, -1)  # (B, N, C)
        full_mask = key_mask(torch.cat([mask, mask.new_ones(B, lat.shape[1])], dim=1))  # (B, 1, 1, T+N)
        for layer in self.layers:
            q = layer["ln_q"](lat)
            ctx = torch.cat([layer["ln_x"](x), q], dim=1)  # (B, T+N, C)
            lat = lat + layer["attn"](q, ctx=ctx, mask=full_mask)
            lat = lat + layer["mlp"](layer["ln_m"](lat))
        return self.proj(self.ln_f(lat))
