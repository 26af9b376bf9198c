"""Params of the three training stages. Stage differences are data: see `presets.py`.

Every stage shares `StageParams`; stage1 also holds the architecture (`stage1.model`) and the caption
adapters (`stage1.peft`); stage2/3 read both from the previous stage's saved `config.json`, so they
can't disagree with stage1. Every stage sets the weights of the adapters' loss terms (`<stage>.peft`).
stage2 adds the GRL and the speaker_acc band.
"""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from tristage.captions.config import CaptionAdapters
from tristage.model.config import ModelParams
from tristage.schema import Field, Fraction, NonNegFloat, NonNegInt, Path, PosFloat, PosInt, Section


class TrainingInputs(Section):
    """The upstream outputs a model is trained and evaluated on (`data.load_sources` opens them); the
    training stages and `evaluate` share them, so evaluation reads the very data training read."""

    prepared: Path = Path("data/annotated/manifest.parquet")
    features: Path = Path("data/features")
    caption_vectors: Path = Path("data/caption_vectors")
    speaker_mapping: Path = Path("data/speakers/speaker_mapping.json")


class PeftLossParams(Section):
    """The caption adapters' loss terms: a stage's loss adds kl_weight * KL + orthogonality_weight * ortho."""

    kl_weight: NonNegFloat = 0.001
    orthogonality_weight: NonNegFloat = 0.01


class PeftParams(PeftLossParams):
    """`stage1.peft`: the caption adapters stage1 builds (saved in its config.json as they are: the later
    stages and synthesis build the same ones) and its loss weights. Defaults: `CaptionAdapters`."""

    lora_rank: PosInt = CaptionAdapters.lora_rank
    lora_alpha: float = Field(CaptionAdapters.lora_alpha, gt=0)
    vae_latent_dim: PosInt = CaptionAdapters.vae_latent_dim
    # attribute: one VAE decoder per attribute, shared by its values; value: one per value (the seed's)
    vae_decoder: Literal["value", "attribute"] = CaptionAdapters.vae_decoder
    impl: Literal["reference", "fused"] = CaptionAdapters.impl  # the seed's math plainly, or the same fast

    def adapters(self) -> CaptionAdapters:
        return CaptionAdapters(lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, impl=self.impl,
                               vae_latent_dim=self.vae_latent_dim, vae_decoder=self.vae_decoder)


class GuidedAttentionParams(Section):
    """The decoder's guided-attention loss (model/decoder.py guided_attention_loss): the stage's loss adds
    weight * align_loss over the first `heads` heads of every decoder block; 0 = off."""

    weight: NonNegFloat = 0.0
    heads: PosInt = 1  # per block (at most the model's n_head)
    sigma: PosFloat = 0.2  # width of the diagonal band, as a fraction of the utterance


class InputNoiseParams(Section):
    """Teacher forcing with mistakes (model/decoder.py corrupt_codes): in training, this fraction of the
    decoder's input codes are replaced by random codes (the targets stay the recording's), so the decoder
    learns to hold its place when generation feeds back a wrong code; 0 = the recording's codes only."""

    coarse: Fraction = 0.0  # codebook 0
    fine: Fraction = 0.0  # codebooks 1..K-1


def forward_args(sp) -> dict:
    """The `TTS.forward` arguments a training step's params switch on: `align` (guided attention) and
    `input_noise` (a stage's or a fine-tune's `guided_attention` and `input_noise` sections)."""
    out: dict = {}
    ga, noise = sp.guided_attention, sp.input_noise
    if ga.weight > 0:
        out["align"] = (ga.heads, ga.sigma)
    if noise.coarse > 0 or noise.fine > 0:
        out["input_noise"] = (noise.coarse, noise.fine)
    return out


