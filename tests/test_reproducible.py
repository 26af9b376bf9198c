"""Same code, same numbers: a stage run twice gives the same bytes; every stage pins its numeric libraries
(tristage/environment.py); the best checkpoint is what the next stage gets; long transcripts are skipped
and counted, never cut."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tristage.config import load_params
from tristage.environment import REPRODUCIBLE_ENV
from tristage.runs.timings import split_timings
from tristage.testing.fakes import default_fake_sources, write_tiny_params
from tristage.training.trainer import train_stage


def _run(folder, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    params = load_params(write_tiny_params(folder, threads=2, **kw))
    metrics = train_stage("stage1", params, None, sources=default_fake_sources(folder))
    return metrics, load_file(str(folder / "models/stage1/model.safetensors"))


def test_stage1_twice_with_two_threads_gives_identical_weights_and_metrics(tmp_path):
    m1, w1 = _run(tmp_path / "a", steps=6)
    m2, w2 = _run(tmp_path / "b", steps=6)
    assert torch.get_num_threads() == 2
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    # the stage command moves timings (a speed, not a result) out of the tracked metrics (runs/timings.py)
    quality = lambda m: split_timings(m)[0]
    assert quality(m1) == quality(m2) and quality(m1)["mel_loss"] == m1["mel_loss"]
    files = [json.loads((tmp_path / f"{r}/metrics/stage1.json").read_text()) for r in "ab"]
    assert quality(files[0]) == quality(files[1])


def test_stages_pin_numeric_libraries_before_they_load():
    """In a fresh stage process the pinning is in the environment before numpy / torch are imported."""
    code = ("import os, sys; from tristage.stage import setup_environment; setup_environment(); "
            "assert 'numpy' not in sys.modules and 'torch' not in sys.modules; "
            "import json; print(json.dumps({k: os.environ.get(k) for k in %r}))" % list(REPRODUCIBLE_ENV))
    import os

    env = {k: v for k, v in os.environ.items() if k not in REPRODUCIBLE_ENV and k != "TRISTAGE_REPRODUCIBLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    got = json.loads(out.stdout)
    import platform

    if platform.machine().lower() in ("x86_64", "amd64"):
        assert got == REPRODUCIBLE_ENV
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "TRISTAGE_REPRODUCIBLE": "0"})
    assert json.loads(off.stdout)["ATEN_CPU_CAPABILITY"] is None


def test_best_checkpoint_is_handed_over_and_said(tmp_path, monkeypatch):
    from tristage.training import trainer as tr

    # make step 4's evaluation the best and step 8's worse, whatever the model learned
    real = tr._Trainer.evaluate
    scores = iter([5.0, 1.0, 2.0])

    def evaluate(self):
        out = real(self)
        out["val_mel_loss"] = next(scores)
        return out

    monkeypatch.setattr(tr._Trainer, "evaluate", evaluate)
    params = load_params(write_tiny_params(tmp_path, steps=8, eval_every=4, checkpoint_every=8))
    m = train_stage("stage1", params, None, sources=default_fake_sources(tmp_path))
    assert (m["handover"], m["handover_step"], m["handover_val_mel_loss"], m["steps"]) == ("best", 4, 1.0, 8)
    best = load_file(str(tmp_path / "models/stage1/checkpoints/step-000004/model.safetensors"))
    handed = load_file(str(tmp_path / "models/stage1/model.safetensors"))
    assert all(torch.equal(best[k], handed[k]) for k in best)


def test_patience_stops_early_and_epochs_set_the_steps(tmp_path, monkeypatch):
    from tristage.training import trainer as tr

    real = tr._Trainer.evaluate
    scores = iter([5.0, 1.0, 2.0, 3.0, 4.0, 5.0])

    def evaluate(self):
        out = real(self)
        out["val_mel_loss"] = next(scores)
        return out

    monkeypatch.setattr(tr._Trainer, "evaluate", evaluate)
    (tmp_path / "p").mkdir()
    (tmp_path / "e").mkdir()
    params = load_params(write_tiny_params(tmp_path / "p", steps=40, eval_every=2, patience=2))
    m = train_stage("stage1", params, None, sources=default_fake_sources(tmp_path / "p"))
    assert m["stopped_early"] and m["steps"] == 6 and m["handover_step"] == 2
    monkeypatch.setattr(tr._Trainer, "evaluate", real)
    params = load_params(write_tiny_params(tmp_path / "e", steps=1, epochs=2.0))
    src = default_fake_sources(tmp_path / "e")
    from tristage.training.data import TrainData

    batches = len(TrainData(src, params.stage1, 32, 64).sampler)
    m = train_stage("stage1", params, None, sources=src)
    assert m["steps"] == 2 * batches and batches > 1
    assert json.loads((tmp_path / "e/metrics/stage1.json").read_text())["steps"] == 2 * batches


def test_a_2000_byte_transcript_is_skipped_and_counted(tmp_path, caplog):
    src = default_fake_sources(tmp_path)
    first = src.manifest.index[0]
    src.manifest.loc[first, "text"] = "word " * 400  # 2,000 bytes
    params = load_params(write_tiny_params(tmp_path, steps=2, eval_every=2))
    with caplog.at_level("WARNING"):
        m = train_stage("stage1", params, None, sources=src)
    assert m["n_skipped_text_too_long"] == 1
    assert any("max_text_len" in r.getMessage() and "skipped, not truncated" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("frontend", ["bytes", "phonemes"])
def test_text_is_never_cut(frontend):
    from tristage.model.text import TextTooLong, encode_text, split_text

    with pytest.raises(TextTooLong):
        encode_text("a" * 50, 40, frontend)
    text = "One two three. Four five, six seven eight; nine ten eleven twelve thirteen fourteen."
    fits = lambda piece: len(encode_text(piece, 10_000, frontend)) <= (40 if frontend == "bytes" else 60)
    pieces = split_text(text, fits)
    assert len(pieces) > 1 and all(fits(p) for p in pieces)
    assert " ".join(pieces).split() == text.split()  # every word, in order
