"""scale: the seed's size (2.78M utterances, 132k speakers) through the real stage CLIs, plus DDP parity.

    python -m benchmarks.scale                 # 2.78M rows; about 4 minutes on 2 cores
    python -m benchmarks.scale --quick         # 200k rows
    python -m benchmarks.scale --parts ddp     # only one part (manifest, loader, ddp)

Parts, each against a baseline measured in the same run:
- manifest: `python -m steps.prepare` (check_audio false: the fake audio paths are not opened)
  then `python -m steps.speaker_mapping` on a generated seed-scale JSONL manifest, each in its
  own process, peak RSS from the kernel (wait4). Baseline: `pandas.read_json(lines=True)` of
  the same file, the naive way to load a manifest. Goal: streaming, peak RSS under 2 GiB.
- loader: a features store of 100k utterances (tiny mel/codes, real shard + index format)
  and its prepared manifest; time and memory to open it and build the trainer's data
  (`TrainData`: examples, split, sampler), then 1,000 batches. Goal: start-up under 10 s and
  memory flat while batching (RSS after 500 vs 1,000 batches; the cache is bounded).
- ddp: stage1 on the fake corpus, 1 process x batch 4 vs 2 gloo processes x batch 2 (the
  same global batches): the largest relative difference between the two loss curves.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_measured(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> tuple[float, float]:
    """Run `cmd`; return (seconds, peak RSS in MiB) of that child process alone."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err.decode()[-2000:]}")
    return dt, usage.ru_maxrss / 1024


def _env() -> dict:
    return dict(os.environ, TRISTAGE_TRACKING="0", TRISTAGE_NO_PROGRESS="1", PYTHONPATH=str(ROOT))


