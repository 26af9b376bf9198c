"""The tristage DAG as a Prefect flow: every stage is `dvc repro` in a private run workspace.

    python -m flows.pipeline --set stage2.grl_lambda=2.0 --target stage2     # ad hoc
    make serve                                                               # from the Prefect UI

One flow run = one git worktree `.tristage/runs/<name>/` (HEAD + your uncommitted changes to the
pipeline's inputs, never the working tree's DVC outputs or dvc.lock; the shared DVC cache) with
`overrides` applied to its params.yaml exactly as `dvc exp run -S` does; the stages up to `target`
run there in DAG order, one Prefect task each, each task waiting on the tasks of the stages it reads
from (so the run graph is the DAG); at the end `dvc exp save -n <name>` records it, so it shows in
`dvc exp show` / `dvc exp apply <name>`. A stage DVC skips ends in a Completed state named
`Unchanged` (or `Restored`, from DVC's run cache); one that ran, in `Completed`.
Stages in GPU_STAGES hold a slot of the global concurrency limit `gpu` (one per visible GPU,
created by `make serve` or on first use) and get that GPU as CUDA_VISIBLE_DEVICES; the others
retry twice. Each task run is named after its stage and carries the stage's log lines.
Bad input (a misspelt override key, a bad value, a stage's exit code 2) fails the task and the flow
with its one-line message, no traceback; a bug keeps its traceback.
MLflow: one parent run per flow run, one child run per stage (logged by the stage itself; a stage
DVC skipped gets one from the flow, tagged `dvc_outcome`). At the end a markdown artifact
`tristage-run-summary` sums the run up (Artifacts tab): what ran and what changed first.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed, State
from pydantic import BeforeValidator, Field

from flows.orchestration import dvc, gpu, report, runs, workspace
from tristage.config import override_items
from tristage.runs.tracking import runs_link, tracking_uri

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("tristage.flow")
ALL = "all"  # the `target` that runs the whole DAG


def _dag_stage_names(repo: Path) -> tuple[str, ...]:
    import yaml

    try:
        stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        stages = {}
    return tuple(stages) or ("evaluate",)


def _or(default: Any) -> BeforeValidator:
    """None (what older callers pass for "not given") -> `default`: the parameter keeps a plain type, so
    the Prefect run form shows a field to fill instead of a None/value toggle."""
    return BeforeValidator(lambda v: copy.copy(default) if v is None else v)


# The run form offers the DAG's stages as a drop-down (read from dvc.yaml when the flow is loaded).
StageName = Literal[_dag_stage_names(REPO)]  # type: ignore[valid-type]
Target = Annotated[Literal[(ALL, *_dag_stage_names(REPO))], _or(ALL)]  # type: ignore[valid-type]
Overrides = Annotated[dict[str, Any], _or({})]
Text = Annotated[str, _or("")]


def _example(default: Any = None, *examples: Any) -> Any:
    """A parameter default that shows `examples` in the Prefect run form (its JSON schema)."""
    return Field(default=default, json_schema_extra={"examples": list(examples)})


def _transient(task_, task_run, state) -> bool:
    """Retry a failure unless it is bad input (a `UserError` here, exit code 2 from a stage)."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and not dvc.is_user_error(exc) and getattr(exc, "transient", True)


def _never(task_, task_run, state) -> bool:
    """No retry. (A task with `retries=1` and this condition: Prefect logs a failed state it isn't
    retrying as one line; with `retries=0` it adds an empty traceback.)"""
    return False


