"""The MLflow parent run of one flow run; each stage's run (tristage.runs.tracking) nests under it."""
from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from tristage.environment import apply_quiet_env
from tristage.fsio import read_json
from tristage.runs.tracking import OUTCOME_TAG, ROLE_TAG, ensure_experiment, flatten

log = logging.getLogger(__name__)


def _client(uri: str):
    apply_quiet_env()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def start_parent_run(uri: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any],
                     artifact_root: Path | None = None) -> str | None:
    """Create the flow's parent run; None (with a warning) if MLflow is unusable."""
    try:
        client = _client(uri)
        run = client.create_run(
            ensure_experiment(client, artifact_root), run_name=name, tags={ROLE_TAG: "flow", **tags}
        )
        flat = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            from mlflow.entities import Param

            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        return run.info.run_id
    except Exception as exc:
        log.warning("MLflow parent run not created (%s); stages will log standalone runs", exc)
        return None


def read_stage_metrics(workspace: Path, stages: list[str]) -> dict[str, float]:
    """`metrics/<stage>.json` of the run, flattened to `<stage>.<key>` numbers."""
    out: dict[str, float] = {}
    for stage in stages:
        for k, v in flatten(read_json(workspace / "metrics" / f"{stage}.json", {}), f"{stage}.").items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = float(v)
    return out


def read_stage_bands(workspace: Path, stages: list[str]) -> dict[str, str]:
    """The `*_band` statuses of the run's metrics (`below` / `in` / `above`) as `<stage>/<key>` tags."""
    out: dict[str, str] = {}
    for stage in stages:
        data = read_json(workspace / "metrics" / f"{stage}.json", {})
        out.update({f"{stage}/{k}": v for k, v in flatten(data).items()
                    if k.endswith("_band") and isinstance(v, str)})
    return out


def record_stage_outcomes(uri: str, parent: str | None, workspace: Path, outcomes: Mapping[str, str],
                          tags: Mapping[str, str]) -> None:
    """Every stage of a flow run under its parent run, tagged with what DVC did (OUTCOME_TAG): the runs
    the stages logged themselves ("ran") get the tag; a stage DVC skipped ("unchanged", or "restored"
    from its run cache) logs nothing itself, so it gets a finished child run `<stage> (<outcome>)`
    holding the figures of its outputs in this run (metrics/<stage>.json). Best effort."""
    if parent is None or not outcomes:
        return
    try:
        from mlflow.entities import Metric, RunTag

        client = _client(uri)
        exp_id = client.get_run(parent).info.experiment_id
        logged: dict[str, list[str]] = {}  # a stage retried after a transient failure has two runs
        for r in client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                                    max_results=1000):
            logged.setdefault(r.data.tags.get("stage"), []).append(r.info.run_id)
        for stage, outcome in outcomes.items():
            if stage in logged:
                for run_id in logged[stage]:
                    client.set_tag(run_id, OUTCOME_TAG, outcome)
                continue
            run = client.create_run(exp_id, run_name=stage if outcome == "ran" else f"{stage} ({outcome})",
                                    tags={**tags, "stage": stage, OUTCOME_TAG: outcome,
                                          "mlflow.parentRunId": parent})
            values = read_stage_metrics(workspace, [stage])
            now = int(time.time() * 1000)
            ms = [Metric(k.split(".", 1)[1], v, now, 0) for k, v in values.items() if math.isfinite(v)]
            bands = [RunTag(k.split("/", 1)[1], v) for k, v in read_stage_bands(workspace, [stage]).items()]
            for i in range(0, max(len(ms), 1), 500):
                client.log_batch(run.info.run_id, metrics=ms[i : i + 500], tags=bands if i == 0 else [])
            client.set_terminated(run.info.run_id, "FINISHED")
    except Exception as exc:
        log.warning("MLflow: stage outcomes not recorded under parent run %s (%s)", parent, exc)


def finish_parent_run(uri: str, run_id: str | None, status: str, metrics: Mapping[str, float] | None = None,
                      tags: Mapping[str, str] | None = None) -> None:
    """End the parent run; `metrics` (`stage.key` -> value) are logged as `stage/key`, which the
    MLflow UI groups per stage and which no params key (`stage2.grl_lambda`) can be mistaken for."""
    if run_id is None:
        return
    try:
        client = _client(uri)
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        ms = [Metric(k.replace(".", "/", 1), float(v), now, 0) for k, v in (metrics or {}).items()
              if math.isfinite(float(v))]
        for i in range(0, len(ms), 500):
            client.log_batch(run_id, metrics=ms[i : i + 500])
        if tags:
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        client.set_terminated(run_id, status=status)
    except Exception as exc:
        log.warning("MLflow parent run %s not finalised (%s)", run_id, exc)


def log_sweep_results(uri: str, run_id: str | None, results) -> None:
    """A sweep's table and charts (`tristage.runs.sweep_plan.SweepResults`) as its run's artifacts, the
    recommendation as tags (best effort: the files are in sweeps/<name>/)."""
    if run_id is None:
        return
    try:
        client = _client(uri)
        for path in results.paths.values():
            client.log_artifact(run_id, str(path), artifact_path="sweep")
        rec = results.recommendation
        client.set_tag(run_id, "recommended_point", rec.point or "")
        client.set_tag(run_id, "recommendation", rec.text[:5000])
        client.log_metric(run_id, "points_finished", sum(r["status"] == "finished" for r in results.rows))
        client.log_metric(run_id, "points_failed", sum(r["status"] == "failed" for r in results.rows))
    except Exception as exc:  # tracking is best effort
        log.warning("MLflow: sweep results not logged to run %s (%s)", run_id, exc)
