"""Causal transformer decoder over DAC codes with the delay pattern (MusicGen / Parler-TTS).

Sequence layout (one causal stream):

    [ prefix (P = speaker_latents + 1 emotion vector) | text bytes (Lt) | audio frames (S) ]

- text: byte-level embedding (no tokenizer) + positions;
- audio: K codebooks, codebook k delayed by k frames; one embedding per codebook, summed, + positions;
  one linear head per codebook; BOS starts the audio stream, PAD fills the delay gaps;
- positions: learned (an embedding per text token and per audio frame), or `aligned`: fixed sinusoids
  (`sinusoids`) on the audio's time axis for both streams, text token t at frame t * text_rate (codec
  frames per text token, measured on the training split), each stream's scaled by a learnt scalar. A
  query and a key at the same place on that axis then match without any learned position (Deep Voice 3's
  position rate, Ping et al. 2018);
- caption: states (B, Lc, D) from `caption_peft`, projected D -> d_model, read by
  cross-attention in every block.

Delay pattern, K = 3, T = 4 codes a..d (P = pad):

    k=0:  a0 b0 c0 d0 P  P
    k=1:  P  a1 b1 c1 d1 P
    k=2:  P  P  a2 b2 c2 d2        -> S = T + K - 1 frames; input = [BOS, frames[:-1]]

End of speech: `stop_head` reads the same hidden state as the code heads and predicts, at input
position s, whether codebook 0's frame s is past the end (s >= T). `stop_loss` trains it; in
generation the first s with p > 0.5 fixes T = s and the K - 1 delayed codebooks are completed.

Guided attention (training only, DCTTS, Tachibana et al. 2018): with `align_heads` = n, `forward` also
returns the self-attention probabilities of the first n heads of every block for the audio queries,
and `guided_attention_loss` charges each query for the attention it puts off a diagonal band of the
text: an audio frame a fraction f into the speech should read the text around the fraction f of it.
A decoder trained on little data otherwise learns the codes' statistics long before it learns to read.

KV cache: `prefill` runs [prefix | text | BOS] once and keeps each block's keys/values; `step`
feeds one frame against them (cross-attention keys/values of the caption are computed once).
`forward` (training, and generation without the cache) recomputes the whole sequence.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tristage.model.layers import Block, key_mask


def sinusoids(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """pos (...,) float -> (..., dim): sin and cos of each position at dim/2 geometric frequencies
    (Vaswani et al. 2017), periods 2*pi .. 2*pi*10^4 positions."""
    half = dim // 2
    freq = torch.exp(-math.log(1e4) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    ang = pos.float()[..., None] * freq  # (..., half)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


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
    positions: str = "learned"  # learned | aligned (see `sinusoids`)
    text_rate: float = 1.0  # aligned: codec frames per text token (the training split's mean)


@dataclasses.dataclass
class DecodeState:
    """What incremental decoding carries between steps (one entry per block in `caches`)."""

    caches: list[dict]  # per block {"self": {"k", "v"}, "cross": {"k", "v"}}, (B, h, L, C/h) each
    valid: torch.Tensor  # (B, L) bool: which cached keys may be attended (padding of text is not)
    ctx: torch.Tensor  # (B, Lc, C) projected caption
    ctx_mask: torch.Tensor  # (B, 1, 1, Lc)
    pos: int  # audio position of the next input frame
    all_valid: bool | None = None  # every key valid (then steps attend without masks)


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        K, V, C = cfg.n_codebooks, cfg.codebook_size, cfg.d_model
        self.pad_id, self.bos_id = V, V + 1
        self.text_emb = nn.Embedding(cfg.text_vocab, C)
        if cfg.positions == "aligned":  # fixed sinusoids on one time axis, a learnt scale per stream
            self.text_pos_scale = nn.Parameter(torch.tensor(0.02))
            self.audio_pos_scale = nn.Parameter(torch.tensor(0.02))
        else:
            self.text_pos = nn.Embedding(cfg.max_text_len, C)
        self.code_emb = nn.ModuleList([nn.Embedding(V + 2, C) for _ in range(K)])  # + pad, bos
        if cfg.positions != "aligned":
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
        self.apply(_init_weights)
        nn.init.constant_(self.stop_head.bias, -3.0)  # prior: a frame rarely ends the speech

    def _text(self, text: torch.Tensor) -> torch.Tensor:
        # text (B, Lt) long -> (B, Lt, C)
        Lt, dev = text.shape[1], text.device
        if self.cfg.positions == "aligned":  # token t sits at frame t * text_rate of the audio's time axis
            pos = torch.arange(Lt, device=dev) * self.cfg.text_rate
            return self.text_emb(text) + self.text_pos_scale * sinusoids(pos, self.cfg.d_model)
        return self.text_emb(text) + self.text_pos(torch.arange(Lt, device=dev))

    def _audio(self, audio_in: torch.Tensor, start: int) -> torch.Tensor:
        # audio_in (B, K, S) long -> (B, S, C), positions start..start+S-1
        S = audio_in.shape[2]
        a = sum(emb(audio_in[:, k]) for k, emb in enumerate(self.code_emb))  # (B, S, C)
        pos = torch.arange(start, start + S, device=audio_in.device)
        if self.cfg.positions == "aligned":
            return a + self.audio_pos_scale * sinusoids(pos, self.cfg.d_model)
        return a + self.audio_pos(pos)

    def _out(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # h (B, S, C) -> logits (B, K, S, V), stop logits (B, S)
        h = self.ln_f(h)
        return torch.stack([head(h) for head in self.heads], dim=1), self.stop_head(h).squeeze(-1)

    def forward(self, prefix: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                audio_in: torch.Tensor, audio_mask: torch.Tensor,
                caption: torch.Tensor, caption_mask: torch.Tensor,
                align_heads: int = 0) -> tuple[torch.Tensor, ...]:
        # prefix (B, P, C); text (B, Lt) long; text_mask (B, Lt) bool; audio_in (B, K, S) long;
        # audio_mask (B, S) bool; caption (B, Lc, Dc); caption_mask (B, Lc) bool
        # -> logits (B, K, S, V), stop logits (B, S)
        #    [, attention (B, n_layer * align_heads, S, L) of the audio queries, with align_heads > 0]
        B, P, _ = prefix.shape
        Lt = text.shape[1]
        dev = text.device
        t = self._text(text)  # (B, Lt, C)
        a = self._audio(audio_in, 0)  # (B, S, C)
        x = self.drop(torch.cat([prefix.to(t.dtype), t, a], dim=1))  # (B, L, C), L = P + Lt + S
        L = x.shape[1]
        valid = torch.cat([text_mask.new_ones(B, P), text_mask, audio_mask], dim=1)  # (B, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
        mask = causal[None, None] & valid[:, None, None, :]  # (B, 1, L, L); the prefix is always valid
        ctx = self.caption_proj(caption)  # (B, Lc, C)
        ctx_mask = key_mask(caption_mask)  # (B, 1, 1, Lc)
        if not align_heads:
            for block in self.blocks:
                x = block(x, mask=mask, ctx=ctx, ctx_mask=ctx_mask)
            return self._out(x[:, P + Lt:])
        atts = []
        for block in self.blocks:
            x, att = block(x, mask=mask, ctx=ctx, ctx_mask=ctx_mask, weights=(align_heads, P + Lt))
            atts.append(att)
        return (*self._out(x[:, P + Lt:]), torch.cat(atts, dim=1))

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
        """Run [prefix | text | first audio frame] once, keeping every block's keys/values.
        first (B, K, 1) (the BOS frame) -> logits (B, K, V), stop logits (B,), state."""
        B, P, _ = prefix.shape
        dev = text.device
        t = self._text(text)
        x = torch.cat([prefix.to(t.dtype), t, self._audio(first, 0)], dim=1)  # (B, P + Lt + 1, C)
        L = x.shape[1]
        valid = torch.cat([text_mask.new_ones(B, P), text_mask, text_mask.new_ones(B, 1)], dim=1)  # (B, L)
        mask = torch.ones(L, L, dtype=torch.bool, device=dev).tril()[None, None] & valid[:, None, None, :]
        ctx, ctx_mask = self.caption_proj(caption), key_mask(caption_mask)
        caches: list[dict] = [{} for _ in self.blocks]
        for block, cache in zip(self.blocks, caches):
            x = block(x, mask=mask, ctx=ctx, ctx_mask=ctx_mask, cache=cache)
        logits, stop = self._out(x[:, -1:])
        return logits[:, :, 0], stop[:, 0], DecodeState(caches, valid, ctx, ctx_mask, pos=1)

    def step(self, frame: torch.Tensor, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        """One new audio frame (B, K, 1) against the cache -> logits (B, K, V), stop logits (B,)."""
        state.valid = torch.cat([state.valid, state.valid.new_ones(state.valid.shape[0], 1)], dim=1)
        if state.all_valid is None:  # no padded key anywhere (e.g. one request): attend without masks
            state.all_valid = bool(state.valid.all()) and bool(state.ctx_mask.all())
        mask = None if state.all_valid else state.valid[:, None, None, :]  # (B, 1, 1, L)
        ctx_mask = None if state.all_valid else state.ctx_mask
        x = self._audio(frame, state.pos)  # (B, 1, C)
        for block, cache in zip(self.blocks, state.caches):
            x = block(x, mask=mask, ctx=state.ctx, ctx_mask=ctx_mask, cache=cache)
        state.pos += 1
        logits, stop = self._out(x)
        return logits[:, :, 0], stop[:, 0]


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


def corrupt_codes(audio_in: torch.Tensor, fractions: tuple[float, float], codebook_size: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Teacher forcing with mistakes: replace a fraction of the decoder's input codes by uniformly random
    codes. audio_in (B, K, S) long -> same shape; `fractions` = (codebook 0, codebooks 1..K-1); BOS and
    PAD (ids >= codebook_size) stay. Generation feeds back its own codes, one or two of a frame's fine
    codes wrong; a decoder trained only on the recording's codes loses its place at the first of them."""
    coarse, fine = fractions
    K = audio_in.shape[1]
    p = torch.tensor([coarse] + [fine] * (K - 1), device=audio_in.device)[None, :, None]  # (1, K, 1)
    hit = torch.rand(audio_in.shape, device=audio_in.device, generator=generator) < p
    hit &= audio_in < codebook_size
    noise = torch.randint(0, codebook_size, audio_in.shape, device=audio_in.device, generator=generator)
    return torch.where(hit, noise, audio_in)


