"""The fine-tune's training step: a trained model folder, trained further on the user's utterances.

    metrics = run_train(fp, work)   # -> <work>/model/ (a model folder), <work>/metrics/train.json

- The model is the folder's own (`synthesis.folder.load_folder`): its caption module is the table with
  the trained adapters BAKED in (`BakedCaptions`), never a `CaptionPEFT` over that table with the
  adapter weights loaded again (that would apply the adapters twice). It has no parameters: the
  captions mean exactly what they meant to the base model.
- What trains is the `finetune` preset (`training/presets.py`: the decoder), at `lr x lr_scale` with
  the stages' optimizer and schedule (`training/optim.py`); the data are the stages' own
  (`training/data.TrainData`) over `<work>/features` (encoded with the folder's codec) and the
  annotated manifest (binned with the folder's bins), minus the held-out utterances.
- Validation on `val_fraction` of the training utterances every `eval_every` steps; the weights of the
  best validation step are kept (step 0 = the base model's).
- The output folder is the base folder with the new weights (`caption_peft.*` kept as the base has them,
  so the folder stays what a stage would write), the user's voice added to the stored references
  under the speaker's name, and `synthesis.json` saying what was done.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import types
from pathlib import Path

import torch

from tristage.errors import UserError
from tristage.finetune.config import FinetuneParams

log = logging.getLogger("tristage.finetune")
MODEL = "model"
# what the output folder takes from the base folder as it is (model.safetensors, references and
# synthesis.json are written anew; checkpoints and the trainer state are the base run's own)
COPIED = ("config.json", "caption", "codec", "speakers.json", "bins.json")


class _Subset:
    """A feature store seen through some of its ids (the held-out utterances never train)."""

    def __init__(self, store, keep: list[str]):
        keep_set = set(map(str, keep))
        self._store, self.meta = store, store.meta
        self.index = store.index[store.index["id"].astype(str).isin(keep_set)].reset_index(drop=True)
        self.ids = sorted(i for i in map(str, store.ids) if i in keep_set)

    def load(self, uid: str):
        return self._store.load(uid)


def _check_codes(cfg, meta: dict, features: Path) -> None:
    """The features must be the codes of the model's own codec (UserError naming what differs)."""
    codec = meta.get("codec") or {}
    got = dict(n_codebooks=codec.get("n_codebooks", meta.get("n_codebooks")),
               codebook_size=codec.get("codebook_size", meta.get("codebook_size")),
               n_mels=(meta.get("mel") or {}).get("n_mels", meta.get("n_mels")))
    for key, value in got.items():
        if value is not None and int(value) != int(getattr(cfg, key)):
            raise UserError(f"{features}: {key}={value} but the model has {getattr(cfg, key)}; the features "
                            "must be encoded with the model folder's codec and mel settings")


def _check_codec(model: Path, info: dict, features: Path) -> None:
    """A random-init DAC is rebuilt from its config and seed by `features`: it must be the same weights."""
    from tristage.fsio import sha256

    codec = info.get("codec") or {}
    mine, theirs = features / "codec.safetensors", Path(model) / str(codec.get("dir")) / "codec.safetensors"
    if codec.get("kind") == "dac" and codec.get("dir") and mine.is_file() and theirs.is_file():
        if sha256(mine) != sha256(theirs):
            raise UserError(f"{features}: the random-init codec rebuilt from {theirs.parent / 'codec.json'} "
                            "differs from the model folder's; its codes would not be the model's")


def sources(fp: FinetuneParams, work: Path, table, cfg, train_ids: list[str]):
    """The `training.data.Sources` of the fine-tune: its features and manifest, the model's caption table."""
    from tristage.data.manifest import read_prepared
    from tristage.features.store import FeatureStore
    from tristage.fsio import read_json
    from tristage.training.data import Sources

    store = FeatureStore(work / "features")
    _check_codes(cfg, store.meta, work / "features")
    manifest = read_prepared(work / "annotated" / "manifest.parquet")
    manifest = manifest[manifest["id"].astype(str).isin(set(train_ids))].reset_index(drop=True)
    speakers = Path(fp.model) / "speakers.json"
    mapping = read_json(speakers) if speakers.is_file() else {}
    return Sources(store=_Subset(store, train_ids), manifest=manifest, table=table, mapping=mapping,
                   n_codebooks=cfg.n_codebooks, codebook_size=cfg.codebook_size, n_mels=cfg.n_mels,
                   codec=cfg.codec, caption_encoder=cfg.caption_encoder)


