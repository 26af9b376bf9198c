"""The `speaker_mapping` stage: speaker name -> class id for the speaker classifier (stage 2).

    counts = count_speakers("data/prepared/manifest.parquet")    # pyarrow table: speaker, count
    mapping, metrics = select_speakers(counts, top_k=500, min_samples=50)
    run_speaker_mapping(params.speaker_mapping)                   # the stage: files + metrics

Columnar: only the `speaker` column is read (Parquet: one column; JSONL: pyarrow's JSON reader
with a one-column explicit schema, in blocks), and counted with `value_counts`. Numeric
speaker names in JSONL (`"speaker": 123`) count as the string "123", the same speaker as
`"speaker": "123"`; null and empty names are not counted.

Ids: utterance count descending, ties by name ascending (code point order); only speakers
with at least `min_samples` utterances; at most `top_k`.
"""
from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

from tristage.data.config import SpeakerMappingParams
from tristage.errors import UserError

log = logging.getLogger(__name__)

SPEAKER = "speaker"
CHUNK_BYTES = 64 << 20  # JSONL is parsed in chunks of about this many bytes (whole lines)
METRIC_KEYS = ("total_samples", "total_speakers", "speakers_with_min_samples", "selected_speakers",
               "selected_samples", "selected_fraction")
# `"speaker": 123` -> `"speaker": "123"` (only where the key is a real key: `\"speaker\"` inside a
# string has a backslash before the closing quote and does not match).
_NUMERIC_SPEAKER = re.compile(rb'("speaker"\s*:\s*)(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)')


