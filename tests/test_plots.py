"""Training curves that draw right: train rows and validation rows in separate TSVs (no blank plotted cell),
dvc.yaml's plot definitions naming only columns their files have, the PNG charts, MLflow's curves."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import project_env

from tristage.training import plots
from tristage.training.plots import LOGS, TEXT_COLUMNS, log_rows, write_logs

REPO = Path(__file__).resolve().parents[1]
TRAINING_STAGES = ("stage1", "stage2", "stage3")


def history(speaker: bool, steps: int = 100, log_every: int = 10, eval_every: int = 50,
            band_every: int = 25) -> list[dict]:
    """Rows as the trainer logs them: the evaluation before training (step 0), a train row per log step,
    a validation pass every `eval_every` steps (merged into that step's train row) and, with `speaker`,
    band checks every `band_every` steps (a validation pass of their own between evaluations)."""
    def val(step):
        ev = dict(val_mel_loss=3.0 - step / 100, val_mel_top1=0.3 + step / 1000)
        if speaker:
            ev.update(val_speaker_acc=0.5 - step / 1000, val_speaker_loss=2.0 + step / 1000)
        return ev

    rows = [dict(step=0, **val(0))]
    for step in range(1, steps + 1):
        row = None
        if step % log_every == 0 or step == steps:
            row = dict(step=step, mel_loss=3.2 - step / 90, mel_top1=0.25 + step / 900, kl=20.0, ortho=0.07,
                       lr=2e-4, samples_per_s=80.0)
            if speaker:
                row.update(speaker_loss=2.4, speaker_acc=0.15 + step / 2000, grl_lambda=1.0,
                           speaker_loss_weight=0.1)
        evaluation = step % eval_every == 0 or step == steps
        if evaluation or (speaker and step % band_every == 0):
            row = dict(row or dict(step=step), **val(step))
            if speaker:
                row["band_status"] = "in" if row["val_speaker_acc"] >= 0.45 else "below"
        if row is not None:
            rows.append(row)
    return rows


HISTORIES = {"stage1": history(False), "stage2": history(True), "stage3": history(False)}


def read_tsv(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def test_a_mixed_history_becomes_a_train_log_and_a_validation_log_without_blank_cells(tmp_path):
    rows = HISTORIES["stage2"]
    write_logs(rows, tmp_path)
    train, val = read_tsv(tmp_path / "train.tsv"), read_tsv(tmp_path / "val.tsv")
    assert [r["step"] for r in train] == [str(s) for s in range(10, 101, 10)]  # log steps only
    assert [r["step"] for r in val] == ["0", "25", "50", "75", "100"]  # each validation pass, band checks too
    assert not any(k.startswith("val_") or k == "band_status" for k in train[0])
    assert {"mel_loss", "speaker_acc", "grl_lambda"} <= set(train[0])
    assert {"val_mel_loss", "val_mel_top1", "val_speaker_acc", "val_speaker_loss", "band_status"} == (
        set(val[0]) - {"step"})
    for table in (train, val):
        for r in table:
            numeric = {k: v for k, v in r.items() if k not in TEXT_COLUMNS}
            assert all(v != "" for v in numeric.values()), r  # no blank cell to be drawn as 0
            assert all(math.isfinite(float(v)) for v in numeric.values()), r
    # the step-0 pass comes before training: no band check; later passes say where speaker_acc is
    assert [r["band_status"] for r in val] == ["", "in", "in", "below", "below"]
    assert float(val[2]["val_mel_loss"]) == pytest.approx(2.5)
    assert float(train[-1]["mel_loss"]) == pytest.approx(3.2 - 100 / 90, rel=1e-5)


def test_each_log_ends_with_its_headline_and_has_only_its_stages_columns(tmp_path):
    write_logs(HISTORIES["stage1"], tmp_path)
    header = lambda name: (tmp_path / name).read_text().splitlines()[0].split("\t")
    assert header("train.tsv") == ["step", "mel_top1", "kl", "ortho", "lr", "samples_per_s", "mel_loss"]
    assert header("val.tsv") == ["step", "val_mel_top1", "val_mel_loss"]  # no speaker columns in stage 1
    # a history without validation (no held-out rows) still gives both files their headline column
    write_logs([dict(step=0), dict(step=10, mel_loss=2.0, mel_top1=0.5)], tmp_path)
    assert (tmp_path / "val.tsv").read_text() == "step\tval_mel_loss\n"
    assert (tmp_path / "train.tsv").read_text() == "step\tmel_top1\tmel_loss\n10\t0.5\t2\n"


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _definitions() -> list[tuple[str, str, str, list[str]]]:
    """dvc.yaml's top-level plots as (plot id, x, file, y columns)."""
    out = []
    for entry in _dvc_yaml()["plots"]:
        [(plot_id, props)] = entry.items()
        for file, cols in props["y"].items():
            out.append((plot_id, props["x"], file, [cols] if isinstance(cols, str) else list(cols)))
    return out


def test_dvc_yaml_plots_name_only_numeric_columns_that_their_files_have():
    defs = _definitions()
    files = {file for _, _, file, _ in defs}
    assert {f"plots/{s}/{name}" for s in TRAINING_STAGES for name in ("train.tsv", "val.tsv")} <= files
    for plot_id, x, file, ys in defs:
        stage, name = Path(file).parent.name, Path(file).name
        header, rows = log_rows(HISTORIES[stage], LOGS[name])
        assert x == "step", plot_id
        assert set(ys) <= set(header) - TEXT_COLUMNS, (plot_id, file, ys, header)
        assert all(y.startswith("val_") == (name == "val.tsv") for y in ys), (plot_id, file, ys)
    # every stage's own plots folder draws its files against the step column (not the row number)
    for stage in TRAINING_STAGES:
        [entry] = [e for e in _dvc_yaml()["stages"][stage]["plots"] if f"plots/{stage}" in e]
        assert entry[f"plots/{stage}"]["x"] == "step"
        for name, columns in LOGS.items():  # its default y is each file's last column: the headline
            assert log_rows(HISTORIES[stage], columns)[0][-1] == columns[-1] in ("mel_loss", "val_mel_loss")


@pytest.mark.slow
def test_dvc_plots_show_draws_every_curve_from_values_at_logged_steps(tmp_path):
    """`dvc plots show --json` in a tiny DVC repo with this dvc.yaml's plot definitions and its stages' plot
    folders: every plotted field has a number in every row drawn, and x is the logged step, not the row
    number."""
    spec = _dvc_yaml()
    stages = {s: {"cmd": "true", "plots": spec["stages"][s]["plots"]} for s in TRAINING_STAGES}
    dvc_yaml = {"stages": stages, "plots": spec["plots"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    for stage in TRAINING_STAGES:
        write_logs(HISTORIES[stage], tmp_path / "plots" / stage)
    dvc = str(Path(sys.executable).parent / "dvc")
    env = project_env()
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    r = subprocess.run([dvc, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert not shown.get("errors"), shown.get("errors")
    data = shown["data"]
    expected = {next(iter(e)) for e in spec["plots"]} | {
        f"plots/{s}/{name}" for s in TRAINING_STAGES for name in LOGS}
    assert expected <= set(data)
    logged_steps = {str(r["step"]) for h in HISTORIES.values() for r in h}
    for plot_id, renders in data.items():
        for render in renders:
            content = render["content"]
            ys = [layer.get("encoding", {}).get("y", {}) for layer in _layers(content)]
            fields = {y["field"] for y in ys if "field" in y}
            assert fields, plot_id
            values = content["data"]["values"]
            assert values, plot_id
            for datum in values:
                assert str(datum["step"]) in logged_steps, (plot_id, datum)  # the step column, not an index
                drawn = [f for f in fields if f in datum]
                assert drawn, (plot_id, datum)
                for f in drawn:
                    assert datum[f] not in ("", None) and math.isfinite(float(datum[f])), (plot_id, f, datum)
                    assert f not in TEXT_COLUMNS


def _layers(spec: dict):
    for layer in spec.get("layer", []):
        yield layer
        yield from _layers(layer)


def _capture_figures(monkeypatch) -> list:
    figures = []
    real = plots.save_figure

    def save(fig, path, **kw):
        figures.append({ax.get_ylabel() or i: {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()))
                                               for ln in ax.get_lines()} for i, ax in enumerate(fig.axes)})
        return real(fig, path, **kw)

    monkeypatch.setattr(plots, "save_figure", save)
    return figures


def test_png_charts_draw_validation_points_at_their_own_steps(tmp_path, monkeypatch):
    figures = _capture_figures(monkeypatch)
    rows = HISTORIES["stage2"]
    plots.plot_losses(rows, tmp_path / "losses.png", "stage2 (test)")
    plots.plot_speaker_acc(rows, (0.3, 0.6), tmp_path / "speaker_acc.png", "stage2 (test)")
    assert all((tmp_path / name).stat().st_size > 5000 for name in ("losses.png", "speaker_acc.png"))
    losses, acc = figures
    val_steps = [0, 25, 50, 75, 100]
    train_steps = list(range(10, 101, 10))
    mel, top1 = losses[0], losses[1]
    assert mel["val_mel_loss"][0] == val_steps and mel["mel_loss"][0] == train_steps
    assert mel["val_mel_loss"][1] == [r["val_mel_loss"] for r in rows if "val_mel_loss" in r]
    assert top1["val_mel_top1"][0] == val_steps and min(top1["val_mel_top1"][1]) > 0.29  # no dip to 0
    [panel] = acc.values()
    assert panel["val speaker_acc"][0] == val_steps and min(panel["val speaker_acc"][1]) > 0.39
    assert panel["speaker_acc (train window)"][0] == train_steps


@pytest.mark.slow
def test_mlflow_curves_train_and_validation_at_their_own_steps(tmp_path, monkeypatch):
    """What the trainer logs (a row per log step or validation pass, then the final figures without a step):
    each name's curve holds only its own steps, and nothing blank is logged as 0."""
    from mlflow.tracking import MlflowClient

    from tristage.runs.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("TRISTAGE_TRACKING", raising=False)
    monkeypatch.delenv("TRISTAGE_PARENT_RUN_ID", raising=False)
    rows = HISTORIES["stage2"]
    with Tracker("stage2", tmp_path) as t:
        for row in rows:  # as _Trainer.log_row
            t.log_metrics({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))},
                          step=row["step"])
        t.log_metrics({"mel_loss": rows[-1]["mel_loss"], "val_mel_loss": rows[-1]["val_mel_loss"],
                       "speaker_acc_band": "in", "best_step": 100, "val_speaker_acc": None})  # final figures
        run_id = t.run_id
    client = MlflowClient(uri)
    steps = lambda name: sorted({m.step for m in client.get_metric_history(run_id, name)})
    assert steps("mel_loss") == list(range(10, 101, 10))  # no point at step 0 from the final figures
    assert steps("val_mel_loss") == [0, 25, 50, 75, 100]
    assert steps("val_speaker_acc") == [0, 25, 50, 75, 100]
    assert steps("best_step") == [100]
    for name in ("val_mel_top1", "val_speaker_acc", "mel_loss", "speaker_acc"):
        assert min(m.value for m in client.get_metric_history(run_id, name)) > 0.1, name
    assert "band_status" not in client.get_run(run_id).data.metrics
    assert "speaker_acc_band" not in client.get_run(run_id).data.metrics
