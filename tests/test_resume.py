"""Exact resume: kill -9 mid-stage, rerun, and the final weights are bitwise identical to an
uninterrupted CPU run."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import project_env
from safetensors.torch import load_file

from tristage.testing.fakes import write_tiny_params

pytestmark = pytest.mark.slow


def _cmd(params, stage="stage1"):
    return [sys.executable, "-m", "tristage.testing.fakes", stage, "--params", str(params)]


PREVIOUS = {"stage1": [], "stage2": ["stage1"], "stage3": ["stage1", "stage2"]}


# stage2 (the GRL stage, the longest) is `long`: make test-all; stage1 and stage3 cover the same resume code
@pytest.mark.parametrize("stage,kill_after",
                         [("stage1", 10), pytest.param("stage2", 25, marks=pytest.mark.long), ("stage3", 15)])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, stage, kill_after):
    """Killed (SIGKILL) after checkpoint `kill_after` plus a little, the rerun resumes and ends
    bitwise equal to a run that was never interrupted."""
    env = project_env(TRISTAGE_NO_PROGRESS="1")
    kw = dict(steps=40, checkpoint_every=5, eval_every=10, dropout=0.1)  # dropout: the RNG state matters
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pa, pb = write_tiny_params(a, **kw), write_tiny_params(b, **kw)
    for prev in PREVIOUS[stage]:  # the stages before: run once, copied
        subprocess.run(_cmd(pa, prev), check=True, env=env, capture_output=True)
    if PREVIOUS[stage]:
        shutil.copytree(a / "models", b / "models")
    subprocess.run(_cmd(pa, stage), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cmd(pb, stage), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = b / f"models/{stage}/checkpoints/step-{kill_after:06d}"
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05)  # somewhere inside the next steps, maybe inside a checkpoint write
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (b / f"models/{stage}/model.safetensors").exists()

    r = subprocess.run(_cmd(pb, stage), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stderr
    out_a, out_b = a / "models" / stage, b / "models" / stage
    wa, wb = load_file(str(out_a / "model.safetensors")), load_file(str(out_b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = torch.load(out_a / "trainer_state.pt", weights_only=True)
    sb = torch.load(out_b / "trainer_state.pt", weights_only=True)
    assert sa["sampler"] == sb["sampler"]
    no_tensors = lambda adv: {k: v for k, v in adv.items() if k != "optimizer"}
    assert no_tensors(sa["adversary"]) == no_tensors(sb["adversary"])
    assert [h["mel_loss"] for h in sa["history"] if "mel_loss" in h] == \
        [h["mel_loss"] for h in sb["history"] if "mel_loss" in h]
