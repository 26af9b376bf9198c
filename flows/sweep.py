"""A sweep over params as one Prefect flow: shared stages once, then one DVC experiment per point.

    python -m flows.sweep --grid stage2.grl_lambda=0.3,1,3 --grid stage2.speaker_loss_weight=0.1,0.3
    python -m flows.sweep --random 6 --range stage2.grl_lambda=0.1:3:log --name lam-rand --cpu-slots 2
    tristage compare --sweep <name>                      # the table and the recommended point
    make serve                                           # also serves this flow as `tristage-sweep/sweep`

1. Every point's params are validated first (a bad value fails that point, naming the key; a
   bad key fails the sweep before any work).
2. The stages no swept key reaches (with stage2 keys: corpus .. stage1) run once, in the
   workspace `.tristage/runs/<name>-base/`.
3. Each point is a git worktree `.tristage/runs/<point>/` that starts from the base's dvc.lock
   and metrics (its shared outputs are checked out from the DVC cache, not recomputed), gets its
   overrides, runs its stages (stage2 -> stage3 -> evaluate, or up to `target`) and is saved as the
   DVC experiment `<point>` (`dvc exp show`, `dvc exp apply <point>`).
   Points run concurrently, each holding one slot of the Prefect global concurrency limit `gpu`
   (one per visible GPU; the point gets its own CUDA_VISIBLE_DEVICES) or, with no GPU, of `cpu`
   (`cpu_slots`, default 1); torch gets cpu_count / slots threads per point.
4. A failed point (bad value, NaN loss, a crash) is recorded with its reason; the others go on.
   Rerunning the same sweep skips the points already finished (their DVC experiment exists).
5. MLflow: a parent run for the sweep (role `sweep`), a child run per point (its stage runs
   nested below it); `sweeps/<name>/results.csv|json` and the two charts, also logged to the
   parent run; the recommended point in the log, the results and the parent run's tags.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.orchestration import dvc, runs, sweeps, workspace
from flows.orchestration.sweeps import SweepRun, existing_experiments, make_slots
from flows.pipeline import StageName, Text, _example, _or, user_errors_in_one_line
from tristage.errors import UserError
from tristage.runs import sweep_points
from tristage.runs.sweep_plan import SweepPlan, SweepPoint, SweepRequest, SweepResults
from tristage.runs.sweep_results import SWEEPS_DIR
from tristage.runs.tracking import tracking_uri

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = "sweep"
DESCRIPTION = (
    "Sweep params as DVC experiments: `grid` {key: [values]} and/or `random` N points over `ranges` "
    "{key: 'low:high[:log]'}; shared stages run once; points run concurrently, one per gpu/cpu slot; "
    "results in sweeps/<name>/ and `tristage compare --sweep <name>`."
)
MAX_WORKERS = 16  # threads that may wait for a slot; the Prefect limit decides how many points run


@task(name="shared-stages", task_run_name="shared-stages-{run.plan.name}", cache_policy=NO_CACHE)
def run_base(run: SweepRun) -> Path:
    """The shared stages, once (flows/orchestration/sweeps.py)."""
    return sweeps.run_base(run, get_run_logger())


@task(name="point", task_run_name="point-{point.name}", cache_policy=NO_CACHE)
def run_point(run: SweepRun, point: SweepPoint, base_ws: Path) -> dict:
    """One point's stages in a slot, saved as a DVC experiment -> its record (orchestration/sweeps.py)."""
    return sweeps.run_point(run, point, base_ws, get_run_logger())


# -- the flow ---------------------------------------------------------------------------------
# The run form's types: each parameter a plain type with a default (no None/value toggles); None from an
# older caller still means "not given".
Grid = Annotated[dict[str, list[Any]], _or({})]
ParamValues = Annotated[dict[str, Any], _or({})]
Count = Annotated[int, _or(0)]


