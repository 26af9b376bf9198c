"""A stage opens one MLflow run (params, metrics, artifacts); an unreachable server only warns."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml
from conftest import project_env

from tristage.runs.tracking import default_tracking_uri, project_root


def _speaker_manifest(tmp_path):
    rows = [{"audio": f"a{i}.wav", "text": "t", "speaker": f"s{i % 3}"} for i in range(30)]
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"speaker_mapping": {"manifest": "m.jsonl", "min_samples": 5}}))
    return params


@pytest.mark.slow
def test_stage_logs_a_run_with_params_metrics_and_artifact(tmp_path):
    params = _speaker_manifest(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = subprocess.run([sys.executable, "-m", "steps.speaker_mapping", "--params", str(params)], cwd=tmp_path,
                       capture_output=True, text=True,
                       env=project_env(TRISTAGE_TRACKING="1", MLFLOW_TRACKING_URI=uri, DVC_EXP_NAME="exp-a"))
    assert r.returncode == 0, r.stderr
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tristage"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["stage"] == "speaker_mapping" and run.data.tags["dvc_experiment"] == "exp-a"
    assert run.data.params["speaker_mapping.min_samples"] == "5"
    assert run.data.metrics["selected_speakers"] == 3.0
    client = mlflow.MlflowClient()
    names = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any("speaker_mapping.json" in n for n in names), names


@pytest.mark.slow
def test_unreachable_tracking_server_warns_and_the_stage_finishes(tmp_path):
    params = _speaker_manifest(tmp_path)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "steps.speaker_mapping", "--params", str(params)], cwd=tmp_path,
                       capture_output=True, text=True,
                       env=project_env(TRISTAGE_TRACKING="1", MLFLOW_TRACKING_URI="http://127.0.0.1:9"))
    assert r.returncode == 0, r.stderr
    assert "MLflow tracking disabled" in r.stderr
    assert json.loads((tmp_path / "metrics/speaker_mapping.json").read_text())["selected_speakers"] == 3
    assert time.time() - t0 < 120


def test_dvc_temp_experiment_logs_into_the_parent_repo(tmp_path):
    temp_ws = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    temp_ws.mkdir(parents=True)
    assert project_root(temp_ws) == (tmp_path / "repo").resolve()
    assert default_tracking_uri(temp_ws) == f"sqlite:///{(tmp_path / 'repo').resolve() / 'mlflow.db'}"
    assert project_root(tmp_path) == tmp_path.resolve()
