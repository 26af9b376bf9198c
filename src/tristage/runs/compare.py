"""`tristage compare`: recent runs side by side, one row per flow run (MLflow parent run).

    tristage compare                 # the 20 most recent runs, newest first, in 120 columns
    tristage compare --format csv    # or json (every column); --uri to read another MLflow store

A row gathers the stage runs of one pipeline run: a parent run (a Prefect flow run's, or one
`dvc repro` / `dvc exp run`'s) and its children, or, for stage runs without a parent, the
latest run of each stage per DVC experiment (or per git revision). Columns: the GRL settings,
the validation mel_loss per stage, the stage-2 GRL speaker_acc on the training window and on
validation and its band, and the evaluate stage's probes; `val_`/`train_` say which data a
figure comes from, and figures are rounded to 6 significant digits. `*` marks the best run:
speaker_acc in the band, then the lowest final validation mel_loss.

The table fits a 120-column terminal: the key columns (`TABLE_COLUMNS`) under short headers grouped
by what they measure, the run name shortened to the room left; `columns=` picks others by their full
names (`ALL_COLUMNS`, the names csv and json use), `"all"` shows every one.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tristage.environment import apply_quiet_env
from tristage.training.band import band_status

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

ALL_COLUMNS = ["run", "started", "status", "stages"] + [c for c, _ in COLUMNS]
# The table's default: what the experiment loop compares (what a run changed, what it gave).
TABLE_COLUMNS = ["run", "started", "status", "grl_lambda", "spk_loss_w", "s1_val_mel_loss", "s2_val_mel_loss",
                 "s3_val_mel_loss", "s2_train_spk_acc", "s2_val_spk_acc", "band", "final_spk_probe",
                 "final_emo_probe"]
# column -> (group, header) in the table: a first header line names each group once, above its columns.
TABLE_HEADS: dict[str, tuple[str, str]] = {
    "grl_lambda": ("stage2 GRL", "lambda"),
    "spk_loss_w": ("stage2 GRL", "spk_w"),
    "s1_val_mel_loss": ("val_mel_loss", "s1"),
    "s2_val_mel_loss": ("val_mel_loss", "s2"),
    "s3_val_mel_loss": ("val_mel_loss", "s3"),
    "s2_train_spk_acc": ("s2 speaker_acc", "train"),
    "s2_val_spk_acc": ("s2 speaker_acc", "val"),
    "band": ("s2 speaker_acc", "band"),
    "s1_spk_probe": ("probes", "s1_spk"),
    "s2_spk_probe": ("probes", "s2_spk"),
    "final_spk_probe": ("probes", "spk"),
    "final_emo_probe": ("probes", "emo"),
}
TABLE_LEGEND = (
    "s1/s2/s3: stage; val = held-out rows, train = the last training window; band: s2 val speaker_acc (else "
    "train) against stage2.speaker_acc_band; probes: fresh classifiers on the final emotion vectors (spk = "
    "speaker, emo = emotion; held-out accuracy). * = in the band, then the lowest final val_mel_loss. More "
    "columns: --columns NAME,... (names as in --format csv) or --all."
)
DETAILS = "Details: `mlflow ui`; DVC's side: `make exp-show`, `dvc metrics diff` (README, experiment loop)."
WIDTH = 120  # the table's width: a 120-column terminal
MIN_RUN_WIDTH = 12  # the run column is shortened to fit, down to this


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
    final = lambda r: next((r[c] for c in ("s3_val_mel_loss", "s2_val_mel_loss", "s1_val_mel_loss")
                             if r[c] is not None), math.inf)
    in_band = [r for r in rows if r["band"] == "in"]
    if in_band:
        min(in_band, key=final)["best"] = True
    return rows


def _fmt_time(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000).strftime("%m-%d %H:%M") if ms else "-"


def table_columns(columns: str | Sequence[str] | None = None, known: Sequence[str] = ALL_COLUMNS,
                  default: Sequence[str] = TABLE_COLUMNS) -> list[str]:
    """The table's columns: the key ones (None), every one ("all"), or these (names as in csv/json; a string
    is split at commas); `run` always comes first."""
    if columns is None:
        return list(default)
    if isinstance(columns, str):
        if columns.strip() == "all":
            return list(known)
        columns = columns.split(",")
    picked = [c.strip() for c in columns if c.strip()]
    unknown = [c for c in picked if c not in known]
    if unknown:
        from tristage.errors import UserError

        raise UserError(f"unknown column {', '.join(map(repr, unknown))}; "
                        f"choose from {', '.join(known)} (or all)")
    return ["run"] + [c for c in dict.fromkeys(picked) if c != "run"]


def _shorten(text: str, width: int) -> str:
    """`text` in `width` characters, its middle left out (`…`): run names differ at both ends
    (`repro@<rev> <time>`, `<sweep>-grl_lambda0.3-speaker_loss_weight0.1`)."""
    if len(text) <= width:
        return text
    head = (width - 1 + 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def render_table(rows: Sequence[dict[str, Any]], columns: str | Sequence[str] | None = None,
                 width: int | None = WIDTH, known: Sequence[str] = ALL_COLUMNS,
                 default: Sequence[str] = TABLE_COLUMNS, legend: str = TABLE_LEGEND) -> str:
    """The runs as a text table of at most `width` characters a line where the chosen columns allow: the
    run names are shortened to fit, to no less than MIN_RUN_WIDTH (None: no limit). Two header lines: each
    group's name over its columns (one space apart inside a group, two between groups), then each column's
    short header."""
    cols = table_columns(columns, known, default)
    cell = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    body = [[("*" if r.get("best") else " ") + cell(r.get("run"))] + [cell(r.get(c)) for c in cols[1:]]
            for r in rows]
    groups = [TABLE_HEADS.get(c, ("", c))[0] for c in cols]
    head = [" run"] + [TABLE_HEADS.get(c, ("", c))[1] for c in cols[1:]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    gaps = [0] + [1 if g and g == groups[i - 1] else 2 for i, g in enumerate(groups) if i > 0]
    spans: list[list] = []  # [group, first column, last column]
    for i, g in enumerate(groups):
        if g and spans and spans[-1][0] == g and spans[-1][2] == i - 1:
            spans[-1][2] = i
        elif g:
            spans.append([g, i, i])
    span_width = lambda a, b: sum(widths[a : b + 1]) + sum(gaps[a + 1 : b + 1])
    for g, a, b in spans:  # a group's name fits over its columns
        widths[b] += max(0, len(g) - span_width(a, b))
    # The run names (and a last `changed` column) take the room the other columns leave, the wider first,
    # down to MIN_RUN_WIDTH each; where that is not enough (many columns asked for), they stay whole.
    elastic = [0] + ([len(cols) - 1] if cols[-1] == "changed" else [])
    over = 0 if width is None else sum(widths) + sum(gaps) - width
    if 0 < over <= sum(max(0, widths[i] - MIN_RUN_WIDTH) for i in elastic):
        for _ in range(over):
            widths[max(elastic, key=lambda i: widths[i])] -= 1
        body = [[_shorten(b[0], widths[0])] + b[1:] for b in body]
        if len(elastic) > 1:  # csv and json keep all of it
            body = [b[:-1] + [b[-1] if len(b[-1]) <= widths[-1] else b[-1][: widths[-1] - 1] + "…"]
                    for b in body]

    def line(cells: Sequence[str]) -> str:
        return "".join(" " * gap + c.ljust(w) for c, w, gap in zip(cells, widths, gaps)).rstrip()

    out = []
    if spans:
        top, at = [], 0
        for g, a, b in spans:
            start = sum(widths[:a]) + sum(gaps[: a + 1])
            n = span_width(a, b)
            top.append(" " * (start - at) + g + (" " + "-" * (n - len(g) - 1) if n > len(g) + 1 else ""))
            at = start + len(top[-1]) - (start - at)
        out.append("".join(top).rstrip())
    out += [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    if not rows:
        out.append("(no tristage runs yet: run `dvc repro` or the Prefect flow first)")
    else:
        wrap = width or max(len(x) for x in out)
        out += textwrap.wrap(legend, wrap)
    return "\n".join(out)


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns) + ["best"], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def render(rows: Sequence[dict[str, Any]], fmt: str = "table", columns: str | Sequence[str] | None = None,
           width: int | None = WIDTH) -> str:
    """The runs as a table (`render_table`), or csv / json with every column under its full name."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2)
    if fmt == "csv":
        return _csv(rows, ALL_COLUMNS)
    return render_table(rows, columns, width, legend=f"{TABLE_LEGEND} {DETAILS}")


