"""Params of the `evaluate` stage."""
from __future__ import annotations

from typing import Literal

from tristage.evaluation.judges.config import AudioMetricsParams
from tristage.schema import Field, Fraction, NonNegInt, Path, PosInt
from tristage.training.config import TrainingInputs


class EvaluateParams(TrainingInputs):
    stages: list[Literal["stage1", "stage2", "stage3"]] = Field(["stage1", "stage2", "stage3"], min_length=1)
    models_dir: Path = Path("models")
    metrics: Path = Path("metrics/evaluate.json")
    plots_dir: Path = Path("plots/evaluate")
    samples_dir: Path = Path("data/samples")
    # inputs: prepared, features, caption_vectors, speaker_mapping (TrainingInputs; the validation split
    # is the training stages' own: same seed and val_fraction), and the caption_vectors stage's metrics
    caption_metrics: Path = Path("metrics/caption_vectors.json")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch CPU threads: fixed, so float sums are the same on any host (0 = every core)
    threads: NonNegInt = 2
    batch_size: PosInt = 16
    # probes: logistic regression on the frozen emotion vectors of every utterance, fixed split
    probe_test_fraction: Fraction = Field(0.3, gt=0, lt=1)
    max_probe_utterances: PosInt = 2000  # a fixed subset (by seed) above this
    # synthesis: `n_samples` matched requests (speaker + emotion reference from one validation utterance of a
    # seen speaker), `n_cross` cross requests (speaker A, emotion reference of B) and `n_unseen` matched
    # requests of the speakers held out of training (zero-shot); every stage speaks the same plan. The
    # recordings and resynthesis rows judge the matched ones: 64 clips keep a WER's standard error under
    # 0.05 at the demo's ground-truth WER (about 0.6, per-clip spread 0.37)
    n_samples: PosInt = 48
    # where the seen requests come from: validation (new sentences: does it read?) or training (sentences it
    # was trained on: a memorisation check that tells a decoder that cannot speak at all from one that has
    # not yet learnt to generalise). Validation losses and probes use the validation split either way
    sample_from: Literal["validation", "training"] = "validation"
    n_cross: NonNegInt = 8
    n_unseen: NonNegInt = 16
    max_sample_frames: PosInt = 320  # codec frames generated per sample, at most
    temperature: float = Field(0.8, ge=0)  # 0 = greedy
    top_k: PosInt = 50
    seed: int = 1234
    # the final stage's folder is logged as an MLflow pyfunc model ("model" in the evaluate run);
    # a name here also registers it in the model registry under that name
    register_model: str | None = None

    # audio judges (issue 16): ground truth, codec resynthesis and each stage, seen and unseen speakers
    audio_judges: bool = True  # judge every request of the plan (ground truth, resynthesis, each stage)
    utterances: Path = Path("metrics/evaluate_utterances.csv")  # one row per judged clip
    # a local ASR folder (CTranslate2 Whisper or Hugging Face); None = audio_metrics.asr_judge
    asr: Path | None = None
    speaker_encoder: Path | None = None  # a local HF speaker-embedding folder; None = resemblyzer GE2E
    audio_metrics: AudioMetricsParams = AudioMetricsParams()
