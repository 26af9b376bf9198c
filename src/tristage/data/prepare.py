"""The `prepare` stage: check every manifest row, keep the usable ones in the prepared manifest.

    run_prepare(params.prepare) -> {"rows_in": ..., "rows_kept": ..., "rows_rejected": ...,
                                    "rejects_by_reason": {...}, "total_duration_s": ...}

Reads `manifest` (JSONL or Parquet, by suffix) in batches of `batch_rows`, so a manifest of
millions of rows never sits in memory as Python objects. For each row:

1. parse (JSONL: one object per line; blank lines are skipped) and map column names
   (`columns`: source name -> contract name);
2. check the fields: `audio`, `text`, `speaker` present and non-empty; text a real string
   (NFC, whitespace collapsed, control characters removed, not empty afterwards); speaker
   and id coerced to strings (`123` -> `"123"`); id defaults to the audio path without its
   suffix;
3. check the audio (in `workers` threads): the file exists, its header reads, the duration
   from the header lies in [min_duration, max_duration] and agrees with a `duration`
   column if there is one, it decodes and is not silent (RMS below `silence_dbfs`).
   With `check_audio: false` the `duration` column is trusted and no file is opened;
4. drop duplicate ids: the first usable row wins.

Outputs (replaced atomically as one folder): `<out_dir>/manifest.parquet` (schema
`tristage.data.manifest.prepared_schema()`, audio relative to `out_dir`) and
`<out_dir>/rejects.jsonl` ({"line", "reason", "detail", "row"} per rejected row, `line` the
1-based line of a JSONL manifest or row of a Parquet one); `metrics` gets the counts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Iterable, Iterator

from tristage.data.config import PrepareParams
from tristage.data.manifest import (
    ATTRIBUTE_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    prepared_schema,
    relative_audio,
)
from tristage.errors import UserError

log = logging.getLogger(__name__)

# Stable reject reason codes (rejects.jsonl `reason`, metrics `rejects_by_reason`).
REASONS = (
    "bad_json",
    "missing_field",
    "invalid_text",
    "invalid_field",
    "audio_not_found",
    "unreadable_audio",
    "duration_out_of_range",
    "duration_mismatch",
    "silent_audio",
    "duplicate_id",
)
OUTPUT_FILES = ("manifest.parquet", "rejects.jsonl")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
# A `duration` column may differ from the header by this much before the row is rejected.
DURATION_TOLERANCE_S = 0.5
DURATION_TOLERANCE_REL = 0.1
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_ALNUM = re.compile(r"[^\W_]")  # a letter or a digit


class Reject(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Item:
    """One source row on its way through the checks."""

    line: int  # 1-based line (JSONL) or row (Parquet) number
    raw: Any  # the row as read (dict, or the line text when it did not parse)
    record: dict | None = None  # prepared columns, once the fields passed
    audio_path: str | None = None  # absolute
    reject: Reject | None = None


# -- reading --------------------------------------------------------------------------------------

def manifest_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise UserError(
        f"{path}: unknown manifest format {suffix!r}; use .jsonl (one JSON object per line) or .parquet"
    )


def iter_jsonl(path: Path, batch_rows: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte order mark
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                item = Item(line_no, raw.decode("utf-8", "replace").rstrip("\r\n"))
                item.reject = Reject(
                    "invalid_text", f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})"
                )
            else:
                text = text.rstrip("\r\n")
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    item = Item(line_no, text[:2000])
                    item.reject = Reject("bad_json", f"not valid JSON: {exc.msg} (column {exc.colno})")
                else:
                    item = Item(line_no, row)
                    if not isinstance(row, dict):
                        item.reject = Reject("bad_json", f"expected a JSON object, got {type(row).__name__}")
            batch.append(item)
            if len(batch) >= batch_rows:
                yield batch
                batch = []
    if batch:
        yield batch


def iter_parquet(path: Path, batch_rows: int) -> Iterator[list[Item]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise UserError(f"{path}: cannot read as Parquet: {exc}") from None
    row = 0
    for rb in pf.iter_batches(batch_size=batch_rows):
        items = []
        for rec in rb.to_pylist():
            row += 1
            items.append(Item(row, rec))
        yield items


def parquet_rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return None


# -- field checks ---------------------------------------------------------------------------------

def normalize_text(value: Any, field: str, allow_empty: bool = False) -> str:
    """NFC, control characters removed, whitespace collapsed; Reject when it is not usable text."""
    if not isinstance(value, str):
        raise Reject("invalid_text", f"{field}: expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject("invalid_text", f"{field}: contains unpaired surrogates (undecodable text)") from None
    if "\ufffd" in value:
        raise Reject("invalid_text", f"{field}: contains U+FFFD, the text was not decoded properly")
    text = value if unicodedata.is_normalized("NFC", value) else unicodedata.normalize("NFC", value)
    text = " ".join(_CONTROL.sub(" ", text).split())
    if not text and not allow_empty:
        kind = "missing_field" if not value.strip() else "invalid_text"
        why = "" if kind == "missing_field" else " after removing control characters"
        raise Reject(kind, f"{field}: empty{why}")
    if text and not allow_empty and not _ALNUM.search(text):
        raise Reject("invalid_text", f"{field}: no letters or digits in {text[:40]!r}")
    return text


def as_name(value: Any, field: str) -> str:
    """A speaker/id value as a string: numbers become their decimal form (123 and "123" are one speaker)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Reject("invalid_field", f"{field}: expected a string or a number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Reject("invalid_field", f"{field}: {value!r} is not a name")
        value = str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if not text:
        raise Reject("missing_field", f"{field}: empty")
    return text


def optional_str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Reject("invalid_field", f"{field}: expected a string, got {type(value).__name__}")
    text = " ".join(unicodedata.normalize("NFC", str(value)).split())
    return text or None


def as_duration(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        d = float(value)
    except (TypeError, ValueError):
        raise Reject("invalid_field", f"duration: {value!r} is not a number of seconds") from None
    if not math.isfinite(d) or d < 0:
        raise Reject("invalid_field", f"duration: {value!r} is not a number of seconds")
    return d


def default_id(audio: str) -> str:
    """The id of a row without one: its audio path without the suffix ("wavs/a_001")."""
    p = PurePath(audio.replace("\\", "/"))
    return str(p.with_suffix("")) if p.suffix else str(p)


def check_fields(row: dict, columns: dict[str, str], manifest_dir: str) -> tuple[dict, str, float | None]:
    """The prepared record (without duration / sample_rate), the audio file, the manifest's duration."""
    if columns:
        row = dict(row)
        for src, dst in columns.items():
            if src in row:
                row[dst] = row.pop(src)
    for field in REQUIRED_COLUMNS:
        v = row.get(field)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise Reject("missing_field", f"{field}: missing or empty")
    audio = row["audio"]
    if not isinstance(audio, str):
        raise Reject("invalid_field", f"audio: expected a path string, got {type(audio).__name__}")
    audio = audio.strip()
    text = normalize_text(row["text"], "text")
    speaker = as_name(row["speaker"], "speaker")
    rid = row.get("id")
    rid = (
        default_id(audio) if rid is None or (isinstance(rid, str) and not rid.strip()) else as_name(rid, "id")
    )
    caption = row.get("caption")
    caption = "" if caption is None else normalize_text(caption, "caption", allow_empty=True)
    rec = {"id": rid, "text": text, "speaker": speaker, "caption": caption}
    for field in ("emotion", "language") + ATTRIBUTE_COLUMNS:
        rec[field] = optional_str(row.get(field), field)
    # like manifest.resolve_audio, without its per-row file system calls (manifest_dir is resolved)
    path = audio if os.path.isabs(audio) else os.path.normpath(os.path.join(manifest_dir, audio))
    return rec, path, as_duration(row.get("duration"))


# -- audio checks ---------------------------------------------------------------------------------

def probe_audio(path: str, p: PrepareParams, manifest_duration: float | None) -> tuple[float, int]:
    """(duration s, sample rate) of a usable audio file; Reject otherwise. Header first, then samples."""
    import numpy as np
    import soundfile as sf

    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise Reject("audio_not_found", f"audio: {path} does not exist")
    try:
        info = sf.info(path)
    except Exception as exc:
        raise Reject("unreadable_audio", f"audio: {name}: {str(exc).splitlines()[0][:200]}") from None
    if info.samplerate <= 0:
        raise Reject("unreadable_audio", f"audio: {name}: sample rate {info.samplerate}")
    duration = info.frames / info.samplerate
    if not p.min_duration <= duration <= p.max_duration:
        raise Reject("duration_out_of_range",
                     f"audio: {name}: {duration:.3f} s is outside [{p.min_duration}, {p.max_duration}] s")
    if manifest_duration is not None and \
            abs(manifest_duration - duration) > max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_REL * duration):
        raise Reject("duration_mismatch",
                     f"duration: the manifest says {manifest_duration:.3f} s, "
                     f"the file {name} has {duration:.3f} s")
    try:
        data, _ = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise Reject("unreadable_audio", f"audio: {name}: cannot decode: {why}") from None
    if len(data) < 0.9 * info.frames:
        raise Reject("unreadable_audio", f"audio: {name}: truncated ({len(data)} of {info.frames} frames)")
    rms = float(np.sqrt(np.mean(np.square(data, dtype=np.float64)))) if data.size else 0.0
    dbfs = 20 * math.log10(max(rms, 1e-12))
    if dbfs < p.silence_dbfs:
        raise Reject("silent_audio", f"audio: {name}: RMS {dbfs:.1f} dBFS is below {p.silence_dbfs} dBFS")
    return duration, int(info.samplerate)


def _check_item(item: Item, p: PrepareParams, manifest_dir: str) -> Item:
    """Field and audio checks of one item (runs in a worker thread)."""
    if item.reject is not None:
        return item
    try:
        rec, path, manifest_duration = check_fields(item.raw, p.columns, manifest_dir)
        if p.check_audio:
            duration, sr = probe_audio(path, p, manifest_duration)
        else:
            if manifest_duration is None:
                raise Reject("missing_field", "duration: needed when prepare.check_audio is false")
            if not p.min_duration <= manifest_duration <= p.max_duration:
                raise Reject(
                    "duration_out_of_range",
                    f"duration: {manifest_duration:.3f} s is outside [{p.min_duration}, {p.max_duration}] s",
                )
            duration, sr = manifest_duration, None
        rec["duration"], rec["sample_rate"] = float(duration), sr
        item.record, item.audio_path = rec, path
    except Reject as r:
        item.reject = r
    return item


# -- the stage ------------------------------------------------------------------------------------

def _check_params(p: PrepareParams) -> None:
    allowed = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    for src, dst in p.columns.items():
        if dst not in allowed:
            raise UserError(f"prepare.columns.{src}: maps to {dst!r}, which is not a manifest column; "
                            f"use one of {', '.join(allowed)}")
    if not p.manifest.is_file():
        hint = ("run `dvc repro corpus` first (or point prepare.manifest at your own manifest)"
                if p.manifest.parent.name == "raw" and p.manifest.name == "manifest.jsonl"
                else "check prepare.manifest")
        raise UserError(f"{p.manifest}: manifest not found; {hint}")
    out = p.out_dir.resolve()
    if out == p.manifest.resolve().parent or out in p.manifest.resolve().parents:
        raise UserError(
            f"prepare.out_dir: {p.out_dir} holds the input manifest; choose a separate output folder"
        )
    if out.is_dir():
        other = sorted(x.name for x in out.iterdir() if x.name not in OUTPUT_FILES)
        if other:
            raise UserError(
                f"prepare.out_dir: {p.out_dir} holds other files ({', '.join(other[:3])}); the stage "
                f"replaces this folder, so point it at an empty or prepare-only folder"
            )


def _id_key(rid: str) -> bytes:
    return hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=8).digest()


