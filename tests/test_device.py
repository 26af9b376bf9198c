"""One device resolution for every stage."""
from __future__ import annotations

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
