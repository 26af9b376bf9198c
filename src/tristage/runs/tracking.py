"""MLflow tracking for one stage: one run per stage, a child run when a flow gives a parent.

Tracking is best effort: if MLflow cannot be imported or the tracking server is
unreachable, the stage warns once and goes on (its metrics still land in `metrics/`).

Environment (set by `flows/` or the user, never needed for `dvc repro`):
- `MLFLOW_TRACKING_URI`: where to log; default a SQLite file `mlflow.db` in the project.
- `TRISTAGE_TRACKING=0`: switch tracking off.
- `TRISTAGE_PARENT_RUN_ID`: log as a child of this run (the flow run's parent run).
- `TRISTAGE_PREFECT_FLOW_RUN_ID`, `DVC_EXP_NAME`: copied into the run's tags.

Grouping: the stage runs of one `dvc repro` / `dvc exp run` are children of one parent run per
invocation (tag `tristage.role=dvc`, named after the DVC experiment, else `repro@<rev>`); the
invocation is the `dvc` process the stage runs under. A Prefect flow run makes its own parent
(`tristage.role=flow`). A stage run outside DVC (`python -m steps.X`) stays a top-level run.
Final figures go to the parent as `<stage>/<key>` too (the flow writes them for a flow run; the
stage itself for a `dvc repro` / `dvc exp run` parent), so a parent row shows the run's key figures.

The MLflow UI: the experiment `tristage` is tagged `mlflow.experimentKind=custom_model_development`,
but MLflow 3.17's UI lays an experiment out by its own GenAI / Model training switch (top left,
remembered per browser, GenAI by default) and ignores that tag. `runs_url()` is a link that opens the
runs table in the Model-training layout (`workflowType=machine_learning`) with the saved view
`tristage` (`viewStateShareKey=tristage`: an experiment tag the UI also lists under "Views"), whose
columns are the key figures (`RUNS_VIEW_COLUMNS`). `tristage summary` and `make mlflow` print it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from tristage.environment import apply_quiet_env

log = logging.getLogger(__name__)

EXPERIMENT = "tristage"
ROLE_TAG = "tristage.role"  # "flow" (a Prefect flow run's parent), "dvc" (one dvc repro / exp run)
INVOCATION_TAG = "tristage.invocation"
# MLflow 3's experiment type (its API, older UIs; the 3.17 UI goes by `workflowType`: see runs_url).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
OUTCOME_TAG = "dvc_outcome"  # on a flow's stage runs: "ran", "restored" (DVC's run cache) or "unchanged"
UI_URL = "http://127.0.0.1:5000"  # `make mlflow`
# The saved view of the runs table: MLflow's shared-view experiment tag (`mlflow.sharedViewState.<id>`),
# whose value is the envelope the UI's "Views" menu writes ({name, createdAt, updatedAt, state}; `state`
# the view as JSON). The UI never changes a view by itself; "Override saved view" rewrites the tag (then
# it lacks VIEW_MARK and stays the user's).
RUNS_VIEW_ID = "tristage"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_ID}"
RUNS_VIEW_NAME = "tristage: pipeline runs and key figures"
VIEW_MARK, VIEW_VERSION = "tristageView", 1
# (column type, key): a parent run's figures (`<stage>/<key>`), then a stage run's own.
RUNS_VIEW_COLUMNS = (
    ("tags", OUTCOME_TAG),
    ("tags", "stage2/speaker_acc_band"),
    ("metrics", "stage2/grl_lambda"),
    ("metrics", "stage2/speaker_loss_weight"),
    ("metrics", "stage2/val_speaker_acc"),
    ("metrics", "stage2/speaker_acc"),
    ("metrics", "stage1/val_mel_loss"),
    ("metrics", "stage2/val_mel_loss"),
    ("metrics", "stage3/val_mel_loss"),
    ("metrics", "evaluate/stage1.speaker_probe_acc"),
    ("metrics", "evaluate/stage2.speaker_probe_acc"),
    ("metrics", "evaluate/speaker_probe_acc"),
    ("metrics", "evaluate/emotion_probe_acc"),
    ("metrics", "evaluate/caption_cosine_mean"),
    ("metrics", "val_mel_loss"),
    ("metrics", "val_speaker_acc"),
)
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


def ensure_experiment(client, artifact_root: Path | None = None) -> str:
    """The id of the `tristage` experiment, created if missing, tagged as model training, with the saved
    view of its runs (RUNS_VIEW_TAG; an older view of ours is updated, a view the user saved over it kept)."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        location = artifact_root.resolve().as_uri() if artifact_root else None
        try:
            return client.create_experiment(EXPERIMENT, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
                                                  RUNS_VIEW_TAG: runs_view_tag_value()})
        except Exception:  # created concurrently
            exp = client.get_experiment_by_name(EXPERIMENT)
    kind = exp.tags.get(EXPERIMENT_KIND_TAG, "")
    if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":  # a user's explicit choice stays
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if _view_outdated(exp.tags.get(RUNS_VIEW_TAG)):
        client.set_experiment_tag(exp.experiment_id, RUNS_VIEW_TAG, runs_view_tag_value())
    return exp.experiment_id


