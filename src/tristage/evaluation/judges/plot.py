"""One figure: each audio metric per stage (bars), the anchor rows drawn as reference lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from tristage.evaluation.metrics import SUMMARY_KEYS
from tristage.fsio import save_figure

PANELS = SUMMARY_KEYS  # one panel per summary key of the audio judges
ANCHORS = (("ground_truth", "tab:green", "--"), ("resynthesis", "tab:orange", ":"))


def audio_judges_plot(path: Path, rows: Mapping[str, Mapping[str, Any]], pretrained_codec: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [r for r in rows if r not in ("ground_truth", "resynthesis")]
    num = lambda v: float("nan") if v is None else float(v)
    # constrained: each panel's y labels clear of its neighbour's bars
    fig, axes = plt.subplots(1, len(PANELS), figsize=(2.3 * len(PANELS), 3.2), layout="constrained")
    for ax, key in zip(axes, PANELS):
        vals = [num(rows[s].get(key)) for s in stages]
        bars = ax.bar(stages, vals, color="tab:blue", label="generated")
        ax.bar_label(bars, labels=[f"{v:.2f}" if v == v else "" for v in vals], fontsize=6)
        if all(v != v for v in vals):  # say so, instead of an empty panel
            ax.text(0.5, 0.5, "no stage value:\nnot measurable\non these clips", transform=ax.transAxes,
                    ha="center", va="center", fontsize=7, color="0.35", bbox=dict(fc="white", ec="none"))
        for anchor, color, style in ANCHORS:
            if anchor in rows and rows[anchor].get(key) is not None:
                ax.axhline(rows[anchor][key], color=color, linestyle=style, label=anchor)
        ax.set_xticks(range(len(stages)), stages)
        ax.set_ylim(*((1, 5) if key == "dnsmos_ovrl" else (0, 1.05)))
        ax.set_title(key, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=45)
        ax.tick_params(axis="y", labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=7, frameon=False)
    title = "audio judges per stage; lines: ground truth and codec resynthesis"
    if not pretrained_codec:
        title += " (random-init codec: resynthesis and stages are NOT speech)"
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=100, bbox_inches="tight")
