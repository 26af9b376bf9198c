"""The whole model: decoder + caption PEFT + speaker/emotion conditioners + GRL speaker classifier.

Top-level module names are part of the contract (they show in the safetensors keys what a
stage froze): `decoder`, `caption_peft`, `speaker_encoder`, `speaker_perceiver`,
`emotion_encoder`, `emotion_perceiver`, `emovec_layer`, `emo_layer`, `speaker_classifier`.

    model, cfg = load_model("models/stage3")
    codes = model.generate("Hello there.", caption_ids, spk_mel, emo_mel, n_frames=200)  # (K, 200)
    emo = model.emotion_vector(mel, mask)  # (B, d_model), for probes
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tristage.captions.peft import CaptionPEFT
from tristage.captions.vectors import CaptionVectorTable
from tristage.errors import UserError
from tristage.model.classifier import SpeakerClassifier
from tristage.model.config import TTSConfig
from tristage.model.decoder import Decoder, DecoderConfig, code_loss, delay_codes, undelay_codes
from tristage.model.grl import GradientReversal
from tristage.model.perceiver import ConditioningEncoder, EncoderConfig, PerceiverConfig, PerceiverResampler

# the config's default caption module / table (TTSConfig.caption_module / caption_table), imported statically
DEFAULT_CLASSES = {"tristage.captions.peft:CaptionPEFT": CaptionPEFT,
                   "tristage.captions.vectors:CaptionVectorTable": CaptionVectorTable}
MODULE_NAMES = ("decoder", "caption_peft", "speaker_encoder", "speaker_perceiver", "emotion_encoder",
                "emotion_perceiver", "emovec_layer", "emo_layer", "speaker_classifier")


def encode_text(text: str, max_len: int) -> list[int]:
    """Transcript -> UTF-8 bytes (the decoder's text tokens), truncated to max_len."""
    return list(text.encode("utf-8"))[:max_len] or [32]


class TTS(nn.Module):
    def __init__(self, cfg: TTSConfig, caption_peft: nn.Module):
        super().__init__()
        self.cfg = cfg
        C, D = cfg.d_model, cfg.cond_dim
        self.decoder = Decoder(DecoderConfig(
            n_codebooks=cfg.n_codebooks, codebook_size=cfg.codebook_size, d_model=C, n_layer=cfg.n_layer,
            n_head=cfg.n_head, caption_dim=cfg.caption_dim, max_text_len=cfg.max_text_len,
            max_frames=cfg.max_frames, dropout=cfg.dropout))
        self.caption_peft = caption_peft
        enc = EncoderConfig(n_mels=cfg.n_mels, d_model=D, n_layer=cfg.cond_layers, n_head=cfg.cond_heads,
                            dropout=cfg.dropout)
        self.speaker_encoder = ConditioningEncoder(enc)
        self.speaker_perceiver = PerceiverResampler(PerceiverConfig(
            d_model=D, n_latents=cfg.speaker_latents, n_layer=cfg.perceiver_layers, n_head=cfg.cond_heads,
            d_out=C, dropout=cfg.dropout))
        self.emotion_encoder = ConditioningEncoder(enc)
        self.emotion_perceiver = PerceiverResampler(PerceiverConfig(
            d_model=D, n_latents=1, n_layer=cfg.perceiver_layers, n_head=cfg.cond_heads, d_out=D,
            dropout=cfg.dropout))
        self.emovec_layer = nn.Linear(D, cfg.emo_dim)
        self.emo_layer = nn.Linear(cfg.emo_dim, C)
        self.speaker_classifier = SpeakerClassifier(C, cfg.classifier_hidden, cfg.n_speakers)
        self.grl = GradientReversal()  # no parameters

    # conditioning -------------------------------------------------------------------
    def speaker_prefix(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # mel (B, T, n_mels), mask (B, T) -> (B, speaker_latents, d_model)
        h, m = self.speaker_encoder(mel, mask)
        return self.speaker_perceiver(h, m)

    def emotion_vector(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The ONE emotion vector, computed in the forward pass (never cached).
        mel (B, T, n_mels), mask (B, T) -> (B, d_model)."""
        if mask is None:
            mask = torch.ones(mel.shape[:2], dtype=torch.bool, device=mel.device)
        h, m = self.emotion_encoder(mel, mask)
        raw = self.emotion_perceiver(h, m).squeeze(1)  # (B, cond_dim)
        return self.emo_layer(self.emovec_layer(raw))  # (B, d_model)

    # training ------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], speaker_head: bool = False,
                grl_lambda: float = 0.0) -> dict[str, torch.Tensor]:
        """Losses of one batch. With `speaker_head`, the speaker classifier reads the emotion vector
        through the gradient reversal layer, whose strength is `grl_lambda` (0: a plain forward,
        no gradient reaches the emotion vector from the classifier)."""
        spk = self.speaker_prefix(batch["spk_mel"], batch["spk_mask"])  # (B, Ns, C)
        emo = self.emotion_vector(batch["emo_mel"], batch["emo_mask"])  # (B, C)
        prefix = torch.cat([spk, emo[:, None]], dim=1)  # (B, Ns + 1, C)
        cap = self.caption_peft(batch["caption_ids"], batch["caption_mask"])
        codes, lengths = batch["codes"], batch["code_lengths"]  # (B, K, T), (B,)
        target = delay_codes(codes, lengths, self.cfg.pad_id)  # (B, K, S)
        B, K, S = target.shape
        bos = target.new_full((B, K, 1), self.cfg.bos_id)
        audio_in = torch.cat([bos, target[:, :, :-1]], dim=2)  # (B, K, S)
        audio_mask = torch.arange(S, device=codes.device)[None] < (lengths + K - 1)[:, None]  # (B, S)
        logits = self.decoder(prefix, batch["text"], batch["text_mask"], audio_in, audio_mask,
                              cap.states, cap.mask)  # (B, K, S, V)
        mel_loss, correct, count = code_loss(logits, target, self.cfg.pad_id)
        out = dict(mel_loss=mel_loss, mel_correct=correct, mel_count=count,
                   kl=_scalar(cap.kl, mel_loss), ortho=_scalar(cap.ortho, mel_loss), emo_vec=emo)
        if speaker_head:
            logits_s = self.speaker_classifier(self.grl(emo, grl_lambda))  # (B, n_speakers)
            labels = batch["speaker"]
            known = labels != -100
            n = known.sum()
            loss_s = F.cross_entropy(logits_s.float(), labels, ignore_index=-100) if n > 0 else logits_s.sum() * 0.0
            out.update(speaker_loss=loss_s, speaker_correct=((logits_s.argmax(-1) == labels) & known).sum(),
                       speaker_count=n)
        return out

    # inference -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, text: str, caption_ids, spk_mel: torch.Tensor, emo_mel: torch.Tensor | None = None,
                 n_frames: int = 100, temperature: float = 1.0, top_k: int | None = None, greedy: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Autoregressive codes with the delay pattern (no KV cache). spk_mel/emo_mel (T, n_mels);
        caption_ids a list or (Lc,) tensor of caption token ids -> codes (K, n_frames) long."""
        self.eval()
        cfg, dev = self.cfg, next(self.parameters()).device
        K = cfg.n_codebooks
        n_frames = min(int(n_frames), cfg.max_frames)
        emo_mel = spk_mel if emo_mel is None else emo_mel
        text_ids = torch.tensor([encode_text(text, cfg.max_text_len)], device=dev)  # (1, Lt)
        cap_ids = torch.as_tensor(caption_ids, device=dev).long().reshape(1, -1)
        if cap_ids.numel() == 0:
            cap_ids = torch.zeros(1, 1, dtype=torch.long, device=dev)
        cap = self.caption_peft(cap_ids, torch.ones_like(cap_ids, dtype=torch.bool))
        spk_mel = spk_mel.to(dev).float()[None]
        emo_mel = emo_mel.to(dev).float()[None]
        spk = self.speaker_prefix(spk_mel, torch.ones(spk_mel.shape[:2], dtype=torch.bool, device=dev))
        emo = self.emotion_vector(emo_mel)
        prefix = torch.cat([spk, emo[:, None]], dim=1)
        S = n_frames + K - 1
        seq = torch.full((1, K, 1), cfg.bos_id, dtype=torch.long, device=dev)  # (1, K, s+1)
        for s in range(S):
            logits = self.decoder(prefix, text_ids, torch.ones_like(text_ids, dtype=torch.bool), seq,
                                  torch.ones(1, seq.shape[2], dtype=torch.bool, device=dev),
                                  cap.states, cap.mask)[:, :, -1]  # (1, K, V)
            if greedy or temperature <= 0:
                nxt = logits.argmax(-1)  # (1, K)
            else:
                logits = logits / temperature
                if top_k:
                    v, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
                    logits = logits.masked_fill(logits < v[..., -1:], float("-inf"))
                probs = F.softmax(logits.float(), dim=-1)[0]  # (K, V)
                nxt = torch.multinomial(probs, 1, generator=generator).T  # (1, K)
            k = torch.arange(K, device=dev)
            in_range = (s - k >= 0) & (s - k < n_frames)
            nxt = torch.where(in_range[None], nxt, torch.full_like(nxt, cfg.pad_id))
            seq = torch.cat([seq, nxt[:, :, None]], dim=2)
        return undelay_codes(seq[:, :, 1:])[0]  # (K, n_frames)


def _scalar(x: Any, like: torch.Tensor) -> torch.Tensor:
    if x is None:
        return like.new_zeros(())
    return x if torch.is_tensor(x) else like.new_tensor(float(x))


def _import(path: str):
    if path in DEFAULT_CLASSES:  # imported statically: part of the import closure (tristage/closure.py)
        return DEFAULT_CLASSES[path]
    mod, _, name = path.partition(":")
    return getattr(importlib.import_module(mod), name)


def build_caption_module(cfg: TTSConfig, table: Any) -> nn.Module:
    """The caption module named in the config, built from the caption vector table."""
    from tristage.captions.config import PeftParams

    return _import(cfg.caption_module)(table, PeftParams(**cfg.peft))


def build_model(cfg: TTSConfig, table: Any) -> TTS:
    return TTS(cfg, build_caption_module(cfg, table))


def load_caption_table(cfg: TTSConfig, caption_vectors: str | Path | None = None):
    folder = caption_vectors or cfg.caption_vectors
    if folder is None or not Path(folder).exists():
        raise UserError(f"{folder}: caption vector table not found; run `dvc repro caption_vectors` "
                        "or pass caption_vectors=")
    return _import(cfg.caption_table).load(folder)


def load_model(stage_dir: str | Path, device: str | torch.device = "cpu", table: Any = None,
               caption_vectors: str | Path | None = None) -> tuple[TTS, TTSConfig]:
    """`models/<stage>/` -> (model in eval mode, its TTSConfig)."""
    from safetensors.torch import load_file

    stage_dir = Path(stage_dir)
    weights, cfg_path = stage_dir / "model.safetensors", stage_dir / "config.json"
    for p in (weights, cfg_path):
        if not p.is_file():
            raise UserError(f"{p} not found: run the stage that writes {stage_dir} first "
                            f"(dvc repro {stage_dir.name})")
    cfg = TTSConfig.from_dict(json.loads(cfg_path.read_text()))
    if table is None:
        table = load_caption_table(cfg, caption_vectors)
    model = build_model(cfg, table)
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise UserError(f"{weights}: does not match {cfg_path} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval(), cfg
