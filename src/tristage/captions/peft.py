"""Caption PEFT: the precomputed caption vectors, refined by small adapters during training.

    peft = CaptionPEFT(table, params.caption_vectors.peft)
    out = peft(ids, mask)          # ids (B, L) table rows, mask (B, L) bool
    out.states (B, L, dim), out.mask (B, L), out.kl (), out.ortho ()

- LoRA per token content (token and context rows of the same token share one adapter; row 0,
  "<unk>", has the shared adapter of unseen tokens): v + (alpha / r) * (v A) B, B zero-init.
- A VAE per attribute value, residual: v + dec(z), z ~ N(mu(v), exp(logvar(v))) in train mode,
  z = mu in eval mode; the decoder is zero-init, so the output equals the input at init.
- kl: the VAE's KL divergence to N(0, I), summed over the latent, averaged over the attribute
  rows present in the batch. ortho: mean squared off-diagonal entry of the Gram matrix of the
  enhanced attribute values (mean path; a value with several rows, e.g. per token piece, is the
  mean of its rows; L2-normalised).
Both are returned UNWEIGHTED: the trainer multiplies kl by `peft.kl_weight` and ortho by
`peft.orthogonality_weight`.

The adapter set is fixed here from the table's vocabulary; forward gathers adapters with index
tensors (no loop over tokens). Each distinct row in the batch is enhanced once, then scattered
to its positions. The table vectors are a non-persistent buffer: a checkpoint holds adapters only.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def grouped_matmul(x: torch.Tensor, slot: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """y[i] = x[i] @ W[slot[i]] for x (R, a), slot (R,), W (S, a, b) -> (R, b).

    Rows are grouped by slot, groups cut into chunks of at most C rows, and one bmm runs over the
    chunks: W is gathered once per chunk, not once per row. Moving W dominates (a LoRA or VAE matrix
    is much larger than a few rows), so C is at least the mean group size (padding at most doubles
    the rows) and up to b (a chunk's padded rows cost at most what its gathered W does), which keeps
    most groups in one chunk: one gather of W per slot present."""
    R = x.shape[0]
    if R == 0:
        return x.new_zeros(0, W.shape[-1])
    slots, grp = torch.unique(slot, return_inverse=True)  # (G,), (R,)
    G = len(slots)
    order = torch.argsort(grp, stable=True)
    g = grp[order]
    counts = torch.bincount(grp, minlength=G)  # (G,)
    C = max(-(-R // G), min(W.shape[-1], int(counts.max())))  # chunk size
    pos = torch.arange(R, device=x.device) - (torch.cumsum(counts, 0) - counts)[g]  # index within its group
    n_chunks = -(-counts // C)  # (G,)
    chunk = (torch.cumsum(n_chunks, 0) - n_chunks)[g] + pos // C  # (R,) chunk of each sorted row
    within = pos % C
    xp = x.new_zeros(int(n_chunks.sum()), C, x.shape[1])  # (K, C, a)
    xp[chunk, within] = x[order]
    yp = torch.bmm(xp, W[torch.repeat_interleave(slots, n_chunks)])  # (K, C, b)
    y = x.new_empty(R, W.shape[-1])
    y[order] = yp[chunk, within]
    return y


@dataclasses.dataclass
class CaptionStates:
    states: torch.Tensor  # (B, L, dim), zero at masked positions
    mask: torch.Tensor  # (B, L) bool
    kl: torch.Tensor  # () unweighted
    ortho: torch.Tensor  # () unweighted


class CaptionPEFT(nn.Module):
    def __init__(self, table, peft=None):
        super().__init__()
        r = int(getattr(peft, "lora_rank", 16))
        alpha = float(getattr(peft, "lora_alpha", 32.0))
        zdim = int(getattr(peft, "vae_latent_dim", 128))
        vectors = torch.as_tensor(table.vectors, dtype=torch.float32)
        N, d = vectors.shape
        is_attr = getattr(table, "is_attribute", None)
        is_attr = (
            torch.zeros(N, dtype=torch.bool)
            if is_attr is None
            else torch.as_tensor(is_attr, dtype=torch.bool)
        )
        slot = getattr(table, "adapter_ids", None)
        if slot is None:  # a table without adapter slots: one LoRA per row, one VAE per attribute row
            slot = torch.where(is_attr, is_attr.long().cumsum(0) - 1, torch.arange(N))
        slot = torch.as_tensor(slot, dtype=torch.long)
        n_lora = int(slot[~is_attr].max()) + 1 if (~is_attr).any() else 1
        n_vae = int(slot[is_attr].max()) + 1 if is_attr.any() else 0
        self.dim, self.rank, self.zdim, self.scaling = d, r, zdim, alpha / r
        self.register_buffer("vectors", vectors.clone(), persistent=False)  # (N, d)
        self.register_buffer("is_attr", is_attr.clone(), persistent=False)  # (N,)
        self.register_buffer("slot", slot.clone(), persistent=False)  # (N,) LoRA or VAE slot of each row
        rows = is_attr.nonzero().squeeze(1)
        means = torch.zeros(n_vae, d).index_add(0, slot[rows], vectors[rows])
        means /= torch.bincount(slot[rows], minlength=n_vae).clamp(min=1).float()[:, None]
        self.register_buffer("attr_means", means, persistent=False)  # (n_vae, d) mean row per attribute value
        # LoRA, one per token content
        self.lora_a = nn.Parameter(torch.randn(n_lora, d, r) / math.sqrt(d))  # (K, d, r)
        self.lora_b = nn.Parameter(torch.zeros(n_lora, r, d))  # (K, r, d): zero -> identity at init
        # VAE, one per attribute value
        self.vae_mu_w = nn.Parameter(torch.randn(n_vae, d, zdim) / math.sqrt(d))  # (M, d, z)
        self.vae_mu_b = nn.Parameter(torch.zeros(n_vae, zdim))
        self.vae_logvar_w = nn.Parameter(torch.zeros(n_vae, d, zdim))  # start at unit variance
        self.vae_logvar_b = nn.Parameter(torch.zeros(n_vae, zdim))
        self.vae_dec_w = nn.Parameter(torch.zeros(n_vae, zdim, d))  # (M, z, d): zero -> identity at init
        self.vae_dec_b = nn.Parameter(torch.zeros(n_vae, d))

    def lora(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x (T, d) token vectors, s (T,) LoRA slots -> (T, d)."""
        h = grouped_matmul(x, s, self.lora_a)  # (T, r)
        return x + self.scaling * grouped_matmul(h, s, self.lora_b)

    def vae(self, x: torch.Tensor, s: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x (M, d) attribute vectors, s (M,) VAE slots -> enhanced (M, d), KL per row (M,)."""
        mu = grouped_matmul(x, s, self.vae_mu_w) + self.vae_mu_b[s]  # (M, z)
        logvar = grouped_matmul(x, s, self.vae_logvar_w) + self.vae_logvar_b[s]
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        out = x + grouped_matmul(z, s, self.vae_dec_w) + self.vae_dec_b[s]
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)  # (M,)
        return out, kl

    def enhanced_attributes(self) -> torch.Tensor:
        """Per attribute value, the mean of its rows through its VAE's mean path: (n_vae, d).
        The mean path is affine in the input, so this is the VAE applied to the mean of the value's rows."""
        n = self.vae_dec_b.shape[0]
        x = self.attr_means  # (n_vae, d)
        mu = torch.einsum("md,mdz->mz", x, self.vae_mu_w) + self.vae_mu_b
        return x + torch.einsum("mz,mzd->md", mu, self.vae_dec_w) + self.vae_dec_b[:n]

    def orthogonality(self) -> torch.Tensor:
        v = F.normalize(self.enhanced_attributes(), dim=-1)  # (M, d)
        M = v.shape[0]
        if M < 2:
            return v.new_zeros(())
        gram = v @ v.T  # (M, M)
        off = gram - torch.diag_embed(torch.diagonal(gram))
        return off.pow(2).sum() / (M * (M - 1))

    def enhanced_rows(self, rows: torch.Tensor, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (U,) of the table through their adapters: (U, d) and the mean KL of the attribute rows."""
        x = self.vectors[rows]  # (U, d)
        attr = self.is_attr[rows]
        tok_i, att_i = (~attr).nonzero().squeeze(1), attr.nonzero().squeeze(1)
        y = torch.zeros_like(x).index_copy(0, tok_i, self.lora(x[tok_i], self.slot[rows[tok_i]]))
        if len(att_i) == 0:  # touch the VAE's variance params so DDP sees every parameter used
            return y, 0.0 * (self.vae_logvar_w.sum() + self.vae_logvar_b.sum())
        ya, kl = self.vae(x[att_i], self.slot[rows[att_i]], sample=sample)
        return y.index_copy(0, att_i, ya), kl.mean()

    def _baked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eval-mode outputs of every row (and ortho), cached until a parameter changes in place
        (optimizer step, load_state_dict) or the module moves: inference is then a gather."""
        key = tuple(p._version for p in self.parameters()) + tuple(p.data_ptr() for p in self.parameters())
        if getattr(self, "_bake_key", None) != key:
            self._bake = self.enhanced_rows(torch.arange(len(self.vectors), device=self.vectors.device))[0]
            self._bake_ortho = self.orthogonality()
            rows = self.is_attr.nonzero().squeeze(1)
            self._bake_kl = self.vectors.new_zeros(len(self.vectors))  # (N,) KL per row, 0 for token rows
            if len(rows):
                self._bake_kl[rows] = self.vae(self.vectors[rows], self.slot[rows], sample=False)[1]
            self._bake_key = key
        return self._bake, self._bake_ortho, self._bake_kl

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> CaptionStates:
        B, L = ids.shape
        mask = mask.bool()
        if not self.training and not torch.is_grad_enabled():  # inference: the cached enhanced table
            table, ortho, kl_rows = self._baked()
            rows = ids.masked_fill(~mask, 0)
            present = torch.unique(rows[mask])
            present = present[self.is_attr[present]]
            kl = kl_rows[present].mean() if len(present) else table.new_zeros(())
            return CaptionStates(states=table[rows] * mask.unsqueeze(-1), mask=mask, kl=kl, ortho=ortho)
        rows, inv = torch.unique(ids[mask], return_inverse=True)  # (U,), (n_valid,)
        y, kl = self.enhanced_rows(rows, sample=self.training)  # (U, d)
        states = y.new_zeros(B, L, self.dim).masked_scatter(mask.unsqueeze(-1), y[inv])  # (B, L, d)
        return CaptionStates(states=states, mask=mask, kl=kl, ortho=self.orthogonality())
