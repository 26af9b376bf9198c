"""Small in-memory stand-ins for the upstream stages (features store, caption vector table,
caption PEFT), with the same interfaces. For tests and benchmarks of the trainer alone.

The fake codes are learnable: each utterance's codes follow a speaker- and emotion-dependent
pattern plus a little noise, and the fake mels carry the speaker (frequency band) and the
emotion (energy contour).
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from tristage.captions.config import CaptionAdapters
from tristage.model.config import PRESETS
from tristage.testing.corpus import EMOTIONS
from tristage.training.data import Sources


class FakeStore:
    def __init__(self, items: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict):
        self._items = items
        self.ids = sorted(items)
        self.meta = meta
        rows = [dict(id=i, shard=0, row=r, n_frames=items[i][1].shape[1], n_mel_frames=items[i][0].shape[0],
                     duration=items[i][0].shape[0] / 62.5) for r, i in enumerate(self.ids)]
        self.index = pd.DataFrame(rows)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, uid: str):
        mel, codes = self._items[uid]
        return torch.from_numpy(mel), torch.from_numpy(codes)


class FakeCaptionTable:
    def __init__(self, vocab: list[str], dim: int = 16, seed: int = 0):
        self.vocab = {w: i + 1 for i, w in enumerate(vocab)}  # 0 = unknown
        self.dim = dim
        self.seed = seed
        self.vectors = torch.from_numpy(
            np.random.default_rng(seed).standard_normal((len(vocab) + 1, dim)).astype(np.float32))
        self.meta = {"name": "fake", "pretrained": False}

    def encode(self, caption: str) -> list[int]:
        return [self.vocab.get(w, 0) for w in caption.lower().replace(",", " ").replace(".", " ").split()]

    def save(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "fake_table.json").write_text(json.dumps(dict(vocab=list(self.vocab), dim=self.dim,
                                                                      seed=self.seed)))
        from safetensors.numpy import save_file

        save_file({"vectors": np.ascontiguousarray(np.asarray(self.vectors, dtype=np.float32))},
                  str(Path(folder) / "fake_vectors.safetensors"))

    @classmethod
    def load(cls, folder: str | Path) -> "FakeCaptionTable":
        d = json.loads((Path(folder) / "fake_table.json").read_text())
        table = cls(d["vocab"], d["dim"], d["seed"])
        saved = Path(folder) / "fake_vectors.safetensors"
        if saved.is_file():  # saved vectors win (e.g. adapter-baked ones)
            from safetensors.numpy import load_file

            table.vectors = torch.from_numpy(load_file(str(saved))["vectors"])
        return table


class FakeCaptionPEFT(nn.Module):
    """Frozen vectors + a LoRA-like low-rank adapter; kl / ortho are small regularisers."""

    def __init__(self, table: FakeCaptionTable, adapters: CaptionAdapters = CaptionAdapters(lora_rank=4)):
        super().__init__()
        rank = adapters.lora_rank
        self.register_buffer("vectors", table.vectors.clone(), persistent=False)
        self.lora_a = nn.Linear(table.dim, rank, bias=False)
        self.lora_b = nn.Linear(rank, table.dim, bias=False)
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        x = self.vectors[ids]  # (B, L, D)
        states = x + self.lora_b(self.lora_a(x))
        kl = (self.lora_b.weight ** 2).mean()
        a = self.lora_a.weight
        ortho = ((a @ a.T - torch.eye(a.shape[0], device=a.device)) ** 2).mean()
        return types.SimpleNamespace(states=states, mask=mask, kl=kl, ortho=ortho)


def fake_sources(
    n_speakers: int = 4,
    utts_per_speaker: int = 8,
    n_codebooks: int = 2,
    codebook_size: int = 16,
    n_mels: int = 8,
    min_frames: int = 12,
    max_frames: int = 24,
    seed: int = 0,
    mapped_speakers: int | None = None,
    table_dir: str | Path | None = None,
) -> Sources:
    rng = np.random.default_rng(seed)
    items, rows = {}, []
    for s in range(n_speakers):
        for u in range(utts_per_speaker):
            uid = f"spk{s:02d}_{u:03d}"
            emo = EMOTIONS[u % len(EMOTIONS)]
            T = int(rng.integers(min_frames, max_frames + 1))
            Tm = 2 * T
            t = np.arange(T)
            step = 1 + EMOTIONS.index(emo)
            codes = np.stack([(3 * s + k + step * t) % codebook_size for k in range(n_codebooks)])
            noise = rng.random(codes.shape) < 0.1
            codes = np.where(noise, rng.integers(0, codebook_size, codes.shape), codes).astype(np.int16)
            mel = rng.standard_normal((Tm, n_mels)).astype(np.float32) * 0.3
            mel[:, s % n_mels] += 2.0
            mel += (EMOTIONS.index(emo) - 1.5) * np.linspace(0, 1, Tm)[:, None]
            items[uid] = (mel.astype(np.float16), codes)
            words = ["a", f"speaker{s}", "sounding", emo, "voice"]
            rows.append(dict(id=uid, text=f"utterance {u} of speaker {s}", speaker=f"spk{s:02d}",
                             caption=" ".join(words), emotion=emo))
    vocab = sorted({w for r in rows for w in r["caption"].split()})
    table = FakeCaptionTable(vocab, dim=16, seed=seed)
    if table_dir is not None:
        table.save(table_dir)
    k = n_speakers if mapped_speakers is None else mapped_speakers
    mapping = {f"spk{s:02d}": s for s in range(k)}
    meta = dict(n_codebooks=n_codebooks, codebook_size=codebook_size, mel=dict(n_mels=n_mels),
                codec=dict(name="fake", pretrained=False))
    return Sources(
        store=FakeStore(items, meta),
        manifest=pd.DataFrame(rows),
        table=table,
        mapping=mapping,
        n_codebooks=n_codebooks,
        codebook_size=codebook_size,
        n_mels=n_mels,
        caption_module="tristage.testing.fakes:FakeCaptionPEFT",
        caption_table="tristage.testing.fakes:FakeCaptionTable",
        caption_vectors=str(table_dir) if table_dir else None,
        codec="random-init fake codec",
        caption_encoder="random-init fake encoder",
    )


TINY_MODEL = dict(PRESETS["toy"])  # the `toy` model preset: the sizes every trainer test uses


def write_tiny_params(folder: str | Path, steps: int = 8, dropout: float = 0.0, **stage_overrides) -> Path:
    """A params.yaml in `folder` for the three training stages at toy size (all paths inside `folder`).
    `stage_overrides` apply to every training stage (e.g. checkpoint_every=2)."""
    import yaml

    folder = Path(folder)
    common = dict(steps=steps, batch_size=4, eval_every=4, log_every=2, checkpoint_every=4, val_fraction=0.15,
                  warmup_steps=2, lr=2e-3, max_ref_frames=16, window=4, device="cpu")
    common.update(stage_overrides)
    data = {s: dict(common) for s in ("stage1", "stage2", "stage3")}
    data["stage1"]["model"] = dict(preset="toy", dropout=dropout)
    data["stage1"]["peft"] = dict(lora_rank=4)  # the fake caption module's adapter (rank 16 in the seed)
    (folder / "params.yaml").write_text(yaml.safe_dump(data))
    return folder / "params.yaml"


def default_fake_sources(folder: str | Path) -> Sources:
    """The fake corpus the test subprocesses use (table saved under folder/caption_vectors)."""
    return fake_sources(n_speakers=4, utts_per_speaker=8, table_dir=Path(folder) / "caption_vectors")


def main(argv=None) -> int:
    """`python -m tristage.testing.fakes STAGE --params P [--set k=v]`: run a stage on the fake corpus
    (the subprocess side of the resume and DDP tests)."""
    import argparse
    import logging

    from tristage.config import load_params
    from tristage.training.trainer import train_stage

    ap = argparse.ArgumentParser()
    ap.add_argument("stage")
    ap.add_argument("--params", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    params = load_params(args.params, args.overrides)
    train_stage(args.stage, params, None, sources=default_fake_sources(Path(args.params).parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def fake_sources_with_codec(folder: str | Path) -> Sources:
    """`default_fake_sources` plus a real (tiny, random-init) DAC codec matching the fake codes (2 x 16)
    saved under folder/features, so model folders trained on it can be decoded to audio."""
    from tristage.features.codec import prepare_codec
    from tristage.features.config import CodecParams, DacParams, MelParams

    src = default_fake_sources(folder)
    codec_dir = Path(folder) / "features"
    codec_dir.mkdir(parents=True, exist_ok=True)
    dac = DacParams(n_codebooks=src.n_codebooks, codebook_size=src.codebook_size)
    _, info = prepare_codec(CodecParams(kind="dac", dac=dac), codec_dir)
    src.store.meta.update(dir=str(codec_dir), codec=info,
                          mel=MelParams(n_mels=src.n_mels).model_dump(mode="json"))
    return src


def train_fake_model(folder: str | Path, steps: int = 4, stages=("stage1", "stage2", "stage3")) -> Path:
    """Train the stages for a few steps on the fake corpus (with a real tiny codec); return
    folder/models/<last stage>, a self-contained model folder (for synthesis tests and the demo)."""
    from tristage.config import load_params
    from tristage.training.trainer import train_stage

    folder = Path(folder)
    params = load_params(write_tiny_params(folder, steps=steps, eval_every=steps, checkpoint_every=steps))
    src = fake_sources_with_codec(folder)
    for stage in stages:
        train_stage(stage, params, None, sources=src)
    return folder / "models" / stages[-1]