def _counts_table(values):
    """pyarrow Table (speaker: string, count: int64) of one array/chunked array of names."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if values.type != pa.string():
        values = pc.cast(values, pa.string())
    vc = pc.value_counts(values)  # count first, then drop null / "" from the (small) result
    if isinstance(vc, pa.ChunkedArray):
        vc = vc.combine_chunks()
    names, counts = vc.field("values"), pc.cast(vc.field("counts"), pa.int64())
    keep = pc.fill_null(pc.not_equal(names, ""), False)
    return pa.table({"speaker": names.filter(keep), "count": counts.filter(keep)})


def _merge_counts(tables):
    import pyarrow as pa

    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.table({"speaker": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
    if len(tables) == 1:
        return tables[0]
    merged = pa.concat_tables(tables).group_by("speaker").aggregate([("count", "sum")])
    return merged.rename_columns(["speaker", "count"]).select(["speaker", "count"])


def _parse_chunk(chunk: bytes, first_line: int, path: Path):
    """The speaker column of a chunk of whole JSONL lines."""
    import pyarrow as pa
    import pyarrow.json as pj

    opts = pj.ParseOptions(
        explicit_schema=pa.schema([(SPEAKER, pa.string())]), unexpected_field_behavior="ignore"
    )
    read = pj.ReadOptions(block_size=4 << 20, use_threads=True)
    try:
        return pj.read_json(io.BytesIO(chunk), read_options=read, parse_options=opts).column(SPEAKER)
    except pa.ArrowInvalid:
        pass
    # Numbers mixed with strings: quote the numbers (rare; costs one regex pass over this chunk).
    try:
        fixed = _NUMERIC_SPEAKER.sub(rb'\1"\2"', chunk)
        return pj.read_json(io.BytesIO(fixed), read_options=read, parse_options=opts).column(SPEAKER)
    except pa.ArrowInvalid as exc:
        line, why = _first_bad_line(chunk, first_line)
        raise UserError(f"{path}: line {line}: {why or str(exc).splitlines()[0]}; fix the line or run the "
                        f"`prepare` stage and map its prepared manifest") from None


def _first_bad_line(chunk: bytes, first_line: int) -> tuple[int, str]:
    for i, raw in enumerate(chunk.split(b"\n")):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return first_line + i, f"not valid JSON ({exc})"
        if not isinstance(row, dict):
            return first_line + i, "not a JSON object"
        v = row.get(SPEAKER)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (str, int, float))):
            return first_line + i, f"speaker must be a string or a number, got {type(v).__name__}"
    return first_line, ""


def iter_jsonl_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES):
    """(first line number, bytes of whole lines) pieces of a JSONL file."""
    line = 1
    with open(path, "rb") as f:
        rest = b""
        while True:
            block = f.read(chunk_bytes)
            if not block:
                break
            block = rest + block
            cut = block.rfind(b"\n")
            if cut < 0:
                rest = block
                continue
            chunk, rest = block[: cut + 1], block[cut + 1:]
            if line == 1 and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
            yield line, chunk
            line += chunk.count(b"\n")
        if rest.strip():
            if line == 1 and rest.startswith(b"\xef\xbb\xbf"):
                rest = rest[3:]
            yield line, rest + b"\n"


def _count_jsonl_streaming(path: Path, block_bytes: int = 4 << 20, group_rows: int = 1 << 20):
    """The fast path: pyarrow's streaming JSON reader with a one-column schema (parses blocks in
    threads), counting every ~1M rows so memory stays at one group of names + the counts."""
    import pyarrow as pa
    import pyarrow.json as pj

    opts = pj.ParseOptions(
        explicit_schema=pa.schema([(SPEAKER, pa.string())]), unexpected_field_behavior="ignore"
    )
    reader = pj.open_json(path, read_options=pj.ReadOptions(block_size=block_bytes), parse_options=opts)
    tables, pending, n = [], [], 0
    for batch in reader:
        pending.append(batch.column(0))
        n += batch.num_rows
        if n >= group_rows:
            tables.append(_counts_table(pa.chunked_array(pending, pa.string())))
            pending, n = [], 0
    if pending:
        tables.append(_counts_table(pa.chunked_array(pending, pa.string())))
    return _merge_counts(tables)


def count_speakers(path: str | Path, chunk_bytes: int = CHUNK_BYTES):
    """Utterances per speaker of a JSONL or Parquet manifest: a pyarrow Table (speaker, count)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        hint = ("run the `prepare` stage first (dvc repro prepare)" if path.name == "manifest.parquet"
                else "check speaker_mapping.manifest")
        raise UserError(f"{path}: manifest not found; {hint}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:
            raise UserError(f"{path}: cannot read as Parquet: {exc}") from None
        if SPEAKER not in pf.schema_arrow.names:
            raise UserError(f"{path}: no `speaker` column (columns: {', '.join(pf.schema_arrow.names)})")
        return _merge_counts([_counts_table(rb.column(SPEAKER))
                              for rb in pf.iter_batches(batch_size=1 << 20, columns=[SPEAKER])])
    if suffix in (".jsonl", ".ndjson", ".json"):
        try:
            return _count_jsonl_streaming(path)
        except UserError:
            raise
        except Exception as exc:  # mixed numbers and strings, a BOM, a bad line: the careful path
            log.debug("speaker_mapping: streaming JSON reader failed (%s); reading %s in chunks", exc, path)
        return _merge_counts([_counts_table(_parse_chunk(chunk, first, path))
                              for first, chunk in iter_jsonl_chunks(path, chunk_bytes)])
    raise UserError(f"{path}: unknown manifest format {suffix!r}; use .jsonl or .parquet")


def select_speakers(counts, top_k: int, min_samples: int) -> tuple[dict[str, int], dict]:
    """(name -> id in id order, metrics) from a (speaker, count) table."""
    import pyarrow.compute as pc

    order = pc.sort_indices(counts, sort_keys=[("count", "descending"), ("speaker", "ascending")])
    ranked = counts.take(order)
    n_counts = ranked.column("count").to_numpy()
    eligible = int((n_counts >= min_samples).sum())
    k = min(top_k, eligible)
    names = ranked.column("speaker").slice(0, k).to_pylist()
    total = int(n_counts.sum())
    selected = int(n_counts[:k].sum())
    metrics = {
        "total_samples": total,
        "total_speakers": int(counts.num_rows),
        "speakers_with_min_samples": eligible,
        "selected_speakers": k,
        "selected_samples": selected,
        "selected_fraction": round(selected / total, 6) if total else 0.0,
    }
    return {name: i for i, name in enumerate(names)}, metrics


def _zero_selected_message(path: Path, counts, min_samples: int) -> str:
    if counts.num_rows == 0:
        return f"{path}: no speakers found (no rows with a speaker); check the manifest"
    import pyarrow.compute as pc

    mx = pc.max(counts.column("count")).as_py()
    return (f"{path}: no speaker has speaker_mapping.min_samples={min_samples} utterances "
            f"({counts.num_rows} speakers, the largest has {mx}); lower speaker_mapping.min_samples "
            f"(e.g. --set speaker_mapping.min_samples={max(1, mx)}) or add data")


def run_speaker_mapping(p: SpeakerMappingParams, tracker=None) -> dict:
    """Write `p.output` (name -> id) and `p.metrics`; return the metrics."""
    from tristage.fsio import write_json

    counts = count_speakers(p.manifest)
    mapping, metrics = select_speakers(counts, p.top_k, p.min_samples)
    if not mapping:
        raise UserError(_zero_selected_message(p.manifest, counts, p.min_samples))
    write_json(p.output, mapping, indent=1)
    write_json(p.metrics, metrics)
    log.info("speaker_mapping: %d of %d speakers selected (%d of %d samples, %.2f%%) -> %s",
             metrics["selected_speakers"], metrics["total_speakers"], metrics["selected_samples"],
             metrics["total_samples"], 100 * metrics["selected_fraction"], p.output)
    if tracker is not None:
        tracker.log_artifact(p.output)
    return metrics
