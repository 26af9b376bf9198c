"""`tristage finetune`: write the fine-tune's work area, `dvc repro` it, publish the model folder.

    tristage finetune --model models/stage3 --data my_voice/ --speaker me --out models/me [--steps N]

1. check the inputs (a model folder, a data folder, an output folder that is not the base's) and write
   the work area (`plan.write_workspace`: finetune.yaml, params.yaml, dvc.yaml; default
   `<out's folder>/.finetune/<out's name>/`);
2. `dvc repro` there (its output streams to stderr): only the steps whose inputs changed run;
3. one line per file the import or `prepare` left out; on a failed step, its one-line error;
4. publish: `<work>/model/` + the report (finetune.json, finetune.md, finetune.png, audio/) -> `--out`,
   atomically, and only when they changed (`.finetune.lock` in it records what was published).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tristage.errors import UserError
from tristage.finetune.config import FinetuneParams

STAMP = ".finetune.lock"
# params key -> its flag (any other key: --set KEY=VALUE)
FLAGS = {**{k: f"--{k.replace('_', '-')}" for k in ("model", "data", "format", "speaker", "out", "heldout",
                                                     "min_utterances", "seed")},
         **{f"train.{k}": f"--{k}" for k in ("steps", "lr", "preset", "device")}}
REPORT_FILES = ("finetune.json", "finetune.md", "finetune.png", "audio")
_RAN = re.compile(r"^Running stage '([^']+)'")
_SKIPPED = re.compile(r"^Stage '([^']+)' didn't change, skipping")
_RESTORED = re.compile(r"^Stage '([^']+)' is cached - skipping run")
_ERROR = re.compile(r"^finetune (\w+): error: (.*)$|^(\w+): error: (.*)$")


def params_from_args(args) -> FinetuneParams:
    """The command line (its flags, then `--set key=value` for any other finetune.yaml key, e.g.
    `--set train.batch_size=4 --set report.dnsmos=false`) -> validated params (absolute paths)."""
    from tristage.config import apply_overrides

    train = dict(preset=args.preset, steps=args.steps, lr=args.lr, device=args.device)
    data = dict(model=str(Path(args.model).resolve()), data=str(Path(args.data).resolve()),
                format=args.format, speaker=args.speaker, out=str(Path(args.out).resolve()),
                heldout=args.heldout, min_utterances=args.min_utterances, seed=args.seed,
                train={k: v for k, v in train.items() if v is not None},
                track=dict(enabled=not args.no_track, register_as=args.speaker if args.register else None),
                project=str(Path.cwd().resolve()))
    return FinetuneParams.model_validate(apply_overrides(data, getattr(args, "overrides", None) or []))


def check_inputs(fp: FinetuneParams) -> dict:
    """Bad input before any work, one line each -> the base folder's synthesis.json."""
    from tristage.model.folder import read_info

    info = read_info(fp.model)
    if not Path(fp.data).is_dir():
        raise UserError(f"--data: {fp.data} is not a folder of recordings")
    if not re.fullmatch(r"[\w][\w .-]*", fp.speaker):
        raise UserError(f"--speaker: {fp.speaker!r}: use letters, digits, spaces, '.', '-', '_'")
    out, model = Path(fp.out).resolve(), Path(fp.model).resolve()
    if out == model or model in out.parents:
        raise UserError(f"--out: {fp.out} is (inside) the base model folder; name a new folder, e.g. "
                        f"{model.parent / fp.speaker}")
    if out.exists() and any(out.iterdir()) and not (out / STAMP).is_file():
        raise UserError(f"--out: {fp.out} exists and is not a fine-tune's output; name a new folder or "
                        "remove it")
    return info


def _env(fp: FinetuneParams) -> dict[str, str]:
    """The environment of `dvc repro`: this Python's scripts first on PATH (the steps' `python`), quiet,
    and the MLflow database of the folder the command ran from."""
    from tristage.environment import apply_quiet_env
    from tristage.runs.tracking import tracking_uri

    env = apply_quiet_env(dict(os.environ))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_TRACKING_URI", tracking_uri(Path(fp.project or Path.cwd())))
    return env