@dataclass
class _Tally:
    """What `run_prepare` counts while it streams the manifest."""
    reasons: Counter = dataclasses.field(default_factory=Counter)  # reject reason -> rows
    examples: list[str] = dataclasses.field(default_factory=list)  # the first 3 rejects, for the log
    seen: set[bytes] = dataclasses.field(default_factory=set)  # ids kept so far
    speakers: set[str] = dataclasses.field(default_factory=set)
    rows_in: int = 0
    rows_kept: int = 0
    total_duration: float = 0.0

    def keep_or_reject(self, checked: Iterable[Item], out_dir: Path, rejects) -> list[dict]:
        """The usable records of one checked batch, in manifest order (the first usable row of an id wins);
        the others go to `rejects` with their line and reason."""
        kept: list[dict] = []
        for item in checked:
            if item.reject is None:
                key = _id_key(item.record["id"])
                if key in self.seen:
                    item.reject = Reject(
                        "duplicate_id", f"id: {item.record['id']!r} already appeared earlier"
                    )
                else:
                    self.seen.add(key)
            if item.reject is not None:
                rej = item.reject
                self.reasons[rej.reason] += 1
                if len(self.examples) < 3:
                    self.examples.append(f"line {item.line} {rej.reason}: {rej.detail}")
                rejects.write(json.dumps({"line": item.line, "reason": rej.reason, "detail": rej.detail,
                                          "row": item.raw}, ensure_ascii=False, default=str) + "\n")
                continue
            rec = item.record
            rec["audio"] = relative_audio(out_dir, item.audio_path)
            kept.append(rec)
            self.speakers.add(rec["speaker"])
            self.total_duration += rec["duration"]
        return kept

    def metrics(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "rows_kept": self.rows_kept,
            "rows_rejected": self.rows_in - self.rows_kept,
            "rejects_by_reason": {k: self.reasons.get(k, 0) for k in REASONS},
            "total_duration_s": round(self.total_duration, 3),
            "speakers": len(self.speakers),
        }


