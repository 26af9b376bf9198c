"""Experiment (not part of `make bench`): teacher-forced accuracy against free-running agreement.

    python -m benchmarks.experiments.free_running models/stage1
    python -m benchmarks.experiments.free_running models/stage1 --utterances 16 --corrupt 0.1

For the first `--utterances` training and validation utterances (stage1's split and references, as
the trainer's evaluation builds them), three figures for codebook 0, the one that carries most of what
is said:

- teacher-forced top-1: the model's argmax given the recorded history;
- the same with a fraction `--corrupt` of the input codes of codebooks 1.. replaced by random codes
  (codebook 0's history and every target kept): how much codebook 0 leans on the fine codebooks' exact
  history;
- free-running agreement: greedy generation (the same conditioning, the recorded length) against the
  recording, and the first frame where it departs from it.

Greedy generation reproduces the teacher-forced argmax exactly while its history is the recorded one
(tests/test_model.py), so a model with a high teacher-forced top-1 that departs within a few frames is
thrown off by its own codes, not by a bug in generation.
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a stage's model folder (config.json)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--caption-vectors", default="data/caption_vectors")
    ap.add_argument("--utterances", type=int, default=8, help="per split")
    ap.add_argument("--corrupt", type=float, default=0.1, help="fraction of fine-codebook inputs replaced")
    a = ap.parse_args(argv)

    import torch

    from benchmarks.experiments.text_use import codebook_top1, load_stage1
    from tristage.model.decoder import corrupt_codes

    model, cfg, sp, data = load_stage1(a.model, a.params, a.caption_vectors)
    text_of = data.src.manifest.drop_duplicates("id").set_index("id")["text"]
    print(f"{a.model}: codebook 0 over {a.utterances} utterances per split")
    noisy_head = f"fine inputs {a.corrupt:.0%} random"
    print(f"  {'split':10s} {'teacher-forced':>14s} {noisy_head:>22s} {'free-running':>12s} "
          f"{'first departure (frames)':>26s}")
    splits = (("training", data.train_idx[:a.utterances]), ("validation", data.val_idx[:a.utterances]))
    for split, idx in splits:
        batch = data.collate(idx, [sp.seed, 999_979], val=True)
        lengths = [int(n) for n in batch["code_lengths"]]
        clean = codebook_top1(model, [batch], cfg.pad_id)[0]
        g = torch.Generator().manual_seed(0)  # the training's corruption, on codebooks 1.. only
        noisy = dict(batch, codes=corrupt_codes(batch["codes"], (0.0, a.corrupt), cfg.codebook_size, g))
        corrupted = codebook_top1(model, [noisy], cfg.pad_id)[0]
        spk = [batch["spk_mel"][j][batch["spk_mask"][j]] for j in range(len(idx))]
        emo = [batch["emo_mel"][j][batch["emo_mask"][j]] for j in range(len(idx))]
        gen = model.generate_batch([text_of[data.examples[i].id] for i in idx],
                                   [torch.tensor(data.examples[i].caption) for i in idx], spk, emo,
                                   max_frames=lengths, greedy=True, stop=False)
        agree, first = [], []
        for j, codes in enumerate(gen):
            same = codes[0, :lengths[j]] == batch["codes"][j, 0, :lengths[j]]
            agree.append(float(same.float().mean()))
            first.append(int((~same).nonzero()[0]) if (~same).any() else lengths[j])
        print(f"  {split:10s} {clean:14.3f} {corrupted:22.3f} {sum(agree) / len(agree):12.3f} "
              f"{' '.join(map(str, first)):>26s}")


if __name__ == "__main__":
    main()