def part_manifest(tmp: Path, rows: int, speakers: int) -> list[str]:
    import yaml

    from benchmarks.speaker_mapping import write_manifest

    manifest = tmp / "manifest.jsonl"
    t0 = time.perf_counter()
    write_manifest(manifest, rows, speakers)
    size = manifest.stat().st_size / 2**20
    print(
        f"generated {rows:,} rows / {speakers:,} speakers ({size:.0f} MiB) "
        f"in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({
        "prepare": {"manifest": "manifest.jsonl", "check_audio": False},
        "speaker_mapping": {"manifest": "data/prepared/manifest.parquet"}}))
    py = sys.executable
    t_prep, rss_prep = run_measured([py, "-m", "steps.prepare", "--params", str(params)], env=_env())
    t_map, rss_map = run_measured([py, "-m", "steps.speaker_mapping", "--params", str(params)], env=_env())
    kept = json.loads((tmp / "metrics/prepare.json").read_text())["rows_kept"]
    sel = json.loads((tmp / "metrics/speaker_mapping.json").read_text())
    naive = f"import pandas as pd; df = pd.read_json({str(manifest)!r}, lines=True); print(len(df))"
    t_naive, rss_naive = run_measured([py, "-c", naive], env=_env())
    peak = max(rss_prep, rss_map)
    return [
        f"manifest at scale: {rows:,} rows ({size:.0f} MiB JSONL), {os.cpu_count()} cores. "
        f"prepare (check_audio false) {t_prep:.0f} s, peak RSS {rss_prep:.0f} MiB, {kept:,} rows kept; "
        f"speaker_mapping {t_map:.1f} s, peak RSS {rss_map:.0f} MiB, {sel['selected_speakers']} speakers. "
        f"Baseline pandas.read_json of the same file: {t_naive:.0f} s, peak RSS {rss_naive:.0f} MiB = "
        f"{rss_naive / peak:.1f}x the stages' peak (goal: peak under 2048 MiB: "
        f"{'ok' if peak < 2048 else 'NOT MET'})",
        f"command: python -m benchmarks.scale --parts manifest --rows {rows} --speakers {speakers}",
    ]


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def part_loader(tmp: Path, n: int) -> list[str]:
    import numpy as np
    import pandas as pd

    from tristage.config import load_params
    from tristage.testing import write_feature_store
    from tristage.testing.fakes import FakeCaptionTable
    from tristage.training.data import CACHE_UTTERANCES, Sources, TrainData

    folder = tmp / "features"
    t0 = time.perf_counter()
    write_feature_store(folder, n, seed=0)
    t_write = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = [f"utt{i:07d}" for i in range(n)]
    spk = rng.integers(0, max(2, n // 40), n)
    manifest = pd.DataFrame(dict(id=ids, text=["a short sentence to speak"] * n,
                                 speaker=[f"spk{s:05d}" for s in spk], caption=["a calm female voice"] * n))
    manifest_path = tmp / "manifest.parquet"
    manifest.to_parquet(manifest_path)
    del manifest
    (tmp / "params.yaml").write_text("stage1:\n  batch_size: 16\n")
    sp = load_params(tmp / "params.yaml").stage1
    base = _rss_mib()
    t0 = time.perf_counter()
    from tristage.data.manifest import read_prepared
    from tristage.features.store import FeatureStore

    store = FeatureStore(folder)
    table = FakeCaptionTable(["a", "calm", "female", "voice"])
    src = Sources(store=store, manifest=read_prepared(manifest_path), table=table,
                  mapping={f"spk{s:05d}": s for s in range(500)}, n_codebooks=int(store.meta["n_codebooks"]),
                  codebook_size=int(store.meta["codebook_size"]), n_mels=int(store.meta["n_mels"]))
    data = TrainData(src, sp, max_text_len=128, max_frames=256)
    t_start = time.perf_counter() - t0
    rss_start = _rss_mib()
    data._cache.clear()
    t0 = time.perf_counter()
    rss = {}
    for i in range(1, 1001):
        data.next_batch()
        if i in (100, 500, 1000):
            rss[i] = _rss_mib()
    t_batches = time.perf_counter() - t0
    return [
        f"loader at scale: features store of {n:,} utterances (written in {t_write:.0f} s). "
        "Open store + manifest "
        f"and build TrainData: {t_start:.1f} s (goal under 10 s: {'ok' if t_start < 10 else 'NOT MET'}), "
        f"RSS +{rss_start - base:.0f} MiB; 1,000 batches of 16 in {t_batches:.1f} s; "
        "RSS after 100 / 500 / 1,000 "
        f"batches {rss[100]:.0f} / {rss[500]:.0f} / {rss[1000]:.0f} MiB (500 -> 1,000: "
        f"{(rss[1000] - rss[500]) / rss[500] * 100:+.1f}%; goal flat: the decoded-utterance cache is bounded "
        f"at {CACHE_UTTERANCES:,})",
        f"command: python -m benchmarks.scale --parts loader --utterances {n}",
    ]


def part_ddp(tmp: Path) -> list[str]:
    from tristage.testing.fakes import write_tiny_params

    one, two = tmp / "one", tmp / "two"
    one.mkdir(), two.mkdir()
    kw = dict(steps=20, log_every=1, window=1, eval_every=100, checkpoint_every=100)
    p1, p2 = write_tiny_params(one, batch_size=4, **kw), write_tiny_params(two, batch_size=2, **kw)
    fakes = ["-m", "tristage.testing.fakes", "stage1", "--params"]
    t1, _ = run_measured([sys.executable, *fakes, str(p1)], env=_env())
    t2, _ = run_measured(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *fakes,
            str(p2),
        ],
        env=_env(),
    )

    def curve(folder: Path) -> list[float]:
        rows = (folder / "plots/stage1/train.tsv").read_text().splitlines()
        c = rows[0].split("\t").index("mel_loss")
        return [float(r.split("\t")[c]) for r in rows[1:] if r.split("\t")[c] not in ("", "nan")]

    a, b = curve(one), curve(two)
    worst = max(abs(x - y) / x for x, y in zip(a, b))
    return [
        f"ddp parity: stage1 on the fake corpus, 20 steps; 1 process x batch 4 ({t1:.0f} s) "
        "vs 2 gloo processes "
        f"x batch 2 ({t2:.0f} s), the same global batches: mel_loss {a[0]:.4f} -> {a[-1]:.4f} vs "
        f"{b[0]:.4f} -> {b[-1]:.4f}; largest relative difference over the curve {worst * 100:.2f}% "
        f"(the ranks average per-rank means, one process averages over all tokens)",
        "command: python -m benchmarks.scale --parts ddp",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_780_000)
    ap.add_argument("--speakers", type=int, default=132_389)
    ap.add_argument("--utterances", type=int, default=100_000)
    ap.add_argument("--parts", nargs="*", default=["manifest", "loader", "ddp"],
                    choices=["manifest", "loader", "ddp"])
    ap.add_argument("--quick", action="store_true", help="200k rows, 20k utterances")
    a = ap.parse_args(argv)
    if a.quick:
        a.rows, a.speakers, a.utterances = 200_000, 10_000, 20_000
    os.environ.setdefault("TRISTAGE_TRACKING", "0")
    os.environ.setdefault("TRISTAGE_NO_PROGRESS", "1")
    parts = dict(manifest=lambda t: part_manifest(t, a.rows, a.speakers),
                 loader=lambda t: part_loader(t, a.utterances), ddp=part_ddp)
    for name in a.parts:
        with tempfile.TemporaryDirectory(prefix=f"bench_scale_{name}_") as tmp:
            for line in parts[name](Path(tmp)):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
