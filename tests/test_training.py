"""Trainer pieces: band logic, data/sampler, non-finite stop, checkpoint verification and fallback."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tristage.config import load_params
from tristage.errors import UserError
from tristage.testing.fakes import default_fake_sources, fake_sources, write_tiny_params
from tristage.training import checkpoint as ck
from tristage.training.adversary import SpeakerAdversary
from tristage.training.band import SpeakerAccBand, band_status, dann_lambda
from tristage.training.data import BucketSampler, TrainData
from tristage.training.optim import lr_factor
from tristage.training.trainer import _Trainer, train_stage


def _band(control="warn", patience=2):
    return SpeakerAccBand(0.3, 0.6, patience, control, grl_lambda_max=3.0, grl_lambda_min=0.25)


def _adversary(control="warn", patience=2, **kw):
    """A stage2 adversary on a stand-in classifier (its band and values only)."""
    from types import SimpleNamespace

    from tristage.training import ddp

    sp = load_params(None).stage2.model_copy(update=dict(band_control=control, band_patience=patience,
                                                         grl_lambda_min=0.25, **kw))
    return SpeakerAdversary.from_params(
        sp, SimpleNamespace(speaker_classifier=torch.nn.Linear(2, 2)), ddp.Dist()
    )


@pytest.mark.parametrize(
    "acc,status", [(0.1, "below"), (0.3, "in"), (0.45, "in"), (0.6, "in"), (0.9, "above")]
)
def test_band_status(acc, status):
    assert band_status(acc, (0.3, 0.6)) == status


def test_band_warns_after_patience_without_changing_in_warn_mode():
    adv = _adversary("warn", patience=2)
    assert adv.check_band(1, 0.9).warning is None
    d = adv.check_band(2, 0.95)
    assert d.status == "above" and "raise stage2.grl_lambda" in d.warning and not d.changes
    assert adv.grl_lambda == 1.0 and not adv.changes
    assert adv.check_band(3, 0.5).status == "in"
    assert adv.check_band(4, 0.1).warning is None  # streak restarted
    d = adv.check_band(5, 0.1)
    assert "lower stage2.grl_lambda" in d.warning and adv.grl_lambda == 1.0 and adv.speaker_loss_weight == 0.1


def test_band_monitor_proposes_but_holds_no_values():
    b = _band("auto", patience=1)
    assert b.update(0.95, grl_lambda=1.0, speaker_loss_weight=0.1).changes == {"grl_lambda": (1.0, 2.0)}
    assert b.update(0.05, grl_lambda=1.0, speaker_loss_weight=0.1).changes == {"grl_lambda": (1.0, 0.5)}
    assert b.update(0.95, grl_lambda=1.0, speaker_loss_weight=0.1).changes == {"grl_lambda": (1.0, 2.0)}
    assert not hasattr(b, "grl_lambda") and not hasattr(b, "speaker_loss_weight")


def test_adversary_auto_adjusts_within_limits_logs_each_change_and_resumes():
    adv = _adversary("auto", patience=1)
    assert adv.check_band(1, 0.95).changes == {"grl_lambda": (1.0, 2.0)}
    assert adv.check_band(2, 0.95).changes == {"grl_lambda": (2.0, 3.0)}
    d = adv.check_band(3, 0.95)
    assert not d.changes and "at its limit" in d.warning and adv.grl_lambda == 3.0
    # below the band: lambda comes down (the speaker has left the vector), to grl_lambda_min at least
    assert adv.check_band(4, 0.05).changes == {"grl_lambda": (3.0, 1.5)}
    assert adv.check_band(5, 0.05).changes == {"grl_lambda": (1.5, 0.75)}
    assert adv.speaker_loss_weight == 0.1  # the weight is advised on, never changed
    assert [(c["step"], c["name"], c["old"], c["new"]) for c in adv.changes] == [
        (1, "grl_lambda", 1.0, 2.0), (2, "grl_lambda", 2.0, 3.0), (4, "grl_lambda", 3.0, 1.5),
        (5, "grl_lambda", 1.5, 0.75)]
    assert all("band_control=auto" in c["reason"] for c in adv.changes)
    assert adv.forward_args(7) == dict(speaker_head=True, grl_lambda=0.75)
    m = adv.metrics()
    assert (m["grl_lambda_configured"], m["grl_lambda_final"], m["grl_lambda"]) == (1.0, 0.75, 0.75)
    assert (m["speaker_loss_weight_configured"], m["speaker_loss_weight_final"]) == (0.1, 0.1)
    s = adv.state_dict()
    again = _adversary("auto", patience=1)
    again.load_state_dict(s)
    assert again.state_dict() == s and again.lambda_at(7) == 0.75
    for step in (8, 9):
        adv.check_band(step, 0.05)
    d = adv.check_band(10, 0.05)
    assert adv.grl_lambda == 0.25 and not d.changes and "at its limit grl_lambda_min" in d.warning


def test_below_band_advice_matches_the_measured_finding():
    d = _band("warn", patience=1).update(0.1, grl_lambda=1.0, speaker_loss_weight=0.1)
    assert "speaker has left" in d.warning and "lower stage2.grl_lambda" in d.warning
    assert "not learning;" not in d.warning and not d.changes


def test_adversary_never_changes_a_value_at_the_last_step():
    adv = _adversary("auto", patience=1)
    d = adv.check_band(10, 0.95, last=True)
    assert not d.changes and "not applied" in d.warning and adv.grl_lambda == 1.0 and not adv.changes


def test_adversary_warmup_is_the_dann_ramp_of_the_base_lambda():
    adv = _adversary("warn", grl_warmup=True, steps=100, grl_lambda=2.0)
    assert adv.lambda_at(0) == 0.0 and adv.lambda_at(50) == pytest.approx(dann_lambda(2.0, 0.5))
    adv.forward_args(99)
    assert adv.metrics()["grl_lambda"] == pytest.approx(dann_lambda(2.0, 0.99))
    assert adv.metrics()["grl_lambda_configured"] == 2.0


def test_band_in_stage2_adjusts_when_forced_out_of_band(tmp_path, monkeypatch):
    """Drive the trainer's band by forcing speaker_acc out of band: auto mode raises lambda, logged."""
    params = load_params(write_tiny_params(tmp_path, steps=4, eval_every=1),
                         ["stage2.band_control=auto", "stage2.band_patience=1", "stage2.init_from=null"])
    monkeypatch.setitem(__import__("tristage.training.presets", fromlist=["PRESETS"]).PRESETS, "stage2",
                        __import__("dataclasses").replace(__import__("tristage.training.presets",
                                                                     fromlist=["PRESETS"]).PRESETS["stage2"],
                                                          needs_init=False))
    monkeypatch.setattr(
        _Trainer, "evaluate", lambda self: dict(val_mel_loss=1.0, val_mel_top1=0.5, val_speaker_acc=0.99)
    )
    m = train_stage("stage2", params, None, sources=default_fake_sources(tmp_path))
    assert m["speaker_acc_band"] == "above"
    assert m["grl_lambda"] == 3.0 and m["band_changes"] == 2  # 1 -> 2 -> 3 (grl_lambda_max)
    assert m["grl_lambda_configured"] == 1.0 and m["grl_lambda_final"] == 3.0
    info = __import__("json").loads((tmp_path / "models/stage2/training.json").read_text())
    assert [c["changes"] for c in info["band_log"][:2]] == [
        {"grl_lambda": [1.0, 2.0]},
        {"grl_lambda": [2.0, 3.0]},
    ]
    assert [(c["step"], c["new"]) for c in info["grl_log"]] == [(1, 2.0), (2, 3.0)]


