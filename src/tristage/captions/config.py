"""Params of the `caption_vectors` stage, and `CaptionAdapters`: what the caption PEFT (captions/peft) builds.

The adapters are a training matter: `stage1.peft` (training/config.py) sets them with their loss weights,
stage1 saves them in its `config.json` and every later stage and synthesis builds the very same ones
from there. They are no `caption_vectors` params, so changing them never reruns that stage.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal, Mapping

from tristage.captions.lexicon import LEXICON, PARAPHRASES
from tristage.schema import Field, Fraction, NonNegFloat, NonNegInt, Path, PosInt, Section


@dataclasses.dataclass(frozen=True)
class CaptionAdapters:
    """The caption adapters' shapes and implementation (the defaults of `stage1.peft`)."""

    lora_rank: int = 16
    lora_alpha: float = 32.0  # the LoRA's output is scaled by alpha / rank
    vae_latent_dim: int = 128
    # the VAE decoders (z -> dim): one per attribute, shared by its values (each value keeps its own
    # encoder, latent distribution and output bias; 1.15x faster training step at T5-base size, see
    # benchmarks/RESULTS.md), or one per attribute value (the seed's design)
    vae_decoder: Literal["value", "attribute"] = "attribute"
    # the adapters' code (captions/peft): the seed's math in plain PyTorch, or the same function fast
    impl: Literal["reference", "fused"] = "fused"

    # What a saved config's `peft` held besides the adapters before they were typed: the loss weights (the
    # trainer's, now `<stage>.peft`), and what a key it lacks meant: a config written before `vae_decoder`
    # existed had one VAE decoder per attribute value.
    LEGACY_KEYS = ("kl_weight", "orthogonality_weight")
    LEGACY_UNSET = {"vae_decoder": "value"}

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any] | None) -> CaptionAdapters:
        """A model's config.json `peft` (a dict, any age; None for a config older than the key)."""
        saved = dict(saved or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(saved) - names - set(cls.LEGACY_KEYS)
        if unknown:
            raise ValueError(f"unknown caption adapter keys: {sorted(unknown)}")
        return cls(**{**cls.LEGACY_UNSET, **{k: v for k, v in saved.items() if k in names}})


class TinyEncoderParams(Section):
    """The seeded random-init T5 used when `caption_vectors.encoder` is null (tokenizer trained on the
    captions)."""

    d_model: PosInt = 64
    num_layers: PosInt = 2
    num_heads: PosInt = 4
    d_ff: PosInt = 128
    vocab_size: PosInt = 1000


class ContextualiserParams(Section):
    """The small transformer distilled from the encoder over the table's rows (captions.contextual);
    layers 0: none (the table alone)."""

    layers: NonNegInt = 2
    width: PosInt = 128
    heads: PosInt = 4
    steps: NonNegInt = 1500
    batch_size: PosInt = 32
    lr: float = Field(2e-3, gt=0)
    # weight of 1 - cosine of the mean-pooled caption in the loss, beside 1 - cosine per row
    caption_loss_weight: NonNegFloat = 0.25
    # extra training captions: build captions with their attribute phrases swapped for other lexicon
    # phrases, encoded by the encoder too (never a held-out caption or paraphrase)
    recombined: NonNegInt = 3000


class CaptionVectorsParams(Section):
    manifest: Path = Path("data/annotated/manifest.parquet")
    encoder: Path | None = None  # local HF encoder dir; None -> tiny seeded random-init T5
    # table: compact, composable rows (tokens, contexts, attribute values); cache: the table plus the
    # encoder's exact states of every manifest caption (one row per token; captions not cached back off)
    mode: Literal["table", "cache"] = "table"
    out_dir: Path = Path("data/caption_vectors")
    metrics: Path = Path("metrics/caption_vectors.json")
    plots_dir: Path = Path("plots/caption_vectors")
    heldout_fraction: Fraction = 0.15
    batch_size: PosInt = 64
    max_length: PosInt = 128  # tokens per caption (longer captions are truncated)
    seed: int = 1234
    # torch CPU threads: fixed, so float sums are the same on any host (0 = every core)
    threads: NonNegInt = 2
    # vectors keyed by (previous unit, token, next unit), backing off to (prev, token), (token, next), token;
    # a context key needs at least `context_min_count` occurrences in the build captions.
    # false: one per token.
    context_keys: bool = True
    context_min_count: NonNegInt = 2
    # attribute rows per (value, token piece) besides the one per value (all of a value share its VAE)
    attribute_pieces: bool = True
    # fallback rows for tokens no build caption has: up to this many vocabulary tokens, each encoded
    # alone (one short batch per 512 tokens); 0: unseen tokens all get the "<unk>" row (mean vector)
    vocab_fallback_max: NonNegInt = 50000
    tiny: TinyEncoderParams = TinyEncoderParams()
    contextualiser: ContextualiserParams = ContextualiserParams()
    # attribute -> value -> phrases stating it (case-insensitive, whole words, longest match first)
    lexicon: dict[str, dict[str, list[str]]] = Field(default_factory=lambda: copy.deepcopy(LEXICON))
    # free-form captions scored for fidelity besides the held-out ones (never used to build the table)
    paraphrases: list[str] = Field(default_factory=lambda: list(PARAPHRASES))
