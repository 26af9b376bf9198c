"""Checkpoints: `<out_dir>/checkpoints/step-XXXXXX/` = model.safetensors + trainer_state.pt + manifest.json.

- weights in safetensors; the trainer state (optimizer, scheduler, sampler position, all RNG
  states, step, ...) is plain tensors / dicts / lists saved with torch.save and read back with
  `torch.load(weights_only=True)` (never unpickled as code);
- each checkpoint folder is written atomically (temp folder, rename);
- manifest.json lists every file's size and sha256 and the run's fingerprint; `verify`
  checks them, so a truncated or corrupt file is detected and the loader falls back to the
  previous checkpoint;
- `prune` keeps the last `keep_last` and the best (lowest validation mel_loss).
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from tristage.fsio import atomic_dir, read_json, sha256, write_json

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
FILES = ("model.safetensors", "trainer_state.pt")


class CheckpointError(Exception):
    pass


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(out, reverse=True)


def write_model_files(
    folder: Path, model_state: dict, trainer_state: dict | None, meta: dict[str, str] | None = None
) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata=meta or {})
    if trainer_state is not None:
        torch.save(trainer_state, folder / "trainer_state.pt")


def save_checkpoint(root: Path, step: int, model_state: dict, trainer_state: dict, fingerprint: str,
                    extra: dict | None = None) -> Path:
    """`extra`: more manifest fields (the fingerprint's parts and code files, so a skip can say why)."""
    dest = step_dir(root, step)
    with atomic_dir(dest) as tmp:
        write_model_files(tmp, model_state, trainer_state, {"step": str(step), "fingerprint": fingerprint})
        files = {name: dict(size=(tmp / name).stat().st_size, sha256=sha256(tmp / name)) for name in FILES}
        manifest = dict(step=step, fingerprint=fingerprint, files=files, **(extra or {}))
        write_json(tmp / "manifest.json", manifest)
    return dest


def verify(folder: Path) -> dict:
    """Return the manifest if every file is present with the recorded size and hash."""
    # file checks; `duplicates` pairs their shape with importers/formats.py's input checks (other checks)
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise CheckpointError(f"{mpath} missing")
    try:
        manifest = read_json(mpath)
    except ValueError as exc:
        raise CheckpointError(f"{mpath}: unreadable ({exc})") from None
    for name, rec in manifest.get("files", {}).items():
        p = folder / name
        if not p.is_file():
            raise CheckpointError(f"{p} missing")
        size = p.stat().st_size
        if size != rec["size"]:
            raise CheckpointError(f"{p}: size {size} != {rec['size']} recorded (truncated?)")
        if sha256(p) != rec["sha256"]:
            raise CheckpointError(f"{p}: sha256 differs from the manifest (corrupt)")
    return manifest


def find_resumable(root: Path, fingerprint: str, why=None) -> tuple[Path | None, list[str]]:
    """Newest checkpoint that verifies and has this fingerprint; plus messages about the ones skipped.
    `why(manifest) -> str`: what differs, for the message about a checkpoint of another fingerprint."""
    notes = []
    for _, folder in list_checkpoints(root):
        try:
            manifest = verify(folder)
        except CheckpointError as exc:
            notes.append(f"checkpoint {folder.name} is unusable ({exc}); falling back to the previous one")
            continue
        if manifest.get("fingerprint") != fingerprint:
            reason = why(manifest) if why else "fingerprint differs"
            notes.append(f"checkpoint {folder.name} is from another run ({reason}); not resuming from it")
            continue
        return folder, notes
    return None, notes


def load_checkpoint(folder: Path, device: str = "cpu") -> tuple[dict, dict]:
    import torch
    from safetensors.torch import load_file

    model_state = load_file(str(Path(folder) / "model.safetensors"), device=str(device))
    trainer_state = torch.load(Path(folder) / "trainer_state.pt", map_location="cpu", weights_only=True)
    return model_state, trainer_state


def prune(root: Path, keep_last: int, keep: set[int]) -> None:
    """Remove all but the newest `keep_last` checkpoints and those in `keep` (e.g. the best)."""
    for i, (step, folder) in enumerate(list_checkpoints(root)):
        if i >= keep_last and step not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def clear(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """All RNG states as plain tensors / tuples (loadable with weights_only=True)."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = dict(python=random.getstate(), numpy=dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                                                   has_gauss=int(has_gauss), cached=float(cached)),
              torch=torch.get_rng_state())
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
