"""The `features` stage: prepared manifest -> sharded log-mel + DAC codes (see store.py for the layout).

    audio files --DataLoader workers (read, mono, resample_poly to mel and codec rates)-->
    main process: per shard, length-sorted padded batches -> log_mel (B, T_mel, n_mels) and
    DAC encode (B, K, T) on the device -> cut each utterance to its own frame count -> shard file.

Resumable: a shard whose file exists with the same fingerprint (config + its manifest rows)
is skipped; files appear only by rename, so kill -9 leaves finished shards or nothing.
Deterministic: the shard and batch composition depend only on the sorted manifest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tristage.device import resolve_device
from tristage.environment import deterministic_torch
from tristage.errors import UserError
from tristage.features import store as st
from tristage.features.config import FeaturesParams

log = logging.getLogger(__name__)
TRUNCATED_TOLERANCE = 0.05  # audio shorter than the manifest's duration by more than this (s) -> failed


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Deterministic polyphase resampling (scipy), float32 out; len = ceil(len(x) * sr_out / sr_in)."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(x.astype(np.float64), sr_out // g, sr_in // g).astype(np.float32)


def read_audio(
    path: str, expected_s: float | None, sr_mel: int, sr_codec: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """(wav at the mel rate, wav at the codec rate, duration s); raises ValueError / OSError on bad audio."""
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if len(x) == 0:
        raise ValueError("empty audio")
    if not np.isfinite(x).all():
        raise ValueError("non-finite samples")
    dur = len(x) / sr
    if expected_s is not None and np.isfinite(expected_s) and dur < expected_s - TRUNCATED_TOLERANCE:
        raise ValueError(f"truncated: read {dur:.3f} s of {expected_s:.3f} s")
    return resample(x, sr, sr_mel), resample(x, sr, sr_codec), dur


class AudioItems:
    """torch Dataset of manifest rows -> dict(uid, shard, mel_wav, codec_wav, duration, error)."""

    def __init__(self, rows: list[dict], sr_mel: int, sr_codec: int):
        self.rows, self.sr_mel, self.sr_codec = rows, sr_mel, sr_codec

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        item = dict(id=r["id"], audio=r["audio_rel"], shard=r["shard"], error=None)
        try:
            item["mel_wav"], item["codec_wav"], item["duration"] = read_audio(
                r["audio"], r.get("duration"), self.sr_mel, self.sr_codec)
        except Exception as exc:  # any unreadable file is recorded and skipped
            item["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
        return item


def _identity(x):
    return x


def batches(lengths: list[int], max_samples: int) -> list[list[int]]:
    """Length-bucketed batches of positions: sorted by length, padded size (B * max len) <= max_samples."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > max_samples:
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


def _pad(wavs: list[np.ndarray], device: str):
    import torch

    x = torch.zeros(len(wavs), max(len(w) for w in wavs))
    for i, w in enumerate(wavs):
        x[i, : len(w)] = torch.from_numpy(w)
    return x.to(device)


def encode_shard(items: list[dict], model, fp: FeaturesParams, device: str) -> tuple[list, list]:
    """-> (mels (T_mel_i, n_mels) float16, codes (K, T_i) int16) per item, in item order."""
    from tristage.features.codec import encode
    from tristage.features.mel import log_mel, n_mel_frames

    mels, codes = [None] * len(items), [None] * len(items)
    lengths = [len(it["codec_wav"]) for it in items]
    for b in batches(lengths, int(fp.batch_seconds * model.sample_rate)):
        mw = [items[i]["mel_wav"] for i in b]
        m = log_mel(_pad(mw, device), fp.mel)  # (B, T_mel, n_mels)
        for j, i in enumerate(b):
            mels[i] = m[j, : n_mel_frames(len(mw[j]), fp.mel.hop_length)].half().cpu()
        c = encode(model, _pad([items[i]["codec_wav"] for i in b], device), [lengths[i] for i in b])
        for j, i in enumerate(b):
            codes[i] = c[j]
    return mels, codes


