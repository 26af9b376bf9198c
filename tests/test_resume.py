"""Exact resume: kill -9 mid-stage, rerun, and the final weights are bitwise identical to an
uninterrupted CPU run."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import project_env
from tristage.training.fakes import write_tiny_params

pytestmark = pytest.mark.slow


def _cmd(params, *extra):
    return [sys.executable, "-m", "tristage.training.fakes", "stage1", "--params", str(params), *extra]


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    env = project_env(TRISTAGE_NO_PROGRESS="1")
    kw = dict(steps=40, checkpoint_every=5, eval_every=10, dropout=0.1)  # dropout: the RNG state matters
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pa, pb = write_tiny_params(a, **kw), write_tiny_params(b, **kw)
    subprocess.run(_cmd(pa), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cmd(pb), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = b / "models/stage1/checkpoints/step-000010"
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (b / "models/stage1/model.safetensors").exists()

    r = subprocess.run(_cmd(pb), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stderr
    wa, wb = load_file(str(a / "models/stage1/model.safetensors")), load_file(str(b / "models/stage1/model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = torch.load(a / "models/stage1/trainer_state.pt", weights_only=True)
    sb = torch.load(b / "models/stage1/trainer_state.pt", weights_only=True)
    assert sa["sampler"] == sb["sampler"]
    assert [h["mel_loss"] for h in sa["history"] if "mel_loss" in h] == \
        [h["mel_loss"] for h in sb["history"] if "mel_loss" in h]
