"""The one train / validation / held-out split of a corpus, shared by every stage that needs it.

    split = split_ids(ids, speakers, val_fraction=0.05, n_heldout=2, seed=1234)
    split["spk000_0001"]   # "train" | "val" | "heldout"

- `heldout`: every utterance of `n_heldout` speakers chosen by the seed alone (at most a third of
  the speakers): no stage trains on them, `evaluate` judges them as zero-shot.
- `val`: of the other utterances, the `round(val_fraction * n)` whose hash of (seed, id) is
  smallest. A hash per id, not a permutation of the list, so adding or dropping utterances never
  moves another utterance between train and validation.
- `train`: the rest.

It depends on the ids and speakers only (never on features or lengths), so the `features` stage
fits its codec on exactly the utterances the training stages train on.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

TRAIN, VAL, HELDOUT = "train", "val", "heldout"


def heldout_speakers(speakers: Sequence[str], n: int, seed: int) -> set[str]:
    """`n` speakers (at most a third of them) chosen by `seed` alone, never trained on by any stage."""
    names = sorted(set(map(str, speakers)))
    n = min(n, len(names) // 3)
    if n <= 0:
        return set()
    return set(np.random.default_rng([seed, 7919]).choice(names, n, replace=False).tolist())


def _rank_key(seed: int, uid: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{uid}".encode()).digest()


def split_ids(ids: Sequence[str], speakers: Sequence[str], val_fraction: float, n_heldout: int,
              seed: int) -> dict[str, str]:
    """id -> "train" | "val" | "heldout" (see the module docstring)."""
    ids, speakers = [str(i) for i in ids], [str(s) for s in speakers]
    held = heldout_speakers(speakers, n_heldout, seed)
    rest = [i for i, s in zip(ids, speakers) if s not in held]
    n_val = min(int(round(val_fraction * len(rest))), max(len(rest) - 1, 0))
    val = set(sorted(rest, key=lambda u: _rank_key(seed, u))[:n_val])
    return {i: HELDOUT if s in held else VAL if i in val else TRAIN for i, s in zip(ids, speakers)}
