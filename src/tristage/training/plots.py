"""Per-step log (TSV that `dvc plots` reads) and PNG plots (matplotlib Agg)."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from tristage.fsio import save_figure, write_text

COLUMNS = (
    "step",
    "mel_loss",
    "mel_top1",
    "kl",
    "ortho",
    "speaker_loss",
    "speaker_acc",
    "lr",
    "grl_lambda",
    "speaker_loss_weight",
    "samples_per_s",
    "val_mel_loss",
    "val_mel_top1",
    "val_speaker_acc",
    "band_status",
)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def write_tsv(history: list[dict], path: Path) -> None:
    cols = [c for c in COLUMNS if any(c in row for row in history)] or ["step"]
    lines = ["\t".join(cols)] + ["\t".join(_fmt(row.get(c)) for c in cols) for row in history]
    write_text(path, "\n".join(lines) + "\n")


def _series(history: list[dict], key: str):
    pts = [(r["step"], r[key]) for r in history if r.get(key) is not None and not math.isnan(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _finish(fig, axes, path: Path) -> None:
    """Steps on x, a legend and a light grid on every axis; tight layout; saved as PNG (and closed)."""
    for a in axes:
        a.set_xlabel("step")
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def plot_losses(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, style in (("mel_loss", "-"), ("val_mel_loss", "o-")):
        ax[0].plot(*_series(history, key), style, label=key, ms=3)
    for key, style in (("mel_top1", "-"), ("val_mel_top1", "o-")):
        ax[1].plot(*_series(history, key), style, label=key, ms=3)
    if any("speaker_loss" in r for r in history):
        ax[0].plot(*_series(history, "speaker_loss"), "--", label="speaker_loss")
    fig.suptitle(title)
    _finish(fig, ax, path)


def plot_speaker_acc(history: list[dict], band: tuple[float, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.axhspan(band[0], band[1], color="tab:green", alpha=0.15, label=f"band {band[0]:.2f}-{band[1]:.2f}")
    ax.plot(*_series(history, "speaker_acc"), "-", label="speaker_acc (train window)")
    ax.plot(*_series(history, "val_speaker_acc"), "o-", ms=3, label="val speaker_acc")
    ax.set_ylim(0, 1)
    ax.set_title(textwrap.fill(title, 60), fontsize=10)  # the run's title is wider than this one panel
    _finish(fig, [ax], path)
