"""What a training stage starts from: its architecture (`TTSConfig`) and its initial weights.

stage1 takes the architecture from `stage1.model` and the caption adapters from `stage1.peft`;
stage2/3 read both from the previous stage's `config.json` (and its `model.safetensors`), checked
against the current data.
"""
from __future__ import annotations

import json
from pathlib import Path

from tristage.errors import UserError
from tristage.fsio import sha256
from tristage.model.config import TTSConfig
from tristage.training.data import Sources
from tristage.training.presets import PRESETS


def rel(path: Path, base: Path | None) -> str:
    """`path` relative to `base` when it lies inside it (for messages), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve())) if base else str(path)
    except ValueError:
        return str(path)


def check_init(stage: str, stage_params, base: Path | None) -> None:
    """The previous stage's output must exist before a stage that starts from it does any work."""
    preset = PRESETS[stage]
    if not preset.needs_init:
        return
    if stage_params.init_from is None:
        raise UserError(f"{stage}.init_from: required (the {preset.previous} output folder, e.g. "
                        f"models/{preset.previous})")
    for name in ("model.safetensors", "config.json"):
        path = Path(stage_params.init_from) / name
        if not path.is_file():
            raise UserError(f"{rel(path, base)} not found: run {preset.previous} first "
                            f"(dvc repro {preset.previous})")


def resolve_config(stage: str, params, stage_params, src: Sources) -> tuple[TTSConfig, Path | None]:
    """The architecture: from stage1.model and stage1.peft for stage1; from the previous stage's config.json
    after."""
    preset = PRESETS[stage]
    if not preset.needs_init:
        sizes = params.stage1.model.resolved()
        cfg = TTSConfig(n_codebooks=src.n_codebooks, codebook_size=src.codebook_size, n_mels=src.n_mels,
                        caption_dim=int(src.table.dim), n_speakers=max(len(src.mapping), 1),
                        preset=params.stage1.model.preset, peft=params.stage1.peft.adapters(), **sizes)
        init = None
    else:
        init = Path(stage_params.init_from)
        cfg = TTSConfig.from_dict(json.loads((init / "config.json").read_text()))
        for key, value in (("n_codebooks", src.n_codebooks), ("codebook_size", src.codebook_size),
                           ("n_mels", src.n_mels), ("caption_dim", int(src.table.dim))):
            if getattr(cfg, key) != value:
                raise UserError(f"{init / 'config.json'}: {key}={getattr(cfg, key)} but the data has "
                                f"{value}; rerun {preset.previous} on the current features "
                                f"(dvc repro {preset.previous})")
        if len(src.mapping) > cfg.n_speakers:
            raise UserError(f"{stage_params.speaker_mapping}: {len(src.mapping)} speakers but the "
                            f"{preset.previous} model has a {cfg.n_speakers}-way speaker classifier; "
                            f"rerun {preset.previous}")
    ga = stage_params.guided_attention
    if ga.weight > 0 and ga.heads > cfg.n_head:
        raise UserError(f"{stage}.guided_attention.heads: {ga.heads} but the decoder has {cfg.n_head} heads "
                        "per block")
    if getattr(stage_params, "adversary", None) is not None:  # stage2 decides how its classifier reads
        cfg.classifier_standardize = stage_params.adversary != "seed"
    cfg.caption_module, cfg.caption_table = src.caption_module, src.caption_table
    cfg.caption_vectors = src.caption_vectors
    cfg.codec, cfg.caption_encoder = src.codec, src.caption_encoder
    return cfg, init


def load_init_weights(model, init: Path | None, previous: str | None) -> str:
    """Load the previous stage's weights into `model`; -> their sha256 ("" for a stage from scratch)."""
    if init is None:
        return ""
    from safetensors.torch import load_file

    weights = init / "model.safetensors"
    sha = sha256(weights) if weights.is_file() else ""
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise UserError(f"{weights}: weights don't match its config.json (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); rerun {previous}")
    return sha