def fingerprint(config: dict, rows: list[dict]) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for r in rows:
        h.update(f"\0{r['id']}\0{r['audio_rel']}".encode())
    return h.hexdigest()[:32]


def load_rows(fp: FeaturesParams) -> list[dict]:
    from tristage.data.manifest import read_prepared, resolve_audio

    df = read_prepared(fp.manifest)
    for c in ("id", "audio"):
        if c not in df.columns:
            raise UserError(f"{fp.manifest}: prepared manifest has no `{c}` column; rerun `prepare`")
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise UserError(f"{fp.manifest}: duplicate id {dup.iloc[0]!r}; rerun `prepare`")
    df = df.sort_values("id", kind="stable")
    dur = df["duration"] if "duration" in df.columns else [None] * len(df)
    spk = df["speaker"].astype(str) if "speaker" in df.columns else [""] * len(df)
    return [dict(id=str(u), audio=str(resolve_audio(fp.manifest, a)), audio_rel=str(a),
                 duration=None if d is None or d != d else float(d), speaker=s)
            for u, a, d, s in zip(df["id"], df["audio"], dur, spk)]


def training_audio(rows: list[dict], split) -> Callable:
    """For fitting a codec: `(sample_rate) -> (ids, load)`, the training split's ids (`data.split` with the
    training stages' seed, val_fraction and held-out speakers) and a function reading their audio."""
    from tristage.data.split import TRAIN, split_ids

    which = split_ids([r["id"] for r in rows], [r["speaker"] for r in rows], split.val_fraction,
                      split.heldout_speakers, split.seed)
    train = [r for r in rows if which[r["id"]] == TRAIN]

    def audio(sample_rate: int):
        def load() -> list[np.ndarray]:
            out = []
            for r in train:
                try:
                    out.append(read_audio(r["audio"], None, sample_rate, sample_rate)[1])
                except (OSError, ValueError, RuntimeError):  # unreadable: the encoding pass records it
                    continue
            return out
        return [r["id"] for r in train], load
    return audio


def _store_config(fp: FeaturesParams, info: dict, device: str) -> dict:
    """What the stored features depend on besides the rows (part of each shard's fingerprint)."""
    return dict(
        format=st.FORMAT,
        mel=fp.mel.model_dump(mode="json"),
        codec={k: info[k] for k in ("sha256", "kwargs")},
        batch_seconds=fp.batch_seconds,
        device_type=device.split(":")[0],
    )


def _store_meta(fp: FeaturesParams, info: dict, n_shards: int, n_utterances: int, n_failed: int) -> dict:
    """`<out_dir>/meta.json`: the sizes and rates training reads (n_mels, codebooks, frames per second),
    the codec's description, the mel settings and the shard layout."""
    return dict(
        format=st.FORMAT,
        n_mels=fp.mel.n_mels,
        n_codebooks=info["n_codebooks"],
        codebook_size=info["codebook_size"],
        frames_per_second=info["sample_rate"] / info["hop_length"],
        mel_frames_per_second=fp.mel.sample_rate / fp.mel.hop_length,
        sample_rate=info["sample_rate"],
        hop_length=info["hop_length"],
        codec=info,
        mel=fp.mel.model_dump(mode="json"),
        shard_size=fp.shard_size,
        n_shards=n_shards,
        n_utterances=n_utterances,
        n_failed=n_failed,
    )


def _features_metrics(meta: dict, index, n_manifest: int, plan: st.ShardPlan, audio_s: float,
                      elapsed: float, device: str) -> dict:
    """`metrics/features.json`: counts, audio seconds, codec, speed of this run, shards written/skipped."""
    info = meta["codec"]
    return dict(
        n_utterances=len(index),
        n_failed=meta["n_failed"],
        n_manifest=n_manifest,
        total_audio_s=round(float(index["duration"].sum()), 3),
        frames_per_second=meta["frames_per_second"],
        mel_frames_per_second=meta["mel_frames_per_second"],
        n_codebooks=info["n_codebooks"],
        codebook_size=info["codebook_size"],
        real_time_factor=round(elapsed / audio_s, 5) if audio_s else None,
        x_real_time=round(audio_s / elapsed, 2) if audio_s else None,
        codec=info["path"] or info["name"],
        codec_pretrained=info["pretrained"],
        device=device,
        n_shards=plan.n_shards,
        shards_written=len(plan.todo),
        shards_skipped=plan.n_shards - len(plan.todo),
        audio_s_this_run=round(audio_s, 3),
        elapsed_s=round(elapsed, 2),
    )


