"""`dvc repro` reruns exactly what changed: an edit in the model code or the caption PEFT code
retrains stage1 from step 0 (its persisted checkpoints were made by other code), and reruns
nothing upstream. Runs in a copy of the repo whose own src/ is imported (PYTHONPATH)."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import clone_reproduced, project_env

pytestmark = pytest.mark.slow
UPSTREAM = ["corpus", "prepare", "annotate", "speaker_mapping", "caption_vectors", "features"]


def _dvc(repo, *args):
    env = project_env(PYTHONPATH=f"{repo / 'src'}:{repo}", TRISTAGE_NO_PROGRESS="1")
    r = subprocess.run(["dvc", *args], cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, f"dvc {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _ran(out: str) -> list[str]:
    return [s for s in [*UPSTREAM, "stage1"] if f"Running stage '{s}'" in out]


def _facts(repo) -> dict:
    """stage1's metrics and its run facts (`resumed_from_step` lives with the timings, untracked)."""
    return {**json.loads((repo / "metrics/stage1.json").read_text()),
            **json.loads((repo / "timings/stage1.json").read_text())}


def _edit(path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_code_edit_retrains_stage1_from_step_0(reproduced_template, tmp_path):
    repo = clone_reproduced(reproduced_template[0], tmp_path / "repo")  # the shrunk DAG, reproduced
    first = _facts(repo)
    assert first["steps"] == 4 and first["resumed_from_step"] is None
    assert (repo / "models/stage1/checkpoints/step-000004").is_dir()  # persisted: a rerun finds it

    assert "stage1" not in _ran(_dvc(repo, "repro", "stage1"))  # nothing changed: nothing runs

    for rel, why in (
        ("src/tristage/model/decoder.py", "model"),
        ("src/tristage/captions/peft/reference.py", "caption PEFT"),
    ):
        _edit(repo / rel, f"_FRESHNESS_PROBE = {why!r}  # an edit of the {why} code")
        out = _dvc(repo, "repro", "stage1")
        assert _ran(out) == ["stage1"], out[-3000:]  # upstream data stays; stage1 reruns
        m = _facts(repo)
        assert m["resumed_from_step"] is None and m["steps"] == 4, (rel, m)  # from step 0, not "resumed at 4"
        fresh = [ln for ln in out.splitlines() if "starting fresh" in ln]
        assert len(fresh) == 1 and "code" in fresh[0] and rel.removeprefix("src/") in fresh[0], out[-3000:]
