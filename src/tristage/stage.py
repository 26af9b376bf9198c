"""The common command line of every DVC stage (`python -m steps.<stage>`).

    python -m steps.<stage> [--params FILE] [--set key.sub=value ...]

Parses the arguments, loads and validates the params (before any work), opens the
stage's MLflow run, calls the stage function and logs what it returns. Bad input
(`UserError`) exits 2 with one line on stderr that names the file, row or key.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

from tristage.environment import apply_quiet_env, tune_malloc
from tristage.errors import UserError

# The repository's own params.yaml: the default when the working folder has none.
REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"

StageFn = Callable[..., Mapping | None]


def default_params_path() -> Path:
    here = Path.cwd() / "params.yaml"
    return here if here.is_file() else REPO_PARAMS


def build_parser(stage: str, description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m steps.{stage}", description=description)
    p.add_argument("--params", type=Path, default=None,
                   help="params file (default: ./params.yaml, else the repository's); "
                        "relative paths inside it are relative to its folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one param, e.g. --set stage2.grl_lambda=2.0 (repeatable)")
    return p


def setup_environment() -> None:
    """Offline and quiet by default (`tristage.environment.QUIET_ENV`; the user's explicit settings win),
    and freed tensor memory kept for the next step (`tristage.environment.tune_malloc`)."""
    apply_quiet_env()
    tune_malloc()


def run_stage(
    stage: str, fn: StageFn, argv: Sequence[str] | None = None, description: str | None = None
) -> int:
    """Run `fn(params, tracker) -> metrics` as stage `stage`; return the process exit code."""
    setup_environment()
    logging.basicConfig(level=os.environ.get("TRISTAGE_LOG_LEVEL", "INFO"),
                        format=f"%(asctime)s {stage} %(levelname)s %(message)s", datefmt="%H:%M:%S")
    args = build_parser(stage, description).parse_args(argv)
    from tristage.config import load_params
    from tristage.runs.timings import separate_timings, split_timings
    from tristage.runs.tracking import Tracker, flatten

    try:
        params = load_params(args.params or default_params_path(), args.overrides)
        section = params.stage(stage)
        with Tracker(stage, params.base_dir) as tracker:
            tracker.log_params({stage: section.model_dump(mode="json")})
            metrics = fn(params, tracker)
            timings = (
                separate_timings(stage, section, params.base_dir)
                if os.environ.get("RANK", "0") == "0"
                else {}
            )
            if metrics:
                quality, returned_timings = split_timings(metrics)
                tracker.log_metrics(quality)
                timings = {**returned_timings, **timings}
            tracker.log_metrics({f"timing/{k}": v for k, v in flatten(timings).items()})
    except UserError as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        return 130
    return 0


def main(stage: str, fn: StageFn, description: str | None = None) -> None:
    sys.exit(run_stage(stage, fn, description=description))


def main_training(stage: str, fn: StageFn, description: str | None = None) -> None:
    """`python -m steps.<stage>` for a training stage, also under `torchrun` (only rank 0 logs to MLflow).
    `fn` imports the trainer itself (in steps/<stage>.py), so this module's import closure, which
    every stage's DVC deps include, stays free of the training code."""
    if os.environ.get("RANK", "0") != "0":
        os.environ["TRISTAGE_TRACKING"] = "0"
    main(stage, fn, description=description)
