"""The whole model: decoder + caption PEFT + speaker/emotion conditioners + GRL speaker classifier.

Top-level module names are part of the contract (they show in the safetensors keys what a
stage froze): `decoder`, `caption_peft`, `speaker_encoder`, `speaker_perceiver`,
`emotion_encoder`, `emotion_perceiver`, `emovec_layer`, `emo_layer`, `speaker_classifier`.

    model, cfg = load_model("models/stage3")          # tristage.model.folder
    codes = model.generate("Hello there.", caption_ids, spk_mel, emo_mel, n_frames=200)  # (K, T <= 200)
    batch = model.generate_batch(texts, caption_ids, spk_mels, emo_mels, max_frames=[200, 120])  # [(K, T_i)]
    emo = model.emotion_vector(mel, mask)  # (B, d_model), for probes
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tristage.captions.peft import CaptionPEFT
from tristage.captions.vectors import CaptionVectorTable
from tristage.model.classifier import SpeakerClassifier
from tristage.model.config import TTSConfig
from tristage.model.decoder import (
    Decoder,
    DecoderConfig,
    code_loss,
    corrupt_codes,
    delay_codes,
    guided_attention_loss,
    stop_loss,
    undelay_codes,
)
from tristage.model.grl import GradientReversal
from tristage.model.perceiver import ConditioningEncoder, EncoderConfig, PerceiverConfig, PerceiverResampler
from tristage.model.text import encode_text

# the config's default caption module / table (TTSConfig.caption_module / caption_table), imported statically
DEFAULT_CLASSES = {"tristage.captions.peft:CaptionPEFT": CaptionPEFT,
                   "tristage.captions.vectors:CaptionVectorTable": CaptionVectorTable}
MODULE_NAMES = ("decoder", "caption_peft", "speaker_encoder", "speaker_perceiver", "emotion_encoder",
                "emotion_perceiver", "emovec_layer", "emo_layer", "speaker_classifier")


class TTS(nn.Module):
    def __init__(self, cfg: TTSConfig, caption_peft: nn.Module):
        super().__init__()
        self.cfg = cfg
        C, D = cfg.d_model, cfg.cond_dim
        self.decoder = Decoder(DecoderConfig(
            n_codebooks=cfg.n_codebooks, codebook_size=cfg.codebook_size, d_model=C, n_layer=cfg.n_layer,
            n_head=cfg.n_head, caption_dim=cfg.caption_dim, max_text_len=cfg.max_text_len,
            max_frames=cfg.max_frames, dropout=cfg.dropout, text_vocab=cfg.text_vocab,
            positions=cfg.positions, text_rate=cfg.text_rate))
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
        self.speaker_classifier = SpeakerClassifier(C, cfg.classifier_hidden, cfg.n_speakers,
                                                    cfg.classifier_standardize)
        self.grl = GradientReversal()  # no parameters

    # conditioning -------------------------------------------------------------------
    def text_ids(self, text: str) -> list[int]:
        """The decoder's text tokens for a transcript (this model's front-end); TextTooLong past
        max_text_len (synthesis splits long texts first: synthesis/api.py)."""
        cfg = self.cfg
        return encode_text(text, cfg.max_text_len, cfg.text_frontend, cfg.phoneme_voice)

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
                grl_lambda: float = 0.0, align: tuple[int, float] | None = None,
                input_noise: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
        """Losses of one batch. With `speaker_head`, the speaker classifier reads the emotion vector
        through the gradient reversal layer, whose strength is `grl_lambda` (0: a plain forward,
        no gradient reaches the emotion vector from the classifier). With `align` = (heads, sigma),
        `align_loss` is the guided-attention loss of that many heads per decoder block
        (model/decoder.py guided_attention_loss). With `input_noise` = (coarse, fine), that fraction of
        codebook 0's / the other codebooks' input codes are random (model/decoder.py corrupt_codes); the
        targets stay the recording's."""
        spk = self.speaker_prefix(batch["spk_mel"], batch["spk_mask"])  # (B, Ns, C)
        emo = self.emotion_vector(batch["emo_mel"], batch["emo_mask"])  # (B, C)
        prefix = torch.cat([spk, emo[:, None]], dim=1)  # (B, Ns + 1, C)
        cap = self.caption_peft(batch["caption_ids"], batch["caption_mask"])
        codes, lengths = batch["codes"], batch["code_lengths"]  # (B, K, T), (B,)
        target = delay_codes(codes, lengths, self.cfg.pad_id)  # (B, K, S)
        B, K, S = target.shape
        bos = target.new_full((B, K, 1), self.cfg.bos_id)
        audio_in = torch.cat([bos, target[:, :, :-1]], dim=2)  # (B, K, S)
        if input_noise and any(input_noise):
            audio_in = corrupt_codes(audio_in, input_noise, self.cfg.codebook_size)
        audio_mask = torch.arange(S, device=codes.device)[None] < (lengths + K - 1)[:, None]  # (B, S)
        heads, sigma = align or (0, 0.0)
        logits, stop, *att = self.decoder(prefix, batch["text"], batch["text_mask"], audio_in, audio_mask,
                                          cap.states, cap.mask, align_heads=heads)  # (B, K, S, V), (B, S)
        mel_loss, correct, count = code_loss(logits, target, self.cfg.pad_id)
        out = dict(mel_loss=mel_loss, mel_correct=correct, mel_count=count,
                   stop_loss=stop_loss(stop, lengths, audio_mask),
                   kl=_scalar(cap.kl, mel_loss), ortho=_scalar(cap.ortho, mel_loss), emo_vec=emo,
                   logits=logits, target=target)  # (B, K, S, V), (B, K, S): per-codebook diagnostics
        if att:
            out["align_loss"] = guided_attention_loss(att[0], prefix.shape[1], batch["text_mask"], audio_mask,
                                                      sigma)
        if speaker_head:
            logits_s = self.speaker_classifier(self.grl(emo, grl_lambda))  # (B, n_speakers)
            labels = batch["speaker"]
            known = labels != -100
            n = known.sum()
            loss_s = (
                F.cross_entropy(logits_s.float(), labels, ignore_index=-100)
                if n > 0
                else logits_s.sum() * 0.0
            )
            out.update(speaker_loss=loss_s, speaker_correct=((logits_s.argmax(-1) == labels) & known).sum(),
                       speaker_count=n)
        return out

    # inference -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        text: str,
        caption_ids,
        spk_mel: torch.Tensor,
        emo_mel: torch.Tensor | None = None,
        n_frames: int = 100,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        stop: bool = True,
    ) -> torch.Tensor:
        """Codes (K, T) for one request; T <= n_frames (the stop head ends it, `n_frames` caps it).
        spk_mel/emo_mel (T, n_mels); caption_ids a list or (Lc,) tensor of caption token ids."""
        return self.generate_batch([text], [caption_ids], [spk_mel], [emo_mel], n_frames, temperature, top_k,
                                   greedy, generator, top_p, use_cache, stop)[0]

    @torch.no_grad()
    def generate_batch(self, texts: list[str], caption_ids: list, spk_mels: list[torch.Tensor],
                       emo_mels: list[torch.Tensor | None] | None = None, max_frames: int | list[int] = 100,
                       temperature: float = 1.0, top_k: int | None = None, greedy: bool = False,
                       generator: torch.Generator | None = None, top_p: float | None = None,
                       use_cache: bool = True, stop: bool = True) -> list[torch.Tensor]:
        """Autoregressive codes with the delay pattern for B requests at once -> [(K, T_i)].

        Row b ends when the stop head says codebook 0's next frame is past the end (probability > 0.5,
        after at least one frame), or at max_frames[b]; the K - 1 delayed codebooks are then completed.
        With `use_cache` each step feeds one frame against the cached keys/values of every block
        (self- and cross-attention); without, the whole prefix is recomputed each step (the reference
        the cache is tested against). `stop=False`: always max_frames."""
        self.eval()
        cfg, dev = self.cfg, next(self.parameters()).device
        K, B = cfg.n_codebooks, len(texts)
        caps = [max_frames] * B if isinstance(max_frames, int) else list(max_frames)
        caps = torch.tensor([max(1, min(int(c), cfg.max_frames)) for c in caps], device=dev)  # (B,)
        emo_mels = [None] * B if emo_mels is None else emo_mels
        prefix, text, text_mask, cap_states, cap_mask = self._condition(
            texts, caption_ids, spk_mels, emo_mels, dev
        )
        n = caps.clone()  # frames of codebook 0 per row; final once `ended`
        ended = torch.zeros(B, dtype=torch.bool, device=dev)
        k_idx = torch.arange(K, device=dev)
        bos = torch.full((B, K, 1), cfg.bos_id, dtype=torch.long, device=dev)
        seq = bos
        state = None
        for s in range(int(caps.max()) + K - 1):
            if not use_cache:  # the reference the cache is tested against: the whole sequence again
                logits, stop_logits = self.decoder(prefix, text, text_mask, seq, torch.ones(B, seq.shape[2],
                                                   dtype=torch.bool, device=dev), cap_states, cap_mask)
                logits, stop_logits = logits[:, :, -1], stop_logits[:, -1]  # (B, K, V), (B,)
            elif state is None:
                logits, stop_logits, state = self.decoder.prefill(
                    prefix, text, text_mask, bos, cap_states, cap_mask
                )
            else:
                logits, stop_logits = self.decoder.step(seq[:, :, -1:], state)
            if stop and s >= 1:  # codebook 0's frame s is past the end: the row has s frames
                now = ~ended & (torch.sigmoid(stop_logits.float()) > 0.5) & (s < caps)
                n = torch.where(now, torch.full_like(n, s), n)
            ended |= s >= n
            nxt = _sample(logits, temperature, top_k, top_p, greedy, generator)  # (B, K)
            frame = s - k_idx[None]  # (1, K) frame index each codebook emits at this step
            valid = (frame >= 0) & (frame < n[:, None])  # (B, K)
            nxt = torch.where(valid, nxt, torch.full_like(nxt, cfg.pad_id))
            seq = torch.cat([seq, nxt[:, :, None]], dim=2)
            if bool((s >= n + K - 2).all()):
                break
        delayed = seq[:, :, 1:]  # (B, K, S)
        if delayed.shape[2] < int(n.max()) + K - 1:
            delayed = F.pad(delayed, (0, int(n.max()) + K - 1 - delayed.shape[2]), value=cfg.pad_id)
        codes = undelay_codes(delayed)  # (B, K, T)
        return [codes[b, :, :int(n[b])] for b in range(B)]

    def _condition(self, texts, caption_ids, spk_mels, emo_mels, dev):
        """Pad and encode a batch of requests -> prefix (B, P, C), text (B, Lt), text_mask, caption states
        (B, Lc, D), caption mask (B, Lc)."""
        from tristage.features.mel import pad_mels

        cfg, B = self.cfg, len(texts)
        ids = [self.text_ids(t) for t in texts]
        text = torch.full((B, max(map(len, ids))), cfg.text_pad_id, dtype=torch.long)
        for b, row in enumerate(ids):
            text[b, :len(row)] = torch.tensor(row)
        caps = [torch.as_tensor(c).long().reshape(-1) for c in caption_ids]
        caps = [c if c.numel() else torch.zeros(1, dtype=torch.long) for c in caps]
        cap_ids = torch.zeros(B, max(len(c) for c in caps), dtype=torch.long)
        cap_valid = torch.zeros_like(cap_ids, dtype=torch.bool)
        for b, c in enumerate(caps):
            cap_ids[b, :len(c)], cap_valid[b, :len(c)] = c, True
        cap = self.caption_peft(cap_ids.to(dev), cap_valid.to(dev))
        spk_mel, spk_mask = pad_mels([torch.as_tensor(m).float() for m in spk_mels])
        emo_mel, emo_mask = pad_mels([torch.as_tensor(e if e is not None else m).float()
                                       for m, e in zip(spk_mels, emo_mels)])
        spk = self.speaker_prefix(spk_mel.to(dev), spk_mask.to(dev))  # (B, Ns, C)
        emo = self.emotion_vector(emo_mel.to(dev), emo_mask.to(dev))  # (B, C)
        prefix = torch.cat([spk, emo[:, None]], dim=1)
        text = text.to(dev)
        return prefix, text, text != cfg.text_pad_id, cap.states, cap.mask


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, greedy: bool,
            generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, K, V) -> token ids (B, K): argmax, or sampling with temperature, top-k and top-p."""
    if greedy or temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k:
        v, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
        logits = logits.masked_fill(logits < v[..., -1:], float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - F.softmax(sorted_logits, dim=-1) > top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    B, K, V = logits.shape
    probs = F.softmax(logits, dim=-1).reshape(B * K, V)
    return torch.multinomial(probs, 1, generator=generator).reshape(B, K)


def _scalar(x: Any, like: torch.Tensor) -> torch.Tensor:
    if x is None:
        return like.new_zeros(())
    return x if torch.is_tensor(x) else like.new_tensor(float(x))


def import_class(path: str):
    if path in DEFAULT_CLASSES:  # imported statically: part of the import closure (tristage/closure.py)
        return DEFAULT_CLASSES[path]
    mod, _, name = path.partition(":")
    return getattr(importlib.import_module(mod), name)


def build_caption_module(cfg: TTSConfig, table: Any) -> nn.Module:
    """The caption module the config names, built on the caption vector table with the config's adapters."""
    return import_class(cfg.caption_module)(table, cfg.peft)


def build_model(cfg: TTSConfig, table: Any) -> TTS:
    return TTS(cfg, build_caption_module(cfg, table))
