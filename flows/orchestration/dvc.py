"""Building and running the `dvc` commands the flow issues (no stage logic here)."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tristage.environment import QUIET_ENV
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
        if (
            _PLAIN.fullmatch(value)
            and value.lower() not in ("null", "true", "false", "none")
            and not _looks_numeric(value)
        ):
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
    """Edit `params_file` in place exactly as `dvc exp run -S key=value` does (same writer), after
    checking the overrides against the typed params: a misspelt key or a bad value fails here,
    naming the key, and the file is left as it was."""
    from tristage.config import check_overrides

    overrides = check_overrides(params_file, overrides)
    args = override_args(overrides)
    if not args:
        return
    from dvc.utils.hydra import apply_overrides as dvc_apply

    try:
        dvc_apply(params_file, args)
    except Exception as exc:  # hydra's parse errors; the cause names the key
        cause = exc.__cause__ or exc
        detail = " ".join(str(cause).split())[:300]
        raise UserError(f"overrides {args}: {detail}") from None


def pipeline_stages(repo: Path, target: str | None = None) -> list[str]:
    """The DAG's stages in run order (dependencies first); with `target`, only it and its ancestors."""
    return list(pipeline_graph(repo, target))


def pipeline_graph(repo: Path, target: str | None = None) -> dict[str, list[str]]:
    """`pipeline_stages` in run order, each with the stages it reads outputs of (its direct upstream
    stages in dvc.yaml): the edges the flow hands Prefect, so its run graph is the DAG."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        graph = r.index.graph  # edges: stage -> the stage it depends on
        names = {s: s.name for s in graph.nodes}
        by_name = {v: k for k, v in names.items()}
        if target is not None and target not in by_name:
            raise UserError(f"target: unknown stage {target!r}; stages are: {', '.join(sorted(by_name))}")
        keep = (
            set(graph.nodes) if target is None else nx.descendants(graph, by_name[target]) | {by_name[target]}
        )
        order = list(
            nx.lexicographical_topological_sort(
                graph.reverse(copy=True), key=lambda s: _dvc_yaml_rank(repo, names[s])
            )
        )
        rank = {s: i for i, s in enumerate(order)}
        return {names[s]: [names[u] for u in sorted(graph.successors(s), key=rank.get) if u in keep]
                for s in order if s in keep}


def stage_graph(repo: Path, target: str | None = None):
    """`tristage.runs.sweep_plan.StageGraph` of the DAG up to `target`: run order, direct upstream stages,
    and the params keys each stage reads (its `params:` in dvc.yaml)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    from tristage.runs.sweep_plan import StageGraph

    upstream = pipeline_graph(repo, target)
    with Repo(str(repo)) as r:
        reads = {s.name: [p for d in s.deps if isinstance(d, ParamsDependency) for p in (d.params or [])]
                 for s in r.index.stages if s.name in upstream}
    return StageGraph(list(upstream), upstream, reads)


def _dvc_yaml_rank(repo: Path, name: str) -> str:
    # Ties broken by position in dvc.yaml, so the order reads like the file.
    try:
        import yaml

        order = list((yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {}))
        return f"{order.index(name):04d}"
    except (OSError, ValueError):
        return f"9999{name}"


def checkout_cmd(stages: Sequence[str]) -> list[str]:
    """Check the outputs recorded in the workspace's dvc.lock out of the shared cache, so that
    `dvc repro` finds unchanged stages up to date. The run cache cannot do this for every stage:
    DVC never run-caches a stage with a `persist` output (features)."""
    return [dvc_executable(), "checkout", "--allow-missing", *stages]


def repro_cmd(stage: str) -> list[str]:
    """Run exactly one stage (its inputs come from the tasks before it; DVC skips it if up to date)."""
    return [dvc_executable(), "repro", "--single-item", stage]


def stage_outcome(stage: str, output: str) -> str:
    """What `dvc repro --single-item <stage>` did, read from its log: "ran" (the command ran),
    "restored" (outputs checked out of the shared cache by DVC's run cache) or "unchanged"."""
    if f"Running stage '{stage}'" in output:
        return "ran"
    if f"Stage '{stage}' is cached" in output:
        return "restored"
    return "unchanged"


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


def is_user_error(exc: BaseException) -> bool:
    """Bad input, not a bug: a `UserError` (a misspelt override key, a bad value, an unknown target) or a
    stage that exited with code 2 (its own `UserError`). Retrying can't help; the message says it all."""
    return isinstance(exc, UserError) or (isinstance(exc, CommandFailed) and exc.returncode == 2)


_STAGE_ERROR = re.compile(r"^\S+: error: .+")


