"""A parameter sweep's points, its results table, the recommended point and its two charts.

Pure library code: `flows/sweep.py` runs the points (DVC experiments under Prefect) and calls
these functions; `tristage compare --sweep NAME` prints what they wrote.

    axes = parse_grid(["stage2.grl_lambda=0.3,1,3", "stage2.speaker_loss_weight=0.1,0.3"])
    points = grid_points(axes)                      # 6 dicts {"stage2.grl_lambda": 0.3, ...}
    points += random_points(parse_ranges(["stage2.grl_lambda=0.1:3:log"]), n=4, seed=0)
    row = result_row(point, record, workspace)      # params + val mel_loss, speaker_acc, band, probes
    rec = recommend(rows, band)                     # in band with the lowest val mel_loss, else the closest
    write_results(out_dir, rows, rec)               # results.csv, results.json, recommendation.json, 2 PNGs

Layout of `sweeps/<name>/`: `results.csv` (one row per point), `results.json` (rows +
recommendation), `speaker_acc_band.png`, `mel_loss_vs_speaker_probe.png`, `points/<point>.json`
(each point's record, written when the point ends: a rerun skips the finished ones).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import random as _random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tristage.errors import UserError
from tristage.fsio import write_text
from tristage.training.band import REMEDIES, band_advice, band_status

SWEEPS_DIR = Path("sweeps")
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
BAND_PNG = "speaker_acc_band.png"
FRONT_PNG = "mel_loss_vs_speaker_probe.png"
DEFAULT_BAND = (0.3, 0.6)
# Effective values every row shows, swept or not: the two knobs the band advice is about.
KNOBS = ("stage2.grl_lambda", "stage2.speaker_loss_weight")
METRIC_COLUMNS = ("val_mel_loss", "s2_val_mel_loss", "speaker_acc", "band", "speaker_probe_acc",
                  "s1_speaker_probe_acc", "emotion_probe_acc")
# Audio judges (contract: top-level keys of metrics/evaluate.json), shown when present.
AUDIO_COLUMNS = ("wer", "cer", "speaker_sim", "dnsmos_ovrl", "pitch_agreement", "speed_agreement",
                 "emotion_transfer_acc")
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}")


# -- the points ------------------------------------------------------------------------------
def _split_values(text: str) -> list[str]:
    """`0.3,1,[0.2, 0.5]` -> ["0.3", "1", "[0.2, 0.5]"]: commas inside brackets or quotes don't split."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _key_of(item: str, flag: str) -> tuple[str, str]:
    key, sep, rest = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise UserError(f"{flag} {item!r}: expected KEY=VALUES with a dotted params key, "
                        f"e.g. {flag} stage2.grl_lambda=0.3,1,3")
    return key, rest


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """`["stage2.grl_lambda=0.3,1,3"]` -> {"stage2.grl_lambda": [0.3, 1, 3]} (values parsed as YAML)."""
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, rest = _key_of(item, "--grid")
        raw = _split_values(rest)
        if any(v == "" for v in raw):
            raise UserError(
                f"--grid {item!r}: an empty value; separate values with commas, e.g. {key}=0.3,1,3"
            )
        if key in axes:
            raise UserError(f"--grid {key}: given twice; put all its values in one --grid")
        values = [yaml.safe_load(v) for v in raw]
        axes[key] = list(dict.fromkeys(json.dumps(v) for v in values))  # dedupe, keep order
        axes[key] = [json.loads(v) for v in axes[key]]
    return axes


@dataclasses.dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def sample(self, rng: _random.Random) -> float | int:
        if self.integer:
            return rng.randint(int(self.low), int(self.high))
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return float(f"{value:.4g}")  # readable values (and experiment names)


def parse_range(key: str, spec: Any) -> Range:
    """`"0.1:3:log"`, `"1:8"` (integers -> integer samples), or a list `[0.1, 3, "log"]`."""
    parts = (
        spec.split(":") if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else None
    )
    if not parts or len(parts) not in (2, 3) or (len(parts) == 3 and str(parts[2]) not in ("log", "lin")):
        raise UserError(f"--range {key}: expected LOW:HIGH or LOW:HIGH:log, got {spec!r}")
    try:
        low, high = (yaml.safe_load(p) if isinstance(p, str) else p for p in parts[:2])
        lo_f, hi_f = float(low), float(high)
    except (TypeError, ValueError, yaml.YAMLError):
        raise UserError(f"--range {key}: LOW and HIGH must be numbers, got {spec!r}") from None
    log = len(parts) == 3 and str(parts[2]) == "log"
    if not lo_f < hi_f or (log and lo_f <= 0):
        raise UserError(f"--range {key}: need LOW < HIGH (and LOW > 0 with log), got {spec!r}")
    integer = isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool) and not log
    return Range(lo_f, hi_f, log, integer)


def parse_ranges(items: Iterable[str] | Mapping[str, Any]) -> dict[str, Range]:
    if isinstance(items, Mapping):
        return {k: parse_range(k, v) for k, v in items.items()}
    out = {}
    for item in items:
        key, rest = _key_of(item, "--range")
        out[key] = parse_range(key, rest.strip())
    return out


