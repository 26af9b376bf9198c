"""The `tristage` console script."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tristage", description="tristage: three-stage controllable TTS pipeline")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("params", help="print the validated params (defaults + params.yaml)")
    c = sub.add_parser("compare", help="recent pipeline runs side by side (MLflow): GRL settings, mel_loss, "
                                       "speaker_acc band, probes")
    c.add_argument("--limit", type=int, default=20, help="number of pipeline runs (newest first)")
    c.add_argument("--format", choices=("table", "csv", "json"), default="table")
    c.add_argument("--uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else mlflow.db)")
    s = sub.add_parser("summary", help="the demo's figures: one table, a row per stage, and where to look further")
    s.add_argument("--params", type=Path, default=None, help="params file (default: ./params.yaml, else the repo's)")
    args = p.parse_args(argv)
    if args.cmd == "summary":
        from tristage.config import load_params
        from tristage.errors import UserError
        from tristage.stage import default_params_path
        from tristage.summary import summary
        try:
            print(summary(load_params(args.params or default_params_path())))
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.cmd == "compare":
        from tristage.compare import compare
        compare(args.uri, args.limit, args.format)
        return 0
    if args.cmd == "params":
        import yaml
        from tristage.config import load_params
        from tristage.errors import UserError
        from tristage.stage import default_params_path
        try:
            params = load_params(default_params_path())
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(yaml.safe_dump(params.model_dump(mode="json", exclude={"base_dir", "source"}), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
