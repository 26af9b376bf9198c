"""The `annotate` stage: prepared manifest -> measured, binned and captioned manifest.

    run_annotate(params.annotate, lexicon=params.caption_vectors.lexicon) -> metrics

1. measure every utterance (`tristage.audio.measures.measure`: f0, pitch spread, speech span,
   words/s, SNR, RT60) in `workers` processes, `shard_size` rows per task; each finished shard
   is saved as `<out_dir>/measures/shard-NNNNN.parquet` with a fingerprint of its rows, so a
   rerun (or a run after kill -9) measures only what changed. Audio that does not read is
   counted (`failed.jsonl`), its row kept without measures;
2. fit `AttributeBins` on the corpus (pitch per gender), or read them from `bins` (another corpus's, kept
   as they are: `tristage finetune`), and save them as `<out_dir>/bins.json`, the bins `evaluate` uses
   for generated audio;
3. fill the attribute columns `pitch`, `speed`, `modulation`, `quality` where empty (all of them
   with `overwrite: true`); before that, where a row already has a value, count how often the
   measured bin agrees (`metrics.agreement`, also reduced to low/moderate/high classes);
4. write a caption (`CaptionWriter`, lexicon phrases, seeded per row id) for rows without one;
   user captions are never changed;
5. `<out_dir>/manifest.parquet`: the prepared columns (audio relative to `out_dir`) + the
   measures; each output file is written atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tristage.annotation.config import AnnotateParams
from tristage.errors import UserError

log = logging.getLogger(__name__)
FILLED = ("pitch", "speed", "modulation", "quality")
SHARDS = "measures"


def _measure_one(audio: str, text: str | None) -> tuple[dict | None, str | None]:
    import soundfile as sf

    from tristage.audio.measures import measure

    try:
        x, sr = sf.read(audio, dtype="float32", always_2d=True)
        return measure(x, sr, text).to_dict(), None
    except Exception as exc:  # any bad file is recorded, the rest goes on
        return None, f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]


def measure_shard(task: tuple[int, list[tuple[str, str, str]]]) -> tuple[int, list[dict]]:
    """(shard, [(id, absolute audio path, text)]) -> (shard, one record per row: id, measures..., error)."""
    from tristage.audio.measures import MEASURE_COLUMNS

    shard, rows = task
    out = []
    for uid, audio, text in rows:
        m, err = _measure_one(audio, text)
        rec = {"id": uid, **(m or {k: None for k in MEASURE_COLUMNS}), "error": err}
        out.append(rec)
    return shard, out


def fingerprint(rows: list[tuple[str, str, str]]) -> str:
    """The rows and the measuring code: a changed `measures.py` measures everything again."""
    from tristage.audio import measures

    h = hashlib.sha256(Path(measures.__file__).read_bytes())
    for uid, audio, text in rows:
        h.update(f"\0{uid}\0{audio}\0{text}".encode())
    return h.hexdigest()[:32]


def _shard_path(out: Path, i: int) -> Path:
    return out / SHARDS / f"shard-{i:05d}.parquet"


def _shard_fingerprint(path: Path) -> str | None:
    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(path).metadata or {}
    except Exception:  # a damaged cache file is measured again
        return None
    return md.get(b"fingerprint", b"").decode() or None


def _write_shard(path: Path, records: list[dict], fp: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tristage.audio.measures import MEASURE_COLUMNS
    from tristage.fsio import atomic_path

    cols = {
        "id": pa.string(),
        **{c: (pa.int32() if c == "n_words" else pa.float64()) for c in MEASURE_COLUMNS},
        "error": pa.string(),
    }
    schema = pa.schema(list(cols.items()), metadata={"fingerprint": fp})
    table = pa.table({c: [r[c] for r in records] for c in cols}, schema=schema)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def _missing(value) -> bool:
    return (
        value is None
        or (isinstance(value, float) and value != value)
        or (isinstance(value, str) and not value.strip())
    )


def check_levels(ap: AnnotateParams, lexicon: dict) -> None:
    """Every level and quality value must be a lexicon value (the captions and caption vectors use them)."""
    from tristage.audio.measures import QUALITY_LEVELS

    for attr, values in [*ap.levels.items(), ("quality", [*QUALITY_LEVELS, "reverberant"])]:
        known = lexicon.get(attr, {})
        for v in values:
            if v not in known:
                key = f"annotate.levels.{attr}" if attr != "quality" else "annotate.quality"
                raise UserError(f"{key}: {v!r} is not a value of caption_vectors.lexicon.{attr} "
                                f"({', '.join(known) or 'no values'})")


def agreement(given: list, measured: list) -> dict:
    """How often the measured bin equals the given value, where both exist: exact, and reduced to
    low / moderate / high (`coarse`); `chance_coarse` is what matching the marginals at random gives."""
    from collections import Counter

    from tristage.audio.measures import coarse

    pairs = [(str(g), m) for g, m in zip(given, measured) if not _missing(g) and m is not None]
    if not pairs:
        return {"n": 0}
    n = len(pairs)
    cg, cm = Counter(coarse(g) for g, _ in pairs), Counter(coarse(m) for _, m in pairs)
    return {"n": n, "exact": round(sum(g == m for g, m in pairs) / n, 4),
            "coarse": round(sum(coarse(g) == coarse(m) for g, m in pairs) / n, 4),
            "chance_coarse": round(sum(cg[k] * cm[k] for k in cg) / n / n, 4)}


@dataclass
class _Shards:
    """The manifest cut into shards of `size` rows: `rows[i]` = [(id, absolute audio path, text)],
    `fingerprints[i]` its fingerprint, `todo` the shards whose cached measures are missing or stale."""

    folder: Path  # the annotate out_dir; the shards are <folder>/measures/shard-NNNNN.parquet
    size: int
    rows: list[list[tuple[str, str, str]]]
    fingerprints: list[str]
    todo: list[int]

    def path(self, i: int) -> Path:
        return _shard_path(self.folder, i)

    def rows_measured_now(self) -> list[int]:
        """Positions (in the sorted manifest) of the rows of the shards measured in this run."""
        return [k for i in self.todo for k in range(i * self.size, i * self.size + len(self.rows[i]))]


@dataclass
class _Fill:
    """The attribute columns after filling: per attribute, how often the measured bin agreed with a
    given value (`agreement`) and how many values were filled in (`filled`)."""

    agreement: dict[str, dict]
    filled: dict[str, int]


def _read_manifest(ap: AnnotateParams):
    """The prepared manifest, checked (id, audio, text columns; rows; unique ids), sorted by id."""
    from tristage.data.manifest import read_prepared

    df = read_prepared(ap.manifest)
    for c in ("id", "audio", "text"):
        if c not in df.columns:
            raise UserError(f"{ap.manifest}: prepared manifest has no `{c}` column; rerun `prepare`")
    if df.empty:
        raise UserError(f"{ap.manifest}: no rows")
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise UserError(f"{ap.manifest}: duplicate id {dup.iloc[0]!r}; rerun `prepare`")
    return df.sort_values("id", kind="stable").reset_index(drop=True)


def _plan_shards(out: Path, rows: list[tuple[str, str, str]], size: int) -> _Shards:
    """Cut the rows into shards and find the ones to measure; drop leftovers of a killed run and the
    shards of a longer, older manifest."""
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    for tmp in (out / SHARDS).glob(".*.tmp"):  # leftovers of a killed run
        tmp.unlink(missing_ok=True)
    shard_rows = [rows[i:i + size] for i in range(0, len(rows), size)]
    fps = [fingerprint(r) for r in shard_rows]
    todo = [
        i
        for i, f in enumerate(fps)
        if not _shard_path(out, i).is_file() or _shard_fingerprint(_shard_path(out, i)) != f
    ]
    for p in (out / SHARDS).glob("shard-*.parquet"):  # shards of a longer, older manifest
        if int(p.stem.split("-")[1]) >= len(shard_rows):
            p.unlink()
    return _Shards(out, size, shard_rows, fps, todo)


def _measure_shards(shards: _Shards, workers: int, progress: bool) -> float:
    """Measure the `todo` shards (in `workers` processes where there are several) and save each as it
    finishes; -> the seconds it took."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    tasks = [(i, shards.rows[i]) for i in shards.todo]
    bar = tqdm(total=sum(len(shards.rows[i]) for i in shards.todo), unit="utt", desc="annotate",
               dynamic_ncols=True, mininterval=1.0, disable=not progress)
    if workers and len(tasks) > 1:
        with mp.get_context("fork").Pool(min(workers, len(tasks))) as pool:
            for i, records in pool.imap_unordered(measure_shard, tasks):
                _write_shard(shards.path(i), records, shards.fingerprints[i])
                bar.update(len(records))
    else:
        for task in tasks:
            i, records = measure_shard(task)
            _write_shard(shards.path(i), records, shards.fingerprints[i])
            bar.update(len(records))
    bar.close()
    return time.perf_counter() - t0


