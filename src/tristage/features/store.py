"""The features folder: sharded log-mel + codec codes, an index and meta.

    <out_dir>/meta.json            n_mels, n_codebooks, codebook_size, frames_per_second, codec {...}, mel {...}
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
import json
import os
from pathlib import Path

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
    except Exception:  # noqa: BLE001 - a partial/foreign file is simply not a finished shard
        return None


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
