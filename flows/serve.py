"""`make serve`: the local Prefect server (127.0.0.1) + the pipeline served as a deployment.

    python -m flows.serve                 # UI: http://127.0.0.1:4200 -> Deployments
                                          #     -> tristage-pipeline/tristage -> Run -> Custom run:
                                          #     overrides {"stage2.grl_lambda": 2.0}, target
                                          # also tristage-sweep/sweep and tristage-finetune/finetune
                                          # (your own voice: data folder, speaker, preset; flows/finetune.py)

Starts `prefect server start --host 127.0.0.1` in the background unless a server already
answers at PREFECT_API_URL (default http://127.0.0.1:4200/api), waits until it is healthy,
creates the global concurrency limit `gpu` (one slot per visible GPU) if it is missing,
then serves the flow (blocks; Ctrl-C stops serving and the server it started).
MLflow UI, in another shell:  make mlflow   (flows/mlflow_ui.py: one worker, prints the link to the runs)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tristage.environment import apply_quiet_env

REPO = Path(__file__).resolve().parents[1]
DEFAULT_API = "http://127.0.0.1:4200/api"
DEPLOYMENT = "tristage"
DESCRIPTION = ("Run the tristage DVC DAG as one DVC experiment; `overrides` are params keys -> values "
               "(dvc exp run -S), `target` the last stage.")



def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def start_server(api_url: str, log_path: Path, wait_s: float = 120.0) -> subprocess.Popen | None:
    """Start `prefect server start` on 127.0.0.1 unless one is healthy; None if one was already up."""
    if healthy(api_url):
        return None
    from urllib.parse import urlparse

    port = urlparse(api_url).port or 4200
    log_path.parent.mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [
        str(prefect) if prefect.exists() else "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    logf = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                            env=apply_quiet_env(dict(os.environ)))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"prefect server exited with code {proc.returncode}; see {log_path}")
        if healthy(api_url):
            print(
                f"Prefect server up: {api_url.rsplit('/api', 1)[0]}  (pid {proc.pid}, log {log_path})",
                file=sys.stderr,
            )
            return proc
        time.sleep(1.0)
    stop_server(proc)
    raise SystemExit(f"prefect server not healthy after {wait_s:.0f} s; see {log_path}")


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def create_gpu_limit() -> int:
    """The Prefect global concurrency limit `gpu` (one slot per visible GPU, one on a CPU machine),
    created now so it exists before the first run; an existing limit is kept. Returns its size."""
    from flows.orchestration import gpu

    limit = gpu.ensure_gpu_limit(gpu.n_slots(gpu.visible_gpus()))
    print(f"Prefect concurrency limit {gpu.GPU_LIMIT!r}: {limit} slot(s) "
          f"(change: prefect gcl update {gpu.GPU_LIMIT} --limit N)", file=sys.stderr)
    return limit


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    p.add_argument("--name", default=DEPLOYMENT, help="deployment name")
    p.add_argument("--no-server", action="store_true", help="serve against PREFECT_API_URL; start no server")
    p.add_argument(
        "--pool",
        default=None,
        help="register the deployment on this process work pool (workers on GPU machines run it from "
        "this checkout's path) instead of serving it here; returns at once",
    )
    a = p.parse_args(argv)
    apply_quiet_env()
    api = os.environ.setdefault("PREFECT_API_URL", DEFAULT_API)
    os.chdir(REPO)  # the deployment's entrypoint, flows/pipeline.py:pipeline, is relative to the repo
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` stops the server we started too
    server = None if a.no_server else start_server(api, REPO / ".tristage" / "prefect-server.log")
    create_gpu_limit()
    print("MLflow UI:  make mlflow  (in another shell; it prints the link to the runs)", file=sys.stderr)
    try:
        # issue 18: the sweep deployment beside the pipeline's; the fine-tune's (your own voice) too
        from flows import finetune as finetune_flow
        from flows import sweep as sweep_flow
        from flows.pipeline import pipeline

        if a.pool:
            # Each worker runs the flow from this path: keep the same checkout (and .venv) on every machine.
            dep = pipeline.from_source(source=str(REPO), entrypoint="flows/pipeline.py:pipeline")
            dep_id = dep.deploy(name=a.name, work_pool_name=a.pool, description=DESCRIPTION)
            print(
                f"deployment tristage-pipeline/{a.name} ({dep_id}) on work pool {a.pool}; "
                "start workers with: "
                f"prefect worker start --pool {a.pool} --type process",
                file=sys.stderr,
            )
            sweep_flow.sweep.from_source(source=str(REPO), entrypoint="flows/sweep.py:sweep").deploy(
                name=sweep_flow.DEPLOYMENT, work_pool_name=a.pool, description=sweep_flow.DESCRIPTION)
            ft = finetune_flow.finetune.from_source(source=str(REPO), entrypoint="flows/finetune.py:finetune")
            ft.deploy(name=finetune_flow.DEPLOYMENT, work_pool_name=a.pool,
                      description=finetune_flow.DESCRIPTION)
            return
        from prefect import serve

        serve(pipeline.to_deployment(name=a.name, description=DESCRIPTION),  # issue 18: two deployments
              sweep_flow.sweep.to_deployment(name=sweep_flow.DEPLOYMENT, description=sweep_flow.DESCRIPTION),
              finetune_flow.finetune.to_deployment(name=finetune_flow.DEPLOYMENT,
                                                   description=finetune_flow.DESCRIPTION))
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
