"""DDP: the same entry point under torchrun with 2 gloo processes on CPU; only rank 0 writes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import project_env
from tristage.training.fakes import write_tiny_params

pytestmark = pytest.mark.slow


def test_two_gloo_processes(tmp_path):
    params = write_tiny_params(tmp_path, steps=6, batch_size=2, checkpoint_every=3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tristage.training.fakes", "stage1", "--params", str(params)]
    r = subprocess.run(cmd, env=project_env(TRISTAGE_NO_PROGRESS="1"), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics/stage1.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 6
    assert r.stderr.count("trainable") == 1  # rank 0 logs, rank 1 doesn't
    w = load_file(str(tmp_path / "models/stage1/model.safetensors"))
    ck = load_file(str(tmp_path / "models/stage1/checkpoints/step-000006/model.safetensors"))
    assert all(torch.equal(w[k], ck[k]) for k in w)
    leftovers = [p.name for p in (tmp_path / "models/stage1").iterdir() if p.name.startswith(".")]
    assert not leftovers
