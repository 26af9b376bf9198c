"""Model sizes: the `stage1.model` params section and the resolved architecture config.

Pure pydantic / dataclasses (no torch import), so `tristage.config` can validate params.yaml
without loading torch.

- `ModelParams` is what params.yaml holds: a `preset` (`tiny` | `seed` | `toy`, the tests') plus optional
  per-field overrides (null = take the preset's value).
- `TTSConfig` is the whole architecture, resolved: the preset's sizes plus what the data
  fixes (codebooks, codebook size, mel bins, caption dim, number of speakers), and the caption
  adapters (`stage1.peft`: `captions.config.CaptionAdapters`). It is saved
  as `models/<stage>/config.json`; stage2 and stage3 read it from the previous stage, so a
  later stage can never disagree with stage1 about the architecture.

Presets (sizes chosen so that `tiny` trains the demo corpus in minutes on 2 CPU cores and
`seed` is at the scale of IndexTTS2's GPT: measured with 9 x 1024 DAC codes, 100 mel bins,
a 1024-d caption table and 500 speakers, 346M parameters, 290M of them in the decoder, whose
blocks carry cross-attention to the caption as well as self-attention):

| preset | d_model | n_layer | n_head | cond_dim | cond_layers | speaker_latents | emo_dim |
|--------|---------|---------|--------|----------|-------------|-----------------|---------|
| tiny   | 128     | 4       | 4      | 96       | 1           | 8               | 64      |
| seed   | 1024    | 16      | 16     | 512      | 6           | 32              | 1024    |
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from tristage.captions.config import CaptionAdapters
from tristage.schema import Field, PosInt, Section

TEXT_PAD_ID = 256  # the decoder's text tokens are UTF-8 bytes 0..255, then pad
TEXT_VOCAB = TEXT_PAD_ID + 1

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=128, n_layer=4, n_head=4, cond_dim=96, cond_layers=1, cond_heads=4,
                 perceiver_layers=1, speaker_latents=8, emo_dim=64, classifier_hidden=128,
                 dropout=0.0, max_text_len=160, max_frames=320, text_frontend="phonemes",
                 phoneme_voice="en-us", positions="learned"),
    "seed": dict(d_model=1024, n_layer=16, n_head=16, cond_dim=512, cond_layers=6, cond_heads=8,
                 perceiver_layers=2, speaker_latents=32, emo_dim=1024, classifier_hidden=512,
                 dropout=0.1, max_text_len=402, max_frames=1024, text_frontend="phonemes",
                 phoneme_voice="en-us", positions="learned"),
    # toy: the tests' model (seconds on a CPU; the one place its sizes are written)
    "toy": dict(d_model=32, n_layer=1, n_head=2, cond_dim=16, cond_layers=1, cond_heads=2,
                perceiver_layers=1, speaker_latents=2, emo_dim=8, classifier_hidden=16,
                dropout=0.0, max_text_len=32, max_frames=64, text_frontend="bytes",
                phoneme_voice="en-us", positions="learned"),
}


class ModelParams(Section):
    """Architecture of the stage1 model (stage2/3 reuse stage1's saved config)."""

    preset: Literal["tiny", "seed", "toy"] = "tiny"
    d_model: PosInt | None = None  # decoder width
    n_layer: PosInt | None = None  # decoder blocks
    n_head: PosInt | None = None
    cond_dim: PosInt | None = None  # conditioning encoders / perceivers width
    cond_layers: PosInt | None = None  # transformer layers in each conditioning encoder
    cond_heads: PosInt | None = None
    perceiver_layers: PosInt | None = None
    speaker_latents: PosInt | None = None  # perceiver latents of the speaker prefix
    emo_dim: PosInt | None = None  # width of emovec_layer's output
    classifier_hidden: PosInt | None = None
    dropout: float | None = Field(None, ge=0, lt=1)
    max_text_len: PosInt | None = None  # text tokens (bytes of the front-end's string); longer: skipped
    max_frames: PosInt | None = None  # codec frames of target; longer: skipped
    text_frontend: Literal["bytes", "phonemes"] | None = None  # model/text.py
    phoneme_voice: str | None = None  # espeak-ng voice of the `phonemes` front-end (en-us, en-gb, de, ko...)
    # the decoder's positions: learned (one embedding per text token / audio frame) | aligned (fixed sinusoids
    # on one time axis, text token t at frame t * text_rate: Deep Voice 3's position rate; model/decoder.py)
    positions: Literal["learned", "aligned"] | None = None

    def resolved(self) -> dict[str, Any]:
        out = dict(PRESETS[self.preset])
        for k in out:
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


@dataclasses.dataclass
class TTSConfig:
    """The resolved architecture (saved as config.json next to model.safetensors)."""

    # from the data
    n_codebooks: int
    codebook_size: int
    n_mels: int
    caption_dim: int
    n_speakers: int
    # sizes (see PRESETS)
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    cond_dim: int = 96
    cond_layers: int = 1
    cond_heads: int = 4
    perceiver_layers: int = 1
    speaker_latents: int = 8
    emo_dim: int = 64
    classifier_hidden: int = 128
    dropout: float = 0.0
    max_text_len: int = 128
    max_frames: int = 256
    text_frontend: str = "bytes"  # model/text.py; a config written before front-ends existed read bytes
    classifier_standardize: bool = True  # the speaker classifier standardises its input (model/classifier.py)
    phoneme_voice: str = "en-us"
    positions: str = "learned"  # model/decoder.py; a config written before `aligned` existed read learned
    text_rate: float = 1.0  # aligned: codec frames per text token, measured on stage1's training split
    preset: str = "tiny"
    # the caption module (import path "module:Class"; built by model.tts.build_caption_module)
    caption_module: str = "tristage.captions.peft:CaptionPEFT"
    caption_table: str = "tristage.captions.vectors:CaptionVectorTable"
    caption_vectors: str | None = None  # the table's folder at training time
    # the caption adapters (stage1.peft when stage1 trained; every later stage keeps them)
    peft: CaptionAdapters = dataclasses.field(default_factory=CaptionAdapters)
    # provenance, shown in outputs ("random-init codec/encoder")
    codec: str = "unknown"
    caption_encoder: str = "unknown"

    # token ids (per codebook vocabulary = codebook_size + 2)
    @property
    def pad_id(self) -> int:
        return self.codebook_size

    @property
    def bos_id(self) -> int:
        return self.codebook_size + 1

    @property
    def text_vocab(self) -> int:
        return TEXT_VOCAB  # bytes + pad

    @property
    def text_pad_id(self) -> int:
        return TEXT_PAD_ID

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TTSConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TTSConfig keys: {sorted(unknown)}")
        return cls(**{**d, "peft": CaptionAdapters.from_saved(d.get("peft"))})
