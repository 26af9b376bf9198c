"""Self-contained model folders: `models/<stage>/` holds everything synthesis needs.

    export_model_folder(out, stage, model, cfg, src, data, max_ref_frames)   # the trainer, at the end
    model, cfg, info, table = load_folder("models/stage3")                    # synthesis, anywhere
    model, cfg = load_model("models/stage2", table=src.table)                 # evaluate: adapters on a table

Layout (every JSON path is relative to the folder; copy the folder anywhere and it still loads):

    model.safetensors        weights (the caption adapters included, for a later stage to train on)
    config.json              TTSConfig; caption_vectors = "caption"
    synthesis.json           what synthesis reads: caption table, codec, mel settings, frames per second,
                             lexicon, reference settings, provenance note
    caption/                 the caption vector table with the adapters BAKED in (the eval-mode
                             LoRA/VAE outputs of every row) + its tokenizer; synthesis looks captions up
                             here and never runs the adapters. With a contextualiser, it is kept too,
                             with the raw rows it reads (`context_vectors`)
    speakers.json            the speaker mapping (name -> id) the model was trained with
    references.safetensors   one reference log-mel per validation speaker (pick a voice by name)
    codec/                   the random-init codec's weights + config, or codec.json naming the
                             official weights (path relative to the folder, and their sha256)
    bins.json                the annotate stage's attribute bins of the training corpus (what "high
                             pitch" means), when the stage's manifest has them beside it: a fine-tune
                             (`tristage finetune`) bins its data with them, so its captions mean the same
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from tristage.errors import UserError
from tristage.features.codec import codec_speaks
from tristage.fsio import atomic_dir, atomic_path, read_json, write_json, write_text
from tristage.model.config import TTSConfig
from tristage.model.tts import TTS, build_model, import_class

FORMAT = 1
SYNTHESIS = "synthesis.json"
CAPTION = "caption"
SPEAKERS = "speakers.json"
REFERENCES = "references.safetensors"
CODEC = "codec"
MAX_REFERENCES = 16  # validation speakers stored as named references
BINS = "bins.json"


def _save_caption(folder: Path, table: Any, baked: torch.Tensor) -> None:
    out = copy.copy(table)
    out.vectors = baked
    out.meta = {**getattr(table, "meta", {}), "baked": True}
    with atomic_dir(folder) as tmp:
        out.save(tmp)
        tok = Path(getattr(table, "folder", None) or "") / "tokenizer"
        if getattr(table, "folder", None) and tok.is_dir() and not (tmp / "tokenizer").exists():
            shutil.copytree(tok, tmp / "tokenizer")


def _codec_entry(out: Path, meta: dict) -> dict:
    """Copy (random-init) or reference (official) the codec that made the training codes."""
    info = dict(meta.get("codec") or {})
    entry = dict(
        name=info.get("name", "unknown"),
        pretrained=bool(info.get("pretrained", False)),
        speech=codec_speaks(info),
        kind=info.get("kind", "dac"),
        sample_rate=info.get("sample_rate", meta.get("sample_rate")),
        hop_length=info.get("hop_length", meta.get("hop_length")),
        dir=None,
        weights=None,
        sha256=info.get("sha256"),
    )
    if info.get("path"):  # official weights: referenced, not copied (hundreds of MB)
        entry["weights"] = os.path.relpath(info["path"], out.resolve())
        entry["weights_name"] = Path(info["path"]).name
    elif meta.get("dir") and (Path(meta["dir"]) / "codec.safetensors").is_file():
        with atomic_dir(out / CODEC) as tmp:
            for name in ("codec.safetensors", "codec.json"):
                shutil.copy2(Path(meta["dir"]) / name, tmp / name)
        entry["dir"] = CODEC
    return entry


def _copy_bins(out: Path, data) -> str | None:
    """The annotate stage's bins.json beside the training manifest, copied into the folder -> its name."""
    prepared = getattr(getattr(data, "sp", None), "prepared", None)
    bins = Path(prepared).parent / BINS if prepared else None
    if bins is None or not bins.is_file():
        return None
    write_text(out / BINS, bins.read_text(encoding="utf-8"))
    return BINS


