"""A codec fitted on the corpus itself: residual k-means over log-mel frames, Griffin-Lim back to audio.

It needs no download and still speaks, so the offline demo trains a TTS whose output can be
listened to. DAC with its official weights (`features.codec.kind: dac`) stays the production codec.

    codec = MelVQCodec.fit(wavs, cfg, seed)   # the training split's audio at cfg.sample_rate
    codes = codec.encode(wav)                 # (K, T) int64, T = ceil(len(wav) / codec.hop_length)
    wav, sr = codec.decode(codes)             # float32 at cfg.sample_rate
    codec.save(folder); MelVQCodec.load(folder)

Encoding:

    wav -> |STFT| (n_fft, hop) -> mel (n_mels) -> log(max(., floor))          (T_mel, n_mels)
        -> `stack` consecutive frames side by side                           (T, stack * n_mels)
        -> standardised per dimension (the fit's mean / std)
        -> residual VQ: codebook k quantises what codebooks 0..k-1 left      codes (K, T)

Decoding sums the chosen centroids, undoes the standardisation, smooths the log-mel over time
(`smooth_frames`: the quantisation error of one frame is independent of its neighbours' and speech's
spectrum is not, so a short low-pass removes more error than speech), undoes the log, maps the mel
magnitudes back to linear frequency (pseudo-inverse of the filter bank, clamped at 0) and
runs fast Griffin-Lim (momentum 0.99) from a phase fixed by the codec's seed, so the same
codes always give the same samples.

Fitting is plain k-means in torch (Lloyd's iterations, initial centroids drawn by the seed,
an empty cluster re-seeded from the frame worst served), one codebook after the other on
the residual of the previous ones; at most `fit_frames` frames, drawn by the seed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tristage.errors import UserError

log = logging.getLogger(__name__)

WEIGHTS = "codec.safetensors"
CONFIG = "codec.json"


@dataclasses.dataclass(frozen=True)
class MelVQConfig:
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256  # of the mel frames; a code frame spans `stack` of them
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None  # None = sample_rate / 2
    stack: int = 1
    n_codebooks: int = 8
    codebook_size: int = 256
    log_floor: float = 1e-5
    fit_frames: int = 200_000
    kmeans_iters: int = 20
    griffin_lim_iters: int = 32
    smooth_frames: int = 1  # decoding: a triangular low-pass over this many mel frames (odd); 1 = none

    @property
    def frame_hop(self) -> int:
        """Samples per code frame."""
        return self.hop_length * self.stack

    @property
    def dim(self) -> int:
        return self.n_mels * self.stack


def _mel_basis(cfg: MelVQConfig) -> torch.Tensor:
    import librosa

    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                             fmax=cfg.fmax if cfg.fmax is not None else cfg.sample_rate / 2)
    return torch.from_numpy(fb).float()  # (n_mels, n_fft // 2 + 1)


def log_mel(wav: torch.Tensor, cfg: MelVQConfig, basis: torch.Tensor) -> torch.Tensor:
    """wav (N,) float -> (T_mel, n_mels), T_mel = N // hop + 1 (centred frames)."""
    window = torch.hann_window(cfg.n_fft)
    spec = torch.stft(wav, cfg.n_fft, cfg.hop_length, window=window, center=True, return_complex=True)
    return torch.log(torch.clamp(basis @ spec.abs(), min=cfg.log_floor)).T  # (T_mel, n_mels)


def stack_frames(mel: torch.Tensor, stack: int) -> torch.Tensor:
    """(T_mel, n_mels) -> (ceil(T_mel / stack), stack * n_mels); the last frame repeats as padding."""
    pad = (-mel.shape[0]) % stack
    if pad:
        mel = torch.cat([mel, mel[-1:].expand(pad, -1)])
    return mel.reshape(-1, stack * mel.shape[1])