class StageParams(TrainingInputs):
    out_dir: Path = Path("models/stage1")
    init_from: Path | None = None  # previous stage's out_dir
    metrics: Path = Path("metrics/stage1.json")
    plots_dir: Path = Path("plots/stage1")
    lr: PosFloat = 2e-4
    lr_scale: PosFloat = 1.0
    steps: PosInt = 150
    epochs: PosFloat | None = None  # passes over the training split instead of `steps` (epochs x batches)
    patience: PosInt | None = None  # stop after this many evaluations without a better val mel_loss
    # the weights the next stage starts from (and models/<stage>/ holds): the best val mel_loss's, or the last
    handover: Literal["best", "last"] = "best"
    batch_size: PosInt = 16
    seed: int = 1234
    # optimisation
    grad_accum: PosInt = 1  # micro-batches per optimizer step
    warmup_steps: NonNegInt = 20  # linear warm-up, then cosine to min_lr_ratio * lr
    min_lr_ratio: Fraction = 0.1
    weight_decay: NonNegFloat = 0.01
    grad_clip: PosFloat = 1.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch CPU threads: fixed, so float sums are the same on any host (0 = every core)
    threads: NonNegInt = 2
    amp: bool = True  # bf16 autocast, on CUDA only
    # modules this stage's preset freezes that train anyway (training/presets.py), e.g. stage3: [caption_peft]
    unfreeze: list[Literal["decoder", "caption_peft", "speaker_encoder", "speaker_perceiver",
                           "emotion_encoder", "emotion_perceiver", "emovec_layer", "emo_layer",
                           "speaker_classifier"]] = []
    # data
    val_fraction: Fraction = 0.1  # held-out utterances (split fixed by seed: data/split.py)
    heldout_speakers: NonNegInt = 2  # speakers never trained on (zero-shot eval; at most a third of them)
    max_ref_frames: PosInt = 160  # random crop of the reference mels (mel frames)
    speaker_ref: Literal["other", "same"] = "other"  # another utterance of the same speaker
    emotion_ref: Literal["same", "other"] = "same"  # the target utterance itself
    bucket_batches: PosInt = 8  # batches per length bucket
    # the caption contextualiser's corrections of the corpus's captions, computed once per run and
    # kept when they take at most this much memory (MiB, fp32); above it (or 0): computed every batch
    caption_cache_mb: NonNegFloat = 1024
    # monitoring and checkpoints
    log_every: PosInt = 10
    eval_every: PosInt = 50
    window: PosInt = 20  # steps in the moving window of train metrics
    checkpoint_every: PosInt = 50
    keep_last: PosInt = 2  # plus the best (lowest val mel_loss)
    # the caption adapters' loss weights (stage1: also the adapters themselves, `PeftParams`)
    peft: PeftLossParams = PeftLossParams()
    guided_attention: GuidedAttentionParams = GuidedAttentionParams()
    input_noise: InputNoiseParams = InputNoiseParams()


class Stage1Params(StageParams):
    steps: PosInt = 400  # stage1 learns from scratch: more than the later stages' fine-tuning
    warmup_steps: NonNegInt = 50
    model: ModelParams = ModelParams()
    peft: PeftParams = PeftParams()


class Stage2Params(StageParams):
    # each stage names its own outputs and init, as params.yaml reads (alike by design)
    out_dir: Path = Path("models/stage2")
    init_from: Path | None = Path("models/stage1")
    metrics: Path = Path("metrics/stage2.json")
    plots_dir: Path = Path("plots/stage2")
    # project: the classifier's own updates (classifier_steps) on a standardised emotion vector, the band's
    # advice below it is a weaker reversal; seed: the seed's plain GRL exactly (no classifier updates, no
    # standardisation, its 20% / 80% warning thresholds and advice). training/band.py REMEDIES
    adversary: Literal["project", "seed"] = "project"
    grl_lambda: NonNegFloat = 1.0
    speaker_loss_weight: NonNegFloat = 0.1
    speaker_acc_band: tuple[float, float] = (0.3, 0.6)
    band_patience: PosInt = 3  # band checks outside the band before warning / adjusting
    band_check_every: PosInt | None = (
        25  # steps between band checks (a validation pass each); null = eval_every
    )
    band_control: Literal["warn", "auto"] = "warn"
    band_factor: float = Field(2.0, gt=1)  # auto: multiply (above the band) or divide (below) lambda by this
    grl_lambda_max: NonNegFloat = 3.0
    grl_lambda_min: NonNegFloat = 0.1  # auto below the band lowers lambda, to this at least
    grl_warmup: bool = False  # DANN schedule: lambda * (2 / (1 + exp(-10 p)) - 1)
    classifier_lr_scale: PosFloat = 5.0  # the speaker classifier's lr = lr * lr_scale * this
    # extra classifier-only updates per step on the step's (detached) emotion vectors; 0 = the seed's
    # plain GRL, where the emotion encoder fools a lagging classifier instead of dropping the speaker
    classifier_steps: NonNegInt = 5

    @field_validator("speaker_acc_band")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 <= lo < hi <= 1:
            raise ValueError("must be [low, high] with 0 <= low < high <= 1")
        return v


class Stage3Params(StageParams):
    # each stage names its own outputs and init, as params.yaml reads (alike by design)
    out_dir: Path = Path("models/stage3")
    init_from: Path | None = Path("models/stage2")
    metrics: Path = Path("metrics/stage3.json")
    plots_dir: Path = Path("plots/stage3")
    lr_scale: PosFloat = 0.5
