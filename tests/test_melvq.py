"""The mel VQ codec (features/melvq.py): fitting, coding, Griffin-Lim, files, and the features stage fitting
it on the training split only."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tristage.features.melvq import (
    MelVQCodec,
    MelVQConfig,
    griffin_lim,
    kmeans,
    log_mel,
    smooth_time,
    stack_frames,
)

SR = 16000
CFG = MelVQConfig(sample_rate=SR, n_fft=512, hop_length=128, n_mels=40, stack=2, n_codebooks=4,
                  codebook_size=16, fit_frames=5000, kmeans_iters=10, griffin_lim_iters=16)


def _voice(f0: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A buzzy vowel-like signal: harmonics of a gliding f0 under two formant peaks, plus a little noise."""
    t = np.arange(int(seconds * SR)) / SR
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 1.5 * t))
    phase = 2 * np.pi * np.cumsum(f) / SR
    formants = lambda f: np.exp(-((f - 700) / 300) ** 2) + 0.5 * np.exp(-((f - 1800) / 400) ** 2)
    x = sum(np.sin(k * phase) * formants(k * f0) for k in range(1, 30))
    x = x + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def wavs():
    return [_voice(f0, 1.0 + 0.1 * i, seed=i) for i, f0 in enumerate((100, 130, 170, 220, 260, 120))]


@pytest.fixture(scope="module")
def codec(wavs):
    return MelVQCodec.fit(wavs, CFG, seed=3)


def test_frames_stack_and_pad():
    mel = torch.arange(10.0).reshape(5, 2)  # 5 frames of 2 mels
    out = stack_frames(mel, 2)
    assert out.shape == (3, 4) and out[-1].tolist() == [8.0, 9.0, 8.0, 9.0]  # the last frame repeats


def test_kmeans_finds_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=gen, dtype=torch.float64) for c in centres])
    found = kmeans(x, 3, 20, torch.Generator().manual_seed(1))
    dist = torch.cdist(centres, found).min(dim=1).values
    assert float(dist.max()) < 0.1