def _read_measures(shards: _Shards, ids: list[str]):
    """All shards' records (id, measures..., error), one row per manifest row in manifest order."""
    import pandas as pd
    import pyarrow.parquet as pq

    meas = pd.concat([pq.read_table(shards.path(i)).to_pandas() for i in range(len(shards.rows))],
                     ignore_index=True)
    if list(meas["id"]) != ids:
        raise RuntimeError(
            f"{shards.folder / SHARDS}: cached measures do not line up with the manifest; delete the folder"
        )
    return meas


def _fixed_bins(path: Path):
    """`AttributeBins` read from `annotate.bins` (UserError naming the key and the file when it won't do)."""
    from tristage.audio.measures import AttributeBins
    from tristage.fsio import read_json

    if not Path(path).is_file():
        raise UserError(f"annotate.bins: {path} not found (a bins.json written by `annotate`)")
    try:
        return AttributeBins.from_dict(read_json(path))
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"annotate.bins: {path}: {exc}") from None


def _fit_bins(ap: AnnotateParams, df, ok: np.ndarray):
    """`AttributeBins` fitted on the measured rows (pitch per gender where there is a gender column), or read
    from `annotate.bins` when set, and each row's bin per attribute (None for the rows that failed) ->
    (bins, {attribute: [bin or None]})."""
    from tristage.audio.measures import MEASURE_COLUMNS, AttributeBins

    if ap.bins is not None:
        bins = _fixed_bins(ap.bins)
    else:
        fit_table = df.loc[ok, [*MEASURE_COLUMNS, *(["gender"] if "gender" in df.columns else [])]]
        bins = AttributeBins.fit(fit_table, levels=ap.levels, min_group=ap.min_group,
                                 quality=ap.quality.model_dump())
    assigned = bins.assign(df)
    for attr in assigned:  # failed rows have NaN measures -> None already
        assigned[attr] = [v if good else None for v, good in zip(assigned[attr], ok)]
    return bins, assigned


