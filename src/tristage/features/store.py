"""The features folder: sharded log-mel + codec codes, an index and meta.

    <out_dir>/meta.json            n_mels, n_codebooks, codebook_size, frames_per_second, codec {...},
                                   mel {...}
    <out_dir>/index.parquet        id, shard, row, n_frames, n_mel_frames, duration (sorted by id)
    <out_dir>/failed.jsonl         {"id", "audio", "reason"} per utterance that could not be read
    <out_dir>/codec.{safetensors,json}   the random-init codec's weights (absent with official weights)
    <out_dir>/shards/shard-NNNNN.safetensors
        mel          (sum T_mel, n_mels) float16   utterances concatenated in row order
        codes        (K, sum T) int16
        mel_offsets  (n + 1,) int64                row r is mel[mel_offsets[r]:mel_offsets[r+1]]
        code_offsets (n + 1,) int64
        metadata: {"shard": json of ids, durations, failed, fingerprint (config + the shard's manifest rows)}

Shard i holds the utterances i*shard_size .. (i+1)*shard_size-1 of the manifest sorted by id,
so the assignment is the same on every run. Every file is written to a temp name and renamed.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

SHARDS = "shards"
INDEX = "index.parquet"
META = "meta.json"
FAILED = "failed.jsonl"
FORMAT = 1


def shard_path(out_dir: str | os.PathLike, i: int) -> Path:
    return Path(out_dir) / SHARDS / f"shard-{i:05d}.safetensors"


def write_shard(path: Path, mels: list, codes: list, ids: list[str], durations: list[float],
                failed: list[tuple[str, str]], fingerprint: str, n_mels: int, n_codebooks: int) -> None:
    """mels: (T_mel_i, n_mels) float16 tensors; codes: (K, T_i) int16 tensors, in row order."""
    import torch
    from safetensors.torch import save_file

    from tristage.fsio import atomic_path

    mel = torch.cat(mels, 0) if mels else torch.zeros(0, n_mels, dtype=torch.float16)
    code = torch.cat(codes, 1) if codes else torch.zeros(n_codebooks, 0, dtype=torch.int16)
    mel_off = torch.tensor([0] + [m.shape[0] for m in mels], dtype=torch.int64).cumsum(0)
    code_off = torch.tensor([0] + [c.shape[1] for c in codes], dtype=torch.int64).cumsum(0)
    # one metadata key: safetensors writes a map's keys in no fixed order, and reruns must match byte for byte
    meta = {"shard": json.dumps(dict(format=FORMAT, fingerprint=fingerprint, ids=ids, durations=durations,
                                     failed=failed))}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({"mel": mel.contiguous(), "codes": code.contiguous(), "mel_offsets": mel_off,
                   "code_offsets": code_off}, str(tmp), metadata=meta)


def shard_metadata(path: Path) -> dict | None:
    """The shard's metadata (ids, durations, failed decoded), or None if unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            md = json.loads((f.metadata() or {})["shard"])
            md["mel_offsets"] = f.get_tensor("mel_offsets").tolist()
            md["code_offsets"] = f.get_tensor("code_offsets").tolist()
            return md
    except Exception:  # a partial/foreign file is simply not a finished shard
        return None


@dataclasses.dataclass
class ShardPlan:
    rows: list[list[dict]]  # the manifest rows of each shard
    fingerprints: list[str]  # per shard: config + its rows
    todo: list[int]  # shards to (re)write: missing, unreadable or with another fingerprint

    @property
    def n_shards(self) -> int:
        return len(self.rows)


