"""The `tristage` console script."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tristage", description="tristage: three-stage controllable TTS pipeline")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("params", help="print the validated params (defaults + params.yaml)")
    args = p.parse_args(argv)
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
