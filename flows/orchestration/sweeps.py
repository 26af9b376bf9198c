"""What a sweep's tasks do (flows/sweep.py submits them): the shared stages once in a base workspace, then
each point in its own workspace started from the base, in one slot, saved as a DVC experiment.

The plan (points, stages, slots, records, results) is `tristage.runs.sweep_plan.SweepPlan`; this module
runs `dvc` and holds the Prefect slots.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flows.orchestration import dvc, gpu, runs, workspace
from tristage.runs.sweep_plan import Slots, SweepPlan, SweepPoint, numeric_metrics
from tristage.runs.sweep_results import point_metrics

log = logging.getLogger(__name__)
CPU_LIMIT = "cpu"


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """What every task of one sweep run shares."""

    repo: Path
    plan: SweepPlan
    slots: Slots
    uri: str  # the MLflow tracking URI
    parent: str | None  # the sweep's MLflow run (each point's run is its child)
    flow_run_id: str
    include_local_changes: bool  # the base workspace starts from HEAD plus the checkout's uncommitted files

    def env(self, ws: Path, name: str, parent: str | None, device: str | None) -> dict[str, str]:
        """The environment of a `dvc` call in workspace `ws`: tracking ids, the slot's device, and the
        slot's share of the cores (torch sizes its pool from OMP_NUM_THREADS: points share, not fight)."""
        env = dvc.subprocess_env(ws, tracking_uri=self.uri, parent_run_id=parent, exp_name=name,
                                 flow_run_id=self.flow_run_id, git_rev=git_rev(ws), device=device)
        env.update({"OMP_NUM_THREADS": str(self.slots.threads), "MKL_NUM_THREADS": str(self.slots.threads)})
        return env


def git_rev(ws: Path) -> str:
    return workspace._git(["rev-parse", "HEAD"], ws).strip()


def ensure_limit(name: str, limit: int, force: bool) -> int:
    """The Prefect global concurrency limit `name`: created with `limit` slots if missing, set to
    `limit` when `force` (an explicit `cpu_slots`); returns the limit in force."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    in_force = gpu.ensure_gpu_limit(limit, name=name)
    if force and in_force != limit:
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit))
        log.info("set Prefect global concurrency limit %r to %d slot(s)", name, limit)
        in_force = limit
    return in_force


def make_slots(plan: SweepPlan, repo: Path, cpu_slots: int) -> Slots:
    """One `gpu` slot per visible GPU, else `cpu_slots` `cpu` slots (0: the limit in force, else 1)."""
    import os

    devices = gpu.visible_gpus()
    if devices:
        kind, count = "gpu", gpu.ensure_gpu_limit(gpu.n_slots(devices))
    else:
        kind, count = "cpu", ensure_limit(CPU_LIMIT, int(cpu_slots or 1), force=bool(cpu_slots))
    return plan.slots(kind, count, devices, len(os.sched_getaffinity(0)), repo / ".tristage" / "locks")


@contextlib.contextmanager
def hold_slot(slots: Slots) -> Iterator[str | None]:
    """One `gpu` slot with its own device (yields CUDA_VISIBLE_DEVICES), or one `cpu` slot (yields None:
    the point sees no GPU)."""
    if slots.kind == "gpu":
        with gpu.gpu_slot(slots.lock_dir, slots.devices) as device:
            yield device
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(CPU_LIMIT, occupy=1):
        yield None


def failure_reason(exc: BaseException) -> str:
    """One line: a stage's own error line (`stage2: error: ...`) from a failed dvc call, else the message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if isinstance(exc, dvc.CommandFailed):
        own = [ln for ln in lines[1:] if re.search(r"\berror\b|NonFinite|nan|Traceback|Error:", ln, re.I)
               and not ln.startswith("ERROR: failed to reproduce")]
        picked = own[-1] if own else (lines[-1] if len(lines) > 1 else lines[0] if lines else "")
        return f"exit code {exc.returncode}: {picked}"[:400]
    return (lines[0] if lines else type(exc).__name__)[:400]


def existing_experiments(repo: Path) -> set[str]:
    out = dvc.run([dvc.dvc_executable(), "exp", "list", "--name-only"], repo, on_line=lambda _line: None)
    return {ln.strip() for ln in out.splitlines() if ln.strip()}


# -- the shared stages -------------------------------------------------------------------------------
def run_base(run: SweepRun, logger) -> Path:
    """The shared stages, once, in `.tristage/runs/<base>` (kept until the sweep has no failed point)."""
    plan, repo = run.plan, run.repo
    ws = repo / workspace.RUNS_DIR / plan.base_name
    done = ws / ".tristage-base-done"
    marker = {"overrides": plan.overrides, "stages": plan.shared, "head": git_rev(repo),
              "params": (repo / "params.yaml").read_text()}
    if done.is_file() and json.loads(done.read_text()) == marker:
        log.info("shared stages: reusing %s", ws)
        return ws
    if ws.exists():
        workspace.remove_workspace(repo, ws)
    ws = workspace.create_workspace(repo, plan.base_name, run.include_local_changes)
    dvc.apply_overrides(ws / "params.yaml", plan.overrides)
    try:  # outputs the checkout's dvc.lock records (e.g. a finished `make demo`) come from the cache
        dvc.run(dvc.checkout_cmd(plan.shared), ws, {"CUDA_VISIBLE_DEVICES": ""},
                on_line=dvc.LogForwarder(logger))
    except dvc.CommandFailed as exc:
        logger.warning("dvc checkout in the base workspace failed; the shared stages recompute (%s)",
                       failure_reason(exc))
    for stage in plan.shared:
        with hold_slot(run.slots) if stage in dvc.GPU_STAGES else contextlib.nullcontext() as device:
            env = run.env(ws, plan.base_name, run.parent, device)
            dvc.run(dvc.repro_cmd(stage), ws, env, on_line=dvc.LogForwarder(logger))
    done.write_text(json.dumps(marker))
    return ws


