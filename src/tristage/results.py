"""The results tables of the README and docs, generated from the committed metrics, so they can't go stale.

    tristage results --write          # rewrite every generated table (make demo runs it)
    tristage results --check          # exit 1, naming the file and table, when one differs from metrics/

A generated table sits between two markers in a markdown file; everything else is the author's:

    <!-- results:stages -->
    ...generated...
    <!-- /results:stages -->

Tables: `stages` (each stage and the anchor rows: what the judges give real speech and the codec's
resynthesis), `seed_criteria` (the seed's success table, computed by `evaluate`), `samples` (links to
one generated wav per stage, copied by `--write` to docs/samples/).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from tristage.fsio import read_json

STAGES = ("stage1", "stage2", "stage3")
FILES = ("README.md", "docs/results.md")
SAMPLES_DIR = "docs/samples"
MARK = re.compile(r"(<!-- results:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "–" if not isinstance(v, (int, float)) or isinstance(v, bool) else fmt.format(v)


def _wer(row: dict) -> str:
    if row.get("wer") is None:
        return "–"
    se = f" ± {row['wer_se']:.3f}" if row.get("wer_se") is not None else ""
    return f"{row['wer']:.3f}{se} (n={row.get('wer_n', row.get('n_clips', '?'))})"


def _sim(row: dict) -> str:
    if row.get("speaker_sim") is None:
        return "–"
    return f"{row['speaker_sim']:.3f} / {_f(row.get('speaker_sim_other'))}"


def _adherence(row: dict) -> str:
    return f"{_f(row.get('pitch_agreement'), '{:.2f}')} | {_f(row.get('speed_agreement'), '{:.2f}')}"


def table_stages(root: Path) -> str:
    ev = read_json(root / "metrics/evaluate.json", {})
    head = ["row", "steps", "trainable", "val mel_loss", "mel_top1", "speaker_acc (band)",
            "spk probe", "emo probe", "WER ± se (n)", "spk sim same / other", "pitch adh.", "speed adh."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ("ground_truth", "resynthesis"):
        row = ev.get(name) or {}
        if row:
            label = {"ground_truth": "ground truth (recordings)", "resynthesis": "resynthesis (codec)"}[name]
            lines.append(f"| {label} | | | | | | | | {_wer(row)} | {_sim(row)} | {_adherence(row)} |")
    for stage in STAGES:
        em, tm = ev.get(stage) or {}, read_json(root / f"metrics/{stage}.json", {})
        if not em and not tm:
            continue
        acc = em.get("speaker_acc")
        band = "–" if acc is None else f"{acc:.3f} ({em.get('speaker_acc_band')})"
        frac = tm.get("trainable_fraction")
        cells = [stage, _f(tm.get("steps"), "{:d}"), _f(None if frac is None else 100 * frac, "{:.1f}%"),
                 _f(em.get("mel_loss"), "{:.4f}"), _f(em.get("mel_top1")), band,
                 _f(em.get("speaker_probe_acc")), _f(em.get("emotion_probe_acc")), _wer(em), _sim(em),
                 _adherence(em)]
        lines.append("| " + " | ".join(cells) + " |")
    judge = (ev.get("audio_judges") or {}).get("asr")
    note = f"\n\nWER: {judge}, on the validation sentences of seen and held-out speakers." if judge else ""
    return "\n".join(lines) + note + "\n"


def table_seed_criteria(root: Path) -> str:
    crit = read_json(root / "metrics/evaluate.json", {}).get("seed_criteria") or {}
    lines = ["| stage | criterion | target | value | pass |", "|---|---|---|---|---|"]
    for stage, rows in crit.items():
        for r in rows:
            verdict = {True: "yes", False: "**no**", None: "–"}[r.get("pass")]
            lines.append(f"| {stage} | {r['criterion']} | {r['target']} | {_f(r.get('value'), '{:.4g}')} | "
                         f"{verdict} |")
    return "\n".join(lines) + "\n"


def table_samples(root: Path, page: Path) -> str:
    """Links (relative to the page that holds them) to one generated wav per stage."""
    lines = []
    for stage in STAGES:
        wav = root / SAMPLES_DIR / f"{stage}.wav"
        if wav.is_file():
            rel = os.path.relpath(wav, (root / page).parent)
            lines.append(f"- {stage}: [{wav.name}]({Path(rel).as_posix()})")
    return "\n".join(lines) + ("\n" if lines else "")


ADVERSARY_RUNS = "docs/results/adversary"  # one JSON per stage2.adversary run: `tristage results --adversary`


def _adversary_row(name: str, ev: dict, s2: dict) -> str:
    em, e3 = ev.get("stage2") or {}, ev.get("stage3") or {}
    acc, ci, verdict = em.get("speaker_acc"), em.get("speaker_acc_ci95"), em.get("speaker_acc_band")
    if not ci and acc is not None and em.get("speaker_acc_n"):  # `dvc exp show --json` drops lists
        from tristage.training.band import wilson_interval

        ci = wilson_interval(float(acc), int(em["speaker_acc_n"]))
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    band = "–" if acc is None else f"{acc:.3f}{interval} ({verdict})"
    cells = [name, _f(s2.get("classifier_steps"), "{:d}"), band,
             _f((ev.get("stage1") or {}).get("speaker_probe_acc")), _f(em.get("speaker_probe_acc")),
             _f(em.get("emotion_probe_acc")), _f(em.get("mel_loss"), "{:.4f}"),
             _f(e3.get("mel_loss"), "{:.4f}"), s2.get("band_advice") or "–"]
    return "| " + " | ".join(cells) + " |"


def table_adversary(root: Path) -> str:
    """stage2's two adversaries on the demo corpus: the project's (metrics/) beside each recorded run."""
    head = ["stage2.adversary", "classifier steps", "speaker_acc [95% CI] (band)", "spk probe after stage1",
            "spk probe after stage2", "emo probe", "stage2 val mel_loss", "stage3 val mel_loss", "advice"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    s2 = read_json(root / "metrics/stage2.json", {})
    ev = read_json(root / "metrics/evaluate.json", {})
    lines.append(_adversary_row(s2.get("adversary", "project"), ev, s2))
    for path in sorted((root / ADVERSARY_RUNS).glob("*.json")):
        run = read_json(path, {})
        if run.get("stage2", {}).get("adversary") != s2.get("adversary"):
            lines.append(_adversary_row(run["stage2"].get("adversary", path.stem), run.get("evaluate", {}),
                                        run.get("stage2", {})))
    return "\n".join(lines) + "\n"


TABLES: dict[str, Callable[..., str]] = {
    "stages": table_stages, "seed_criteria": table_seed_criteria, "samples": table_samples,
    "adversary": table_adversary}
PAGE_AWARE = {"samples"}  # tables whose links depend on the page they sit in


def _exp_metrics(tree, name: str) -> dict | None:
    """The metrics files of the DVC experiment `name` in `dvc exp show --json` output (any nesting)."""
    if isinstance(tree, dict):
        data = tree.get("data") or {}
        if name in (tree.get("name"), data.get("name"), tree.get("rev")) and "metrics" in data:
            return {f: (v or {}).get("data", {}) for f, v in data["metrics"].items()}
        children = tree.values()
    elif isinstance(tree, list):
        children = tree
    else:
        return None
    return next((m for c in children if (m := _exp_metrics(c, name)) is not None), None)


def record_adversary(root: Path, exp: str) -> Path:
    """Copy a DVC experiment's stage2 and evaluate metrics (`dvc exp run -S stage2.adversary=...  -n EXP`)
    to docs/results/adversary/<adversary>.json, the committed source of the `adversary` table."""
    import json
    import subprocess

    from tristage.fsio import write_json

    out = subprocess.run(["dvc", "exp", "show", "--json", "-A"], cwd=root, capture_output=True, text=True)
    metrics = _exp_metrics(json.loads(out.stdout or "null"), exp) if out.returncode == 0 else None
    if not metrics:
        raise SystemExit(f"results: no DVC experiment {exp!r} with metrics (dvc exp show): "
                         f"{out.stderr[-300:]}")
    s2 = metrics.get("metrics/stage2.json", {})
    path = root / ADVERSARY_RUNS / f"{s2.get('adversary', exp)}.json"
    write_json(path, dict(experiment=exp, stage2=s2, evaluate=metrics.get("metrics/evaluate.json", {})))
    return path


def copy_samples(root: Path, samples_dir: Path) -> list[Path]:
    """One generated wav per stage (the first matched request of the evaluate plan) -> docs/samples/."""
    out = []
    for stage in STAGES:
        src = samples_dir / stage / "matched_00.wav"
        if src.is_file():
            dst = root / SAMPLES_DIR / f"{stage}.wav"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            out.append(dst)
    return out


def render(text: str, root: Path, page: Path = Path("README.md")) -> str:
    """`text` (of `page`, relative to `root`) with every marked table regenerated."""
    def sub(m: re.Match) -> str:
        name = m.group("name")
        fn = TABLES.get(name)
        if fn is None:
            return m.group(0)
        body = fn(root, page) if name in PAGE_AWARE else fn(root)
        return m.group(1) + body + m.group(4)

    return MARK.sub(sub, text)


def stale(root: Path) -> list[str]:
    """'file: table' for every generated table that differs from what the metrics give."""
    out = []
    for name in FILES:
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text()
        want = render(text, root, Path(name))
        for old, new in zip(MARK.finditer(text), MARK.finditer(want)):
            if old.group(0) != new.group(0):
                out.append(f"{name}: {old.group('name')}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tristage results", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the generated tables (and docs/samples/)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated table differs from metrics/")
    ap.add_argument("--root", type=Path, default=Path("."), help="the project folder (default: here)")
    ap.add_argument("--adversary", metavar="EXP", default=None,
                    help="record the DVC experiment EXP's stage2 adversary run for the `adversary` table")
    ap.add_argument("--samples", type=Path, default=None,
                    help="evaluate's samples folder (default data/samples)")
    args = ap.parse_args(argv)
    root = args.root
    if args.adversary:
        print(f"results: recorded {record_adversary(root, args.adversary)}")
    if args.write:
        copy_samples(root, args.samples or root / "data/samples")
        for name in FILES:
            path = root / name
            if path.is_file():
                path.write_text(render(path.read_text(), root, Path(name)))
        done = [n for n in FILES if (root / n).is_file()]
        print("results: tables regenerated from metrics/ in " + ", ".join(done))
    bad = stale(root)
    if bad:
        print("results: generated tables differ from metrics/ (run `tristage results --write`): "
              + "; ".join(bad), file=sys.stderr)
        return 1
    return 0
