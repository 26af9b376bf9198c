"""MLflow tracking for one stage: one run per stage, a child run when a flow gives a parent.

Tracking is best effort: if MLflow cannot be imported or the tracking server is
unreachable, the stage warns once and goes on (its metrics still land in `metrics/`).

Environment (set by `flows/` or the user, never needed for `dvc repro`):
- `MLFLOW_TRACKING_URI`: where to log; default a SQLite file `mlflow.db` in the project.
- `TRISTAGE_TRACKING=0`: switch tracking off.
- `TRISTAGE_PARENT_RUN_ID`: log as a child of this run (the flow run's parent run).
- `TRISTAGE_PREFECT_FLOW_RUN_ID`, `DVC_EXP_NAME`: copied into the run's tags.
"""
from __future__ import annotations

import logging
import math
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Mapping

from tristage.environment import apply_quiet_env

log = logging.getLogger(__name__)

EXPERIMENT = "tristage"
_DVC_TEMP_MARK = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep
_FLOW_RUN_MARK = os.sep + os.path.join(".tristage", "runs") + os.sep  # the Prefect flow's run workspaces


def project_root(start: Path) -> Path:
    """The project folder that owns `start`; a DVC temp experiment (or a flow's run workspace)
    maps to its parent repo, so that `dvc exp run --temp` logs into the same MLflow database
    as `dvc repro`."""
    s = str(start.resolve())
    for mark in (_DVC_TEMP_MARK, _FLOW_RUN_MARK):
        if mark in s:
            return Path(s.split(mark, 1)[0])
    return start.resolve()


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{project_root(root) / 'mlflow.db'}"


def tracking_uri(root: Path) -> str:
    """The one tracking-URI resolver: `MLFLOW_TRACKING_URI` if set, else `mlflow.db` in the project.

    A relative SQLite path (`sqlite:///mlflow.db`) is made absolute against the project root,
    so stages that run in another folder (a flow's run workspace, a DVC temp experiment) log
    to the same database as the caller."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return default_tracking_uri(root)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return f"{prefix}{(project_root(root) / uri[len(prefix):]).resolve()}"
    return uri


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_revision(cwd: Path) -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


class Tracker:
    """Logs to one MLflow run; every call is a no-op after the first failure."""

    def __init__(self, stage: str, root: Path, enabled: bool | None = None):
        self.stage = stage
        self.root = root
        if enabled is None:
            enabled = os.environ.get("TRISTAGE_TRACKING", "1").lower() not in ("0", "false", "off", "no")
        self.enabled = enabled
        self._mlflow = None
        self._run = None
        self.run_id: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "Tracker":
        if not self.enabled:
            return self
        try:
            apply_quiet_env()
            # An unreachable server must cost seconds, not MLflow's default minutes of retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import mlflow  # heavy: imported only when tracking is on
            if os.environ.get("TRISTAGE_LOG_LEVEL", "INFO") != "DEBUG":  # no database-migration chatter
                for name in ("mlflow", "alembic"):
                    logging.getLogger(name).setLevel(logging.WARNING)
            mlflow.set_tracking_uri(tracking_uri(self.root))
            mlflow.set_experiment(EXPERIMENT)
            parent = os.environ.get("TRISTAGE_PARENT_RUN_ID")
            tags = {"stage": self.stage}
            rev = os.environ.get("TRISTAGE_GIT_REV") or git_revision(self.root)
            if rev:
                tags["git_revision"] = rev
            for env, tag in (("DVC_EXP_NAME", "dvc_experiment"), ("TRISTAGE_PREFECT_FLOW_RUN_ID", "prefect_flow_run_id")):
                if os.environ.get(env):
                    tags[tag] = os.environ[env]
            if parent:
                tags["mlflow.parentRunId"] = parent
            self._run = mlflow.start_run(run_name=self.stage, tags=tags, nested=bool(parent))
            self._mlflow = mlflow
            self.run_id = self._run.info.run_id
        except Exception as exc:  # tracking must never stop training
            self._fail("start", exc)
        return self

    def end(self, status: str = "FINISHED") -> None:
        if self._mlflow is not None:
            try:
                self._mlflow.end_run(status=status)
            except Exception as exc:
                self._fail("end", exc)
        self._mlflow = None

    def __enter__(self) -> "Tracker":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED")

    def _fail(self, what: str, exc: Exception) -> None:
        log.warning("MLflow tracking disabled for stage %s (%s failed: %s); metrics still go to metrics/",
                    self.stage, what, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        self._mlflow = None
        self.enabled = False

    # -- logging -----------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        try:
            flat = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(params).items()}
            items = list(flat.items())
            for i in range(0, len(items), 100):
                self._mlflow.log_params(dict(items[i : i + 100]))
        except Exception as exc:
            self._fail("log_params", exc)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self.active:
            return
        clean = {}
        for k, v in flatten(metrics).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(float(v)):
                clean[k] = float(v)
        if not clean:
            return
        try:
            self._mlflow.log_metrics(clean, step=step)
        except Exception as exc:
            self._fail("log_metrics", exc)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        try:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})
        except Exception as exc:
            self._fail("set_tags", exc)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.active or not Path(path).exists():
            return
        try:
            if Path(path).is_dir():
                self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
            else:
                self._mlflow.log_artifact(str(path), artifact_path=artifact_path)
        except Exception as exc:
            self._fail("log_artifact", exc)


class NullTracker(Tracker):
    """A tracker that logs nothing (library calls outside a stage, tests)."""

    def __init__(self, stage: str = "none"):
        super().__init__(stage, Path.cwd(), enabled=False)
