"""Caption PEFT: the precomputed caption vectors, refined by small adapters during training.

    peft = CaptionPEFT(table, params.caption_vectors.peft)
    out = peft(ids, mask)          # ids (B, L) table rows, mask (B, L) bool
    out.states (B, L, dim), out.mask (B, L), out.kl (), out.ortho ()

- LoRA per token content (token and context rows of the same token share one adapter; row 0,
  "<unk>", has the shared adapter of unseen tokens): v + (alpha / r) * (v A) B, B zero-init.
- A VAE per attribute value, residual: v + dec(z), z ~ N(mu(v), exp(logvar(v))) in train mode,
  z = mu in eval mode; the decoder is zero-init, so the output equals the input at init.
  The VAE only ever reads its own value's table rows, so its encoder reads them in an orthonormal
  basis of their span (k_s <= rows of the value, fixed at init): mu(v) = (v Q_s) U_s + b. That is
  exactly the family of affine maps v W_s + b restricted to those rows (W_s = Q_s U_s), with k x z
  parameters instead of d x z: at d=768 the encoders were 2/3 of the adapter bytes a training step
  moves. Where a value has more rows than d / 2 (`mode: cache`), Q_s is the identity.
- kl: the VAE's KL divergence to N(0, I), summed over the latent, averaged over the attribute
  rows present in the batch. ortho: mean squared off-diagonal entry of the Gram matrix of the
  enhanced attribute values (mean path; a value with several rows, e.g. per token piece, is the
  mean of its rows; L2-normalised).
Both are returned UNWEIGHTED: the trainer multiplies kl by `peft.kl_weight` and ortho by
`peft.orthogonality_weight`.

With a table that has a contextualiser (captions.contextual), forward adds its correction (frozen, a
function of the caption's raw rows) after the adapters: `forward(ids, mask, context=False)` gives the
rows alone, as baking them into a table needs (`enhanced_table`).

The adapter set is fixed here from the table's vocabulary; forward groups rows by adapter with
index tensors (no loop over tokens). Each distinct row in the batch is enhanced once, then gathered
to its positions. The table vectors are a non-persistent buffer: a checkpoint holds adapters only.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def grouped_matmul(x: torch.Tensor, slot: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """y[i] = x[i] @ W[slot[i]] for x (R, a), slot (R,), W (S, a, b) -> (R, b).

    Rows are sorted by slot and padded into groups of C rows, and one bmm runs over the groups. The
    layout is the one that moves the fewest floats (`_layout`): moving W dominates, since an adapter
    matrix is larger than a few rows, but padding counts too (a padded row costs a + b floats):
    - direct: one group per slot, every slot (absent ones all padding), C = the largest group: bmm
      reads W as it is, and its gradient is written once, with no gather, zero-fill or scatter;
    - gathered: only the slots present, each cut into chunks of C rows; W is gathered per chunk."""
    R, a, (S, _, b) = x.shape[0], x.shape[1], W.shape
    if R == 0:
        return x.new_zeros(0, b)
    counts = torch.bincount(slot, minlength=S)  # (S,)
    C, n_chunks = _layout(counts.tolist(), R, a, b)
    order = torch.argsort(slot, stable=True)
    s = slot[order]
    pos = torch.arange(R, device=x.device) - (torch.cumsum(counts, 0) - counts)[s]  # index within its slot
    if n_chunks is None:  # direct
        slot_in_group, n_groups, Wg = s * C + pos, S, W
    else:
        nc = torch.tensor(n_chunks, device=x.device)
        slot_in_group, n_groups = ((torch.cumsum(nc, 0) - nc)[s] + pos // C) * C + pos % C, int(nc.sum())
        Wg = W.index_select(0, torch.repeat_interleave(torch.arange(S, device=x.device), nc))  # (K, a, b)
    # flat row of each sorted row in the padded groups; index_select / index_copy: their backward
    # passes are a gather and an index_add, much cheaper on CPU than advanced indexing's accumulate
    xp = x.new_zeros(n_groups * C, a).index_copy(0, slot_in_group, x.index_select(0, order))
    yp = _Bmm.apply(xp.view(n_groups, C, a), Wg)  # (n_groups, C, b)
    return x.new_empty(R, b).index_copy(0, order, yp.view(n_groups * C, b).index_select(0, slot_in_group))


class _Bmm(torch.autograd.Function):
    """torch.bmm whose backward multiplies contiguous transposes: the gradient of W, xp^T g, is the
    biggest product here, and a strided xp^T makes it up to 2x slower on CPU."""

    @staticmethod
    def forward(ctx, xp, W):
        ctx.save_for_backward(xp, W)
        return torch.bmm(xp, W)

    @staticmethod
    def backward(ctx, g):
        xp, W = ctx.saved_tensors
        gx = torch.bmm(g, W.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(xp.transpose(1, 2).contiguous(), g) if ctx.needs_input_grad[1] else None
        return gx, gw


def _layout(counts: list[int], R: int, a: int, b: int) -> tuple[int, list[int] | None]:
    """(C, chunks per slot) of the cheapest layout in floats moved; chunks None: direct. Direct reads
    W once and writes its gradient once (2 S a b) plus the padded rows; gathered reads W, writes the
    copy, and in backward zero-fills a gradient of W's size and scatters the chunks into it
    (2 S a b + 2 K a b) plus its padded rows."""
    S, cmax = len(counts), max(counts)
    best = (2 * S * a * b + S * cmax * (a + b), cmax, None)
    G = sum(1 for c in counts if c)
    for C in sorted({-(-R // G), cmax, *(2 ** i for i in range(11) if 2 ** i < cmax)}):
        chunks = [-(-c // C) for c in counts]
        K = sum(chunks)
        best = min(best, (2 * S * a * b + 2 * K * a * b + K * C * (a + b), C, chunks), key=lambda t: t[0])
    return best[1], best[2]


def value_coords(vectors: torch.Tensor, rows: torch.Tensor, slot: torch.Tensor, n: int,
                 max_rank: int) -> torch.Tensor:
    """Coordinates of each attribute row in an orthonormal basis of its value's rows (SVD), (R, k)
    with k = the largest span, zero-padded. The identity basis (k = d, the rows themselves) where a
    value has more than `max_rank` rows."""
    d = vectors.shape[1]
    X = vectors[rows].double()  # (R, d)
    counts = torch.bincount(slot, minlength=n)
    if len(rows) == 0 or int(counts.max()) > max_rank:
        return vectors[rows].clone()
    bases = []
    for s in range(n):
        Xs = X[slot == s]
        if len(Xs) == 0:
            bases.append(X.new_zeros(d, 0))
            continue
        _, sv, vh = torch.linalg.svd(Xs, full_matrices=False)
        k = int((sv > sv[0] * 1e-6).sum()) if sv[0] > 0 else 0
        bases.append(vh[:k].T)  # (d, k)
    k = max(1, max(b.shape[1] for b in bases))
    Q = torch.stack([F.pad(b, (0, k - b.shape[1])) for b in bases])  # (n, d, k)
    return torch.einsum("rd,rdk->rk", X, Q[slot]).float()


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
        coords = value_coords(vectors, rows, slot[rows], n_vae, max_rank=max(1, d // 2))
        k = coords.shape[1]
        attr_pos = torch.full((N,), -1, dtype=torch.long)
        attr_pos[rows] = torch.arange(len(rows))
        self.register_buffer("attr_pos", attr_pos, persistent=False)  # (N,) row -> index in vae_coords
        self.register_buffer("vae_coords", coords, persistent=False)  # (R_attr, k) in their value's basis
        n_rows = torch.bincount(slot[rows], minlength=n_vae).clamp(min=1).float()[:, None]
        mean = lambda x: torch.zeros(n_vae, x.shape[1]).index_add(0, slot[rows], x) / n_rows  # noqa: E731
        self.register_buffer("attr_means", mean(vectors[rows]), persistent=False)  # (M, d) mean of its rows
        self.register_buffer("attr_mean_coords", mean(coords), persistent=False)  # (M, k) the same, coords
        # LoRA, one per token content
        self.lora_a = nn.Parameter(torch.randn(n_lora, d, r) / math.sqrt(d))  # (K, d, r)
        self.lora_b = nn.Parameter(torch.zeros(n_lora, r, d))  # (K, r, d): zero -> identity at init
        # VAE, one per attribute value; the encoder reads the value's basis coordinates (k of them)
        self.vae_mu_w = nn.Parameter(torch.randn(n_vae, k, zdim) / math.sqrt(d))  # (M, k, z)
        self.vae_mu_b = nn.Parameter(torch.zeros(n_vae, zdim))
        self.vae_logvar_w = nn.Parameter(torch.zeros(n_vae, k, zdim))  # start at unit variance
        self.vae_logvar_b = nn.Parameter(torch.zeros(n_vae, zdim))
        self.vae_dec_w = nn.Parameter(torch.zeros(n_vae, zdim, d))  # (M, z, d): zero -> identity at init
        self.vae_dec_b = nn.Parameter(torch.zeros(n_vae, d))
        ctx = getattr(table, "contextualiser", None)
        self.context = copy.deepcopy(ctx) if ctx is not None else None  # frozen: buffers only

    @torch.no_grad()
    def context_delta(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The contextualiser's correction (B, L, d) of captions given as raw table rows (0 without one)."""
        if self.context is None:
            return self.vectors.new_zeros(())
        return self.context(self.vectors[ids] * mask.unsqueeze(-1), mask)

    def lora(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x (T, d) token vectors, s (T,) LoRA slots -> (T, d)."""
        h = grouped_matmul(x, s, self.lora_a)  # (T, r)
        return x + self.scaling * grouped_matmul(h, s, self.lora_b)

    def vae(self, c: torch.Tensor, s: torch.Tensor, sample: bool,
            extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """c (M, k) attribute rows in their value's basis, s (M,) VAE slots -> decoder output (M, d)
        (the residual: add the rows' vectors) and KL per row (M,). `extra` (c', s'): more rows through
        the mean path, decoded in the same pass over the decoder, appended to the output."""
        mu = grouped_matmul(c, s, self.vae_mu_w) + self.vae_mu_b[s]  # (M, z)
        logvar = grouped_matmul(c, s, self.vae_logvar_w) + self.vae_logvar_b[s]
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)  # (M,)
        if extra is not None:
            ce, se = extra
            z = torch.cat([z, grouped_matmul(ce, se, self.vae_mu_w) + self.vae_mu_b[se]])
            s = torch.cat([s, se])
        return grouped_matmul(z, s, self.vae_dec_w) + self.vae_dec_b[s], kl

    def orthogonality(self, enhanced: torch.Tensor | None = None) -> torch.Tensor:
        """Of the enhanced attribute values (M, d) (None: computed here, through each VAE's mean path
        on the mean of the value's rows; the mean path is affine, so that is the mean of its rows)."""
        if enhanced is None:
            n = self.vae_dec_b.shape[0]
            dec, _ = self.vae(self.attr_mean_coords, torch.arange(n, device=self.slot.device), sample=False)
            enhanced = self.attr_means + dec
        v = F.normalize(enhanced, dim=-1)  # (M, d)
        M = v.shape[0]
        if M < 2:
            return v.new_zeros(())
        gram = v @ v.T  # (M, M)
        off = gram - torch.diag_embed(torch.diagonal(gram))
        return off.pow(2).sum() / (M * (M - 1))

    def enhanced_rows(self, rows: torch.Tensor, sample: bool = False,
                      with_ortho: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rows (U,) of the table through their adapters: (U, d), the mean KL of the attribute rows
        and (`with_ortho`) the orthogonality, its mean paths decoded in the same pass."""
        x = self.vectors[rows]  # (U, d)
        attr = self.is_attr[rows]
        tok_i, att_i = (~attr).nonzero().squeeze(1), attr.nonzero().squeeze(1)
        y = torch.zeros_like(x).index_copy(0, tok_i, self.lora(x[tok_i], self.slot[rows[tok_i]]))
        n = self.vae_dec_b.shape[0]
        extra = (self.attr_mean_coords, torch.arange(n, device=x.device)) if with_ortho and n else None
        if len(att_i) == 0 and extra is None:  # touch the VAE's variance params so DDP sees every one used
            return y, 0.0 * (self.vae_logvar_w.sum() + self.vae_logvar_b.sum()), None
        ra = rows[att_i]
        dec, kl = self.vae(self.vae_coords[self.attr_pos[ra]], self.slot[ra], sample=sample, extra=extra)
        y = y.index_copy(0, att_i, x[att_i] + dec[: len(att_i)])
        kl = kl.mean() if len(att_i) else 0.0 * (self.vae_logvar_w.sum() + self.vae_logvar_b.sum())
        ortho = self.orthogonality(self.attr_means + dec[len(att_i):]) if extra is not None else None
        return y, kl, ortho

    def _baked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eval-mode outputs of every row (and ortho), cached until a parameter changes in place
        (optimizer step, load_state_dict) or the module moves: inference is then a gather."""
        key = tuple(p._version for p in self.parameters()) + tuple(p.data_ptr() for p in self.parameters())
        if getattr(self, "_bake_key", None) != key:
            rows = self.enhanced_rows(torch.arange(len(self.vectors), device=self.vectors.device))[0]
            self._bake = torch.cat([rows, rows.new_zeros(1, self.dim)])  # (N + 1, d): a zero row for padding
            self._bake_ortho = self.orthogonality()
            rows = self.is_attr.nonzero().squeeze(1)
            self._bake_kl = self.vectors.new_zeros(len(self.vectors))  # (N,) KL per row, 0 for token rows
            if len(rows):
                self._bake_kl[rows] = self.vae(self.vae_coords[self.attr_pos[rows]], self.slot[rows],
                                               sample=False)[1]
            self._bake_key = key
        return self._bake, self._bake_ortho, self._bake_kl

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, context: bool = True) -> CaptionStates:
        B, L = ids.shape
        mask = mask.bool()
        delta = self.context_delta(ids, mask) if context and self.context is not None else None
        if not self.training and not torch.is_grad_enabled():  # inference: the cached enhanced table
            table, ortho, kl_rows = self._baked()  # table (N + 1, d): its last row is zero, for padding
            rows = ids.masked_fill(~mask, len(table) - 1)
            present = torch.unique(ids[mask])
            present = present[self.is_attr[present]]
            kl = kl_rows[present].mean() if len(present) else table.new_zeros(())
            states = table.index_select(0, rows.view(-1)).view(B, L, self.dim)
            states = states if delta is None else states + delta
            return CaptionStates(states=states, mask=mask, kl=kl, ortho=ortho)
        rows, inv = torch.unique(ids[mask], return_inverse=True)  # (U,), (n_valid,)
        y, kl, ortho = self.enhanced_rows(rows, sample=self.training, with_ortho=True)  # (U, d)
        if ortho is None:
            ortho = self.orthogonality()
        where = torch.full_like(ids, len(rows)).masked_scatter(mask, inv)  # (B, L); padding -> zero row
        states = torch.cat([y, y.new_zeros(1, self.dim)]).index_select(0, where.view(-1)).view(B, L, self.dim)
        if self.context is not None and context:
            states = states + delta  # (B, L, d)
        return CaptionStates(states=states, mask=mask, kl=kl, ortho=ortho)


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