def run_prepare(prep: PrepareParams, tracker=None) -> dict:
    """Check `prep.manifest`; write the prepared manifest + rejects into `prep.out_dir`, metrics to
    `prep.metrics`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from tristage.fsio import atomic_dir, write_json

    _check_params(prep)
    manifest = prep.manifest.resolve()
    manifest_dir = str(manifest.parent)
    out_dir = prep.out_dir.resolve()
    fmt = manifest_format(manifest)
    batches = (
        iter_jsonl(manifest, prep.batch_rows) if fmt == "jsonl" else iter_parquet(manifest, prep.batch_rows)
    )
    total = parquet_rows(manifest) if fmt == "parquet" else None
    schema = prepared_schema()
    tally = _Tally()

    with atomic_dir(out_dir) as tmp, ThreadPoolExecutor(max_workers=prep.workers) as pool, \
            open(tmp / "rejects.jsonl", "w", encoding="utf-8") as rejects, \
            pq.ParquetWriter(tmp / "manifest.parquet", schema) as writer, \
            tqdm(total=total, desc="prepare", unit="row", mininterval=1.0) as bar:
        for batch in batches:
            tally.rows_in += len(batch)
            check = lambda it: _check_item(it, prep, manifest_dir)
            # file checks in threads (soundfile releases the GIL); field checks alone are cheaper inline
            checked = pool.map(check, batch) if prep.check_audio else map(check, batch)
            kept = tally.keep_or_reject(checked, out_dir, rejects)
            if kept:
                writer.write_table(pa.Table.from_pylist(kept, schema=schema))
                tally.rows_kept += len(kept)
            bar.update(len(batch))
            bar.set_postfix(kept=tally.rows_kept, rejected=tally.rows_in - tally.rows_kept, refresh=False)
        if tally.rows_kept == 0:
            top = (
                ", ".join(f"{k} x{v}" for k, v in tally.reasons.most_common(3)) or "the manifest has no rows"
            )
            raise UserError(f"{prep.manifest}: no usable rows out of {tally.rows_in}; reasons: {top}"
                            + (f"; first: {tally.examples[0]}" if tally.examples else ""))

    metrics = tally.metrics()
    write_json(prep.metrics, metrics)
    log.info("prepare: kept %d of %d rows (%d rejected: %s) -> %s", tally.rows_kept, tally.rows_in,
             tally.rows_in - tally.rows_kept, dict(tally.reasons.most_common()), out_dir / "manifest.parquet")
    for ex in tally.examples:
        log.info("prepare: reject %s", ex)
    if tracker is not None:
        tracker.log_artifact(out_dir / "rejects.jsonl")
    return metrics
