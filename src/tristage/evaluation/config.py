"""Params of the `evaluate` stage."""
from __future__ import annotations

from typing import Literal

from tristage.schema import Field, Fraction, Path, PosInt, Section


class EvaluateParams(Section):
    stages: list[Literal["stage1", "stage2", "stage3"]] = Field(["stage1", "stage2", "stage3"], min_length=1)
    models_dir: Path = Path("models")
    metrics: Path = Path("metrics/evaluate.json")
    plots_dir: Path = Path("plots/evaluate")
    samples_dir: Path = Path("data/samples")
    # inputs (the validation split is the training stages' own: same seed and val_fraction)
    prepared: Path = Path("data/prepared/manifest.parquet")
    features: Path = Path("data/features")
    caption_vectors: Path = Path("data/caption_vectors")
    caption_metrics: Path = Path("metrics/caption_vectors.json")
    speaker_mapping: Path = Path("data/speakers/speaker_mapping.json")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: PosInt = 16
    # probes: logistic regression on the frozen emotion vectors of every utterance, fixed split
    probe_test_fraction: Fraction = Field(0.3, gt=0, lt=1)
    max_probe_utterances: PosInt = 2000  # a fixed subset (by seed) above this
    # synthesis: n matched (speaker + emotion from one utterance) + n cross (speaker A, emotion B)
    n_samples: PosInt = 4
    max_sample_frames: PosInt = 200  # codec frames generated per sample, at most
    temperature: float = Field(0.8, ge=0)  # 0 = greedy
    top_k: PosInt = 50
    seed: int = 1234
    # the final stage's folder is logged as an MLflow pyfunc model ("model" in the evaluate run);
    # a name here also registers it in the model registry under that name
    register_model: str | None = None