def grid_points(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination, the first axis varying slowest."""
    if not axes:
        return []
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def random_points(ranges: Mapping[str, Range], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` points drawn independently per key (log-uniform for `log` ranges); same seed, same points."""
    if n and not ranges:
        raise UserError("--random N needs at least one --range KEY=LOW:HIGH[:log]")
    rng = _random.Random(seed)
    return [{k: r.sample(rng) for k, r in ranges.items()} for _ in range(n)]


def unique_points(points: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for p in points:
        sig = json.dumps(p, sort_keys=True)
        if sig not in seen:
            seen.add(sig)
            out.append(dict(p))
    return out


def check_sweep_name(name: str) -> str:
    if not _NAME_OK.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
        raise UserError(
            f"sweep name {name!r}: use letters, digits, '.', '_' and '-' (it names DVC experiments "
            f"and the folder sweeps/<name>)"
        )
    return name


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def point_name(sweep: str, point: Mapping[str, Any]) -> str:
    """A DVC experiment name from the values: `lam-grl_lambda0.3-speaker_loss_weight0.1`,
    or a hash when long."""
    label = "-".join(f"{_short(k)}{json.dumps(v) if not isinstance(v, str) else v}" for k, v in point.items())
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).replace("..", "_").strip("._-")
    digest = hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:8]
    if not label or len(label) > 60:
        label = f"p{digest}"
    return f"{sweep}-{label}"


def point_label(point: Mapping[str, Any]) -> str:
    """For chart axes: `grl_lambda=0.3 speaker_loss_weight=0.1`."""
    return " ".join(f"{_short(k)}={v}" for k, v in point.items())


# -- one point's results ---------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
    ev = _read_json(metrics / "evaluate.json")
    s2 = _read_json(metrics / "stage2.json")
    s3 = _read_json(metrics / "stage3.json")
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
    short = {c: _short(c) for c in cols}
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


def plot_band(rows: Sequence[dict], band: Sequence[float], path: Path, title: str = "") -> Path:
    """speaker_acc per point (bars coloured by band status) with the band shaded; failed points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tristage.fsio import save_figure

    colors = {"in": "#2ca02c", "below": "#1f77b4", "above": "#d62728", None: "#999999"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2.5), 4.8))
    ax.axhspan(band[0], band[1], color="#2ca02c", alpha=0.15, label=f"band [{band[0]:g}, {band[1]:g}]")
    xs = list(range(len(rows)))
    for x, r in zip(xs, rows):
        acc = r.get("speaker_acc")
        if r["status"] != "finished" or acc is None:
            ax.plot([x], [0.02], marker="x", markersize=10, color="#d62728")
            ax.text(x, 0.06, "failed" if r["status"] == "failed" else r["status"], ha="center", va="bottom",
                    fontsize=8, color="#d62728")
            continue
        ax.bar(x, acc, color=colors.get(r.get("band")), edgecolor="black" if r.get("recommended") else "none",
               linewidth=2 if r.get("recommended") else 0)
        ax.text(
            x,
            acc + 0.01,
            f"{acc:.2f}" + (" *" if r.get("recommended") else ""),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xticks(xs)
    ax.set_xticklabels([r.get("label") or r["point"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("stage2 speaker_acc (GRL classifier, validation)")
    ax.set_title(title or "speaker_acc per sweep point (* = recommended)", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in ("below", "in", "above")]
    ax.legend([ax.patches[0]] + handles, [f"band [{band[0]:g}, {band[1]:g}]", "below", "in", "above"],
              fontsize=8, loc="upper right")
    fig.tight_layout()
    return save_figure(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower is better on both axes), by x."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best_y = [], math.inf
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def plot_front(rows: Sequence[dict], path: Path, title: str = "") -> Path:
    """val mel_loss (x) vs the final speaker probe on the emotion vectors (y): the trade-off front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tristage.fsio import save_figure

    done = [r for r in rows if r["status"] == "finished" and r.get("val_mel_loss") is not None
            and r.get("speaker_probe_acc") is not None]
    fig, ax = plt.subplots(figsize=(7.6, 5.0))
    colors = {"in": "#2ca02c", "below": "#1f77b4", "above": "#d62728", None: "#999999"}
    xy = [(r["val_mel_loss"], r["speaker_probe_acc"]) for r in done]
    for r, (x, y) in zip(done, xy):
        ax.scatter([x], [y], s=80 if r.get("recommended") else 40, color=colors.get(r.get("band")),
                   edgecolors="black" if r.get("recommended") else "none", zorder=3)
        ax.annotate((r.get("label") or r["point"]) + (" *" if r.get("recommended") else ""), (x, y),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front(xy)
    if len(front) > 1:
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "--", color="#555555", zorder=2,
                label="trade-off front")
    s1 = [r["s1_speaker_probe_acc"] for r in done if r.get("s1_speaker_probe_acc") is not None]
    if s1:
        ax.axhline(s1[0], color="#ff7f0e", linestyle=":", label=f"speaker probe after stage1 ({s1[0]:.2f})")
    if not done:
        ax.text(0.5, 0.5, "no finished point with evaluate's figures", ha="center", va="center",
                transform=ax.transAxes)
    ax.ticklabel_format(axis="both", useOffset=False, style="plain")
    ax.set_xlabel("val mel_loss (final stage; lower is better)")
    ax.set_ylabel("speaker probe on emotion vectors (lower = less speaker)")
    ax.set_title(title or "mel_loss vs speaker leakage per sweep point", fontsize=9)
    for status in ("below", "in", "above"):  # legend entries for the colours (speaker_acc vs the band)
        if any(r.get("band") == status for r in done):
            ax.scatter([], [], color=colors[status], label=f"speaker_acc {status} the band" if status != "in"
                       else "speaker_acc in the band")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.margins(x=0.3, y=0.15)
    fig.tight_layout()
    return save_figure(fig, path)


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
    return json.loads(path.read_text())


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