def stage_params(fp: FinetuneParams, work: Path, info: dict):
    """The fields `TrainData` and `build_optimizer` read, from `finetune.train` (a stage's params shape)."""
    tp = fp.train
    return types.SimpleNamespace(
        **{**tp.model_dump(), "max_ref_frames": tp.max_ref_frames or int(info["max_ref_frames"]),
           "guided_attention": tp.guided_attention, "input_noise": tp.input_noise},
        prepared=work / "annotated" / "manifest.parquet", features=work / "features", heldout_speakers=0)


def finetune_preset(tp):
    """`finetune.train.preset` (training/presets.py) less the modules `finetune.train.unfreeze` names."""
    import dataclasses

    from tristage.training.presets import PRESETS

    preset = PRESETS[tp.preset]
    unknown = [m for m in tp.unfreeze if m not in preset.frozen]
    if unknown:
        raise UserError(f"finetune.train.unfreeze: {', '.join(unknown)}: not frozen by the {tp.preset} "
                        f"preset (it freezes {', '.join(preset.frozen)})")
    return dataclasses.replace(preset, frozen=tuple(m for m in preset.frozen if m not in set(tp.unfreeze)))


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class _Loop:
    """The training loop: steps, validation, the best step's weights."""

    def __init__(self, model, data, preset, sp, device: str):
        from tristage.training.config import forward_args
        from tristage.training.optim import build_optimizer

        self.model, self.data, self.preset, self.sp, self.device = model, data, preset, sp, device
        ga = sp.guided_attention
        if ga.weight > 0 and ga.heads > model.cfg.n_head:
            raise UserError(f"finetune.train.guided_attention.heads: {ga.heads} but the decoder has "
                            f"{model.cfg.n_head} heads per block")
        self.forward_args = forward_args(sp)  # guided attention, input noise: as in the stages
        self.opt, self.sched = build_optimizer(model, sp)
        self.val = data.val_batches(sp.batch_size)
        self.history: list[dict] = []
        ev = self.evaluate()
        self.best = dict(step=0, val_mel_loss=ev.get("val_mel_loss", math.inf))
        self.best_state = _trainable_state(model)
        self.history.append(dict(step=0, **ev))

    def evaluate(self) -> dict:
        from tristage.training.validation import validate

        return validate(self.model, self.val, self.device, speaker=False) if self.val else {}

    def step(self, step: int) -> dict:
        from tristage.training.data import to_device
        from tristage.training.presets import set_train_mode

        set_train_mode(self.model, self.preset)
        out = self.model(to_device(self.data.next_batch(), self.device), **self.forward_args)
        # the stages' loss without the caption adapters' terms (the baked table has none)
        loss = out["mel_loss"] + out["stop_loss"]
        if "align_loss" in out:
            loss = loss + self.sp.guided_attention.weight * out["align_loss"]
        if not torch.isfinite(loss):
            raise UserError(f"finetune: non-finite loss ({loss.item()}) at step {step}; lower --lr "
                            "(finetune.train.lr) or raise finetune.train.warmup_steps")
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                       self.sp.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return dict(step=step, mel_loss=out["mel_loss"].item(), lr=self.sched.get_last_lr()[0])

    def run(self) -> dict:
        t0 = time.perf_counter()
        for step in range(1, self.sp.steps + 1):
            row = self.step(step)
            if step % self.sp.eval_every == 0 or step == self.sp.steps:
                row.update(self.evaluate())
                if row.get("val_mel_loss", math.inf) < self.best["val_mel_loss"]:
                    self.best = dict(step=step, val_mel_loss=row["val_mel_loss"])
                    self.best_state = _trainable_state(self.model)
                log.info("finetune step %d/%d: mel_loss %.3f, val_mel_loss %s", step, self.sp.steps,
                         row["mel_loss"], f"{row['val_mel_loss']:.3f}" if "val_mel_loss" in row else "-")
            self.history.append(row)
        if self.val:  # handover: the best validation step's weights (step 0: the base model's)
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    if n in self.best_state:
                        p.copy_(self.best_state[n])
        return dict(seconds=round(time.perf_counter() - t0, 2))


