"""The summary a flow run leaves in the Prefect UI (its Artifacts tab): a markdown table of what
each stage did and the model-quality metrics it wrote, where the run is in DVC and MLflow, and
where its plots are."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from tristage.tracking import flatten

ARTIFACT_KEY = "tristage-run-summary"  # Prefect artifact keys: lowercase letters, digits, dashes


def stage_metrics(workspace: Path, stage: str) -> dict[str, Any]:
    """`metrics/<stage>.json`, flattened (`stage1.mel_loss` inside evaluate's), or {} if absent."""
    path = workspace / "metrics" / f"{stage}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return flatten(data) if isinstance(data, dict) else {}


def plot_files(workspace: Path, stages: Sequence[str]) -> list[str]:
    """The plot files the run's stages wrote, relative to the workspace (`plots/<stage>/...`)."""
    found = []
    for stage in stages:
        folder = workspace / "plots" / stage
        if folder.is_dir():
            found += sorted(str(p.relative_to(workspace)) for p in folder.rglob("*") if p.is_file())
    return found


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|")


def summary_markdown(*, name: str, status: str, stages: Sequence[str], outcomes: Mapping[str, str],
                     metrics: Mapping[str, Mapping[str, Any]], parent_run_id: str | None, tracking_uri: str,
                     plots: Sequence[str], overrides: Mapping[str, Any], max_rows_per_stage: int = 40) -> str:
    """The run summary as markdown (the artifact's text)."""
    lines = [f"# tristage run `{name}`: {status}", ""]
    lines += [f"- DVC experiment: `{name}` (`dvc exp show`, `dvc exp apply {name}`, "
              f"`dvc metrics diff HEAD {name}`)" if status == "FINISHED"
              else "- DVC experiment: not saved (the run failed; workspace kept)"]
    lines += [f"- MLflow parent run: `{parent_run_id}` in experiment `tristage` at `{tracking_uri}`"
              if parent_run_id else "- MLflow parent run: none (tracking unavailable)"]
    lines += [f"- Overrides: `{json.dumps(dict(overrides))}`" if overrides else "- Overrides: none", ""]
    lines += ["| stage | what ran |", "|---|---|"]
    lines += [f"| {s} | {outcomes.get(s, 'not run')} |" for s in stages]
    lines.append("")
    for stage in stages:
        values = metrics.get(stage) or {}
        if not values:
            continue
        lines += [f"## {stage}", "", "| metric | value |", "|---|---|"]
        items = list(values.items())
        lines += [f"| {k} | {_cell(v)} |" for k, v in items[:max_rows_per_stage]]
        if len(items) > max_rows_per_stage:
            lines.append(f"| ... | {len(items) - max_rows_per_stage} more in `metrics/{stage}.json` |")
        lines.append("")
    if plots:
        lines += ["## Plots", "", f"In the experiment (`dvc exp apply {name}`, or "
                  f"`dvc plots diff HEAD {name}`) and as artifacts of the stage runs in MLflow:", ""]
        lines += [f"- `{p}`" for p in plots]
    return "\n".join(lines) + "\n"


def publish(markdown: str, name: str) -> str | None:
    """Attach `markdown` to the current flow run as a Prefect markdown artifact; its id, or None."""
    from prefect.artifacts import create_markdown_artifact

    artifact_id = create_markdown_artifact(
        markdown=markdown, key=ARTIFACT_KEY,
        description=f"tristage run {name}: stages, metrics, DVC and MLflow")
    return str(artifact_id) if artifact_id else None