def failure_line(exc: BaseException) -> str:
    """One line for a user error: its message; for a stage that exited with code 2, the line the stage
    printed (`<stage>: error: ...`), else the command's first line."""
    text = str(exc)
    if isinstance(exc, CommandFailed):
        found = [m.group(0) for m in map(_STAGE_ERROR.match, text.splitlines()[1:]) if m]
        return found[-1].strip() if found else text.splitlines()[0].rstrip(":")
    return " ".join(text.split())


class LogForwarder:
    """A stage's output, line by line, to a logger (the Prefect task's run logger, so it shows in
    the task's Logs tab). Progress-bar lines (tqdm) go out at most once per `every_s` seconds, and
    the last one when the command ends; every other line at once, warnings as WARNING and errors as
    ERROR records. A line printed while a bar is drawn comes glued to the bar (tqdm redraws with `\\r`
    and never ends its line): it is cut off the bar and forwarded as a line of its own. DVC's advice
    to `git add dvc.lock` / `dvc push`, which a run workspace doesn't follow, is left out."""

    PROGRESS = re.compile(r"\d+%\||\|\s*\d+/\d+\s*\[")
    # the end of a tqdm bar: `| 4/10 [00:01<00:02, 3.2it/s]` (postfix and all, up to its `]`)
    BAR_END = re.compile(r"\|\s*[\d.]+[kMG]?/[\d.?]+[kMG]?\s*\[[^\]\r\n]*\]")
    ERROR = re.compile(r"\b(ERROR|CRITICAL|Traceback \(most recent call last\)|[A-Za-z_]*Error:|error:)")
    WARNING = re.compile(r"\b(WARNING|WARN|[A-Za-z]*Warning:)")
    # where a log record or warning glued to a bar starts: a `%H:%M:%S` time, or the marker itself
    RECORD = re.compile(r"\d\d:\d\d:\d\d |(WARNING|ERROR|CRITICAL|Traceback)\b")
    ADVICE = re.compile(r"^(To track the changes with git, run:|To enable auto staging, run:|git add \S|"
                        r"dvc config core\.autostage|Use `dvc push` to send your updates)")

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, every_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._last_progress: float | None = None
        self._pending: str | None = None

    def __call__(self, line: str) -> None:
        for part in line.replace("\r", "\n").split("\n"):
            self._line(part.rstrip())

    def _line(self, text: str) -> None:
        if not text.strip() or self.ADVICE.match(text.strip()):
            return
        if self.PROGRESS.search(text):
            bar, rest = self.split_progress(text)
            self._progress(bar)
            if rest:
                self._line(rest)
            return
        level = (logging.ERROR if self.ERROR.search(text) else
                 logging.WARNING if self.WARNING.search(text) else logging.INFO)
        self.logger.log(level, text)

    @classmethod
    def split_progress(cls, text: str) -> tuple[str, str]:
        """(the bar, what follows it on the same line): what a line printed during a bar leaves."""
        end = cls.BAR_END.search(text)
        if end is not None:
            return text[: end.end()], text[end.end():].strip()
        start = cls.PROGRESS.search(text)
        mark = cls.RECORD.search(text, start.end() if start else 0)
        if mark is not None:  # a bar cut short (no `]` yet) with a record after it
            return text[: mark.start()].rstrip(), text[mark.start():]
        return text, ""

    def _progress(self, text: str) -> None:
        now = self.clock()
        if self._last_progress is None or now - self._last_progress >= self.every_s:
            self.logger.info(text)
            self._last_progress, self._pending = now, None
        else:
            self._pending = text

    def close(self) -> None:
        if self._pending is not None:
            self.logger.info(self._pending)
            self._pending = None


def run(cmd: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, log_to=None,
        on_line: Callable[[str], None] | None = None) -> str:
    """Run `cmd`, streaming its output to `on_line` (e.g. a `LogForwarder`), else to `log_to`
    (default stderr); raise `CommandFailed` with the tail of the output on failure."""
    full_env = {**os.environ, **(env or {})}
    log.info("$ %s   (in %s)", " ".join(cmd), cwd)
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
            else:
                (log_to or sys.stderr).write(line)
    finally:
        if hasattr(on_line, "close"):
            on_line.close()
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
        **{k: os.environ.get(k, v) for k, v in QUIET_ENV.items()},
    }
    if parent_run_id:
        env["TRISTAGE_PARENT_RUN_ID"] = parent_run_id
    if flow_run_id:
        env["TRISTAGE_PREFECT_FLOW_RUN_ID"] = flow_run_id
    if git_rev:
        env["TRISTAGE_GIT_REV"] = git_rev
    return env