def test_auto_band_checks_between_evaluations_never_at_the_last_step_and_reports_one_value(
    tmp_path, monkeypatch
):
    """band_check_every acts inside the stage even when evaluations are rare; nothing changes at the last
    step; train.tsv says per check whether speaker_acc was in the band; the last row's lambda / weight are
    the ones metrics/stage2.json reports (the values actually used)."""
    import dataclasses
    import json

    from tristage.training import presets

    monkeypatch.setitem(
        presets.PRESETS, "stage2", dataclasses.replace(presets.PRESETS["stage2"], needs_init=False)
    )
    params = load_params(write_tiny_params(tmp_path, steps=8, eval_every=100, log_every=1),
                         ["stage2.band_control=auto", "stage2.band_patience=1", "stage2.band_check_every=2",
                          "stage2.init_from=null", "stage2.grl_lambda_max=100"])
    monkeypatch.setattr(
        _Trainer, "evaluate", lambda self: dict(val_mel_loss=1.0, val_mel_top1=0.5, val_speaker_acc=0.99)
    )
    m = train_stage("stage2", params, None, sources=default_fake_sources(tmp_path))
    info = json.loads((tmp_path / "models/stage2/training.json").read_text())
    assert [(c["step"], c["old"], c["new"]) for c in info["grl_log"]] == [
        (2, 1.0, 2.0),
        (4, 2.0, 4.0),
        (6, 4.0, 8.0),
    ]
    assert "not applied" in info["band_log"][-1]["message"] and info["band_log"][-1]["step"] == 8
    assert (m["grl_lambda"], m["grl_lambda_final"], m["grl_lambda_configured"], m["band_changes"]) == (
        8.0,
        8.0,
        1.0,
        3,
    )
    assert m["best_step"] == 8  # band checks between evaluations don't pick the best checkpoint
    def tsv(name):
        rows = [line.split("\t") for line in (tmp_path / "plots/stage2" / name).read_text().splitlines()]
        return [dict(zip(rows[0], r)) for r in rows[1:]]

    assert [(r["step"], r["band_status"]) for r in tsv("val.tsv") if r["band_status"]] == [
        (s, "above") for s in ("2", "4", "6", "8")
    ]
    table = tsv("train.tsv")
    assert float(table[-1]["grl_lambda"]) == m["grl_lambda"]
    assert float(table[-1]["speaker_loss_weight"]) == m["speaker_loss_weight"]


