"""The fused path's two caches, mixins of FusedPEFT (they use its buffers: vectors, context, ...):

- ContextCache: the contextualiser's correction is a function of the caption alone, so it can be
  computed once per caption: `cache_context` (the trainer passes its corpus's captions) keeps them, and
  a batch of cached captions gathers them.
- BakedTable: in eval mode without gradients, every row's output (and the orthogonality, and each
  row's KL) is computed once and inference is a gather (`_baked`), until the weights change.

When the bake is stale is decided from public facts only (`bake_key`):
- every step of any torch optimizer, counted by torch.optim's global step post hook: an in-place
  update by an optimizer re-bakes, in whatever mode the module is;
- the module's own count of changes (`invalidate_bake`), bumped by load_state_dict (a post hook),
  a switch between train and eval mode, and each build of the context cache;
- each parameter's identity, device and dtype (a move or a cast).
A parameter edited by hand (outside an optimizer, load_state_dict or a mode switch) goes unseen: call
`invalidate_bake()` after such an edit (switching to eval mode after it does the same).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

_optimizer_steps = 0  # steps taken by every torch optimizer in this process


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


def invalidate_on_load(module, incompatible_keys) -> None:
    """A load_state_dict post hook: the loaded weights need a new bake."""
    module.invalidate_bake()


class BakedTable:
    def _init_bake(self) -> None:
        self._bake_changes = 0  # bumped by `invalidate_bake`
        self._bake_key = None
        self.register_load_state_dict_post_hook(invalidate_on_load)

    def invalidate_bake(self) -> None:
        """The next inference call re-bakes (after a parameter was edited by hand)."""
        self._bake_changes += 1

    def train(self, mode: bool = True):
        if mode != self.training:  # weights edited in one mode are baked afresh in the other
            self.invalidate_bake()
        return super().train(mode)

    def bake_key(self) -> tuple:
        params = tuple((id(p), p.device, p.dtype) for p in self.parameters())
        return (_optimizer_steps, self._bake_changes, params)

    def _baked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Eval-mode outputs of every row (and ortho, and each row's KL), cached until the weights change
        (`bake_key`): inference is then a gather. The table is (N + 1, d), row N zero (padding); with a
        context cache it is the cache itself, whose first N + 1 rows are kept for it, so one gather of two
        rows a position reads both. Where the cache has room for it (`cache_context`), also (T + 1, d):
        each cached position's whole state (its row's output plus its caption's correction), a zero row
        last, so a batch of cached captions is a gather of one row a position."""
        key = self.bake_key()
        if self._bake_key == key:
            return self._bake, self._bake_ortho, self._bake_kl, self._bake_context
        cache = self.context_cache
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

    def _inference(self, ids: torch.Tensor, mask: torch.Tensor, ids_np: np.ndarray, mask_np: np.ndarray,
                   context: bool, cached: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, object]:
        """Eval mode without gradients: a gather from the bake -> states (B * L, d), ortho, kl (a function:
        the mean KL of the distinct attribute rows present, computed when read)."""
        B, L = ids.shape
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

        return states, ortho, kl


class ContextCache:
    def _init_context_cache(self) -> None:
        # (N + 1 + T + 1, d): the corrections of whole captions (`cache_context`) after room for the baked
        # table, a zero row last
        self.register_buffer("context_cache", None, persistent=False)
        self._context_at: dict[bytes, int] = {}  # a cached caption's rows (int64 bytes) -> its first row
        # (T,) the table row at each cached position, where eval mode keeps each cached position's whole
        # state (`_baked`; None: it does not)
        self.register_buffer("context_rows", None, persistent=False)

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
        t0 = time.perf_counter()
        self.context_cache, self.context_rows, self._context_at = None, None, {}
        self.invalidate_bake()  # a new bake follows each build of the cache
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
        self.context_cache = self._corrections(keys, rows, T, chunk)
        if mib + (T + 1) * self.dim * 4 / 2**20 <= max_mb:  # room for the whole states too
            dev = self.vectors.device
            self.context_rows = torch.from_numpy(np.concatenate([np.zeros(0, np.int64), *rows])).to(dev)
        return dict(info, seconds=round(time.perf_counter() - t0, 3))

    def _corrections(self, keys: list[bytes], rows: list[np.ndarray], T: int, chunk: int) -> torch.Tensor:
        """The cache (N + 1 + T + 1, d): room for the baked table's rows and its zero row (`_baked`, eval
        mode), each caption's corrections (recording where each starts), a zero row."""
        from tristage.captions.contextual import pad_rows

        dev = self.vectors.device
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
        return cache
