"""The audio judges on the demo corpus: the ground-truth row against the random-init codec's resynthesis,
and what each judge costs per clip.

    python -m benchmarks.judges [--corpus data/raw] [--n 8] [--seed 1234]

Picks `n` utterances of distinct speakers (by seed); the ASR's LM is built from the OTHER utterances'
texts (as `evaluate` does with the training split). Rows: `ground_truth` (the recordings) and
`resynthesis` (encoded and decoded by the default random-init DAC of the features stage: not speech).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from tristage.evaluation.audio import to_16k
from tristage.evaluation.judges.adherence import AdherenceJudge, agreement
from tristage.evaluation.judges.asr import build_lm, load_asr
from tristage.evaluation.judges.quality import DNSMOS
from tristage.evaluation.judges.speaker import cosine, load_speaker_encoder
from tristage.evaluation.judges.text import error_rates


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--corpus", default="data/raw", help="folder with manifest.jsonl (the corpus stage's output)"
    )
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    folder = Path(args.corpus)
    if not (folder / "manifest.jsonl").is_file():
        raise SystemExit(f"{folder}/manifest.jsonl not found: run the corpus stage first (dvc repro corpus)")
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rng = random.Random(args.seed)
    by_speaker: dict[str, list[dict]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker"], []).append(r)
    speakers = sorted(by_speaker)
    rng.shuffle(speakers)
    picked = [rng.choice(by_speaker[s]) for s in (speakers * args.n)[: args.n]]
    picked_ids = {r["id"] for r in picked}
    load = lambda r: to_16k(*sf.read(str(folder / r["audio"]), dtype="float32"))
    cost: dict[str, float] = {}

    def timed(key, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        cost[key] = cost.get(key, 0.0) + time.perf_counter() - t0
        return out

    from tristage.features.codec import decode_codes, encode, prepare_codec
    from tristage.features.config import FeaturesParams

    with tempfile.TemporaryDirectory() as tmp:
        codec, _ = prepare_codec(FeaturesParams().codec, Path(tmp))
        lm = timed(
            "asr_load", build_lm, [r["text"] for r in rows if r["id"] not in picked_ids], Path(tmp) / "lm"
        )
        asr = timed("asr_load", load_asr, None, "cpu", lm)
    enc = timed("speaker_load", load_speaker_encoder, None)
    mos = timed("dnsmos_load", DNSMOS)
    fit = [(load(r), r["text"], r.get("gender")) for r in rng.sample(rows, min(200, len(rows)))]
    adher = timed("adherence_load", AdherenceJudge.from_recordings, fit)
    others = {r["id"]: rng.choice([o for o in rows if o["speaker"] != r["speaker"]]) for r in picked}
    sames = {r["id"]: rng.choice([o for o in by_speaker[r["speaker"]] if o["id"] != r["id"]]) for r in picked}
    results: dict[str, list[dict]] = {"ground_truth": [], "resynthesis": []}
    for r in picked:
        gt = load(r)
        codes = encode(codec, torch.from_numpy(gt)[None], [len(gt)])[0]
        wav, sr = decode_codes(codec, codes)
        ref_same, ref_other = enc(load(sames[r["id"]])), enc(load(others[r["id"]]))
        for row, audio in (("ground_truth", gt), ("resynthesis", to_16k(wav, sr))):
            hyp = timed("asr", asr, audio)
            wer, cer = error_rates(r["text"], hyp)
            emb = timed("speaker", enc, audio)
            m = timed("dnsmos", mos, audio)
            a = timed("adherence", adher, audio, r["text"], r.get("gender"))
            results[row].append(
                dict(
                    wer=wer,
                    cer=cer,
                    sim=cosine(emb, ref_same),
                    sim_other=cosine(emb, ref_other),
                    ovrl=m["dnsmos_ovrl"],
                    pitch=agreement(r.get("pitch"), a["pitch_measured"]),
                    speed=agreement(r.get("speed"), a["speed_measured"]),
                )
            )
    n_clips = 2 * len(picked)
    print(f"audio judges on {len(picked)} utterances of {folder} ({len(by_speaker)} speakers), "
          f"seed {args.seed}")
    print("| row | wer | cer | speaker_sim | speaker_sim_other | dnsmos_ovrl | pitch_agreement "
          "| speed_agreement |")
    print("|---|---|---|---|---|---|---|---|")
    for row, res in results.items():
        mean = lambda k: np.mean([x[k] for x in res if x[k] is not None] or [np.nan])
        print(
            f"| {row} | {mean('wer'):.3f} | {mean('cer'):.3f} | {mean('sim'):.3f} | {mean('sim_other'):.3f} "
            "| "
            f"{mean('ovrl'):.2f} | {mean('pitch'):.2f} | {mean('speed'):.2f} |"
        )
    per_clip = {k: round(v / n_clips, 3) for k, v in cost.items() if not k.endswith("_load")}
    loading = {k: round(v, 2) for k, v in cost.items() if k.endswith("_load")}
    print(f"seconds per clip: {per_clip}; loading: {loading}")
    print("resynthesis = the default random-init codec: not speech")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