def smooth_time(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """(T, n) -> (T, n): each frame averaged with its neighbours by a triangular kernel of `frames` taps
    (1 2 1 for 3, 1 2 3 2 1 for 5); the edge frames repeat past the ends."""
    if frames <= 1 or mel.shape[0] < 2:
        return mel
    r = frames // 2
    w = torch.cat([torch.arange(1, r + 2), torch.arange(r, 0, -1)]).to(mel.dtype)
    w = w / w.sum()
    padded = torch.cat([mel[:1].expand(r, -1), mel, mel[-1:].expand(r, -1)])
    return sum(w[i] * padded[i:i + mel.shape[0]] for i in range(frames))


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid for each row of x (N, D) -> (N,) long."""
    c2 = (centroids * centroids).sum(1)  # (V,)
    out = []
    for i in range(0, x.shape[0], chunk):
        xs = x[i:i + chunk]
        out.append((c2[None, :] - 2.0 * xs @ centroids.T).argmin(1))  # |x|^2 is the same for every centroid
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means. x (N, D) float64 -> centroids (k, D)."""
    n = x.shape[0]
    centroids = x[torch.randperm(n, generator=gen)[:k]].clone()
    if centroids.shape[0] < k:  # fewer frames than centroids: repeat them
        centroids = x[torch.randint(n, (k,), generator=gen)].clone()
    for _ in range(iters):
        assign = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # re-seed an empty cluster at the frames farthest from their centroid
            far = (x - centroids[assign]).pow(2).sum(1).argsort(descending=True)[:len(empty)]
            centroids[empty] = x[far[torch.arange(len(empty)) % len(far)]]  # fewer frames than k: reused
    return centroids


def griffin_lim(mag: torch.Tensor, cfg: MelVQConfig, length: int, seed: int) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013). mag (F, T) linear magnitude -> wav (length,)."""
    window = torch.hann_window(cfg.n_fft)
    gen = torch.Generator().manual_seed(seed)
    phase = torch.rand(mag.shape, generator=gen) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(mag), phase)
    momentum = 0.99 / 1.99
    prev = torch.zeros_like(angles)
    for _ in range(cfg.griffin_lim_iters):
        wav = torch.istft(mag * angles, cfg.n_fft, cfg.hop_length, window=window, length=length)
        rebuilt = torch.stft(wav, cfg.n_fft, cfg.hop_length, window=window, return_complex=True)
        angles = rebuilt - momentum * prev
        angles = angles / (angles.abs() + 1e-16)
        prev = rebuilt
    return torch.istft(mag * angles, cfg.n_fft, cfg.hop_length, window=window, length=length)


class MelVQCodec:
    """The fitted codec: standardisation (mean, std) and K codebooks of V centroids."""

    def __init__(self, cfg: MelVQConfig, mean: torch.Tensor, std: torch.Tensor, codebooks: torch.Tensor,
                 seed: int):
        self.cfg, self.seed = cfg, seed
        self.mean, self.std = mean.float(), std.float()  # (D,)
        self.codebooks = codebooks.float()  # (K, V, D)
        self.basis = _mel_basis(cfg)
        self.inverse_basis = torch.linalg.pinv(self.basis)  # (F, n_mels)
        self.sample_rate, self.hop_length = cfg.sample_rate, cfg.frame_hop
        self.n_codebooks, self.codebook_size = cfg.n_codebooks, cfg.codebook_size

    def to(self, device) -> "MelVQCodec":  # the codec runs on the CPU (as DAC's `.to(device).eval()`)
        return self

    def eval(self) -> "MelVQCodec":
        return self

    # fitting ----------------------------------------------------------------------------
    @classmethod
    def fit(cls, wavs: Sequence[np.ndarray], cfg: MelVQConfig, seed: int, progress=None) -> "MelVQCodec":
        """Fit on `wavs` (float, at cfg.sample_rate): the training split's audio."""
        if len(wavs) == 0:
            raise UserError("features.codec: the mel VQ codec has no training audio to be fitted on")
        basis = _mel_basis(cfg)
        frames = torch.cat([stack_frames(log_mel(torch.as_tensor(w, dtype=torch.float32), cfg, basis),
                                         cfg.stack) for w in wavs]).double()  # (N, D)
        if frames.shape[0] < cfg.codebook_size:  # a toy corpus: some centroids repeat a frame
            log.warning("features: %d frames to fit %d centroids per codebook: some codes will be unused "
                        "(features.codec.melvq.codebook_size, or more training audio)",
                        frames.shape[0], cfg.codebook_size)
        gen = torch.Generator().manual_seed(seed)
        if frames.shape[0] > cfg.fit_frames:
            frames = frames[torch.randperm(frames.shape[0], generator=gen)[:cfg.fit_frames]]
        mean, std = frames.mean(0), frames.std(0).clamp(min=1e-3)
        residual = (frames - mean) / std
        books = []
        for k in range(cfg.n_codebooks):
            c = kmeans(residual, cfg.codebook_size, cfg.kmeans_iters, gen)
            residual = residual - c[_nearest(residual, c)]
            books.append(c)
            if progress is not None:
                progress(k + 1, float(residual.pow(2).mean().sqrt()))
        return cls(cfg, mean, std, torch.stack(books), seed)

    # coding ---------------------------------------------------------------------------
    def encode(self, wav: np.ndarray | torch.Tensor) -> torch.Tensor:
        """wav (N,) at the codec rate -> codes (K, T) long, T = ceil(N / hop_length) (at least 1)."""
        wav = torch.as_tensor(wav, dtype=torch.float32)
        x = stack_frames(log_mel(wav, self.cfg, self.basis), self.cfg.stack)
        n = max(1, -(-wav.shape[0] // self.hop_length))
        residual = ((x[:n] - self.mean) / self.std).double()
        codes = []
        for c in self.codebooks.double():
            idx = _nearest(residual, c)
            residual = residual - c[idx]
            codes.append(idx)
        return torch.stack(codes)  # (K, T)

    def decode_mel(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (K, T) -> log-mel (T * stack, n_mels)."""
        codes = torch.as_tensor(codes).long().clamp(0, self.codebook_size - 1)
        x = sum(self.codebooks[k][codes[k]] for k in range(codes.shape[0]))  # (T, D)
        x = x * self.std + self.mean
        return x.reshape(-1, self.cfg.n_mels)

    def decode(self, codes: torch.Tensor) -> tuple[np.ndarray, int]:
        """codes (K, T) -> (wav float32 (T * hop_length,), sample_rate)."""
        codes = torch.as_tensor(codes)
        if codes.shape[-1] == 0:
            return np.zeros(0, np.float32), self.sample_rate
        mel = smooth_time(self.decode_mel(codes), self.cfg.smooth_frames).exp().T  # (n_mels, T_mel)
        mag = (self.inverse_basis @ mel).clamp(min=0)  # (F, T_mel)
        mag = torch.cat([mag, mag[:, -1:]], dim=1)  # a centred STFT of T_mel x hop samples: T_mel + 1 frames
        length = codes.shape[-1] * self.hop_length
        wav = griffin_lim(mag, self.cfg, length, self.seed)
        peak = float(wav.abs().max())
        if peak > 0.99:  # Griffin-Lim can overshoot; keep the clip inside [-1, 1]
            wav = wav * (0.99 / peak)
        return wav.numpy().astype(np.float32), self.sample_rate

    # files ------------------------------------------------------------------------------
    def state(self) -> dict:
        return dict(kind="melvq", config=dataclasses.asdict(self.cfg), seed=self.seed)

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        """codec.safetensors (mean, std, codebooks) + codec.json (+ `extra` facts); -> the weights' path."""
        from safetensors.torch import save_file

        from tristage.fsio import atomic_path, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = json.dumps(self.state(), sort_keys=True)
        with atomic_path(folder / WEIGHTS, suffix=".safetensors") as tmp:
            save_file({"mean": self.mean.contiguous(), "std": self.std.contiguous(),
                       "codebooks": self.codebooks.contiguous()}, str(tmp), metadata={"codec": meta})
        write_json(folder / CONFIG, {**self.state(), **(extra or {})})
        return folder / WEIGHTS

    @classmethod
    def load(cls, folder: str | Path) -> "MelVQCodec":
        from safetensors.torch import load_file

        from tristage.fsio import read_json

        folder = Path(folder)
        state = read_json(folder / CONFIG)
        t = load_file(str(folder / WEIGHTS))
        return cls(MelVQConfig(**state["config"]), t["mean"], t["std"], t["codebooks"], int(state["seed"]))
