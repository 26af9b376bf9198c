"""The run fingerprint that decides whether a checkpoint may be resumed (beside `checkpoint.py`).

A checkpoint is resumed only when it was written with the same fingerprint: the stage, its
params minus the cosmetic ones, the architecture, the initial weights, the caption PEFT
params, the world size and the data. Anything else starts fresh.
"""
from __future__ import annotations

import hashlib
import json

# Params that don't change the trained weights (a resume is allowed across them).
COSMETIC = {"out_dir", "metrics", "plots_dir", "log_every", "keep_last", "checkpoint_every", "device",
            "prepared", "features", "caption_vectors", "speaker_mapping", "init_from"}


def run_fingerprint(stage: str, stage_params, cfg, init_sha: str, peft, world: int, data_fp: str) -> str:
    section = {k: v for k, v in stage_params.model_dump(mode="json").items() if k not in COSMETIC}
    blob = json.dumps(dict(stage=stage, params=section, cfg=cfg.to_dict(), init=init_sha,
                           peft=peft.model_dump(mode="json"), world=world, data=data_fp), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_fingerprint(src, examples) -> str:
    """Changes when the upstream data does (so a persisted checkpoint isn't resumed on new data)."""
    h = hashlib.sha256()
    index = src.store.index
    h.update(json.dumps(src.store.meta, sort_keys=True, default=str).encode())
    h.update("|".join(f"{i}:{n}" for i, n in zip(index["id"].astype(str), index["n_frames"])).encode())
    h.update(json.dumps(src.mapping, sort_keys=True).encode())
    h.update("|".join(f"{e.id}:{e.speaker}:{len(e.text)}:{len(e.caption)}" for e in examples).encode())
    return h.hexdigest()[:16]
