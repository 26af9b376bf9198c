"""Rows grouped by adapter slot and zero-padded into groups, so that one bmm multiplies every row by its
own slot's matrix (the fused path's layout; numpy bookkeeping, no loop over rows)."""
from __future__ import annotations

import numpy as np
import torch


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

