"""Experiment (not part of `make bench`): does `stage2.band_control: auto` steer speaker_acc into the
band on the demo corpus? Two stage2 runs from the same stage1, one with `auto`, one with `warn`
(lambda fixed), read back from their train.tsv and drawn side by side.

    # after `make demo`, from the repo root (one torch thread each, so both can run at once):
    for m in auto warn; do OMP_NUM_THREADS=1 python -m steps.stage2 --set stage2.band_control=$m \\
        --set stage2.speaker_loss_weight=0.3 --set stage2.out_dir=/tmp/band_$m/m \\
        --set stage2.metrics=/tmp/band_$m/s2.json --set stage2.plots_dir=/tmp/band_$m/p & done; wait
    python -m benchmarks.experiments.band_control /tmp/band_auto/p/train.tsv /tmp/band_warn/p/train.tsv \\
        --out docs/sweep/band_control.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def read_run(train_tsv: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run's band checks (step, val_speaker_acc, band_status) and its lambda per logged step."""
    df = pd.read_csv(train_tsv, sep="\t")
    checks = df[df["val_speaker_acc"].notna()][["step", "val_speaker_acc", "band_status"]]
    return checks, df[df["grl_lambda"].notna()][["step", "grl_lambda"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("auto", type=Path, help="train.tsv of the band_control=auto run")
    ap.add_argument("fixed", type=Path, help="train.tsv of the band_control=warn run (lambda fixed)")
    ap.add_argument("--band", type=float, nargs=2, default=(0.3, 0.6))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {"band_control: auto": read_run(args.auto),
            "band_control: warn (lambda fixed)": read_run(args.fixed)}
    fig, (acc_ax, lam_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(2, 1))
    acc_ax.axhspan(*args.band, color="tab:green", alpha=0.15, label=f"band [{args.band[0]}, {args.band[1]}]")
    for (name, (checks, lam)), color in zip(runs.items(), ("tab:red", "tab:blue")):
        acc_ax.plot(checks["step"], checks["val_speaker_acc"], "o-", color=color, label=name)
        lam_ax.step(lam["step"], lam["grl_lambda"], where="post", color=color, label=name)
        late = checks[checks["step"] >= 100]["val_speaker_acc"].mean()
        print(f"{name}: mean val speaker_acc from step 100: {late:.3f}; lambda at the end: "
              f"{lam['grl_lambda'].iloc[-1]:g}")
    acc_ax.set_ylabel("val speaker_acc (30 utterances)")
    acc_ax.set_ylim(0, 1)
    acc_ax.legend(fontsize=8, loc="upper right")
    acc_ax.set_title("stage2 on the demo corpus from lambda 1, speaker_loss_weight 0.3\n"
                     "(random-init codec: the pipeline's behaviour, not speech quality)", fontsize=10)
    lam_ax.set_ylabel("grl_lambda")
    lam_ax.set_xlabel("step")
    lam_ax.set_ylim(0, 1.1)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
