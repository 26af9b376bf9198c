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
    c.add_argument("--sweep", default=None, metavar="NAME", help="the table of sweep NAME (sweeps/NAME/) and the "
                                                                 "recommended point")
    i = sub.add_parser("import", help="convert a corpus (ljspeech, libritts, hf-parquet, lhotse) into a manifest "
                                      "that `prepare` reads; bad entries go to DIR/rejects.jsonl")
    i.add_argument("format", choices=("ljspeech", "libritts", "hf-parquet", "lhotse"))
    i.add_argument("src", help="the corpus folder (or file: metadata.csv, a .parquet shard, a lhotse .jsonl[.gz])")
    i.add_argument("--out", required=True, help="output folder: manifest.jsonl, rejects.jsonl, wavs/ when audio "
                                                "must be written")
    i.add_argument("--columns", action="append", default=[], metavar="SOURCE=CONTRACT",
                   help="hf-parquet: map a column, e.g. --columns sentence=text --columns client_id=speaker")
    i.add_argument("--speaker", default=None, help="speaker for rows without one (ljspeech default: LJ)")
    i.add_argument("--text", choices=("normalized", "original"), default="normalized",
                   help="ljspeech/libritts: which transcript to use")
    i.add_argument("--language", default=None, help="language code for every row, e.g. en")
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
    if args.cmd == "import":
        import json

        from tristage.errors import UserError
        from tristage.importers.formats import import_corpus
        try:
            summary = import_corpus(args.format, args.src, args.out, columns=args.columns, speaker=args.speaker,
                                    text=args.text, language=args.language)
        except UserError as exc:
            print(f"import: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(summary))
        print(f"import {args.format}: {summary['rows']} rows -> {summary['manifest']}; {summary['rejected']} "
              f"rejected -> {summary['rejects']}. Next: set prepare.manifest to it, then dvc repro", file=sys.stderr)
        return 0
    if args.cmd == "compare" and args.sweep:
        from tristage.errors import UserError
        from tristage.stage import default_params_path
        from tristage.sweep import print_sweep
        try:
            print_sweep(default_params_path().parent, args.sweep, args.format)
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