def load_runs(uri: str, limit: int = 20) -> list[RunRecord]:
    """The stage and flow runs of the `tristage` MLflow experiment behind the `limit` newest pipeline runs."""
    import warnings

    apply_quiet_env()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.tracking import MlflowClient

    from tristage.runs.tracking import EXPERIMENT

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


def compare(uri: str | None = None, limit: int = 20, fmt: str = "table", out=None,
            columns: str | Sequence[str] | None = None, width: int | None = WIDTH) -> list[dict[str, Any]]:
    """Print the `limit` newest pipeline runs (`render`: `columns` and `width` shape the table); returns the
    rows (every column)."""
    from tristage.runs.tracking import tracking_uri
    from tristage.stage import default_params_path

    cols = table_columns(columns)  # a misspelt column fails before MLflow is read
    uri = uri or tracking_uri(default_params_path().parent)
    rows = table_rows(group_runs(load_runs(uri, limit))[:limit])
    (out or sys.stdout).write(render(rows, fmt, cols, width) + "\n")
    return rows


# --- DVC experiments in the same table --------------------------------------------------------------------
# `dvc exp show` prints every param and metric (800+ columns; `metrics/stage3.json:val_mel_loss`-wide
# headers), so that in 120 columns only about five columns fit. `exp_show` reads `dvc exp show --json` and
# prints the rows of DVC's table (workspace, baseline commits, their experiments) with this table's columns,
# plus `changed`: the params that differ between the rows (what `--only-changed` keeps), other than the
# GRL ones shown.
DVC_COLUMNS = ALL_COLUMNS + ["changed"]
# `status` only where a row's is not plain (failed, queued, running)
DVC_TABLE_COLUMNS = [c for c in TABLE_COLUMNS if c != "status"] + ["changed"]
PLAIN_STATUS = {"workspace", "commit", "success", "exp"}
SHOWN_PARAMS = ("stage2.grl_lambda", "stage2.speaker_loss_weight")
DVC_LEGEND = (
    f"{TABLE_LEGEND} changed: the row's params that differ from its baseline's (HEAD's for the workspace "
    "and other commits), all of them with --format csv. Other dvc exp show options pass on: -A, -n 3, --rev "
    "REV (make exp-show ARGS='-n 3 --columns all'); one run against another: dvc metrics diff REV1 REV2."
)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys (`stage2.grl_lambda`); lists as JSON text (`[0.3, 0.6]`)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def _dvc_states(exps: Sequence[Mapping[str, Any]]) -> Iterable[tuple[Mapping[str, Any], str, int]]:
    """Each row of `dvc exp show`: (state, status, index of the row it is compared with) for the workspace
    and the baseline commits (against the first commit: HEAD) and, under each commit, its experiments
    (against that commit)."""
    first = next((i for i, b in enumerate(exps) if b.get("rev") != "workspace"), 0)
    row = 0
    for n, base in enumerate(exps):
        base_row = row
        yield base, "workspace" if base.get("rev") == "workspace" else "commit", first if n != first else row
        row += 1
        for exp_range in base.get("experiments") or []:
            executor = exp_range.get("executor") or {}
            for state in exp_range.get("revs") or []:
                yield state, str(executor.get("state") or "exp"), base_row
                row += 1


