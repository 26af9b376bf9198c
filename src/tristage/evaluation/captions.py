"""Caption fidelity of a trained model: its caption module (the trained LoRA / VAE adapters, eval
mode) against the real caption encoder, on the held-out captions of the caption_vectors stage.

    held = heldout_states(params, table)            # once: the encoder's states of the held-out captions
    cos = caption_cosine(model.caption_peft, table, held)   # per stage: mean caption-level cosine

The held-out captions are recomputed exactly as the caption_vectors stage split them (its manifest,
`heldout_fraction`, `seed`), and the encoder is the one the table was built from (its `encoder` param,
or the tiny encoder saved in the table folder). Each table row goes through the model's adapters
once (eval mode: VAE mean path, no sampling); the rows standing for a caption's tokens are spread
over their token positions and mean-pooled, as the caption_vectors stage scores the raw table. With
adapters at their zero init, the figure equals the table's `caption_cosine_mean`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("tristage.evaluate")


@dataclasses.dataclass
class HeldOut:
    captions: list[str]
    states: list[np.ndarray]  # per caption (T, dim): the encoder's token states
    encoder: str


def _encoder_dir(cp, table) -> Path | None:
    if cp.encoder is not None:
        return Path(cp.encoder)
    enc = table.meta.get("encoder") if isinstance(getattr(table, "meta", None), dict) else None
    rel = enc.get("path") if isinstance(enc, dict) else None
    folder = getattr(table, "folder", None)
    if rel is None or folder is None:
        return None
    p = Path(rel)
    return p if p.is_absolute() else Path(folder) / p


def heldout_states(params, table, batch_size: int = 64) -> HeldOut | None:
    """The encoder's states of the caption_vectors stage's held-out captions (None, with a warning,
    when the table can't be scored this way: no encoder, no held-out captions, a test double)."""
    from tristage.captions.build import manifest_captions, split_captions
    from tristage.captions.encoder import encode_batches, load_encoder
    from tristage.data.manifest import read_prepared

    cp = params.caption_vectors
    enc_dir = _encoder_dir(cp, table)
    if not hasattr(table, "lookup") or enc_dir is None or not (enc_dir / "config.json").is_file():
        log.warning(
            "caption_cosine_mean: no caption encoder found beside the table (%s); reported as None", enc_dir
        )
        return None
    if not Path(cp.manifest).is_file():
        log.warning("caption_cosine_mean: %s not found; reported as None", cp.manifest)
        return None
    _, held = split_captions(manifest_captions(read_prepared(cp.manifest)), cp.heldout_fraction, cp.seed)
    if not held:
        log.warning(
            "caption_cosine_mean: no held-out captions (caption_vectors.heldout_fraction); reported as None"
        )
        return None
    model, _, info = load_encoder(enc_dir)
    states: list[np.ndarray] = [np.zeros(0)] * len(held)
    for idx, st in encode_batches(model, table.parser, held, batch_size, progress=False):
        for i, s in zip(idx, st):
            states[i] = s
    return HeldOut(held, states, str(info.get("name")))


@torch.no_grad()
def enhanced_table(caption_module, n_rows: int, chunk: int = 4096) -> np.ndarray:
    """Every table row through the caption module in eval mode -> (n_rows, dim) float32."""
    was_training = caption_module.training
    caption_module.eval()
    dev = next((b.device for b in caption_module.buffers()), torch.device("cpu"))
    out = []
    for s in range(0, n_rows, chunk):
        ids = torch.arange(s, min(n_rows, s + chunk), device=dev)[None]  # (1, n)
        out.append(
            caption_module(ids, torch.ones_like(ids, dtype=torch.bool)).states[0].float().cpu().numpy()
        )
    caption_module.train(was_training)
    return np.concatenate(out)


def caption_cosine(caption_module, table, held: HeldOut | None) -> float | None:
    """Mean caption-level cosine of the model's enhanced caption states vs the encoder's
    (None without `held`)."""
    if held is None:
        return None
    from tristage.captions.build import Fidelity

    fid = Fidelity(table, vectors=enhanced_table(caption_module, len(table)))
    fid.add(held.captions, held.states)
    return fid.result()["caption_cosine_mean"]