def test_dann_warmup_and_lr_schedule():
    assert dann_lambda(1.0, 0.0) == 0.0 and abs(dann_lambda(2.0, 1.0) - 2.0) < 1e-3
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_data_references_labels_and_split(tmp_path):
    params = load_params(
        write_tiny_params(tmp_path, heldout_speakers=0)
    )  # utterance split only (no unseen speakers)
    src = fake_sources(n_speakers=4, utts_per_speaker=6, mapped_speakers=3)
    data = TrainData(src, params.stage1, 32, 64)
    again = TrainData(src, params.stage1, 32, 64)
    assert data.val_idx == again.val_idx and set(data.val_idx).isdisjoint(data.train_idx)
    assert len(data.val_idx) == round(0.15 * 24)
    labels = {e.speaker: e.label for e in data.examples}
    assert labels["spk03"] == -100 and labels["spk00"] == 0  # outside the mapping: ignored
    rng = np.random.default_rng(0)
    for i in data.train_idx[:5]:
        j = data._ref(i, "other", False, rng)
        assert j != i and data.examples[j].speaker == data.examples[i].speaker
    b = data.collate(data.train_idx[:4], [0])
    assert b["spk_mel"].shape[1] <= params.stage1.max_ref_frames
    assert b["codes"].shape[:2] == (4, src.n_codebooks)