def dvc_groups(exps: Sequence[Mapping[str, Any]]) -> tuple[list[Group], list[int]]:
    """The rows of `dvc exp show --json` as pipeline runs (a metrics file per stage, params.yaml as every
    stage's params), in DVC's order, and for each the row it is compared with (its baseline)."""
    import datetime as dt

    groups, against = [], []
    for state, status, ref in _dvc_states(exps):
        rev, data = str(state.get("rev") or "?"), state.get("data") or {}
        name = state.get("name") or (rev if rev == "workspace" else rev[:7])
        params = _flat(((data.get("params") or {}).get("params.yaml") or {}).get("data") or {})
        stamp = data.get("timestamp")
        started = int(dt.datetime.fromisoformat(stamp).timestamp() * 1000) if stamp else 0
        g = Group(rev, name, started, "error" if state.get("error") else status)
        g.parent = RunRecord(rev, name, started, status, {}, params, {})  # the params, for `changed`
        for path, metrics in (data.get("metrics") or {}).items():
            stage = Path(path).stem  # metrics/stage2.json -> stage2
            g.stages[stage] = RunRecord(f"{rev}:{path}", stage, started, status, {"stage": stage}, params,
                                        _flat((metrics or {}).get("data") or {}))
        groups.append(g)
        against.append(ref)
    return groups, against


