"""Building and running the `dvc` commands the flow issues (no stage logic here)."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from tristage.errors import UserError

log = logging.getLogger(__name__)

# Stages that may use an accelerator: each holds a `gpu` slot and gets its device.
GPU_STAGES = ("features", "stage1", "stage2", "stage3", "evaluate")

_PLAIN = re.compile(r"[A-Za-z0-9_./:+-]*")


def dvc_executable() -> str:
    """The `dvc` next to this interpreter (the project's venv), else the one on PATH."""
    here = Path(sys.executable).with_name("dvc")
    return str(here) if here.exists() else "dvc"


def format_override(key: str, value: Any) -> str:
    """`("stage2.grl_lambda", 2.0)` -> `"stage2.grl_lambda=2.0"`, in the syntax of `dvc exp run -S`.

    Values are written as JSON (numbers, booleans, null, lists, mappings); a string is
    written bare when that is unambiguous, else quoted."""
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")) or "=" in key:
        raise UserError(f"overrides: bad key {key!r}; use dotted params keys like 'stage2.grl_lambda'")
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in ("null", "true", "false", "none") and not _looks_numeric(value):
            text = value
        else:
            text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    else:
        text = json.dumps(value)
    return f"{key}={text}"


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def override_args(overrides: Mapping[str, Any] | None) -> list[str]:
    return [format_override(k, v) for k, v in (overrides or {}).items()]


def apply_overrides(params_file: Path, overrides: Mapping[str, Any] | None) -> None:
    """Edit `params_file` in place exactly as `dvc exp run -S key=value` does (same parser)."""
    args = override_args(overrides)
    if not args:
        return
    from dvc.utils.hydra import apply_overrides as dvc_apply

    try:
        dvc_apply(params_file, args)
    except Exception as exc:  # hydra's parse errors; the cause names the key
        cause = exc.__cause__ or exc
        detail = " ".join(str(cause).split())[:300]
        raise UserError(f"overrides {args}: {detail} (keys must exist in params.yaml)") from None


def pipeline_stages(repo: Path, target: str | None = None) -> list[str]:
    """The DAG's stages in run order (dependencies first); with `target`, only it and its ancestors."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        graph = r.index.graph  # edges: stage -> the stage it depends on
        names = {s: s.name for s in graph.nodes}
        by_name = {v: k for k, v in names.items()}
        if target is not None and target not in by_name:
            raise UserError(f"target: unknown stage {target!r}; stages are: {', '.join(sorted(by_name))}")
        keep = set(graph.nodes) if target is None else nx.descendants(graph, by_name[target]) | {by_name[target]}
        order = list(nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: _dvc_yaml_rank(repo, names[s])))
    return [names[s] for s in order if s in keep]


def _dvc_yaml_rank(repo: Path, name: str) -> str:
    # Ties broken by position in dvc.yaml, so the order reads like the file.
    try:
        import yaml

        order = list((yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {}))
        return f"{order.index(name):04d}"
    except (OSError, ValueError):
        return f"9999{name}"


def repro_cmd(stage: str) -> list[str]:
    """Run exactly one stage (its inputs come from the tasks before it; DVC skips it if up to date)."""
    return [dvc_executable(), "repro", "--single-item", stage]


def exp_save_cmd(name: str, stages: Sequence[str] = (), include_untracked: Sequence[str] = (),
                 message: str | None = None) -> list[str]:
    """Record the workspace as DVC experiment `name`; `stages` limits caching to the stages run
    (a run up to `target` has no outputs downstream of it)."""
    cmd = [dvc_executable(), "exp", "save", "-n", name]
    for p in include_untracked:
        cmd += ["-I", p]
    if message:
        cmd += ["-m", message]
    return cmd + list(stages)


class CommandFailed(RuntimeError):
    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode

    @property
    def transient(self) -> bool:
        """Exit code 2 is a stage's `UserError` (bad input): retrying cannot help."""
        return self.returncode != 2


def run(cmd: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, log_to=None) -> str:
    """Run `cmd`, streaming its output; raise `CommandFailed` with the tail of the output on failure."""
    full_env = {**os.environ, **(env or {})}
    log.info("$ %s   (in %s)", " ".join(cmd), cwd)
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        (log_to or sys.stderr).write(line)
    rc = proc.wait()
    if rc != 0:
        tail = "".join(lines[-30:])
        raise CommandFailed(f"{' '.join(cmd)} failed with exit code {rc} in {cwd}:\n{tail}", rc)
    return "".join(lines)


def subprocess_env(workspace: Path, *, tracking_uri: str, parent_run_id: str | None, flow_run_id: str | None,
                   exp_name: str, git_rev: str | None, device: str | None) -> dict[str, str]:
    """The environment of one `dvc` call: the workspace's own code first on the path, the
    project's venv first on PATH (stage cmds say `python`), tracking ids, the GPU of the slot.

    `device=None` (a stage without a slot) hides every GPU, so it never touches one a
    training stage holds."""
    venv_bin = str(Path(sys.executable).parent)
    py_path = [str(workspace / "src"), str(workspace)]
    if os.environ.get("PYTHONPATH"):
        py_path.append(os.environ["PYTHONPATH"])
    env = {
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(py_path),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "DVC_EXP_NAME": exp_name,
        "CUDA_VISIBLE_DEVICES": device if device is not None else "",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
    }
    if parent_run_id:
        env["TRISTAGE_PARENT_RUN_ID"] = parent_run_id
    if flow_run_id:
        env["TRISTAGE_PREFECT_FLOW_RUN_ID"] = flow_run_id
    if git_rev:
        env["TRISTAGE_GIT_REV"] = git_rev
    return env
