"""The code a stage runs: the static import closure of a module inside the `tristage` package.

    files = import_closure([Path("steps/stage1.py")])           # -> [.../src/tristage/stage.py, ...]
    digest, per_file = code_digest(["tristage.training.trainer"])  # changes when any of that code does

Found from the source alone (`ast`), never by importing: every `import` / `from ... import` anywhere
in a file (module level or inside a function: the stages import their heavy parts lazily). A module
named only by a string (the model config's `caption_module`) is not followed: code that loads one by
name must also import the default statically (model/tts.py does). Only files under `src/tristage/` are
followed; third-party packages are versioned by the environment, not by this.
Package `__init__.py` files on the way
count (importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py`).

Used twice, so the two can't disagree: a test checks that each DVC stage's `deps` in dvc.yaml
cover the closure of `steps/<stage>.py`, and the trainer hashes the closure of its own module
into the checkpoint fingerprint (a checkpoint made by other code is not resumed).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Iterable

PACKAGE = "tristage"
SRC = Path(__file__).resolve().parents[1]  # the folder that holds the `tristage` package


def module_file(name: str, src: Path = SRC) -> Path | None:
    """`tristage.a.b` -> src/tristage/a/b.py or src/tristage/a/b/__init__.py (None outside the package)."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = src.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_modules(path: Path) -> set[str]:
    """Names of the modules a file imports, package-internal or not."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    pkg = _package_of(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if pkg else []
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {n for n in names if n}


def _package_of(path: Path) -> str:
    """The dotted package a file under SRC belongs to ('' outside it)."""
    try:
        rel = Path(path).resolve().relative_to(SRC)
    except ValueError:
        return ""
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1])  # a/b/c.py -> a.b; a/b/__init__.py -> a.b


def import_closure(start: Iterable[Path | str], src: Path = SRC) -> list[Path]:
    """Files under `src/tristage` reached from the `start` files (which may lie outside, e.g. steps/),
    sorted. `start` items may also be dotted module names."""
    todo: list[Path] = []
    for s in start:
        f = module_file(s, src) if isinstance(s, str) and not s.endswith(".py") else Path(s)
        if f is None:
            raise ValueError(f"{s}: not a module of the {PACKAGE} package under {src}")
        todo.append(Path(f).resolve())
    seen: set[Path] = set()
    inside: set[Path] = set()
    root = (src / PACKAGE).resolve()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        if f.is_relative_to(root):
            inside.add(f)
        for name in imported_modules(f):
            for mod in _with_parents(name):
                g = module_file(mod, src)
                if g is not None and g.resolve() not in seen:
                    todo.append(g.resolve())
    return sorted(inside)


def code_digest(modules: Iterable[str], src: Path = SRC) -> tuple[str, dict[str, str]]:
    """(sha256 over the closure's files, {path relative to src: sha256 of the file}) for `modules`."""
    per_file = {}
    for f in import_closure(list(modules), src):
        per_file[f.relative_to(src.resolve()).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    blob = "\n".join(f"{k} {v}" for k, v in sorted(per_file.items()))
    return hashlib.sha256(blob.encode()).hexdigest(), per_file


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Paths whose hash differs, or that were added or removed, sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def covering_deps(files: Iterable[Path], repo: Path) -> list[str]:
    """Short dvc.yaml deps covering `files` (paths relative to `repo`): a folder where every .py file
    directly in it is in `files` (and it has no subfolders), else the files themselves."""
    files = {Path(f).resolve() for f in files}
    out: set[str] = set()
    for f in files:
        folder = f.parent
        whole = not any(p.is_dir() and p.name != "__pycache__" for p in folder.iterdir()) and all(
            p in files for p in folder.glob("*.py")
        )
        out.add((folder if whole and folder.name != PACKAGE else f).relative_to(repo.resolve()).as_posix())
    return sorted(out)


def uncovered(files: Iterable[Path], deps: Iterable[str], repo: Path) -> list[str]:
    """The `files` (as paths relative to `repo`) that no dep covers (a dep covers itself and what is
    under it)."""
    dep_paths = [(repo / d).resolve() for d in deps]
    return sorted(
        Path(f).resolve().relative_to(repo.resolve()).as_posix()
        for f in files
        if not any(Path(f).resolve() == d or Path(f).resolve().is_relative_to(d) for d in dep_paths)
    )


def check_dvc_deps(repo: Path) -> dict[str, list[str]]:
    """{stage: paths of its step's import closure that its dvc.yaml deps miss}, for every stage of
    `repo`/dvc.yaml whose `steps/<stage>.py` exists (stages with nothing missing are left out)."""
    import yaml

    stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {})
    out = {}
    for name, st in stages.items():
        step = repo / "steps" / f"{name}.py"
        if not step.is_file():
            continue
        deps = [d if isinstance(d, str) else next(iter(d)) for d in st.get("deps", [])]
        missing = uncovered([step, *import_closure([step], repo / "src")], deps, repo)
        if missing:
            out[name] = missing
    return out


def rewrite_dvc_deps(repo: Path) -> list[str]:
    """Rewrite, in place, the src/ deps of each stage of `repo`/dvc.yaml that has a steps/<stage>.py:
    the step file first, then the folders / files covering its closure, then its other deps (data, models,
    metrics) unchanged. Everything else in the file stays as it is (text edit). Returns the stages changed."""
    import yaml

    path = repo / "dvc.yaml"
    lines = path.read_text().split("\n")
    stages = (yaml.safe_load("\n".join(lines)) or {}).get("stages", {})
    out, changed, stage, i = [], [], None, 0
    while i < len(lines):
        line = lines[i]
        name = line.strip()[:-1]
        if line.startswith("  ") and not line.startswith("   ") and line.endswith(":") and name in stages:
            stage = name
        if stage and line.strip() == "deps:" and (repo / "steps" / f"{stage}.py").is_file():
            out.append(line)
            i += 1
            old, indent = [], " " * (len(line) - len(line.lstrip()) + 2)
            while (
                i < len(lines)
                and lines[i].lstrip().startswith("- ")
                and len(lines[i]) - len(lines[i].lstrip()) >= len(line) - len(line.lstrip())
            ):
                indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
                old.append(lines[i].lstrip()[2:])
                i += 1
            step = f"steps/{stage}.py"
            src = covering_deps(import_closure([repo / step], repo / "src"), repo)
            new = [step, *src, *(d for d in old if not d.startswith("src/") and d != step)]
            out += [f"{indent}- {d}" for d in new]
            if new != old:
                changed.append(stage)
            stage = None
            continue
        out.append(line)
        i += 1
    path.write_text("\n".join(out))
    return changed


if __name__ == "__main__":  # python -m tristage.closure [--write] [REPO]: what each stage's deps miss
    import sys

    args = sys.argv[1:]
    repo = Path(next((a for a in args if a != "--write"), ".")).resolve()
    if "--write" in args:
        print("deps rewritten:", ", ".join(rewrite_dvc_deps(repo)) or "none")
    for stage, missing in check_dvc_deps(repo).items():
        print(f"{stage}: missing {', '.join(missing)} (python -m tristage.closure --write rewrites the deps)")