def repro(work: Path, env: dict[str, str], echo: bool = True) -> tuple[int, dict[str, str], list[str]]:
    """`dvc repro` in the work area -> (exit code, {step: ran | unchanged | restored}, output lines)."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    lines, outcome = [], {}
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if echo:
            sys.stderr.write(line)
        for pattern, what in ((_RAN, "ran"), (_SKIPPED, "unchanged"), (_RESTORED, "restored")):
            m = pattern.match(line.strip())
            if m:
                outcome[m.group(1)] = what
    return proc.wait(), outcome, lines


def failure(lines: list[str]) -> str:
    """The failed step's one-line error (the last one printed), else DVC's last error line."""
    for line in reversed(lines):
        m = _ERROR.match(line.strip())
        if m:
            return f"{m.group(1) or m.group(3)}: {m.group(2) or m.group(4)}"
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["dvc repro failed"])[-1]


def _stamp(work: Path) -> str:
    """What the published folder is made of: the DVC hashes of the model and report outputs."""
    import yaml

    lock = yaml.safe_load((Path(work) / "dvc.lock").read_text()) or {}
    stages = lock.get("stages", {})
    outs = {s: [o.get("md5") for o in stages.get(s, {}).get("outs", [])] for s in ("train", "report")}
    return json.dumps(outs, sort_keys=True)


def publish(work: Path, out: Path) -> bool:
    """`<work>/model/` + the report -> `out` (atomically), unless `out` holds them already -> copied."""
    from tristage.finetune.train import codec_entry
    from tristage.fsio import atomic_dir, read_json, write_json, write_text
    from tristage.model.folder import SYNTHESIS

    work, out, stamp = Path(work), Path(out), _stamp(work)
    if (out / STAMP).is_file() and (out / STAMP).read_text() == stamp:
        return False
    with atomic_dir(out) as tmp:
        shutil.copytree(work / "model", tmp, dirs_exist_ok=True)
        for name in REPORT_FILES:
            src = work / "report" / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / name)
        info = read_json(tmp / SYNTHESIS)
        write_json(tmp / SYNTHESIS, {**info, "codec": codec_entry(info["codec"], work / "model", out)})
        write_text(tmp / STAMP, stamp)
    return True


def _params_or_exit(args) -> FinetuneParams:
    """params_from_args, a bad value a UserError naming its flag."""
    from pydantic import ValidationError

    try:
        return params_from_args(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(map(str, err["loc"]))
        flag = FLAGS.get(loc, f"--set {loc}")
        unknown = err["type"] == "extra_forbidden"
        msg = "no such key (the keys: src/tristage/finetune/config.py)" if unknown else err["msg"]
        raise UserError(f"{flag}: {msg} (got {err.get('input')!r})") from None


def _summary(fp: FinetuneParams, work: Path, outcome: dict[str, str]) -> dict:
    from tristage.fsio import read_json

    report = read_json(Path(work) / "metrics" / "report.json")
    by = {w: [s for s, o in outcome.items() if o == w] for w in ("ran", "restored", "unchanged")}
    print("finetune: " + "; ".join(f"{w}: {', '.join(s)}" for w, s in by.items() if s), file=sys.stderr)
    fmt = lambda k: " -> ".join("-" if report.get(f"{r}/{k}") is None else f"{report[f'{r}/{k}']:.3f}"
                                for r in ("before", "after"))
    print(f"finetune: {fp.out}: speaker_sim to {fp.speaker} {fmt('speaker_sim')}, WER {fmt('wer')}, DNSMOS "
          f"{fmt('dnsmos_ovrl')} (before -> after, {fp.heldout} held-out utterances); report "
          f"{Path(fp.out) / 'finetune.md'}", file=sys.stderr)
    print(f"finetune: speak: tristage synthesize --model {fp.out} --speaker-ref {fp.speaker!r} "
          "--text 'Hello.' --caption '...' --out out.wav", file=sys.stderr)
    return dict(out=str(fp.out), work=str(work), steps=outcome, report=report)


def finetune_command(args) -> int:
    """`tristage finetune` (module doc) -> 0, or a UserError with one line."""
    from tristage.finetune.data import rejected_lines
    from tristage.finetune.plan import default_work, write_workspace

    fp = _params_or_exit(args)
    info = check_inputs(fp)
    work = Path(args.work).resolve() if args.work else default_work(fp.out)
    write_workspace(fp, work, info)
    print(f"finetune: work area {work} (a DVC project: dvc repro / dvc status there)", file=sys.stderr)
    rc, outcome, lines = repro(work, _env(fp), echo=not args.quiet)
    for line in rejected_lines(work):
        print(f"finetune: {line}", file=sys.stderr)
    if rc != 0:
        raise UserError(failure(lines))
    published = publish(work, fp.out)
    summary = _summary(fp, work, outcome)
    print(json.dumps(dict(summary, published=published)))
    return 0
