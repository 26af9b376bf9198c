"""Timings leave the tracked metrics and plots (one writer for every stage, in tristage.stage)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from tristage.runs.timings import split_timings
from tristage.stage import run_stage


def test_split_timings_keeps_quality_and_nesting():
    quality, timings = split_timings({"mel_loss": 2.0, "samples_per_s": 80.1, "elapsed_s": 3.0, "steps": 300,
                                      "stage2": {"speaker_acc": 0.4, "probe_seconds": 1.5},
                                      "encode_seconds": 0.4})
    assert quality == {"mel_loss": 2.0, "steps": 300, "stage2": {"speaker_acc": 0.4}}
    assert timings == {"samples_per_s": 80.1, "elapsed_s": 3.0, "stage2": {"probe_seconds": 1.5},
                       "encode_seconds": 0.4}


def _fake_training(params, tracker):
    """Writes what a training stage writes, with wall-clock figures that differ on every run."""
    section = params.stage2
    speed = 1000.0 / (time.perf_counter_ns() % 997 + 1)
    metrics = {"mel_loss": 1.93, "mel_top1": 0.57, "grl_lambda": 1.0, "samples_per_s": speed,
               "resumed_from_step": None, "steps": 4}
    Path(section.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(section.metrics).write_text(json.dumps(metrics))
    Path(section.plots_dir).mkdir(parents=True, exist_ok=True)
    (Path(section.plots_dir) / "train.tsv").write_text(
        f"step\tmel_loss\tsamples_per_s\tval_mel_loss\n1\t3.5\t{speed:.6g}\t\n2\t2.5\t{speed + 1:.6g}\t2.9\n")
    return metrics


def test_a_rerun_of_unchanged_code_changes_no_tracked_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TRISTAGE_TRACKING", "0")
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"stage2": {"steps": 4}}))
    tracked = [tmp_path / "metrics" / "stage2.json", tmp_path / "plots" / "stage2" / "train.tsv"]
    snapshots = []
    for _ in range(2):
        assert run_stage("stage2", _fake_training, ["--params", str(params)]) == 0
        snapshots.append([p.read_bytes() for p in tracked])
    assert snapshots[0] == snapshots[1]  # only timings differed between the runs, and they left
    metrics = json.loads(tracked[0].read_text())
    assert metrics == {"mel_loss": 1.93, "mel_top1": 0.57, "grl_lambda": 1.0, "steps": 4}
    assert tracked[1].read_text() == "step\tmel_loss\tval_mel_loss\n1\t3.5\t\n2\t2.5\t2.9\n"
    timings = json.loads((tmp_path / "timings" / "stage2.json").read_text())
    assert set(timings) == {"samples_per_s", "resumed_from_step"} and timings["samples_per_s"] > 0
    side = (tmp_path / "timings" / "stage2" / "train.tsv").read_text().splitlines()
    assert side[0] == "step\tsamples_per_s" and len(side) == 3


def test_an_object_under_a_timing_key_leaves_the_metrics_whole():
    from tristage.runs.timings import split_timings

    judges = {"asr": "whisper", "seconds": {"asr": 3.2, "dnsmos": 9.1}}
    quality, timings = split_timings({"wer": 0.5, "audio_judges": judges})
    assert quality == {"wer": 0.5, "audio_judges": {"asr": "whisper"}}
    assert timings == {"audio_judges": {"seconds": {"asr": 3.2, "dnsmos": 9.1}}}