def test_codes_shape_range_and_residual_codebooks_help(codec, wavs):
    wav = wavs[1]
    codes = codec.encode(wav)
    assert codes.shape == (4, -(-len(wav) // codec.hop_length)) and codec.hop_length == 256
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    mel = log_mel(torch.from_numpy(wav), CFG, codec.basis)
    target = stack_frames(mel, 2).reshape(-1, 40)[: codes.shape[1] * 2]
    errors = [float((codec.decode_mel(codes[:k]) - target).pow(2).mean()) for k in range(1, 5)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]


def test_decode_is_deterministic_audio_of_the_right_length(codec, wavs):
    codes = codec.encode(wavs[0])
    a, sr = codec.decode(codes)
    b, _ = codec.decode(codes)
    assert sr == SR and a.dtype == np.float32 and len(a) == codes.shape[1] * codec.hop_length
    assert np.array_equal(a, b) and np.abs(a).max() <= 0.99 and np.abs(a).max() > 0.01
    assert codec.decode(codes[:, :0])[0].shape == (0,)


def test_smoothing_keeps_slow_change_and_removes_frame_noise():
    t = torch.arange(200.0)[:, None]
    slow = torch.sin(2 * torch.pi * t / 40) * torch.ones(1, 3)  # (200, 3): changes over tens of frames
    noise = 0.3 * torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(smooth_time(slow + noise, 1), slow + noise)
    out = smooth_time(slow + noise, 3)
    assert out.shape == (200, 3)
    # 1 2 1 keeps 3/8 of white noise's power
    assert float((out - slow).pow(2).mean()) < 0.5 * float(noise.pow(2).mean())
    assert torch.allclose(smooth_time(torch.full((5, 2), 4.0), 5), torch.full((5, 2), 4.0))  # edges repeat
    assert torch.equal(smooth_time(slow[:1], 3), slow[:1])


def test_decoding_smooths_the_mel_and_old_codec_files_do_not(tmp_path, codec, wavs):
    codes = codec.encode(wavs[2])
    cfg = dataclasses.replace(CFG, smooth_frames=3)
    smoothed = MelVQCodec(cfg, codec.mean, codec.std, codec.codebooks, 3)
    a, b = codec.decode(codes)[0], smoothed.decode(codes)[0]
    assert a.shape == b.shape and not np.array_equal(a, b)
    smoothed.save(tmp_path)
    state = json.loads((tmp_path / "codec.json").read_text())
    assert state["config"]["smooth_frames"] == 3
    del state["config"]["smooth_frames"]  # a codec written before the key: decoded as it was, unsmoothed
    (tmp_path / "codec.json").write_text(json.dumps(state))
    assert MelVQCodec.load(tmp_path).cfg.smooth_frames == 1


def test_griffin_lim_recovers_a_spectrogram():
    wav = torch.from_numpy(_voice(150))
    window = torch.hann_window(CFG.n_fft)
    mag = torch.stft(wav, CFG.n_fft, CFG.hop_length, window=window, return_complex=True).abs()
    out = griffin_lim(mag, CFG, len(wav), seed=0)
    again = torch.stft(out, CFG.n_fft, CFG.hop_length, window=window, return_complex=True).abs()
    convergence = float(torch.linalg.norm(again - mag) / torch.linalg.norm(mag))
    assert convergence < 0.25  # spectral convergence after 16 iterations from a random phase


def test_fit_is_reproducible_and_save_load_keeps_the_bytes(tmp_path, codec, wavs):
    again = MelVQCodec.fit(wavs, CFG, seed=3)
    assert torch.equal(again.codebooks, codec.codebooks) and torch.equal(again.mean, codec.mean)
    other = MelVQCodec.fit(wavs, CFG, seed=4)
    assert not torch.equal(other.codebooks, codec.codebooks)
    codec.save(tmp_path, extra=dict(fitted_on="x"))
    loaded = MelVQCodec.load(tmp_path)
    assert loaded.cfg == CFG and torch.equal(loaded.codebooks, codec.codebooks)
    assert torch.equal(loaded.encode(wavs[2]), codec.encode(wavs[2]))
    assert json.loads((tmp_path / "codec.json").read_text())["fitted_on"] == "x"


def test_little_audio_fits_with_a_warning_and_none_is_a_clear_error(caplog):
    """A toy corpus with fewer frames than centroids still gets a codec (some codes unused), with a
    warning naming the param; no audio at all is a one-line user error."""
    from tristage.errors import UserError

    clip = _voice(120, 0.05)
    with caplog.at_level("WARNING"):
        codec = MelVQCodec.fit([clip], CFG, seed=0)
    assert "features.codec.melvq.codebook_size" in caplog.text
    codes = codec.encode(clip)
    assert codes.shape[0] == CFG.n_codebooks and int(codes.max()) < CFG.codebook_size
    wav, sr = codec.decode(codes)
    assert sr == CFG.sample_rate and np.isfinite(wav).all()
    with pytest.raises(UserError, match="no training audio"):
        MelVQCodec.fit([], CFG, seed=0)


@pytest.mark.slow
def test_features_stage_fits_on_the_training_split_only(tmp_path):
    from tristage.config import Params
    from tristage.data.split import TRAIN, split_ids
    from tristage.features.codec import load_codec
    from tristage.features.config import CodecParams, FeaturesParams, MelVQParams
    from tristage.features.extract import run_features
    from tristage.testing import write_prepared

    manifest = write_prepared(tmp_path / "corpus", n_speakers=6, utts_per_speaker=5, sample_rate=22050)
    melvq = MelVQParams(sample_rate=SR, n_fft=512, hop_length=128, n_mels=40, stack=2, n_codebooks=2,
                        codebook_size=16, kmeans_iters=5)
    fp = FeaturesParams(manifest=manifest, out_dir=tmp_path / "features", metrics=tmp_path / "m.json",
                        num_workers=0, codec=CodecParams(kind="melvq", melvq=melvq))
    split = Params().stage1
    m = run_features(fp, split=split)
    saved = json.loads((tmp_path / "features" / "codec.json").read_text())
    import pandas as pd

    man = pd.read_parquet(manifest)
    which = split_ids(man["id"], man["speaker"], split.val_fraction, split.heldout_speakers, split.seed)
    assert saved["n_fit_utterances"] == sum(v == TRAIN for v in which.values()) < len(man)
    assert m["codec"].startswith("mel VQ 2x16") and m["frames_per_second"] == SR / 256
    meta = json.loads((tmp_path / "features" / "meta.json").read_text())
    assert meta["codec"]["speech"] is True and meta["codec"]["kind"] == "melvq"
    codec = load_codec(tmp_path / "features")
    assert isinstance(codec, MelVQCodec)
    before = (tmp_path / "features" / "codec.safetensors").read_bytes()
    assert run_features(fp, split=split)["shards_written"] == 0  # same split: the codec is reused
    assert (tmp_path / "features" / "codec.safetensors").read_bytes() == before
    other = split.model_copy(update=dict(val_fraction=0.3))
    assert run_features(fp, split=other)["shards_written"] == m["n_shards"]  # another split: refitted


def test_weights_with_melvq_is_a_params_error():
    from pydantic import ValidationError

    from tristage.features.config import CodecParams

    with pytest.raises(ValidationError, match="set features.codec.kind: dac"):
        CodecParams(kind="melvq", weights=Path("weights.pth"))
