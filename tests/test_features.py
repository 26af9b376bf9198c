"""features stage: log-mel parity, DAC codes, sharded store, resume after kill -9, failures, CLI."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import project_env

from tristage.features.config import CodecParams, FeaturesParams, MelParams

REPO = Path(__file__).resolve().parents[1]


def params(tmp: Path, manifest: Path, **kw) -> FeaturesParams:
    """The stage's params on the seeded random-init DAC (the mel VQ codec: tests/test_melvq.py)."""
    kw.setdefault("num_workers", 0)
    kw.setdefault("codec", CodecParams(kind="dac"))
    return FeaturesParams(manifest=manifest, out_dir=tmp / "features", metrics=tmp / "metrics.json", **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from tristage.testing import write_prepared

    return write_prepared(
        tmp_path_factory.mktemp("corpus"), n_speakers=2, utts_per_speaker=4, sample_rate=22050
    )


# -- log-mel ------------------------------------------------------------------------------

def test_log_mel_matches_librosa_and_batching_does_not_change_frames():
    """Tolerance: |torch - librosa| <= 1e-3 in log units (float32 STFT vs librosa's float32/complex64)."""
    import librosa

    from tristage.features.mel import log_mel, n_mel_frames

    mp = MelParams()
    rng = np.random.default_rng(0)
    clips = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 23456, 7000)]
    x = torch.zeros(len(clips), max(map(len, clips)))
    for i, c in enumerate(clips):
        x[i, : len(c)] = torch.from_numpy(c)
    batched = log_mel(x, mp)  # (B, T, n_mels)
    assert batched.shape == (3, n_mel_frames(x.shape[1], mp.hop_length), mp.n_mels)
    for i, c in enumerate(clips):
        ref = librosa.feature.melspectrogram(y=c, sr=mp.sample_rate, n_fft=mp.n_fft, hop_length=mp.hop_length,
                                             win_length=mp.win_length, n_mels=mp.n_mels, fmin=mp.fmin,
                                             fmax=mp.fmax, power=mp.power, center=True, pad_mode="constant")
        ref = np.log(np.maximum(ref, mp.log_floor)).T  # (T, n_mels)
        T = n_mel_frames(len(c), mp.hop_length)
        assert ref.shape == (T, mp.n_mels)
        alone = log_mel(torch.from_numpy(c), mp)[0]
        np.testing.assert_allclose(alone.numpy(), ref, atol=1e-3)
        np.testing.assert_allclose(batched[i, :T].numpy(), alone.numpy(), atol=1e-5)


def test_batches_are_length_bucketed_and_bounded():
    from tristage.features.extract import batches

    lengths = [5, 100, 7, 90, 6, 95, 50]
    bs = batches(lengths, max_samples=200)
    assert sorted(i for b in bs for i in b) == list(range(len(lengths)))
    for b in bs:
        assert len(b) * max(lengths[i] for i in b) <= 200 or len(b) == 1
    assert [sorted(lengths[i] for i in b) for b in bs][0] == [5, 6, 7, 50]


