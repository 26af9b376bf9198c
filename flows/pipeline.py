"""The tristage DAG as a Prefect flow: every stage is `dvc repro` in a private run workspace.

    python -m flows.pipeline --set stage2.grl_lambda=2.0 --target stage2     # ad hoc
    make serve                                                               # from the Prefect UI

One flow run = one git worktree `.tristage/runs/<name>/` (HEAD + your uncommitted changes,
the shared DVC cache) with `overrides` applied to its params.yaml exactly as `dvc exp run -S`
does; the stages up to `target` run there in DAG order, one Prefect task each; at the end
`dvc exp save -n <name>` records it, so it shows in `dvc exp show` / `dvc exp apply <name>`.
Stages in GPU_STAGES hold a slot of the global concurrency limit `gpu` (one per visible GPU,
created by `make serve` or on first use) and get that GPU as CUDA_VISIBLE_DEVICES; the others
retry twice. Each task run is named after its stage and carries the stage's log lines.
MLflow: one parent run per flow run, one child run per stage (logged by the stage itself).
At the end a markdown artifact `tristage-run-summary` sums the run up (Artifacts tab).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run as current_flow_run
from pydantic import Field

from flows.orchestration import dvc, gpu, report, runs, workspace
from tristage.config import override_items
from tristage.tracking import tracking_uri

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("tristage.flow")


def _dag_stage_names(repo: Path) -> tuple[str, ...]:
    import yaml

    try:
        stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        stages = {}
    return tuple(stages) or ("evaluate",)


# The run form offers the DAG's stages as a drop-down (read from dvc.yaml when the flow is loaded).
StageName = Literal[_dag_stage_names(REPO)]  # type: ignore[valid-type]


def _transient(task_, task_run, state) -> bool:
    """Retry a failure unless it is bad input (a `UserError` here, exit code 2 from a stage)."""
    from tristage.errors import UserError

    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, UserError) and getattr(exc, "transient", True)


def _task_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger (lines show in the UI's Logs tab); a plain logger outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


@task(name="workspace", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def prepare_workspace(repo: Path, name: str, overrides: dict[str, Any], target: str | None,
                      include_local_changes: bool) -> tuple[Path, list[str]]:
    """The run's worktree with the overrides applied, and the stages to run there in order."""
    ws = workspace.create_workspace(repo, name, include_local_changes)  # removes itself on failure
    try:
        # checks the overrides against the typed params (naming a bad key) before DVC's writer edits the file
        dvc.apply_overrides(ws / "params.yaml", overrides)
        stages = dvc.pipeline_stages(ws, target)
    except Exception:
        workspace.remove_workspace(repo, ws)
        raise
    logger = _task_logger()
    try:  # outputs already computed come out of the shared cache; what is missing is recomputed
        dvc.run(dvc.checkout_cmd(stages), ws, {"CUDA_VISIBLE_DEVICES": ""}, on_line=dvc.LogForwarder(logger))
    except dvc.CommandFailed as exc:
        logger.warning("dvc checkout in the run workspace failed; stages will recompute (%s)",
                       str(exc).splitlines()[0])
    return ws, stages


