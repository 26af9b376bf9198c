"""Shared fixtures: the test config is the real config, shrunk; the real repo, copied."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tristage.environment import QUIET_ENV, apply_quiet_env

REPO = Path(__file__).resolve().parents[1]
apply_quiet_env()  # the tests run offline and quiet, with or without the Makefile

# Under pytest-xdist (`make test`: -n 2 --dist loadfile) the workers share the cores: torch in each
# worker gets its share, not every core.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


# The files that run the shrunk DAG, slowest first (measured with --durations on 2 cores): they start
# first, so a parallel run isn't left waiting on one of them at the end.
DAG_FILES = ("test_sweep", "test_flow", "test_e2e", "test_freshness", "test_import_e2e", "test_resume",
             "test_ddp")
# The longest file (MiniLM + its contextualiser distillation, about 13 min on one worker) is put first, so
# that the other worker runs the DAG files meanwhile. xdist hands files out in this order only with
# `--no-loadscope-reorder` (`make test`); by default it sorts them by their number of tests, and the
# MiniLM file then started after 9 min and ended the run. A worker is given its next file when its
# current one has 2 tests left: the MiniLM test has 2 after it, so nothing waits behind it.
FIRST_FILES = ("test_caption_encoders", *DAG_FILES)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skipped without CUDA; FIRST_FILES first (the longest file, then the DAG-running ones),
    then the other files with slow tests (most first), then the rest; the order inside a file is kept."""
    skip_gpu_tests_without_cuda(items)
    slow_per_file: dict[str, int] = {}
    for item in items:
        is_slow = item.get_closest_marker("slow") is not None
        slow_per_file[item.path.stem] = slow_per_file.get(item.path.stem, 0) + is_slow
    first_seen = {stem: i for i, stem in enumerate(dict.fromkeys(i.path.stem for i in items))}

    def order(item) -> tuple:
        stem = item.path.stem
        return (FIRST_FILES.index(stem) if stem in FIRST_FILES else len(FIRST_FILES), -slow_per_file[stem],
                first_seen[stem])

    items.sort(key=order)


# The real params.yaml with sizes shrunk so the whole DAG runs in about a minute on 2 cores.
_TRAIN = {
    "steps": 4,
    "batch_size": 4,
    "log_every": 1,
    "eval_every": 2,
    "checkpoint_every": 2,
    "warmup_steps": 1,
    "val_fraction": 0.2,
    "max_ref_frames": 32,
}
TINY = {
    "corpus": {"n_speakers": 4, "utts_per_speaker": 10},
    "speaker_mapping": {"min_samples": 5},
    "stage1": {**_TRAIN, "model": {"preset": "toy", "max_text_len": 128, "max_frames": 256}},
    "stage2": _TRAIN,
    "stage3": _TRAIN,
    "evaluate": {"n_samples": 2, "n_cross": 1, "n_unseen": 1, "max_sample_frames": 8},
    "caption_vectors": {"contextualiser": {"steps": 20, "recombined": 40}},
}


def project_env(**extra: str) -> dict[str, str]:
    """Environment for stage subprocesses: offline, quiet, tracking off unless asked."""
    env = dict(os.environ)
    env.update(QUIET_ENV)
    env.update(
        {
            "TRISTAGE_TRACKING": "0",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def deep_update(base: dict, upd: dict) -> dict:
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def shrink_params(path: Path, *updates: dict) -> None:
    data = yaml.safe_load(path.read_text())
    for upd in (TINY, *updates):
        deep_update(data, upd)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def copy_repo(dest: Path) -> Path:
    """Copy the working tree (tracked + untracked-not-ignored files) into `dest` as a fresh
    git repo with one commit, so `dvc repro` / `dvc exp run` work there in isolation."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if not src.is_file():
            continue
        dst = dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    run = lambda *a: subprocess.run(a, cwd=dest, check=True, capture_output=True)
    run("git", "init", "-q")
    run("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy")
    return dest


def skip_gpu_tests_without_cuda(items) -> None:
    """`gpu` tests run only where torch sees a CUDA device; elsewhere they are skipped, saying so."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: torch.cuda.is_available() is False (no CUDA device visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A fresh copy of the project with the shrunk params."""
    dest = copy_repo(tmp_path / "repo")
    shrink_params(dest / "params.yaml")
    return dest


@pytest.fixture(scope="session")
def reproduced_template(tmp_path_factory) -> tuple[Path, str]:
    """The shrunk DAG, reproduced once for the whole test run (`dvc repro` in a copy of the repo):
    its folder and what `dvc repro` printed. Under pytest-xdist the workers share it: the first that
    asks builds it under a file lock, the others wait for it. Read it; to change anything, work in
    `clone_reproduced(...)` of it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    home = root / "reproduced"
    repo, log, done = home / "repo", home / "repro.log", home / "done"
    with FileLock(str(root / "reproduced.lock")):
        if not done.exists():
            shutil.rmtree(home, ignore_errors=True)
            copy_repo(repo)
            shrink_params(repo / "params.yaml")
            r = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, env=project_env())
            if r.returncode != 0:
                raise AssertionError(
                    f"dvc repro of the shrunk DAG failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
                )
            log.write_text(r.stdout)
            done.touch()
    return repo, log.read_text()


def clone_reproduced(template: Path, dest: Path) -> Path:
    """A copy of the reproduced repo (git, DVC cache, outputs, checkpoints) to change freely: `dvc
    status` there is clean, so only what a test changes reruns."""
    shutil.copytree(template, dest, symlinks=True)
    return dest