def _fill_attributes(df, attributes, assigned: dict[str, list], overwrite: bool) -> _Fill:
    """Fill each attribute column with the measured bins where empty (everywhere with `overwrite`), after
    counting how often the bins agree with the values already there. Changes `df` in place."""
    agree, filled = {}, {}
    for attr in attributes:
        given = df[attr].tolist() if attr in df.columns else [None] * len(df)
        agree[attr] = agreement(
            given, assigned[attr]
        )  # before filling: the user's values vs the measured bins
        take = [m is not None and (overwrite or _missing(g)) for g, m in zip(given, assigned[attr])]
        df[attr] = [m if t else (None if _missing(g) else g) for g, m, t in zip(given, assigned[attr], take)]
        filled[attr] = sum(take)
    return _Fill(agree, filled)


def _write_captions(df, lexicon: dict, ap: AnnotateParams) -> int:
    """Write a caption for each row without one (seeded per row id; user captions are kept); adds an empty
    `caption` column where there is none. Changes `df` in place; -> the number of captions written."""
    from tristage.annotation.captions import CaptionWriter

    captions_written = 0
    if "caption" not in df.columns:
        df["caption"] = ""
    if not ap.captions:
        return 0
    writer = CaptionWriter(lexicon)
    attr_cols = [c for c in ("gender", "accent", "pitch", "speed", "modulation", "emotion", "quality")
                 if c in df.columns]
    caps = df["caption"].tolist()
    for i, cap in enumerate(caps):
        if _missing(cap):
            rng = np.random.default_rng([ap.seed, zlib.crc32(str(df.at[i, "id"]).encode())])
            attrs = {c: (None if _missing(df.at[i, c]) else str(df.at[i, c])) for c in attr_cols}
            caps[i] = writer.write(attrs, rng)
            captions_written += 1
    df["caption"] = caps
    return captions_written


