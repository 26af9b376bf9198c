"""A sweep's results: each point's figures, the table, the recommended point and the files.

    row = result_row(name, point, record, band)     # params + val mel_loss, speaker_acc, band, probes
    rec = recommend(rows, band)                     # in band with the lowest val mel_loss, else the closest
    write_results(out_dir, rows, rec, band)         # results.csv, results.json and the two charts
    print_sweep(repo, name)                         # `tristage compare --sweep NAME`

Layout of `sweeps/<name>/`: `results.csv` (one row per point), `results.json` (rows +
recommendation), `speaker_acc_band.png`, `mel_loss_vs_speaker_probe.png` (sweep_charts.py),
`points/<point>.json` (each point's record, written when the point ends: a rerun skips the finished ones).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tristage.errors import UserError
from tristage.fsio import read_json, write_text
from tristage.runs.sweep_charts import plot_band, plot_front
from tristage.runs.sweep_points import point_label, short_key
from tristage.training.band import REMEDIES, band_advice, band_status

SWEEPS_DIR = Path("sweeps")
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
BAND_PNG = "speaker_acc_band.png"
FRONT_PNG = "mel_loss_vs_speaker_probe.png"
# Effective values every row shows, swept or not: the two knobs the band advice is about.
KNOBS = ("stage2.grl_lambda", "stage2.speaker_loss_weight")
METRIC_COLUMNS = ("val_mel_loss", "s2_val_mel_loss", "speaker_acc", "band", "speaker_probe_acc",
                  "s1_speaker_probe_acc", "emotion_probe_acc")
# Audio judges (contract: top-level keys of metrics/evaluate.json), shown when present.
AUDIO_COLUMNS = ("wer", "cer", "speaker_sim", "dnsmos_ovrl", "pitch_agreement", "speed_agreement",
                 "emotion_transfer_acc")


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def point_metrics(workspace: Path) -> dict[str, Any]:
    """The sweep's figures of one finished point, read from its workspace's metrics/*.json.

    `val_mel_loss` is the evaluate stage's validation mel_loss of the final stage (else the
    last training stage's own validation figure); speaker_acc is stage2's GRL classifier on the
    validation rows; the probes are evaluate's fresh probes on the frozen emotion vectors."""
    metrics = workspace / "metrics"
    ev = read_json(metrics / "evaluate.json", {})
    s2 = read_json(metrics / "stage2.json", {})
    s3 = read_json(metrics / "stage3.json", {})
    ev_s2 = ev.get("stage2") if isinstance(ev.get("stage2"), dict) else {}
    ev_s1 = ev.get("stage1") if isinstance(ev.get("stage1"), dict) else {}
    out: dict[str, Any] = {
        "val_mel_loss": _num(ev.get("mel_loss")),
        "s2_val_mel_loss": _num(ev_s2.get("mel_loss")) or _num(s2.get("val_mel_loss")),
        "speaker_acc": _num(ev_s2.get("speaker_acc")) if ev_s2 else None,
        "speaker_probe_acc": _num(ev.get("speaker_probe_acc")),
        "s1_speaker_probe_acc": _num(ev_s1.get("speaker_probe_acc")),
        "emotion_probe_acc": _num(ev.get("emotion_probe_acc")),
    }
    if out["speaker_acc"] is None:
        out["speaker_acc"] = _num(s2.get("val_speaker_acc")) or _num(s2.get("speaker_acc"))
    if out["val_mel_loss"] is None:  # a sweep whose target stops before evaluate
        out["val_mel_loss"] = _num(s3.get("val_mel_loss")) or out["s2_val_mel_loss"]
    for key in AUDIO_COLUMNS:
        if _num(ev.get(key)) is not None:
            out[key] = _num(ev.get(key))
    out["random_init"] = "random-init" in str(ev.get("codec", s2.get("codec", "")))
    return out


def result_row(name: str, point: Mapping[str, Any], record: Mapping[str, Any], band: Sequence[float]) -> dict:
    """One table row: point name, status, swept values, knobs, figures, band status, reason, timings."""
    row: dict[str, Any] = {
        "point": name,
        "status": record.get("status", "pending"),
        "label": point_label(point),
    }
    row.update({k: v for k, v in point.items()})
    for knob, value in (record.get("knobs") or {}).items():
        row.setdefault(knob, value)
    figures = dict(record.get("metrics") or {})
    for col in METRIC_COLUMNS:
        row[col] = figures.get(col)
    row["band"] = band_status(row["speaker_acc"], band)
    for col in AUDIO_COLUMNS:
        if figures.get(col) is not None:
            row[col] = figures[col]
    row["random_init"] = bool(figures.get("random_init"))
    row["reason"] = record.get("reason") or ""
    row["device"] = record.get("device", "")
    row["seconds"] = record.get("seconds")
    row["recommended"] = False
    return row


# -- recommendation --------------------------------------------------------------------------
@dataclasses.dataclass
class Recommendation:
    point: str | None
    in_band: bool
    text: str
    next_grid: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _distance(acc: float, band: Sequence[float]) -> float:
    return max(band[0] - acc, acc - band[1], 0.0)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _scaled(value: Any, factors: Sequence[float]) -> list[str]:
    v = _num(value)
    if v is None:
        return []
    return list(dict.fromkeys(_fmt(v * f) for f in factors))


def _val_mel(r: dict) -> float:
    """A row's val mel_loss, inf where there is none (sorts last)."""
    return r["val_mel_loss"] if r.get("val_mel_loss") is not None else math.inf


def _between(done: list[dict], band: Sequence[float], best: dict, head: str) -> Recommendation:
    """Points on both sides of the band: a next grid between the closest point below and the closest above,
    per knob (geometric midpoint of positive values, else the mean)."""
    below = min(
        (r for r in done if r["band"] == "below"), key=lambda r: _distance(r["speaker_acc"], band)
    )
    above = min(
        (r for r in done if r["band"] == "above"), key=lambda r: _distance(r["speaker_acc"], band)
    )
    grid = []
    for knob in KNOBS:
        a, b = _num(below.get(knob)), _num(above.get(knob))
        if a is not None and b is not None and a != b:
            mid = math.sqrt(a * b) if a > 0 and b > 0 else (a + b) / 2
            grid.append(
                f"{knob}=" + ",".join(dict.fromkeys(_fmt(x) for x in (min(a, b), mid, max(a, b))))
            )
    return Recommendation(
        best["point"],
        False,
        head + f"The band lies between {below['point']} (below) and "
        f"{above['point']} (above): sweep between them.",
        grid,
    )


def _all_out(best: dict, head: str, side: str, adversary: str) -> Recommendation:
    """Every point on one side of the band: the band's one remedy (training/band.py REMEDIES) as a
    sentence and as a next grid around the closest point."""
    param, _direction, factors = REMEDIES[adversary][side]
    text = head + f"All points {side} the band: " + band_advice(side, adversary) + "."
    values = _scaled(best.get(param), factors)
    grid = [f"{param}=" + ",".join(values)] if values else []
    return Recommendation(best["point"], False, text, grid)


def recommend(rows: Sequence[dict], band: Sequence[float], adversary: str = "project") -> Recommendation:
    """Inside the band with the best (lowest) val mel_loss; else the closest to the band, with the
    seed's advice turned into a next grid around that point. Marks the chosen row `recommended`."""
    lo, hi = band
    done = [r for r in rows if r["status"] == "finished" and r.get("speaker_acc") is not None]
    if not done:
        failed = sum(r["status"] == "failed" for r in rows)
        return Recommendation(
            None,
            False,
            f"no finished point with a speaker_acc ({failed} failed): nothing to "
            f"recommend; see each point's reason",
        )
    inside = [r for r in done if r["band"] == "in"]
    if inside:
        best = min(inside, key=_val_mel)
        best["recommended"] = True
        return Recommendation(best["point"], True,
                              f"{best['point']}: speaker_acc {_fmt(best['speaker_acc'])} inside the band "
                              f"[{lo:g}, {hi:g}] with the lowest val mel_loss ({_fmt(_val_mel(best))}) "
                              f"of the {len(inside)} point(s) in the band")
    best = min(done, key=lambda r: (_distance(r["speaker_acc"], band), _val_mel(r)))
    best["recommended"] = True
    sides = {r["band"] for r in done}
    head = (f"no point inside the band [{lo:g}, {hi:g}]; closest: {best['point']} (speaker_acc "
            f"{_fmt(best['speaker_acc'])}, val mel_loss {_fmt(_val_mel(best))}). ")
    if sides == {"below", "above"}:
        return _between(done, band, best, head)
    if sides == {"above"}:
        return _all_out(best, head, "above", adversary)
    return _all_out(best, head, "below", adversary)


# -- the table, files and charts -------------------------------------------------------------
def columns(rows: Sequence[dict]) -> list[str]:
    """point, status, the swept keys and knobs (in first-seen order), figures, audio, reason, ..."""
    fixed = ["point", "status"]
    tail = list(METRIC_COLUMNS) + [c for c in AUDIO_COLUMNS if any(c in r for r in rows)] + \
        ["recommended", "reason", "device", "seconds"]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in fixed and k not in tail and k not in ("random_init", "label")
                 and k not in keys]
    return fixed + keys + tail


def to_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns(rows), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def render_table(rows: Sequence[dict], rec: Mapping[str, Any] | None = None) -> str:
    cols = [c for c in columns(rows) if c not in ("device", "reason", "recommended")]
    short = {c: short_key(c) for c in cols}
    cell = lambda v: "-" if v is None or v == "" else (f"{v:.4g}" if isinstance(v, float) else str(v))
    body = [
        [("*" if r.get("recommended") else " ") + cell(r.get(cols[0]))] + [cell(r.get(c)) for c in cols[1:]]
        for r in rows
    ]
    head = [" " + cols[0]] + [short[c] for c in cols[1:]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    for r in rows:
        if r["status"] == "failed":
            out.append(f"failed {r['point']}: {r.get('reason') or '?'}")
    if rec:
        out.append(f"* recommended: {rec.get('text')}")
        if rec.get("next_grid"):
            out.append(
                "next grid: python -m flows.sweep " + " ".join(f"--grid {g}" for g in rec["next_grid"])
            )
    if any(r.get("random_init") for r in rows):
        out.append(
            "(figures from a random-init codec / caption encoder: "
            "the pipeline's behaviour, not speech quality)"
        )
    return "\n".join(out)


def write_results(out_dir: Path, rows: list[dict], rec: Recommendation, band: Sequence[float],
                  meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """results.csv, results.json (rows + recommendation + band + meta) and the two charts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    random_init = any(r.get("random_init") for r in rows)
    note = "\n(random-init codec: the pipeline's behaviour, not speech quality)" if random_init else ""
    paths = {"csv": out_dir / RESULTS_CSV, "json": out_dir / RESULTS_JSON,
             "band_png": out_dir / BAND_PNG, "front_png": out_dir / FRONT_PNG}
    write_text(paths["csv"], to_csv(rows))
    doc = {"band": list(band), "recommendation": rec.as_dict(), "rows": rows, **(meta or {})}
    write_text(paths["json"], json.dumps(doc, indent=2, default=str) + "\n")
    name = (meta or {}).get("sweep", out_dir.name)
    plot_band(
        rows, band, paths["band_png"], f"sweep {name}: stage2 speaker_acc per point (* = recommended){note}"
    )
    plot_front(rows, paths["front_png"], f"sweep {name}: val mel_loss vs speaker probe{note}")
    return paths


def load_results(repo: Path, name: str) -> dict:
    path = repo / SWEEPS_DIR / name / RESULTS_JSON
    if not path.is_file():
        known = sorted(p.name for p in (repo / SWEEPS_DIR).glob("*/") if (p / RESULTS_JSON).is_file()) \
            if (repo / SWEEPS_DIR).is_dir() else []
        raise UserError(
            f"{path}: no such sweep; run `python -m flows.sweep --name {name} --grid KEY=V1,V2` first"
            + (f" (sweeps here: {', '.join(known)})" if known else "")
        )
    return read_json(path)


def print_sweep(repo: Path, name: str, fmt: str = "table", out=None) -> dict:
    """`tristage compare --sweep NAME`: the sweep's table (or csv / json) and its recommendation."""
    import sys

    doc = load_results(repo, name)
    rows, rec = doc["rows"], doc["recommendation"]
    if fmt == "json":
        text = json.dumps(doc, indent=2, default=str)
    elif fmt == "csv":
        text = to_csv(rows).rstrip("\n")
    else:
        text = f"sweep {name}: {len(rows)} point(s), band {doc['band']}\n" + render_table(rows, rec)
    (out or sys.stdout).write(text + "\n")
    return doc
