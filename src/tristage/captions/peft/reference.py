"""The seed's caption PEFT math in plain PyTorch (`stage1.peft.impl: reference`).

Each distinct table row of a batch goes through its own adapter (parameters: base.py):
- a token row (a token, a token in context, <unk>): the LoRA of its token content,
      y = v + (alpha / r) (v A) B                                  v (d,), A (d, r), B (r, d)
- an attribute row: the VAE of its attribute value, residual,
      mu = c U_mu + b_mu,  logvar = c U_lv + b_lv                  c (k,), U (k, z)
      z = mu + exp(logvar / 2) eps, eps ~ N(0, I) (train);  z = mu (eval)
      y = v + z D + b_dec                                          D (z, d)
  where c is the row in an orthonormal basis of its value's rows (basis.py: the seed's encoder x W is
  c U with W = Q U), and D is the value's decoder matrix or, with `vae_decoder: attribute`, its
  attribute's (each value keeping U_mu, b_mu, U_lv, b_lv and b_dec).
- kl: KL(N(mu, exp(logvar)) || N(0, I)), summed over z, averaged over the distinct attribute rows of
  the batch (0 without any);
- ortho: the mean squared off-diagonal entry of the Gram matrix of the attribute values' mean paths
  (the VAE's mean, z = mu, on the mean of a value's rows), L2-normalised (0 with fewer than 2 values).
With a table that has a contextualiser, its correction (frozen: a function of the caption's raw rows)
is added after the adapters; `context=False` leaves it out.
kl and ortho are UNWEIGHTED: the trainer multiplies them by `<stage>.peft.kl_weight` and
`<stage>.peft.orthogonality_weight`. fused.py computes the same function, fast; tests hold it to this one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tristage.captions.peft.base import CaptionPEFT
from tristage.captions.peft.states import CaptionStates


class ReferencePEFT(CaptionPEFT, impl="reference"):
    def forward(self, ids: torch.Tensor, mask: torch.Tensor, context: bool = True) -> CaptionStates:
        mask = mask.bool()  # ids (B, L) table rows, mask (B, L)
        # the adapters run in fp32, also under amp (they are small and feed fp32 losses)
        with torch.autocast(ids.device.type, enabled=False):
            rows, where = torch.unique(ids[mask], return_inverse=True)  # (U,) distinct rows, (n,) into them
            out, kl = self.enhance(rows)  # (U, d), ()
            states = out.new_zeros(*ids.shape, self.dim)  # (B, L, d), zero at padding
            states[mask] = out[where]
            ortho = self.orthogonality()  # ()
        if context and self.context is not None:
            states = states + self.context.correction(self.vectors, ids, mask)  # (B, L, d)
        return CaptionStates(states=states, mask=mask, kl=kl, ortho=ortho)

    def enhance(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct table rows (U,) through their adapters -> (U, d), the mean KL of the attribute rows."""
        attr = self.is_attr[rows]  # (U,)
        out = self.vectors.new_zeros(len(rows), self.dim)  # (U, d)
        out[~attr] = self.lora(rows[~attr])
        arows = rows[attr]  # (M,) attribute rows, ascending
        if len(arows) == 0:
            return out, out.new_zeros(())
        eps = torch.randn(len(arows), self.zdim, device=rows.device) if self.training else None  # (M, z)
        c = self.vae_inputs[self.attr_pos[arows]]  # (M, k) each row in its value's basis
        y, mu, logvar = self.vae(c, self.vectors[arows], self.slot[arows], eps)  # (M, d), (M, z), (M, z)
        out[attr] = y
        return out, kl_divergence(mu, logvar).mean()

    def lora(self, rows: torch.Tensor) -> torch.Tensor:
        """Token rows (T,) -> (T, d): each through the LoRA of its token content."""
        v = self.vectors[rows]  # (T, d)
        A, B = self.lora_a[self.slot[rows]], self.lora_b[self.slot[rows]]  # (T, d, r), (T, r, d)
        h = torch.einsum("td,tdr->tr", v, A)  # (T, r)
        return v + self.scaling * torch.einsum("tr,trd->td", h, B)

    def vae(self, c: torch.Tensor, v: torch.Tensor, value: torch.Tensor,
            eps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attribute rows through their value's VAE: coordinates c (M, k), table vectors v (M, d), values
        (M,), noise eps (M, z) or None (the mean) -> the rows (M, d), mu (M, z), logvar (M, z)."""
        mu = torch.einsum("mk,mkz->mz", c, self.vae_mu_w[value]) + self.vae_mu_b[value]  # (M, z)
        logvar = torch.einsum("mk,mkz->mz", c, self.vae_logvar_w[value]) + self.vae_logvar_b[value]
        z = mu if eps is None else mu + torch.exp(0.5 * logvar) * eps  # (M, z)
        D = self.vae_dec_w[self.dec_slot[value]]  # (M, z, d): the value's decoder, or its attribute's
        return v + torch.einsum("mz,mzd->md", z, D) + self.vae_dec_b[value], mu, logvar

    def orthogonality(self) -> torch.Tensor:
        """The mean squared off-diagonal cosine of the attribute values' mean paths -> ()."""
        n = self.vae_dec_b.shape[0]  # M values
        if n < 2:
            return self.vectors.new_zeros(())
        R = self.n_attr_rows  # vae_inputs / vae_base: the R attribute rows, then each value's mean row
        values = torch.arange(n, device=self.vectors.device)
        means, _, _ = self.vae(self.vae_inputs[R:], self.vae_base[R:], values, None)  # (M, d)
        v = F.normalize(means, dim=-1)
        gram = v @ v.T  # (M, M)
        off = gram - torch.diag(torch.diagonal(gram))
        return off.pow(2).sum() / (n * (n - 1))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over the latent (last) dim: (M, z) -> (M,)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