def plan_shards(out_dir: str | os.PathLike, rows: list[dict], shard_size: int,
                fingerprint_of: Callable[[list[dict]], str]) -> ShardPlan:
    """Split the sorted manifest rows into shards and find those to write. Also removes the leftovers of a
    killed run (temp files) and the shards of a longer, older manifest."""
    shards = Path(out_dir) / SHARDS
    shards.mkdir(parents=True, exist_ok=True)
    for tmp in shards.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    n_shards = -(-len(rows) // shard_size)
    shard_rows = [rows[i * shard_size:(i + 1) * shard_size] for i in range(n_shards)]
    fingerprints = [fingerprint_of(r) for r in shard_rows]
    todo = []
    for i in range(n_shards):
        path = shard_path(out_dir, i)
        md = shard_metadata(path) if path.is_file() else None
        if md is None or md.get("fingerprint") != fingerprints[i]:
            todo.append(i)
    for path in shards.glob("shard-*.safetensors"):
        if int(path.stem.split("-")[1]) >= n_shards:
            path.unlink()
    return ShardPlan(shard_rows, fingerprints, todo)


def write_index(out_dir: str | os.PathLike, n_shards: int):
    """index.parquet and failed.jsonl from every shard's metadata (skipped shards included);
    -> (index DataFrame, failed [(id, audio, reason)])."""
    import pandas as pd

    from tristage.fsio import atomic_path, write_bytes

    out = Path(out_dir)
    recs, failed = [], []
    for i in range(n_shards):
        md = shard_metadata(shard_path(out, i))
        if md is None:
            raise RuntimeError(f"shard {i} missing after extraction")
        mel_off, code_off = md["mel_offsets"], md["code_offsets"]
        for r, (uid, duration) in enumerate(zip(md["ids"], md["durations"])):
            recs.append(dict(id=uid, shard=i, row=r, n_frames=code_off[r + 1] - code_off[r],
                             n_mel_frames=mel_off[r + 1] - mel_off[r], duration=duration))
        failed += md["failed"]
    index = pd.DataFrame(recs, columns=["id", "shard", "row", "n_frames", "n_mel_frames", "duration"])
    index = index.astype({"shard": "int32", "row": "int32", "n_frames": "int32", "n_mel_frames": "int32",
                          "duration": "float64"})
    with atomic_path(out / INDEX, suffix=".parquet") as tmp:
        index.to_parquet(tmp, index=False)
    write_bytes(
        out / FAILED, "".join(json.dumps(dict(id=u, audio=a, reason=r)) + "\n" for u, a, r in failed).encode()
    )
    return index, failed


class FeatureStore:
    """Read access to a features folder: `ids`, `index`, `meta`, `load(uid) -> (mel, codes)`."""

    def __init__(self, folder: str | os.PathLike, max_open: int = 8):
        import pandas as pd

        from tristage.errors import UserError
        from tristage.fsio import read_json

        self.folder = Path(folder)
        if not (self.folder / META).is_file() or not (self.folder / INDEX).is_file():
            raise UserError(f"{self.folder}: not a finished features folder (no {META} / {INDEX}); "
                            "run the `features` stage (dvc repro features)")
        self.meta = read_json(self.folder / META)
        self.meta["dir"] = str(self.folder)
        self.index = pd.read_parquet(self.folder / INDEX)
        self.ids = sorted(self.index["id"].tolist())
        self._row = {uid: (int(s), int(r)) for uid, s, r in
                     zip(self.index["id"], self.index["shard"], self.index["row"])}
        self._open: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self.max_open = max_open

    def __getstate__(self):  # picklable for DataLoader workers: open shards are not carried over
        state = dict(self.__dict__)
        state["_open"] = collections.OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, uid: str) -> bool:
        return uid in self._row

    def _shard(self, i: int):
        from safetensors import safe_open

        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        f = safe_open(str(shard_path(self.folder, i)), framework="pt")
        entry = (f, f.get_tensor("mel_offsets").tolist(), f.get_tensor("code_offsets").tolist())
        self._open[i] = entry
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return entry

    def load(self, uid: str):
        """-> (mel float16 (T_mel, n_mels), codes int16 (K, T))."""
        shard, row = self._row[uid]
        f, mo, co = self._shard(shard)
        # clone: a slice may be a view that keeps the whole shard tensor alive while it is cached
        mel = f.get_slice("mel")[mo[row]:mo[row + 1]].clone()
        codes = f.get_slice("codes")[:, co[row]:co[row + 1]].clone()
        return mel, codes