def test_import_dac_in_a_fresh_process():
    r = subprocess.run([sys.executable, "-c", "import dac; m = dac.DAC(encoder_dim=8, decoder_dim=16, "
                        "n_codebooks=2, codebook_size=16); print(m.hop_length)"],
                       capture_output=True, text=True, env=project_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "512"


# -- the stage, in process -----------------------------------------------------------------

@pytest.mark.slow
def test_store_frames_codec_roundtrip_and_rerun_skips(tmp_path, corpus):
    from safetensors.torch import load_file

    from tristage.features.codec import decode_codes, load_codec, random_init
    from tristage.features.extract import run_features
    from tristage.features.store import FeatureStore

    fp = params(tmp_path, corpus, shard_size=3)
    m = run_features(fp)
    assert (m["n_utterances"], m["n_failed"], m["n_shards"], m["shards_written"]) == (8, 0, 3, 3)
    assert m["codec"].startswith("random-init") and m["device"] == "cpu"
    assert json.loads((tmp_path / "metrics.json").read_text())["n_utterances"] == 8
    store = FeatureStore(fp.out_dir)
    assert store.ids == sorted(store.ids) and len(store) == 8
    meta = store.meta
    assert (meta["n_mels"], meta["n_codebooks"], meta["codebook_size"]) == (80, 4, 256)
    assert meta["frames_per_second"] == 16000 / 512 and meta["codec"]["pretrained"] is False
    assert set(store.index.columns) == {"id", "shard", "row", "n_frames", "n_mel_frames", "duration"}
    for row in store.index.itertuples():
        mel, codes = store.load(row.id)
        assert mel.dtype == torch.float16 and mel.shape == (row.n_mel_frames, 80)
        assert codes.dtype == torch.int16 and codes.shape == (4, row.n_frames)
        assert row.n_frames == math.ceil(row.duration * meta["frames_per_second"] - 1e-6)
        assert abs(row.n_mel_frames - row.duration * meta["mel_frames_per_second"]) <= 1.5
        assert 0 <= int(codes.min()) and int(codes.max()) < 256
    # load_codec gives exactly the saved weights, which are the seeded init
    model = load_codec(fp.out_dir)
    saved = load_file(str(Path(fp.out_dir) / "codec.safetensors"))
    fresh = random_init(CodecParams().dac.dac_kwargs(), CodecParams().seed).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]) and torch.equal(v, fresh[k])
    wav, sr = decode_codes(model, store.load(store.ids[0])[1])
    assert sr == 16000 and wav.dtype == np.float32 and len(wav) == store.index.n_frames[0] * 512
    # rerun: every shard skipped, same index; a mel change recomputes all shards
    before = (Path(fp.out_dir) / "index.parquet").read_bytes()
    m2 = run_features(fp)
    assert (m2["shards_skipped"], m2["shards_written"]) == (3, 0)
    assert (Path(fp.out_dir) / "index.parquet").read_bytes() == before
    # a torn shard file (as if written without the temp + rename) is detected and recomputed, same bytes
    shard1 = Path(fp.out_dir) / "shards" / "shard-00001.safetensors"
    good = shard1.read_bytes()
    shard1.write_bytes(good[: len(good) // 2])
    m2 = run_features(fp)
    assert (m2["shards_skipped"], m2["shards_written"]) == (2, 1) and shard1.read_bytes() == good
    m3 = run_features(params(tmp_path, corpus, shard_size=3, mel=MelParams(n_mels=40)))
    assert m3["shards_written"] == 3 and FeatureStore(fp.out_dir).load(store.ids[0])[0].shape[1] == 40


@pytest.mark.slow
def test_official_weights_file_is_used_and_recorded(tmp_path, corpus):
    from tristage.features.codec import load_codec, random_init
    from tristage.features.extract import run_features
    from tristage.features.store import FeatureStore

    kwargs = dict(encoder_dim=8, encoder_rates=[2, 4, 5, 8], decoder_dim=32, decoder_rates=[8, 5, 4, 2],
                  n_codebooks=3, codebook_size=64, sample_rate=24000)
    official = random_init(kwargs, seed=7)
    weights = tmp_path / "weights.pth"
    official.save(str(weights), package=False)  # DAC's own format, as the official weights files are
    m = run_features(params(tmp_path, corpus, codec=CodecParams(kind="dac", weights=weights)))
    assert m["codec"] == str(weights.resolve()) and m["codec_pretrained"] is True
    assert (m["frames_per_second"], m["n_codebooks"], m["codebook_size"]) == (75.0, 3, 64)
    store = FeatureStore(tmp_path / "features")
    assert not (tmp_path / "features" / "codec.safetensors").exists()
    loaded = load_codec(store.meta)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, official.state_dict()[k])
    for row in store.index.itertuples():
        assert row.n_frames == math.ceil(row.duration * 75 - 1e-6)


def test_bad_weights_file_is_a_user_error(tmp_path, corpus):
    from tristage.errors import UserError
    from tristage.features.extract import run_features

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pth"):
        run_features(params(tmp_path, corpus, codec=CodecParams(kind="dac", weights=bad)))


# -- the stage's CLI, in a subprocess --------------------------------------------------------

def write_params(folder: Path, manifest: Path, **kw) -> Path:
    p = folder / "params.yaml"
    sec = {
        "manifest": os.path.relpath(manifest, folder),
        "out_dir": "features",
        "metrics": "metrics/features.json",
        "num_workers": 1,
        **kw,
    }
    p.write_text(yaml.safe_dump({"features": sec}))
    return p


@pytest.mark.slow
@pytest.mark.parametrize("sr", [8000, 22050])
def test_cli_from_another_cwd_other_rates_and_a_truncated_wav(tmp_path, sr):
    from tristage.features.store import FeatureStore
    from tristage.testing import write_prepared

    manifest = write_prepared(tmp_path / "corpus", n_speakers=2, utts_per_speaker=3, sample_rate=sr)
    wav = tmp_path / "corpus" / "wavs" / "spk01_001.wav"
    wav.write_bytes(wav.read_bytes()[: len(wav.read_bytes()) // 3])  # truncated data
    (tmp_path / "corpus" / "wavs" / "spk00_002.wav").write_bytes(b"RIFF")  # broken header
    (tmp_path / "cfg").mkdir()
    p = write_params(tmp_path / "cfg", manifest, shard_size=4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-m", "steps.features", "--params", str(p)], cwd=elsewhere,
                       env=project_env(PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "cfg" / "features"
    metrics = json.loads((tmp_path / "cfg" / "metrics" / "features.json").read_text())
    assert (metrics["n_utterances"], metrics["n_failed"]) == (4, 2)
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert sorted(f["id"] for f in failed) == ["spk00_002", "spk01_001"]
    assert all(f["reason"] for f in failed)
    assert any("truncated" in f["reason"] for f in failed)
    store = FeatureStore(out)
    fps = store.meta["frames_per_second"]
    for row in store.index.itertuples():
        assert abs(row.n_frames - math.ceil(row.duration * fps)) <= 1
        assert store.load(row.id)[1].shape[1] == row.n_frames
    assert not list(elsewhere.iterdir())  # nothing written in the working folder


@pytest.mark.slow
def test_kill_9_then_rerun_gives_identical_bytes(tmp_path):
    from tristage.testing import write_prepared

    manifest = write_prepared(tmp_path / "corpus", n_speakers=2, utts_per_speaker=8, sample_rate=22050)
    env = project_env(PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")  # this checkout's code, not an install

    def run(folder: Path, kill_after_first_shard: bool = False) -> None:
        folder.mkdir()
        p = write_params(folder, manifest, shard_size=2, num_workers=0)
        cmd = [sys.executable, "-m", "steps.features", "--params", str(p)]
        if not kill_after_first_shard:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
            return
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = folder / "features" / "shards" / "shard-00000.safetensors"
        deadline = time.time() + 120
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = sorted((folder / "features" / "shards").glob("shard-*.safetensors"))
        assert 1 <= len(done) < 8, "the kill must land mid-run"
        assert not (folder / "features" / "index.parquet").exists()

    run(tmp_path / "a")
    run(tmp_path / "b", kill_after_first_shard=True)
    p = tmp_path / "b" / "params.yaml"
    r = subprocess.run([sys.executable, "-m", "steps.features", "--params", str(p)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "b" / "timings" / "features.json").read_text())  # run facts, not metrics
    assert m["shards_skipped"] >= 1 and m["shards_skipped"] + m["shards_written"] == 8
    files = lambda d: sorted(str(f.relative_to(d)) for f in d.rglob("*") if f.is_file())
    a, b = tmp_path / "a" / "features", tmp_path / "b" / "features"
    assert files(a) == files(b)
    for rel in files(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
