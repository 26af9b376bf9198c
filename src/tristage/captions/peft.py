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
  `vae_decoder: attribute` shares the decoder matrix (z x d) among an attribute's values: dec(z) =
  z D_attr + b_value. Each value keeps its encoder, its latent distribution and its bias; the
  decoders, most of the adapter bytes a step reads and writes, shrink from one per value to one per
  attribute. Where the values' bases are small (the table's k = a few rows; not `mode: cache`), an
  attribute's value encoders run stacked side by side in its decoder's group: a row's input is its
  coordinates (and a 1, for the bias) in its value's block, zero in the others, so one product per
  attribute computes each value's own encoder, and the whole VAE runs in one grouping.
- kl: the VAE's KL divergence to N(0, I), summed over the latent, averaged over the attribute
  rows present in the batch. ortho: mean squared off-diagonal entry of the Gram matrix of the
  enhanced attribute values (mean path; a value with several rows, e.g. per token piece, is the
  mean of its rows; L2-normalised).
Both are returned UNWEIGHTED: the trainer multiplies kl by `peft.kl_weight` and ortho by
`peft.orthogonality_weight`.

With a table that has a contextualiser (captions.contextual), forward adds its correction (frozen, a
function of the caption's raw rows) after the adapters: `forward(ids, mask,
context=False)` gives the rows alone, as baking them into a table needs (`enhanced_table`). Being a
function of the caption alone, the correction can be computed once per caption: `cache_context`
(the trainer passes its corpus's captions) keeps them, and a batch of cached captions gathers them.

The adapter set is fixed here from the table's vocabulary. Each distinct row in the batch is enhanced
once: `plan` groups the rows by adapter (`Grouping`, numpy bookkeeping, no loop over tokens), and
one autograd node (`_Adapters`) runs LoRA, the VAEs, the KL, the orthogonality and the gather to the
caption positions, with its backward written out (tests check it against plain autograd row by row).
The table vectors are a non-persistent buffer: a checkpoint holds adapters only.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Grouping:
    """Rows grouped by slot and zero-padded into groups of C rows, so that one bmm multiplies every
    row by its own slot's matrix; a chain of per-slot maps (LoRA's A then B, a VAE's encoder then
    decoder) stays packed from the first matmul to the last.

        g = Grouping(slot, S, w, row, device)  # slot (R,) numpy, in [0, S)
        g.flat                                 # (R,) numpy: each row's place in the (G * C) layout
        yp = g.bmm(xp, W)                      # xp (G, C, a), W (S, a, b) -> (G, C, b)
        gW = g.scatter(gWg)                    # a gradient per group (G, a, b) -> per slot (S, a, b)

    The layout is the one that moves the fewest floats (`_layout`, from w: floats of one slot's
    matrices, and row: floats of one padded row along the chain): moving W dominates, since an
    adapter matrix is larger than a few rows, but padding counts too:
    - direct: one group per slot, every slot (absent ones all padding), holding its first C rows; bmm
      reads W as it is and its gradient is written in place. A slot with more rows has its overflow
      in chunks of C after the S groups (`extra`): only those read a gathered W, and their gradient
      is added to their slot's;
    - gathered: only the slots present, each cut into chunks of C rows (`sel`); W is gathered per
      chunk, its gradient scattered back (for a batch that uses few of many slots).
    The bookkeeping is numpy: a few small arrays, where torch's per-op overhead would dominate."""

    def __init__(self, slot: np.ndarray, S: int, w: int, row: int, device: torch.device):
        R = len(slot)
        self.S = S
        counts = np.bincount(slot, minlength=S)  # (S,)
        self.C, chunks, gathered = _layout(counts, R, w, row) if R else (1, np.ones(S, np.int64), False)
        order = np.argsort(slot, kind="stable")
        s = slot[order]
        pos = np.arange(R) - (np.cumsum(counts) - counts)[s]  # index within its slot
        chunk, at = pos // self.C, pos % self.C
        self.sel = self.extra = None
        if gathered:
            group = (np.cumsum(chunks) - chunks)[s] + chunk
            self.G = int(chunks.sum())
            # (G,) the slot of each group
            self.sel = torch.from_numpy(np.repeat(np.arange(S), chunks)).to(device)
        else:
            over = chunks - 1  # (S,) overflow chunks per slot
            group = np.where(chunk == 0, s, S + (np.cumsum(over) - over)[s] + chunk - 1)
            self.G = S + int(over.sum())
            if self.G > S:  # (E,) the slot of each overflow group
                self.extra = torch.from_numpy(np.repeat(np.arange(S), over)).to(device)
        self.flat = np.empty(R, dtype=np.int64)
        self.flat[order] = group * self.C + at

    def gather_index(self, ids: np.ndarray) -> np.ndarray:
        """(R,) an index per row -> (G * C,) in the packed layout; padding repeats the first row's (a
        padded row is computed but never read back, so its input need only be finite)."""
        out = np.full(self.G * self.C, ids[0] if len(ids) else 0, dtype=np.int64)
        out[self.flat] = ids
        return out

    def weights(self, W: torch.Tensor) -> torch.Tensor:
        """Per-slot tensors (S, ...) -> per group (G, ...) (a copy unless direct with no overflow: for
        the small ones, biases)."""
        if self.sel is not None:
            return W.index_select(0, self.sel)
        return W if self.extra is None else torch.cat([W, W.index_select(0, self.extra)])

    def pieces(self, W: torch.Tensor) -> list[tuple[slice, torch.Tensor]]:
        """Per-slot matrices W (S, a, b) -> [(groups, their matrices)]: direct groups read W in place,
        overflow (or gathered) groups a gathered copy. A chain that multiplies by W again (a backward,
        by W^T) reuses the copy: `[(sl, Ws.mT) for sl, Ws in pieces]`."""
        if self.extra is None:
            return [(slice(None), self.weights(W))]
        return [(slice(None, self.S), W), (slice(self.S, None), W.index_select(0, self.extra))]

    def bmm(self, xp: torch.Tensor, W: torch.Tensor | list, base: torch.Tensor | None = None,
            out: torch.Tensor | None = None) -> torch.Tensor:
        """base + xp @ W per group: xp (G, C, a), W (S, a, b) or its `pieces`, base (G, C or 1, b) ->
        (G, C, b) (into `out` if given)."""
        pieces = self.pieces(W) if isinstance(W, torch.Tensor) else W
        out = xp.new_empty(self.G, xp.shape[1], pieces[0][1].shape[2]) if out is None else out
        for sl, Ws in pieces:
            if base is None:
                torch.bmm(xp[sl], Ws, out=out[sl])
            else:
                torch.baddbmm(base[sl], xp[sl], Ws, out=out[sl])
        return out

    def scatter(self, gw: torch.Tensor) -> torch.Tensor:
        """A gradient per group (G, ...) -> per slot (S, ...), the groups of a slot summed."""
        if self.sel is not None:
            return gw.new_zeros((self.S,) + gw.shape[1:]).index_add_(0, self.sel, gw)
        return gw if self.extra is None else gw[:self.S].index_add_(0, self.extra, gw[self.S:])


@dataclasses.dataclass
class _Plan:
    """The inputs of one pass through the adapters (no gradient flows into them): distinct table rows
    (U,) split into token rows, packed by LoRA slot (`tok`), and attribute rows, packed by VAE slot
    (`att`), with each value's mean path as one more row of its group where `means` is set. The pass
    writes one packed output (P + 1, d): the token groups, then the attribute groups, then a zero
    row (for padding); `place` (U,) is each distinct row's place in it."""
    place: np.ndarray  # (U,)
    P: int
    tok: Grouping | None = None
    xp: torch.Tensor | None = None  # (Gl, Cl, d) the token rows' table vectors
    att: Grouping | None = None  # by decoder slot: the value, or with shared decoders the attribute
    base: torch.Tensor | None = None  # (Gv, Cv, d) the table vectors the VAE adds to
    means: torch.Tensor | None = None  # (n,) the mean rows' places in the attribute groups (G * C)
    # the encoder side, grouped by value: in `att`'s layout unless the decoders are shared (`enc` set)
    enc: Grouping | None = None  # by value, (Ge, Ce); None: `att`
    # (Ge, Ce, k) attribute rows in their value's basis; stacked encoders: (Gv, Cv, n (k + 1))
    cp: torch.Tensor | None = None
    stack: torch.Tensor | None = None  # (M,) each value's block of the stacked encoders; None: not stacked
    blocks: int = 0  # the stacked encoders' blocks, A * n
    eps: torch.Tensor | None = None  # (Ge, Ce, z) the noise of sampled rows (zero elsewhere); None: mean
    klw: torch.Tensor | None = None  # (Ge, Ce) 1 / M at the M attribute rows, 0 at mean rows and padding
    perm: torch.Tensor | None = None  # (Gv * Cv,) each decoder row's place in the encoder layout
    vslot: torch.Tensor | None = None  # (Gv * Cv,) each decoder row's value (its output bias)


def _kl(mu: torch.Tensor, logvar: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(mu, var) to N(0, I) per row, summed over the latent (last) dim; var =
    exp(logvar), which the caller has."""
    return (mu * mu + var - 1 - logvar).sum(-1) * 0.5


def _ortho(means: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """Mean squared off-diagonal cosine of n vectors (n, d) -> (), and what its backward needs."""
    n = means.shape[0]
    norm = means.norm(dim=-1, keepdim=True).clamp_min_(1e-12)  # (n, 1), as F.normalize
    v = means / norm
    off = (v @ v.T).fill_diagonal_(0)  # (n, n)
    return off.pow(2).sum() / (n * (n - 1)), (v, norm, off)


def _ortho_backward(g: torch.Tensor, saved: tuple) -> torch.Tensor:
    v, norm, off = saved
    n = v.shape[0]
    gv = (off @ v).mul_(g * 4 / (n * (n - 1)))  # d/dv of sum(off^2): 2 (off + off^T) v, off symmetric
    return (gv - v * (v * gv).sum(-1, keepdim=True)) / norm  # through v = m / |m|


def _stacked(w: torch.Tensor, b: torch.Tensor, at: torch.Tensor, blocks: int, A: int) -> torch.Tensor:
    """Per-value encoders w (M, k, z), b (M, z) -> each attribute's side by side (A, n (k + 1), z), n =
    blocks / A: value m's [w; b] is block at[m], the other blocks zero."""
    wb = torch.cat([w, b[:, None]], 1)  # (M, k + 1, z)
    return wb.new_zeros(blocks, *wb.shape[1:]).index_copy_(0, at, wb).view(A, -1, wb.shape[2])


def _unstacked(gs: torch.Tensor, at: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of `_stacked`'s output (A, n (k + 1), z) -> of its w (M, k, z) and b (M, z), each
    gathered into a tensor of its own (contiguous, as the parameter: autograd then keeps it uncopied)."""
    gwb = gs.view(-1, k + 1, gs.shape[2])  # (A * n, k + 1, z)
    return gwb[:, :k].index_select(0, at), gwb[:, k].index_select(0, at)


class _Adapters(torch.autograd.Function):
    """One pass of a batch's distinct rows through their adapters, the orthogonality of the values'
    mean paths, and the gather to the caption positions, forward and backward written out: one
    autograd node for what generic autograd recorded op by op (at T5-base size a step runs 157 tensor
    ops instead of 203, 1.16x faster; most of what is left reads and writes the adapters' weights).

        states, kl, ortho = _Adapters.apply(plan, where, scaling, lora_a, lora_b, mu_w, mu_b,
                                            logvar_w, logvar_b, dec_w, dec_b)
        where (Q,) places in the packed output -> states (Q, d); kl () the mean KL of the attribute
        rows; ortho () of the mean paths (0 without them)

    LoRA:  y = x + s (x A) B                             x (Gl, Cl, d), A (Gl, d, r), B (Gl, r, d)
    VAE:   mu = c U_mu + b_mu, logvar = c U_lv + b_lv     c (Ge, Ce, k), U (Ge, k, z)
           z = mu + exp(logvar / 2) eps,  y = v + z D + b_d        D (Gv, z, d)
           kl = sum_rows w (1/2) sum_z (mu^2 + exp(logvar) - 1 - logvar)
    With shared decoders, b_d stays per value (`plan.vslot`), and the encoders run either stacked
    (`plan.stack`: c is (Gv, Cv, n (k + 1)), each row's [coordinates, 1] in its value's block, and U
    each attribute's [U; b] blocks side by side, so the encoders run in the decoders' groups), or,
    where those blocks would be too wide (`mode: cache`), grouped by value (Ge, Ce), z moving to the
    decoders' grouping by attribute (Gv, Cv) through `plan.perm`."""

    @staticmethod
    def forward(ctx, plan: _Plan, where, scaling, lora_a, lora_b, mu_w, mu_b, lv_w, lv_b, dec_w, dec_b):
        args = (ctx, plan, where, scaling, lora_a, lora_b, mu_w, mu_b, lv_w, lv_b, dec_w, dec_b)
        if not torch.is_autocast_enabled(lora_a.device.type):
            return _Adapters._forward(*args)
        with torch.autocast(lora_a.device.type, enabled=False):  # fp32 under amp: small, feeds fp32 losses
            return _Adapters._forward(*args)

    @staticmethod
    def backward(ctx, g_states, g_kl, g_ortho):
        if not torch.is_autocast_enabled(g_states.device.type):
            return _Adapters._backward(ctx, g_states, g_kl, g_ortho)
        with torch.autocast(g_states.device.type, enabled=False):
            return _Adapters._backward(ctx, g_states, g_kl, g_ortho)

    @staticmethod
    def _forward(ctx, plan, where, scaling, lora_a, lora_b, mu_w, mu_b, lv_w, lv_b, dec_w, dec_b):
        d = lora_a.shape[1]
        packed = lora_a.new_empty(plan.P + 1, d)  # the token groups, the attribute groups, a zero row
        packed[plan.P].zero_()
        saved, n_tok = {}, 0
        if plan.tok is not None:
            g = plan.tok
            n_tok = g.G * g.C
            h = g.bmm(plan.xp, lora_a).mul_(scaling)  # (Gl, Cl, r): s (x A)
            pb = g.pieces(lora_b)  # kept: the backward multiplies by the same (gathered) B^T
            g.bmm(h, pb, base=plan.xp, out=packed[:n_tok].view(g.G, g.C, d))
            saved.update(h=h, pb=pb)
        kl = ortho = lora_a.new_zeros(())
        if plan.att is not None:
            g = plan.att
            e = g if plan.enc is None else plan.enc
            if plan.stack is not None:  # each attribute's value encoders side by side, biases folded in
                mu = g.bmm(plan.cp, _stacked(mu_w, mu_b, plan.stack, plan.blocks, g.S))  # (Gv, Cv, z)
                lv = g.bmm(plan.cp, _stacked(lv_w, lv_b, plan.stack, plan.blocks, g.S))
            else:
                mu = e.bmm(plan.cp, mu_w, base=e.weights(mu_b)[:, None])  # (Ge, Ce, z)
                lv = e.bmm(plan.cp, lv_w, base=e.weights(lv_b)[:, None])
            var = lv.exp()
            std = None if plan.eps is None else var.sqrt()
            z = mu if std is None else torch.addcmul(mu, std, plan.eps)
            kl = (_kl(mu, lv, var) * plan.klw).sum()
            if plan.perm is not None:  # to the decoders' grouping
                z = z.view(-1, z.shape[-1]).index_select(0, plan.perm).view(g.G, g.C, -1)  # (Gv, Cv, z)
            out = packed[n_tok:plan.P].view(g.G, g.C, d)
            g.bmm(z, dec_w, base=plan.base, out=out)
            if plan.vslot is None:
                out.add_(g.weights(dec_b)[:, None])
            else:
                out.view(-1, d).add_(dec_b.index_select(0, plan.vslot))
            out = out.view(-1, d)  # (Gv * Cv, d)
            if plan.means is not None and len(plan.means) > 1:
                ortho, saved["ortho"] = _ortho(out.index_select(0, plan.means))
            saved.update(mu=mu, var=var, std=std, z=z)
        ctx.plan, ctx.scaling, ctx.saved = plan, scaling, saved
        ctx.shapes = [p.shape for p in (lora_a, lora_b, mu_w, mu_b, lv_w, lv_b, dec_w, dec_b)]
        ctx.save_for_backward(where, lora_b, dec_w)
        return packed.index_select(0, where), kl, ortho

    @staticmethod
    def _backward(ctx, g_states, g_kl, g_ortho):
        plan, s, sv = ctx.plan, ctx.scaling, ctx.saved
        where, lora_b, dec_w = ctx.saved_tensors
        d = g_states.shape[-1]
        gp = g_states.new_zeros(plan.P + 1, d).index_add_(0, where, g_states)  # (P + 1, d)
        grads = [None] * 8
        n_tok = 0
        if plan.tok is not None:
            g, h = plan.tok, sv["h"]
            n_tok = g.G * g.C
            gy = gp[:n_tok].view(g.G, g.C, d)  # (Gl, Cl, d)
            gB = torch.bmm(h.transpose(1, 2), gy)  # (Gl, r, d)
            gh = g.bmm(gy, [(sl, Ws.mT) for sl, Ws in sv["pb"]]).mul_(s)  # (Gl, Cl, r)
            gA = torch.bmm(plan.xp.transpose(1, 2), gh)  # (Gl, d, r)
            grads[0], grads[1] = g.scatter(gA), g.scatter(gB)
        if plan.att is not None:
            g = plan.att
            gy = gp[n_tok:n_tok + g.G * g.C]
            if "ortho" in sv:  # in place: gp is this backward's own buffer
                gy.index_add_(0, plan.means, _ortho_backward(g_ortho, sv["ortho"]))
            gy = gy.view(g.G, g.C, d)  # (Gv, Cv, d)
            mu, var, std, z = sv["mu"], sv["var"], sv["std"], sv["z"]
            gD = torch.bmm(z.transpose(1, 2), gy)  # (Gv, z, d)
            gz = g.bmm(gy, dec_w.transpose(1, 2))  # (Gv, Cv, z)
            e = g
            if plan.perm is not None:  # back to the encoders' grouping (padding rows carry no gradient)
                e = plan.enc
                gz = gz.new_zeros(e.G * e.C, gz.shape[-1]).index_add_(0, plan.perm, gz.view(-1, gz.shape[-1]))
                gz = gz.view(e.G, e.C, -1)  # (Ge, Ce, z)
            w = (plan.klw * g_kl)[..., None]  # (Ge, Ce, 1): d kl / d (the row's KL), times the upstream
            gmu = torch.addcmul(gz, w, mu)  # d KL / d mu = mu
            glv = (var - 1).mul_(w * 0.5)  # d KL / d logvar = (exp(logvar) - 1) / 2
            if std is not None:
                glv.addcmul_(gz, std * plan.eps, value=0.5)  # d z / d logvar = eps exp(logvar / 2) / 2
            cT = plan.cp.transpose(1, 2)  # (Ge, k, Ce); stacked: (Gv, n (k + 1), Cv)
            if plan.stack is not None:
                k = ctx.shapes[2][1]
                grads[2], grads[3] = _unstacked(g.scatter(torch.bmm(cT, gmu)), plan.stack, k)
                grads[4], grads[5] = _unstacked(g.scatter(torch.bmm(cT, glv)), plan.stack, k)
            else:
                grads[2], grads[3] = e.scatter(torch.bmm(cT, gmu)), e.scatter(gmu.sum(1))
                grads[4], grads[5] = e.scatter(torch.bmm(cT, glv)), e.scatter(glv.sum(1))
            grads[6] = g.scatter(gD)
            if plan.vslot is None:
                grads[7] = g.scatter(gy.sum(1))
            else:
                grads[7] = gy.new_zeros(ctx.shapes[7]).index_add_(0, plan.vslot, gy.view(-1, d))
        # every parameter gets a gradient (zero where unused), as DDP expects of a step
        grads = [gr if gr is not None else g_states.new_zeros(shape) for gr, shape in zip(grads, ctx.shapes)]
        return (None, None, None, *grads)


def _layout(counts: np.ndarray, R: int, w: int, row: int) -> tuple[int, np.ndarray, bool]:
    """(C, chunks per slot, gathered) of the cheapest layout in floats moved (w: floats of one slot's
    matrices, row: floats of one padded row), over a few group sizes C.
    - direct (each slot's first C rows in place, E overflow chunks): W read once and its gradient
      written once (2 S w), the overflow's copies of W and their gradients (2 E w), (S + E) C rows;
    - gathered (K chunks of the slots present): 2 S w for the gradient's zero-fill and its reads,
      2 K w for the copies and their gradients, K C rows."""
    counts = np.asarray(counts, dtype=np.int64)
    S, present = len(counts), counts[counts > 0]
    n, cmax = len(present), int(present.max())
    Cs = np.array(sorted({-(-R // n), cmax, *(2 ** i for i in range(11) if 2 ** i < cmax)}))  # candidate C
    K = (-(-present // Cs[:, None])).sum(1)  # (n_C,) chunks of the slots present
    E = K - n  # the overflow chunks of direct
    gathered = 2 * S * w + 2 * K * w + K * Cs * row
    direct = 2 * S * w + 2 * E * w + (S + E) * Cs * row
    i, j = int(np.argmin(gathered)), int(np.argmin(direct))
    if direct[j] <= gathered[i]:
        return int(Cs[j]), np.maximum(-(-counts // Cs[j]), 1), False
    return int(Cs[i]), -(-counts // Cs[i]), True


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
        decoder = getattr(peft, "vae_decoder", "value")
        if decoder not in ("value", "attribute"):
            raise ValueError(f"caption_vectors.peft.vae_decoder: {decoder!r}, expected value or attribute")
        groups = getattr(table, "value_attribute", None)
        # (n_vae,) the decoder slot of each value: itself, or its attribute's (`vae_decoder: attribute`)
        dec_slot = torch.arange(n_vae)
        if decoder == "attribute" and groups is not None and n_vae:
            dec_slot = torch.as_tensor(groups, dtype=torch.long)
        n_dec = int(dec_slot.max()) + 1 if n_vae else 0
        self.dim, self.rank, self.zdim, self.scaling = d, r, zdim, alpha / r
        self.register_buffer("vectors", vectors.clone(), persistent=False)  # (N, d)
        self.register_buffer("is_attr", is_attr.clone(), persistent=False)  # (N,)
        self.register_buffer("slot", slot.clone(), persistent=False)  # (N,) LoRA or VAE slot of each row
        self.register_buffer("dec_slot", dec_slot, persistent=False)  # (n_vae,) each value's decoder
        # None where each value has its own decoder: one grouping then serves encoders and decoders
        self._dec_slot = None if n_dec == n_vae else dec_slot.numpy().copy()
        rows = is_attr.nonzero().squeeze(1)
        coords = value_coords(vectors, rows, slot[rows], n_vae, max_rank=max(1, d // 2))
        k = coords.shape[1]
        attr_pos = torch.full((N,), -1, dtype=torch.long)
        attr_pos[rows] = torch.arange(len(rows))
        self.register_buffer("attr_pos", attr_pos, persistent=False)  # (N,) row -> index in vae_inputs
        # the same three maps as numpy, for `plan`'s bookkeeping (they never change)
        self._index = tuple(t.numpy().copy() for t in (is_attr, slot, attr_pos))
        n_rows = torch.bincount(slot[rows], minlength=n_vae).clamp(min=1).float()[:, None]
        mean = lambda x: torch.zeros(n_vae, x.shape[1]).index_add(0, slot[rows], x) / n_rows  # noqa: E731
        # (R_attr + M, k) the VAE's inputs: each attribute row in its value's basis, then each value's
        # mean row; (R_attr + M, d) the rows its output is added to: the same rows as table vectors
        self.register_buffer("vae_inputs", torch.cat([coords, mean(coords)]), persistent=False)
        self.register_buffer("vae_base", torch.cat([vectors[rows], mean(vectors[rows])]), persistent=False)
        self.n_attr_rows = len(rows)
        # shared decoders and narrow bases: the encoders run stacked per attribute (module docstring). Value
        # m is block stack_at[m] = (its attribute) * n + (its rank within it) of the A * n blocks; its rows'
        # input (R_attr + M, n (k + 1)): [coordinates, 1] in that block, zeros elsewhere. Only where the
        # blocks stay narrow (n (k + 1) <= 2 z: a table's few rows per value), not at `mode: cache`'s k = d
        self._stack_blocks = 0
        if self._dec_slot is not None:
            rank = torch.zeros(n_vae, dtype=torch.long)
            for a in range(n_dec):
                vals = (dec_slot == a).nonzero().squeeze(1)
                rank[vals] = torch.arange(len(vals))
            n = int(rank.max()) + 1
            if n * (k + 1) <= 2 * zdim:
                at = dec_slot * n + rank  # (M,)
                ones = torch.ones(len(self.vae_inputs), 1)
                inp = torch.cat([self.vae_inputs, ones], 1)  # (R_attr + M, k + 1)
                block = rank[torch.cat([slot[rows], torch.arange(n_vae)])]  # (R_attr + M,) each row's block
                stacked = torch.zeros(len(inp), n, k + 1)
                stacked[torch.arange(len(inp)), block] = inp
                self.register_buffer("stack_at", at, persistent=False)
                self.register_buffer("vae_inputs_stacked", stacked.view(len(inp), -1), persistent=False)
                self._stack_blocks = n_dec * n
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
        # (N + 1 + T + 1, d): the corrections of whole captions (`cache_context`) after room for the baked
        # table, a zero row last
        self.register_buffer("context_cache", None, persistent=False)
        self._context_at: dict[bytes, int] = {}  # a cached caption's rows (int64 bytes) -> its first row
        # (T,) the table row at each cached position, where eval mode keeps each cached position's whole
        # state (`_baked`; None: it does not)
        self.register_buffer("context_rows", None, persistent=False)
        self._context_builds = 0  # a new bake follows each build of the cache
        self._bake_key = None

    @torch.no_grad()
    def context_delta(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The contextualiser's correction (B, L, d) of captions given as raw table rows: gathered from
        the cache when every caption of the batch is in it (`cache_context`), else computed."""
        return self._correction(ids, mask, self._cached(ids.cpu().numpy(), mask.cpu().numpy()))

    @torch.no_grad()
    def _correction(self, ids: torch.Tensor, mask: torch.Tensor, where: np.ndarray | None) -> torch.Tensor:
        """(B, L, d): the cache's rows `where` (`_cached`), or computed by the contextualiser where None."""
        if where is None:
            return self.context.correction(self.vectors, ids, mask)
        where = torch.from_numpy(where).to(ids.device)
        return self.context_cache.index_select(0, where).view(*ids.shape, self.dim)

    def _cached(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        """(B * L,) rows of the context cache for a batch (ids (B, L), mask (B, L) bool), its zero row at
        padding; None unless every caption is cached (and left-aligned: the correction depends on the
        positions)."""
        if self.context_cache is None:
            return None
        n = mask.sum(1)  # (B,)
        pos = np.arange(ids.shape[1])
        if not np.array_equal(mask, pos < n[:, None]):
            return None
        get, ids = self._context_at.get, ids.astype(np.int64, copy=False)
        at = [get(r[:k].tobytes()) for r, k in zip(ids, n.tolist())]
        if None in at:
            return None
        first = np.asarray(at, dtype=np.int64)[:, None]  # (B, 1)
        return np.where(mask, first + pos, len(self.context_cache) - 1).ravel()

    @torch.no_grad()
    def cache_context(self, captions, max_mb: float, chunk: int = 64) -> dict:
        """Compute the contextualiser's correction of each distinct caption in `captions` (lists of table
        rows) once and keep it: a batch whose captions are all cached then gathers its correction instead
        of running the contextualiser (a trainer passes its corpus: every step and validation hits).
        The captions are computed in one canonical order (by length, then rows), `chunk` at a time, so the
        cached values depend on the set of captions alone, not on the order a run meets them: a resumed
        run rebuilds the same cache, bit for bit. Not built without a contextualiser, or where it would
        take more than `max_mb` MiB (fp32, the corrections and room for the baked table): batches then
        compute the correction, as without a cache. Where `max_mb` has room for them as well, eval mode
        also keeps each cached position's whole state (its baked row plus the correction), so that a batch
        gathers one row a position instead of two.
        -> {"captions", "rows", "mib", "seconds", "skipped": why not built, or None}."""
        from tristage.captions.contextual import pad_rows

        t0 = time.perf_counter()
        self.context_cache, self.context_rows, self._context_at = None, None, {}
        self._context_builds += 1
        if self.context is None:
            return dict(captions=0, rows=0, mib=0.0, seconds=0.0, skipped="no contextualiser")
        keys = sorted({np.asarray(c, dtype=np.int64).tobytes() for c in captions},
                      key=lambda k: (len(k), k))
        rows = [np.frombuffer(k, dtype=np.int64) for k in keys]
        T = sum(len(r) for r in rows)
        mib = (len(self.vectors) + T + 2) * self.dim * 4 / 2**20
        info = dict(captions=len(rows), rows=T, mib=round(mib, 1), seconds=0.0, skipped=None)
        if mib > max_mb:
            return dict(info, skipped=f"{mib:.0f} MiB > {max_mb:g} MiB")
        dev = self.vectors.device
        # (N + 1 + T + 1, d): room for the baked table's rows and its zero row (`_baked`, eval mode), each
        # caption's corrections, a zero row
        at = len(self.vectors) + 1
        cache = self.vectors.new_zeros(at + T + 1, self.dim)
        for s in range(0, len(rows), chunk):
            part = rows[s:s + chunk]
            ids, mask = pad_rows([r.tolist() for r in part])
            ids, mask = ids.to(dev), mask.to(dev)
            delta = self.context.correction(self.vectors, ids, mask)  # (b, L, d)
            n = int(mask.sum())
            cache[at:at + n] = delta[mask]  # row-major: the part's captions one after another
            for k, r in zip(keys[s:s + chunk], part):
                self._context_at[k] = at
                at += len(r)
        self.context_cache = cache
        if mib + (T + 1) * self.dim * 4 / 2**20 <= max_mb:  # room for the whole states too
            self.context_rows = torch.from_numpy(np.concatenate([np.zeros(0, np.int64), *rows])).to(dev)
        return dict(info, seconds=round(time.perf_counter() - t0, 3))

    def plan(self, rows: torch.Tensor | np.ndarray, sample: bool = False, with_means: bool = False) -> _Plan:
        """The adapters' inputs for distinct table rows (U,): token rows packed by LoRA slot, attribute
        rows by VAE slot (z sampled for them when `sample`), and (`with_means`) each value's mean path
        (the mean of its rows through the VAE's mean) as one more row of its value's group."""
        d, z, dev = self.dim, self.zdim, self.vectors.device
        is_attr, slot, attr_pos = self._index
        to = torch.from_numpy if dev.type == "cpu" else lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
        r = rows if isinstance(rows, np.ndarray) else rows.cpu().numpy()
        attr = is_attr[r]
        tok_i, att_i = np.flatnonzero(~attr), np.flatnonzero(attr)
        plan = _Plan(place=np.empty(len(r), dtype=np.int64), P=0)
        if len(tok_i):
            tr = r[tok_i]
            g = Grouping(slot[tr], self.lora_a.shape[0], 2 * d * self.rank, 4 * d, dev)
            plan.tok, plan.xp = g, self.vectors.index_select(0, to(g.gather_index(tr))).view(g.G, g.C, d)
            plan.place[tok_i] = g.flat
            plan.P = g.G * g.C
        n, M = self.vae_dec_b.shape[0], len(att_i)
        with_means = with_means and n > 0
        if M or with_means:
            ar = r[att_i]
            inp, s = attr_pos[ar], slot[ar]
            if with_means:  # the mean paths are the last n rows of vae_inputs and vae_base
                inp = np.concatenate([inp, self.n_attr_rows + np.arange(n)])
                s = np.concatenate([s, np.arange(n)])
            inputs = self.vae_inputs
            k = inputs.shape[1]
            if self._dec_slot is None:  # a decoder per value: one grouping for the whole VAE
                g = e = Grouping(s, n, 2 * k * z + z * d, k + 3 * z + 2 * d, dev)
            elif self._stack_blocks:  # encoders stacked per attribute: one grouping, by attribute
                inputs = self.vae_inputs_stacked
                k = inputs.shape[1]
                g = e = Grouping(self._dec_slot[s], self.vae_dec_w.shape[0], 2 * k * z + z * d,
                                 k + 3 * z + 2 * d, dev)
                plan.stack, plan.blocks = self.stack_at, self._stack_blocks
            else:  # encoders grouped by value, decoders by attribute; z moves between the two layouts
                e = Grouping(s, n, 2 * k * z, k + 3 * z, dev)
                g = Grouping(self._dec_slot[s], self.vae_dec_w.shape[0], z * d, z + 2 * d, dev)
                perm = np.zeros(g.G * g.C, dtype=np.int64)  # padding: any row, never read back
                perm[g.flat] = e.flat
                plan.enc, plan.perm = e, to(perm)
            if self._dec_slot is not None:  # shared decoders: each decoder row's value (its output bias)
                vslot = np.zeros(g.G * g.C, dtype=np.int64)
                vslot[g.flat] = s
                plan.vslot = to(vslot)
            at = to(e.gather_index(inp))  # (G * C,) padded rows read any row: never read back
            plan.cp = inputs.index_select(0, at).view(e.G, e.C, k)
            at = at if e is g else to(g.gather_index(inp))
            plan.att = g
            plan.base = self.vae_base.index_select(0, at).view(g.G, g.C, d)
            klw = np.zeros(e.G * e.C, dtype=np.float32)
            klw[e.flat[:M]] = 1.0 / max(M, 1)
            plan.klw = to(klw).view(e.G, e.C)
            if sample and M:
                eps = torch.randn(M, z, device=dev)
                plan.eps = eps.new_zeros(e.G * e.C, z).index_copy_(0, to(e.flat[:M]), eps).view(e.G, e.C, z)
            if with_means:
                plan.means = to(g.flat[M:])
            plan.place[att_i] = g.flat[:M] + plan.P
            plan.P += g.G * g.C
        return plan

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

    def _baked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Eval-mode outputs of every row (and ortho, and each row's KL), cached until a parameter changes
        in place (optimizer step, load_state_dict), the module moves or the context cache is rebuilt:
        inference is then a gather. The table is (N + 1, d), row N zero (padding); with a context cache
        it is the cache itself, whose first N + 1 rows are kept for it, so one gather of two rows a
        position reads both. Where the cache has room for it (`cache_context`), also (T + 1, d): each
        cached position's whole state (its row's output plus its caption's correction), a zero row last,
        so a batch of cached captions is a gather of one row a position."""
        params = self._parameters.values()  # all of them (the contextualiser has none)
        cache = self.context_cache
        # a move (`.to`) moves the parameters too, and every cache build counts
        key = (*((p._version, p.data_ptr()) for p in params), self._context_builds)
        if self._bake_key != key:
            N = len(self.vectors)
            every = torch.arange(N, device=self.vectors.device)
            rows, _, self._bake_ortho = self.enhanced_rows(every, with_ortho=True)
            self._bake_context = None
            if cache is None:
                self._bake = torch.cat([rows, rows.new_zeros(1, self.dim)])
            else:
                cache[:N] = rows
                self._bake = cache
                if self.context_rows is not None:
                    whole = cache[N + 1:].clone()  # (T + 1, d): the corrections, the zero row last
                    whole[:-1] += rows[self.context_rows]
                    self._bake_context = whole
            rows = self.is_attr.nonzero().squeeze(1)
            self._bake_kl = self.vectors.new_zeros(N)  # (N,) KL per row, 0 for token rows
            if len(rows):
                self._bake_kl[rows] = self.kl_per_row(rows)
            self._bake_key = key
        return self._bake, self._bake_ortho, self._bake_kl, self._bake_context

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, context: bool = True) -> CaptionStates:
        B, L = ids.shape
        mask = mask.bool()
        context = context and self.context is not None
        ids_np, mask_np = ids.cpu().numpy(), mask.cpu().numpy()
        cached = self._cached(ids_np, mask_np) if context else None  # cache rows of the corrections
        if not self.training and not torch.is_grad_enabled():  # inference: the cached enhanced table
            table, ortho, kl_rows, whole = self._baked()
            N = len(self.vectors)
            if cached is not None and whole is not None:  # each position's state, its correction included
                states = whole.index_select(0, torch.from_numpy(cached - (N + 1)).to(ids.device))
            else:
                rows = np.where(mask_np, ids_np, N).ravel()  # row N: zero, for padding
                if cached is not None:  # each position's baked row plus its caption's cached correction
                    bags = torch.from_numpy(np.stack([rows, cached], 1)).to(ids.device)
                    states = F.embedding_bag(bags, table, mode="sum")
                else:
                    states = table.index_select(0, torch.from_numpy(rows).to(ids.device))
                    if context:
                        states = states + self._correction(ids, mask, None).view(B * L, self.dim)

            present = ids_np[mask_np]  # a copy: the KL is the batch's even if its ids change before the read

            def kl() -> torch.Tensor:  # the mean over the distinct attribute rows present
                rows = np.unique(present[self._index[0][present]])
                if not len(rows):
                    return table.new_zeros(())
                return kl_rows[torch.from_numpy(rows).to(ids.device)].mean()

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
