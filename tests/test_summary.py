"""`tristage summary`: one readable table, a row per stage, from the metrics files named in params."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, project_env

from tristage.config import load_params
from tristage.runs.summary import summary


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_summary_table_rows_and_paths(tmp_path):
    (tmp_path / "params.yaml").write_text("stage1: {}\n")
    params = load_params(tmp_path / "params.yaml")
    _write(tmp_path / "metrics/stage1.json", dict(steps=900, trainable_fraction=0.993, val_mel_loss=9.0))
    _write(tmp_path / "metrics/stage2.json", dict(steps=300, trainable_fraction=0.896))
    stage = dict(
        mel_loss=2.2257,
        mel_top1=0.5329,
        speaker_acc=None,
        speaker_acc_band=None,
        speaker_probe_acc=0.7778,
        emotion_probe_acc=0.7163,
        caption_cosine_mean=0.9612,
    )
    _write(
        tmp_path / "metrics/evaluate.json",
        dict(
            stage1=stage,
            stage2=dict(stage, speaker_acc=0.4123, speaker_acc_band="in", caption_cosine_mean=0.9544),
            speaker_acc_band_range=[0.3, 0.6],
            note="codec: random-init dac",
        ),
    )
    text = summary(params)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 110
    assert lines[0].split()[:3] == ["stage", "steps", "trainable"]
    row1 = next(ln for ln in lines if ln.startswith("stage1")).split()
    assert row1 == ["stage1", "900", "99.3%", "2.2257", "0.533", "-", "0.778", "0.716", "0.961"]
    row2 = next(ln for ln in lines if ln.startswith("stage2")).split()
    assert row2[5:7] == ["0.412", "(in)"] and row2[-1] == "0.954"
    assert not any(ln.startswith("stage3") for ln in lines)  # not run: no row
    assert "random-init" in text and "plots/stage2/" in text and "data/samples/" in text
    assert "dvc metrics show --md" in text and "mlflow ui" in text


def test_summary_cli_before_any_run(tmp_path):
    (tmp_path / "params.yaml").write_text("stage1: {}\n")
    r = subprocess.run(
        [sys.executable, "-m", "tristage.cli", "summary", "--params", str(tmp_path / "params.yaml")],
        cwd=REPO,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "run `dvc repro` first" in r.stdout


def _below_band_project(tmp_path):
    (tmp_path / "params.yaml").write_text("stage2:\n  speaker_acc_band: [0.3, 0.6]\n")
    _write(tmp_path / "metrics/stage2.json",
           dict(steps=300, trainable_fraction=0.9, val_speaker_acc=0.2, speaker_acc=0.14,
                speaker_acc_band="below", band_warnings=4, grl_lambda=1.0, speaker_loss_weight=0.1))
    return load_params(tmp_path / "params.yaml")


def test_summary_gives_the_band_advice_when_stage2_ended_below_the_band(tmp_path):
    params = _below_band_project(tmp_path)
    text = summary(params)
    flat = " ".join(text[text.index("band advice"):].split())
    assert flat.startswith("band advice (4 band warnings in stage2's training): speaker_acc 0.200 below ")
    assert "[0.30, 0.60] at the end of training" in flat and "lower stage2.grl_lambda (now 1)" in flat
    assert max(map(len, text.splitlines())) <= 110
    # the trainer's own last warning, when the model folder has it
    _write(tmp_path / "models/stage2/training.json", dict(band_log=[
        dict(step=100, status="below", message="speaker_acc 0.250 below the band: first"),
        dict(step=300, status="below", message="speaker_acc 0.200 below the band: last")]))
    flat = " ".join(summary(params).split())
    assert "band advice (4 band warnings in stage2's training): speaker_acc 0.200 below the band: last " \
           "(training step 300)" in flat


def test_summary_has_no_band_advice_in_the_band_and_links_the_mlflow_runs(tmp_path, monkeypatch):
    params = _below_band_project(tmp_path)
    _write(tmp_path / "metrics/stage2.json", dict(steps=300, val_speaker_acc=0.4, speaker_acc_band="in"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    text = summary(params)
    assert "band advice" not in text
    assert "make mlflow" in text and text.splitlines()[-1].strip() == "http://127.0.0.1:5000/#/experiments"


def test_summary_shows_what_the_judges_heard_and_the_seed_criteria(tmp_path):
    from tristage.evaluation.criteria import seed_criteria

    (tmp_path / "params.yaml").write_text("stage1: {}\n")
    params = load_params(tmp_path / "params.yaml")
    heard = dict(wer=0.52, wer_se=0.04, wer_n=32, cer=0.3, speaker_sim=0.8, speaker_sim_other=0.6,
                 dnsmos_ovrl=2.1, pitch_agreement=0.5, speed_agreement=0.4)
    per = {"stage1": dict(mel_loss=2.5, mel_top1=0.5, **dict(heard, wer=0.97, wer_se=0.01))}
    _write(tmp_path / "metrics/evaluate.json", dict(
        per, ground_truth=heard, resynthesis=dict(heard, wer=0.6), audio_judges=dict(asr="whisper tiny.en"),
        seed_criteria=seed_criteria(per, {}, (0.3, 0.6))))
    lines = summary(params).splitlines()
    assert max(map(len, lines)) <= 110
    rows = {ln.split("  ")[0]: ln for ln in lines if "+-" in ln}  # the listening table
    assert "0.520 +- 0.040 (32)" in rows["ground truth"] and "0.600 +- 0.040 (32)" in rows["resynthesis"]
    assert "0.970 +- 0.010 (32)" in rows["stage1"] and "0.800 / 0.600" in rows["stage1"]
    assert any("WER by whisper tiny.en" in ln for ln in lines)
    crit = [ln for ln in lines if ln.startswith("stage1 ") and "target" in ln]
    assert len(crit) == 2 and crit[0].endswith("FAIL") and "mel_loss < 2.0" in crit[0]
    assert "TRAINING" not in "\n".join(lines)
    # a memorisation check (evaluate.sample_from: training) says so under the table
    doc = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    _write(tmp_path / "metrics/evaluate.json", dict(doc, sample_from="training"))
    said = " ".join(summary(params).split())
    assert "The requests are TRAINING sentences (evaluate.sample_from)" in said