@flow(name="tristage-sweep", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
@user_errors_in_one_line
def sweep(
    grid: Grid = _example({}, {"stage2.grl_lambda": [0.3, 1, 3], "stage2.speaker_loss_weight": [0.1, 0.3]}),
    random: int = 0,
    ranges: ParamValues = _example({}, {"stage2.grl_lambda": "0.1:3:log"}),
    overrides: ParamValues = _example({}, {"stage2.steps": 100}),
    target: StageName = "evaluate",
    name: Text = _example("", "lam-w"),
    cpu_slots: Count = _example(0, 2),
    seed: int = 0,
    include_local_changes: bool = True,
    repo: Text = _example("", "/path/to/tristage"),
) -> dict:
    """Sweep params as DVC experiments: shared stages once, then each point's stages, points concurrently.

    Args:
        grid: params keys -> lists of values; every combination is a point, e.g.
            {"stage2.grl_lambda": [0.3, 1, 3], "stage2.speaker_loss_weight": [0.1, 0.3]}.
        random: this many more points drawn from `ranges` (with `seed`).
        ranges: params keys -> "LOW:HIGH" (uniform; integers if both are) or "LOW:HIGH:log".
        overrides: params keys -> values applied to every point and to the shared stages.
        target: the last stage each point runs (default evaluate: the probes and the band).
        name: the sweep's name: `sweeps/<name>/`, the experiments' prefix; run it again to resume.
        cpu_slots: points at once on a machine without GPU (sets the Prefect limit `cpu`;
            0: the limit in force, else 1). With GPUs the `gpu` limit decides.
        seed: the seed of the random points.
        include_local_changes: start from HEAD plus the checkout's uncommitted files.
        repo: the project checkout; empty: the one this flow file lives in.
    """
    repo_dir = Path(repo or os.environ.get("TRISTAGE_REPO") or REPO).resolve()
    if int(cpu_slots or 0) < 0:
        raise UserError(f"cpu_slots: must be >= 1 (0: the limit in force), got {cpu_slots}")
    request = SweepRequest(name or re.sub(r"[^A-Za-z0-9_.-]+", "-", current_flow_run.name or "sweep"),
                           grid or {}, int(random or 0), ranges or {}, dict(overrides or {}), target, seed)
    plan = SweepPlan.make(request, _params_file(repo_dir, include_local_changes),
                          dvc.stage_graph(repo_dir, target), repo_dir / SWEEPS_DIR)
    print(plan.describe())
    slots = make_slots(plan, repo_dir, int(cpu_slots or 0))
    print(f"sweep {plan.name}: {slots.describe()}")
    records, todo = plan.pending(existing_experiments(repo_dir))
    for point in (p.name for p in plan.points if records.get(p.name, {}).get("skipped")):
        print(f"sweep {plan.name}: {point} finished in an earlier run: skipped")
    uri = tracking_uri(repo_dir)
    run = SweepRun(repo_dir, plan, slots, uri, _start_sweep_run(uri, repo_dir, plan, request),
                   str(current_flow_run.id or ""), include_local_changes)
    results = None
    try:
        if todo:  # the shared stages once, then the points concurrently, each in a slot
            base_ws = run_base(run)
            futures = [run_point.submit(run, point, base_ws) for point in todo]
            records.update({p.name: f.result() for p, f in zip(todo, futures)})
        results = _results(run, records)
    finally:
        runs.finish_parent_run(uri, run.parent, results.status if results else "FAILED")
    return plan.summary(records, results, run.parent)


def _results(run: SweepRun, records: dict[str, dict]) -> SweepResults:
    """The table, charts and recommendation in sweeps/<name>/ and the sweep's MLflow run; the base workspace
    removed when nothing is left to retry (an invalid point stays invalid)."""
    plan, slots = run.plan, run.slots
    results = plan.finish(records, {"slots": slots.count, "slot_kind": slots.kind,
                                    "threads_per_point": slots.threads, "mlflow_parent_run_id": run.parent})
    print(results.table())
    runs.log_sweep_results(run.uri, run.parent, results)
    if plan.all_valid_done(results):
        workspace.remove_workspace(run.repo, run.repo / workspace.RUNS_DIR / plan.base_name)
    return results


def _params_file(repo: Path, include_local_changes: bool) -> Path:
    """The params the points are checked against: the checkout's, or HEAD's (a copy in a temp folder)."""
    if include_local_changes:
        return repo / "params.yaml"
    params_file = Path(tempfile.mkdtemp(prefix="tristage-sweep-")) / "params.yaml"
    params_file.write_text(workspace._git(["show", "HEAD:params.yaml"], repo))
    return params_file


def _start_sweep_run(uri: str, repo: Path, plan: SweepPlan, request: SweepRequest) -> str | None:
    """The sweep's MLflow run (role `sweep`): each point's run is its child."""
    tags = {runs.ROLE_TAG: "sweep", "tristage.sweep": plan.name, "target": plan.target,
            "prefect_flow_run_id": str(current_flow_run.id or ""),
            "git_revision": workspace._git(["rev-parse", "HEAD"], repo).strip()}
    params = {"grid": dict(request.grid), "random": request.random, "ranges": dict(request.ranges),
              "overrides": plan.overrides}
    return runs.start_parent_run(uri, f"sweep-{plan.name}", tags=tags, params=params,
                                 artifact_root=repo / "mlartifacts")


def _main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    import yaml

    p = argparse.ArgumentParser(prog="python -m flows.sweep", description=sweep.__doc__.splitlines()[0])
    p.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="one axis of the grid"
    )
    p.add_argument("--random", type=int, default=0, metavar="N", help="N random points over the --range keys")
    p.add_argument("--range", dest="ranges", action="append", default=[], metavar="KEY=LOW:HIGH[:log]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random points")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="applied to every point (and the shared stages)")
    p.add_argument("--target", default="evaluate", help="the last stage of each point (default evaluate)")
    p.add_argument("--name", default=None, help="sweep name: sweeps/<name>/ and the experiments' prefix")
    p.add_argument("--cpu-slots", type=int, default=None, help="points at once with no GPU (default 1)")
    a = p.parse_args(argv)
    try:
        grid = sweep_points.parse_grid(a.grid)
        sweep_points.parse_ranges(a.ranges)  # a bad range fails here, before Prefect starts
        ranges = {k.strip(): v.strip() for k, _, v in (r.partition("=") for r in a.ranges)}
        overrides = {}
        for item in a.overrides:
            k, _, v = item.partition("=")
            overrides[k] = yaml.safe_load(v)
        result = sweep(
            grid=grid,
            random=a.random,
            ranges=ranges,
            overrides=overrides,
            target=a.target,
            name=a.name,
            cpu_slots=a.cpu_slots,
            seed=a.seed,
        )
    except UserError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    _main()
