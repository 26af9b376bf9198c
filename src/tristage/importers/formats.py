"""Importers: a corpus as it comes -> `<out>/manifest.jsonl` (+ audio when it must be written) for `prepare`.

    import_corpus("ljspeech", "LJSpeech-1.1", "data/imported")   -> {"rows": ..., "rejected": ...}
    import_corpus("auto", "my_voice", "data/imported")           -> {..., "format": "pairs"}  (layout used)

- `ljspeech`, `libritts`, `librispeech`, and `auto` (one of them, or a plain folder of `name.<audio>` +
  `name.txt`, told by its layout): audio files + transcripts in a folder, any audio format soundfile
  decodes; every other file under the folder gets a reject line with its reason (see folders.py).
- `hf-parquet`: Hugging Face `datasets` Parquet shards (a file or a folder of them), read in
  record batches; the audio column is a struct of `bytes` + `path` (or `array` +
  `sampling_rate`): the bytes are written once to `<out>/wavs/<id><suffix>` (kept when a rerun
  finds the same size). `columns` maps source names to manifest names; `text`, `speaker`,
  `id`, `audio` are also guessed from common names (sentence, client_id, speaker_id, ...).
- `lhotse`: recordings + supervisions (`*recordings*.jsonl[.gz]`, `*supervisions*.jsonl[.gz]`)
  or cuts (`*cuts*.jsonl[.gz]`); a file or a folder. Recordings are indexed in an on-disk
  SQLite table, so no manifest sits in memory; a supervision covering part of a recording is
  cut out to `<out>/wavs/<id>.wav`, a whole-recording one points at the source file.

Every importer streams: one entry read, one row (or one reject) written. Audio paths in the
manifest are absolute (sources stay where they are) or relative to `<out>` (files written here).
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tristage.errors import UserError
from tristage.importers.common import CONTRACT, ImportWriter, parse_columns, safe_name
from tristage.importers.folders import (
    detect_layout,
    import_librispeech,
    import_libritts,
    import_ljspeech,
    import_pairs,
)

FORMATS = ("ljspeech", "libritts", "librispeech", "hf-parquet", "lhotse", "auto")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")


def import_corpus(fmt: str, src: str | os.PathLike, out: str | os.PathLike, columns: list[str] | None = None,
                  speaker: str | None = None, text: str = "normalized", language: str | None = None) -> dict:
    # input checks; `duplicates` pairs their shape with training/checkpoint.py's verify (other checks)
    src, out = Path(src).resolve(), Path(out).resolve()
    if not src.exists():
        raise UserError(f"import {fmt}: {src} not found")
    try:
        mapping = parse_columns(columns)
    except ValueError as exc:
        raise UserError(f"import {fmt}: {exc}") from None
    if text not in ("normalized", "original"):
        raise UserError(f"import {fmt}: --text must be normalized or original, got {text!r}")
    if fmt not in FORMATS:
        raise UserError(f"import: unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    # checked before the writer opens, so that a wrong SRC leaves an earlier import's files as they were
    layout = detect_layout(src) if fmt == "auto" else fmt
    name = fmt if layout == fmt else f"{fmt} ({layout})"
    with ImportWriter(out) as w:
        if layout == "ljspeech":
            import_ljspeech(src, w, speaker or "LJ", text, language)
        elif layout == "libritts":
            import_libritts(src, w, text, language)
        elif layout == "librispeech":
            import_librispeech(src, w, language)
        elif layout == "pairs":
            import_pairs(src, w, speaker or src.name, language)
        elif layout == "hf-parquet":
            import_hf_parquet(src, w, mapping, speaker, language)
        else:
            import_lhotse(src, w, speaker, language)
        if w.rows == 0:
            raise UserError(f"import {name}: no usable entry in {src} (see {w.out / 'rejects.jsonl'}: "
                            f"{', '.join(f'{k} {v}' for k, v in sorted(w.reasons.items())) or 'empty'})")
    return {**w.summary, "format": layout}


def _walk_sorted(root: Path) -> Iterator[Path]:
    """Files under `root` in sorted order, one folder listing in memory at a time."""
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            yield from _walk_sorted(Path(e.path))
        elif e.is_file():
            yield Path(e.path)


# -- Hugging Face datasets Parquet ---------------------------------------------------------------

GUESS = {"text": ("text", "sentence", "transcription", "normalized_text", "text_normalized", "transcript"),
         "speaker": ("speaker", "speaker_id", "client_id", "speaker_name", "spk_id"),
         "id": ("id", "utt_id", "utterance_id", "segment_id", "key"),
         "audio": ("audio",)}


def _suffix_for(data: bytes, path: str | None) -> str:
    if path and Path(path).suffix.lower() in AUDIO_SUFFIXES:
        return Path(path).suffix.lower()
    if data[:4] == b"RIFF":
        return ".wav"
    if data[:4] == b"fLaC":
        return ".flac"
    if data[:4] == b"OggS":
        return ".ogg"
    if data[:3] == b"ID3" or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return ".mp3"
    return ".wav"


def _write_audio(value: Any, uid: str, w: ImportWriter, src_dir: Path) -> str:
    """The audio cell -> a manifest audio path; raises ValueError / OSError for a bad cell."""
    import soundfile as sf

    if isinstance(value, str):  # a plain path column
        p = Path(value) if Path(value).is_absolute() else src_dir / value
        if not p.is_file():
            raise FileNotFoundError(str(p))
        return str(p)
    if not isinstance(value, dict):
        raise ValueError(f"audio cell is {type(value).__name__}, expected a struct of bytes + path")
    data, path = value.get("bytes"), value.get("path")
    wav_dir = w.out / "wavs"
    wav_dir.mkdir(exist_ok=True)
    if data:
        target = wav_dir / (safe_name(uid) + _suffix_for(data, path))
        if not (target.is_file() and target.stat().st_size == len(data)):
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
    elif value.get("array") is not None and value.get("sampling_rate"):
        import numpy as np

        target = wav_dir / (safe_name(uid) + ".wav")
        sf.write(
            target,
            np.asarray(value["array"], dtype=np.float32),
            int(value["sampling_rate"]),
            subtype="PCM_16",
        )
    elif path:
        p = Path(path) if Path(path).is_absolute() else src_dir / path
        if not p.is_file():
            raise FileNotFoundError(f"no bytes and no file at {path}")
        return str(p)
    else:
        raise ValueError("audio struct has neither bytes nor path")
    try:
        sf.info(str(target))
    except Exception as exc:
        target.unlink(missing_ok=True)
        raise ValueError(f"audio bytes do not decode: {exc}".splitlines()[0]) from None
    return str(target.relative_to(w.out))


def import_hf_parquet(src: Path, w: ImportWriter, mapping: dict[str, str], speaker: str | None,
                      language: str | None) -> None:
    import pyarrow.parquet as pq

    files = [src] if src.is_file() else [p for p in _walk_sorted(src) if p.suffix in (".parquet", ".pq")]
    if not files:
        raise UserError(f"import hf-parquet: no .parquet files in {src}")
    for file in files:
        pf = pq.ParquetFile(file)
        names = pf.schema_arrow.names
        cols = {dst: s for s, dst in mapping.items() if s in names}  # contract -> source
        for dst, guesses in GUESS.items():
            if dst not in cols:
                for g in guesses:
                    if g in names and g not in mapping:
                        cols[dst] = g
                        break
        for c in CONTRACT:  # contract names present as they are
            if c not in cols and c in names and c not in mapping:
                cols[c] = c
        if "audio" not in cols:
            raise UserError(
                f"import hf-parquet: {file.name} has no audio column (columns: {', '.join(names)}); "
                "map one with --columns NAME=audio"
            )
        row_no = 0
        for batch in pf.iter_batches(batch_size=64, columns=sorted(set(cols.values()))):
            for rec in batch.to_pylist():
                row_no += 1
                where = f"{file.name}:{row_no}"
                row = {dst: rec.get(s) for dst, s in cols.items()}
                uid = str(row.get("id") or f"{file.stem}-{row_no:07d}")
                said = row.get("text")
                if not isinstance(said, str) or not said.strip():
                    w.reject(where, "missing_text", uid)
                    continue
                spk = row.get("speaker") if row.get("speaker") not in (None, "") else speaker
                if spk is None:
                    w.reject(
                        where, "missing_speaker", f"{uid}: no speaker column (map one, or give --speaker)"
                    )
                    continue
                try:
                    audio = _write_audio(row["audio"], uid, w, file.parent)
                except FileNotFoundError as exc:
                    w.reject(where, "audio_not_found", f"{uid}: {exc}")
                    continue
                except (ValueError, OSError) as exc:
                    w.reject(where, "unreadable_audio", f"{uid}: {exc}")
                    continue
                out = {k: (v if isinstance(v, (int, float)) and k == "duration" else
                           (str(v) if v is not None else None)) for k, v in row.items() if k in CONTRACT}
                out.update(id=uid, audio=audio, text=said.strip(), speaker=str(spk))
                out.setdefault("language", language)
                w.add(out, where)


# -- lhotse --------------------------------------------------------------------------------------

def _jsonl(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


def _lhotse_files(src: Path) -> tuple[list[Path], list[Path], list[Path]]:
    files = (
        [src] if src.is_file() else [p for p in _walk_sorted(src) if p.name.endswith((".jsonl", ".jsonl.gz"))]
    )
    pick = lambda key: [p for p in files if key in p.name]
    return pick("recordings"), pick("supervisions"), pick("cuts")


def _recording_path(rec: dict, base: Path) -> tuple[str | None, str | None]:
    """(absolute audio path, None) or (None, why not)."""
    sources = rec.get("sources") or []
    if len(sources) != 1:
        return None, f"{len(sources)} sources (one file per recording is supported)"
    s = sources[0]
    if s.get("type") != "file":
        return None, f"source type {s.get('type')!r} (only 'file')"
    p = Path(s.get("source", ""))
    p = p if p.is_absolute() else base / p
    return str(p), None


def _emit_supervision(sup: dict, rec: dict, offset: float, base: Path, w: ImportWriter, where: str,
                      speaker: str | None, language: str | None) -> None:
    import soundfile as sf

    uid = str(sup.get("id") or "")
    said = sup.get("text")
    if not uid or not isinstance(said, str) or not said.strip():
        w.reject(where, "missing_text", uid or "no id")
        return
    spk = sup.get("speaker") or speaker
    if not spk:
        w.reject(where, "missing_speaker", uid)
        return
    path, why = _recording_path(rec, base)
    if path is None:
        w.reject(where, "unsupported_source", f"{uid}: {why}")
        return
    if not Path(path).is_file():
        w.reject(where, "audio_not_found", f"{uid}: {path}")
        return
    start = float(offset) + float(sup.get("start", 0.0))
    dur = float(sup.get("duration", rec.get("duration", 0.0)))
    rec_dur = float(rec.get("duration") or 0.0)
    audio = path
    if start > 0.005 or (rec_dur and dur < rec_dur - 0.01):
        try:
            info = sf.info(path)
            first, frames = int(round(start * info.samplerate)), int(round(dur * info.samplerate))
            if first + frames > info.frames + int(0.01 * info.samplerate):
                raise ValueError(
                    f"segment {start:.2f}+{dur:.2f} s runs past the recording ({info.duration:.2f} s)"
                )
            x, sr = sf.read(path, start=first, frames=frames, dtype="float32", always_2d=True)
            ch = sup.get("channel", 0)
            ch = ch[0] if isinstance(ch, list) else ch
            x = x[:, int(ch)] if x.shape[1] > int(ch or 0) else x.mean(axis=1)
            (w.out / "wavs").mkdir(exist_ok=True)
            target = w.out / "wavs" / f"{safe_name(uid)}.wav"
            sf.write(target, x, sr, subtype="PCM_16")
            audio = str(target.relative_to(w.out))
        except Exception as exc:  # a bad segment is rejected, the rest goes on
            w.reject(where, "unreadable_audio", f"{uid}: {exc}".splitlines()[0])
            return
    custom = sup.get("custom") or {}
    row = {"id": uid, "audio": audio, "text": said.strip(), "speaker": str(spk), "duration": round(dur, 4),
           "language": sup.get("language") or language, "gender": sup.get("gender")}
    for k in CONTRACT:
        if k not in row and isinstance(custom.get(k), str):
            row[k] = custom[k]
    if isinstance(row.get("gender"), str):
        row["gender"] = {"f": "female", "m": "male"}.get(row["gender"].lower(), row["gender"].lower())
    w.add(row, where)


def import_lhotse(src: Path, w: ImportWriter, speaker: str | None, language: str | None) -> None:
    recs, sups, cuts = _lhotse_files(src)
    if not cuts and not (recs and sups):
        raise UserError(f"import lhotse: {src}: need *recordings*.jsonl[.gz] + *supervisions*.jsonl[.gz], "
                        "or *cuts*.jsonl[.gz]")
    for path in cuts:
        for n, line in _jsonl(path):
            where = f"{path.name}:{n}"
            try:
                cut = json.loads(line)
                rec = cut["recording"]
            except (ValueError, KeyError, TypeError) as exc:
                w.reject(where, "bad_line", f"not a cut with a recording: {exc}")
                continue
            for sup in cut.get("supervisions") or []:
                _emit_supervision(
                    sup, rec, float(cut.get("start", 0.0)), path.parent, w, where, speaker, language
                )
    if cuts:
        return
    with tempfile.TemporaryDirectory(dir=w.out, prefix=".lhotse-index-") as tmp, \
            contextlib.closing(sqlite3.connect(Path(tmp) / "recordings.db")) as db:
        db.execute("CREATE TABLE rec (id TEXT PRIMARY KEY, json TEXT, base TEXT)")
        for path in recs:
            rows = []
            for n, line in _jsonl(path):
                try:
                    rec = json.loads(line)
                    rows.append((str(rec["id"]), line, str(path.parent)))
                except (ValueError, KeyError, TypeError) as exc:
                    w.reject(f"{path.name}:{n}", "bad_line", f"not a recording: {exc}")
                if len(rows) >= 5000:
                    db.executemany("INSERT OR REPLACE INTO rec VALUES (?, ?, ?)", rows)
                    rows = []
            db.executemany("INSERT OR REPLACE INTO rec VALUES (?, ?, ?)", rows)
        db.commit()
        for path in sups:
            for n, line in _jsonl(path):
                where = f"{path.name}:{n}"
                try:
                    sup = json.loads(line)
                    rid = str(sup["recording_id"])
                except (ValueError, KeyError, TypeError) as exc:
                    w.reject(where, "bad_line", f"not a supervision: {exc}")
                    continue
                hit = db.execute("SELECT json, base FROM rec WHERE id = ?", (rid,)).fetchone()
                if hit is None:
                    w.reject(where, "unknown_recording", rid)
                    continue
                _emit_supervision(sup, json.loads(hit[0]), 0.0, Path(hit[1]), w, where, speaker, language)
