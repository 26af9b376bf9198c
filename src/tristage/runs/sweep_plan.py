"""A sweep's plan: the points and their names, which stages run once and which per point, the slots the
points share, what an earlier run of the same sweep finished, and the results.

    graph = StageGraph(order, upstream, reads)     # the DAG up to the target (flows/orchestration/dvc.py)
    plan = SweepPlan.make(SweepRequest("lam", grid={"stage2.grl_lambda": [0.3, 1]}), params_file, graph,
                          repo / SWEEPS_DIR)
    plan.shared, plan.per_point                    # [corpus .. stage1], [stage2, stage3, evaluate]
    slots = plan.slots("cpu", 2, [], cpus=8, lock_dir=...)   # 2 points at once, 4 torch threads each
    records, todo = plan.pending(done_experiments) # finished points of an earlier run are skipped
    ...                                            # the flow runs the shared stages once, then `todo`
    results = plan.finish(records, {"mlflow_parent_run_id": run_id})   # sweeps/<name>/: table, charts

Every point's params are checked before any work: a bad value fails that point (`SweepPoint.invalid`
names the key), a bad key or a bad fixed override fails the sweep. Library code: the flow
(`flows/sweep.py`) reads the DAG from DVC and runs the stages; nothing here imports DVC or Prefect.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tristage.errors import UserError
from tristage.fsio import read_json, write_json
from tristage.runs.sweep_points import (
    check_sweep_name,
    grid_points,
    parse_ranges,
    point_name,
    random_points,
    unique_points,
)
from tristage.runs.sweep_results import (
    KNOBS,
    Recommendation,
    recommend,
    render_table,
    result_row,
    write_results,
)


@dataclasses.dataclass(frozen=True)
class SweepRequest:
    """What the user asked for (the flow's parameters)."""

    name: str
    grid: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)  # key -> values: a product
    random: int = 0  # this many more points drawn from `ranges` with `seed`
    ranges: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # key -> "LOW:HIGH[:log]"
    # applied to every point and to the shared stages
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    target: str = "evaluate"  # the last stage of each point
    seed: int = 0

    def points(self) -> list[dict[str, Any]]:
        """The swept values of each point: the grid's combinations, then the random draws (no duplicates)."""
        drawn = random_points(parse_ranges(self.ranges), int(self.random), self.seed)
        points = unique_points(grid_points(self.grid) + drawn)
        if not points:
            raise UserError("sweep: no points; give --grid KEY=V1,V2 and/or --random N --range KEY=LOW:HIGH")
        clash = [k for k in dict.fromkeys(k for p in points for k in p) if k in self.overrides]
        if clash:
            raise UserError(f"overrides: {', '.join(clash)} is also swept; drop it from one of them")
        return points


@dataclasses.dataclass(frozen=True)
class StageGraph:
    """The DAG as a sweep needs it: the stages up to the target in run order, each one's direct upstream
    stages, and the params keys each reads (dvc.yaml `params:`, e.g. `stage1` or `features.codec`)."""

    order: list[str]
    upstream: Mapping[str, Sequence[str]]
    reads: Mapping[str, Sequence[str]]

    def split(self, keys: Iterable[str]) -> tuple[list[str], list[str]]:
        """(shared stages, per-point stages): a stage runs per point when it reads a swept key (the key, a
        section holding it, or a key inside it) or runs after one that does."""
        keys = list(keys)
        touches = lambda p, k: k == p or k.startswith(p + ".") or p.startswith(k + ".")
        per_point: set[str] = set()
        for stage in self.order:  # run order: a stage's upstream is decided before it
            if any(touches(p, k) for p in self.reads.get(stage, ()) for k in keys) or \
                    any(u in per_point for u in self.upstream.get(stage, ())):
                per_point.add(stage)
        return [s for s in self.order if s not in per_point], [s for s in self.order if s in per_point]


@dataclasses.dataclass
class SweepPoint:
    name: str  # the DVC experiment's name: `<sweep>-<values>`
    values: dict[str, Any]  # the swept keys' values
    overrides: dict[str, Any]  # what the point runs with: the sweep's fixed overrides and its values
    knobs: dict[str, Any] | None = None  # the effective values of KNOBS (None where the params are invalid)
    invalid: str | None = None  # why its params are invalid, naming the key


@dataclasses.dataclass(frozen=True)
class Slots:
    """How many points run at once and on what: one `gpu` slot per visible GPU (each point its own device),
    or, without a GPU, `cpu` slots; the cores are shared by the points that run at once."""

    kind: str  # "gpu" | "cpu"
    count: int
    devices: list[str]  # the visible GPUs (CUDA_VISIBLE_DEVICES values); [] for cpu
    threads: int  # torch threads per point
    lock_dir: Path  # where a gpu slot's device claims live

    def describe(self) -> str:
        on = f" on devices {','.join(self.devices)}" if self.devices else ""
        return f"{self.count} {self.kind} slot(s){on}, {self.threads} torch thread(s) per point"