def run_features(fp: FeaturesParams, tracker=None, split=None) -> dict:
    """The stage: encode the shards not already stored, write the index, meta.json and the metrics.
    `split`: the training stages' split settings (seed, val_fraction, heldout_speakers; stage1's params),
    whose training utterances a `melvq` codec is fitted on."""

    from tristage.features.codec import prepare_codec
    from tristage.fsio import write_json

    deterministic_torch(fp.threads)
    rows = load_rows(fp)
    if not rows:
        raise UserError(f"{fp.manifest}: no rows")
    out = Path(fp.out_dir)
    device = resolve_device(fp.device, "features.device")
    model, info = prepare_codec(fp.codec, out, training_audio(rows, split) if split is not None else None)
    model = model.to(device).eval()
    config = _store_config(fp, info, device)
    plan = st.plan_shards(out, rows, fp.shard_size, lambda shard_rows: fingerprint(config, shard_rows))
    log.info("features: %d utterances, %d shards (%d to do), codec %s, device %s",
             len(rows), plan.n_shards, len(plan.todo), info["name"], device)
    audio_s, elapsed = _encode_shards(plan, model, info, fp, device, out)
    index, failed_all = st.write_index(out, plan.n_shards)
    meta = _store_meta(fp, info, plan.n_shards, len(index), len(failed_all))
    write_json(out / st.META, meta)
    metrics = _features_metrics(meta, index, len(rows), plan, audio_s, elapsed, device)
    write_json(fp.metrics, metrics)
    if failed_all:
        log.warning("features: %d utterance(s) failed, see %s", len(failed_all), out / st.FAILED)
    return metrics


def _encode_shards(plan: st.ShardPlan, model, info: dict, fp: FeaturesParams, device: str,
                   out: Path) -> tuple[float, float]:
    """Read, encode and write the shards to do; -> (seconds of audio encoded, seconds taken)."""
    import torch
    from tqdm import tqdm

    pending = [dict(r, shard=i) for i in plan.todo for r in plan.rows[i]]
    loader = torch.utils.data.DataLoader(AudioItems(pending, fp.mel.sample_rate, info["sample_rate"]),
                                         batch_size=None, shuffle=False, num_workers=fp.num_workers,
                                         collate_fn=_identity, prefetch_factor=8 if fp.num_workers else None)
    t0, audio_s, done = time.perf_counter(), 0.0, 0
    bar = tqdm(total=len(pending), unit="utt", desc="features", dynamic_ncols=True, mininterval=1.0)
    buf: list[dict] = []
    for item in loader:
        buf.append(item)
        if len(buf) < len(plan.rows[item["shard"]]):
            continue
        ok = [it for it in buf if it["error"] is None]
        failed = [[it["id"], it["audio"], it["error"]] for it in buf if it["error"] is not None]
        mels, codes = encode_shard(ok, model, fp, device) if ok else ([], [])
        st.write_shard(st.shard_path(out, item["shard"]), mels, codes, [it["id"] for it in ok],
                       [round(it["duration"], 6) for it in ok], failed, plan.fingerprints[item["shard"]],
                       fp.mel.n_mels, info["n_codebooks"])
        audio_s += sum(it["duration"] for it in ok)
        done += len(buf)
        bar.update(len(buf))
        elapsed = time.perf_counter() - t0
        bar.set_postfix_str(f"{done / elapsed:.1f} utt/s, {audio_s / elapsed:.1f}x real time")
        buf = []
    bar.close()
    return audio_s, time.perf_counter() - t0
