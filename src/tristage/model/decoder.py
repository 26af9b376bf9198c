"""Causal transformer decoder over DAC codes with the delay pattern (MusicGen / Parler-TTS).

Sequence layout (one causal stream):

    [ prefix (P = speaker_latents + 1 emotion vector) | text bytes (Lt) | audio frames (S) ]

- text: byte-level embedding (no tokenizer) + learned positions;
- audio: K codebooks, codebook k delayed by k frames; one embedding per codebook, summed;
  one linear head per codebook; BOS starts the audio stream, PAD fills the delay gaps;
- caption: states (B, Lc, D) from `caption_peft`, projected D -> d_model, read by
  cross-attention in every block.

Delay pattern, K = 3, T = 4 codes a..d (P = pad):

    k=0:  a0 b0 c0 d0 P  P
    k=1:  P  a1 b1 c1 d1 P
    k=2:  P  P  a2 b2 c2 d2        -> S = T + K - 1 frames; input = [BOS, frames[:-1]]

End of speech: `stop_head` reads the same hidden state as the code heads and predicts, at input
position s, whether codebook 0's frame s is past the end (s >= T). `stop_loss` trains it; in
generation the first s with p > 0.5 fixes T = s and the K - 1 delayed codebooks are completed.

Alignment prior (`align_sigma` > 0): speech reads its text in order, so the attention of audio frame s
(of T) to text token n (of N) gets a Gaussian bias -scale * (s/T - n/N)^2 / (2 sigma^2), its scale
learned per layer and head (softplus, 1 at the start; a head can drop it). From the first step every
frame attends near "its" text, instead of the model having to discover the alignment, the slow part
of training an autoregressive TTS from scratch (the idea of Gaussian upsampling in Non-Attentive
Tacotron and of Deep Voice 3's position rates, as a soft prior). T is the true length in training;
in generation the length head predicts it (log frames, from the last text position, which sees the
whole text, the speaker prefix and the caption), and the stop head still ends the speech.

KV cache: `prefill` runs [prefix | text] once, keeps each block's keys/values and predicts the length;
`step` feeds one frame against them (cross-attention keys/values of the caption are computed once).
`forward` (training, and generation without the cache) recomputes the whole sequence.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tristage.model.layers import Block, key_mask


def delay_codes(codes: torch.Tensor, lengths: torch.Tensor, pad_id: int) -> torch.Tensor:
    """codes (B, K, T) long, lengths (B,) -> delayed (B, K, T + K - 1); PAD outside each row's codes."""
    B, K, T = codes.shape
    out = codes.new_full((B, K, T + K - 1), pad_id)
    t = torch.arange(T, device=codes.device)
    valid = t[None, :] < lengths[:, None]  # (B, T)
    for k in range(K):
        out[:, k, k:k + T] = torch.where(valid, codes[:, k], pad_id)
    return out


def undelay_codes(delayed: torch.Tensor) -> torch.Tensor:
    """delayed (B, K, S) -> codes (B, K, S - K + 1): codes[k, t] = delayed[k, t + k]."""
    B, K, S = delayed.shape
    T = S - K + 1
    return torch.stack([delayed[:, k, k:k + T] for k in range(K)], dim=1)


# one config dataclass per component, as nanoGPT's GPTConfig (style.md): alike fields, separate owners
@dataclasses.dataclass
class DecoderConfig:
    n_codebooks: int = 4
    codebook_size: int = 256
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    caption_dim: int = 64
    max_text_len: int = 128
    max_frames: int = 256
    dropout: float = 0.0
    text_vocab: int = 257  # UTF-8 bytes + pad (TTSConfig.text_vocab)
    align_sigma: float = 0.0  # width of the alignment prior (fraction of the utterance); 0 = none