def dvc_rows(exps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`table_rows` of `dvc exp show --json`, each with `changed`: `key=value` for its params that differ
    from its baseline's (the workspace's and other commits' from HEAD's; the GRL ones have their columns)."""
    groups, against = dvc_groups(exps)
    rows = table_rows(groups)
    for g, ref, row in zip(groups, against, rows):
        mine, theirs = g.parent.params, groups[ref].parent.params
        diff = [f"{k}={v}" for k, v in mine.items()
                if k not in SHOWN_PARAMS and (k not in theirs or theirs[k] != v)]
        row["changed"] = " ".join(diff) or None
    return rows


def exp_show(dvc_args: Sequence[str] = (), fmt: str = "table", columns: str | Sequence[str] | None = None,
             width: int | None = WIDTH, out=None, cwd: str | Path | None = None) -> list[dict[str, Any]]:
    """`dvc exp show` in this table: runs `dvc exp show --json DVC_ARGS` (e.g. `-A`, `--rev REV`, `-n 3`,
    `--hide-workspace`) and prints its rows; returns them."""
    import shutil
    import subprocess

    cols = table_columns(columns, DVC_COLUMNS, DVC_TABLE_COLUMNS)
    beside = Path(sys.executable).parent / "dvc"  # this environment's dvc first
    dvc = str(beside) if beside.is_file() else (shutil.which("dvc") or "dvc")
    r = subprocess.run([dvc, "exp", "show", "--json", *dvc_args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        from tristage.errors import UserError

        raise UserError(f"dvc exp show failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    rows = dvc_rows(json.loads(r.stdout or "[]"))
    if columns is None and any(row["status"] not in PLAIN_STATUS for row in rows):  # failed, queued, running
        cols.insert(2, "status")
    if fmt == "table":
        text = render_table(rows, cols, width, DVC_COLUMNS, DVC_TABLE_COLUMNS, DVC_LEGEND)
    else:
        text = json.dumps(rows, indent=2) if fmt == "json" else _csv(rows, DVC_COLUMNS)
    (out or sys.stdout).write(text + "\n")
    return rows


def exp_show_main(argv: Sequence[str] | None = None) -> int:
    """`make exp-show ARGS=...`: `--columns`, `--all` and `--format` as for `tristage compare`; the other
    arguments go to `dvc exp show`."""
    import argparse

    from tristage.errors import UserError

    p = argparse.ArgumentParser(prog="exp-show", allow_abbrev=False,
                                description="dvc exp show in 120 columns (tristage.runs.compare)")
    p.add_argument("--columns", default=None, help=f"NAME,... of {', '.join(DVC_COLUMNS)}")
    p.add_argument("--all", action="store_true", help="every column")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    args, dvc_args = p.parse_known_args(argv)
    try:
        exp_show(dvc_args, args.format, "all" if args.all else args.columns)
    except UserError as exc:
        print(f"exp-show: error: {exc}", file=sys.stderr)
        return 2
    return 0