def _get(params: Any, key: str) -> Any:
    node = params
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def validate_point(params_file: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Typed check of params + overrides without touching the file (UserError naming the key); the knobs'
    effective values."""
    from tristage.config import check_overrides, load_params

    params = load_params(params_file, check_overrides(params_file, overrides))
    return {k: _get(params, k) for k in KNOBS}


@dataclasses.dataclass
class SweepResults:
    rows: list[dict]  # one per point (sweep_results.result_row), in the plan's order
    recommendation: Recommendation
    paths: dict[str, Path]  # csv, json, band_png, front_png

    @property
    def status(self) -> str:
        """The sweep run's MLflow status: FINISHED when a point finished."""
        return "FINISHED" if any(r["status"] == "finished" for r in self.rows) else "FAILED"

    def table(self) -> str:
        return render_table(self.rows, self.recommendation.as_dict())


@dataclasses.dataclass
class SweepPlan:
    name: str
    target: str
    overrides: dict[str, Any]
    points: list[SweepPoint]
    shared: list[str]  # stages run once, in the base workspace
    per_point: list[str]  # stages each point runs
    band: tuple[float, float]  # stage2.speaker_acc_band, with the fixed overrides
    adversary: str  # stage2.adversary (the band's advice depends on it)
    out_dir: Path  # sweeps/<name>/

    @classmethod
    def make(cls, request: SweepRequest, params_file: Path, graph: StageGraph, sweeps_dir: Path) -> SweepPlan:
        """Points named and validated, stages split; UserError (before any work) when nothing can run."""
        from tristage.config import check_overrides, load_params

        name = check_sweep_name(request.name)
        values = request.points()
        fixed = dict(request.overrides)
        params = load_params(params_file, check_overrides(params_file, fixed))  # the fixed ones alone: valid
        points = [_checked(SweepPoint(point_name(name, v), v, {**fixed, **v}), params_file) for v in values]
        if all(p.invalid for p in points):
            raise UserError(f"sweep {name}: every point is invalid; first: {points[0].invalid}")
        keys = list(dict.fromkeys(k for v in values for k in v))
        shared, per_point = graph.split(keys)
        if not per_point:
            raise UserError(f"sweep: no stage up to {request.target!r} reads {', '.join(keys)} "
                            "(dvc.yaml params)")
        lo, hi = params.stage2.speaker_acc_band
        return cls(name, request.target, fixed, points, shared, per_point, (float(lo), float(hi)),
                   params.stage2.adversary, Path(sweeps_dir) / name)

    @property
    def base_name(self) -> str:
        """The workspace (`.tristage/runs/<base_name>`) and DVC experiment prefix of the shared stages."""
        return f"{self.name}-base"

    def describe(self) -> str:
        return (f"sweep {self.name}: {len(self.points)} point(s); shared stages (once): "
                f"{', '.join(self.shared) or '-'}; per point: {', '.join(self.per_point)}")

    def slots(self, kind: str, count: int, devices: Sequence[str], cpus: int, lock_dir: Path) -> Slots:
        """`count` slots of `kind`; the `cpus` cores shared by the points that can run at once."""
        threads = max(1, cpus // max(1, min(count, len(self.points))))
        return Slots(kind, count, list(devices), threads, Path(lock_dir))

    # -- records: points/<point>.json, written when a point ends ----------------------------------------
    def record_path(self, point: str) -> Path:
        return self.out_dir / "points" / f"{point}.json"

    def write_record(self, point: str, record: Mapping[str, Any]) -> None:
        write_json(self.record_path(point), dict(record))

    def read_record(self, point: str) -> dict:
        return read_json(self.record_path(point), {})

    def pending(self, done_experiments: Iterable[str]) -> tuple[dict[str, dict], list[SweepPoint]]:
        """(records known now, the points to run): an invalid point's record is its reason; a point that
        finished in an earlier run whose DVC experiment still exists is skipped."""
        done, records, todo = set(done_experiments), {}, []
        for p in self.points:
            old = self.read_record(p.name)
            if p.invalid is not None:
                records[p.name] = {"status": "failed", "reason": p.invalid, "overrides": p.values}
                self.write_record(p.name, records[p.name])
            elif old.get("status") == "finished" and p.name in done:
                records[p.name] = {**old, "skipped": True}
            else:
                todo.append(p)
        return records, todo

    # -- results ----------------------------------------------------------------------------------------
    def finish(self, records: Mapping[str, dict], meta: Mapping[str, Any] | None = None) -> SweepResults:
        """The table (a row per point), the recommended point and the files in sweeps/<name>/."""
        rows = [result_row(p.name, p.values, records.get(p.name, {}), self.band) for p in self.points]
        rec = recommend(rows, self.band, self.adversary)
        doc_meta = {"sweep": self.name, "target": self.target, "shared_stages": self.shared,
                    "point_stages": self.per_point, "overrides": self.overrides, **(meta or {})}
        return SweepResults(rows, rec, write_results(self.out_dir, rows, rec, self.band, doc_meta))

    def all_valid_done(self, results: SweepResults) -> bool:
        """Every point with valid params finished: nothing left to retry, the base workspace can go."""
        return all(r["status"] == "finished" for r, p in zip(results.rows, self.points) if p.invalid is None)

    def summary(self, records: Mapping[str, dict], results: SweepResults, parent: str | None) -> dict:
        """What the flow returns."""
        rec = results.recommendation
        return {"sweep": self.name, "results": str(results.paths["csv"]), "recommended": rec.point,
                "recommendation": rec.text, "next_grid": rec.next_grid,
                "points": {p.name: records[p.name]["status"] for p in self.points},
                "mlflow_parent_run_id": parent, "shared_stages": self.shared, "point_stages": self.per_point}


def _checked(point: SweepPoint, params_file: Path) -> SweepPoint:
    """The point with its knobs, or with the reason its params are invalid (the file named params.yaml)."""
    try:
        point.knobs = validate_point(params_file, point.overrides)
    except UserError as exc:
        point.invalid = str(exc).replace(str(params_file), "params.yaml")
    return point


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among a point's figures (what its MLflow run logs)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
