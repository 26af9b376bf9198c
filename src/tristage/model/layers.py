"""Building blocks shared by the decoder and the conditioning encoders (nanoGPT style).

Masks are boolean, True = may attend. Shapes: B batch, L query length, S key length,
C channels, H heads.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Multi-head attention; self-attention when `ctx` is None, else cross-attention."""

    def __init__(self, d_model: int, n_head: int, d_ctx: int | None = None, dropout: float = 0.0):
        super().__init__()
        assert d_model % n_head == 0, f"d_model {d_model} not divisible by n_head {n_head}"
        self.n_head = n_head
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_ctx or d_model, 2 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, cache: dict | None = None,
                weights: tuple[int, int] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # x (B, L, C), ctx (B, S, Cctx) or None, mask (B, 1, L, S) | (B, 1, 1, S) bool.
        # cache (generation): a dict this layer fills. Self-attention appends this call's keys/values
        # to the cached ones (S = cached + L); cross-attention computes the context's once and reuses them.
        # weights (n, start): also return the attention probabilities of the first n heads for the
        # queries from `start` on, (B, n, L - start, S) (the decoder's guided-attention loss reads them)
        B, L, C = x.shape
        h = self.n_head
        q = self.q(x).view(B, L, h, C // h).transpose(1, 2)  # (B, h, L, C/h)
        if ctx is not None and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]  # the context's keys/values, computed on the first call
        else:
            src = x if ctx is None else ctx
            S = src.shape[1]
            k, v = self.kv(src).split(C, dim=2)
            k = k.view(B, S, h, C // h).transpose(1, 2)  # (B, h, S, C/h)
            v = v.view(B, S, h, C // h).transpose(1, 2)
            if cache is not None:
                if ctx is None and "k" in cache:
                    k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = self.proj(y.transpose(1, 2).reshape(B, L, C))  # (B, L, C)
        if weights is None:
            return y
        n, start = weights
        att = q[:, :n, start:] @ k[:, :n].transpose(-2, -1) / (C // h) ** 0.5  # (B, n, L - start, S)
        if mask is not None:
            att = att.masked_fill(~mask[:, :, start:] if mask.shape[2] > 1 else ~mask, float("-inf"))
        return y, att.float().softmax(dim=-1)


class MLP(nn.Module):
    def __init__(self, d_model: int, dropout: float = 0.0, mult: int = 4):
        super().__init__()
        self.fc = nn.Linear(d_model, mult * d_model)
        self.proj = nn.Linear(mult * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, d_model: int, n_head: int, d_ctx: int | None = None, cross: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_head, dropout=dropout)
        self.cross = cross
        if cross:
            self.ln_x = nn.LayerNorm(d_model)
            self.xattn = Attention(d_model, n_head, d_ctx=d_ctx, dropout=dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, ctx: torch.Tensor | None = None,
                ctx_mask: torch.Tensor | None = None, cache: dict | None = None,
                weights: tuple[int, int] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # x (B, L, C); mask (B, 1, L, L) (with a cache: (B, 1, L, cached + L)); ctx (B, S, Cctx);
        # ctx_mask (B, 1, 1, S); cache: {"self": {...}, "cross": {...}} filled by the attention layers;
        # weights: (n, start) also returns self-attention probabilities (Attention.forward)
        a = self.attn(self.ln1(x), mask=mask, cache=None if cache is None else cache.setdefault("self", {}),
                      weights=weights)
        att = None
        if weights is not None:
            a, att = a
        x = x + a
        if self.cross:
            x = x + self.xattn(self.ln_x(x), ctx=ctx, mask=ctx_mask,
                               cache=None if cache is None else cache.setdefault("cross", {}))
        x = x + self.mlp(self.ln2(x))
        return x if weights is None else (x, att)


def key_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, S) bool -> (B, 1, 1, S); a row with no valid key keeps its first key (no NaN)."""
    valid = valid.clone()
    valid[~valid.any(dim=1), 0] = True
    return valid[:, None, None, :]
