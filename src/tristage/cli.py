"""The `tristage` console script."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tristage", description="tristage: three-stage controllable TTS pipeline")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("params", help="print the validated params (defaults + params.yaml)")
    c = sub.add_parser("compare", help="recent pipeline runs side by side (MLflow): GRL settings, mel_loss, "
                                       "speaker_acc band, probes")
    c.add_argument("--limit", type=int, default=20, help="number of pipeline runs (newest first)")
    c.add_argument("--format", choices=("table", "csv", "json"), default="table")
    c.add_argument("--uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else mlflow.db)")
    s = sub.add_parser("synthesize", help="speak with a trained model folder (one request, or --requests FILE.jsonl)",
                       description="Synthesise speech with a trained model folder (models/<stage>/ or a copy).")
    s.add_argument("--model", required=True, help="model folder, e.g. models/stage3")
    s.add_argument("--text", help="the words to speak")
    s.add_argument("--caption", default="", help="style description, e.g. 'A woman speaks quickly.'")
    s.add_argument("--speaker-ref", help="reference audio of the voice (any rate, mono/stereo), or a stored "
                                         "reference name (see --list-speakers)")
    s.add_argument("--emotion-ref", help="reference audio of the emotion (default: the speaker reference)")
    s.add_argument("--set", dest="attributes", action="append", default=[], metavar="ATTRIBUTE=VALUE",
                   help="edit the caption with a lexicon value, e.g. --set pitch=high (repeatable)")
    s.add_argument("--out", help="output wav (single request)")
    s.add_argument("--requests", help="JSONL file of requests (one object per line; see tristage.synthesis.batch)")
    s.add_argument("--out-dir", help="folder for the wavs and results.jsonl of --requests")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=50)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--max-seconds", type=float, default=10.0, help="cap on the length (the model decides below it)")
    s.add_argument("--batch-size", type=int, default=8, help="requests per batch on the device (--requests)")
    s.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for the tiny "
                   "preset, and far faster on a loaded machine; 0 = torch's default)")
    s.add_argument("--codec-weights", default=None, help="official codec weights, if the folder moved away from them")
    s.add_argument("--list-speakers", action="store_true", help="print the stored reference names and exit")
    args = p.parse_args(argv)
    if args.cmd == "synthesize":
        from tristage.synthesis.cli import synthesize_command

        return synthesize_command(args, p)
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