@task(name="stage", task_run_name="{stage}", retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def cpu_stage(stage: str, ws: Path, env: dict[str, str]) -> str:
    """`dvc repro --single-item <stage>`; returns what DVC did ("ran", "restored", "unchanged")."""
    out = dvc.run(dvc.repro_cmd(stage), ws, {**env, "CUDA_VISIBLE_DEVICES": ""},
                  on_line=dvc.LogForwarder(_task_logger()))
    return dvc.stage_outcome(stage, out)


@task(name="gpu-stage", task_run_name="{stage} (gpu slot)")
def gpu_stage(stage: str, ws: Path, env: dict[str, str], lock_dir: Path) -> str:
    """As `cpu_stage`, holding one slot of the `gpu` limit and its device."""
    logger = _task_logger()
    with gpu.gpu_slot(lock_dir) as device:
        logger.info("%s: holds gpu slot, CUDA_VISIBLE_DEVICES=%r", stage, device)
        out = dvc.run(dvc.repro_cmd(stage), ws, {**env, "CUDA_VISIBLE_DEVICES": device},
                      on_line=dvc.LogForwarder(logger))
    return dvc.stage_outcome(stage, out)


@task(name="exp-save", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def save_experiment(ws: Path, name: str, stages: list[str], overrides: dict[str, Any],
                    env: dict[str, str]) -> str:
    message = " ".join(["tristage flow run", name, *dvc.override_args(overrides)])
    dvc.run(dvc.exp_save_cmd(name, stages, workspace.untracked_outputs(ws), message), ws, env,
            on_line=dvc.LogForwarder(_task_logger()))
    return name


def _example(*examples: Any) -> Any:
    """A parameter default of None that shows `examples` in the Prefect run form (its JSON schema)."""
    return Field(default=None, json_schema_extra={"examples": list(examples)})


@flow(name="tristage-pipeline", log_prints=True)
def pipeline(
    overrides: dict[str, Any] | None = _example({"stage2.grl_lambda": 2.0},
                                                {"stage2.grl_lambda": 0.5, "stage2.steps": 500}),
    target: StageName | None = _example("stage2"),
    exp_name: str | None = _example("lam-2"),
    include_local_changes: bool = True,
    keep_workspace: bool = False,
    repo: str | None = _example("/path/to/tristage"),
) -> dict:
    """Run the DAG (up to `target`) with params `overrides` as one DVC experiment.

    Args:
        overrides: params.yaml keys -> new values, as `dvc exp run -S` takes them, e.g.
            {"stage2.grl_lambda": 2.0}. Checked against the typed params before anything runs:
            a misspelt key or a bad value fails at once, naming the key. Empty: params.yaml as it is.
        target: the last stage to run (it and the stages it needs); empty: the whole DAG.
        exp_name: the DVC experiment name (`dvc exp show`, `dvc exp apply NAME`) and the MLflow
            parent run's name; empty: the Prefect flow run's name.
        include_local_changes: start from HEAD plus the uncommitted files of the project checkout
            (as `dvc exp run --temp` does); off: HEAD only.
        keep_workspace: keep the run's git worktree `.tristage/runs/<name>/` after success (it is
            always kept after a failure).
        repo: the project checkout to run (advanced; leave empty: the checkout this deployment was
            served from, or $TRISTAGE_REPO).
    """
    repo_dir = Path(repo or os.environ.get("TRISTAGE_REPO") or REPO).resolve()
    overrides = override_items(overrides)
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
    env = dvc.subprocess_env(ws, tracking_uri=uri, parent_run_id=parent, flow_run_id=flow_run_id,
                             exp_name=name, git_rev=git_rev, device=None)
    status = "FAILED"
    outcomes: dict[str, str] = {}
    try:
        for stage in stages:
            if stage in dvc.GPU_STAGES:
                outcomes[stage] = gpu_stage(stage, ws, env, repo_dir / ".tristage" / "locks")
            else:
                outcomes[stage] = cpu_stage(stage, ws, env)
        save_experiment(ws, name, stages, overrides, env)
        status = "FINISHED"
    finally:
        metrics = runs.read_stage_metrics(ws, stages)
        runs.finish_parent_run(uri, parent, status, metrics, tags={"stages": ",".join(stages)})
        summary = report.summary_markdown(
            name=name, status=status, stages=stages, outcomes=outcomes,
            metrics={s: report.stage_metrics(ws, s) for s in stages}, parent_run_id=parent, tracking_uri=uri,
            plots=report.plot_files(ws, stages), overrides=overrides)
        try:
            report.publish(summary, name)
        except Exception as exc:  # a summary must never fail a run
            log.warning("run summary artifact not created (%s)", exc)
        if status == "FINISHED" and not keep_workspace:
            workspace.remove_workspace(repo_dir, ws)
    return {
        "experiment": name,
        "flow_run_id": flow_run_id,
        "stages": stages,
        "outcomes": outcomes,
        "mlflow_parent_run_id": parent,
        "metrics": metrics,
        "summary": summary,
        "workspace": str(ws) if keep_workspace else None,
    }


def _main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m flows.pipeline",
                                description="Run the tristage DAG as one DVC experiment (a Prefect run).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one param, e.g. --set stage2.grl_lambda=2.0 (repeatable)")
    p.add_argument("--target", default=None)
    p.add_argument("--name", default=None, help="DVC experiment name (default: the Prefect flow run name)")
    p.add_argument("--keep-workspace", action="store_true")
    a = p.parse_args(argv)
    result = pipeline(overrides=override_items(a.overrides), target=a.target, exp_name=a.name,
                      keep_workspace=a.keep_workspace)
    print(result["summary"])


if __name__ == "__main__":
    _main()
