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

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.orchestration import dvc, gpu, runs, workspace
from flows.pipeline import StageName, Text, _example, _or, user_errors_in_one_line
from tristage import sweep as sw
from tristage.config import check_overrides, load_params
from tristage.errors import UserError
from tristage.tracking import tracking_uri

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = "sweep"
DESCRIPTION = (
    "Sweep params as DVC experiments: `grid` {key: [values]} and/or `random` N points over `ranges` "
    "{key: 'low:high[:log]'}; shared stages run once; points run concurrently, one per gpu/cpu slot; "
    "results in sweeps/<name>/ and `tristage compare --sweep <name>`."
)
CPU_LIMIT = "cpu"
MAX_WORKERS = 16  # threads that may wait for a slot; the Prefect limit decides how many points run
log = logging.getLogger("tristage.sweep")


# -- helpers (no Prefect) ---------------------------------------------------------------------
def split_stages(repo: Path, target: str | None, keys: list[str]) -> tuple[list[str], list[str]]:
    """(shared stages, per-point stages) up to `target`: a stage is per point when it reads a swept
    params key (dvc.yaml `params:`) or depends on one that does."""
    import networkx as nx
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    order = dvc.pipeline_stages(repo, target)
    touches = lambda p, k: k == p or k.startswith(p + ".") or p.startswith(k + ".")
    with Repo(str(repo)) as r:
        graph = r.index.graph  # edges: stage -> the stage it depends on
        per_point: set[str] = set()
        for node in graph.nodes:
            params = [p for d in node.deps if isinstance(d, ParamsDependency) for p in (d.params or [])]
            if any(touches(p, k) for p in params for k in keys):
                per_point |= {node.name} | {a.name for a in nx.ancestors(graph, node)}
    return [s for s in order if s not in per_point], [s for s in order if s in per_point]


