"""`tristage synthesize --requests file.jsonl --out-dir dir/`: many requests, batched.

One JSON object per line: `text` (required), `caption`, `speaker_ref` (a path, relative to the
JSONL's folder, or a stored reference name), `emotion_ref`, `attributes` ({"pitch": "high"}),
`seed`, `temperature`, `top_k`, `top_p`, `max_seconds`, `name` (the wav's name; default the
line number). Writes `<out-dir>/<name>.wav` per good row and `<out-dir>/results.jsonl` with,
per row, either `wav`, `duration`, `seconds_taken`, `rtf`, `n_frames`, `stopped`, `caption` (and
`warnings`, one line each, where the row earned any: no caption, no speaker reference, a near-empty
clip), or `error` with the line and the reason. Bad rows never stop the good ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from tristage.errors import UserError
from tristage.synthesis.api import TTS, Request, write_wav

FIELDS = {f.name for f in dataclasses.fields(Request)} | {"name"}


def parse_requests(path: Path, defaults: dict[str, Any]) -> tuple[list[tuple[int, str, Request]], list[dict]]:
    """(good rows as (line, name, Request), bad rows as {"line", "error"});
    paths resolved from the file's folder."""
    good, bad, names = [], [], set()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the requests file ({exc})") from None
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise UserError("not a JSON object")
            unknown = set(row) - FIELDS
            if unknown:
                raise UserError(f"unknown field(s) {sorted(unknown)}; valid: {sorted(FIELDS)}")
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise UserError("`text` missing or empty")
            name = str(row.pop("name", f"line{no:05d}"))
            if not re.fullmatch(r"[\w.-]{1,100}", name) or name in names:
                raise UserError(f"name {name!r}: must be unique and made of letters, digits, '.', '_' or '-'")
            if row.get("attributes") is not None and not isinstance(row["attributes"], dict):
                raise UserError('`attributes` must be an object, e.g. {"pitch": "high"}')
            for key in ("speaker_ref", "emotion_ref"):
                ref = row.get(key)
                if isinstance(ref, str) and not os.path.isabs(ref) and (path.parent / ref).is_file():
                    row[key] = str(path.parent / ref)
            req = Request(**{**defaults, **row})
        except json.JSONDecodeError as exc:
            bad.append(dict(line=no, error=f"invalid JSON ({exc.msg})"))
            continue
        except (UserError, TypeError) as exc:
            bad.append(dict(line=no, error=str(exc)))
            continue
        names.add(name)
        good.append((no, name, req))
    return good, bad


def run_requests(
    tts: TTS, path: Path, out_dir: Path, defaults: dict[str, Any], batch_size: int = 8
) -> list[dict]:
    """Synthesise every good row; return the results.jsonl records (also written)."""
    from tristage.fsio import write_text

    path, out_dir = Path(path), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: not a folder (--out-dir takes a folder for the wavs and results.jsonl)")
    good, bad = parse_requests(path, defaults)
    records = {b["line"]: b for b in bad}
    checked = []
    for no, name, req in good:  # per-row checks that need the model (attributes, references, ranges)
        try:
            tts.check(req)
            tts.reference_mel(req.speaker_ref, "speaker_ref")
            if req.emotion_ref is not None:
                tts.reference_mel(req.emotion_ref, "emotion_ref")
        except (UserError, TypeError, ValueError) as exc:
            records[no] = dict(line=no, name=name, error=str(exc))
            continue
        checked.append((no, name, req))
    reqs = [r for _, _, r in checked]
    results = tts.synthesize_batch(reqs, batch_size=batch_size, warn=False) if checked else []
    for (no, name, _), res in zip(checked, results):
        wav = write_wav(out_dir / f"{name}.wav", res.wav, res.sample_rate)
        records[no] = dict(
            line=no,
            name=name,
            wav=wav.name,
            duration=round(res.duration, 4),
            seconds_taken=round(res.seconds_taken, 4),
            rtf=round(res.rtf, 4),
            n_frames=res.n_frames,
            stopped=res.stopped,
            caption=res.caption,
            sample_rate=res.sample_rate,
        )
        if res.warnings:
            records[no]["warnings"] = list(res.warnings)
    ordered = [records[k] for k in sorted(records)]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in ordered))
    return ordered