def test_sampler_position_resume_and_sharding():
    lengths = list(np.random.default_rng(0).integers(5, 50, 40))
    a = BucketSampler(lengths, 4, seed=1, bucket_batches=2)
    seq = [a.next()[0] for _ in range(25)]  # crosses an epoch boundary (10 batches / epoch)
    b = BucketSampler(lengths, 4, seed=1, bucket_batches=2)
    for _ in range(13):
        b.next()
    c = BucketSampler(lengths, 4, seed=1, bucket_batches=2)
    c.load_state_dict(b.state_dict())
    assert [c.next()[0] for _ in range(12)] == seq[13:]
    assert sorted(i for batch in seq[:10] for i in batch) == list(range(40))  # one epoch = every example once
    r0, r1 = (BucketSampler(lengths, 4, seed=1, rank=r, world=2) for r in (0, 1))
    e0 = [i for _ in range(len(r0)) for i in r0.next()[0]]
    e1 = [i for _ in range(len(r1)) for i in r1.next()[0]]
    assert set(e0).isdisjoint(e1) and len(e0) == len(e1)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    params = load_params(write_tiny_params(tmp_path, steps=8, checkpoint_every=2))
    real = _Trainer.loss_of

    def poisoned(self, out):
        loss = real(self, out)
        return loss * float("nan") if self.state.step >= 5 else loss

    monkeypatch.setattr(_Trainer, "loss_of", poisoned)
    with pytest.raises(UserError) as e:
        train_stage("stage1", params, None, sources=default_fake_sources(tmp_path))
    msg = str(e.value)
    assert "non-finite loss" in msg and "step 6" in msg and "step-000004" in msg and "\n" not in msg
    root = tmp_path / "models/stage1/checkpoints"
    assert [s for s, _ in ck.list_checkpoints(root)] == [4, 2]
    ck.verify(root / "step-000004")
    assert not (tmp_path / "models/stage1/model.safetensors").exists()


def test_truncated_checkpoint_is_detected_and_previous_used(tmp_path):
    params = load_params(write_tiny_params(tmp_path, steps=6, checkpoint_every=2, keep_last=3))
    src = default_fake_sources(tmp_path)
    train_stage("stage1", params, None, sources=src)
    root = tmp_path / "models/stage1/checkpoints"
    latest = root / "step-000006" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:-100])  # truncated
    with pytest.raises(ck.CheckpointError, match="size"):
        ck.verify(root / "step-000006")
    fp = ck.read_json(root / "step-000004" / "manifest.json")["fingerprint"]
    folder, notes = ck.find_resumable(root, fp)
    assert folder.name == "step-000004" and "step-000006 is unusable" in notes[0]
    # a rerun with the same config resumes from step 4, redoes steps 5-6
    m = train_stage("stage1", params, None, sources=src)
    assert m["resumed_from_step"] == 4 and m["steps"] == 6


def test_changed_config_starts_fresh(tmp_path, caplog):
    src = default_fake_sources(tmp_path)
    train_stage("stage1", load_params(write_tiny_params(tmp_path, steps=4)), None, sources=src)
    import logging

    with caplog.at_level(logging.INFO):
        m = train_stage(
            "stage1", load_params(write_tiny_params(tmp_path, steps=4, lr=1e-3)), None, sources=src
        )
    assert m["resumed_from_step"] is None
    assert "starting fresh" in caplog.text


def test_trainer_state_loads_weights_only(tmp_path):
    params = load_params(write_tiny_params(tmp_path, steps=2))
    train_stage("stage1", params, None, sources=default_fake_sources(tmp_path))
    st = torch.load(tmp_path / "models/stage1/trainer_state.pt", weights_only=True)
    assert st["step"] == 2 and {"python", "numpy", "torch"} <= set(st["rng"]) and st["sampler"]["pos"] >= 1
    assert math.isfinite(st["history"][-1]["mel_loss"])


def test_feature_cache_is_bounded_and_batches_do_not_depend_on_it(tmp_path, monkeypatch):
    import tristage.training.data as data_mod

    params = load_params(write_tiny_params(tmp_path))
    src = fake_sources(n_speakers=4, utts_per_speaker=6)
    full = TrainData(src, params.stage1, 32, 64)
    monkeypatch.setattr(data_mod, "CACHE_UTTERANCES", 3)
    small = TrainData(src, params.stage1, 32, 64)
    for _ in range(6):
        a, b = full.next_batch(), small.next_batch()
        assert len(small._cache) <= 3
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_classifier_updates_move_only_the_classifier(tmp_path, monkeypatch):
    import dataclasses

    from tristage.training import presets

    monkeypatch.setitem(
        presets.PRESETS, "stage2", dataclasses.replace(presets.PRESETS["stage2"], needs_init=False)
    )
    params = load_params(
        write_tiny_params(tmp_path, steps=2), ["stage2.init_from=null", "stage2.classifier_steps=3"]
    )
    from tristage.training import ddp

    t = _Trainer("stage2", params, params.stage2, ddp.init("cpu"), None, default_fake_sources(tmp_path))
    batch = t.data.next_batch()
    with torch.no_grad():
        emo = t.model.emotion_vector(batch["emo_mel"], batch["emo_mask"])
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.adversary.remember(dict(emo_vec=emo), batch)
    t.adversary.classifier_updates()
    after = t.model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"speaker_classifier"}
    params0 = load_params(
        write_tiny_params(tmp_path, steps=2), ["stage2.init_from=null", "stage2.classifier_steps=0"]
    )
    assert (
        _Trainer(
            "stage2", params0, params0.stage2, ddp.init("cpu"), None, default_fake_sources(tmp_path)
        ).adversary.optimizer
        is None
    )