def _write_manifest(path: Path, df) -> None:
    """`manifest.parquet`: the prepared schema's columns, then the measures, then any other column (as
    strings); atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tristage.audio.measures import MEASURE_COLUMNS
    from tristage.data.manifest import prepared_schema
    from tristage.fsio import atomic_path

    base = prepared_schema()
    fields = [base.field(c) for c in base.names]
    fields += [pa.field(c, pa.int32() if c == "n_words" else pa.float64()) for c in MEASURE_COLUMNS]
    extra = [c for c in df.columns if c not in {f.name for f in fields}]
    fields += [pa.field(c, pa.string()) for c in extra]
    for f in fields:
        if f.name not in df.columns:
            df[f.name] = None
        if pa.types.is_string(f.type):
            df[f.name] = [
                None if v is None or (isinstance(v, float) and v != v) else str(v) for v in df[f.name]
            ]
    table = pa.Table.from_pandas(df[[f.name for f in fields]], schema=pa.schema(fields), preserve_index=False)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def _write_failed(path: Path, failed, rows: list[tuple[str, str, str]]) -> None:
    """`failed.jsonl`: one line per utterance that could not be measured (id, audio, reason)."""
    from tristage.fsio import write_bytes

    write_bytes(
        path,
        "".join(
            json.dumps({"id": r.id, "audio": rows[k][1], "reason": r.error}) + "\n"
            for k, r in zip(failed.index, failed.itertuples())
        ).encode(),
    )


def _annotate_metrics(df, ok: np.ndarray, n_failed: int, shards: _Shards, elapsed: float, fill: _Fill,
                      captions_written: int, overwrite: bool) -> dict:
    """`metrics/annotate.json`: counts, audio seconds, shards measured and skipped, speed, fill counts,
    agreement and the corpus medians."""
    audio_s = float(df.loc[ok, "duration_s"].sum())
    now = shards.rows_measured_now()
    audio_now = float(np.nansum(df["duration_s"].to_numpy(dtype=np.float64)[now])) if now else 0.0
    f0_by_gender = {}
    if "gender" in df.columns:
        for g, sub in df[ok].groupby(df.loc[ok, "gender"].fillna("unknown")):
            f0_by_gender[str(g)] = round(float(sub["f0_hz"].median()), 2)
    return {
        "n_rows": len(df),
        "n_measured": int(ok.sum()),
        "n_failed": n_failed,
        "total_audio_s": round(audio_s, 2),
        "shards_measured": len(shards.todo),
        "shards_skipped": len(shards.rows) - len(shards.todo),
        "elapsed_s": round(elapsed, 2),
        "x_real_time": round(audio_now / elapsed, 1) if now and elapsed > 0 else None,
        "filled": fill.filled,
        "overwrite": overwrite,
        "captions_written": captions_written,
        "captions_kept": len(df) - captions_written,
        "agreement": fill.agreement,
        "f0_hz_median_by_gender": f0_by_gender,
        "speaking_rate_median": round(float(df.loc[ok, "speaking_rate"].median()), 3),
        "snr_db_median": round(float(df.loc[ok, "snr_db"].median()), 2),
    }


def run_annotate(ap: AnnotateParams, lexicon: dict, tracker=None, progress: bool = True) -> dict:
    """The stage, steps 1-5 of the module docstring -> the metrics written to `ap.metrics`."""
    from tristage.audio.measures import MEASURE_COLUMNS
    from tristage.data.manifest import relative_audio, resolve_audio
    from tristage.fsio import write_json

    check_levels(ap, lexicon)
    df = _read_manifest(ap)
    audio_abs = [str(resolve_audio(ap.manifest, a)) for a in df["audio"]]
    rows = [(str(u), a, "" if _missing(t) else str(t)) for u, a, t in zip(df["id"], audio_abs, df["text"])]

    out = Path(ap.out_dir)
    shards = _plan_shards(out, rows, ap.shard_size)
    log.info("annotate: %d utterances, %d shards (%d to measure), %d worker(s)",
             len(rows), len(shards.rows), len(shards.todo), ap.workers)
    elapsed = _measure_shards(shards, ap.workers, progress)

    meas = _read_measures(shards, list(df["id"].astype(str)))
    failed = meas[meas["error"].notna()]
    ok = meas["error"].isna().to_numpy()
    if not ok.any():
        raise UserError(
            f"{ap.manifest}: no utterance could be measured (first error: {failed['error'].iloc[0]}); "
            f"see {out / 'failed.jsonl'}"
        )
    for c in MEASURE_COLUMNS:
        df[c] = meas[c].to_numpy()

    bins, assigned = _fit_bins(ap, df, ok)
    fill = _fill_attributes(df, bins.attributes, assigned, ap.overwrite)
    captions_written = _write_captions(df, lexicon, ap)

    # outputs: audio paths relative to the annotated manifest's folder
    df["audio"] = [relative_audio(out.resolve(), Path(a)) for a in audio_abs]
    _write_manifest(out / "manifest.parquet", df)
    write_json(out / "bins.json", bins.to_dict())
    _write_failed(out / "failed.jsonl", failed, rows)

    metrics = _annotate_metrics(df, ok, len(failed), shards, elapsed, fill, captions_written, ap.overwrite)
    write_json(ap.metrics, metrics)
    if tracker is not None:
        tracker.log_artifact(out / "bins.json")
    if len(failed):
        log.warning(
            "annotate: %d utterance(s) could not be measured, see %s", len(failed), out / "failed.jsonl"
        )
    log.info("annotate: filled %s, %d captions written; agreement %s", fill.filled, captions_written,
             {k: v.get("coarse") for k, v in fill.agreement.items()})
    return metrics
