"""The summary a flow run leaves in the Prefect UI (its Artifacts tab), most useful first: what ran,
what it changed against HEAD (the metrics of the stages that ran, side by side with HEAD's), the
band advice when stage 2 ended outside its band, where the run is in DVC and MLflow; then what DVC
did per stage, the full metrics of the stages that ran and their plots. The stages DVC left
unchanged keep HEAD's outputs (the run workspace starts from HEAD's dvc.lock), so their metrics
are HEAD's: `dvc metrics show`."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

from tristage.fsio import read_json
from tristage.runs.tracking import flatten

ARTIFACT_KEY = "tristage-run-summary"  # Prefect artifact keys: lowercase letters, digits, dashes
COMPUTED = ("ran", "restored")  # outcomes whose outputs this run made (or DVC's run cache gave back)


def stage_metrics(workspace: Path, stage: str) -> dict[str, Any]:
    """`metrics/<stage>.json`, flattened (`stage1.mel_loss` inside evaluate's), or {} if absent."""
    return flatten(read_json(workspace / "metrics" / f"{stage}.json", {}))


def baseline_metrics(workspace: Path, stage: str, rev: str = "HEAD") -> dict[str, Any]:
    """`metrics/<stage>.json` as committed at `rev` (what `dvc metrics diff HEAD <exp>` compares with),
    flattened; {} if it isn't there."""
    r = subprocess.run(["git", "show", f"{rev}:metrics/{stage}.json"], cwd=workspace, capture_output=True,
                       text=True)
    try:
        data = json.loads(r.stdout) if r.returncode == 0 else {}
    except ValueError:
        return {}
    return flatten(data) if isinstance(data, dict) else {}


def metric_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, before, after) for every key whose value differs (missing on one side: None), in `after`'s
    order, then the keys only `before` has."""
    keys = list(after) + [k for k in before if k not in after]
    return [(k, before.get(k), after.get(k)) for k in keys if not _same(before.get(k), after.get(k))]


def _same(a: Any, b: Any) -> bool:
    if _is_num(a) and _is_num(b):
        return a == b or (math.isnan(float(a)) and math.isnan(float(b)))
    return a == b


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_files(workspace: Path, stages: Sequence[str]) -> list[str]:
    """The plot files the run's stages wrote, relative to the workspace (`plots/<stage>/...`)."""
    found = []
    for stage in stages:
        folder = workspace / "plots" / stage
        if folder.is_dir():
            found += sorted(str(p.relative_to(workspace)) for p in folder.rglob("*") if p.is_file())
    return found


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|")


def _delta(old: Any, new: Any) -> str:
    if _is_num(old) and _is_num(new) and math.isfinite(old) and math.isfinite(new):
        return f"{new - old:+.4g}"
    return ""