def user_reference(data, speaker_ids: list[int], max_ref_frames: int) -> torch.Tensor:
    """The user's voice as a stored reference: the centre `max_ref_frames` of the longest training clip."""
    i = max(speaker_ids, key=lambda k: (data.examples[k].n_frames, data.examples[k].id))
    mel = data.features(i)[0]
    s = max(0, (mel.shape[0] - max_ref_frames) // 2)
    return mel[s : s + max_ref_frames].float().contiguous()


def codec_entry(codec: dict, src_folder: Path, dst_folder: Path) -> dict:
    """synthesis.json's codec entry for a copy of a folder elsewhere: official weights are referenced by a
    path relative to the folder, so that path is recomputed; a copied codec (`dir`) travels with it."""
    if not codec.get("weights"):
        return dict(codec)
    weights = (Path(src_folder) / codec["weights"]).resolve()
    return {**codec, "weights": os.path.relpath(weights, Path(dst_folder).resolve())}


def _copy_base(base: Path, tmp: Path) -> None:
    for name in COPIED:
        src = base / name
        if src.is_dir():
            shutil.copytree(src, tmp / name)
        elif src.is_file():
            shutil.copy2(src, tmp / name)


def write_folder(out: Path, fp: FinetuneParams, model, info: dict, reference: torch.Tensor,
                 training: dict) -> None:
    """`out`: the base folder's files, the fine-tuned weights, the user's voice among the references."""
    from safetensors.torch import load_file, save_file

    from tristage.fsio import atomic_dir, write_json
    from tristage.model.folder import REFERENCES, SYNTHESIS, load_references

    base = Path(fp.model)
    with atomic_dir(out) as tmp:
        _copy_base(base, tmp)
        state = dict(load_file(str(base / "model.safetensors")))  # caption_peft.* as the base has them
        state.update({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
        save_file(state, str(tmp / "model.safetensors"))
        refs = {**load_references(base, info), fp.speaker: reference}
        save_file(refs, str(tmp / REFERENCES), metadata={"ids": json.dumps({s: "" for s in refs})})
        note = (f"{info.get('note', '')}; fine-tuned from {base.name} ({info.get('stage')}) on "
                f"{training['n_train']} utterances of {fp.speaker} (tristage finetune)").lstrip("; ")
        write_json(tmp / SYNTHESIS, {
            **info, "stage": "finetune", "codec": codec_entry(info["codec"], base, out), "note": note,
            "finetune": dict(base=base.name, base_stage=info.get("stage"), speaker=fp.speaker,
                             preset=fp.train.preset, steps=fp.train.steps, best_step=training["best_step"],
                             n_train=training["n_train"])})
        write_json(tmp / "training.json", training)


def _metrics(loop: _Loop, data, counts: dict, n_heldout: int, timing: dict, steps: int) -> dict:
    """metrics/train.json: parameter counts, the losses (the last step's, the base model's and the best
    validation step's), the utterances, the time."""
    last = next((r for r in reversed(loop.history) if "mel_loss" in r), {})
    return dict(
        **counts, steps=steps, best_step=loop.best["step"], mel_loss=last.get("mel_loss"),
        initial_val_mel_loss=loop.history[0].get("val_mel_loss"),
        val_mel_loss=loop.best["val_mel_loss"] if loop.val else None,
        n_train=len(data.train_idx) + len(data.val_idx), n_val=len(data.val_idx), n_heldout=n_heldout,
        **timing, steps_per_s=round(steps / max(timing["seconds"], 1e-9), 3))


def run_train(fp: FinetuneParams, work: Path) -> dict:
    """The step: load the folder, train the preset's modules, write `<work>/model/` -> the metrics."""
    from tristage.device import resolve_device
    from tristage.environment import deterministic_torch
    from tristage.fsio import read_json
    from tristage.model.folder import load_folder
    from tristage.training.data import TrainData
    from tristage.training.presets import apply_preset

    work, tp = Path(work), fp.train
    deterministic_torch(tp.threads)
    torch.manual_seed(tp.seed)
    device = resolve_device(tp.device, "finetune.train.device")
    model, cfg, info, table = load_folder(fp.model, device)
    preset = finetune_preset(tp)
    counts = apply_preset(model, preset)
    split = read_json(work / "split.json")
    sp = stage_params(fp, work, info)
    _check_codec(Path(fp.model), info, work / "features")
    data = TrainData(sources(fp, work, table, cfg, split["train"]), sp, cfg.max_text_len, cfg.max_frames,
                     frontend=cfg.text_frontend, voice=cfg.phoneme_voice)
    log.info("finetune: %s preset, %s of %s parameters train (%s frozen); %d training + %d validation "
             "utterances, %d steps", tp.preset, f"{counts['trainable_params']:,}",
             f"{counts['total_params']:,}", ", ".join(preset.frozen), len(data.train_idx), len(data.val_idx),
             tp.steps)
    loop = _Loop(model, data, preset, sp, device)
    metrics = _metrics(loop, data, counts, len(split["heldout"]), loop.run(), tp.steps)
    reference = user_reference(data, list(range(len(data.examples))), sp.max_ref_frames)
    write_folder(work / MODEL, fp, model.cpu(), info, reference,
                 dict(metrics, preset=tp.preset, frozen=list(preset.frozen), history=loop.history))
    return metrics
