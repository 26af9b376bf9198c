"""`tristage compare`: stage runs gathered into pipeline runs; the band and the best run."""
from __future__ import annotations

import json

import pytest

from tristage.compare import RunRecord, band_status, group_runs, render, table_rows


def _flow(run_id, name, t, lam, acc, s3_loss, band="[0.3, 0.6]", probe=None):
    parent = RunRecord(run_id, name, t, "FINISHED", {"tristage.role": "flow"}, {}, {})
    kids = []
    for i, (stage, metrics, params) in enumerate([
        ("stage1", {"mel_loss": 4.0}, {}),
        ("stage2", {"mel_loss": 3.5, "speaker_acc": acc, "grl_lambda": lam, "speaker_loss_weight": 0.1},
         {"stage2.grl_lambda": str(lam), "stage2.speaker_acc_band": band}),
        ("stage3", {"mel_loss": s3_loss - 0.3, "val_mel_loss": s3_loss}, {}),  # train window below val
        ("evaluate", {"stage1.speaker_probe_acc": 0.9, "stage2.speaker_probe_acc": probe or 0.5,
                      "speaker_probe_acc": probe or 0.5, "emotion_probe_acc": 0.8}, {}),
    ]):
        kids.append(RunRecord(f"{run_id}-{stage}", stage, t + i + 1, "FINISHED",
                              {"stage": stage, "mlflow.parentRunId": run_id}, params, metrics))
    return [parent, *kids]


def test_runs_grouped_by_parent_newest_first():
    runs = _flow("a", "lam-1", 1000, 1.0, 0.45, 2.0) + _flow("b", "lam-4", 2000, 4.0, 0.2, 1.5)
    groups = group_runs(runs)
    assert [g.name for g in groups] == ["lam-4", "lam-1"]
    assert sorted(groups[0].stages) == ["evaluate", "stage1", "stage2", "stage3"]


def test_best_is_in_band_then_lowest_final_mel_loss():
    runs = (_flow("a", "lam-1", 1000, 1.0, 0.45, 2.0) + _flow("b", "lam-4", 2000, 4.0, 0.2, 1.5)
            + _flow("c", "lam-2", 3000, 2.0, 0.55, 1.8) + _flow("d", "lam-0", 4000, 0.0, 0.9, 1.0))
    rows = {r["run"]: r for r in table_rows(group_runs(runs))}
    assert {k: r["band"] for k, r in rows.items()} == {
        "lam-1": "in",
        "lam-4": "below",
        "lam-2": "in",
        "lam-0": "above",
    }
    assert [k for k, r in rows.items() if r["best"]] == [
        "lam-2"
    ]  # lam-0/lam-4 have lower loss but miss the band
    assert rows["lam-2"]["grl_lambda"] == 2.0 and rows["lam-2"]["s3_val_mel_loss"] == 1.8
    assert rows["lam-2"]["s1_spk_probe"] == 0.9 and rows["lam-2"]["final_emo_probe"] == 0.8


def test_band_comes_from_the_runs_params():
    rows = table_rows(group_runs(_flow("a", "narrow", 1000, 1.0, 0.45, 2.0, band="[0.1, 0.2]")))
    assert rows[0]["band"] == "above"


@pytest.mark.parametrize(
    "acc,expected", [(0.1, "below"), (0.3, "in"), (0.6, "in"), (0.61, "above"), (None, None)]
)
def test_band_status(acc, expected):
    assert band_status(acc, (0.3, 0.6)) == expected


def test_plain_dvc_repro_runs_grouped_by_experiment_or_revision():
    def stage_run(i, stage, t, tags, metrics):
        return RunRecord(f"r{i}", stage, t, "FINISHED", {"stage": stage, **tags}, {}, metrics)

    rev = {"git_revision": "abcdef1234"}
    runs = [stage_run(1, "stage1", 10, rev, {"val_mel_loss": 5.0}),
            stage_run(2, "stage1", 20, rev, {"val_mel_loss": 4.0}),
            stage_run(3, "stage2", 30, rev, {"val_mel_loss": 3.0}),
            stage_run(4, "stage2", 40, {**rev, "dvc_experiment": "exp-x"}, {"val_mel_loss": 2.0})]
    rows = {r["run"]: r for r in table_rows(group_runs(runs))}
    assert set(rows) == {"repro@abcdef1", "exp-x"}
    assert rows["repro@abcdef1"]["s1_val_mel_loss"] == 4.0  # the latest run of a stage wins
    assert rows["exp-x"]["s2_val_mel_loss"] == 2.0 and rows["exp-x"]["s1_val_mel_loss"] is None


def test_render_formats():
    rows = table_rows(group_runs(_flow("a", "lam-1", 1000, 1.0, 0.45, 2.0)))
    text = render(rows)
    assert text.splitlines()[0].split()[:2] == ["run", "started"]
    assert "*lam-1" in text and "0.45" in text and " in " in text
    assert json.loads(render(rows, "json"))[0]["grl_lambda"] == 1.0
    assert render(rows, "csv").splitlines()[1].startswith("lam-1,")
    assert "no tristage runs yet" in render([])


@pytest.mark.slow
def test_cli_compare_reads_an_mlflow_store(tmp_path, capsys):
    from tristage.cli import main

    assert main(["compare", "--uri", f"sqlite:///{tmp_path / 'empty.db'}"]) == 0
    assert "no tristage runs yet" in capsys.readouterr().out


def test_columns_say_train_or_validation_and_figures_are_rounded():
    parent = RunRecord("p", "dvc-run", 1000, "FINISHED", {"tristage.role": "dvc"}, {}, {})
    stage2 = RunRecord("p-s2", "stage2", 1001, "FINISHED", {"stage": "stage2", "mlflow.parentRunId": "p"},
                       {"stage2.speaker_acc_band": "[0.3, 0.6]"},
                       {"mel_loss": 1.93, "val_mel_loss": 2.0481611071, "speaker_acc": 0.125,
                        "val_speaker_acc": 0.4, "grl_lambda": 0.1 + 0.2 - 0.2, "speaker_loss_weight": 0.1})
    [row] = table_rows(group_runs([parent, stage2]))
    assert row["run"] == "dvc-run" and row["stages"] == 1  # a `dvc repro` parent groups its stage runs
    assert row["grl_lambda"] == 0.1 and repr(row["grl_lambda"]) == "0.1"  # not 0.10000000000000002
    assert row["s2_val_mel_loss"] == 2.04816  # the validation figure, not the training window's 1.93
    assert (row["s2_train_spk_acc"], row["s2_val_spk_acc"]) == (0.125, 0.4)
    assert row["band"] == "in"  # judged on validation (the training window's 0.125 is below)
    text = render([row])
    assert "s2_train_spk_acc" in text and "s2_val_mel_loss" in text and "val_ = held-out" in text
    assert "0.10000000000000002" not in render([row], "json")
