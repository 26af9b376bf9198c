"""End to end: the real DAG with `dvc repro` on a shrunk corpus, in a fresh copy of the repo."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import project_env


def dvc(repo, *args, check=True):
    r = subprocess.run(["dvc", *args], cwd=repo, capture_output=True, text=True, env=project_env())
    if check and r.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.mark.slow
def test_dvc_repro_runs_the_dag(repo_copy):
    dvc(repo_copy, "repro")
    prep = json.loads((repo_copy / "metrics/prepare.json").read_text())
    assert prep["rows_in"] == 40 and prep["rows_kept"] == 40 and prep["rows_rejected"] == 0
    mapping = json.loads((repo_copy / "data/speakers/speaker_mapping.json").read_text())
    assert sorted(mapping.values()) == [0, 1, 2, 3]
    sm = json.loads((repo_copy / "metrics/speaker_mapping.json").read_text())
    assert sm["selected_speakers"] == 4 and sm["selected_samples"] == 40 and sm["selected_fraction"] == 1.0
    # Nothing changed: a second repro runs no stage.
    again = dvc(repo_copy, "repro")
    assert "Running stage" not in again.stdout


@pytest.mark.slow
def test_dvc_exp_run_with_override(repo_copy):
    dvc(repo_copy, "repro")
    dvc(repo_copy, "exp", "run", "-S", "speaker_mapping.top_k=2", "-n", "top2")
    mapping = json.loads((repo_copy / "data/speakers/speaker_mapping.json").read_text())
    assert len(mapping) == 2
    shown = dvc(repo_copy, "exp", "show", "--json").stdout
    assert "top2" in shown
