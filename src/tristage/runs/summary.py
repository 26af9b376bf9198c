"""`tristage summary`: what `make demo` ends with, one readable table of the demo's figures.

    tristage summary [--params params.yaml]

One row per training stage: steps, trainable %, validation mel_loss and mel_top1, the GRL speaker
classifier's accuracy with its band, the fresh speaker / emotion probes on the emotion vector and
the caption cosine of the stage's own caption adapters (all from metrics/evaluate.json, measured
on the validation split; steps and trainable % from metrics/<stage>.json). When stage 2's
speaker_acc ended outside its band, the advice the trainer gave (models/stage2/training.json),
else the same advice made from metrics/stage2.json. Then where the plots and audio samples are,
the commands to look further and the MLflow UI's link to the runs. Reads the metrics files named
in params; a stage not run yet shows "-". `dvc metrics show --md` still prints every metric.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from tristage.fsio import read_json

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


def _num(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if not isinstance(v, (int, float)) or isinstance(v, bool) else fmt.format(v)


def stage_rows(params) -> list[list[str]]:
    ev = read_json(params.evaluate.metrics, {})
    rows = []
    for stage in STAGES:
        tm, em = read_json(params.stage(stage).metrics, {}), ev.get(stage) or {}
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
    )
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def band_advice(stage2: dict, band, training_json: Path | None = None) -> str | None:
    """What to do when stage 2's speaker_acc ended outside `band` (metrics/stage2.json's
    `speaker_acc_band` is "below" or "above"), else None: the trainer's last band warning
    (`band_log` in models/stage2/training.json) when it is there, else the same advice
    (`training.band`) made from the final figures in `stage2`."""
    status = stage2.get("speaker_acc_band")
    if status not in ("below", "above"):
        return None
    log = read_json(training_json, {}).get("band_log") if training_json else None
    last = next((e for e in reversed(log) if isinstance(e, dict) and e.get("status") == status
                 and e.get("message")), None) if isinstance(log, list) else None
    if last is not None:
        return f"{last['message']} (training step {last.get('step', '?')})"
    if stage2.get("band_advice"):  # the trainer's advice for the adversary it ran (training/band.py)
        return str(stage2["band_advice"])
    from tristage.training.band import SpeakerAccBand

    acc = next((stage2[k] for k in ("val_speaker_acc", "speaker_acc") if _is_num(stage2.get(k))), None)
    lam = next((stage2[k] for k in ("grl_lambda_final", "grl_lambda") if _is_num(stage2.get(k))), 1.0)
    weight = next((stage2[k] for k in ("speaker_loss_weight_final", "speaker_loss_weight")
                   if _is_num(stage2.get(k))), 0.1)
    low, high = (float(x) for x in band)
    if acc is None:
        acc = low - 1e-9 if status == "below" else high + 1e-9
    decision = SpeakerAccBand(low, high, patience=1, control="warn").update(acc, lam, weight)
    return decision.warning.replace(" for 1 checks", " at the end of training") if decision.warning else None


LISTEN = ("row", "WER +- se (n)", "CER", "spk sim same / other", "DNSMOS", "pitch adh.", "speed adh.")


def listening_rows(ev: dict) -> list[list[str]]:
    """What the audio judges heard: the anchor rows, then each stage (metrics/evaluate.json)."""
    rows = []
    for name in ("ground_truth", "resynthesis", *STAGES):
        r = ev.get(name) or {}
        if r.get("wer") is None and r.get("speaker_sim") is None:
            continue
        se = f" +- {r['wer_se']:.3f}" if _is_num(r.get("wer_se")) else ""
        wer = "-" if r.get("wer") is None else f"{r['wer']:.3f}{se} ({r.get('wer_n', r.get('n_clips'))})"
        rows.append([name.replace("_", " "), wer, _num(r.get("cer")),
                     f"{_num(r.get('speaker_sim'))} / {_num(r.get('speaker_sim_other'))}",
                     _num(r.get("dnsmos_ovrl"), "{:.2f}"), _num(r.get("pitch_agreement"), "{:.2f}"),
                     _num(r.get("speed_agreement"), "{:.2f}")])
    return rows


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def mlflow_link(params) -> str:
    """The MLflow UI's link to the runs of the experiment `tristage` (tristage.runs.tracking.runs_link)."""
    from tristage.runs.tracking import runs_link, tracking_uri

    return runs_link(tracking_uri(Path(params.base_dir or ".")))


def summary(params) -> str:
    ev = read_json(params.evaluate.metrics, {})
    rows = stage_rows(params)
    out = [render(rows) if rows else "no stage has metrics yet: run `dvc repro` first"]
    band = ev.get("speaker_acc_band_range") or list(params.stage2.speaker_acc_band)
    legend = (
        f"val = the validation split. speaker_acc: the GRL speaker classifier on the emotion vector (band "
        f"{band[0]}-{band[1]}). probes: fresh classifiers on the frozen emotion vector. caption cos: the "
        "stage's own caption adapters vs the caption encoder, on the held-out captions."
    )
    out.append(textwrap.fill(legend, WIDTH, break_on_hyphens=False))
    heard = listening_rows(ev)
    if heard:
        judge = (ev.get("audio_judges") or {}).get("asr") or "the ASR judge"
        out += ["", render(heard, LISTEN), textwrap.fill(
            f"WER by {judge}; ground truth = the recordings (the judge's floor), resynthesis = through the "
            "codec (what any stage can reach); spk sim: to another utterance of the target speaker / of "
            "another speaker." + (" The requests are TRAINING sentences (evaluate.sample_from): a "
                                  "memorisation check, not a test of reading new text."
                                  if ev.get("sample_from") == "training" else ""),
            WIDTH, break_on_hyphens=False)]
    if ev.get("seed_criteria"):
        from tristage.evaluation.criteria import criteria_lines

        out += ["", "the seed's success criteria (indextts2-three-stage-training.md):",
                *criteria_lines(ev["seed_criteria"])]
    stage2 = read_json(params.stage2.metrics, {})
    advice = band_advice(stage2, band, Path(params.stage2.out_dir) / "training.json")
    if advice:
        n = stage2.get("band_warnings")
        head = "band advice" + (f" ({n:g} band warning{'s' * (n != 1)} in stage2's training)"
                                if _is_num(n) and n else "")
        out.append(textwrap.fill(f"{head}: {advice}", WIDTH, break_on_hyphens=False,
                                 subsequent_indent="  "))
    if ev.get("note"):
        out.append(textwrap.fill(f"note: {ev['note']}", WIDTH, break_on_hyphens=False))
    base = Path(params.base_dir or ".")
    rel = lambda p: _rel(Path(p), base)
    plots = [rel(params.stage(s).plots_dir) for s in STAGES] + [rel(params.evaluate.plots_dir)]
    out += [
        "",
        "plots:   " + "  ".join(f"{p}/" for p in plots),
        f"samples: {rel(params.evaluate.samples_dir)}/ (wavs; samples.json says what each is)",
        "more:    dvc metrics show --md      every metric of every stage",
        "         dvc plots show             training curves (HTML)",
        "         tristage compare           recent pipeline runs side by side (MLflow)",
        "         make serve                 Prefect UI on 127.0.0.1:4200, runs with overrides",
        "         make mlflow                MLflow UI (mlflow ui on 127.0.0.1:5000), then open the runs:",
        f"  {mlflow_link(params)}",
    ]
    return "\n".join(out)


def _rel(p: Path, base: Path) -> str:
    try:
        return p.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(p)