@dataclasses.dataclass
class DecodeState:
    """What incremental decoding carries between steps (one entry per block in `caches`)."""

    caches: list[dict]  # per block {"self": {"k", "v"}, "cross": {"k", "v"}}, (B, h, L, C/h) each
    valid: torch.Tensor  # (B, L) bool: which cached keys may be attended (padding of text is not)
    ctx: torch.Tensor  # (B, Lc, C) projected caption
    ctx_mask: torch.Tensor  # (B, 1, 1, Lc)
    pos: int  # audio position of the next input frame
    all_valid: bool | None = None  # every key valid (then steps attend without masks)
    text: tuple[int, torch.Tensor] | None = None  # (P, text mask (B, Lt)): where the text keys sit
    frames: torch.Tensor | None = None  # (B,) predicted length in frames (the alignment prior's T)
    text_emb: torch.Tensor | None = None  # (B, Lt, C) the text's input embeddings (aligned to each frame)


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        K, V, C = cfg.n_codebooks, cfg.codebook_size, cfg.d_model
        self.pad_id, self.bos_id = V, V + 1
        self.text_emb = nn.Embedding(cfg.text_vocab, C)
        self.text_pos = nn.Embedding(cfg.max_text_len, C)
        self.code_emb = nn.ModuleList([nn.Embedding(V + 2, C) for _ in range(K)])  # + pad, bos
        self.audio_pos = nn.Embedding(cfg.max_frames + K, C)
        self.caption_proj = nn.Linear(cfg.caption_dim, C)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(C, cfg.n_head, d_ctx=C, cross=True, dropout=cfg.dropout)
                                     for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(C)
        self.heads = nn.ModuleList([nn.Linear(C, V, bias=False) for _ in range(K)])
        self.stop_head = nn.Linear(
            C, 1
        )  # end of speech: "codebook 0's frame at this position is past the end"
        if cfg.align_sigma > 0:
            self.align_scale = nn.Parameter(torch.zeros(cfg.n_layer, cfg.n_head))  # softplus(. + ALIGN_INIT)
            self.len_head = nn.Linear(C, 1)  # log frames, read at the last text position
            self.align_proj = nn.Linear(C, C)  # the aligned text embedding added to each audio input
        self.apply(_init_weights)
        nn.init.constant_(self.stop_head.bias, -3.0)  # prior: a frame rarely ends the speech
        if cfg.align_sigma > 0:
            nn.init.constant_(self.len_head.bias, 4.5)  # about 90 frames

    def _audio(self, audio_in: torch.Tensor, start: int) -> torch.Tensor:
        # audio_in (B, K, S) long -> (B, S, C), positions start..start+S-1
        S = audio_in.shape[2]
        a = sum(emb(audio_in[:, k]) for k, emb in enumerate(self.code_emb))  # (B, S, C)
        return a + self.audio_pos(torch.arange(start, start + S, device=audio_in.device))

    def _out(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # h (B, S, C) -> logits (B, K, S, V), stop logits (B, S)
        h = self.ln_f(h)
        return torch.stack([head(h) for head in self.heads], dim=1), self.stop_head(h).squeeze(-1)

    def forward(self, prefix: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                audio_in: torch.Tensor, audio_mask: torch.Tensor,
                caption: torch.Tensor, caption_mask: torch.Tensor,
                frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # prefix (B, P, C); text (B, Lt) long; text_mask (B, Lt) bool; audio_in (B, K, S) long;
        # audio_mask (B, S) bool; caption (B, Lc, Dc); caption_mask (B, Lc) bool; frames (B,): the
        # utterances' lengths for the alignment prior (the true ones in training)
        # -> logits (B, K, S, V), stop logits (B, S), predicted log frames (B,) (None without the prior)
        B, P, _ = prefix.shape
        Lt, S = text.shape[1], audio_in.shape[2]
        dev = text.device
        t = self.text_emb(text) + self.text_pos(torch.arange(Lt, device=dev))  # (B, Lt, C)
        a = self._audio(audio_in, 0)  # (B, S, C)
        bias = None
        if self.cfg.align_sigma > 0:
            if frames is None:
                raise ValueError("the alignment prior needs the utterances' lengths (frames)")
            bias = self._align_bias(text_mask, frames, 0, S)  # (B, S, Lt)
            a = a + self._aligned_text(bias, t, text_mask)
        x = self.drop(torch.cat([prefix.to(t.dtype), t, a], dim=1))  # (B, L, C), L = P + Lt + S
        L = x.shape[1]
        valid = torch.cat([text_mask.new_ones(B, P), text_mask, audio_mask], dim=1)  # (B, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
        mask = causal[None, None] & valid[:, None, None, :]  # (B, 1, L, L); the prefix is always valid
        ctx = self.caption_proj(caption)  # (B, Lc, C)
        ctx_mask = key_mask(caption_mask)  # (B, 1, 1, Lc)
        prior = None
        if bias is not None:
            prior = torch.zeros(B, L, L, device=dev, dtype=x.dtype)
            prior[:, P + Lt:, P:P + Lt] = bias
            mask = torch.zeros(mask.shape, device=dev, dtype=x.dtype).masked_fill(~mask, float("-inf"))
        for i, block in enumerate(self.blocks):
            m = mask if prior is None else mask + self._scale(i)[None, :, None, None] * prior[:, None]
            x = block(x, mask=m, ctx=ctx, ctx_mask=ctx_mask)
        logits, stop = self._out(x[:, P + Lt:])
        return logits, stop, self._log_frames(x, P, text_mask)

    # the alignment prior -------------------------------------------------------------------
    def _scale(self, layer: int) -> torch.Tensor:
        return F.softplus(self.align_scale[layer] + ALIGN_INIT)  # (n_head,)

    def _align_bias(self, text_mask: torch.Tensor, frames: torch.Tensor, s0: int, S: int) -> torch.Tensor:
        """-(s/T - n/N)^2 / (2 sigma^2) for audio positions s0..s0+S-1 and text positions -> (B, S, Lt)."""
        Lt, dev = text_mask.shape[1], text_mask.device
        n_rel = (torch.arange(Lt, device=dev)[None] + 0.5) / text_mask.sum(1, keepdim=True).clamp(min=1)
        s_rel = (torch.arange(s0, s0 + S, device=dev)[None] + 0.5) / frames.float().clamp(min=1)[:, None]
        bias = -((s_rel[:, :, None] - n_rel[:, None, :]) ** 2) / (2 * self.cfg.align_sigma ** 2)
        return bias.masked_fill(~text_mask[:, None, :], 0.0)

    def _aligned_text(self, bias: torch.Tensor, t: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """What each audio position is aligned to: the text embeddings t (B, Lt, C) averaged with the prior's
        weights softmax_n(bias) (B, S, Lt), projected -> (B, S, C) added to the audio input (Gaussian
        upsampling, as in Non-Attentive Tacotron, over a uniform alignment)."""
        w = torch.softmax(bias.float().masked_fill(~text_mask[:, None, :], float("-inf")), dim=-1).to(t.dtype)
        return self.align_proj(w @ t)

    def _log_frames(self, x: torch.Tensor, P: int, text_mask: torch.Tensor) -> torch.Tensor | None:
        """The length head at each row's last text position: x (B, L, C) -> predicted log frames (B,)."""
        if self.cfg.align_sigma <= 0:
            return None
        last = P + text_mask.sum(1).clamp(min=1) - 1  # (B,)
        h = self.ln_f(x[torch.arange(x.shape[0], device=x.device), last])  # (B, C)
        return self.len_head(h).squeeze(-1).float()

    # incremental decoding (KV cache) ------------------------------------------------------
    def prefill(
        self,
        prefix: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        first: torch.Tensor,
        caption: torch.Tensor,
        caption_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, DecodeState]:
        """Run [prefix | text] once, keeping every block's keys/values and predicting the length (alignment
        prior), then the first audio frame. first (B, K, 1) (the BOS frame) -> logits (B, K, V), stop logits
        (B,), state (`state.frames`: the predicted length, None without the prior)."""
        B, P, _ = prefix.shape
        Lt = text.shape[1]
        dev = text.device
        t = self.text_emb(text) + self.text_pos(torch.arange(Lt, device=dev))
        x = torch.cat([prefix.to(t.dtype), t], dim=1)  # (B, P + Lt, C)
        L = x.shape[1]
        valid = torch.cat([text_mask.new_ones(B, P), text_mask], dim=1)  # (B, L)
        mask = torch.ones(L, L, dtype=torch.bool, device=dev).tril()[None, None] & valid[:, None, None, :]
        ctx, ctx_mask = self.caption_proj(caption), key_mask(caption_mask)
        caches: list[dict] = [{} for _ in self.blocks]
        for block, cache in zip(self.blocks, caches):
            x = block(x, mask=mask, ctx=ctx, ctx_mask=ctx_mask, cache=cache)
        log_frames = self._log_frames(x, P, text_mask)
        state = DecodeState(caches, valid, ctx, ctx_mask, pos=0, text=(P, text_mask), text_emb=t,
                            frames=None if log_frames is None else log_frames.exp())
        logits, stop = self.step(first, state)
        return logits, stop, state

    def step(self, frame: torch.Tensor, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        """One new audio frame (B, K, 1) against the cache -> logits (B, K, V), stop logits (B,)."""
        state.valid = torch.cat([state.valid, state.valid.new_ones(state.valid.shape[0], 1)], dim=1)
        if state.all_valid is None:  # no padded key anywhere (e.g. one request): attend without masks
            state.all_valid = bool(state.valid.all()) and bool(state.ctx_mask.all())
        mask = None if state.all_valid else state.valid[:, None, None, :]  # (B, 1, 1, L)
        ctx_mask = None if state.all_valid else state.ctx_mask
        x = self._audio(frame, state.pos)  # (B, 1, C)
        prior = None
        if state.frames is not None:  # this frame's alignment bias on the text keys
            P, text_mask = state.text
            B, Lk = state.valid.shape
            bias = self._align_bias(text_mask, state.frames, state.pos, 1)  # (B, 1, Lt)
            x = x + self._aligned_text(bias, state.text_emb, text_mask)
            prior = torch.zeros(B, 1, Lk, device=x.device, dtype=x.dtype)
            prior[:, :, P:P + text_mask.shape[1]] = bias
            keep = state.valid[:, None, :] if mask is not None else torch.ones_like(prior, dtype=torch.bool)
            base = torch.zeros_like(prior).masked_fill(~keep, float("-inf"))  # (B, 1, Lk)
        for i, (block, cache) in enumerate(zip(self.blocks, state.caches)):
            m = mask if prior is None else (base + self._scale(i)[None, :, None] * prior)[:, :, None, :]
            x = block(x, mask=m, ctx=state.ctx, ctx_mask=ctx_mask, cache=cache)
        state.pos += 1
        logits, stop = self._out(x)
        return logits[:, :, 0], stop[:, 0]


ALIGN_INIT = math.log(math.e - 1)  # softplus(0 + ALIGN_INIT) = 1: the prior's scale at the start


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def code_loss(
    logits: torch.Tensor, target: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy and top-1 over non-pad targets. logits (B, K, S, V), target (B, K, S)
    -> (loss, correct count, token count) (scalars)."""
    V = logits.shape[-1]
    tgt = target.masked_fill(target == pad_id, -100)
    loss = F.cross_entropy(logits.reshape(-1, V).float(), tgt.reshape(-1), ignore_index=-100)
    keep = tgt != -100
    correct = ((logits.argmax(-1) == tgt) & keep).sum()
    return loss, correct, keep.sum()


def stop_loss(stop_logits: torch.Tensor, lengths: torch.Tensor, audio_mask: torch.Tensor) -> torch.Tensor:
    """End-of-speech loss. stop_logits (B, S) at input positions s; target 1 where codebook 0's frame s
    is past the end (s >= length), over the valid positions (audio_mask (B, S)). The positives (K - 1 per
    row) and negatives (length per row) are averaged separately and the two means averaged, so the
    rare positive class is not drowned out."""
    S = stop_logits.shape[1]
    target = (torch.arange(S, device=stop_logits.device)[None] >= lengths[:, None]).float()  # (B, S)
    per = F.binary_cross_entropy_with_logits(stop_logits.float(), target, reduction="none")
    pos, neg = audio_mask & (target > 0), audio_mask & (target == 0)
    parts = [per[m].mean() for m in (pos, neg) if m.any()]
    return sum(parts) / len(parts) if parts else stop_logits.sum() * 0.0
