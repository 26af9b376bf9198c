"""One private workspace per flow run: a git worktree of the project under `.tristage/runs/<name>/`.

It starts from HEAD plus the main working tree's uncommitted changes to the pipeline's inputs
(code, params.yaml, dvc.yaml, ...), shares the main repo's DVC cache (so outputs already computed
are checked out, not recomputed) and its git refs (so `dvc exp save` there shows up in `dvc exp
show` here). The working tree's DVC outputs (metrics, plots, models: whatever a stage of dvc.yaml
writes) and its dvc.lock are never copied: they may be stale, left by an earlier `dvc repro` with
other params, and would show up in `dvc metrics diff HEAD <run>` as changes the run never made.
The stages that don't rerun keep HEAD's outputs. Two flow runs never write into each other's outputs.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable, Iterator

from tristage.errors import UserError

log = logging.getLogger(__name__)

RUNS_DIR = Path(".tristage") / "runs"
# Never copied into a workspace or a snapshot: environments, DVC outputs, databases, caches.
EXCLUDE_TOP = {
    ".venv",
    "data",
    "models",
    "mlflow.db",
    "mlflow.db-journal",
    "mlruns",
    "mlartifacts",
    ".tristage",
    ".git",
    ".pytest_cache",
    ".prefect",
}


def _git(args: list[str], cwd: Path, check: bool = True) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and r.returncode != 0:
        out = " | ".join(x for x in (r.stderr.strip(), r.stdout.strip()) if x)
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd} (exit code {r.returncode}): {out}")
    return r.stdout


@contextlib.contextmanager
def _worktree_lock(repo: Path) -> Iterator[None]:
    """One `git worktree` change at a time per repo (the points of a sweep start together, in threads or
    processes): they all write the repo's shared `.git/worktrees/` records, and `prune` reads them."""
    lock = repo / RUNS_DIR.parent / "worktrees.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def local_changes(repo: Path) -> tuple[list[str], list[str]]:
    """(modified or untracked files not ignored by git, deleted tracked files), relative to `repo`."""
    changed = _git(["ls-files", "-z", "-m", "-o", "--exclude-standard"], repo).split("\0")
    deleted = _git(["ls-files", "-z", "-d"], repo).split("\0")
    keep = [
        p
        for p in dict.fromkeys(changed)
        if p and p.split("/", 1)[0] not in EXCLUDE_TOP and (repo / p).is_file()
    ]
    return keep, [p for p in deleted if p]


def dvc_outputs(repo: Path) -> list[str]:
    """What the stages of `repo`'s dvc.yaml write (`outs`, `metrics`, `plots`; files or folders,
    relative to the repo), and dvc.lock, which records them."""
    import yaml

    try:
        stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {}) or {}
    except (OSError, yaml.YAMLError):
        stages = {}
    found = ["dvc.lock"]
    for stage in stages.values():
        if not isinstance(stage, dict):
            continue
        for field in ("outs", "metrics", "plots"):
            for out in stage.get(field) or []:
                path = next(iter(out)) if isinstance(out, dict) else out
                if isinstance(path, str) and "${" not in path:
                    found.append(os.path.normpath(path))
    return list(dict.fromkeys(found))


def is_output(path: str, outputs: Iterable[str]) -> bool:
    """`path` is one of `outputs` or inside one of them (an output folder)."""
    return any(path == o or path.startswith(o.rstrip("/") + "/") for o in outputs)


def _copy_files(src: Path, dst: Path, files: Iterable[str]) -> int:
    n = 0
    for rel in files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
        n += 1
    return n


def dvc_cache_dir(repo: Path) -> Path:
    """The repo's configured cache folder (`.dvc/cache` by default), the value `cache.dir` takes.

    Not `cache.local.path`: that is the md5 object folder inside it (`.dvc/cache/files/md5`);
    given as `cache.dir` it would nest a second, empty cache and every stage would rerun."""
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        return Path(r.cache.local_cache_dir)


def create_workspace(repo: Path, name: str, include_local_changes: bool = True,
                     changes: dict[str, list[str]] | None = None) -> Path:
    """`git worktree add` at `<repo>/.tristage/runs/<name>` (detached at HEAD), sharing the DVC cache.
    `changes`, if given, is filled with what came from the working tree: `copied` and `deleted` files,
    and the changed DVC outputs `not_copied` (see the module's docstring)."""
    repo = repo.resolve()
    if not (repo / ".git").exists() or not (repo / ".dvc").is_dir():
        raise UserError(f"{repo}: not a git + DVC project (run from the tristage repository)")
    if _git(["rev-parse", "--verify", "-q", "HEAD"], repo, check=False).strip() == "":
        raise UserError(f"{repo}: the repository has no commit yet; commit once, then start the flow")
    path = repo / RUNS_DIR / name
    if path.exists():
        raise UserError(f"{path}: a run workspace of this name exists; pick another experiment name "
                        f"or remove it with `git worktree remove --force {path}`")
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):  # a failed add is cleaned up and tried once more: a sweep point costs hours
        try:
            with _worktree_lock(repo):
                _git(["worktree", "add", "--detach", str(path), "HEAD"], repo)
            break
        except RuntimeError as e:
            remove_workspace(repo, path)
            if attempt == 2:
                raise
            log.warning("%s; removed the partial workspace, trying once more", e)
            time.sleep(1.0)
    try:
        _fill_workspace(repo, path, include_local_changes, {} if changes is None else changes)
    except BaseException:
        remove_workspace(repo, path)
        raise
    return path


def _fill_workspace(repo: Path, path: Path, include_local_changes: bool,
                    changes: dict[str, list[str]]) -> None:
    if include_local_changes:
        changed, deleted = local_changes(repo)
        # the run's own dvc.yaml says what is an output (a working-tree edit of it is copied first)
        if "dvc.yaml" in changed:
            _copy_files(repo, path, ["dvc.yaml"])
        outputs = dvc_outputs(path)
        stale = [p for p in changed + deleted if is_output(p, outputs)]
        changed = [p for p in changed if not is_output(p, outputs)]
        deleted = [p for p in deleted if not is_output(p, outputs)]
        n = _copy_files(repo, path, changed)
        for rel in deleted:
            (path / rel).unlink(missing_ok=True)
        changes.update(copied=changed, deleted=deleted, not_copied=stale)
        log.info("workspace %s: HEAD + %d changed and %d deleted file(s) from %s; %d changed DVC output(s) "
                 "of the working tree not copied", path, n, len(deleted), repo, len(stale))
    cache = dvc_cache_dir(repo)
    cache.mkdir(parents=True, exist_ok=True)
    from dvc.config import Config

    cfg = Config(str(path / ".dvc"))
    with cfg.edit("local") as conf:
        conf.setdefault("cache", {})["dir"] = str(cache)


def untracked_outputs(workspace: Path) -> list[str]:
    """Files the run wrote that git does not track yet (metrics and plots with `cache: false`)."""
    out = _git(["ls-files", "-z", "-o", "--exclude-standard"], workspace).split("\0")
    return [p for p in out if p]


def remove_workspace(repo: Path, path: Path) -> None:
    with _worktree_lock(repo):
        _git(["worktree", "remove", "--force", str(path)], repo, check=False)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        _git(["worktree", "prune"], repo, check=False)
