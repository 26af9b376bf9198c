"""A sweep's two charts: speaker_acc per point against the band, and val mel_loss against the speaker
probe (the trade-off front)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

COLORS = {"in": "#2ca02c", "below": "#1f77b4", "above": "#d62728", None: "#999999"}  # by band status


def plot_band(rows: Sequence[dict], band: Sequence[float], path: Path, title: str = "") -> Path:
    """speaker_acc per point (bars coloured by band status) with the band shaded; failed points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tristage.fsio import save_figure

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
        ax.bar(x, acc, color=COLORS.get(r.get("band")), edgecolor="black" if r.get("recommended") else "none",
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
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[k]) for k in ("below", "in", "above")]
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
    xy = [(r["val_mel_loss"], r["speaker_probe_acc"]) for r in done]
    for r, (x, y) in zip(done, xy):
        ax.scatter([x], [y], s=80 if r.get("recommended") else 40, color=COLORS.get(r.get("band")),
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
            ax.scatter([], [], color=COLORS[status], label=f"speaker_acc {status} the band" if status != "in"
                       else "speaker_acc in the band")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.margins(x=0.3, y=0.15)
    fig.tight_layout()
    return save_figure(fig, path)
