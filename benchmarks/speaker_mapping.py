"""speaker_mapping: columnar pyarrow counting vs a json.loads + Counter loop, on a seed-scale manifest.

    python -m benchmarks.speaker_mapping                      # 2.78M rows, 132,389 speakers (~390 MB)
    python -m benchmarks.speaker_mapping --rows 200000 --speakers 10000
    python -m benchmarks.speaker_mapping --quick              # 200k rows

Generates a JSONL manifest like the seed's (audio, text, speaker, caption, duration per line;
utterances per speaker log-normal with sigma 1.1, which puts about 6% of the samples in the
top 500 speakers, as in the seed's log) into a temp folder (or --manifest PATH, kept), then
times, in the same run, on the same rows (warm page cache; imports done before timing):
- stage: `tristage.data.speakers.count_speakers` + `select_speakers` (what the stage runs) on
  the JSONL, and on the same rows written as Parquet (the stage's default input is the
  prepared Parquet manifest; the conversion is not timed);
- naive: json.loads per line + collections.Counter, then the same sort and selection.
All must give the identical mapping. Goal: stage at least 10x faster.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

WORDS = ("the quick brown fox jumps over a lazy dog while seven bright birds sing near an old stone bridge "
         "under the calm evening sky and every morning she walks to the market to buy fresh bread").split()
# short attribute captions like the seed's rebuilt captions ("female American quickly medium clean")
CAPTIONS = tuple(
    f"{g} {a} {s} {p} {q}"
    for g in ("female", "male")
    for a in ("American", "British", "Korean")
    for s in ("quickly", "slowly")
    for p in ("high", "low", "medium")
    for q in ("clean", "noisy")
)


def speaker_counts(rows: int, speakers: int, seed: int) -> np.ndarray:
    """Utterances per speaker: log-normal (sigma 1.1), every speaker at least one, summing to `rows`."""
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0.0, 1.1, speakers)
    c = np.maximum(1, np.floor(w / w.sum() * rows)).astype(np.int64)
    diff = rows - int(c.sum())
    order = np.argsort(-w)
    if diff > 0:
        c[order[: diff % speakers]] += 1
        c += diff // speakers
    while diff < 0:  # remove from the largest speakers, keeping everyone at >= 1
        take = min(-diff, speakers)
        idx = order[:take]
        idx = idx[c[idx] > 1]
        c[idx] -= 1
        diff += len(idx)
    return c


def write_manifest(path: Path, rows: int, speakers: int, seed: int = 0, block: int = 200_000) -> None:
    counts = speaker_counts(rows, speakers, seed)
    rng = np.random.default_rng(seed + 1)
    spk_of_row = np.repeat(np.arange(speakers), counts)
    rng.shuffle(spk_of_row)
    # a pool of sentences; each row picks one (the text is there for realistic line sizes)
    # short texts: ~150 bytes a line, like the seed's 392 MB for 2.78M rows
    pool = [" ".join(rng.choice(WORDS, int(rng.integers(2, 7)))).capitalize() + "." for _ in range(4096)]
    pool = [json.dumps(t) for t in pool]
    caps = [json.dumps(c) for c in CAPTIONS]
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, rows, block):
            spk = spk_of_row[start:start + block]
            texts = rng.integers(0, len(pool), len(spk))
            capi = rng.integers(0, len(caps), len(spk))
            dur = rng.uniform(1.0, 12.0, len(spk))
            f.write(
                "".join(
                    f'{{"audio": "wavs/{s:06d}/{start + i:07d}.wav", "text": {pool[t]}, '
                    f'"speaker": "spk_{s:06d}", '
                    f'"caption": {caps[c]}, "duration": {d:.1f}}}\n'
                    for i, (s, t, c, d) in enumerate(
                        zip(spk.tolist(), texts.tolist(), capi.tolist(), dur.tolist())
                    )
                )
            )


def naive_mapping(path: Path, top_k: int, min_samples: int) -> dict[str, int]:
    """The seed's way: parse every line, count in a Counter, sort in Python."""
    counts: Counter[str] = Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                v = json.loads(line).get("speaker")
                if v is not None and v != "":
                    counts[str(v)] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    names = [name for name, n in ranked if n >= min_samples][:top_k]
    return {name: i for i, name in enumerate(names)}


def stage_mapping(path: Path, top_k: int, min_samples: int) -> tuple[dict[str, int], dict]:
    from tristage.data.speakers import count_speakers, select_speakers

    return select_speakers(count_speakers(path), top_k, min_samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_780_000)
    ap.add_argument("--speakers", type=int, default=132_389)
    ap.add_argument("--top-k", type=int, default=500)
    ap.add_argument("--min-samples", type=int, default=50)
    ap.add_argument(
        "--manifest", type=Path, default=None, help="write (or reuse) the manifest here and keep it"
    )
    ap.add_argument("--quick", action="store_true", help="200k rows, 10k speakers")
    a = ap.parse_args(argv)
    if a.quick:
        a.rows, a.speakers = 200_000, 10_000
    if a.speakers > a.rows:
        ap.error("--speakers must not exceed --rows")

    tmp = None
    path = a.manifest
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_speakers_")
        path = Path(tmp.name) / "manifest.jsonl"
    try:
        if not path.exists():
            t0 = time.perf_counter()
            write_manifest(path, a.rows, a.speakers)
            print(
                f"generated {path.name}: {a.rows:,} rows, {a.speakers:,} speakers, "
                f"{path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
        import tristage.data.speakers  # noqa: F401  (import time is not what we compare)

        parquet = path.with_suffix(".parquet")
        if not parquet.exists():  # the same rows as the stage's default input, a prepared Parquet manifest
            import pyarrow.json as pj
            import pyarrow.parquet as pq

            pq.write_table(pj.read_json(path), parquet)

        t0 = time.perf_counter()
        fast, metrics = stage_mapping(path, a.top_k, a.min_samples)  # first call in this process: cold
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        from_parquet, _ = stage_mapping(parquet, a.top_k, a.min_samples)
        t_parquet = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = naive_mapping(path, a.top_k, a.min_samples)
        t_naive = time.perf_counter() - t0
        for name, got in (("JSONL", fast), ("Parquet", from_parquet)):
            if got != slow or list(got) != list(slow):
                print(f"FAIL: the stage's mapping from {name} differs from the naive one", file=sys.stderr)
                return 1
        size = path.stat().st_size / 2**20
        print(
            f"speaker_mapping: {a.rows:,} rows / {metrics['total_speakers']:,} speakers "
            f"({size:.0f} MiB JSONL, "
            f"{os.cpu_count()} cores): json.loads+Counter {t_naive:.2f} s; stage on the JSONL (pyarrow.json, "
            f"one column) {t_fast:.2f} s = {t_naive / t_fast:.1f}x; stage on the same rows as Parquet "
            f"{t_parquet:.2f} s = {t_naive / t_parquet:.0f}x; "
            f"identical mappings ({metrics['selected_speakers']} "
            f"speakers, {metrics['selected_samples']:,} samples = {100 * metrics['selected_fraction']:.2f}%)"
        )
        print(f"command: python -m benchmarks.speaker_mapping --rows {a.rows} --speakers {a.speakers}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
