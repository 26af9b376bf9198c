"""The fused path's plan: a batch's distinct table rows packed by adapter (`Grouping`), the inputs of one
pass through the autograd node (node.py). No gradient flows into a plan; its bookkeeping is numpy."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from tristage.captions.peft.grouping import Grouping


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


def stack_encoders(m) -> None:
    """With shared decoders and narrow bases, the encoders run stacked per attribute: value s is block
    stack_at[s] = (its attribute) * n + (its rank within it) of the A * n blocks, and its rows' input
    (R + M, n (k + 1)) is [coordinates, 1] in that block, zeros elsewhere, so one product per attribute
    computes each value's own encoder (and bias). Only where the blocks stay narrow (n (k + 1) <= 2 z: a
    table's few rows per value), not at `mode: cache`'s k = d. Sets m._stack_blocks (0: not stacked)."""
    m._stack_blocks = 0
    if m._dec_slot is None:
        return
    dec_slot, n_vae, n_dec = m.dec_slot.cpu(), len(m.dec_slot), m.vae_dec_w.shape[0]
    k = m.vae_inputs.shape[1]
    rank = torch.zeros(n_vae, dtype=torch.long)
    for a in range(n_dec):
        vals = (dec_slot == a).nonzero().squeeze(1)
        rank[vals] = torch.arange(len(vals))
    n = int(rank.max()) + 1
    if n * (k + 1) > 2 * m.zdim:
        return
    inputs = m.vae_inputs.cpu()
    inp = torch.cat([inputs, torch.ones(len(inputs), 1)], 1)  # (R + M, k + 1)
    attr_rows = m.is_attr.cpu().nonzero().squeeze(1)
    block = rank[torch.cat([m.slot.cpu()[attr_rows], torch.arange(n_vae)])]  # (R + M,) each row's block
    stacked = torch.zeros(len(inp), n, k + 1)
    stacked[torch.arange(len(inp)), block] = inp
    m.register_buffer("stack_at", dec_slot * n + rank, persistent=False)  # (M,)
    m.register_buffer("vae_inputs_stacked", stacked.view(len(inp), -1), persistent=False)
    m._stack_blocks = n_dec * n


def make_plan(m, rows: torch.Tensor | np.ndarray, sample: bool = False, with_means: bool = False) -> _Plan:
    """The adapters' inputs for distinct table rows (U,) of module m: token rows packed by LoRA slot,
    attribute rows by VAE slot (z sampled for them when `sample`), and (`with_means`) each value's mean
    path (the mean of its rows through the VAE's mean) as one more row of its value's group."""
    d, dev = m.dim, m.vectors.device
    is_attr, slot, _ = m._index
    to = torch.from_numpy if dev.type == "cpu" else lambda a: torch.from_numpy(a).to(dev)
    r = rows if isinstance(rows, np.ndarray) else rows.cpu().numpy()
    attr = is_attr[r]
    tok_i, att_i = np.flatnonzero(~attr), np.flatnonzero(attr)
    plan = _Plan(place=np.empty(len(r), dtype=np.int64), P=0)
    if len(tok_i):
        tr = r[tok_i]
        g = Grouping(slot[tr], m.lora_a.shape[0], 2 * d * m.rank, 4 * d, dev)
        plan.tok, plan.xp = g, m.vectors.index_select(0, to(g.gather_index(tr))).view(g.G, g.C, d)
        plan.place[tok_i] = g.flat
        plan.P = g.G * g.C
    with_means = with_means and m.vae_dec_b.shape[0] > 0
    if len(att_i) or with_means:
        _plan_attributes(m, plan, r[att_i], att_i, sample, with_means, to)
    return plan


def _plan_attributes(m, plan: _Plan, ar: np.ndarray, att_i: np.ndarray, sample: bool, with_means: bool,
                     to) -> None:
    """The VAE part of a plan: attribute rows ar (M,) at places att_i of the distinct rows."""
    d, z, dev = m.dim, m.zdim, m.vectors.device
    _, slot, attr_pos = m._index
    n, M = m.vae_dec_b.shape[0], len(ar)
    inp, s = attr_pos[ar], slot[ar]
    if with_means:  # the mean paths are the last n rows of vae_inputs and vae_base
        inp = np.concatenate([inp, m.n_attr_rows + np.arange(n)])
        s = np.concatenate([s, np.arange(n)])
    g, e, inputs = _vae_groupings(m, plan, s, to)
    k = inputs.shape[1]
    at = to(e.gather_index(inp))  # (G * C,) padded rows read any row: never read back
    plan.cp = inputs.index_select(0, at).view(e.G, e.C, k)
    at = at if e is g else to(g.gather_index(inp))
    plan.att = g
    plan.base = m.vae_base.index_select(0, at).view(g.G, g.C, d)
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


def _vae_groupings(m, plan: _Plan, s: np.ndarray, to) -> tuple[Grouping, Grouping, torch.Tensor]:
    """(the decoders' grouping, the encoders', the encoders' inputs) of VAE rows of values s (V,)."""
    d, z, dev = m.dim, m.zdim, m.vectors.device
    n = m.vae_dec_b.shape[0]
    inputs = m.vae_inputs
    k = inputs.shape[1]
    if m._dec_slot is None:  # a decoder per value: one grouping for the whole VAE
        g = e = Grouping(s, n, 2 * k * z + z * d, k + 3 * z + 2 * d, dev)
        return g, e, inputs
    if m._stack_blocks:  # encoders stacked per attribute: one grouping, by attribute
        inputs = m.vae_inputs_stacked
        k = inputs.shape[1]
        g = e = Grouping(m._dec_slot[s], m.vae_dec_w.shape[0], 2 * k * z + z * d, k + 3 * z + 2 * d, dev)
        plan.stack, plan.blocks = m.stack_at, m._stack_blocks
    else:  # encoders grouped by value, decoders by attribute; z moves between the two layouts
        e = Grouping(s, n, 2 * k * z, k + 3 * z, dev)
        g = Grouping(m._dec_slot[s], m.vae_dec_w.shape[0], z * d, z + 2 * d, dev)
        perm = np.zeros(g.G * g.C, dtype=np.int64)  # padding: any row, never read back
        perm[g.flat] = e.flat
        plan.enc, plan.perm = e, to(perm)
    # shared decoders: each decoder row's value (its output bias)
    vslot = np.zeros(g.G * g.C, dtype=np.int64)
    vslot[g.flat] = s
    plan.vslot = to(vslot)
    return g, e, inputs
