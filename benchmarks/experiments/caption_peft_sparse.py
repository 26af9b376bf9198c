"""Experiment (not part of `make bench`): the caption PEFT with sparse (row-indexed) adapter gradients
and SparseAdam, vs the current dense gradients and AdamW, timed against the T5 encoder forward.

    python -m benchmarks.experiments.caption_peft_sparse [--sizes t5-base,flan-t5-large] [--repeats 20]

Same table, caption batch, encoder and loss as `benchmarks/caption_vectors.py` (its helpers, imported).
Timed round-robin, one call each per repeat after a warm-up; ratios are encoder time / step time per
repeat, median [p10-p90]:
- current: `CaptionPEFT` in train mode, forward + backward (what caption_vectors times), and the same
  plus what the trainer does after it: `clip_grad_norm_` over all params, AdamW step (the trainer's
  `build_optimizer` groups: weight decay on matrices), zero_grad.
- sparse: `SparsePEFT` below. Every per-slot adapter matrix (lora_a, lora_b, vae_mu_w, vae_logvar_w,
  vae_dec_w) is stored flattened, (slots, a*b), and read only through `F.embedding(slots, W,
  sparse=True)` of the slots the batch uses, so backward yields a sparse COO gradient holding those
  rows only; SparseAdam updates them, AdamW (same groups) the dense rest (the VAE biases). The
  gradient norm is clipped by `clip_mixed` (torch's `clip_grad_norm_` rejects sparse gradients).
- sparse-lora: the LoRA matrices sparse, the VAE matrices dense (AdamW).
Checks, before timing, on the same init (the zero-init matrices given small random values so that
every gradient is non-zero): forward outputs and gradients of the touched rows equal to the current
module's (max abs diff), untouched rows' dense gradients exactly zero, and what one and two optimizer
steps do to rows that a batch did not touch (the semantic difference of lazy Adam).

What adopting it would change (the checks show the first three):
- SparseAdam is lazy Adam: a row's moments and value change only on steps whose batch touches it.
  AdamW decays every row's moments each step and keeps moving a row on its momentum after the
  batches stop touching it.
- No weight decay on the sparse matrices (SparseAdam has none; AdamW decays even untouched rows).
- SparseAdam adds eps to sqrt(v) before the bias correction: effective eps = eps / sqrt(1 - beta2^t)
  (7x at step 1, -> 1x later); it matters only where |grad| is near eps.
- torch.nn.utils.clip_grad_norm_ raises NotImplementedError on sparse gradients: the trainer's call
  must become a sparse-aware one (`clip_mixed`; same norm, untouched rows contribute 0).
- Every read of a sparse matrix must go through F.embedding(sparse=True): one dense read (e.g. the
  parent's `vae_logvar_w.sum()` DDP touch) turns the gradient dense and SparseAdam raises.
- Two optimizers: the LR schedule, checkpoints (state dicts) and the run fingerprint need both; the
  matrices are stored flattened (slots, a*b), so checkpoints of the current module need a reshape.
- DDP all-reduces sparse gradients on gloo only: NCCL has no sparse collectives.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.caption_vectors import SIZES, bench_table, caption_batch, round_robin, spread
from tristage.captions.config import PeftParams
from tristage.captions.peft import CaptionPEFT, grouped_matmul
from tristage.training.optim import build_optimizer

# the trainer's defaults (training/config.py StageParams), but no warm-up: build_optimizer's LambdaLR
# scales AdamW's lr from its first step (1/30 at step 0), which SparseAdam would not get here
STAGE = types.SimpleNamespace(lr=2e-4, lr_scale=1.0, weight_decay=0.01, warmup_steps=0, steps=300,
                              min_lr_ratio=0.1, grad_clip=1.0)
MATRICES = ("lora_a", "lora_b", "vae_mu_w", "vae_logvar_w", "vae_dec_w")


class SparsePEFT(CaptionPEFT):
    """CaptionPEFT with the per-slot matrices flattened to (slots, a*b) and gathered per batch; those
    named in `sparse` get sparse gradients (F.embedding(sparse=True)), the others dense ones."""

    def __init__(self, table, peft=None, sparse=MATRICES):
        super().__init__(table, peft)
        self.shapes = {}
        for n in MATRICES:
            p = getattr(self, n)
            self.shapes[n] = tuple(p.shape[1:])
            setattr(self, n, nn.Parameter(p.detach().reshape(p.shape[0], -1).clone()))
        self.sparse = tuple(sparse)

    @classmethod
    def like(cls, dense: CaptionPEFT, table, peft, sparse=MATRICES) -> SparsePEFT:
        m = cls(table, peft, sparse)
        m.load_state_dict({k: v.reshape(getattr(m, k).shape) for k, v in dense.state_dict().items()})
        return m.train(dense.training)

    def rows(self, name: str, slots: torch.Tensor) -> torch.Tensor:
        """The adapter matrices of `slots` (G,) -> (G, a, b); a sparse gradient if `name` is sparse."""
        W = getattr(self, name)
        g = F.embedding(slots, W, sparse=True) if name in self.sparse else W[slots]
        return g.view(len(slots), *self.shapes[name])

    def lora(self, x, s):
        slots, local = torch.unique(s, return_inverse=True)
        h = grouped_matmul(x, local, self.rows("lora_a", slots))
        return x + self.scaling * grouped_matmul(h, local, self.rows("lora_b", slots))

    def vae(self, x, s, sample):
        slots, local = torch.unique(s, return_inverse=True)
        mu = grouped_matmul(x, local, self.rows("vae_mu_w", slots)) + self.vae_mu_b[s]
        logvar = grouped_matmul(x, local, self.rows("vae_logvar_w", slots)) + self.vae_logvar_b[s]
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        out = x + grouped_matmul(z, local, self.rows("vae_dec_w", slots)) + self.vae_dec_b[s]
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
        return out, kl

    def enhanced_attributes(self):
        n = self.vae_dec_b.shape[0]
        every = torch.arange(n, device=self.vae_dec_b.device)  # orthogonality reads every VAE
        x = self.attr_means
        mu = torch.einsum("md,mdz->mz", x, self.rows("vae_mu_w", every)) + self.vae_mu_b
        return x + torch.einsum("mz,mzd->md", mu, self.rows("vae_dec_w", every)) + self.vae_dec_b[:n]

    def enhanced_rows(self, rows, sample=False):
        if self.is_attr[rows].any():
            return super().enhanced_rows(rows, sample)
        x = self.vectors[rows]  # no attribute row: the parent's DDP touch of the VAE variance, sparse-safe
        one = torch.zeros(1, dtype=torch.long, device=x.device)
        touch = self.rows("vae_logvar_w", one).sum() + self.vae_logvar_b.sum()
        return self.lora(x, self.slot[rows]), 0.0 * touch


def is_sparse_param(m: nn.Module, name: str) -> bool:
    return isinstance(m, SparsePEFT) and name in m.sparse


def optimizers(m: nn.Module) -> list:
    """The trainer's AdamW groups over the dense params; SparseAdam (same lr, betas, eps) over the sparse."""
    dense = [(n, p) for n, p in m.named_parameters() if not is_sparse_param(m, n)]
    opts = [build_optimizer(types.SimpleNamespace(named_parameters=lambda: dense), STAGE)[0]]
    sparse = [p for n, p in m.named_parameters() if is_sparse_param(m, n)]
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=STAGE.lr * STAGE.lr_scale, betas=(0.9, 0.98), eps=1e-8))
    return opts


