"""Params of the `evaluate` stage."""
from __future__ import annotations

from tristage.schema import Path, PosInt, Section


class EvaluateParams(Section):
    stages: list[str] = ["stage1", "stage2", "stage3"]
    models_dir: Path = Path("models")
    metrics: Path = Path("metrics/evaluate.json")
    plots_dir: Path = Path("plots/evaluate")
    samples_dir: Path = Path("data/samples")
    n_samples: PosInt = 4
    seed: int = 1234