def _names(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(f"`{x}`" for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def summary_markdown(*, name: str, status: str, stages: Sequence[str], outcomes: Mapping[str, str],
                     metrics: Mapping[str, Mapping[str, Any]], parent_run_id: str | None, tracking_uri: str,
                     plots: Sequence[str], overrides: Mapping[str, Any],
                     baseline: Mapping[str, Mapping[str, Any]] | None = None,
                     changes: Mapping[str, Sequence[str]] | None = None, git_rev: str | None = None,
                     advice: str | None = None, mlflow_url: str | None = None,
                     max_rows_per_stage: int = 40, max_changes: int = 40) -> str:
    """The run summary as markdown (the artifact's text). `baseline`: per stage the metrics at HEAD
    (`baseline_metrics`); `changes`: what the workspace took from the working tree (`copied`, `deleted`,
    `not_copied`: workspace.create_workspace)."""
    head = f"`{git_rev[:7]}`" if git_rev else ""
    computed = [s for s in stages if outcomes.get(s) in COMPUTED]
    lines = [f"# tristage run `{name}`: {status}", ""]
    lines += _outcome_lines(stages, outcomes, overrides, changes, head)
    if baseline is not None and computed:
        lines += _change_lines(name, computed, baseline, metrics, head, max_changes)
    if advice:
        lines += [f"> **Band advice (stage2):** {advice}", ""]
    lines += _where_lines(name, status, parent_run_id, tracking_uri, mlflow_url)
    lines += ["## Stages", "", "| stage | what ran |", "|---|---|"]
    lines += [f"| {s} | {outcomes.get(s, 'not run')} |" for s in stages]
    lines.append("")
    for stage in computed:
        lines += _stage_metric_lines(stage, outcomes[stage], metrics.get(stage) or {}, max_rows_per_stage)
    shown = [p for p in plots if any(p.startswith(f"plots/{s}/") for s in computed)] if computed else []
    if shown:
        lines += ["## Plots", "", f"In the experiment (`dvc exp apply {name}`, or "
                  f"`dvc plots diff HEAD {name}`) and as artifacts of the stage runs in MLflow:", ""]
        lines += [f"- `{p}`" for p in shown]
    return "\n".join(lines) + "\n"


def _outcome_lines(stages: Sequence[str], outcomes: Mapping[str, str], overrides: Mapping[str, Any],
                   changes: Mapping[str, Sequence[str]] | None, head: str) -> list[str]:
    """What ran, was restored, unchanged or not run; the overrides; what the run started from."""
    by_outcome = {o: [s for s in stages if outcomes.get(s) == o] for o in ("ran", "restored", "unchanged")}
    not_run = [s for s in stages if s not in outcomes]
    lines = [f"- **Ran:** {', '.join(by_outcome['ran']) or 'nothing'}"]
    if by_outcome["restored"]:
        lines.append(f"- **Restored** from DVC's run cache (computed before with the same inputs): "
                     f"{', '.join(by_outcome['restored'])}")
    if by_outcome["unchanged"]:
        lines.append(f"- **Unchanged** (HEAD's outputs, not rerun): {', '.join(by_outcome['unchanged'])}")
    if not_run:
        lines.append(f"- **Not run** (the run stopped before them): {', '.join(not_run)}")
    lines.append(f"- **Overrides:** `{json.dumps(dict(overrides))}`" if overrides
                 else "- **Overrides:** none")
    if changes is not None:
        copied, deleted = list(changes.get("copied", [])), list(changes.get("deleted", []))
        stale = list(changes.get("not_copied", []))
        src = f"HEAD {head}".rstrip()
        src += (f" + the working tree's changes: {_names(copied)}" if copied else "") + (
            f"; deleted: {_names(deleted)}" if deleted else "")
        if stale:
            src += (f". Not copied: {len(stale)} changed DVC output(s) of the working tree "
                    f"({_names(stale, 4)}); the stages that didn't rerun keep HEAD's outputs")
        lines.append(f"- **Started from:** {src}")
    return lines + [""]


def _change_lines(name: str, computed: Sequence[str], baseline: Mapping[str, Mapping[str, Any]],
                  metrics: Mapping[str, Mapping[str, Any]], head: str, max_changes: int) -> list[str]:
    """The metrics of the stages that ran that differ from HEAD's."""
    rows = [(f"{s}.{k}", old, new) for s in computed
            for k, old, new in metric_changes(baseline.get(s) or {}, metrics.get(s) or {})]
    at = f"HEAD {head}" if head else "HEAD"
    lines = [f"## What changed against {at} (`dvc metrics diff HEAD {name}`)", ""]
    if rows:
        lines += ["| metric | HEAD | this run | change |", "|---|---|---|---|"]
        lines += [f"| {k} | {_cell(old)} | {_cell(new)} | {_delta(old, new)} |"
                  for k, old, new in rows[:max_changes]]
        if len(rows) > max_changes:
            lines.append(f"| ... | | | {len(rows) - max_changes} more: `dvc metrics diff HEAD {name}` |")
    else:
        lines.append("No metric of the stages that ran differs from HEAD's.")
    return lines + [""]


def _where_lines(name: str, status: str, parent_run_id: str | None, tracking_uri: str,
                 mlflow_url: str | None) -> list[str]:
    """Where the run is kept: the DVC experiment and the MLflow parent run."""
    lines = ["## Where", ""]
    lines += [f"- DVC experiment: `{name}` (`dvc exp show`, `dvc exp apply {name}`, "
              f"`dvc metrics diff HEAD {name}`)" if status == "FINISHED"
              else "- DVC experiment: not saved (the run failed; workspace kept)"]
    lines += [f"- MLflow parent run: `{parent_run_id}` in experiment `tristage` at `{tracking_uri}`"
              + (f"; [its runs in the MLflow UI]({mlflow_url}) (`make mlflow` first)" if mlflow_url else "")
              if parent_run_id else "- MLflow parent run: none (tracking unavailable)"]
    return lines + [""]


def _stage_metric_lines(stage: str, outcome: str, values: Mapping[str, Any], max_rows: int) -> list[str]:
    """A stage's metrics table (none when it has no metrics)."""
    if not values:
        return []
    items = list(values.items())
    lines = [f"## {stage} ({outcome})", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in items[:max_rows]]
    if len(items) > max_rows:
        lines.append(f"| ... | {len(items) - max_rows} more in `metrics/{stage}.json` |")
    return lines + [""]


def publish(markdown: str, name: str) -> str | None:
    """Attach `markdown` to the current flow run as a Prefect markdown artifact; its id, or None."""
    from prefect.artifacts import create_markdown_artifact

    artifact_id = create_markdown_artifact(
        markdown=markdown, key=ARTIFACT_KEY,
        description=f"tristage run {name}: what ran, what changed, DVC and MLflow")
    return str(artifact_id) if artifact_id else None
