"""CaptionPEFT's parameters and the table facts its adapters read, shared by both implementations.

    peft = CaptionPEFT(table, adapters)  # captions.config.CaptionAdapters; the class `adapters.impl` names
    out = peft(ids, mask)          # ids (B, L) table rows, mask (B, L) bool
    out.states (B, L, dim), out.mask (B, L), out.kl (), out.ortho ()

`impl: reference` (reference.py) is the seed's math in plain PyTorch; `impl: fused` (fused.py) computes
the same function fast. Both subclass CaptionPEFT and keep the parameters and buffers made here, so one
state dict loads into either. The adapter set is fixed here from the table's vocabulary:
- a LoRA per token content (K of them: a token and its context rows share one; row 0, "<unk>", holds
  the adapter of unseen tokens);
- a VAE per attribute value (M of them); its encoder reads a row's coordinates in an orthonormal basis
  of the value's rows (basis.py; k of them); its decoder matrix is the value's own or, with
  `vae_decoder: attribute`, shared by an attribute's values (A of them), each value keeping its encoder,
  latent distribution and output bias.
The table vectors are non-persistent buffers: a checkpoint holds adapters only.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from tristage.captions.config import CaptionAdapters
from tristage.captions.peft.basis import value_coords


class CaptionPEFT(nn.Module):
    """Calling CaptionPEFT(table, adapters) builds the implementation `adapters.impl` names (default `fused`):
    each subclass registers itself with `class X(CaptionPEFT, impl="name")`."""

    IMPLS: dict[str, type] = {}

    def __init_subclass__(cls, impl: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if impl is not None:
            CaptionPEFT.IMPLS[impl] = cls

    def __new__(cls, *args, **kwargs):
        if cls is CaptionPEFT:
            impl = (args[1] if len(args) > 1 else kwargs.get("adapters", CaptionAdapters())).impl
            if impl not in CaptionPEFT.IMPLS:
                raise ValueError(f"stage1.peft.impl: {impl!r}, expected one of "
                                 f"{', '.join(sorted(CaptionPEFT.IMPLS))}")
            cls = CaptionPEFT.IMPLS[impl]
        return super().__new__(cls)

    def __init__(self, table, adapters: CaptionAdapters = CaptionAdapters()):
        super().__init__()
        r, alpha, zdim = int(adapters.lora_rank), float(adapters.lora_alpha), int(adapters.vae_latent_dim)
        vectors = torch.as_tensor(table.vectors, dtype=torch.float32)
        N, d = vectors.shape
        is_attr, slot = _row_slots(table, N)
        n_lora = int(slot[~is_attr].max()) + 1 if (~is_attr).any() else 1
        n_vae = int(slot[is_attr].max()) + 1 if is_attr.any() else 0
        dec_slot = _decoder_slots(table, adapters.vae_decoder, n_vae)
        n_dec = int(dec_slot.max()) + 1 if n_vae else 0
        self.dim, self.rank, self.zdim, self.scaling = d, r, zdim, alpha / r
        self.register_buffer("vectors", vectors.clone(), persistent=False)  # (N, d)
        self.register_buffer("is_attr", is_attr.clone(), persistent=False)  # (N,)
        self.register_buffer("slot", slot.clone(), persistent=False)  # (N,) LoRA or VAE slot of each row
        self.register_buffer("dec_slot", dec_slot, persistent=False)  # (M,) each value's decoder
        k = self._vae_inputs(vectors, is_attr, slot, n_vae)
        # LoRA, one per token content
        self.lora_a = nn.Parameter(torch.randn(n_lora, d, r) / math.sqrt(d))  # (K, d, r)
        self.lora_b = nn.Parameter(torch.zeros(n_lora, r, d))  # (K, r, d): zero -> identity at init
        # VAE, one per attribute value; the encoder reads the value's basis coordinates (k of them); the
        # decoder matrix per value, or per attribute (shared by its values)
        self.vae_mu_w = nn.Parameter(torch.randn(n_vae, k, zdim) / math.sqrt(d))  # (M, k, z)
        self.vae_mu_b = nn.Parameter(torch.zeros(n_vae, zdim))
        self.vae_logvar_w = nn.Parameter(torch.zeros(n_vae, k, zdim))  # start at unit variance
        self.vae_logvar_b = nn.Parameter(torch.zeros(n_vae, zdim))
        self.vae_dec_w = nn.Parameter(torch.zeros(n_dec, zdim, d))  # (M or A, z, d): zero -> identity at init
        self.vae_dec_b = nn.Parameter(torch.zeros(n_vae, d))
        ctx = getattr(table, "contextualiser", None)
        self.context = copy.deepcopy(ctx) if ctx is not None else None  # frozen: buffers only

    def _vae_inputs(self, vectors: torch.Tensor, is_attr: torch.Tensor, slot: torch.Tensor,
                    n_vae: int) -> int:
        """The VAE's inputs, as buffers: each attribute row's coordinates in its value's basis, then each
        value's mean row (the mean of its rows: the orthogonality's mean path) -> k, the coordinates."""
        N, d = vectors.shape
        rows = is_attr.nonzero().squeeze(1)  # (R,) the attribute rows
        coords = value_coords(vectors, rows, slot[rows], n_vae, max_rank=max(1, d // 2))  # (R, k)
        attr_pos = torch.full((N,), -1, dtype=torch.long)
        attr_pos[rows] = torch.arange(len(rows))
        self.register_buffer("attr_pos", attr_pos, persistent=False)  # (N,) row -> index in vae_inputs
        n_rows = torch.bincount(slot[rows], minlength=n_vae).clamp(min=1).float()[:, None]  # (M, 1)

        def mean(x: torch.Tensor) -> torch.Tensor:  # (R, c) -> (M, c), per value
            return torch.zeros(n_vae, x.shape[1]).index_add(0, slot[rows], x) / n_rows

        # (R + M, k) the encoders' inputs; (R + M, d) the rows the decoders' output is added to: the same
        # rows as table vectors
        self.register_buffer("vae_inputs", torch.cat([coords, mean(coords)]), persistent=False)
        self.register_buffer("vae_base", torch.cat([vectors[rows], mean(vectors[rows])]), persistent=False)
        self.n_attr_rows = len(rows)  # R
        return coords.shape[1]


def _row_slots(table, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) whether each row is an attribute row, (N,) its adapter: LoRA slot or VAE slot (the value)."""
    is_attr = getattr(table, "is_attribute", None)
    if is_attr is None:
        is_attr = torch.zeros(N, dtype=torch.bool)
    is_attr = torch.as_tensor(is_attr, dtype=torch.bool)
    slot = getattr(table, "adapter_ids", None)
    if slot is None:  # a table without adapter slots: one LoRA per row, one VAE per attribute row
        slot = torch.where(is_attr, is_attr.long().cumsum(0) - 1, torch.arange(N))
    return is_attr, torch.as_tensor(slot, dtype=torch.long)


def _decoder_slots(table, decoder: str, n_vae: int) -> torch.Tensor:
    """(M,) the decoder of each value: itself, or its attribute's (`vae_decoder: attribute`)."""
    if decoder not in ("value", "attribute"):
        raise ValueError(f"stage1.peft.vae_decoder: {decoder!r}, expected value or attribute")
    groups = getattr(table, "value_attribute", None)
    if decoder == "attribute" and groups is not None and n_vae:
        return torch.as_tensor(groups, dtype=torch.long)
    return torch.arange(n_vae)
