"""Per-step logs that `dvc plots` reads (train.tsv, val.tsv) and PNG charts (matplotlib Agg).

A history row is what the trainer logged at one step: train-window figures (`mel_loss`, `mel_top1`, ...) at a
log step, validation figures (`val_*`; stage 2 also `band_status`) at an evaluation or band check, or both.
The two kinds go to two files, so that no plotted cell is blank (DVC and Vega draw a blank cell as 0):

- `train.tsv`: a row per log step (train-window means; lr, grl_lambda and speaker_loss_weight as in effect);
- `val.tsv`: a row per validation pass (step 0 = before training; stage 2's band checks are passes too).

Each file ends with its headline column (`mel_loss`, `val_mel_loss`): DVC's default chart of a file in a
stage's `plots:` folder (dvc.yaml, `x: step`) draws the last column. dvc.yaml's top-level `plots:` draw the
curves by name; `band_status` (text) is never plotted.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from tristage.fsio import save_figure, write_text

TRAIN_COLUMNS = (
    "step",
    "mel_top1",
    "kl",
    "ortho",
    "align_loss",  # guided attention (stage <n>.guided_attention), when on
    "speaker_loss",
    "speaker_acc",
    "lr",
    "grl_lambda",
    "speaker_loss_weight",
    "samples_per_s",  # moved to timings/<stage>/train.tsv after the stage (tristage.runs.timings)
    "mel_loss",  # the headline: last
)
VAL_COLUMNS = (
    "step",
    "val_mel_top1",
    "val_speaker_loss",
    "val_speaker_acc",
    "band_status",  # text: in / below / above (stage 2's band check); never plotted
    "val_mel_loss",  # the headline: last
)
TEXT_COLUMNS = frozenset({"band_status"})
# file name -> (its columns; a row goes into the file when it has the file's headline, the last column)
LOGS = {"train.tsv": TRAIN_COLUMNS, "val.tsv": VAL_COLUMNS}


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _fmt(v) -> str:
    if not _present(v):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def log_rows(history: list[dict], columns: tuple[str, ...]) -> tuple[list[str], list[dict]]:
    """(header, rows) of one log: the history rows that carry its headline (the last column), and the columns
    that any of them fills, in `columns` order (`step` and the headline always)."""
    headline = columns[-1]
    rows = [r for r in history if _present(r.get(headline))]
    cols = [c for c in columns if c in ("step", headline) or any(_present(r.get(c)) for r in rows)]
    return cols, rows


def write_tsv(history: list[dict], path: Path, columns: tuple[str, ...] = TRAIN_COLUMNS) -> None:
    """One log of `history` (the train rows by default; `VAL_COLUMNS` for the validation rows) as a TSV."""
    cols, rows = log_rows(history, columns)
    lines = ["\t".join(cols)] + ["\t".join(_fmt(r.get(c)) for c in cols) for r in rows]
    write_text(path, "\n".join(lines) + "\n")


def write_logs(history: list[dict], folder: Path) -> list[Path]:
    """`folder`/train.tsv and `folder`/val.tsv from one mixed history; returns their paths."""
    paths = []
    for name, columns in LOGS.items():
        write_tsv(history, Path(folder) / name, columns)
        paths.append(Path(folder) / name)
    return paths


def _series(history: list[dict], key: str):
    pts = [(r["step"], r[key]) for r in history if _present(r.get(key))]
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
