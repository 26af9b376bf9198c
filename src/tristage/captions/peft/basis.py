"""Each attribute row in an orthonormal basis of its value's rows: the VAE encoders' input."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def value_coords(vectors: torch.Tensor, rows: torch.Tensor, slot: torch.Tensor, n: int,
                 max_rank: int) -> torch.Tensor:
    """Coordinates of each attribute row in an orthonormal basis of its value's rows (SVD), (R, k)
    with k = the largest span, zero-padded. The identity basis (k = d, the rows themselves) where a
    value has more than `max_rank` rows.

    A value's encoder only ever reads its own rows, so the seed's affine map of a row, x W_s + b, is
    the same family as c U_s + b on its coordinates c = x Q_s (W_s = Q_s U_s): k x z parameters
    instead of d x z."""
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
