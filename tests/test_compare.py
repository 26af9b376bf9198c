"""`tristage compare`: stage runs gathered into pipeline runs; the band and the best run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tristage.errors import UserError
from tristage.runs.compare import (
    ALL_COLUMNS,
    DVC_COLUMNS,
    DVC_LEGEND,
    DVC_TABLE_COLUMNS,
    TABLE_COLUMNS,
    TABLE_HEADS,
    WIDTH,
    RunRecord,
    band_status,
    dvc_rows,
    exp_show,
    group_runs,
    render,
    render_table,
    table_rows,
)


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
    assert text.splitlines()[1].split()[:3] == ["run", "started", "status"]  # under the groups' line
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
    groups, head = render([row]).splitlines()[:2]
    assert "s2 speaker_acc" in groups and "val_mel_loss" in groups
    assert head.split()[-5:-2] == ["train", "val", "band"] and "val = held-out" in render([row])
    assert "s2_train_spk_acc" in render([row], "csv").splitlines()[0]  # csv and json: the full names
    assert "0.10000000000000002" not in render([row], "json")


def _realistic_runs() -> list[RunRecord]:
    """20 pipeline runs as the stages log them: `dvc repro` parents (`repro@<rev> <time>`), named DVC
    experiments, Prefect flow runs, sweep points with long names, a failed and a running one; every figure
    with all its digits."""
    names = ["repro@ba7ddf5 05-14 13:22", "lam-0.5", "lam-2", "lam-0.5-flow", "tidy-rune",
             "grl-grl_lambda0.3-speaker_loss_weight0.1", "grl-grl_lambda3-speaker_loss_weight0.3",
             "grl-grl_lambda1-speaker_loss_weight0.1", "repro@0f1e2d3 05-15 09:01", "stage3-lr-3e-5"]
    names += [f"sweep-wide-p{i:08x}" for i in range(7)] + ["failed-run", "running-now", "s1-steps-600"]
    runs = []
    for i, name in enumerate(names):
        t = 1_747_000_000_000 + 60_000 * i
        rid, lam, weight = f"run{i}", [0.3, 1.0, 3.0][i % 3], [0.1, 0.3][i % 2]
        status = {"failed-run": "FAILED", "running-now": "RUNNING"}.get(name, "FINISHED")
        role = "dvc" if name.startswith("repro@") or i % 2 else "flow"
        runs.append(RunRecord(rid, name, t, status, {"tristage.role": role}, {}, {}))
        stages = {
            "stage1": {"mel_loss": 2.0713318347930908, "val_mel_loss": 2.154782295227051 + i / 997,
                       "mel_top1": 0.5473822355270386},
            "stage2": {"mel_loss": 2.134380578994751, "val_mel_loss": 2.236314296722412 + i / 991,
                       "speaker_acc": 0.14374999701976776, "val_speaker_acc": (i % 7) / 15,
                       "grl_lambda": lam, "speaker_loss_weight": weight},
            "stage3": {"mel_loss": 2.0184199810028076, "val_mel_loss": 2.141463279724121 + i / 983},
            "evaluate": {"stage1.speaker_probe_acc": 0.6666666865348816, "stage2.speaker_probe_acc": 0.5648,
                         "speaker_probe_acc": 0.5648148059844971, "emotion_probe_acc": 0.5740740895271301,
                         "caption_cosine_mean": 0.9123456},
        }
        if name == "failed-run":
            stages = {k: v for k, v in stages.items() if k in ("stage1", "stage2")}
        for j, (stage, metrics) in enumerate(stages.items()):
            params = {"stage2.grl_lambda": str(lam), "stage2.speaker_acc_band": "[0.3, 0.6]"}
            runs.append(RunRecord(f"{rid}-{stage}", stage, t + j + 1, "FINISHED",
                                  {"stage": stage, "mlflow.parentRunId": rid},
                                  params if stage == "stage2" else {}, metrics))
    return runs


def test_table_fits_120_columns_on_a_realistic_set_of_runs():
    rows = table_rows(group_runs(_realistic_runs()))
    assert len(rows) == 20
    lines = render(rows).splitlines()
    assert max(map(len, lines)) <= WIDTH == 120, "\n".join(line for line in lines if len(line) > WIDTH)
    groups, head, rule, *body = lines
    body = body[:20]
    assert head.split() == ["run"] + [TABLE_HEADS.get(c, ("", c))[1] for c in TABLE_COLUMNS[1:]]
    for name in ("val_mel_loss", "s2 speaker_acc", "probes", "stage2 GRL"):
        assert name in groups
    # a group's name stands over its first column: val_mel_loss over s1, probes over spk
    assert groups.index("val_mel_loss") == head.index(" s1 ") + 1
    assert groups.index("probes") == head.index(" spk ") + 1
    by_name = {r["run"]: r for r in rows}
    newest = body[0]  # newest first: s1-steps-600, its figures rounded to 4 digits
    assert newest.split()[0] == "s1-steps-600"
    assert f"{by_name['s1-steps-600']['s3_val_mel_loss']:.4g}" in newest
    # every run is named: in full, or its two ends around `…` (a sweep point's values stay readable)
    run_width = len(rule.split()[0])
    for r, line in zip(rows, body):
        shown = line[1:run_width].rstrip()
        if shown != r["run"]:
            start, end = shown.split("…")
            assert r["run"].startswith(start) and r["run"].endswith(end) and min(len(start), len(end)) >= 8
    assert sum("…" in line for line in body) == 3  # the three sweep points named by their values
    assert sum(line.startswith("*") for line in body) == 1
    assert any(" FAILED " in line and line.count(" - ") >= 1 for line in body)  # stage3 missing: "-"
    assert all(len(line) <= WIDTH for line in render(rows[:1]).splitlines())


def test_more_columns_on_request():
    rows = table_rows(group_runs(_realistic_runs()))
    picked = render(rows, columns="s1_spk_probe,caption_cos").splitlines()
    assert picked[1].split() == ["run", "s1_spk", "caption_cos"] and "0.9123" in picked[3]
    every = render(rows, columns="all").splitlines()
    assert every[1].split()[:4] == ["run", "started", "status", "stages"] and "caption_cos" in every[1]
    assert len(every[1].split()) == len(ALL_COLUMNS)
    assert "grl-grl_lambda3-speaker_loss_weight0.3" in render(rows, columns="all")  # names in full
    assert max(map(len, render(rows, width=None).splitlines())) > WIDTH  # no width: nothing shortened
    with pytest.raises(UserError, match="s9_val_mel_loss.*choose from run, started"):
        render(rows, columns="s9_val_mel_loss")


def _dvc_state(rev, name, params, val_acc, s3_loss, timestamp="2026-05-14T13:22:00"):
    """One row of `dvc exp show --json` (DVC 3.x): params.yaml and the metrics files, nested."""
    metrics = {
        "metrics/stage1.json": {"val_mel_loss": 2.5424699783325195, "mel_loss": 2.47},
        "metrics/stage2.json": {"val_mel_loss": 2.236314296722412, "speaker_acc": 0.14374999701976776,
                                "val_speaker_acc": val_acc, "grl_lambda": params["stage2"]["grl_lambda"],
                                "speaker_loss_weight": 0.1, "speaker_acc_band": "below"},
        "metrics/stage3.json": {"val_mel_loss": s3_loss},
        "metrics/evaluate.json": {"speaker_probe_acc": 0.2638888955116272,
                                  "emotion_probe_acc": 0.4279069900512695,
                                  "stage1": {"speaker_probe_acc": 0.6064814925193787},
                                  "stage2": {"mel_loss": 2.2}},
    }
    return {"rev": rev, "name": name, "error": None, "experiments": None,
            "data": {"rev": rev, "timestamp": timestamp, "params": {"params.yaml": {"data": params}},
                     "metrics": {k: {"data": v} for k, v in metrics.items()},
                     "deps": {}, "outs": {}, "meta": {}}}


def _params(lam=1.0, lr=1e-4, band=(0.3, 0.6)):
    return {"stage2": {"grl_lambda": lam, "speaker_loss_weight": 0.1, "speaker_acc_band": list(band)},
            "stage3": {"lr": lr, "steps": 300}, "features": {"codec": {"kind": "dac"}}}


def test_dvc_experiments_in_the_same_table():
    workspace = _dvc_state("workspace", None, _params(lr=3e-5), 0.2, 2.1414, timestamp=None)
    head = _dvc_state("ba7ddf5b26d8bbde9345bc66629c27524841c55b", "main", _params(), 0.2, 2.1415)
    head["experiments"] = [
        {"name": "lam-0.5", "executor": {"state": "success"},
         "revs": [_dvc_state("f95597d5" + "0" * 32, "lam-0.5", _params(lam=0.5), 0.45, 2.2269)]},
        {"name": "lam-2-a-very-long-experiment-name-from-a-sweep", "executor": {"state": "failed"},
         "revs": [_dvc_state("06177082" + "0" * 32, "lam-2-a-very-long-experiment-name-from-a-sweep",
                             _params(lam=2.0, band=(0.1, 0.2)), 0.35, 2.23)]},
    ]
    rows = dvc_rows([workspace, head])
    assert [r["run"] for r in rows] == ["workspace", "main", "lam-0.5",
                                        "lam-2-a-very-long-experiment-name-from-a-sweep"]
    assert [r["status"] for r in rows] == ["workspace", "commit", "success", "failed"]
    assert [r["grl_lambda"] for r in rows] == [1.0, 1.0, 0.5, 2.0]
    assert [r["s3_val_mel_loss"] for r in rows] == [2.1414, 2.1415, 2.2269, 2.23]
    assert rows[0]["s1_spk_probe"] == 0.606481 and rows[0]["final_emo_probe"] == 0.427907
    # the band from each row's own params: 0.35 is in [0.3, 0.6] but above [0.1, 0.2]
    assert [r["band"] for r in rows] == ["below", "below", "in", "above"]
    assert [r["best"] for r in rows] == [False, False, True, False]
    # what each row changed against its baseline (HEAD for the workspace): not the GRL columns again
    assert [r["changed"] for r in rows] == ["stage3.lr=3e-05", None, None,
                                            "stage2.speaker_acc_band=[0.1, 0.2]"]
    text = render_table(rows, None, WIDTH, DVC_COLUMNS, DVC_TABLE_COLUMNS, DVC_LEGEND)
    lines = text.splitlines()
    assert max(map(len, lines)) <= WIDTH
    assert lines[1].split()[-1] == "changed" and "stage3.lr=3e-05" in lines[3]
    assert "status" not in lines[1]  # DVC's rows: a status column only where one isn't plain (exp_show)


@pytest.mark.slow
def test_exp_show_reads_dvc_exp_show(tmp_path):
    """`make exp-show`: the rows `dvc exp show --json` gives in a tiny DVC repo, in 120 columns."""
    import io
    import subprocess

    import yaml

    def write(params, metrics):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        for stage, values in metrics.items():
            (tmp_path / "metrics" / f"{stage}.json").write_text(json.dumps(values))

    (tmp_path / "metrics").mkdir()
    stages = {s: {"cmd": "true", "params": [f"{s}.lr"], "metrics": [{f"metrics/{s}.json": {"cache": False}}]}
              for s in ("stage2", "stage3")}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    params = {"stage2": {"lr": 1e-4, "grl_lambda": 1.0, "speaker_acc_band": [0.3, 0.6]},
              "stage3": {"lr": 1e-4}}
    write(params, {"stage2": {"val_mel_loss": 2.2363, "val_speaker_acc": 0.2, "grl_lambda": 1.0},
                   "stage3": {"val_mel_loss": 2.1415}})
    git = lambda *a: subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *a], cwd=tmp_path,
                                    check=True, capture_output=True)
    git("init", "-q")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    git("add", "-A")
    git("commit", "-qm", "baseline")
    params["stage2"]["grl_lambda"], params["stage3"]["lr"] = 0.5, 3e-5
    write(params, {"stage2": {"val_mel_loss": 2.18, "val_speaker_acc": 0.4, "grl_lambda": 0.5},
                   "stage3": {"val_mel_loss": 2.2269}})
    out = io.StringIO()
    rows = exp_show(out=out, cwd=tmp_path)
    assert [r["run"] for r in rows][0] == "workspace" and len(rows) == 2
    assert [(r["grl_lambda"], r["s3_val_mel_loss"], r["band"]) for r in rows] == [(0.5, 2.2269, "in"),
                                                                                 (1.0, 2.1415, "below")]
    assert rows[0]["changed"] == "stage3.lr=3e-05" and rows[1]["changed"] is None
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= WIDTH and "2.227" in lines[3] and "stage3.lr=3e-05" in lines[3]
    with pytest.raises(UserError, match="unknown column 'nope'"):
        exp_show(columns="nope", cwd=tmp_path)