def guided_attention_loss(att: torch.Tensor, prefix_len: int, text_mask: torch.Tensor,
                          audio_mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """DCTTS's guided attention over the decoder's [prefix | text | audio] keys. att (B, H, S, L)
    probabilities of the audio queries; text_mask (B, Lt), audio_mask (B, S) bool -> scalar in [0, 1).

    Query s of an utterance with N audio positions and T text tokens pays, per key, the attention it
    puts there times a weight: 1 - exp(-(s/N - t/T)^2 / (2 sigma^2)) on text token t (about 0 on the
    diagonal, near 1 far from it), 1 on every other key (the speaker/emotion prefix and earlier
    audio). So the guided heads read the text, at the place the speech has reached."""
    B, H, S, L = att.shape
    Lt = text_mask.shape[1]
    n_text = text_mask.sum(1).clamp(min=1).to(att.dtype)  # (B,)
    n_audio = audio_mask.sum(1).clamp(min=1).to(att.dtype)
    s = (torch.arange(S, device=att.device, dtype=att.dtype)[None] + 0.5) / n_audio[:, None]  # (B, S)
    t = (torch.arange(Lt, device=att.device, dtype=att.dtype)[None] + 0.5) / n_text[:, None]  # (B, Lt)
    w_text = 1 - torch.exp(-(s[:, :, None] - t[:, None, :]) ** 2 / (2 * sigma ** 2))  # (B, S, Lt)
    w_text = torch.where(text_mask[:, None, :], w_text, torch.ones_like(w_text))
    w = att.new_ones(B, S, L)
    w[:, :, prefix_len:prefix_len + Lt] = w_text
    per_query = (att * w[:, None]).sum(-1)  # (B, H, S)
    keep = audio_mask[:, None, :].expand_as(per_query)
    return per_query[keep].mean() if keep.any() else att.sum() * 0.0


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
