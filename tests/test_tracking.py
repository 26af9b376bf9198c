"""tristage.runs.tracking: child runs under a flow's parent run, run-workspace mapping, what gets logged."""
from __future__ import annotations

import math

import pytest

from tristage.runs.tracking import NullTracker, Tracker, flatten, project_root


def test_flow_run_workspace_logs_into_the_parent_repo(tmp_path):
    ws = tmp_path / "repo" / ".tristage" / "runs" / "brave-otter"
    ws.mkdir(parents=True)
    assert project_root(ws) == (tmp_path / "repo").resolve()


def test_flatten_nests_with_dots():
    assert flatten({"stage2": {"band": [0.3, 0.6], "x": {"y": 1}}, "z": None}) == \
        {"stage2.band": [0.3, 0.6], "stage2.x.y": 1, "z": None}


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_tracking_switched_off_by_env(monkeypatch, tmp_path, value):
    monkeypatch.setenv("TRISTAGE_TRACKING", value)
    t = Tracker("prepare", tmp_path).start()
    assert not t.active and t.run_id is None
    t.log_metrics({"a": 1.0})  # no-ops, no error
    t.end()
    assert not (tmp_path / "mlflow.db").exists()


def test_null_tracker_logs_nothing():
    t = NullTracker().start()
    t.log_params({"a": 1})
    t.log_metrics({"a": 1.0}, step=3)
    assert not t.active


@pytest.mark.slow
def test_child_run_under_parent_with_tags_params_stepped_metrics(monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.orchestration.runs import finish_parent_run, read_stage_metrics, start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("TRISTAGE_TRACKING", raising=False)
    parent = start_parent_run(
        uri,
        "run-a",
        {"dvc_experiment": "run-a"},
        {"overrides": {"stage2.grl_lambda": 2.0}},
        artifact_root=tmp_path / "mlartifacts",
    )
    assert parent
    monkeypatch.setenv("TRISTAGE_PARENT_RUN_ID", parent)
    monkeypatch.setenv("TRISTAGE_PREFECT_FLOW_RUN_ID", "flow-123")
    monkeypatch.setenv("DVC_EXP_NAME", "run-a")
    monkeypatch.setenv("TRISTAGE_GIT_REV", "a" * 40)
    (tmp_path / "plot.txt").write_text("x")
    with Tracker("stage2", tmp_path) as t:
        t.log_params({"stage2": {"grl_lambda": 2.0, "speaker_acc_band": [0.3, 0.6]}})
        for step in range(3):
            t.log_metrics({"mel_loss": 3.0 - step, "flag": True, "bad": math.nan, "name": "x"}, step=step)
        t.log_artifact(tmp_path / "plot.txt")
        child = t.run_id
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "stage2.json").write_text('{"mel_loss": 1.0, "speaker_acc": 0.4, "band": "in"}')
    finish_parent_run(uri, parent, "FINISHED", read_stage_metrics(tmp_path, ["stage1", "stage2"]))

    c = MlflowClient(uri)
    run = c.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["prefect_flow_run_id"] == "flow-123" and run.data.tags["dvc_experiment"] == "run-a"
    assert run.data.tags["git_revision"] == "a" * 40 and run.data.tags["stage"] == "stage2"
    assert run.data.params["stage2.speaker_acc_band"] == "[0.3, 0.6]"
    assert [m.value for m in c.get_metric_history(child, "mel_loss")] == [3.0, 2.0, 1.0]
    assert set(run.data.metrics) == {"mel_loss"}  # booleans, NaN and strings are not metrics
    assert [a.path for a in c.list_artifacts(child)] == ["plot.txt"]
    p = c.get_run(parent)
    assert p.info.status == "FINISHED" and p.data.tags["tristage.role"] == "flow"
    assert p.data.metrics == {"stage2/mel_loss": 1.0, "stage2/speaker_acc": 0.4}
    assert p.data.params["overrides.stage2.grl_lambda"] == "2.0"


def test_tracking_uri_one_resolver_makes_relative_sqlite_absolute(monkeypatch, tmp_path):
    from tristage.runs.tracking import tracking_uri

    ws = tmp_path / "repo" / ".tristage" / "runs" / "r1"
    ws.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(ws) == f"sqlite:///{(tmp_path / 'repo' / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/db.sqlite")  # relative: to the project root
    assert tracking_uri(ws) == f"sqlite:///{(tmp_path / 'repo' / 'runs' / 'db.sqlite').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////abs/x.db")
    assert tracking_uri(ws) == "sqlite:////abs/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(ws) == "http://127.0.0.1:5000"