@torch.no_grad()
def clip_mixed(params, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ (L2, same coefficient) over dense and sparse gradients; sparse ones are coalesced
    first (duplicate rows summed: an uncoalesced tensor's values would give a wrong norm)."""
    grads = []
    for p in params:
        if p.grad is not None:
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce()
            grads.append(p.grad)
    sq = [(g._values() if g.is_sparse else g).pow(2).sum() for g in grads]
    total = torch.stack(sq).sum().sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        (g._values() if g.is_sparse else g).mul_(coef)
    return total


def loss_of(m: nn.Module, ids, mask) -> torch.Tensor:
    out = m(ids, mask)  # the loss benchmarks/caption_vectors.py uses
    return out.states.square().mean() + out.kl + out.ortho


def step(m: nn.Module, opts: list, ids, mask) -> torch.Tensor:
    """forward + backward + clip + optimizer step + zero_grad, as the trainer's train_step."""
    loss_of(m, ids, mask).backward()
    params = [p for p in m.parameters() if p.requires_grad]
    if isinstance(m, SparsePEFT):
        total = clip_mixed(params, STAGE.grad_clip)
    else:
        total = torch.nn.utils.clip_grad_norm_(params, STAGE.grad_clip)
    for o in opts:
        o.step()
    m.zero_grad(set_to_none=True)
    return total


def flat(name: str, t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if name in MATRICES else t


def perturbed(table, peft, seed: int = 1) -> CaptionPEFT:
    """The current module with its zero-init params given small random values (non-zero gradients)."""
    m = CaptionPEFT(table, peft).train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return m


def check(table, peft, batches) -> list[str]:
    """Numeric equivalence of SparsePEFT (all matrices sparse) with CaptionPEFT; lines to print."""
    (ids, mask), (ids2, mask2) = batches
    dense = perturbed(table, peft)
    sp = SparsePEFT.like(dense, table, peft)
    lines = []
    res = {}
    for name, m in (("dense", dense), ("sparse", sp)):
        torch.manual_seed(7)  # the same VAE sample
        out = m(ids, mask)
        (out.states.square().mean() + out.kl + out.ortho).backward()
        res[name] = out
    diff = lambda a, b: float((a - b).detach().abs().max())
    a, b = res["dense"], res["sparse"]
    lines.append(f"forward (train mode, same VAE sample): max abs diff states {diff(a.states, b.states):.2e} "
                 f"(max |states| {float(a.states.detach().abs().max()):.2f}), kl {diff(a.kl, b.kl):.2e}, "
                 f"ortho {diff(a.ortho, b.ortho):.2e}")
    for n, p in sp.named_parameters():
        gd = flat(n, dict(dense.named_parameters())[n].grad)
        gs = p.grad
        if gs.is_sparse:
            gs = gs.coalesce()
            idx = gs._indices()[0]
            rest = torch.ones(len(gd), dtype=torch.bool)
            rest[idx] = False
            ok = torch.allclose(gd[idx], gs._values(), rtol=1e-5, atol=1e-7)
            lines.append(
                f"grad {n} (sparse): {len(idx)}/{len(gd)} rows; touched rows max abs diff "
                f"{diff(gd[idx], gs._values()):.2e} (max |grad| {float(gd.abs().max()):.2e}, allclose {ok}); "
                f"dense grad of the {int(rest.sum())} untouched rows: max |g| "
                f"{float(gd[rest].abs().max()) if rest.any() else 0.0:.1e}")
        else:
            lines.append(f"grad {n} (dense): max abs diff {diff(gd, gs):.2e} "
                         f"(allclose {torch.allclose(gd, gs, rtol=1e-5, atol=1e-7)})")
    with torch.inference_mode():  # the baked-table inference path
        dense.eval(), sp.eval()
        lines.append(f"inference (eval, baked): max abs diff states "
                     f"{diff(dense(ids, mask).states, sp(ids, mask).states):.2e}")
        dense.train(), sp.train()
    # two optimizer steps, batch 1 then batch 2: rows by which batches touched them
    dense.zero_grad(set_to_none=True), sp.zero_grad(set_to_none=True)
    od, osp = optimizers(dense), optimizers(sp)
    p0 = {n: flat(n, p.detach().clone()) for n, p in dense.named_parameters()}
    for k, (i, mk) in enumerate(((ids, mask), (ids2, mask2))):
        torch.manual_seed(100 + k)
        nd = step(dense, od, i, mk)
        torch.manual_seed(100 + k)
        ns = step(sp, osp, i, mk)
        lines.append(f"step {k + 1}: gradient norm before clipping dense {float(nd):.6g}, "
                     f"sparse {float(ns):.6g}")
    touched = [torch.zeros(len(dense.lora_a), dtype=torch.bool) for _ in range(2)]
    for t, (i, mk) in zip(touched, ((ids, mask), (ids2, mask2))):
        r = torch.unique(i[mk])
        t[dense.slot[r[~dense.is_attr[r]]]] = True
    for n in ("lora_a", "lora_b"):
        pd, ps = flat(n, getattr(dense, n).detach()), getattr(sp, n).detach()
        moved_d, moved_s = (pd - p0[n]).abs().amax(1), (ps - p0[n]).abs().amax(1)
        parts = []
        for what, sel in (("both steps", touched[0] & touched[1]), ("step 1 only", touched[0] & ~touched[1]),
                          ("step 2 only", ~touched[0] & touched[1]), ("neither", ~touched[0] & ~touched[1])):
            if sel.any():
                parts.append(f"{what} ({int(sel.sum())} slots): moved dense {float(moved_d[sel].max()):.2e}, "
                             f"sparse {float(moved_s[sel].max()):.2e}, "
                             f"dense-sparse {diff(pd[sel], ps[sel]):.2e}")
        lines.append(f"after 2 steps, {n} rows by the batches that touched them: " + "; ".join(parts))
    return lines


def nbytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def grad_bytes(m: nn.Module) -> int:
    out = 0
    for p in m.parameters():
        g = p.grad
        if g is not None:
            g = g.coalesce() if g.is_sparse else g
            out += nbytes([g._indices(), g._values()]) if g.is_sparse else nbytes([g])
    return out


def more_lora_slots(table, extra: int):
    """The table with its vocabulary-fallback rows spread over `extra` LoRA slots of their own (they share
    slot 0 in a real build): a larger token vocabulary, of which a batch of demo captions uses none."""
    slot = table.adapter_ids.clone()
    vocab = torch.tensor([k == "vocab" for k in table.kinds])
    slot[vocab] = table.n_lora + torch.arange(int(vocab.sum())) % extra
    return types.SimpleNamespace(vectors=table.vectors, is_attribute=table.is_attribute, adapter_ids=slot)


def profile_line(fn, calls: int = 3, top: int = 8) -> str:
    """The ops that take the most self CPU time over `calls` calls of fn: name ms-per-call (share)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ev)
    return f"{total / 1e3 / calls:.1f} ms/call: " + ", ".join(
        f"{e.key} {e.self_cpu_time_total / 1e3 / calls:.1f} ({100 * e.self_cpu_time_total / total:.0f}%)"
        for e in ev[:top])


def measure(name: str, batch: int, repeats: int, warmup: int, do_check: bool, lora_slots: int = 0,
            do_profile: bool = False) -> tuple[dict, list[str]]:
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=32128, dropout_rate=0.0, **SIZES[name])
    torch.manual_seed(0)
    enc = T5EncoderModel(cfg).eval()
    table = bench_table(cfg.d_model)
    ids, mask = caption_batch(table, batch, seed=0)
    batch2 = caption_batch(table, batch, seed=1)
    if lora_slots:
        table = more_lora_slots(table, lora_slots)
    g = torch.Generator().manual_seed(0)
    ids_enc = torch.randint(5, 32000, ids.shape, generator=g) * mask
    peft = PeftParams()
    lines = []
    if do_check:
        lines += check(table, peft, [(ids, mask), batch2])
    torch.manual_seed(0)
    models = dict(current=CaptionPEFT(table, peft).train())
    models["sparse"] = SparsePEFT.like(models["current"], table, peft)
    models["sparse-lora"] = SparsePEFT.like(models["current"], table, peft, sparse=("lora_a", "lora_b"))
    opts = {k: optimizers(m) for k, m in models.items()}

    def encoder():
        with torch.inference_mode():
            enc(input_ids=ids_enc, attention_mask=mask.long()).last_hidden_state

    def fwd_bwd(m):
        def fn():
            loss_of(m, ids, mask).backward()
            m.zero_grad(set_to_none=True)
        return fn

    fns = dict(encoder=encoder)
    for k, m in models.items():
        fns[f"{k} fwd+bwd"] = fwd_bwd(m)
        fns[f"{k} +step"] = lambda m=m, o=opts[k]: step(m, o, ids, mask)
    t, c = round_robin(fns, repeats, warmup, lambda: None)
    if do_profile:
        lines += [f"profile {k}: {profile_line(fns[k])}"
                  for k in ("current fwd+bwd", "current +step", "sparse fwd+bwd", "sparse +step")]
    mem = {}
    for k, m in models.items():
        loss_of(m, ids, mask).backward()
        state = [v for o in opts[k] for s in o.state.values() for v in s.values() if torch.is_tensor(v)]
        mem[k] = (nbytes(m.parameters()), grad_bytes(m), nbytes(state))
        m.zero_grad(set_to_none=True)
    u = torch.unique(ids[mask])
    cur = models["current"]
    slots = dict(lora=(len(torch.unique(cur.slot[u[~cur.is_attr[u]]])), len(cur.lora_a)),
                 vae=(len(torch.unique(cur.slot[u[cur.is_attr[u]]])), len(cur.vae_mu_w)))
    r = dict(encoder=name, d=cfg.d_model, lora_slots=lora_slots, batch=batch, tokens=int(mask.sum()),
             unique_rows=len(u), table_rows=len(table.vectors), slots=slots, times=t, cpu=c, mem=mem)
    return r, lines


def report(r: dict, threads: int) -> str:
    t, c = r["times"], r["cpu"]
    ms = lambda k: spread(1e3 * t[k])
    head = (f"caption_peft_sparse [{r['encoder']} size, d={r['d']}, cpu, {threads} threads]: batch of "
            f"{r['batch']} demo captions ({r['tokens']} tokens, {r['unique_rows']} distinct table rows of "
            f"{r['table_rows']}; "
            + (f"vocabulary rows spread over {r['lora_slots']} extra LoRA slots; " if r["lora_slots"] else "")
            + f"LoRA slots used {r['slots']['lora'][0]}/{r['slots']['lora'][1]}, VAE slots "
            f"{r['slots']['vae'][0]}/{r['slots']['vae'][1]}, orthogonality reads all VAEs); median "
            f"[p10-p90] of {len(t['encoder'])} round-robin repeats; encoder forward {ms('encoder')} ms")
    rows = ["", "| variant | fwd+bwd ms | ratio | cpu ratio | +clip+step ms | ratio | cpu ratio "
            "| params / grads / optimizer state MiB |", "|---|---|---|---|---|---|---|---|"]
    for k, (pb, gb, sb) in r["mem"].items():
        fb, st = f"{k} fwd+bwd", f"{k} +step"
        rows.append(f"| {k} | {ms(fb)} | {spread(t['encoder'] / t[fb])}x | {spread(c['encoder'] / c[fb])}x | "
                    f"{ms(st)} | {spread(t['encoder'] / t[st])}x | {spread(c['encoder'] / c[st])}x | "
                    f"{pb / 2**20:.1f} / {gb / 2**20:.1f} / {sb / 2**20:.1f} |")
    return head + "\n".join(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--no-check", action="store_true", help="skip the numeric checks")
    ap.add_argument("--lora-slots", type=int, default=0,
                    help="give the vocabulary-fallback rows this many LoRA slots of their own (0: none)")
    ap.add_argument("--profile", action="store_true", help="print the top ops of the +step calls")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: all cores, as caption_vectors); 1: steadier on a loaded machine")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads or max(1, min(os.cpu_count() or 1, 16)))
    sizes = [n for n in a.sizes.split(",") if n]
    if set(sizes) - set(SIZES):
        ap.error(f"--sizes: unknown {sorted(set(sizes) - set(SIZES))}; known: {', '.join(SIZES)}")
    rows = []
    for name in sizes:
        t0 = time.perf_counter()
        r, lines = measure(name, a.batch, a.repeats, a.warmup, not a.no_check, a.lora_slots, a.profile)
        for line in lines:
            print(f"check [{name}]: {line}")
        print(report(r, torch.get_num_threads()))
        print(f"({time.perf_counter() - t0:.0f} s)", flush=True)
        rows.append(r)
    print(f"command: python -m benchmarks.experiments.caption_peft_sparse --batch {a.batch} --repeats "
          f"{a.repeats} --warmup {a.warmup} --sizes {','.join(sizes)}" + (" --no-check" if a.no_check else "")
          + (f" --lora-slots {a.lora_slots}" if a.lora_slots else "") + (" --profile" if a.profile else "")
          + (f" --threads {a.threads}" if a.threads else ""))
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