def user_errors_in_one_line(fn):
    """The task (or flow) ends Failed with the one-line message of a user error (`dvc.is_user_error`)
    instead of raising it, so Prefect logs no traceback; its caller still gets the exception from the
    state's result. Any other exception propagates with its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if dvc.is_user_error(exc):
                return Failed(message=dvc.failure_line(exc), data=exc)
            raise

    # the parameters with their types evaluated in `fn`'s module (Prefect builds the run form and checks
    # the parameters from the signature; this wrapper's module may not define those names)
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)
    return wrapper


def _task_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger (lines show in the UI's Logs tab); a plain logger outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def _outcome_state(outcome: str) -> str | State:
    """What a stage task returns: "ran" as a plain Completed state, a stage DVC skipped as a Completed
    state named after what DVC did, so the task list tells them apart."""
    if outcome == "ran":
        return outcome
    return Completed(name=outcome.capitalize(), data=outcome,
                     message="restored from DVC's run cache" if outcome == "restored"
                     else "up to date: DVC did not rerun it")


@task(name="workspace", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
@user_errors_in_one_line
def prepare_workspace(repo: Path, name: str, overrides: dict[str, Any], target: str | None,
                      include_local_changes: bool) -> tuple[Path, dict[str, list[str]], dict[str, list[str]]]:
    """The run's worktree with the overrides applied; the stages to run there in order, each with the
    stages it reads from; what came from the working tree (workspace.create_workspace's `changes`)."""
    changes: dict[str, list[str]] = {}
    ws = workspace.create_workspace(repo, name, include_local_changes, changes=changes)  # removed on failure
    try:
        # checks the overrides against the typed params (naming a bad key) before DVC's writer edits the file
        dvc.apply_overrides(ws / "params.yaml", overrides)
        graph = dvc.pipeline_graph(ws, None if target in (None, ALL) else target)
    except Exception:
        workspace.remove_workspace(repo, ws)
        raise
    logger = _task_logger()
    try:  # outputs already computed come out of the shared cache; what is missing is recomputed
        dvc.run(dvc.checkout_cmd(list(graph)), ws, {"CUDA_VISIBLE_DEVICES": ""},
                on_line=dvc.LogForwarder(logger))
    except dvc.CommandFailed as exc:
        logger.warning("dvc checkout in the run workspace failed; stages will recompute (%s)",
                       str(exc).splitlines()[0])
    return ws, graph, changes


@task(name="stage", task_run_name="{stage}", retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
@user_errors_in_one_line
def cpu_stage(stage: str, ws: Path, env: dict[str, str]) -> str:
    """`dvc repro --single-item <stage>`; what DVC did ("ran", "restored", "unchanged") is the result of its
    final state (`_outcome_state`): call it with `return_state=True` and read `.result()` (a direct call
    returns the State itself for a skipped stage)."""
    out = dvc.run(dvc.repro_cmd(stage), ws, {**env, "CUDA_VISIBLE_DEVICES": ""},
                  on_line=dvc.LogForwarder(_task_logger()))
    return _outcome_state(dvc.stage_outcome(stage, out))


# No retry (a training run is long); see _never for retries=1.
@task(name="gpu-stage", task_run_name="{stage} (gpu slot)", retries=1, retry_condition_fn=_never)
@user_errors_in_one_line
def gpu_stage(stage: str, ws: Path, env: dict[str, str], lock_dir: Path) -> str:
    """As `cpu_stage`, holding one slot of the `gpu` limit and its device."""
    logger = _task_logger()
    with gpu.gpu_slot(lock_dir) as device:
        logger.info("%s: holds gpu slot, CUDA_VISIBLE_DEVICES=%r", stage, device)
        out = dvc.run(dvc.repro_cmd(stage), ws, {**env, "CUDA_VISIBLE_DEVICES": device},
                      on_line=dvc.LogForwarder(logger))
    return _outcome_state(dvc.stage_outcome(stage, out))


@task(name="exp-save", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
@user_errors_in_one_line
def save_experiment(ws: Path, name: str, stages: list[str], overrides: dict[str, Any],
                    env: dict[str, str]) -> str:
    message = " ".join(["tristage flow run", name, *dvc.override_args(overrides)])
    dvc.run(dvc.exp_save_cmd(name, stages, workspace.untracked_outputs(ws), message), ws, env,
            on_line=dvc.LogForwarder(_task_logger()))
    return name


def _band_advice(ws: Path, outcomes: dict[str, str]) -> str | None:
    """The band advice when stage2 ran in this run and ended outside its band (tristage.runs.summary)."""
    if outcomes.get("stage2") not in report.COMPUTED:
        return None
    try:
        from tristage.config import load_params
        from tristage.runs.summary import band_advice

        params = load_params(ws / "params.yaml")
        return band_advice(report.stage_metrics(ws, "stage2"), params.stage2.speaker_acc_band,
                           Path(params.stage2.out_dir) / "training.json")
    except Exception as exc:  # a summary must never fail a run
        log.warning("band advice not made (%s)", exc)
        return None


@flow(name="tristage-pipeline", log_prints=True)
@user_errors_in_one_line
def pipeline(
    overrides: Overrides = _example({}, {"stage2.grl_lambda": 2.0},
                                    {"stage2.grl_lambda": 0.5, "stage2.steps": 500}),
    target: Target = ALL,
    exp_name: Text = _example("", "lam-2"),
    include_local_changes: bool = True,
    keep_workspace: bool = False,
    repo: Text = _example("", "/path/to/tristage"),
) -> dict:
    """Run the DAG (up to `target`) with params `overrides` as one DVC experiment.

    Args:
        overrides: params.yaml keys -> new values, as `dvc exp run -S` takes them, e.g.
            {"stage2.grl_lambda": 2.0}. Checked against the typed params before anything runs:
            a misspelt key or a bad value fails at once, naming the key. Empty: params.yaml as it is.
        target: the last stage to run (it and the stages it needs); `all`: the whole DAG.
        exp_name: the DVC experiment name (`dvc exp show`, `dvc exp apply NAME`) and the MLflow
            parent run's name; empty: the Prefect flow run's name.
        include_local_changes: start from HEAD plus the uncommitted changes of the project checkout
            to the pipeline's inputs (code, params.yaml, ...; never its DVC outputs or dvc.lock, so the
            stages that don't rerun keep HEAD's outputs); off: HEAD only.
        keep_workspace: keep the run's git worktree `.tristage/runs/<name>/` after success (it is
            always kept after a failure).
        repo: the project checkout to run (advanced; leave empty: the checkout this deployment was
            served from, or $TRISTAGE_REPO).
    """
    repo_dir = Path(repo or os.environ.get("TRISTAGE_REPO") or REPO).resolve()
    overrides = override_items(overrides)
    name = exp_name or current_flow_run.name or "tristage-run"
    gpu.ensure_gpu_limit(gpu.n_slots(gpu.visible_gpus()))
    ws_state = prepare_workspace(repo_dir, name, overrides, target or ALL, include_local_changes,
                                 return_state=True)
    run = _FlowRun.start(repo_dir, name, overrides, target or ALL, *ws_state.result())
    status, outcomes = "FAILED", {}
    try:
        _run_stages(run, ws_state, outcomes)
        status = "FINISHED"
    finally:
        metrics, summary = _finish(run, status, outcomes)
        if status == "FINISHED" and not keep_workspace:
            workspace.remove_workspace(repo_dir, run.ws)
    return {"experiment": name, "flow_run_id": run.flow_run_id, "stages": run.stages, "outcomes": outcomes,
            "mlflow_parent_run_id": run.parent, "metrics": metrics, "summary": summary,
            "workspace": str(run.ws) if keep_workspace else None}


@dataclasses.dataclass
class _FlowRun:
    """One flow run: its workspace, the stages (each with the stages it reads from), the MLflow parent run."""

    repo: Path
    name: str
    overrides: dict[str, Any]
    ws: Path
    graph: dict[str, list[str]]
    changes: dict[str, list[str]]  # what came from the working tree (workspace.create_workspace)
    git_rev: str
    uri: str
    parent: str | None
    flow_run_id: str
    env: dict[str, str]  # of every dvc call

    @property
    def stages(self) -> list[str]:
        return list(self.graph)

    @classmethod
    def start(cls, repo: Path, name: str, overrides: dict[str, Any], target: str, ws, graph,
              changes) -> _FlowRun:
        """`prepare_workspace`'s result -> the run, with its MLflow parent run started."""
        ws = Path(ws)  # a new object: the stages depend on the tasks before them (wait_for), not on this one
        git_rev = workspace._git(["rev-parse", "HEAD"], ws).strip()
        uri, flow_run_id = tracking_uri(repo), str(current_flow_run.id or "")
        tags = {"dvc_experiment": name, "prefect_flow_run_id": flow_run_id, "git_revision": git_rev,
                "target": target}
        parent = runs.start_parent_run(uri, name, tags=tags, params={"overrides": overrides},
                                       artifact_root=repo / "mlartifacts")
        env = dvc.subprocess_env(ws, tracking_uri=uri, parent_run_id=parent, flow_run_id=flow_run_id,
                                 exp_name=name, git_rev=git_rev, device=None)
        return cls(repo, name, overrides, ws, graph, changes, git_rev, uri, parent, flow_run_id, env)


def _run_stages(run: _FlowRun, ws_state: State, outcomes: dict[str, str]) -> None:
    """Each stage a task waiting on the stages it reads from (the first ones on the workspace), then
    `dvc exp save`; `outcomes` gets what DVC did per stage. Raises what failed a stage."""
    done: dict[str, State] = {}
    for stage in run.stages:
        wait_for = [done[u] for u in run.graph[stage] if u in done] or [ws_state]
        if stage in dvc.GPU_STAGES:
            state = gpu_stage(stage, run.ws, run.env, run.repo / ".tristage" / "locks", return_state=True,
                              wait_for=wait_for)
        else:
            state = cpu_stage(stage, run.ws, run.env, return_state=True, wait_for=wait_for)
        outcomes[stage] = state.result()  # raises what failed the stage
        done[stage] = state
    readers = {u for s in run.stages for u in run.graph[s]}
    save_experiment(run.ws, run.name, run.stages, run.overrides, run.env,
                    wait_for=[done[s] for s in run.stages if s not in readers])


def _finish(run: _FlowRun, status: str, outcomes: dict[str, str]) -> tuple[dict[str, float], str]:
    """The MLflow runs closed (stages DVC skipped get one too), the summary artifact -> (metrics, summary)."""
    stages, ws = run.stages, run.ws
    metrics = runs.read_stage_metrics(ws, stages)
    runs.record_stage_outcomes(run.uri, run.parent, ws, outcomes, tags={
        "dvc_experiment": run.name, "prefect_flow_run_id": run.flow_run_id, "git_revision": run.git_rev})
    runs.finish_parent_run(run.uri, run.parent, status, metrics,
                           tags={"stages": ",".join(stages), **runs.read_stage_bands(ws, stages)})
    computed = [s for s in stages if outcomes.get(s) in report.COMPUTED]
    summary = report.summary_markdown(
        name=run.name, status=status, stages=stages, outcomes=outcomes,
        metrics={s: report.stage_metrics(ws, s) for s in stages}, parent_run_id=run.parent,
        tracking_uri=run.uri, plots=report.plot_files(ws, stages), overrides=run.overrides,
        baseline={s: report.baseline_metrics(ws, s) for s in computed}, changes=run.changes,
        git_rev=run.git_rev, advice=_band_advice(ws, outcomes),
        mlflow_url=runs_link(run.uri) if run.parent else None)
    try:
        report.publish(summary, run.name)
    except Exception as exc:  # a summary must never fail a run
        log.warning("run summary artifact not created (%s)", exc)
    return metrics, summary


def _main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    from tristage.errors import UserError

    p = argparse.ArgumentParser(prog="python -m flows.pipeline",
                                description="Run the tristage DAG as one DVC experiment (a Prefect run).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one param, e.g. --set stage2.grl_lambda=2.0 (repeatable)")
    p.add_argument("--target", default=ALL, help="the last stage to run (default: all, the whole DAG)")
    p.add_argument("--name", default="", help="DVC experiment name (default: the Prefect flow run name)")
    p.add_argument("--keep-workspace", action="store_true")
    a = p.parse_args(argv)
    try:
        result = pipeline(overrides=override_items(a.overrides), target=a.target, exp_name=a.name,
                          keep_workspace=a.keep_workspace)
    except (UserError, dvc.CommandFailed) as exc:
        if not dvc.is_user_error(exc):
            raise
        print(f"pipeline: error: {dvc.failure_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result["summary"])


if __name__ == "__main__":
    _main()