def _column_id(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's column ids (its "canonical sort keys")



def runs_view_state() -> dict[str, Any]:
    """The saved view: every active run, newest first (child stage runs under their parent), the key
    figures as columns in RUNS_VIEW_COLUMNS order, wide enough for their names."""
    cols = [_column_id(kind, key) for kind, key in RUNS_VIEW_COLUMNS]
    return {
        "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
        "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
        "selectedColumns": cols, "columnOrder": cols,
        "columnWidths": {c: max(90, 7 * len(key) + 30) for c, (_, key) in zip(cols, RUNS_VIEW_COLUMNS)},
        VIEW_MARK: VIEW_VERSION,
    }


def runs_view_tag_value(now_ms: int | None = None) -> str:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps({"name": RUNS_VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms,
                       "state": json.dumps(runs_view_state())})


def _view_outdated(value: str | None) -> bool:
    """No view yet, or one this module wrote at an older VIEW_VERSION (a user's own view is kept)."""
    if not value:
        return True
    try:
        state = json.loads(json.loads(value)["state"])
    except (ValueError, KeyError, TypeError):
        return False  # not ours (e.g. compressed by the UI): the user's
    mark = state.get(VIEW_MARK) if isinstance(state, dict) else None
    return isinstance(mark, int) and mark < VIEW_VERSION


def runs_url(experiment_id: str | None, ui: str = UI_URL) -> str:
    """The MLflow UI link to the experiment's runs in the Model-training layout with the saved view (the
    experiments list when the id is unknown)."""
    if not experiment_id:
        return f"{ui.rstrip('/')}/#/experiments"
    return (f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_ID}")


def runs_link(uri: str) -> str:
    """runs_url() for the store at `uri`: its tracking server's UI, else the one `make mlflow` starts."""
    ui = uri if uri.startswith(("http://", "https://")) else UI_URL
    return runs_url(experiment_id(uri), ui)


def experiment_id(uri: str, timeout_s: float = 2.0) -> str | None:
    """The `tristage` experiment's id in the store at `uri`, without importing mlflow (a SQLite file is
    read directly, a tracking server asked over HTTP); None if there is none or it can't be read."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        import sqlite3

        path = Path(uri[len(prefix):])
        if not path.is_file():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True,
                                                    timeout=timeout_s)) as db:
                row = db.execute("SELECT experiment_id FROM experiments WHERE name = ? "
                                 "AND lifecycle_stage = 'active'", (EXPERIMENT,)).fetchone()
        except sqlite3.Error:
            return None
        return str(row[0]) if row else None
    if uri.startswith(("http://", "https://")):
        import urllib.parse
        import urllib.request

        q = urllib.parse.urlencode({"experiment_name": EXPERIMENT})
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{q}",
                                        timeout=timeout_s) as r:
                return str(json.loads(r.read())["experiment"]["experiment_id"])
        except (OSError, ValueError, KeyError):
            return None
    return None


def dvc_invocation(pid: int | None = None, max_depth: int = 8) -> str | None:
    """An id of the `dvc` process (`dvc repro`, `dvc exp run`, a queue worker) that this process
    runs under: boot id, pid and start time of the nearest `dvc` ancestor. None outside DVC or
    where /proc is missing."""
    pid = os.getppid() if pid is None else pid
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return None
    for _ in range(max_depth):
        if pid <= 1:
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        if any(Path(a).name == "dvc" for a in argv[:3]):
            return f"{boot}-{pid}-{fields[19]}"  # field 22 of stat: start time in clock ticks
        pid = int(fields[1])
    return None


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
        self.last_step: int | None = None  # the latest step given to log_metrics
        # the stage's final figures (log_metrics without a step; numbers, and `*_band` statuses): what
        # end() copies to a `dvc repro` / `dvc exp run` parent run as `<stage>/<key>`
        self.final: dict[str, Any] = {}

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
            from mlflow.tracking import MlflowClient

            uri = tracking_uri(self.root)
            mlflow.set_tracking_uri(uri)
            client = MlflowClient(tracking_uri=uri)
            experiment_id = ensure_experiment(client)
            mlflow.set_experiment(experiment_id=experiment_id)
            parent = os.environ.get("TRISTAGE_PARENT_RUN_ID")
            tags = {"stage": self.stage}
            rev = os.environ.get("TRISTAGE_GIT_REV") or git_revision(self.root)
            if rev:
                tags["git_revision"] = rev
            for env, tag in (("DVC_EXP_NAME", "dvc_experiment"),
                             ("TRISTAGE_PREFECT_FLOW_RUN_ID", "prefect_flow_run_id")):
                if os.environ.get(env):
                    tags[tag] = os.environ[env]
            if not parent:
                parent = self._invocation_parent(client, experiment_id, rev)
            if parent:
                tags["mlflow.parentRunId"] = parent
            self._run = mlflow.start_run(run_name=self.stage, tags=tags, nested=bool(parent))
            self._mlflow = mlflow
            self.run_id = self._run.info.run_id
        except Exception as exc:  # tracking must never stop training
            self._fail("start", exc)
        return self

    def _invocation_parent(self, client, experiment_id: str, rev: str | None) -> str | None:
        """The parent run of this `dvc repro` / `dvc exp run` (found by its invocation tag, else
        created); None outside DVC. It is RUNNING while a stage runs and ends with the last one."""
        key = dvc_invocation()
        self._invocation_run_id = None
        if key is None:
            return None
        found = client.search_runs([experiment_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{key}'",
                                   max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            import time

            exp_name = os.environ.get("DVC_EXP_NAME")
            name = exp_name or f"repro@{(rev or 'norev')[:7]} {time.strftime('%m-%d %H:%M')}"
            tags = {ROLE_TAG: "dvc", INVOCATION_TAG: key, "git_revision": rev or ""}
            if exp_name:
                tags["dvc_experiment"] = exp_name
            run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        self._invocation_run_id = run_id
        return run_id

    def end(self, status: str = "FINISHED") -> None:
        if self._mlflow is not None:
            try:
                self._mlflow.end_run(status=status)
                parent = getattr(self, "_invocation_run_id", None)
                if parent:  # the invocation's parent ends with its latest stage (FAILED if that failed)
                    from mlflow.tracking import MlflowClient

                    client = MlflowClient(tracking_uri=self._mlflow.get_tracking_uri())
                    log_to_parent(client, parent, self.stage, self.final)
                    client.set_terminated(parent, status)
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
        """Numbers only (booleans, strings, None and non-finite values are left out, never logged as 0).

        Each name is one curve at its own steps: a training stage logs its train-window figures
        (`mel_loss`, ...) at its log steps and its validation figures (`val_mel_loss`, ...) at its
        evaluations. Without `step`, figures go at the latest step logged so far (a stage's final
        figures at its last training step, where its curves end, not at step 0 where they begin);
        at step 0 where nothing was stepped."""
        if step is None:
            self._keep_final(metrics)
            step = self.last_step
        elif self.last_step is None or step > self.last_step:
            self.last_step = step
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

    def _keep_final(self, metrics: Mapping[str, Any]) -> None:
        """Remember final figures for the parent; a `*_band` status (a string) also tags this run."""
        bands = {}
        for k, v in flatten(metrics).items():
            if k.startswith("timing/"):
                continue
            if isinstance(v, str) and k.endswith("_band"):
                self.final[k] = bands[k] = v
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                self.final[k] = float(v)
        if bands:
            self.set_tags(bands)

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

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """A table (list of row dicts) as an MLflow table artifact (shown in the UI's artifact view)."""
        if not self.active or not rows:
            return
        try:
            import pandas as pd

            self._mlflow.log_table(pd.DataFrame(rows), artifact_file=artifact_file)
        except Exception as exc:
            self._fail("log_table", exc)


def log_to_parent(client, run_id: str, stage: str, final: Mapping[str, Any]) -> None:
    """A stage's final figures on its parent run as `<stage>/<key>`: numbers as metrics, `*_band`
    statuses as tags (the names the flow's parent runs use, and the saved view's columns)."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(f"{stage}/{k}", float(v), now, 0) for k, v in final.items() if not isinstance(v, str)]
    tags = [RunTag(f"{stage}/{k}", v) for k, v in final.items() if isinstance(v, str)]
    for i in range(0, max(len(metrics), 1), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500], tags=tags if i == 0 else [])


class NullTracker(Tracker):
    """A tracker that logs nothing (library calls outside a stage, tests)."""

    def __init__(self, stage: str = "none"):
        super().__init__(stage, Path.cwd(), enabled=False)
