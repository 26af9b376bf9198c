"""Your own voice on the demo: does `tristage finetune` on 20 utterances of a speaker the stages never heard
raise speaker_sim to that speaker above the base model's, in <= 5 minutes on 2 cores?

    make demo                                # models/stage3 + data/raw (and data/annotated for the split)
    python -m benchmarks.finetune            # every held-out speaker; prints a table, writes results.json
    python -m benchmarks.finetune --n 20 --heldout 3 --cores 0,1 --out .tristage/bench-finetune

For each speaker held out of training (`data.split.heldout_speakers` with stage1's seed and
`heldout_speakers`: the ones `evaluate` judges as unseen), `n + heldout` of its demo utterances (drawn
by `--seed`) are written as a plain folder of name.wav + name.txt, and `tristage finetune --model
models/stage3 --data <it> --heldout H --min-utterances n` runs on it under `taskset` (the cores named by
`--cores`; torch, numpy and onnxruntime limited to that many threads), tracking off. Its report gives
speaker_sim (cosine of the speaker embedding to the speaker's voice profile: evaluate's judge) before
(base model, one of the speaker's clips as reference) and after, on the H held-out utterances; the wall
time is the whole command's (import to report). Pass: after > before and wall <= --budget-s, for every
speaker.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def heldout_speakers(root: Path) -> list[str]:
    """The speakers the stages held out (stage1's split of the annotated manifest, as TrainData makes it)."""
    from tristage.config import load_params
    from tristage.data.manifest import read_prepared
    from tristage.data.split import heldout_speakers as pick

    params = load_params(root / "params.yaml")
    man = read_prepared(params.stage1.prepared, columns=["speaker"])
    s1 = params.stage1
    return sorted(pick(man["speaker"].astype(str).tolist(), s1.heldout_speakers, s1.seed))


def write_folder(root: Path, speaker: str, n: int, seed: int, dest: Path) -> int:
    """`n` utterances of `speaker` from data/raw as name.wav + name.txt in `dest` -> how many."""
    from tristage.config import load_params

    manifest = Path(load_params(root / "params.yaml").prepare.manifest)
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = sorted((r for r in rows if str(r["speaker"]) == speaker), key=lambda r: str(r["id"]))
    pick = np.random.default_rng(seed).choice(len(rows), min(n, len(rows)), replace=False)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for i in sorted(pick.tolist()):
        r = rows[i]
        audio = Path(r["audio"]) if Path(r["audio"]).is_absolute() else manifest.parent / r["audio"]
        shutil.copy2(audio, dest / f"{r['id']}{audio.suffix}")
        (dest / f"{r['id']}.txt").write_text(str(r["text"]) + "\n", encoding="utf-8")
    return len(pick)


def run_one(root: Path, speaker: str, data: Path, out: Path, a) -> dict:
    """One fine-tune under taskset -> its figures and wall time."""
    threads = str(len(a.cores.split(",")))
    env = dict(os.environ, TRISTAGE_TRACKING="0", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               OPENBLAS_NUM_THREADS=threads)
    cmd = [sys.executable, "-m", "tristage.cli", "finetune", "--model", str(a.model), "--data", str(data),
           "--speaker", speaker, "--out", str(out), "--heldout", str(a.heldout), "--min-utterances",
           str(a.n), "--no-track", "--quiet", "--set", f"train.threads={threads}",
           "--set", f"report.threads={threads}", *(["--steps", str(a.steps)] if a.steps else [])]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", a.cores, *cmd]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return dict(speaker=speaker, error=(r.stderr.strip().splitlines() or ["failed"])[-1], wall_s=wall)
    report = json.loads((out / "finetune.json").read_text())
    before, after = (report["rows"][k]["speaker_sim"] for k in ("before", "after"))
    return dict(speaker=speaker, before=before, after=after, delta=round(after - before, 4),
                ground_truth=report["rows"]["ground_truth"]["speaker_sim"],
                wer_before=report["rows"]["before"]["wer"], wer_after=report["rows"]["after"]["wer"],
                train_s=report["train"].get("seconds"), wall_s=round(wall, 1),
                passed=bool(after > before and wall <= a.budget_s))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=REPO, help="the reproduced demo (make demo)")
    p.add_argument("--model", type=Path, default=None, help="the base model (default <root>/models/stage3)")
    p.add_argument("--n", type=int, default=20, help="utterances to fine-tune on, per speaker")
    p.add_argument("--heldout", type=int, default=3, help="more utterances, judged in the report")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--cores", default="0,1", help="the CPU cores the fine-tune may use (taskset -c)")
    p.add_argument("--budget-s", type=float, default=300.0, help="the wall-time goal per speaker")
    p.add_argument("--seed", type=int, default=0, help="which of a speaker's utterances are used")
    p.add_argument("--out", type=Path, default=None, help="default <root>/.tristage/bench-finetune")
    a = p.parse_args(argv)
    root = a.root.resolve()
    a.model = (a.model or root / "models" / "stage3").resolve()
    out = (a.out or root / ".tristage" / "bench-finetune").resolve()
    if not (a.model / "synthesis.json").is_file():
        raise SystemExit(f"{a.model}: no trained model folder; run `make demo` first")
    rows = []
    for speaker in heldout_speakers(root):
        n = write_folder(root, speaker, a.n + a.heldout, a.seed, out / "data" / speaker)
        print(f"{speaker}: fine-tuning on {n - a.heldout} utterances (+{a.heldout} held out) ...", flush=True)
        rows.append(run_one(root, speaker, out / "data" / speaker, out / "models" / speaker, a))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'speaker':<12}{'before':>8}{'after':>8}{'delta':>8}{'truth':>8}{'wall s':>8}  pass")
    for r in rows:
        if "error" in r:
            print(f"{r['speaker']:<12} error: {r['error']}")
            continue
        print(f"{r['speaker']:<12}{r['before']:>8.3f}{r['after']:>8.3f}{r['delta']:>8.3f}{r['ground_truth']:>8.3f}"
              f"{r['wall_s']:>8.1f}  {'yes' if r['passed'] else 'NO'}")
    ok = bool(rows) and all(r.get("passed") for r in rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(dict(rows=rows, passed=ok, n=a.n, heldout=a.heldout,
                                                      cores=a.cores, budget_s=a.budget_s), indent=2) + "\n")
    print(f"{'PASS' if ok else 'FAIL'}: speaker_sim raised for {sum(bool(r.get('passed')) for r in rows)} of "
          f"{len(rows)} held-out speakers within {a.budget_s:.0f} s each; {out / 'results.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
