"""The run fingerprint that decides whether a checkpoint may be resumed (beside `checkpoint.py`).

    parts, code_files = run_fingerprint_parts(stage, sp, cfg, init_sha, world, data_fp)
    fp = combine(parts)                                 # in every checkpoint's manifest.json, with the parts
    reason = why_not_resumable(manifest, parts, code_files)  # "made by other code (tristage/model/tts.py)"

`models/<stage>/` is a persisted DVC output, so a rerun finds the checkpoints of the last run.
A checkpoint is resumed only when every part is equal: the CODE (sha256 of every file in the
trainer's static import closure inside src/tristage plus the configured caption module, see
tristage/closure.py), the stage, its params minus the cosmetic ones (with its caption adapters' loss
weights), the architecture (with the caption adapters), the initial weights, the world size and the
data (features index, speaker mapping, each example's text / caption ids, the caption vector table).
Anything else starts fresh, and the reason is one line naming the parts (and, for code, the files)
that differ.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from tristage.closure import changed_files, code_digest, module_file

# Params that don't change the trained weights (a resume is allowed across them).
COSMETIC = {"out_dir", "metrics", "plots_dir", "log_every", "keep_last", "checkpoint_every", "device",
            "prepared", "features", "caption_vectors", "speaker_mapping", "init_from"}


TRAINER_MODULE = "tristage.training.trainer"
LABELS = {"stage": "another stage", "params": "other params", "model_config": "another model config",
          "init_weights": "other init weights (the previous stage changed)",
          "data": "other data (features, manifest, speakers or caption vectors)"}


def _h(x: Any) -> str:
    return hashlib.sha256(json.dumps(x, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_part(caption_module: str | None = None) -> tuple[str, dict[str, str]]:
    """(digest, {file: sha256}) of the trainer's import closure and the caption module's."""
    modules = [TRAINER_MODULE]
    extra = (caption_module or "").partition(":")[0]
    if extra and module_file(extra) is not None:
        modules.append(extra)
    digest, files = code_digest(modules)
    return digest[:16], files


# Where the inputs lie is not what they are: a fingerprint that held a folder's absolute path would
# change when the repo moves (a clone, a `dvc exp run --temp` copy, a Prefect or sweep workspace),
# so the same run would write other bytes (the fingerprint is in model.safetensors' metadata) and
# DVC would rerun everything downstream. The contents behind these paths are in the `data` part.
LOCATION_KEYS = ("caption_vectors",)  # TTSConfig: the caption table's folder at training time
STORE_LOCATION_KEYS = ("dir",)  # FeatureStore.meta: the features folder


def run_fingerprint_parts(stage: str, stage_params, cfg, init_sha: str, world: int,
                          data_fp: str) -> tuple[dict, dict[str, str]]:
    """The fingerprint's named parts, and the per-file hashes behind its `code` part."""
    section = {k: v for k, v in stage_params.model_dump(mode="json").items() if k not in COSMETIC}
    code, files = code_part(getattr(cfg, "caption_module", None))
    config = {k: v for k, v in cfg.to_dict().items() if k not in LOCATION_KEYS}
    parts = dict(stage=stage, params=_h(section), model_config=_h(config), init_weights=init_sha,
                 world_size=int(world), data=data_fp, code=code)
    return parts, files


def combine(parts: dict) -> str:
    return _h(parts)


def why_not_resumable(manifest: dict, parts: dict, code_files: dict[str, str]) -> str:
    """One phrase: what differs between the run that made a checkpoint (its `manifest`) and this one."""
    old = manifest.get("fingerprint_parts")
    if not isinstance(old, dict):
        return "written by an older trainer (no fingerprint parts recorded)"
    reasons = []
    for key in parts:
        if old.get(key) == parts[key]:
            continue
        if key == "code":
            files = changed_files(manifest.get("code_files") or {}, code_files)
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            reasons.append(f"made by other code ({shown or 'the code hash differs'})")
        elif key == "world_size":
            reasons.append(f"world size {old.get(key)} (now {parts[key]})")
        else:
            reasons.append(LABELS.get(key, f"other {key}"))
    return "; ".join(reasons) or "the fingerprint differs"


def data_fingerprint(src, examples) -> str:
    """Changes when the upstream data does (so a persisted checkpoint isn't resumed on new data)."""
    h = hashlib.sha256()
    index = src.store.index
    meta = {k: v for k, v in src.store.meta.items() if k not in STORE_LOCATION_KEYS}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    h.update("|".join(f"{i}:{n}" for i, n in zip(index["id"].astype(str), index["n_frames"])).encode())
    h.update(json.dumps(src.mapping, sort_keys=True).encode())
    rows = (f"{e.id}:{e.speaker}:{e.label}:{e.n_frames}:{e.text}:{e.caption}" for e in examples)
    h.update("|".join(rows).encode())
    vectors = getattr(src.table, "vectors", None)  # the caption vector table the adapters refine
    if vectors is not None:
        arr = np.ascontiguousarray(vectors.numpy() if hasattr(vectors, "numpy") else np.asarray(vectors))
        h.update(str(arr.shape).encode() + arr.tobytes())
    ctx = getattr(src.table, "contextualiser", None)  # its correction is part of every caption's states
    for name, buf in sorted(ctx.named_buffers()) if ctx is not None else ():
        h.update(name.encode() + buf.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
