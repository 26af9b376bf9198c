"""Whether a persisted checkpoint may be resumed: the run's fingerprint, in named parts.

    parts, code_files = fingerprint_parts(params=..., model_config=..., ..., caption_module=cfg.caption_module)
    fp = combine(parts)                               # stored in each checkpoint's manifest.json
    reason = why_not_resumable(manifest, parts, code_files)   # "made by other code (tristage/model/decoder.py)"

`models/<stage>/` is a persisted DVC output, so a rerun finds the checkpoints of the last run.
They are resumed only when every part is equal: the code (the sha256 of every file in the
trainer's static import closure inside src/tristage, plus the configured caption module: see
tristage/closure.py), the params that change the weights, the model config, the init weights
(the previous stage's), the PEFT params, the data and the world size. Otherwise the stage
starts from step 0, and the reason is one line naming the parts (and, for code, the files)
that differ.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from tristage.closure import changed_files, code_digest, module_file

TRAINER_MODULE = "tristage.training.trainer"
LABELS = {"params": "other params", "model_config": "another model config",
          "init_weights": "other init weights (the previous stage changed)", "peft": "other caption_vectors.peft",
          "data": "other data (features, manifest, speakers or captions)"}


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


def fingerprint_parts(*, stage: str, params: dict, model_config: dict, init_weights: str, peft: dict,
                      world_size: int, data: str, caption_module: str | None) -> tuple[dict, dict[str, str]]:
    code, files = code_part(caption_module)
    parts = dict(stage=stage, params=_h(params), model_config=_h(model_config), init_weights=init_weights,
                 peft=_h(peft), world_size=int(world_size), data=data, code=code)
    return parts, files


def combine(parts: dict) -> str:
    return _h(parts)


def why_not_resumable(manifest: dict, parts: dict, code_files: dict[str, str]) -> str:
    """One phrase: what differs between the run that made the checkpoint (`manifest`) and this one."""
    old = manifest.get("fingerprint_parts")
    if not isinstance(old, dict):
        return "made by an older version of the trainer (no fingerprint parts recorded)"
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
