"""The contextualiser: a small transformer, distilled from the caption encoder, that puts back into
the table's per-row vectors what the encoder's states owe to the rest of the caption.

    ctx = Contextualiser(dim, ContextualiserParams())
    delta = ctx(x, mask)                 # x (B, L, dim) table vectors of a caption's rows -> (B, L, dim)
    states = x + delta                   # what stands for the encoder's states

The table alone gives each token the mean of its states over the build captions (or over a context
key); a pretrained encoder's states depend on the whole caption, so a row cannot match them (all-MiniLM:
0.90 per token on held-out captions). The contextualiser reads the whole caption's rows and adds a
correction. It is trained once, in the `caption_vectors` stage, with 1 - cosine against the encoder's
states per row and per mean-pooled caption (`distil`), on the build captions plus captions recombined
from them (each piece from another caption of the same template family: `recombined_captions`); it
never sees the held-out captions or the paraphrases it is scored on. It reads the raw table (not the
adapters' output) and is frozen, so its output is a function of the caption alone: the caption
modules add it after their adapters (`context=True`), and a row-level use (baking the adapters into a
table) leaves it out.

Pre-norm blocks (attention over the caption's rows + MLP) of width `width`, in/out projections to
the table's dim; the output projection is zero-init, so an untrained contextualiser is the table.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, h: torch.Tensor, at: torch.Tensor, shape: tuple[int, int],
                keep: torch.Tensor) -> torch.Tensor:
        """h (T, w) the caption positions' states, packed (no padding); at (T,) their places in the padded
        (B * L) layout of `shape` (B, L), which attention reads; keep (B, 1, 1, L) bool: keys a query may
        attend to. Every other layer works per position, on the T positions alone."""
        (B, L), w = shape, h.shape[1]
        qkv = self.qkv(self.norm1(h))  # (T, 3w)
        qkv = qkv.new_zeros(B * L, 3 * w).index_copy_(0, at, qkv)  # (B * L, 3w), zero at padding
        q, k, v = qkv.view(B, L, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, heads, L, w / heads)
        h = h + self.proj(a.transpose(1, 2).reshape(B * L, w).index_select(0, at))  # (T, w)
        return h + self.mlp(self.norm2(h))


class Contextualiser(nn.Module):
    def __init__(self, dim: int, width: int = 128, layers: int = 2, heads: int = 4, max_len: int = 128):
        super().__init__()
        if width % heads:
            raise ValueError(f"contextualiser width {width} is not a multiple of heads {heads}")
        self.config = dict(dim=dim, width=width, layers=layers, heads=heads, max_len=max_len)
        self.inp = nn.Linear(dim, width)
        self.pos = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim) the table's vectors of each caption's rows, mask (B, L) -> delta (B, L, dim),
        zero at masked positions. Positions past max_len reuse the last position embedding. The layers
        that work per position run on the caption positions only (packed): the padding of a batch of
        captions of mixed lengths is about a fifth of its positions."""
        B, L, dim = x.shape
        at = mask.reshape(-1).nonzero().squeeze(1)  # (T,) the caption positions in the (B * L) layout
        pos = (at % L).clamp(max=self.pos.num_embeddings - 1)
        h = self.inp(x.reshape(B * L, dim).index_select(0, at)) + self.pos(pos)  # (T, w)
        keep = mask[:, None, None, :]  # (B, 1, 1, L)
        for block in self.blocks:
            h = block(h, at, (B, L), keep)
        out = self.out(self.norm(h))  # (T, dim)
        return out.new_zeros(B * L, dim).index_copy_(0, at, out).view(B, L, dim)

    def correction(self, vectors: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """delta (B, L, dim) of captions given as rows ids (B, L) of a table's raw `vectors` (N, dim), mask
        (B, L). The one way the table's users call it. Padded positions may hold any row: attention never
        reads a padded key, every other layer works per position, and the output is zero there."""
        return self(vectors[ids], mask)


def frozen(module: nn.Module) -> nn.Module:
    """`module` with its parameters turned into non-persistent buffers: it moves with its owner
    (`.to(device)`), stays out of `parameters()` (optimizers, DDP, freezing presets) and out of
    checkpoints (it belongs to the caption table, which the run saves elsewhere)."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            del m._parameters[name]
            m.register_buffer(name, p.detach().clone(), persistent=False)
    return module.eval()


def pad_rows(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L), mask (B, L)) of captions given as lists of table rows, padded with row 0."""
    L = max(1, max((len(r) for r in rows), default=1))
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


def recombined_captions(captions: list[str], lexicon: dict, n: int, seed: int,
                        exclude: set[str] = frozenset()) -> list[str]:
    """Up to `n` new captions made from the build captions of one template family (the captions that
    state the same attributes in the same order): each piece of a new caption, an attribute phrase or
    the text between two, is the same piece of a random member of the family. The corpus's own
    grammatical wordings in new combinations (attribute values included); none in `exclude`."""
    from tristage.captions.lexicon import Matcher
    from tristage.corpus.text import fix_articles

    m, rng = Matcher(lexicon), np.random.default_rng(seed)
    families: dict[tuple[str, ...], list[list[str]]] = {}  # attributes in order -> members' pieces
    for c in captions:
        spans = m.spans(c)
        if spans:
            cuts = [0] + [x for a, b, _, _ in spans for x in (a, b)] + [len(c)]
            families.setdefault(tuple(s[2] for s in spans), []).append(
                [c[cuts[i]:cuts[i + 1]] for i in range(len(cuts) - 1)])
    keys = [k for k in sorted(families) if len(families[k]) > 1]
    out: dict[str, None] = {}
    for _ in range(4 * n if keys else 0):
        members = families[keys[int(rng.integers(len(keys)))]]
        picks = rng.integers(len(members), size=len(members[0]))
        new = fix_articles("".join(members[j][i] for i, j in enumerate(picks)))
        new = new[:1].upper() + new[1:]
        if new not in exclude:
            out.setdefault(new)
        if len(out) >= n:
            break
    return list(out)


def id_targets(table, captions: list[str],
               states: list[np.ndarray]) -> tuple[list[list[int]], list[np.ndarray]]:
    """Per caption the table rows the caption module sees and, per row, the encoder state it stands
    for (the mean over the token positions of the row: one position, unless attribute pieces are off)."""
    rows, targets = [], []
    for c, H in zip(captions, states):
        ids, where, _ = table.lookup(c)
        if not where:
            continue
        rows.append(ids)
        targets.append(np.stack([H[p].mean(0) for p in where]).astype(np.float32))
    return rows, targets


def distil(table, captions: list[str], states: list[np.ndarray], cp,
           progress: bool = False) -> tuple[Contextualiser, dict]:
    """Train a contextualiser for `table` on captions and their encoder states (loss: 1 - the mean cosine
    per row, plus `caption_loss_weight` x (1 - the cosine of the mean-pooled caption), which the per-row
    term alone leaves behind):
    (the module, frozen, and a log of {steps, seconds, loss_start, loss_end}). One torch thread: the
    same inputs give the same bytes (with two, float sums come out in another order run to run, and
    DVC would rerun every stage downstream after an identical rerun); it costs about 1.4x the time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _distil(table, captions, states, cp, progress)
    finally:
        torch.set_num_threads(threads)


def _distil(table, captions, states, cp, progress):
    import time

    from tqdm.auto import tqdm

    p = cp.contextualiser
    torch.manual_seed(cp.seed)
    rng = np.random.default_rng(cp.seed)
    rows, targets = id_targets(table, captions, states)
    if not rows:
        raise ValueError("no captions to distil the contextualiser from")
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)  # (N, L) table rows of each caption, padded
    H = torch.zeros(len(rows), L, table.dim)  # (N, L, dim) the encoder states they stand for
    for i, (r, h) in enumerate(zip(rows, targets)):
        ids[i, : len(r)], H[i, : len(r)] = torch.as_tensor(r), torch.from_numpy(h)
    lengths = torch.tensor([len(r) for r in rows])
    ctx = Contextualiser(table.dim, p.width, p.layers, p.heads, cp.max_length).train()
    opt = torch.optim.AdamW(ctx.parameters(), lr=p.lr, weight_decay=0.01)
    V = table.vectors
    t0, losses = time.perf_counter(), []
    warmup = max(1, p.steps // 20)
    for step in tqdm(range(p.steps), desc="distilling the contextualiser", disable=not progress):
        pick = torch.from_numpy(rng.choice(len(rows), min(p.batch_size, len(rows)), replace=False))
        n = int(lengths[pick].max())
        mask = torch.arange(n)[None] < lengths[pick][:, None]  # (b, n)
        x, h = V[ids[pick, :n]] * mask.unsqueeze(-1), H[pick, :n]
        lr = p.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / p.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        y, m = x + ctx(x, mask), mask.unsqueeze(-1).float()
        token = F.cosine_similarity(y, h, dim=-1)[mask].mean()  # per row
        caption = F.cosine_similarity((y * m).sum(1), (h * m).sum(1), dim=-1).mean()  # mean-pooled
        loss = (1 - token) + p.caption_loss_weight * (1 - caption)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ctx.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    k = max(1, len(losses) // 20)
    info = dict(steps=p.steps, captions=len(rows), seconds=round(time.perf_counter() - t0, 2),
                loss_start=round(float(np.mean(losses[:k])), 5) if losses else None,
                loss_end=round(float(np.mean(losses[-k:])), 5) if losses else None)
    log.info("contextualiser %s: %d steps on %d captions, loss %.4f -> %.4f, %.1f s",
             {k: v for k, v in ctx.config.items() if k != "dim"}, p.steps, len(rows),
             info["loss_start"] or 0, info["loss_end"] or 0, info["seconds"])
    return frozen(ctx), info
