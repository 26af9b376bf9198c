"""Timings out of the tracked metrics: one writer for every stage (called by `tristage.stage`).

`metrics/<stage>.json` and `plots/<stage>/*.tsv` are tracked by git and diffed by DVC; figures
that change from run to run on unchanged code and data (wall-clock times, throughput, what a
resumed run skipped) would make every fresh `dvc repro` look like a change and drown the
model-quality numbers in `dvc metrics diff`. After a stage has written its outputs, its
timing fields move to `timings/<stage>.json` (git-ignored, beside `metrics/`) and, as
`timing/<key>`, to the stage's MLflow run; the metrics keep the quality figures only.

    elapsed_s, encode_seconds, seconds, samples_per_s, x_real_time, real_time_factor,
    shards_written, shards_skipped, audio_s_this_run, resumed_from_step   -> timings
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from tristage.fsio import read_json, write_json, write_text

TIMINGS_DIR = Path("timings")
# Run facts that vary with the machine or with what an earlier (interrupted) run left behind.
TIMING_KEYS = frozenset({"elapsed_s", "seconds", "encode_seconds", "samples_per_s", "x_real_time",
                         "real_time_factor", "shards_written", "shards_skipped", "audio_s_this_run",
                         "resumed_from_step"})
TIMING_SUFFIXES = ("_seconds", "_elapsed_s", "_per_s", "_wall_s", "_time_s")


def is_timing(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith(TIMING_SUFFIXES)


def split_timings(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(quality metrics, timings), nested objects split the same way; key order kept. An object under a
    timing key (e.g. `audio_judges.seconds`: seconds per judge) is a timing as a whole."""
    quality: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping) and is_timing(key):
            timings[key] = dict(value)
        elif isinstance(value, Mapping):
            q, t = split_timings(value)
            quality[key] = q
            if t:
                timings[key] = t
        elif is_timing(key):
            timings[key] = value
        else:
            quality[key] = value
    return quality, timings


def _split_tsv(text: str) -> tuple[str, str] | None:
    """A TSV's timing columns apart: (without them, step + them), or None when it has none."""
    rows = [line.split("\t") for line in text.splitlines()]
    if not rows:
        return None
    header = rows[0]
    timing_cols = [i for i, name in enumerate(header) if is_timing(name)]
    if not timing_cols:
        return None
    keep = [i for i in range(len(header)) if i not in timing_cols]
    side = ([0] if header and header[0] == "step" else []) + timing_cols
    pick = lambda cols: "".join("\t".join(r[i] if i < len(r) else "" for i in cols) + "\n" for r in rows)
    return pick(keep), pick(side)


def separate_timings(stage: str, section: Any, root: Path) -> dict[str, Any]:
    """Move the timing fields out of the stage's metrics file and its plot TSVs into
    `<root>/timings/<stage>.json` (and `<root>/timings/<stage>/<name>.tsv`); returns the timings."""
    timings: dict[str, Any] = {}
    metrics_path = getattr(section, "metrics", None)
    if metrics_path is not None:
        quality, timings = split_timings(read_json(metrics_path, {}))
        if timings:
            write_json(metrics_path, quality)
    plots_dir = getattr(section, "plots_dir", None)
    out_dir = root / TIMINGS_DIR
    if plots_dir is not None and Path(plots_dir).is_dir():
        for tsv in sorted(Path(plots_dir).glob("*.tsv")):
            parts = _split_tsv(tsv.read_text(encoding="utf-8"))
            if parts is not None:
                write_text(tsv, parts[0])
                write_text(out_dir / stage / tsv.name, parts[1])
    if timings:
        write_json(out_dir / f"{stage}.json", timings)
    return timings
