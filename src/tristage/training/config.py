"""Params of the three training stages. Stage differences are data: see `presets.py`."""
from __future__ import annotations

from tristage.schema import Field, NonNegFloat, Path, PosFloat, PosInt, Section


class StageParams(Section):
    out_dir: Path = Path("models/stage1")
    init_from: Path | None = None  # previous stage's out_dir
    metrics: Path = Path("metrics/stage1.json")
    plots_dir: Path = Path("plots/stage1")
    prepared: Path = Path("data/prepared/manifest.parquet")
    features: Path = Path("data/features")
    caption_vectors: Path = Path("data/caption_vectors")
    speaker_mapping: Path = Path("data/speakers/speaker_mapping.json")
    lr: PosFloat = 2e-4
    lr_scale: PosFloat = 1.0
    steps: PosInt = 300
    batch_size: PosInt = 16
    seed: int = 1234


class Stage1Params(StageParams):
    pass


class Stage2Params(StageParams):
    out_dir: Path = Path("models/stage2")
    init_from: Path | None = Path("models/stage1")
    metrics: Path = Path("metrics/stage2.json")
    plots_dir: Path = Path("plots/stage2")
    grl_lambda: NonNegFloat = 1.0
    speaker_loss_weight: NonNegFloat = 0.1
    speaker_acc_band: tuple[float, float] = (0.3, 0.6)


class Stage3Params(StageParams):
    out_dir: Path = Path("models/stage3")
    init_from: Path | None = Path("models/stage2")
    metrics: Path = Path("metrics/stage3.json")
    plots_dir: Path = Path("plots/stage3")
    lr_scale: PosFloat = 0.5
