"""The caption PEFT, fast (`stage1.peft.impl: fused`, the default): the function reference.py
writes plainly, with the same parameters (base.py), computed for speed.

- Each distinct row of a batch is enhanced once: `make_plan` (plan.py) groups the rows by adapter
  (`Grouping`, grouping.py: numpy bookkeeping, no loop over tokens), and one autograd node (`_Adapters`,
  node.py) runs LoRA, the VAEs, the KL, the orthogonality and the gather to the caption positions, with
  its backward written out.
- With shared decoders (`vae_decoder: attribute`) and narrow bases, an attribute's value encoders run
  stacked side by side in its decoder's group (`stack_encoders`, plan.py), so the whole VAE runs in one
  grouping; where the bases are wide (`mode: cache`), encoders are grouped by value and z moves to the
  decoders' grouping.
- Eval mode without gradients gathers from a table baked once per weight update (`BakedTable`,
  cache.py), and the contextualiser's corrections can be computed once per caption (`ContextCache`).
"""
from __future__ import annotations

import numpy as np
import torch

from tristage.captions.config import CaptionAdapters
from tristage.captions.peft.base import CaptionPEFT
from tristage.captions.peft.cache import BakedTable, ContextCache
from tristage.captions.peft.node import _Adapters, _kl
from tristage.captions.peft.plan import _Plan, make_plan, stack_encoders
from tristage.captions.peft.states import CaptionStates


class FusedPEFT(BakedTable, ContextCache, CaptionPEFT, impl="fused"):
    def __init__(self, table, adapters: CaptionAdapters = CaptionAdapters()):
        super().__init__(table, adapters)
        # None where each value has its own decoder: one grouping then serves encoders and decoders
        shared = self.vae_dec_w.shape[0] != self.vae_dec_b.shape[0]
        self._dec_slot = self.dec_slot.numpy().copy() if shared else None
        # the three row maps (is_attr, slot, attr_pos) as numpy, for the plan's bookkeeping (never changed)
        self._index = tuple(t.numpy().copy() for t in (self.is_attr, self.slot, self.attr_pos))
        stack_encoders(self)
        self._init_context_cache()
        self._init_bake()

    def plan(self, rows: torch.Tensor | np.ndarray, sample: bool = False, with_means: bool = False) -> _Plan:
        return make_plan(self, rows, sample, with_means)

    def adapters(self, plan: _Plan, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A plan's rows through their adapters, gathered at `where` (Q,) (places in the packed output;
        plan.P: the zero row) -> (Q, d), the mean KL of the attribute rows, the orthogonality of the
        values' mean paths (0 unless the plan has them)."""
        return _Adapters.apply(plan, where, self.scaling, self.lora_a, self.lora_b, self.vae_mu_w,
                               self.vae_mu_b, self.vae_logvar_w, self.vae_logvar_b, self.vae_dec_w,
                               self.vae_dec_b)

    @torch.no_grad()
    def kl_per_row(self, rows: torch.Tensor) -> torch.Tensor:
        """The VAE's KL divergence to N(0, I) of attribute rows (M,) of the table -> (M,)."""
        c, s = self.vae_inputs.index_select(0, self.attr_pos[rows]), self.slot[rows]  # (M, k), (M,)
        mu = torch.einsum("mk,mkz->mz", c, self.vae_mu_w[s]) + self.vae_mu_b[s]  # (M, z)
        logvar = torch.einsum("mk,mkz->mz", c, self.vae_logvar_w[s]) + self.vae_logvar_b[s]
        return _kl(mu, logvar, logvar.exp())

    def enhanced_rows(self, rows: torch.Tensor, sample: bool = False,
                      with_ortho: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Distinct rows (U,) of the table through their adapters: (U, d), the mean KL of the
        attribute rows and (`with_ortho`) the orthogonality, its mean paths decoded in the same pass."""
        plan = self.plan(rows, sample, with_means=with_ortho)
        out, kl, ortho = self.adapters(plan, torch.from_numpy(plan.place).to(self.vectors.device))
        return out, kl, (ortho if with_ortho else None)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, context: bool = True) -> CaptionStates:
        B, L = ids.shape
        mask = mask.bool()
        context = context and self.context is not None
        ids_np, mask_np = ids.cpu().numpy(), mask.cpu().numpy()
        cached = self._cached(ids_np, mask_np) if context else None  # cache rows of the corrections
        if not self.training and not torch.is_grad_enabled():  # inference: the baked table
            states, ortho, kl = self._inference(ids, mask, ids_np, mask_np, context, cached)
            return CaptionStates(states=states.view(B, L, self.dim), mask=mask, kl=kl, ortho=ortho)
        delta = self._correction(ids, mask, cached) if context else None
        valid = mask_np.ravel()
        rows, inv = np.unique(ids_np.ravel()[valid], return_inverse=True)  # (U,), (n_valid,)
        plan = self.plan(rows, sample=self.training, with_means=True)
        where = np.full(B * L, plan.P, dtype=np.int64)  # padding: the zero row
        where[valid] = plan.place[inv]
        states, kl, ortho = self.adapters(plan, torch.from_numpy(where).to(ids.device))
        states = states.view(B, L, self.dim)
        if context:
            states.add_(delta)  # (B, L, d), in place: the adapters' pass saves no output for its backward
        return CaptionStates(states=states, mask=mask, kl=kl, ortho=ortho)
