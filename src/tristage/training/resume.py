"""The checkpoints of one training run: which one to resume, and writing a new one.

    run = RunCheckpoints(stage, out_dir / "checkpoints", base_dir, fingerprint, parts, code_files, dist)
    found = run.find(needs_adversary=True)   # -> Resumable(folder, model_state, trainer_state) or None
    run.save(step, model.state_dict(), trainer_state, keep={best_step}, keep_last=sp.keep_last)

Only a checkpoint of this very run resumes: the same fingerprint (code, params, data, world size;
`fingerprint.py`) and files that verify (`checkpoint.py`). Otherwise the run starts fresh, says why
in one line, and clears the old checkpoints. The trainer owns what goes into a checkpoint and how it
is loaded back into the model and the loop state; this module owns the folder.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from tristage.training import checkpoint as ck
from tristage.training import ddp
from tristage.training.build import rel
from tristage.training.fingerprint import why_not_resumable

log = logging.getLogger("tristage.training")


@dataclasses.dataclass
class Resumable:
    """A checkpoint to resume: its folder, the model's state dict and the trainer state (trainer_state.pt)."""

    folder: Path
    model_state: dict
    trainer_state: dict


@dataclasses.dataclass
class RunCheckpoints:
    stage: str
    root: Path  # <out_dir>/checkpoints
    base: Path  # params.base_dir: paths in messages are relative to it
    fingerprint: str
    fingerprint_parts: dict
    code_files: dict
    dist: ddp.Dist

    def find(self, needs_adversary: bool) -> Resumable | None:
        """The newest valid checkpoint of this run, loaded; else None, after saying why the newest one is
        not resumed and clearing them all (`needs_adversary`: a checkpoint without the GRL's state, written
        by an older trainer, does not resume). Every rank gets the same answer."""
        stale: list[str] = []  # why the newest checkpoint of another run is not resumed

        def why(manifest: dict) -> str:
            reason = why_not_resumable(manifest, self.fingerprint_parts, self.code_files)
            stale.append(reason)
            return reason

        folder, notes = ck.find_resumable(self.root, self.fingerprint, why=why)
        if self.dist.is_main:
            for note in notes:
                if "is unusable" in note:
                    log.warning("%s: %s", self.stage, note)
        if folder is None:
            newest = ck.list_checkpoints(self.root)
            if newest:
                self._start_fresh(f"starting fresh, not resuming {newest[0][1].name}: "
                                  f"{stale[0] if stale else 'no checkpoint verifies'}")
            ddp.barrier(self.dist)
            return None
        model_state, saved = ck.load_checkpoint(folder)
        if needs_adversary and "adversary" not in saved:  # written before the GRL had one owner
            self._start_fresh(f"{rel(folder, self.base)} was written by an older trainer; starting fresh")
            ddp.barrier(self.dist)
            return None
        return Resumable(folder, model_state, saved)

    def _start_fresh(self, message: str) -> None:
        if self.dist.is_main:
            log.info("%s: %s", self.stage, message)
            ck.clear(self.root)

    def save(self, step: int, model_state: dict, trainer_state: dict, keep_last: int, keep: set[int]) -> Path:
        """Write `step-XXXXXX/` (main process only) and prune all but the newest `keep_last` and `keep`."""
        folder = ck.save_checkpoint(
            self.root,
            step,
            model_state,
            trainer_state,
            self.fingerprint,
            extra=dict(fingerprint_parts=self.fingerprint_parts, code_files=self.code_files),
        )
        ck.prune(self.root, keep_last, keep)
        return folder