# -- one point ---------------------------------------------------------------------------------------
def run_point(run: SweepRun, point: SweepPoint, base_ws: Path, logger) -> dict:
    """One point: its workspace from the base, its stages in one slot, `dvc exp save -n <point>`.
    Never raises: a failure is the record's status and reason."""
    record: dict[str, Any] = {"status": "failed", "overrides": point.overrides, "knobs": point.knobs}
    ws, run_id, started = run.repo / workspace.RUNS_DIR / point.name, None, time.time()
    try:
        ws = _point_workspace(run, point, base_ws)
        run_id = _start_point_run(run, point, ws)
        env = _run_stages(run, point, ws, run_id, record, logger)
        _save_experiment(run, point, ws, env, logger)
        record["status"] = "finished"
    except Exception as exc:  # any failure is recorded with its reason; the other points go on
        record["reason"] = failure_reason(exc)
        logger.warning("sweep point %s failed: %s", point.name, record["reason"])
    record["seconds"] = round(time.time() - started, 1)
    record["metrics"] = point_metrics(ws) if record["status"] == "finished" else {}
    _finish_point_run(run, ws, run_id, record)
    record["mlflow_run_id"] = run_id
    run.plan.write_record(point.name, record)
    if record["status"] == "finished":
        workspace.remove_workspace(run.repo, ws)
    return record


def _point_workspace(run: SweepRun, point: SweepPoint, base_ws: Path) -> Path:
    """A fresh worktree with the base's dvc.lock, params and shared outputs' metrics/plots; the overrides."""
    ws = run.repo / workspace.RUNS_DIR / point.name
    if ws.exists():  # a failed earlier try of this point
        workspace.remove_workspace(run.repo, ws)
    ws = workspace.create_workspace(run.repo, point.name, include_local_changes=False)
    changed, deleted = workspace.local_changes(base_ws)  # what git sees as changed in the base
    workspace._copy_files(base_ws, ws, changed)
    for rel in deleted:
        (ws / rel).unlink(missing_ok=True)
    dvc.apply_overrides(ws / "params.yaml", point.overrides)
    return ws


def _start_point_run(run: SweepRun, point: SweepPoint, ws: Path) -> str | None:
    """The point's MLflow run, a child of the sweep's run (its stage runs nest below it)."""
    tags = {runs.ROLE_TAG: "flow", "tristage.sweep": run.plan.name, "dvc_experiment": point.name,
            "prefect_flow_run_id": run.flow_run_id, "git_revision": git_rev(ws),
            "target": run.plan.per_point[-1]}
    if run.parent:
        tags["mlflow.parentRunId"] = run.parent
    return runs.start_parent_run(run.uri, point.name, tags=tags, params={"overrides": point.overrides},
                                 artifact_root=run.repo / "mlartifacts")


def _run_stages(run: SweepRun, point: SweepPoint, ws: Path, run_id: str | None, record: dict,
                logger) -> dict[str, str]:
    """The point's stages in one slot (the shared outputs checked out of the DVC cache first) -> the env."""
    plan = run.plan
    with hold_slot(run.slots) as device:
        record["device"] = device or ""
        env = run.env(ws, point.name, run_id, device)
        record["started"] = time.time()
        logger.info("%s: holds a %s slot, CUDA_VISIBLE_DEVICES=%r, %d torch thread(s)", point.name,
                    run.slots.kind, env["CUDA_VISIBLE_DEVICES"], run.slots.threads)
        if plan.shared:  # the base's dvc.lock says which
            dvc.run(dvc.checkout_cmd(plan.shared), ws, env, on_line=dvc.LogForwarder(logger))
        for stage in plan.per_point:
            dvc.run(dvc.repro_cmd(stage), ws, env, on_line=dvc.LogForwarder(logger))
        record["finished"] = time.time()
    return env


def _save_experiment(run: SweepRun, point: SweepPoint, ws: Path, env: dict[str, str], logger) -> None:
    """`dvc exp save -n <point>`, retried: points ending together write git refs at once."""
    plan = run.plan
    message = f"tristage sweep {plan.name} point " + " ".join(dvc.override_args(point.overrides))
    stages = plan.shared + plan.per_point
    save = dvc.exp_save_cmd(point.name, stages, workspace.untracked_outputs(ws), message)
    for attempt in range(3):
        try:
            dvc.run(save, ws, env, on_line=dvc.LogForwarder(logger))
            return
        except dvc.CommandFailed:
            if attempt == 2:
                raise
            time.sleep(2 + 3 * attempt)


def _finish_point_run(run: SweepRun, ws: Path, run_id: str | None, record: dict) -> None:
    if not run_id:
        return
    plan = run.plan
    flat = numeric_metrics(record["metrics"])
    flat.update(runs.read_stage_metrics(ws, plan.shared + plan.per_point))
    tags = {"stages": ",".join(plan.per_point)}
    if record.get("reason"):
        tags["failure"] = record["reason"]
    runs.finish_parent_run(run.uri, run_id, "FINISHED" if record["status"] == "finished" else "FAILED", flat,
                           tags=tags)
