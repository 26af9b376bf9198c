"""Caption fidelity of a trained model: its caption module (the trained LoRA / VAE adapters, eval
mode) against the real caption encoder, on the held-out captions of the caption_vectors stage.

    held = heldout_states(table)                    # once: the held-out captions + the encoder's states
    cos = caption_cosine(model.caption_peft, table, held)   # per stage: mean caption-level cosine

The held-out captions and the encoder's states for them are the ones the caption_vectors stage saved
beside the table (`captions.build.load_heldout`), so evaluate never runs the encoder.
Each table row goes through the model's adapters
once (eval mode: VAE mean path, no sampling); the rows standing for a caption's tokens are spread
over their token positions and mean-pooled, as the caption_vectors stage scores the raw table. With
adapters at their zero init, the figure equals the table's `caption_cosine_mean`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("tristage.evaluate")


@dataclasses.dataclass
class HeldOut:
    captions: list[str]
    states: list[np.ndarray]  # per caption (T, dim): the encoder's token states
    encoder: str


def heldout_states(table) -> HeldOut | None:
    """The encoder's states of the caption_vectors stage's held-out captions, as that stage saved them
    beside the table (`heldout.json` + `heldout.safetensors`; no encoder run here). None, with a
    warning, when the table has none (a test double, an empty held-out split)."""
    from tristage.captions.build import load_heldout

    folder = getattr(table, "folder", None)
    if not hasattr(table, "lookup") or folder is None or not (Path(folder) / "heldout.json").is_file():
        log.warning("caption_cosine_mean: no held-out captions saved beside the caption table (%s); "
                    "reported as None (dvc repro caption_vectors)", folder)
        return None
    captions, states = load_heldout(folder)
    if not captions:
        log.warning("caption_cosine_mean: no held-out captions (caption_vectors.heldout_fraction); "
                    "reported as None")
        return None
    enc = table.meta.get("encoder") if isinstance(getattr(table, "meta", None), dict) else None
    name = enc.get("name") if isinstance(enc, dict) else enc
    return HeldOut(captions, states, str(name))


def caption_cosine(caption_module, table, held: HeldOut | None) -> float | None:
    """Mean caption-level cosine of the model's enhanced caption states vs the encoder's
    (None without `held`)."""
    if held is None:
        return None
    from tristage.captions.build import Fidelity
    from tristage.captions.peft import enhanced_table

    fid = Fidelity(table, vectors=enhanced_table(caption_module, len(table)).numpy())
    fid.add(held.captions, held.states)
    return fid.result()["caption_cosine_mean"]
