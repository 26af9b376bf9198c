"""Params of a fine-tune (`<work>/finetune.yaml`, key `finetune`), written by `tristage finetune`.

The fine-tune's own DVC pipeline reads them per step (dvc.yaml `params:`), so a changed `train.steps`
reruns the training and what follows it, and nothing before it. Relative paths are relative to the
file's folder, as in params.yaml.
"""
from __future__ import annotations

from typing import Literal

import yaml
from pydantic import ValidationError

from tristage.errors import ParamsError
from tristage.schema import Field, Fraction, NonNegFloat, NonNegInt, Path, PosFloat, PosInt, Section
from tristage.training.config import GuidedAttentionParams, InputNoiseParams

FORMATS = ("ljspeech", "libritts", "librispeech", "auto")


class TrainParams(Section):
    """The fine-tune's training run; what trains is the preset (`training/presets.py`)."""

    preset: Literal["finetune"] = "finetune"
    unfreeze: list[str] = []  # modules the preset freezes that train anyway (e.g. [speaker_perceiver])
    steps: PosInt = 150
    lr: PosFloat = 2e-4
    lr_scale: PosFloat = 0.5  # stage 3's: the decoder moves as far as in stage 3, no further
    batch_size: PosInt = 8
    warmup_steps: NonNegInt = 10
    min_lr_ratio: Fraction = 0.1
    weight_decay: NonNegFloat = 0.01
    grad_clip: PosFloat = 1.0
    val_fraction: Fraction = 0.1  # of the training utterances: picks the best step (handover: best)
    eval_every: PosInt = 25
    seed: int = 1234
    threads: NonNegInt = 2  # torch CPU threads (0 = every core)
    device: str = "cpu"  # cpu | cuda | auto
    bucket_batches: PosInt = 8
    speaker_ref: Literal["other", "same"] = "other"
    emotion_ref: Literal["other", "same"] = "same"
    max_ref_frames: PosInt | None = None  # None = the model folder's (what it was trained with)
    guided_attention: GuidedAttentionParams = GuidedAttentionParams()  # as a stage's (off by default)
    input_noise: InputNoiseParams = InputNoiseParams()  # as a stage's (off by default)


class ReportParams(Section):
    """Before (base model, the user's clip as reference) vs after (fine-tuned), on the held-out utterances."""

    seed: int = 0
    temperature: NonNegFloat = 0.8
    top_k: PosInt | None = 50
    length_factor: PosFloat = 1.5  # max seconds = this x the held-out recording's length
    intelligibility: bool = True
    speaker_sim: bool = True
    dnsmos: bool = True
    caption_adherence: bool = True
    leakage_probe: bool = True
    asr_judge: Literal["auto", "whisper", "pocketsphinx"] = "auto"
    asr: Path | None = None
    speaker_encoder: Path | None = None
    threads: NonNegInt = 2


class TrackParams(Section):
    enabled: bool = True  # log an MLflow run (report, audio, model); TRISTAGE_TRACKING=0 also turns it off
    register_as: str | None = None  # register the model under this name (tristage finetune --register)


class FinetuneParams(Section):
    model: Path  # the base model folder (models/stage3 or a copy)
    data: Path  # the user's recordings
    format: Literal["ljspeech", "libritts", "librispeech", "auto"] = "auto"
    speaker: str = Field(min_length=1)
    out: Path  # the fine-tuned model folder
    heldout: PosInt = 3  # utterances kept out of training for the report (seeded)
    min_utterances: PosInt = 8  # utterances to train on, at least
    seed: int = 1234
    train: TrainParams = TrainParams()
    report: ReportParams = ReportParams()
    track: TrackParams = TrackParams()
    # where the command ran (MLflow's default mlflow.db); in no step's DVC params, so it never reruns one
    project: Path | None = None


def load_finetune(path: str | Path) -> FinetuneParams:
    """`finetune.yaml` -> validated params with absolute paths (ParamsError naming the key)."""
    from tristage.config import resolve_paths

    path = Path(path).resolve()
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("finetune")
        fp = FinetuneParams.model_validate(data)
    except (yaml.YAMLError, AttributeError) as exc:
        raise ParamsError(f"{path}: not a finetune params file ({exc})".replace("\n", " ")) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(["finetune", *map(str, err["loc"])])
        raise ParamsError(f"{path}: {key}: {err['msg']}") from None
    return resolve_paths(fp, path.parent)
