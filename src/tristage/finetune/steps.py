"""One step of a fine-tune's DVC pipeline (the cmds of the dvc.yaml that `tristage finetune` writes).

    python -m tristage.finetune.steps import|split|train|report|track --params <work>/finetune.yaml

The work area is the params file's folder; each step writes what it returns to `metrics/<step>.json`.
Exit 0 on success; bad input exits 2 with one line (`finetune <step>: error: ...`) that names the file,
flag or key at fault.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _import(fp, work):
    from tristage.finetune.data import run_import

    return run_import(fp, work)


def _split(fp, work):
    from tristage.finetune.data import run_split

    return run_split(fp, work)


def _train(fp, work):
    from tristage.finetune.train import run_train

    return run_train(fp, work)


def _report(fp, work):
    from tristage.finetune.report import run_report

    return run_report(fp, work)


def _track(fp, work):
    from tristage.finetune.track import run_track

    return run_track(fp, work)


STEPS = {"import": _import, "split": _split, "train": _train, "report": _report, "track": _track}


def main(argv: list[str] | None = None) -> int:
    from tristage.errors import UserError
    from tristage.stage import setup_environment

    p = argparse.ArgumentParser(prog="python -m tristage.finetune.steps", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=tuple(STEPS))
    p.add_argument("--params", type=Path, default=Path("finetune.yaml"), help="the fine-tune's finetune.yaml")
    args = p.parse_args(argv)
    setup_environment()
    logging.basicConfig(level=os.environ.get("TRISTAGE_LOG_LEVEL", "INFO"), datefmt="%H:%M:%S",
                        format=f"%(asctime)s finetune {args.step} %(levelname)s %(message)s")
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # a line per clip otherwise
    from tristage.finetune.config import load_finetune
    from tristage.fsio import write_json

    try:
        fp = load_finetune(args.params)
        work = args.params.resolve().parent
        write_json(work / "metrics" / f"{args.step}.json", STEPS[args.step](fp, work) or {})
    except UserError as exc:
        print(f"finetune {args.step}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
