"""Params of the `caption_vectors` stage and of the caption PEFT modules."""
from __future__ import annotations

from tristage.schema import Field, Fraction, NonNegFloat, Path, PosInt, Section


class PeftParams(Section):
    lora_rank: PosInt = 16
    lora_alpha: float = Field(32.0, gt=0)
    vae_latent_dim: PosInt = 128
    orthogonality_weight: NonNegFloat = 0.01
    kl_weight: NonNegFloat = 0.001


class CaptionVectorsParams(Section):
    manifest: Path = Path("data/prepared/manifest.parquet")
    encoder: Path | None = None  # local HF encoder dir; None -> tiny seeded random-init T5
    out_dir: Path = Path("data/caption_vectors")
    metrics: Path = Path("metrics/caption_vectors.json")
    plots_dir: Path = Path("plots/caption_vectors")
    heldout_fraction: Fraction = 0.15
    batch_size: PosInt = 64
    seed: int = 1234
    peft: PeftParams = PeftParams()
