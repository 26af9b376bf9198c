"""The tristage DAG as a Prefect flow: every stage is `dvc repro` in a private run workspace.

    python -m flows.pipeline --set stage2.grl_lambda=2.0 --target stage2     # ad hoc
    make serve                                                               # from the Prefect UI

One flow run = one git worktree `.tristage/runs/<name>/` (HEAD + your uncommitted changes,
the shared DVC cache) with `overrides` applied to its params.yaml exactly as `dvc exp run -S`
does; the stages up to `target` run there in DAG order, one Prefect task each; at the end
`dvc exp save -n <name>` records it, so it shows in `dvc exp show` / `dvc exp apply <name>`.
Stages in GPU_STAGES hold a slot of the global concurrency limit `gpu` (one per visible GPU,
created on first use) and get that GPU as CUDA_VISIBLE_DEVICES; the others retry twice.
MLflow: one parent run per flow run, one child run per stage (logged by the stage itself).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run as current_flow_run

from flows.orchestration import dvc, gpu, runs, workspace
from tristage.tracking import tracking_uri

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("tristage.flow")


def _transient(task_, task_run, state) -> bool:
    """Retry a failure unless it is bad input (a `UserError` here, exit code 2 from a stage)."""
    from tristage.errors import UserError

    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, UserError) and getattr(exc, "transient", True)


@task(name="workspace", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def prepare_workspace(repo: Path, name: str, overrides: dict[str, Any], target: str | None,
                      include_local_changes: bool) -> tuple[Path, list[str]]:
    """The run's worktree with the overrides applied, and the stages to run there in order."""
    from tristage.config import load_params

    ws = workspace.create_workspace(repo, name, include_local_changes)  # removes itself on failure
    try:
        dvc.apply_overrides(ws / "params.yaml", overrides)
        load_params(ws / "params.yaml")  # a bad override fails here, naming the key, before any work
        stages = dvc.pipeline_stages(ws, target)
    except Exception:
        workspace.remove_workspace(repo, ws)
        raise
    return ws, stages


@task(name="stage", retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def cpu_stage(stage: str, ws: Path, env: dict[str, str]) -> None:
    dvc.run(dvc.repro_cmd(stage), ws, {**env, "CUDA_VISIBLE_DEVICES": ""})


@task(name="gpu-stage")
def gpu_stage(stage: str, ws: Path, env: dict[str, str], lock_dir: Path) -> str:
    with gpu.gpu_slot(lock_dir) as device:
        log.info("%s: holds gpu slot, CUDA_VISIBLE_DEVICES=%r", stage, device)
        dvc.run(dvc.repro_cmd(stage), ws, {**env, "CUDA_VISIBLE_DEVICES": device})
    return device


@task(name="exp-save", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def save_experiment(ws: Path, name: str, stages: list[str], overrides: dict[str, Any], env: dict[str, str]) -> str:
    message = "tristage flow run " + name + (" " + " ".join(dvc.override_args(overrides)) if overrides else "")
    dvc.run(dvc.exp_save_cmd(name, stages, workspace.untracked_outputs(ws), message), ws, env)
    return name


@flow(name="tristage-pipeline", log_prints=True)
def pipeline(overrides: dict[str, Any] | None = None, target: str | None = None, exp_name: str | None = None,
             include_local_changes: bool = True, keep_workspace: bool = False, repo: str | None = None) -> dict:
    """Run the DAG (up to `target`) with params `overrides` ({"stage2.grl_lambda": 2.0}) as one DVC experiment."""
    repo_dir = Path(repo or os.environ.get("TRISTAGE_REPO") or REPO).resolve()
    overrides = dict(overrides or {})
    flow_run_id = str(current_flow_run.id or "")
    name = exp_name or current_flow_run.name or "tristage-run"
    devices = gpu.visible_gpus()
    gpu.ensure_gpu_limit(gpu.n_slots(devices))

    ws, stages = prepare_workspace(repo_dir, name, overrides, target, include_local_changes)
    git_rev = workspace._git(["rev-parse", "HEAD"], ws).strip()
    uri = tracking_uri(repo_dir)
    parent = runs.start_parent_run(
        uri, name, tags={"dvc_experiment": name, "prefect_flow_run_id": flow_run_id, "git_revision": git_rev,
                         "target": target or "all"},
        params={"overrides": overrides},
        artifact_root=repo_dir / "mlartifacts")
    env = dvc.subprocess_env(ws, tracking_uri=uri, parent_run_id=parent, flow_run_id=flow_run_id, exp_name=name,
                             git_rev=git_rev, device=None)
    status = "FAILED"
    try:
        for stage in stages:
            if stage in dvc.GPU_STAGES:
                gpu_stage(stage, ws, env, repo_dir / ".tristage" / "locks")
            else:
                cpu_stage(stage, ws, env)
        save_experiment(ws, name, stages, overrides, env)
        status = "FINISHED"
    finally:
        metrics = runs.read_stage_metrics(ws, stages)
        runs.finish_parent_run(uri, parent, status, metrics, tags={"stages": ",".join(stages)})
        if status == "FINISHED" and not keep_workspace:
            workspace.remove_workspace(repo_dir, ws)
    return {"experiment": name, "stages": stages, "mlflow_parent_run_id": parent, "metrics": metrics,
            "workspace": str(ws) if keep_workspace else None}


def _main(argv: list[str] | None = None) -> None:
    import argparse

    import yaml

    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=pipeline.__doc__)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--target", default=None)
    p.add_argument("--name", default=None, help="DVC experiment name (default: the Prefect flow run name)")
    p.add_argument("--keep-workspace", action="store_true")
    a = p.parse_args(argv)
    overrides = {}
    for item in a.overrides:
        k, _, v = item.partition("=")
        overrides[k] = yaml.safe_load(v)
    print(pipeline(overrides=overrides, target=a.target, exp_name=a.name, keep_workspace=a.keep_workspace))


if __name__ == "__main__":
    _main()