def export_model_folder(out: Path, stage: str, model, cfg: TTSConfig, src, data, max_ref_frames: int) -> None:
    """Write config.json and everything synthesis needs next to model.safetensors (see module doc)."""
    from safetensors.torch import save_file

    from tristage.captions.lexicon import LEXICON

    out = Path(out)
    table = src.table
    from tristage.captions.peft import enhanced_table

    _save_caption(out / CAPTION, table, enhanced_table(model.caption_peft, len(table.vectors)))
    saved = dataclasses.replace(cfg, caption_vectors=CAPTION)
    write_text(out / "config.json", saved.to_json() + "\n")
    write_json(out / SPEAKERS, dict(src.mapping))
    refs: dict[str, torch.Tensor] = {}
    for i in data.val_idx:  # one reference per validation speaker, the first of its utterances
        ex = data.examples[i]
        if ex.speaker not in refs and len(refs) < MAX_REFERENCES:
            mel = data.features(i)[0]
            s = max(0, (mel.shape[0] - max_ref_frames) // 2)
            refs[ex.speaker] = mel[s : s + max_ref_frames].float().contiguous()
    with atomic_path(out / REFERENCES, suffix=".safetensors") as tmp:
        save_file(refs, str(tmp), metadata={"ids": json.dumps({s: "" for s in refs})})
    meta = dict(src.store.meta)
    codec = _codec_entry(out, meta)
    mel = dict(meta.get("mel") or {})
    mel.setdefault("n_mels", cfg.n_mels)
    fps = (
        (codec["sample_rate"] / codec["hop_length"])
        if codec["sample_rate"] and codec["hop_length"]
        else meta.get("frames_per_second")
    )
    lexicon = (getattr(table, "meta", {}) or {}).get("lexicon") or LEXICON
    # a record literal; `duplicates` pairs its shape with testing/corpus.py's row (other fields)
    write_json(
        out / SYNTHESIS,
        dict(
            format=FORMAT,
            stage=stage,
            caption=CAPTION,
            caption_baked=True,
            speakers=SPEAKERS,
            references=REFERENCES,
            codec=codec,
            mel=mel,
            frames_per_second=fps,
            max_ref_frames=max_ref_frames,
            lexicon=lexicon,
            caption_encoder=cfg.caption_encoder,
            bins=_copy_bins(out, data),
            note=f"codec: {cfg.codec}; caption encoder: {cfg.caption_encoder}",
        ),
    )


class BakedCaptions(torch.nn.Module):
    """The caption module at synthesis time: a lookup in the adapter-baked table (no adapters run),
    plus the table's contextualiser's correction (it reads the raw rows, `table.context_vectors`)."""

    def __init__(self, table):  # a caption table, or just its (N, dim) vectors
        super().__init__()
        vectors = getattr(table, "vectors", table)
        self.register_buffer("vectors", torch.as_tensor(vectors, dtype=torch.float32), persistent=False)
        ctx = getattr(table, "contextualiser", None)
        self.context = copy.deepcopy(ctx) if ctx is not None else None
        if ctx is not None:
            self.register_buffer("context_vectors", torch.as_tensor(table.context_vectors), persistent=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, context: bool = True):
        from tristage.captions.peft import CaptionStates

        mask = mask.bool()
        zero = self.vectors.new_zeros(())
        states = self.vectors[ids] * mask.unsqueeze(-1)
        if context and self.context is not None:
            with torch.no_grad():
                states = states + self.context.correction(self.context_vectors, ids, mask)
        return CaptionStates(states=states, mask=mask, kl=zero, ortho=zero)


def read_info(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    p = folder / SYNTHESIS
    if not p.is_file():
        if (folder / "model.safetensors").is_file():
            raise UserError(
                f"{p} not found: {folder} was written before model folders were self-contained; "
                f"rerun its stage (dvc repro {folder.name})"
            )
        raise UserError(
            f"{folder}: not a model folder (no model.safetensors / {SYNTHESIS}); "
            "pass a trained stage's folder, e.g. models/stage3"
        )
    return read_json(p)


def load_folder(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """(TTS model in eval mode with the baked caption table, its TTSConfig, synthesis.json, caption table)."""
    from safetensors.torch import load_file


    folder = Path(folder)
    info = read_info(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise UserError(f"{p} not found: the model folder is incomplete")
    cfg = TTSConfig.from_dict(json.loads(cfg_path.read_text()))
    table = import_class(cfg.caption_table).load(folder / info["caption"])
    model = TTS(cfg, BakedCaptions(table))
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("caption_peft.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{weights}: does not match {cfg_path} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device).eval(), cfg, info, table


def load_references(folder: str | os.PathLike, info: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    p = Path(folder) / info.get("references", REFERENCES)
    return dict(load_file(str(p))) if p.is_file() else {}


def load_codec_from_folder(
    folder: str | os.PathLike, info: dict, device: str = "cpu", weights: str | None = None
):
    """The codec that decodes this model's codes (None when the folder has none, e.g. a fake corpus)."""
    from tristage.features.codec import load_official, load_saved, sha256

    folder = Path(folder)
    c = info["codec"]
    if c.get("dir"):
        model, _ = load_saved(folder / c["dir"])
        return model.to(device).eval()
    if c.get("weights") or weights:
        path = Path(weights) if weights else (folder / c["weights"])
        if not path.is_file():
            raise UserError(
                f"codec weights {c.get('weights_name')} not found at {path}; pass the file "
                f"(codec_weights= / --codec-weights), sha256 {c.get('sha256')}"
            )
        if c.get("sha256") and sha256(path) != c["sha256"]:
            raise UserError(
                f"{path}: sha256 differs from the codec the model was trained with ({c['sha256']})"
            )
        model, _ = load_official(path)
        return model.to(device).eval()
    return None


# the training stages' folders (a caption table to build the adapters on) ---------------------------
def load_caption_table(cfg: TTSConfig, caption_vectors: str | Path | None = None):
    folder = caption_vectors or cfg.caption_vectors
    if folder is None or not Path(folder).exists():
        raise UserError(f"{folder}: caption vector table not found; run `dvc repro caption_vectors` "
                        "or pass caption_vectors=")
    return import_class(cfg.caption_table).load(folder)


def load_model(stage_dir: str | Path, device: str | torch.device = "cpu", table: Any = None,
               caption_vectors: str | Path | None = None) -> tuple[TTS, TTSConfig]:
    """`models/<stage>/` -> (model in eval mode, its TTSConfig)."""
    from safetensors.torch import load_file

    stage_dir = Path(stage_dir)
    weights, cfg_path = stage_dir / "model.safetensors", stage_dir / "config.json"
    for p in (weights, cfg_path):
        if not p.is_file():
            raise UserError(f"{p} not found: run the stage that writes {stage_dir} first "
                            f"(dvc repro {stage_dir.name})")
    cfg = TTSConfig.from_dict(json.loads(cfg_path.read_text()))
    if table is None and caption_vectors is None and (stage_dir / "synthesis.json").is_file():
        return load_folder(stage_dir, device)[:2]  # a self-contained folder: its baked caption table
    if table is None:
        folder = caption_vectors or cfg.caption_vectors
        if folder is not None and not Path(folder).is_absolute():
            folder = stage_dir / folder if (stage_dir / folder).exists() else folder
        table = load_caption_table(cfg, folder)
    model = build_model(cfg, table)
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise UserError(
            f"{weights}: does not match {cfg_path} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device).eval(), cfg
