"""DDP: the same entry point under torchrun with 2 gloo processes on CPU; only rank 0 writes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import project_env
from safetensors.torch import load_file

from tristage.testing.fakes import write_tiny_params

pytestmark = pytest.mark.slow


def test_two_gloo_processes(tmp_path):
    params = write_tiny_params(tmp_path, steps=6, batch_size=2, checkpoint_every=3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tristage.testing.fakes", "stage1", "--params", str(params)]
    r = subprocess.run(
        cmd, env=project_env(TRISTAGE_NO_PROGRESS="1"), capture_output=True, text=True, timeout=240
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics/stage1.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 6
    assert r.stderr.count("trainable") == 1  # rank 0 logs, rank 1 doesn't
    w = load_file(str(tmp_path / "models/stage1/model.safetensors"))
    ck = load_file(str(tmp_path / "models/stage1/checkpoints/step-000006/model.safetensors"))
    assert all(torch.equal(w[k], ck[k]) for k in w)
    leftovers = [p.name for p in (tmp_path / "models/stage1").iterdir() if p.name.startswith(".")]
    assert not leftovers


def _curve(folder) -> list[float]:
    rows = (folder / "plots/stage1/train.tsv").read_text().splitlines()
    cols = rows[0].split("\t")
    return [float(r.split("\t")[cols.index("mel_loss")]) for r in rows[1:]
            if r.split("\t")[cols.index("mel_loss")] not in ("", "nan")]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """2 gloo processes x batch 2 see the very examples (and crops) of 1 process x batch 4; the loss
    curves agree up to the per-rank token weighting of the mean."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    kw = dict(steps=8, log_every=1, window=1, eval_every=100, checkpoint_every=100)
    p1 = write_tiny_params(one, batch_size=4, **kw)
    p2 = write_tiny_params(two, batch_size=2, **kw)
    env = project_env(TRISTAGE_NO_PROGRESS="1")
    fakes = ["-m", "tristage.testing.fakes", "stage1", "--params"]
    r1 = subprocess.run(
        [sys.executable, *fakes, str(p1)], env=env, capture_output=True, text=True, timeout=240
    )
    r2 = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *fakes,
            str(p2),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr[-2000:], r2.stderr[-2000:])
    a, b = _curve(one), _curve(two)
    assert len(a) == len(b) == 8
    assert a[0] == pytest.approx(b[0], rel=0.02)  # same weights, same examples
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 0.05, (a, b)
    assert a[-1] < a[0] and b[-1] < b[0]


def test_stage2_with_extra_classifier_updates_under_two_processes(tmp_path):
    """stage2's classifier-only updates all-reduce their gradients: 2 gloo processes finish (no hang)."""
    params = write_tiny_params(tmp_path, steps=4, batch_size=2, checkpoint_every=2)
    env = project_env(TRISTAGE_NO_PROGRESS="1")
    fakes = ["-m", "tristage.testing.fakes"]
    subprocess.run([sys.executable, *fakes, "stage1", "--params", str(params)], env=env, check=True,
                   capture_output=True, timeout=240)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *fakes,
            "stage2",
            "--params",
            str(params),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics/stage2.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 4 and m["speaker_acc"] is not None
    st = torch.load(tmp_path / "models/stage2/trainer_state.pt", weights_only=True)
    assert st["adversary"]["optimizer"]["state"]  # the classifier's own optimizer ran and is saved for resume
