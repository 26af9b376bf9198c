"""The fine-tune's MLflow run: its params, training and report figures, the report with its audio, and the
model folder as a pyfunc model (registered under `finetune.track.register_as` when set: `--register`).

    run_track(fp, work) -> {"tracked": bool, "run_id": ..., "model_uri": ..., "registered": ...}

One run per fine-tune (named `finetune <speaker>`, tag `tristage.role=finetune`), a child of the flow's
run when a Prefect flow runs it (TRISTAGE_PARENT_RUN_ID). The tracking URI is `MLFLOW_TRACKING_URI`, else
`mlflow.db` in the folder the command ran from (`finetune.project`). Best effort, like every stage's
tracking: a failure warns and the fine-tune goes on. `TRISTAGE_TRACKING=0` or `track.enabled: false`
turns it off.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from tristage.finetune.config import FinetuneParams

log = logging.getLogger("tristage.finetune")


def enabled(fp: FinetuneParams) -> bool:
    env = os.environ.get("TRISTAGE_TRACKING", "1").lower() not in ("0", "false", "off", "no")
    return fp.track.enabled and env


def _numbers(d: dict, prefix: str) -> dict[str, float]:
    from tristage.runs.tracking import flatten

    return {f"{prefix}{k}": float(v) for k, v in flatten(d).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _log(mlflow, fp: FinetuneParams, work: Path) -> dict:
    from tristage.fsio import read_json
    from tristage.runs.tracking import flatten
    from tristage.synthesis.pyfunc import log_synthesis_model

    params = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(fp.model_dump(mode="json")).items()}
    items = list(params.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))
    metrics = _numbers(read_json(work / "metrics" / "train.json"), "train/")
    metrics.update(_numbers(read_json(work / "metrics" / "report.json"), ""))
    mlflow.log_metrics(metrics)
    mlflow.log_artifacts(str(work / "report"), artifact_path="report")
    info = log_synthesis_model(work / "model", "model", fp.track.register_as)
    return dict(model_uri=info.model_uri)


def run_track(fp: FinetuneParams, work: Path) -> dict:
    """The step (never fails the fine-tune: a tracking failure is a warning and `tracked: false`)."""
    if not enabled(fp):
        return dict(tracked=False, reason="tracking off (finetune.track.enabled / TRISTAGE_TRACKING=0)")
    root = Path(fp.project or work)
    try:
        import mlflow
        from mlflow.tracking import MlflowClient

        from tristage.runs.tracking import ROLE_TAG, ensure_experiment, tracking_uri

        uri = tracking_uri(root)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment_id=ensure_experiment(MlflowClient(uri), root / "mlartifacts"))
        tags = {"stage": "finetune", ROLE_TAG: "finetune", "speaker": fp.speaker,
                "base_model": Path(fp.model).name}
        parent = os.environ.get("TRISTAGE_PARENT_RUN_ID")
        if parent:
            tags["mlflow.parentRunId"] = parent
        with mlflow.start_run(run_name=f"finetune {fp.speaker}", tags=tags, nested=bool(parent)) as run:
            out = _log(mlflow, fp, work)
        log.info("finetune: MLflow run %s%s", run.info.run_id,
                 f", model registered as {fp.track.register_as}" if fp.track.register_as else "")
        return dict(tracked=True, run_id=run.info.run_id, registered=fp.track.register_as, **out)
    except Exception as exc:  # tracking must never fail the fine-tune
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("finetune: MLflow tracking failed (%s); the model folder and report are complete", msg)
        return dict(tracked=False, reason=msg)
