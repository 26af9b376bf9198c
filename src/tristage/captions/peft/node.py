"""The fused path's one autograd node: a plan's rows through their adapters (LoRA, the VAEs), the KL, the
orthogonality of the values' mean paths and the gather to the caption positions, forward and backward
written out (tests hold it to reference.py for values and gradients)."""
from __future__ import annotations

import torch

from tristage.captions.peft.plan import _Plan


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

