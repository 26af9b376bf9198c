"""`tristage summary`: what `make demo` ends with, one readable table of the demo's figures.

    tristage summary [--params params.yaml]

One row per training stage: steps, trainable %, validation mel_loss and mel_top1, the GRL speaker
classifier's accuracy with its band, the fresh speaker / emotion probes on the emotion vector and
the caption cosine of the stage's own caption adapters (all from metrics/evaluate.json, measured
on the validation split; steps and trainable % from metrics/<stage>.json). Then where the plots
and audio samples are, and the commands to look further. Reads the metrics files named in params;
a stage not run yet shows "-". `dvc metrics show --md` still prints every metric.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

STAGES = ("stage1", "stage2", "stage3")
WIDTH = 104  # the table's width: fits a 110-column terminal
COLUMNS = (
    "stage",
    "steps",
    "trainable",
    "val mel_loss",
    "mel_top1",
    "speaker_acc (band)",
    "spk probe",
    "emo probe",
    "caption cos",
)


def _read(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _num(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if not isinstance(v, (int, float)) or isinstance(v, bool) else fmt.format(v)


def stage_rows(params) -> list[list[str]]:
    ev = _read(params.evaluate.metrics)
    rows = []
    for stage in STAGES:
        tm, em = _read(params.stage(stage).metrics), ev.get(stage) or {}
        if not tm and not em:
            continue
        acc, band = em.get("speaker_acc"), em.get("speaker_acc_band")
        frac = tm.get("trainable_fraction")
        rows.append(
            [
                stage,
                _num(tm.get("steps"), "{:d}"),
                _num(None if frac is None else 100 * frac, "{:.1f}%"),
                _num(em.get("mel_loss", tm.get("val_mel_loss")), "{:.4f}"),
                _num(em.get("mel_top1", tm.get("val_mel_top1"))),
                "-" if acc is None else f"{acc:.3f} ({band})",
                _num(em.get("speaker_probe_acc")),
                _num(em.get("emotion_probe_acc")),
                _num(em.get("caption_cosine_mean")),
            ]
        )
    return rows


def render(rows: list[list[str]], header=COLUMNS) -> str:
    widths = [max(len(str(r[i])) for r in [list(header), *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(
        str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))
    )  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def summary(params) -> str:
    ev = _read(params.evaluate.metrics)
    rows = stage_rows(params)
    out = [render(rows) if rows else "no stage has metrics yet: run `dvc repro` first"]
    band = ev.get("speaker_acc_band_range") or list(params.stage2.speaker_acc_band)
    legend = (
        f"val = the validation split. speaker_acc: the GRL speaker classifier on the emotion vector (band "
        f"{band[0]}-{band[1]}). probes: fresh classifiers on the frozen emotion vector. caption cos: the "
        "stage's own caption adapters vs the caption encoder, on the held-out captions."
    )
    out.append(textwrap.fill(legend, WIDTH, break_on_hyphens=False))
    if ev.get("note"):
        out.append(textwrap.fill(f"note: {ev['note']}", WIDTH, break_on_hyphens=False))
    base = Path(params.base_dir or ".")
    rel = lambda p: _rel(Path(p), base)  # noqa: E731
    plots = [rel(params.stage(s).plots_dir) for s in STAGES] + [rel(params.evaluate.plots_dir)]
    out += [
        "",
        "plots:   " + "  ".join(f"{p}/" for p in plots),
        f"samples: {rel(params.evaluate.samples_dir)}/ (wavs; samples.json says what each is)",
        "more:    dvc metrics show --md      every metric of every stage",
        "         dvc plots show             training curves (HTML)",
        "         mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///mlflow.db   (runs, artifacts)",
        "         tristage compare           recent pipeline runs side by side (MLflow)",
        "         make serve                 Prefect UI on 127.0.0.1:4200, runs with overrides",
    ]
    return "\n".join(out)


def _rel(p: Path, base: Path) -> str:
    try:
        return p.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(p)
