"""One device resolution for every stage; the toy preset trains on a real GPU (`gpu`)."""
from __future__ import annotations

import math

import pytest
import torch

from tristage.device import resolve_device
from tristage.errors import UserError


def test_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == "cpu" and resolve_device("auto", local_rank=1) == "cpu"
    with pytest.raises(UserError, match=r"^features.device: cuda:1 requested but no CUDA device is visible"):
        resolve_device("cuda:1", "features.device")


def test_cuda_with_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("cuda", local_rank=2) == "cuda:2"
    assert resolve_device("auto", local_rank=0) == "cuda:0"
    assert resolve_device("cpu", local_rank=3) == "cpu"


@pytest.mark.gpu
def test_toy_preset_trains_on_cuda(tmp_path, monkeypatch):
    """stage1 on the toy preset, 3 steps with `device: cuda`: every parameter and every training batch
    is on the GPU, and the loss is finite."""
    from tristage.config import load_params
    from tristage.testing.fakes import default_fake_sources, write_tiny_params
    from tristage.training import trainer

    batches, params_seen = [], []
    real_to_device, real_loss_of = trainer.to_device, trainer._Trainer.loss_of

    def to_device(batch, device):
        moved = real_to_device(batch, device)
        batches.append({v.device.type for v in moved.values()})
        return moved

    def loss_of(self, out):
        params_seen.append({p.device.type for p in self.model.parameters()})
        return real_loss_of(self, out)

    monkeypatch.setattr(trainer, "to_device", to_device)
    monkeypatch.setattr(trainer._Trainer, "loss_of", loss_of)
    params = load_params(write_tiny_params(tmp_path, steps=3, checkpoint_every=3, device="cuda"))
    metrics = trainer.train_stage("stage1", params, None, sources=default_fake_sources(tmp_path))
    assert len(batches) >= 3 and all(b == {"cuda"} for b in batches)
    assert params_seen and all(d == {"cuda"} for d in params_seen)
    assert math.isfinite(metrics["mel_loss"])
    assert (tmp_path / "models/stage1/model.safetensors").is_file()
