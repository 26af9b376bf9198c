"""Plots of the evaluate stage: the stages side by side, the probes, the speaker_acc band."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from tristage.fsio import save_figure


def write_plots(
    out_dir: Path, per_stage: Mapping[str, Mapping[str, Any]], band: Sequence[float]
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(per_stage)
    val = lambda s, k: per_stage[s].get(k)
    num = lambda v: float("nan") if v is None else float(v)
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), layout="constrained")  # the suptitle above the titles
    for ax, key in zip(axes, ("mel_loss", "mel_top1")):
        vals = [num(val(s, key)) for s in stages]
        bars = ax.bar(stages, vals, color="tab:blue")
        ax.bar_label(bars, labels=[f"{v:.3f}" if v == v else "n/a" for v in vals], fontsize=8)
        ax.margins(y=0.12)
        ax.set_title(key)
    fig.suptitle("decoder on the validation split, per stage")
    paths.append(save_figure(fig, out_dir / "stages.png", dpi=100, bbox_inches="tight"))

    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.38
    xs = range(len(stages))
    for off, key, color in (
        (-width / 2, "speaker_probe_acc", "tab:red"),
        (width / 2, "emotion_probe_acc", "tab:green"),
    ):
        ax.bar([x + off for x in xs], [num(val(s, key)) for s in stages], width, label=key, color=color)
    chance = [num(val(s, "speaker_probe_chance")) for s in stages]
    ax.plot(list(xs), chance, "k--", label="speaker chance")
    ax.set_xticks(list(xs), stages)
    ax.set_ylim(0, 1)
    ax.set_title("fresh probes on the frozen emotion vectors")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out_dir / "probes.png", dpi=100, bbox_inches="tight"))

    fig, ax = plt.subplots(figsize=(6, 3))
    lo, hi = band
    ax.axhspan(lo, hi, color="tab:green", alpha=0.2, label=f"band [{lo}, {hi}]")
    accs = [num(val(s, "speaker_acc")) for s in stages]
    ax.plot(stages, accs, "o-", color="tab:purple", label="GRL speaker_acc")
    ax.set_ylim(0, 1)
    ax.set_title("speaker classifier behind the GRL")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out_dir / "speaker_acc_band.png", dpi=100, bbox_inches="tight"))
    return paths