def test_input_noise_reaches_the_forward_pass_and_its_fractions_are_checked(tmp_path, monkeypatch):
    from tristage.model.tts import TTS

    seen = []
    forward = TTS.forward

    def spy(self, batch, *args, **kwargs):
        seen.append(kwargs.get("input_noise"))
        return forward(self, batch, *args, **kwargs)

    monkeypatch.setattr(TTS, "forward", spy)
    src = default_fake_sources(tmp_path)
    m = train_stage("stage1", load_params(write_tiny_params(tmp_path, steps=3, eval_every=3,
                                                            input_noise=dict(coarse=0.05, fine=0.3))),
                    None, sources=src)
    assert math.isfinite(m["mel_loss"])
    assert seen.count((0.05, 0.3)) == 3  # every training step, never a validation pass
    assert None in seen
    with pytest.raises(UserError, match=r"stage1\.input_noise\.fine"):
        load_params(write_tiny_params(tmp_path, steps=2, input_noise=dict(fine=1.5)))


def test_guided_attention_is_logged_and_its_heads_are_checked(tmp_path):
    src = default_fake_sources(tmp_path)
    on = dict(weight=1.0, heads=1, sigma=0.2)
    m = train_stage("stage1", load_params(write_tiny_params(tmp_path, steps=4, guided_attention=on)), None,
                    sources=src)
    st = torch.load(tmp_path / "models/stage1/trainer_state.pt", weights_only=True)
    logged = [r["align_loss"] for r in st["history"] if "align_loss" in r]
    assert logged and all(0 < v < 1 for v in logged) and math.isfinite(m["mel_loss"])
    off = tmp_path / "off"
    off.mkdir()
    train_stage("stage1", load_params(write_tiny_params(off, steps=2)), None,
                sources=default_fake_sources(off))
    st = torch.load(off / "models/stage1/trainer_state.pt", weights_only=True)
    assert not any("align_loss" in r for r in st["history"])
    with pytest.raises(UserError, match=r"stage1\.guided_attention\.heads: 9 but the decoder has 2 heads"):
        too_many = write_tiny_params(tmp_path, steps=2, guided_attention=dict(on, heads=9))
        train_stage("stage1", load_params(too_many), None, sources=src)


def test_aligned_positions_take_the_training_splits_rate_and_later_stages_keep_it(tmp_path):
    import json

    params = load_params(write_tiny_params(tmp_path, steps=2), ["stage1.model.positions=aligned"])
    src = default_fake_sources(tmp_path)
    train_stage("stage1", params, None, sources=src)
    cfg = json.loads((tmp_path / "models/stage1/config.json").read_text())
    data = TrainData(src, params.stage1, cfg["max_text_len"], cfg["max_frames"])
    train = [data.examples[i] for i in data.train_idx]
    rate = sum(e.n_frames for e in train) / sum(len(e.text) for e in train)
    assert cfg["positions"] == "aligned" and cfg["text_rate"] == pytest.approx(rate, abs=1e-4)
    train_stage("stage2", params, None, sources=src)
    later = json.loads((tmp_path / "models/stage2/config.json").read_text())
    assert (later["positions"], later["text_rate"]) == ("aligned", cfg["text_rate"])
    with pytest.raises(UserError, match=r"stage1\.model\.positions"):
        load_params(write_tiny_params(tmp_path, steps=2), ["stage1.model.positions=diagonal"])
