"""`make mlflow`: the MLflow UI on 127.0.0.1, sized for a laptop, and the link to the runs.

    python -m flows.mlflow_ui [--port 5000]          # Ctrl-C stops it

`mlflow ui` with MLflow's defaults starts 4 uvicorn workers and a job runner for its GenAI
features (LLM judges, online scoring, trace roll-ups) with 7 huey consumers: 15 processes and
about 2.7 GiB measured on a 2-core machine (MLflow 3.17.2), and the consumers outlive a `kill` of
`mlflow ui`. This starts one worker and no job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false;
nothing here uses those features): 2 processes, about 0.5 GiB.

Before starting it makes sure the experiment `tristage` exists with its saved view of the runs,
then prints `tristage.runs.tracking.runs_url`: the runs table in MLflow's Model-training layout with the
pipeline's key figures as columns (MLflow 3.17 opens an experiment on its GenAI overview
otherwise: its GenAI / Model training switch, top left, is remembered per browser).
With MLFLOW_TRACKING_URI pointing at a tracking server, it prints that server's link and starts nothing.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tristage.environment import apply_quiet_env
from tristage.runs.tracking import ensure_experiment, experiment_id, runs_url, tracking_uri

REPO = Path(__file__).resolve().parents[1]
# The GenAI job runner off: `mlflow server` then starts no job runner and no huey consumer.
LAPTOP_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_command(uri: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """`mlflow ui` on `host:port` over the store at `uri`, with one worker."""
    mlflow = Path(sys.executable).with_name("mlflow")
    return [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--host", host, "--port", str(port),
            "--workers", "1", "--backend-store-uri", uri]


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def prepare_store(uri: str, artifact_root: Path) -> str:
    """The experiment `tristage` in the store at `uri`, created if missing, with its saved view; its id."""
    apply_quiet_env()
    from mlflow.tracking import MlflowClient

    return ensure_experiment(MlflowClient(tracking_uri=uri), artifact_root)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.mlflow_ui", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_PORT", 5000)))
    a = p.parse_args(argv)
    env = apply_quiet_env(dict(os.environ))
    uri = tracking_uri(REPO)
    if uri.startswith(("http://", "https://")):
        print(f"MLflow tracking server {uri}: open {runs_url(experiment_id(uri), uri)}")
        return 0
    ui = f"http://127.0.0.1:{a.port}"
    # in a child process: mlflow's imports (~0.25 GiB) stay out of the process that becomes the server
    exp_id = subprocess.run([sys.executable, "-c", f"from flows.mlflow_ui import prepare_store; "
                             f"print(prepare_store({uri!r}, {str(REPO / 'mlartifacts')!r}))"],
                            cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
    if healthy(ui):
        print(f"an MLflow server already answers at {ui}: open {runs_url(exp_id, ui)}")
        return 0
    print(f"MLflow UI on {ui} (one worker, no GenAI job runner; Ctrl-C stops it). Once it answers, the "
          f"pipeline runs with their key figures:\n\n    {runs_url(exp_id, ui)}\n", flush=True)
    cmd = ui_command(uri, a.port)
    os.chdir(REPO)
    os.execvpe(cmd[0], cmd, {**env, **LAPTOP_ENV})  # the server in this process: Ctrl-C reaches it


if __name__ == "__main__":
    sys.exit(main())
