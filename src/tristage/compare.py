"""`tristage compare`: recent runs side by side, one row per flow run (MLflow parent run).

    tristage compare                 # the 20 most recent runs, newest first
    tristage compare --format csv    # or json; --uri to read another MLflow store

A row gathers the stage runs of one pipeline run: a parent run (a Prefect flow run's, or one
`dvc repro` / `dvc exp run`'s) and its children, or, for stage runs without a parent, the
latest run of each stage per DVC experiment (or per git revision). Columns: the GRL settings,
the validation mel_loss per stage, the stage-2 GRL speaker_acc on the training window and on
validation and its band, and the evaluate stage's probes; `val_`/`train_` say which data a
figure comes from, and figures are rounded to 6 significant digits. `*` marks the best run:
speaker_acc in the band, then the lowest final validation mel_loss.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from tristage.environment import apply_quiet_env
from tristage.evaluation.metrics import band_status

DEFAULT_BAND = (0.3, 0.6)


@dataclass
class RunRecord:
    run_id: str
    name: str
    start_time: int  # ms since the epoch
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def stage(self) -> str | None:
        return self.tags.get("stage")

    @property
    def parent(self) -> str | None:
        return self.tags.get("mlflow.parentRunId")

    @property
    def is_flow(self) -> bool:
        """A parent run: a Prefect flow run's ("flow") or one `dvc repro` / `dvc exp run`'s ("dvc")."""
        return self.tags.get("tristage.role") in ("flow", "dvc")


@dataclass
class Group:
    key: str
    name: str
    start_time: int
    status: str
    parent: RunRecord | None = None
    stages: dict[str, RunRecord] = field(default_factory=dict)  # latest run per stage


# (column, where to read it). A source is (stage, "metric"|"param", key); the first hit wins.
# `val_` columns are held-out figures (the stage's validation split, or the evaluate stage on it);
# `train_` columns are averages over the last training window (batches the model trained on).
COLUMNS: list[tuple[str, list[tuple[str, str, str]]]] = [
    (
        "grl_lambda",
        [
            ("stage2", "metric", "grl_lambda"),
            ("stage2", "param", "stage2.grl_lambda"),
            ("flow", "param", "overrides.stage2.grl_lambda"),
        ],
    ),
    (
        "spk_loss_w",
        [
            ("stage2", "metric", "speaker_loss_weight"),
            ("stage2", "param", "stage2.speaker_loss_weight"),
            ("flow", "param", "overrides.stage2.speaker_loss_weight"),
        ],
    ),
    ("s1_val_mel_loss", [("stage1", "metric", "val_mel_loss"), ("evaluate", "metric", "stage1.mel_loss")]),
    ("s2_val_mel_loss", [("stage2", "metric", "val_mel_loss"), ("evaluate", "metric", "stage2.mel_loss")]),
    ("s3_val_mel_loss", [("stage3", "metric", "val_mel_loss"), ("evaluate", "metric", "stage3.mel_loss")]),
    ("s2_train_spk_acc", [("stage2", "metric", "speaker_acc")]),
    (
        "s2_val_spk_acc",
        [("stage2", "metric", "val_speaker_acc"), ("evaluate", "metric", "stage2.speaker_acc")],
    ),
    ("band", []),  # computed: s2_val_spk_acc (else s2_train_spk_acc) against stage2.speaker_acc_band
    ("s1_spk_probe", [("evaluate", "metric", "stage1.speaker_probe_acc")]),
    ("s2_spk_probe", [("evaluate", "metric", "stage2.speaker_probe_acc")]),
    ("final_spk_probe", [("evaluate", "metric", "speaker_probe_acc")]),
    ("final_emo_probe", [("evaluate", "metric", "emotion_probe_acc")]),
    (
        "caption_cos",
        [("evaluate", "metric", "caption_cosine_mean"), ("caption_vectors", "metric", "caption_cosine_mean")],
    ),
]
LEGEND = (
    "val_ = held-out validation rows; train_ = the last training window; probes: fresh classifiers on the "
    "frozen emotion vectors (held-out accuracy)."
)
SIGNIFICANT = 6  # figures kept in every output: 0.10000000000000002 -> 0.1


def group_runs(runs: Iterable[RunRecord]) -> list[Group]:
    """Gather stage runs into pipeline runs, newest first."""
    runs = list(runs)
    by_id = {r.run_id: r for r in runs}
    groups: dict[str, Group] = {}
    for r in runs:
        if r.is_flow:
            g = groups.setdefault(r.run_id, Group(r.run_id, r.name, r.start_time, r.status))
            g.parent, g.name, g.start_time, g.status = r, r.name, r.start_time, r.status
    for r in sorted(runs, key=lambda r: r.start_time):
        if r.is_flow or r.stage is None:
            continue
        if r.parent:
            key = r.parent
            p = by_id.get(r.parent)
            g = groups.setdefault(
                key, Group(key, p.name if p else key[:8], r.start_time, p.status if p else r.status)
            )
        else:
            exp = r.tags.get("dvc_experiment")
            key = f"exp:{exp}" if exp else f"rev:{r.tags.get('git_revision', '?')[:7]}"
            g = groups.setdefault(key, Group(key, exp or f"repro@{key[4:]}", r.start_time, r.status))
            g.start_time = max(g.start_time, r.start_time)
            if r.status != "FINISHED" or g.status != "FINISHED":
                g.status = r.status if r.status != "FINISHED" else g.status
        g.stages[r.stage] = r  # sorted by time: the latest run of a stage wins
    return sorted(groups.values(), key=lambda g: g.start_time, reverse=True)


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return float(f"{f:.{SIGNIFICANT}g}") if math.isfinite(f) else None


def _lookup(g: Group, sources: Sequence[tuple[str, str, str]]) -> float | None:
    for stage, kind, key in sources:
        run = g.parent if stage == "flow" else g.stages.get(stage)
        if run is None:
            continue
        v = _number((run.metrics if kind == "metric" else run.params).get(key))
        if v is not None:
            return v
    return None


def _band(g: Group) -> tuple[float, float]:
    for run in (g.stages.get("stage2"), g.stages.get("evaluate"), g.parent):
        if run is None:
            continue
        raw = run.params.get("stage2.speaker_acc_band") or run.params.get("overrides.stage2.speaker_acc_band")
        if raw:
            try:
                lo, hi = json.loads(raw)
                return float(lo), float(hi)
            except (ValueError, TypeError):
                pass
    return DEFAULT_BAND


def table_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        row: dict[str, Any] = {"run": g.name, "started": _fmt_time(g.start_time), "status": g.status,
                               "stages": len(g.stages)}
        for col, sources in COLUMNS:
            row[col] = _lookup(g, sources) if sources else None
        if row["band"] is None:
            acc = row["s2_val_spk_acc"] if row["s2_val_spk_acc"] is not None else row["s2_train_spk_acc"]
            row["band"] = band_status(acc, _band(g))
        row["best"] = False
        rows.append(row)
    final = lambda r: next((r[c] for c in ("s3_val_mel_loss", "s2_val_mel_loss", "s1_val_mel_loss")  # noqa: E731
                             if r[c] is not None), math.inf)
    in_band = [r for r in rows if r["band"] == "in"]
    if in_band:
        min(in_band, key=final)["best"] = True
    return rows


def _fmt_time(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000).strftime("%m-%d %H:%M") if ms else "-"


def render(rows: Sequence[dict[str, Any]], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(list(rows), indent=2)
    cols = ["run", "started", "status", "stages"] + [c for c, _ in COLUMNS]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols + ["best"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    cell = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    body = [[("*" if r["best"] else " ") + cell(r["run"])] + [cell(r[c]) for c in cols[1:]] for r in rows]
    head = [" run"] + cols[1:]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    if not rows:
        out.append("(no tristage runs yet: run `dvc repro` or the Prefect flow first)")
    else:
        out.append("* = GRL speaker_acc in the band, then the lowest final val_mel_loss.  " + LEGEND)
        out.append("Details: `mlflow ui`, `dvc exp show --only-changed`.")
    return "\n".join(out)


def load_runs(uri: str, limit: int = 20) -> list[RunRecord]:
    """The stage and flow runs of the `tristage` MLflow experiment behind the `limit` newest pipeline runs."""
    import warnings

    apply_quiet_env()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.tracking import MlflowClient

    from tristage.tracking import EXPERIMENT

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    # Each pipeline run has at most ~10 stage runs; read enough to fill `limit` rows.
    found = client.search_runs(
        [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit * 12
    )
    return [
        RunRecord(
            r.info.run_id,
            r.info.run_name or r.info.run_id[:8],
            r.info.start_time or 0,
            r.info.status,
            dict(r.data.tags),
            dict(r.data.params),
            dict(r.data.metrics),
        )
        for r in found
    ]


def compare(uri: str | None = None, limit: int = 20, fmt: str = "table", out=None) -> list[dict[str, Any]]:
    from tristage.stage import default_params_path
    from tristage.tracking import tracking_uri

    uri = uri or tracking_uri(default_params_path().parent)
    rows = table_rows(group_runs(load_runs(uri, limit))[:limit])
    (out or sys.stdout).write(render(rows, fmt) + "\n")
    return rows
