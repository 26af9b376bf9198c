"""`tristage synthesize`: the command line of the synthesis API
(argument parsing lives in tristage/cli.py).

A user error (a bad value, a missing file, an unknown attribute) is one line on stderr and exit 2, never
a traceback; a request served with a warning (no caption, no speaker reference, a near-empty clip) says
so on stderr, one line each (`synthesize: warning: ...`, or `FILE:LINE: warning: ...` for --requests).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from tristage.errors import UserError


def synthesize_command(args, parser) -> int:
    """Run one request (--text ... --out) or a requests file (--requests ... --out-dir); exit code."""
    if args.requests is None and (args.text is None or args.out is None) and not args.list_speakers:
        parser.error("synthesize: give --text and --out, or --requests and --out-dir")
    if args.requests is not None and args.out_dir is None:
        parser.error("synthesize: --requests needs --out-dir")
    try:
        return _run(args)
    except UserError as exc:
        print(f"synthesize: error: {exc}", file=sys.stderr)
        return 2


def _check_args(args) -> str:
    """The options the parser cannot check alone; the device to use."""
    import torch

    if args.batch_size < 1:
        raise UserError(f"--batch-size: {args.batch_size} (must be >= 1)")
    if args.threads < 0:
        raise UserError(f"--threads: {args.threads} (must be >= 0; 0 = torch's default)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        raise UserError(f"--device: {args.device!r} (cpu, cuda, cuda:N or auto)")
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is visible here; use --device cpu or auto")
    return "cuda" if args.device == "auto" else args.device


def _run(args) -> int:
    import torch

    from tristage.synthesis.api import TTS

    device = _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tts = TTS.from_pretrained(args.model, device=device, codec_weights=args.codec_weights)
    if args.list_speakers:
        print("\n".join(tts.speakers))
        return 0
    if not tts.is_speech:
        print(f"note: {tts.note}")
    # keyword literal; `duplicates` pairs its shape with evaluation/audio.py's table row (other fields)
    defaults = dict(
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_seconds=args.max_seconds,
    )
    if args.requests is not None:
        return _run_requests(args, tts, defaults)
    return _run_one(args, tts, defaults, t0)


def _run_requests(args, tts, defaults: dict) -> int:
    """--requests FILE --out-dir DIR: a wav per good row, each bad row and warning a line on stderr."""
    from tristage.synthesis.batch import run_requests

    records = run_requests(tts, Path(args.requests), Path(args.out_dir), defaults, args.batch_size)
    bad = [r for r in records if "error" in r]
    for r in records:
        if "error" in r:
            print(f"{args.requests}:{r['line']}: {r['error']}", file=sys.stderr)
        for w in r.get("warnings", []):
            print(f"{args.requests}:{r['line']}: warning: {w}", file=sys.stderr)
    print(
        f"{len(records) - len(bad)} wav(s) in {args.out_dir}, {len(bad)} bad row(s); "
        f"results: {Path(args.out_dir) / 'results.jsonl'}"
    )
    return 0 if not bad else 1


def _run_one(args, tts, defaults: dict, t0: float) -> int:
    """--text ... --out OUT.wav: the wav, its figures as one JSON line, then one line for a reader."""
    from tristage.synthesis.api import Request, parse_set, write_wav

    req = Request(
        args.text, args.caption, args.speaker_ref, args.emotion_ref, parse_set(args.attributes), **defaults
    )
    res = tts.synthesize_batch([req], warn=False)[0]
    for w in res.warnings:
        print(f"synthesize: warning: {w}", file=sys.stderr)
    out = write_wav(args.out, res.wav, res.sample_rate)
    how = "the model's end-of-speech" if res.stopped else f"the --max-seconds cap ({args.max_seconds} s)"
    print(
        json.dumps(
            dict(
                out=str(out),
                duration=round(res.duration, 3),
                n_frames=res.n_frames,
                stopped=res.stopped,
                seconds_taken=round(res.seconds_taken, 3),
                rtf=round(res.rtf, 3),
                caption=res.caption,
                warnings=res.warnings,
                load_seconds=round(time.perf_counter() - t0 - res.seconds_taken, 3),
            )
        )
    )
    print(f"wrote {out}: {res.duration:.2f} s, length set by {how}")
    return 0