@pytest.mark.slow
@pytest.mark.long  # make test-all (CI under 20 min): test_flow checks the parent and its stage runs
def test_one_parent_run_per_dvc_invocation_in_a_model_training_experiment(repo_copy):
    """`dvc repro` runs its stages in separate processes; their MLflow runs nest under one parent
    per invocation, and the experiment opens on runs in the MLflow 3 UI (model-training kind)."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import project_env
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo_copy / 'mlflow.db'}"
    env = project_env(TRISTAGE_TRACKING="1", MLFLOW_TRACKING_URI=uri)
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run([dvc, "repro", "prepare"], cwd=repo_copy, env=env, check=True, capture_output=True)
    subprocess.run([dvc, "repro", "-f", "-s", "prepare"], cwd=repo_copy, env=env, check=True,
                   capture_output=True)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tristage")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("tristage.role") == "dvc"]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    children = {p.info.run_id: sorted(r.data.tags["stage"] for r in runs
                                      if r.data.tags.get("mlflow.parentRunId") == p.info.run_id)
                for p in parents}
    assert [children[p.info.run_id] for p in parents] == [["corpus", "prepare"], ["prepare"]]
    assert parents[0].info.run_name.startswith("repro@")


# -- the MLflow UI: the saved view of the runs, the link, the figures on a `dvc repro` parent ---------------
def test_runs_link_opens_the_model_training_runs_with_the_saved_view(tmp_path):
    from tristage.runs.tracking import RUNS_VIEW_COLUMNS, experiment_id, runs_link, runs_url, runs_view_state

    assert runs_url("7") == ("http://127.0.0.1:5000/#/experiments/7/runs"
                             "?workflowType=machine_learning&viewStateShareKey=tristage")
    assert runs_url(None, "http://h:1/") == "http://h:1/#/experiments"
    assert experiment_id(f"sqlite:///{tmp_path / 'none.db'}") is None  # no store yet: no id, no error
    assert runs_link(f"sqlite:///{tmp_path / 'none.db'}") == "http://127.0.0.1:5000/#/experiments"
    state = runs_view_state()
    assert state["selectedColumns"] == state["columnOrder"] == [f"{k}.`{n}`" for k, n in RUNS_VIEW_COLUMNS]
    assert "metrics.`stage2/val_speaker_acc`" in state["selectedColumns"]
    assert "tags.`dvc_outcome`" in state["selectedColumns"]
    assert state["orderByKey"] == "attributes.start_time"  # children stay next to their parent


@pytest.mark.slow
def test_experiment_gets_the_saved_view_and_a_users_own_view_is_kept(tmp_path):
    import json

    from mlflow.tracking import MlflowClient

    from tristage.runs.tracking import RUNS_VIEW_TAG, ensure_experiment, experiment_id, runs_view_state

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client)
    assert experiment_id(uri) == exp_id  # read without mlflow (summary, make mlflow)
    envelope = json.loads(client.get_experiment(exp_id).tags[RUNS_VIEW_TAG])
    assert envelope["name"].startswith("tristage") and isinstance(envelope["createdAt"], int)
    assert json.loads(envelope["state"]) == runs_view_state()
    old = {**runs_view_state(), "tristageView": 0, "selectedColumns": []}  # ours, an older version: updated
    client.set_experiment_tag(exp_id, RUNS_VIEW_TAG, json.dumps({**envelope, "state": json.dumps(old)}))
    ensure_experiment(client)
    tag = client.get_experiment(exp_id).tags[RUNS_VIEW_TAG]
    assert json.loads(json.loads(tag)["state"]) == runs_view_state()
    mine = json.dumps({**envelope, "state": json.dumps({"selectedColumns": ["metrics.`x`"]})})  # the user's
    client.set_experiment_tag(exp_id, RUNS_VIEW_TAG, mine)
    ensure_experiment(client)
    assert client.get_experiment(exp_id).tags[RUNS_VIEW_TAG] == mine


@pytest.mark.slow
def test_dvc_parent_run_gets_the_stage_final_figures(monkeypatch, tmp_path):
    """A stage under `dvc repro` copies its final figures (not its stepped curves, not its timings) to the
    invocation's parent run as `<stage>/<key>`, and a `*_band` status as a tag, as a flow's parent has."""
    from mlflow.tracking import MlflowClient

    import tristage.runs.tracking as tr

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("TRISTAGE_TRACKING", raising=False)
    monkeypatch.delenv("TRISTAGE_PARENT_RUN_ID", raising=False)
    monkeypatch.setattr(tr, "dvc_invocation", lambda *a, **k: "boot-123-456")
    with tr.Tracker("stage2", tmp_path) as t:
        for step in (1, 2):
            t.log_metrics({"mel_loss": 3.0 - step}, step=step)
        t.log_metrics({"val_speaker_acc": 0.2, "speaker_acc_band": "below", "grl_lambda": 1.0})
        t.log_metrics({"timing/elapsed_s": 12.0})
        child = t.run_id
    client = MlflowClient(uri)
    parent_id = client.get_run(child).data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id)
    assert parent.data.tags["tristage.role"] == "dvc" and parent.info.status == "FINISHED"
    assert parent.data.metrics == {"stage2/val_speaker_acc": 0.2, "stage2/grl_lambda": 1.0}
    assert parent.data.tags["stage2/speaker_acc_band"] == "below"
    assert client.get_run(child).data.tags["speaker_acc_band"] == "below"
