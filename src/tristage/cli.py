"""The `tristage` console script: one small function per subcommand, heavy imports inside them.

    tristage params | summary | compare [--sweep NAME] | results [--write|--check]
    tristage import FORMAT SRC --out DIR | synthesize ... | finetune ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _params(args) -> int:
    import yaml

    from tristage.config import load_params
    from tristage.stage import default_params_path

    params = load_params(default_params_path())
    print(yaml.safe_dump(params.model_dump(mode="json", exclude={"base_dir", "source"}), sort_keys=False))
    return 0


def _summary(args) -> int:
    from tristage.config import load_params
    from tristage.runs.summary import summary
    from tristage.stage import default_params_path

    print(summary(load_params(args.params or default_params_path())))
    return 0


def _compare(args) -> int:
    if args.sweep:
        from tristage.runs.sweep_results import print_sweep
        from tristage.stage import default_params_path

        print_sweep(default_params_path().parent, args.sweep, args.format)
        return 0
    from tristage.runs.compare import compare

    compare(args.uri, args.limit, args.format, columns="all" if args.all else args.columns)
    return 0


def _results(args) -> int:
    from tristage.results import main as results_main

    argv = [*(["--write"] if args.write else []), *(["--check"] if args.check else []), "--root", args.root,
            *(["--samples", args.samples] if args.samples else []),
            *(["--adversary", args.adversary] if args.adversary else [])]
    return results_main(argv)


def _import(args) -> int:
    import json

    from tristage.importers.formats import import_corpus

    summary = import_corpus(args.format, args.src, args.out, columns=args.columns, speaker=args.speaker,
                            text=args.text, language=args.language)
    print(json.dumps(summary))
    name = args.format if summary["format"] == args.format else f"{args.format} ({summary['format']})"
    print(
        f"import {name}: {summary['rows']} rows -> {summary['manifest']}; {summary['rejected']} "
        f"rejected -> {summary['rejects']}. Next: set prepare.manifest to it, then dvc repro",
        file=sys.stderr,
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tristage", description="tristage: three-stage controllable TTS pipeline"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("params", help="print the validated params (defaults + params.yaml)").set_defaults(
        run=_params
    )

    s = sub.add_parser(
        "summary", help="the demo's figures: one table, a row per stage, and where to look further"
    )
    s.add_argument(
        "--params", type=Path, default=None, help="params file (default: ./params.yaml, else the repo's)"
    )
    s.set_defaults(run=_summary)
    _compare_parser(sub)
    _results_parser(sub)
    _import_parser(sub)
    _synthesize_parser(sub, p)
    _finetune_parser(sub)
    return p


def _compare_parser(sub) -> None:
    c = sub.add_parser("compare", help="recent pipeline runs side by side (MLflow): GRL settings, mel_loss, "
                                       "speaker_acc band, probes")
    c.add_argument("--limit", type=int, default=20, help="number of pipeline runs (newest first)")
    c.add_argument("--format", choices=("table", "csv", "json"), default="table")
    c.add_argument(
        "--uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else mlflow.db)"
    )
    c.add_argument("--sweep", default=None, metavar="NAME",
                   help="the table of sweep NAME (sweeps/NAME/) and the recommended point")
    c.add_argument("--columns", default=None, metavar="NAME,...",
                   help="the columns to show (comma-separated); default: the key ones, fitting 120 columns")
    c.add_argument("--all", action="store_true", help="every column (wider than a terminal)")
    c.set_defaults(run=_compare)


def _results_parser(sub) -> None:
    r = sub.add_parser("results", help="the README's and docs' results tables, generated from metrics/")
    r.add_argument("--write", action="store_true", help="rewrite the generated tables (and docs/samples/)")
    r.add_argument("--check", action="store_true", help="exit 1 if a generated table differs from metrics/")
    r.add_argument("--root", default=".", help="the project folder (default: here)")
    r.add_argument("--samples", default=None, help="evaluate's samples folder (default data/samples)")
    r.add_argument("--adversary", metavar="EXP", default=None,
                   help="record DVC experiment EXP's stage2 run (-S stage2.adversary=seed) for its table")
    r.set_defaults(run=_results)


def _import_parser(sub) -> None:
    i = sub.add_parser(
        "import",
        help="convert a corpus (ljspeech, libritts, librispeech, hf-parquet, lhotse, or auto) into a "
        "manifest that `prepare` reads; bad entries and stray files go to DIR/rejects.jsonl",
    )
    i.add_argument("format", choices=("ljspeech", "libritts", "librispeech", "hf-parquet", "lhotse", "auto"),
                   help="auto: ljspeech, libritts or librispeech told by the layout, or a plain folder of "
                   "name.<audio> + name.txt")
    i.add_argument(
        "src", help="the corpus folder (or file: metadata.csv, a .parquet shard, a lhotse .jsonl[.gz])"
    )
    i.add_argument("--out", required=True,
                   help="output folder: manifest.jsonl, rejects.jsonl, wavs/ when audio must be written")
    i.add_argument("--columns", action="append", default=[], metavar="SOURCE=CONTRACT",
                   help="hf-parquet: map a column, e.g. --columns sentence=text --columns client_id=speaker")
    i.add_argument("--speaker", default=None, help="speaker for rows without one (ljspeech default: LJ; "
                   "a plain folder of pairs: the folder's name)")
    i.add_argument("--text", choices=("normalized", "original"), default="normalized",
                   help="ljspeech/libritts: which transcript to use")
    i.add_argument("--language", default=None, help="language code for every row, e.g. en")
    i.set_defaults(run=_import)


def _finetune_parser(sub) -> None:
    f = sub.add_parser(
        "finetune",
        help="fine-tune a trained model folder on a folder of one voice's recordings (docs/finetune.md)",
        description="import -> prepare -> annotate (the base's bins) -> features (the base's codec) -> train "
        "(the `finetune` preset) -> report (before vs after on held-out utterances) -> a new model folder; "
        "a DVC pipeline of its own, so a rerun does only what changed.",
    )
    f.add_argument("--model", required=True, help="the trained model folder to start from (models/stage3)")
    f.add_argument("--data", required=True, help="the recordings: a plain folder of name.wav + name.txt, or "
                   "an ljspeech / libritts / librispeech folder")
    f.add_argument("--format", choices=("ljspeech", "libritts", "librispeech", "auto"), default="auto")
    f.add_argument("--speaker", required=True, help="the voice's name: the stored reference and the MLflow "
                   "model name (--register)")
    f.add_argument("--out", required=True, help="the new model folder, e.g. models/NAME")
    f.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's, 150)")
    f.add_argument("--lr", type=float, default=None, help="learning rate before the preset's x0.5 (2e-4)")
    f.add_argument("--preset", choices=("finetune",), default="finetune",
                   help="what trains (src/tristage/training/presets.py): finetune = the decoder")
    f.add_argument("--heldout", type=int, default=3, help="utterances kept out of training for the report")
    f.add_argument("--min-utterances", type=int, default=8, help="refuse fewer utterances to train on")
    f.add_argument("--seed", type=int, default=1234, help="which utterances are held out")
    f.add_argument("--device", default=None, help="cpu | cuda | auto (default cpu)")
    f.add_argument("--register", action="store_true", help="register the model in MLflow under --speaker")
    f.add_argument("--no-track", action="store_true", help="no MLflow run")
    f.add_argument("--work", default=None, help="the work area (default: <out's folder>/.finetune/<name>)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other key of the fine-tune's params (src/tristage/finetune/config.py), e.g. "
                   "--set train.batch_size=4 --set report.dnsmos=false (repeatable)")
    f.add_argument("--quiet", action="store_true", help="don't stream the steps' output")

    def run(args) -> int:
        from tristage.finetune.run import finetune_command

        return finetune_command(args)

    f.set_defaults(run=run)


def _synthesize_parser(sub, parent: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "synthesize",
        help="speak with a trained model folder (one request, or --requests FILE.jsonl)",
        description="Synthesise speech with a trained model folder (models/<stage>/ or a copy).",
    )
    s.add_argument("--model", required=True, help="model folder, e.g. models/stage3")
    s.add_argument("--text", help="the words to speak")
    s.add_argument("--caption", default="", help="style description, e.g. 'A woman speaks quickly.'")
    s.add_argument("--speaker-ref", help="reference audio of the voice (any rate, mono/stereo), or a stored "
                                         "reference name (see --list-speakers)")
    s.add_argument("--emotion-ref", help="reference audio of the emotion (default: the speaker reference)")
    s.add_argument("--set", dest="attributes", action="append", default=[], metavar="ATTRIBUTE=VALUE",
                   help="edit the caption with a lexicon value, e.g. --set pitch=high (repeatable)")
    s.add_argument("--out", help="output wav (single request)")
    s.add_argument(
        "--requests", help="JSONL file of requests (one object per line; see tristage.synthesis.batch)"
    )
    s.add_argument("--out-dir", help="folder for the wavs and results.jsonl of --requests")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=50)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument(
        "--max-seconds", type=float, default=10.0, help="cap on the length (the model decides below it)"
    )
    s.add_argument("--batch-size", type=int, default=8, help="requests per batch on the device (--requests)")
    s.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    s.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: fastest for the tiny "
        "preset, and far faster on a loaded machine; 0 = torch's default)",
    )
    s.add_argument(
        "--codec-weights", default=None, help="official codec weights, if the folder moved away from them"
    )
    s.add_argument("--list-speakers", action="store_true", help="print the stored reference names and exit")

    def run(args) -> int:
        from tristage.synthesis.cli import synthesize_command

        return synthesize_command(args, parent)

    s.set_defaults(run=run)


def main(argv: list[str] | None = None) -> int:
    from tristage.errors import UserError

    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"{args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