def validate_point(params_file: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Typed check of params + overrides without touching the file; the knobs' effective values."""
    params = load_params(params_file, check_overrides(params_file, overrides))
    return {k: _get(params, k) for k in sw.KNOBS}


def _get(params: Any, key: str) -> Any:
    node = params
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


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


def failure_reason(exc: BaseException) -> str:
    """One line: a stage's own error line (`stage2: error: ...`) from a failed dvc call, else the message."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if isinstance(exc, dvc.CommandFailed):
        own = [
            ln
            for ln in lines[1:]
            if re.search(r"\berror\b|NonFinite|nan|Traceback|Error:", ln, re.IGNORECASE)
            and not ln.startswith("ERROR: failed to reproduce")
        ]
        picked = own[-1] if own else (lines[-1] if len(lines) > 1 else lines[0] if lines else "")
        return f"exit code {exc.returncode}: {picked}"[:400]
    return (lines[0] if lines else type(exc).__name__)[:400]


def _point_env(ws: Path, uri: str, parent: str | None, flow_run_id: str, name: str, git_rev: str,
               device: str | None, threads: int) -> dict[str, str]:
    env = dvc.subprocess_env(
        ws,
        tracking_uri=uri,
        parent_run_id=parent,
        flow_run_id=flow_run_id,
        exp_name=name,
        git_rev=git_rev,
        device=device,
    )
    # torch sizes its intra-op pool from OMP_NUM_THREADS: concurrent points share the cores, not fight
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


@contextlib.contextmanager
def hold_slot(kind: str, devices: list[str], lock_dir: Path) -> Iterator[str | None]:
    """One `gpu` slot with its own device (yields CUDA_VISIBLE_DEVICES), or one `cpu` slot (yields None:
    the point sees no GPU)."""
    if kind == "gpu":
        with gpu.gpu_slot(lock_dir, devices) as device:
            yield device
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(CPU_LIMIT, occupy=1):
        yield None


def _copy_base(base_ws: Path, ws: Path) -> None:
    """The base's dvc.lock, params and shared stages' metrics/plots (what git sees as changed)."""
    changed, deleted = workspace.local_changes(base_ws)
    workspace._copy_files(base_ws, ws, changed)
    for rel in deleted:
        (ws / rel).unlink(missing_ok=True)


def _record_path(out_dir: Path, point: str) -> Path:
    return out_dir / "points" / f"{point}.json"


def _write_record(out_dir: Path, point: str, record: dict) -> None:
    from tristage.fsio import write_json

    path = _record_path(out_dir, point)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def _read_record(out_dir: Path, point: str) -> dict | None:
    try:
        return json.loads(_record_path(out_dir, point).read_text())
    except (OSError, ValueError):
        return None


def existing_experiments(repo: Path) -> set[str]:
    out = dvc.run([dvc.dvc_executable(), "exp", "list", "--name-only"], repo, on_line=lambda _line: None)
    return {ln.strip() for ln in out.splitlines() if ln.strip()}


# -- tasks ------------------------------------------------------------------------------------
@task(name="shared-stages", task_run_name="shared-stages-{name}", cache_policy=NO_CACHE)
def run_base(
    repo: Path,
    name: str,
    overrides: dict[str, Any],
    stages: list[str],
    include_local_changes: bool,
    slot: tuple[str, list[str], Path],
    uri: str,
    parent: str | None,
    flow_run_id: str,
    threads: int,
) -> Path:
    """The shared stages, once, in `.tristage/runs/<name>` (kept until the sweep has no failed point)."""
    ws = repo / workspace.RUNS_DIR / name
    done = ws / ".tristage-base-done"
    marker = {
        "overrides": overrides,
        "stages": stages,
        "head": workspace._git(["rev-parse", "HEAD"], repo).strip(),
        "params": (repo / "params.yaml").read_text(),
    }
    if done.is_file() and json.loads(done.read_text()) == marker:
        log.info("shared stages: reusing %s", ws)
        return ws
    if ws.exists():
        workspace.remove_workspace(repo, ws)
    ws = workspace.create_workspace(repo, name, include_local_changes)
    dvc.apply_overrides(ws / "params.yaml", overrides)
    git_rev = workspace._git(["rev-parse", "HEAD"], ws).strip()
    logger = get_run_logger()
    try:  # outputs the checkout's dvc.lock records (e.g. a finished `make demo`) come from the cache,
        # not a rerun
        dvc.run(dvc.checkout_cmd(stages), ws, {"CUDA_VISIBLE_DEVICES": ""}, on_line=dvc.LogForwarder(logger))
    except dvc.CommandFailed as exc:
        logger.warning("dvc checkout in the base workspace failed; the shared stages recompute (%s)",
                       failure_reason(exc))
    for stage in stages:
        with hold_slot(*slot) if stage in dvc.GPU_STAGES else contextlib.nullcontext() as device:
            env = _point_env(ws, uri, parent, flow_run_id, name, git_rev, device, threads)
            dvc.run(dvc.repro_cmd(stage), ws, env, on_line=dvc.LogForwarder(logger))
    done.write_text(json.dumps(marker))
    return ws


@task(name="point", task_run_name="point-{point}", cache_policy=NO_CACHE)
def run_point(
    repo: Path,
    point: str,
    overrides: dict[str, Any],
    base_ws: Path,
    shared: list[str],
    stages: list[str],
    slot: tuple[str, list[str], Path],
    uri: str,
    sweep_run: str | None,
    sweep_name: str,
    flow_run_id: str,
    threads: int,
    out_dir: Path,
    knobs: dict[str, Any],
) -> dict:
    """One point: its workspace from the base, its stages in one slot, `dvc exp save -n <point>`.
    Never raises: a failure is the record's status and reason."""
    record: dict[str, Any] = {"status": "failed", "overrides": overrides, "knobs": knobs}
    logger = get_run_logger()
    ws = repo / workspace.RUNS_DIR / point
    run_id = None
    started = time.time()
    try:
        if ws.exists():  # a failed earlier try of this point
            workspace.remove_workspace(repo, ws)
        ws = workspace.create_workspace(repo, point, include_local_changes=False)
        _copy_base(base_ws, ws)
        dvc.apply_overrides(ws / "params.yaml", overrides)
        git_rev = workspace._git(["rev-parse", "HEAD"], ws).strip()
        tags = {runs.ROLE_TAG: "flow", "tristage.sweep": sweep_name, "dvc_experiment": point,
                "prefect_flow_run_id": flow_run_id, "git_revision": git_rev, "target": stages[-1]}
        if sweep_run:
            tags["mlflow.parentRunId"] = sweep_run  # the sweep's run: a child per point
        run_id = runs.start_parent_run(uri, point, tags=tags, params={"overrides": overrides},
                                       artifact_root=repo / "mlartifacts")
        with hold_slot(*slot) as device:
            record["device"] = device or ""
            env = _point_env(ws, uri, run_id, flow_run_id, point, git_rev, device, threads)
            record["started"] = time.time()
            logger.info("%s: holds a %s slot, CUDA_VISIBLE_DEVICES=%r, %d torch thread(s)", point, slot[0],
                        env["CUDA_VISIBLE_DEVICES"], threads)
            if shared:  # the shared outputs, from the DVC cache (the base's dvc.lock says which)
                dvc.run(dvc.checkout_cmd(shared), ws, env, on_line=dvc.LogForwarder(logger))
            for stage in stages:
                dvc.run(dvc.repro_cmd(stage), ws, env, on_line=dvc.LogForwarder(logger))
            record["finished"] = time.time()
        message = f"tristage sweep {sweep_name} point " + " ".join(dvc.override_args(overrides))
        save = dvc.exp_save_cmd(point, shared + stages, workspace.untracked_outputs(ws), message)
        for attempt in range(3):  # points ending together write git refs at once
            try:
                dvc.run(save, ws, env, on_line=dvc.LogForwarder(logger))
                break
            except dvc.CommandFailed:
                if attempt == 2:
                    raise
                time.sleep(2 + 3 * attempt)
        record["status"] = "finished"
    except Exception as exc:  # any failure is recorded with its reason; the other points go on
        record["reason"] = failure_reason(exc)
        logger.warning("sweep point %s failed: %s", point, record["reason"])
    record["seconds"] = round(time.time() - started, 1)
    record["metrics"] = sw.point_metrics(ws) if record["status"] == "finished" else {}
    if run_id:
        flat = {
            k: v
            for k, v in record["metrics"].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        flat.update(runs.read_stage_metrics(ws, shared + stages))
        runs.finish_parent_run(uri, run_id, "FINISHED" if record["status"] == "finished" else "FAILED", flat,
                               tags={"stages": ",".join(stages), **({"failure": record["reason"]}
                                                                     if record.get("reason") else {})})
    record["mlflow_run_id"] = run_id
    _write_record(out_dir, point, record)
    if record["status"] == "finished":
        workspace.remove_workspace(repo, ws)
    return record


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
    name = sw.check_sweep_name(name or re.sub(r"[^A-Za-z0-9_.-]+", "-", current_flow_run.name or "sweep"))
    overrides = dict(overrides or {})
    points = sw.unique_points(sw.grid_points(grid or {}) + sw.random_points(sw.parse_ranges(ranges or {}),
                                                                           int(random or 0), seed))
    if not points:
        raise UserError("sweep: no points; give --grid KEY=V1,V2 and/or --random N --range KEY=LOW:HIGH")
    if int(cpu_slots or 0) < 0:
        raise UserError(f"cpu_slots: must be >= 1 (0: the limit in force), got {cpu_slots}")
    keys = list(dict.fromkeys(k for p in points for k in p))
    clash = [k for k in keys if k in overrides]
    if clash:
        raise UserError(f"overrides: {', '.join(clash)} is also swept; drop it from one of them")

    # 1. validate every point before any work
    params_file = repo_dir / "params.yaml"
    if not include_local_changes:
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="tristage-sweep-"))
        params_file = tmp / "params.yaml"
        params_file.write_text(workspace._git(["show", "HEAD:params.yaml"], repo_dir))
    validate_point(params_file, overrides)  # the fixed overrides alone must be valid: else fail now
    named: list[tuple[str, dict[str, Any], dict[str, Any] | None, str | None]] = []
    for p in points:
        try:
            named.append((sw.point_name(name, p), p, validate_point(params_file, {**overrides, **p}), None))
        except UserError as exc:
            named.append((sw.point_name(name, p), p, None, str(exc).replace(str(params_file), "params.yaml")))
    if all(reason for *_, reason in named):
        raise UserError(f"sweep {name}: every point is invalid; first: {named[0][3]}")
    shared, per_point = split_stages(repo_dir, target, keys)
    if not per_point:
        raise UserError(f"sweep: no stage up to {target!r} reads {', '.join(keys)} (dvc.yaml params)")
    band = _band(params_file, overrides)
    out_dir = repo_dir / sw.SWEEPS_DIR / name
    print(f"sweep {name}: {len(points)} point(s); shared stages (once): {', '.join(shared) or '-'}; "
          f"per point: {', '.join(per_point)}")

    # 2. slots and threads
    devices = gpu.visible_gpus()
    if devices:
        kind, n_slots = "gpu", gpu.ensure_gpu_limit(gpu.n_slots(devices))
    else:
        kind, n_slots = "cpu", ensure_limit(CPU_LIMIT, int(cpu_slots or 1), force=bool(cpu_slots))
    threads = max(1, len(os.sched_getaffinity(0)) // max(1, min(n_slots, len(points))))
    slot = (kind, devices, repo_dir / ".tristage" / "locks")
    print(f"sweep {name}: {n_slots} {kind} slot(s){' on devices ' + ','.join(devices) if devices else ''}, "
          f"{threads} torch thread(s) per point")

    # 3. what is already done
    records: dict[str, dict] = {}
    done_exps = existing_experiments(repo_dir)
    todo = []
    for point, p, knobs, reason in named:
        old = _read_record(out_dir, point)
        if reason is not None:
            records[point] = {"status": "failed", "reason": reason, "overrides": p}
            _write_record(out_dir, point, records[point])
        elif old and old.get("status") == "finished" and point in done_exps:
            records[point] = {**old, "skipped": True}
            print(f"sweep {name}: {point} finished in an earlier run: skipped")
        else:
            todo.append((point, p, knobs))

    # 4. MLflow parent, shared stages once, then the points concurrently
    uri = tracking_uri(repo_dir)
    flow_run_id = str(current_flow_run.id or "")
    git_rev = workspace._git(["rev-parse", "HEAD"], repo_dir).strip()
    parent = runs.start_parent_run(
        uri,
        f"sweep-{name}",
        tags={
            runs.ROLE_TAG: "sweep",
            "tristage.sweep": name,
            "prefect_flow_run_id": flow_run_id,
            "git_revision": git_rev,
            "target": target,
        },
        params={"grid": grid or {}, "random": random, "ranges": ranges or {}, "overrides": overrides},
        artifact_root=repo_dir / "mlartifacts",
    )
    base_name = f"{name}-base"
    status = "FAILED"
    try:
        if todo:
            base_ws = run_base(
                repo_dir,
                base_name,
                overrides,
                shared,
                include_local_changes,
                slot,
                uri,
                parent,
                flow_run_id,
                threads,
            )
            futures = [
                run_point.submit(
                    repo_dir,
                    point,
                    {**overrides, **p},
                    base_ws,
                    shared,
                    per_point,
                    slot,
                    uri,
                    parent,
                    name,
                    flow_run_id,
                    threads,
                    out_dir,
                    knobs,
                )
                for point, p, knobs in todo
            ]
            for (point, _, _), fut in zip(todo, futures):
                records[point] = fut.result()
        rows = [sw.result_row(point, p, records[point], band) for point, p, _, _ in named]
        rec = sw.recommend(rows, band, _adversary(params_file, overrides))
        meta = {"sweep": name, "target": target, "shared_stages": shared, "point_stages": per_point,
                "slots": n_slots, "slot_kind": kind, "threads_per_point": threads, "overrides": overrides,
                "mlflow_parent_run_id": parent}
        paths = sw.write_results(out_dir, rows, rec, band, meta)
        print(sw.render_table(rows, rec.as_dict()))
        _log_results(uri, parent, paths, rows, rec)
        status = "FINISHED" if any(r["status"] == "finished" for r in rows) else "FAILED"
        if all(r["status"] == "finished" for r, (*_, invalid) in zip(rows, named) if invalid is None):
            # nothing left to retry (an invalid point stays invalid): the base is not needed any more
            workspace.remove_workspace(repo_dir, repo_dir / workspace.RUNS_DIR / base_name)
    finally:
        runs.finish_parent_run(uri, parent, status)
    return {"sweep": name, "results": str(paths["csv"]), "recommended": rec.point, "recommendation": rec.text,
            "next_grid": rec.next_grid, "points": {p: records[p]["status"] for p, *_ in named},
            "mlflow_parent_run_id": parent, "shared_stages": shared, "point_stages": per_point}


def _band(params_file: Path, overrides: dict[str, Any]) -> tuple[float, float]:
    lo, hi = load_params(params_file, check_overrides(params_file, overrides)).stage2.speaker_acc_band
    return float(lo), float(hi)


def _adversary(params_file: Path, overrides: dict[str, Any]) -> str:
    return load_params(params_file, check_overrides(params_file, overrides)).stage2.adversary


def _log_results(
    uri: str, run_id: str | None, paths: dict[str, Path], rows: list[dict], rec: sw.Recommendation
) -> None:
    """The table and charts as the sweep run's artifacts; the recommendation as tags (best effort)."""
    if run_id is None:
        return
    try:
        client = runs._client(uri)
        for path in paths.values():
            client.log_artifact(run_id, str(path), artifact_path="sweep")
        client.set_tag(run_id, "recommended_point", rec.point or "")
        client.set_tag(run_id, "recommendation", rec.text[:5000])
        client.log_metric(run_id, "points_finished", sum(r["status"] == "finished" for r in rows))
        client.log_metric(run_id, "points_failed", sum(r["status"] == "failed" for r in rows))
    except Exception as exc:  # tracking is best effort, the files are in sweeps/<name>/
        log.warning("MLflow: sweep results not logged to run %s (%s)", run_id, exc)


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
        grid = sw.parse_grid(a.grid)
        sw.parse_ranges(a.ranges)  # a bad range fails here, before Prefect starts
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
