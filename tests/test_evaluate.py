"""The evaluate stage's parts: probes, the metrics layout, the sample plan, wavs, plots."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tristage.evaluation.metrics import CONTRACT_KEYS, band_status, evaluate_document, stage_metrics
from tristage.evaluation.probes import fixed_split, probe_accuracy
from tristage.evaluation.samples import sample_plan, write_samples


def _vectors(n_speakers=6, per=30, dim=16, speaker_info=True, seed=0):
    """Emotion vectors: an emotion signal always; a speaker signal only if `speaker_info`."""
    rng = np.random.default_rng(seed)
    spk_centres = rng.normal(0, 3, (n_speakers, dim))
    emo_centres = rng.normal(0, 3, (3, dim))
    x, spk, emo = [], [], []
    for s in range(n_speakers):
        for i in range(per):
            e = (s + i) % 3
            v = emo_centres[e] + rng.normal(0, 1, dim) + (spk_centres[s] if speaker_info else 0)
            x.append(v), spk.append(f"spk{s}"), emo.append(f"emo{e}")
    return np.array(x), spk, emo


def test_speaker_probe_high_with_speaker_info_chance_without():
    x, spk, emo = _vectors(speaker_info=True)
    with_info = probe_accuracy(x, spk, seed=1)
    assert with_info.accuracy > 0.9 and with_info.n_classes == 6
    x, spk, emo = _vectors(speaker_info=False)
    without = probe_accuracy(x, spk, seed=1)
    assert without.accuracy < 0.35  # chance is 1/6
    assert probe_accuracy(x, emo, seed=1).accuracy > 0.9  # the emotion signal survives


def test_probe_is_deterministic_and_needs_two_classes():
    x, spk, _ = _vectors()
    assert probe_accuracy(x, spk, seed=3) == probe_accuracy(x, spk, seed=3)
    assert probe_accuracy(x, ["one"] * len(x)) is None
    with pytest.raises(ValueError):
        probe_accuracy(x, spk[:-1])


def test_fixed_split_is_stratified_and_disjoint():
    labels = ["a"] * 10 + ["b"] * 4 + ["c"]
    train, test = fixed_split(labels, 0.3, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == 15
    assert sorted({labels[i] for i in test}) == ["a", "b"]  # a single-item class stays in train
    assert (train.tolist(), test.tolist()) == tuple(a.tolist() for a in fixed_split(labels, 0.3, seed=0))


@pytest.mark.parametrize(
    "acc,expected",
    [
        (0.29, "below"),
        (0.3, "in"),
        (0.45, "in"),
        (0.6, "in"),
        (0.7, "above"),
        (None, None),
        (float("nan"), None),
    ],
)
def test_band_status(acc, expected):
    assert band_status(acc, [0.3, 0.6]) == expected


def test_evaluate_document_carries_every_contract_key_per_stage_and_at_top():
    band = [0.3, 0.6]
    per = {
        "stage1": stage_metrics(
            {
                "mel_loss": 5.0,
                "mel_top1": 0.1,
                "speaker_acc": 0.9,
                "speaker_probe_acc": 0.95,
                "emotion_probe_acc": 0.8,
            },
            band,
            0.97,
        ),
        "stage2": stage_metrics(
            {
                "mel_loss": 4.0,
                "mel_top1": 0.2,
                "speaker_acc": 0.45,
                "speaker_probe_acc": 0.4,
                "emotion_probe_acc": 0.8,
                "n_val": 12,
            },
            band,
            0.97,
        ),
    }
    doc = evaluate_document(per, "stage2", band, {"codec": {"pretrained": False}})
    for scope in (doc, doc["stage1"], doc["stage2"]):
        assert set(CONTRACT_KEYS) <= set(scope)
    assert doc["stage1"]["speaker_acc_band"] == "above" and doc["speaker_acc_band"] == "in"
    assert doc["mel_loss"] == 4.0 and doc["final_stage"] == "stage2" and doc["stage2"]["n_val"] == 12
    json.dumps(doc)  # serialisable as is


ROWS = [{"id": f"u{s}{i}", "text": f"text {s}{i}", "speaker": f"spk{s}", "caption": f"cap {s}",
         "emotion": ["happy", "sad"][i % 2]} for s in range(3) for i in range(4)]


def test_sample_plan_fixed_matched_and_cross_pairs():
    plan = sample_plan(ROWS, 3, seed=7)
    assert plan == sample_plan(list(reversed(ROWS)), 3, seed=7)  # the same requests whatever the row order
    matched = [p for p in plan if p["kind"] == "matched"]
    cross = [p for p in plan if p["kind"] == "cross"]
    assert len(matched) == 3 and len({p["speaker_ref"]["speaker"] for p in matched}) == 3
    assert len(cross) == 3
    for p in cross:
        assert p["speaker_ref"]["speaker"] != p["emotion_ref"]["speaker"]
    assert sample_plan([], 3, 0) == []
    assert [p["kind"] for p in sample_plan(ROWS[:4], 2, 0)] == [
        "matched",
        "matched",
    ]  # one speaker: no cross pair


def test_write_samples_writes_wavs_and_describes_them(tmp_path):
    import soundfile as sf

    plan = sample_plan(ROWS, 2, seed=0)
    wavs = [np.sin(np.linspace(0, 100, 1600 * (i + 1))) * 0.3 for i in range(len(plan))]
    entries = write_samples(tmp_path, "stage3", plan, wavs, 16000, {"name": "dac", "pretrained": False})
    assert len(entries) == len(plan)
    for e in entries:
        audio, sr = sf.read(tmp_path / e["wav"])
        assert sr == 16000 and len(audio) == int(e["seconds"] * 16000)
        assert e["is_speech"] is False and e["stage"] == "stage3"


def test_plots_written(tmp_path):
    from tristage.evaluation.plots import write_plots

    per = {
        s: {
            "mel_loss": 3.0,
            "mel_top1": 0.2,
            "speaker_acc": a,
            "speaker_probe_acc": a,
            "emotion_probe_acc": 0.7,
            "speaker_probe_chance": 0.2,
        }
        for s, a in (("stage1", 0.9), ("stage2", 0.4), ("stage3", None))
    }
    paths = write_plots(tmp_path, per, [0.3, 0.6])
    assert sorted(p.name for p in paths) == ["probes.png", "speaker_acc_band.png", "stages.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
