"""Experiment (not part of `make bench`): does a decoder use its transcript and its emotion reference?

    python -m benchmarks.experiments.text_use models/stage1
    python -m benchmarks.experiments.text_use models/stage1 --weights models/stage1/checkpoints/step-001000

The validation split's teacher-forced mel_loss (stage1's split and references, as the trainer's
evaluation builds them) three ways: as trained; with each row's transcript swapped for the next row's
in the batch; with each row's emotion reference swapped likewise. A decoder that reads its text loses
more with the swapped transcripts than the noise between checkpoints; one that ignores a conditioner
gives the same loss with it swapped. `--weights` scores a checkpoint folder with the model folder's
config (the checkpoints of a run in progress).

It also prints the teacher-forced top-1 accuracy of each codebook, on the validation split and on as
many training utterances (`--train-utterances`): codebook 0 carries most of what is said, and the gap
between the splits shows how much of it is memorised.
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a stage's model folder (config.json)")
    ap.add_argument("--weights", help="a checkpoint folder whose model.safetensors to score instead")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--caption-vectors", default="data/caption_vectors")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train-utterances", type=int, default=96,
                    help="training utterances for the top-1 table")
    a = ap.parse_args(argv)

    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    model, cfg, sp, data = load_stage1(a.model, a.params, a.caption_vectors)
    if a.weights:
        model.load_state_dict(load_file(str(Path(a.weights) / "model.safetensors")), strict=True)
    swaps = {"as trained": (), "transcripts swapped": ("text", "text_mask"),
             "emotion references swapped": ("emo_mel", "emo_mask")}
    total, n = dict.fromkeys(swaps, 0.0), 0
    with torch.no_grad():
        for batch in data.val_batches(a.batch):
            B = batch["text"].shape[0]
            if B < 2:
                continue
            nxt = torch.roll(torch.arange(B), 1)
            for name, keys in swaps.items():
                swapped = {k: (v[nxt] if k in keys else v) for k, v in batch.items()}
                total[name] += float(model(swapped)["mel_loss"]) * B
            n += B
    print(f"{a.weights or a.model}: validation mel_loss over {n} utterances")
    for name, v in total.items():
        print(f"  {name:28s} {v / n:.4f}   ({v / n - total['as trained'] / n:+.4f})")
    train = data.train_idx[:a.train_utterances]
    train_batches = [data.collate(train[i:i + a.batch], [sp.seed, 999_979], val=True)
                     for i in range(0, len(train), a.batch)]
    print("teacher-forced top-1 per codebook")
    splits = (("validation", data.val_batches(a.batch)), (f"training ({len(train)})", train_batches))
    for split, batches in splits:
        print(f"  {split:28s} " + " ".join(f"{v:.3f}" for v in codebook_top1(model, batches, cfg.pad_id)))


def load_stage1(model_dir: str, params: str, caption_vectors: str):
    """A stage's model folder (in eval mode), its config, stage1's params and the training data as
    stage 1 split it -> (model, cfg, stage1 params, TrainData)."""
    from tristage.config import load_params
    from tristage.model.folder import load_model
    from tristage.training.data import TrainData, load_sources

    model, cfg = load_model(model_dir, caption_vectors=caption_vectors)
    model.eval()
    sp = load_params(params).stage1
    data = TrainData(load_sources(sp), sp, cfg.max_text_len, cfg.max_frames, frontend=cfg.text_frontend,
                     voice=cfg.phoneme_voice)
    return model, cfg, sp, data


def codebook_top1(model, batches, pad_id: int) -> list[float]:
    """Teacher-forced top-1 accuracy of each codebook over the batches' non-pad targets."""
    import torch

    correct = count = 0
    with torch.no_grad():
        for batch in batches:
            out = model(batch)
            keep = out["target"] != pad_id  # (B, K, S)
            hit = (out["logits"].argmax(-1) == out["target"]) & keep
            correct = correct + hit.sum(dim=(0, 2))
            count = count + keep.sum(dim=(0, 2))
    return (correct / count.clamp(min=1)).tolist()


if __name__ == "__main__":
    main()
