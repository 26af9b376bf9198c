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
    w = load_file(str(tmp_path / "models/stage1/model.safetensors"))  # the handed-over step's weights
    handed = tmp_path / f"models/stage1/checkpoints/step-{m['handover_step']:06d}"
    ck = load_file(str(handed / "model.safetensors"))
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


@pytest.mark.long  # make test-all; CI's make test stays under 20 min: the other DDP tests cover
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


def test_ddp_syncs_batchnorm_statistics_but_not_the_caption_constants(tmp_path):
    """The caption table, its contextualiser and the cache of its corrections are constants every rank
    builds alike: the wrapped model leaves them out of DDP's broadcast before each forward (a cache
    assigned after wrapping included); the speaker classifier's BatchNorm statistics stay in it."""
    import torch.distributed as dist
    import torch.nn as nn
    from test_caption_contextual import P, toy_table, trained_ctx

    from tristage.captions.peft import CaptionPEFT
    from tristage.training.ddp import Dist, constant_buffers, wrap

    table = toy_table()
    table.contextualiser = trained_ctx()
    model = nn.Module()
    model.caption_peft = CaptionPEFT(table, P)
    model.norm = nn.BatchNorm1d(4)
    names = constant_buffers(model)
    constants = {"caption_peft.vectors", "caption_peft.context_cache", "caption_peft.context.out.weight"}
    assert constants <= set(names)
    assert not any(n.startswith("norm.") for n in names)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = wrap(model, Dist())
        model.caption_peft.cache_context([[1, 2, 3]], max_mb=1)
        assert model.caption_peft.context_cache is not None
        wrapped._assign_modules_buffers()  # what DDP does before each forward's broadcast
        assert set(wrapped.named_module_buffers) == {"norm.running_mean", "norm.running_var",
                                                     "norm.num_batches_tracked"}
    finally:
        dist.destroy_process_group()
