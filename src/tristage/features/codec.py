"""The codec behind the decoder's targets: build or fit it, save it, load exactly the weights used
to encode, encode batches, decode codes back to audio. `features.codec.kind` picks it:

- `melvq` (default): a codec fitted on the corpus's training split (`features/melvq.py`: residual
  k-means over log-mel frames, Griffin-Lim back to audio). No download, and its audio is speech.
  Written once into the features folder (codec.safetensors + codec.json) and refitted only when
  its config, seed or training utterances change.
- `dac` with official weights (`features.codec.weights`): a torch file holding {"state_dict",
  "metadata": {"kwargs"}}; read with torch.load(weights_only=True), the features meta records the
  path and its sha256. The production codec.
- `dac` without weights: `dac.DAC(**features.codec.dac)` after torch.manual_seed(seed), written
  once into the features folder. Its decoder turns any codes into noise: for tests and timing only.

`meta["codec"]["speech"]` says whether decoded codes are speech (False only for random-init DAC).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from tristage.errors import UserError
from tristage.fsio import sha256

log = logging.getLogger(__name__)
CODEC_WEIGHTS = "codec.safetensors"
CODEC_CONFIG = "codec.json"


def codec_speaks(info: dict) -> bool:
    """Whether a codec's decoded codes are speech (its meta's `speech`; older metas: `pretrained`)."""
    return bool(info.get("speech", info.get("pretrained", False)))


def _dac(kwargs: dict):
    import warnings

    import dac

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm deprecation inside dac
        return dac.DAC(**kwargs)


def load_official(path: str | os.PathLike):
    """(DAC model, kwargs) from an official weights file, without unpickling code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"features.codec.weights: {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        kwargs = dict(ckpt["metadata"]["kwargs"])
        state = ckpt["state_dict"]
    except Exception as exc:  # any unreadable file is a user error here
        raise UserError(f"features.codec.weights: {path} is not a DAC weights file "
                        f"(dict with state_dict and metadata.kwargs): {exc}") from exc
    model = _dac(kwargs)
    model.load_state_dict(state)
    return model.eval(), kwargs


def random_init(kwargs: dict, seed: int):
    import torch

    torch.manual_seed(seed)
    return _dac(kwargs).eval()


def save_random_init(model, kwargs: dict, seed: int, out_dir: Path) -> None:
    from safetensors.torch import save_file

    from tristage.fsio import atomic_path, write_json

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / CODEC_WEIGHTS, suffix=".safetensors") as tmp:
        save_file(
            state, str(tmp), metadata={"codec": json.dumps({"kwargs": kwargs, "seed": seed}, sort_keys=True)}
        )
    write_json(out_dir / CODEC_CONFIG, {"kind": "dac", "kwargs": kwargs, "seed": seed})


def load_saved(out_dir: Path):
    """(codec, its config) saved in a folder by this module: a fitted mel VQ codec or a random-init DAC."""
    from safetensors.torch import load_file

    from tristage.fsio import read_json

    cfg = read_json(Path(out_dir) / CODEC_CONFIG)
    if cfg.get("kind") == "melvq":
        from tristage.features.melvq import MelVQCodec

        return MelVQCodec.load(out_dir), cfg["config"]
    model = _dac(cfg["kwargs"])
    model.load_state_dict(load_file(str(out_dir / CODEC_WEIGHTS)))
    return model.eval(), cfg["kwargs"]


def _reusable(out_dir: Path, state: dict) -> bool:
    """The codec saved in `out_dir` was made from exactly `state` (config, seed, what it was fitted on)."""
    from tristage.fsio import read_json

    if not ((out_dir / CODEC_CONFIG).is_file() and (out_dir / CODEC_WEIGHTS).is_file()):
        return False
    saved = read_json(out_dir / CODEC_CONFIG)
    return all(saved.get(k) == v for k, v in state.items())


def _prepare_melvq(cp, out_dir: Path, training_audio):
    from tristage.features.melvq import MelVQCodec

    if cp.fitted is not None:  # a codec fitted elsewhere (a model folder's): copied as it is, never refitted
        folder = Path(cp.fitted)
        if not ((folder / CODEC_CONFIG).is_file() and (folder / CODEC_WEIGHTS).is_file()):
            raise UserError(f"features.codec.fitted: {folder} has no {CODEC_CONFIG} + {CODEC_WEIGHTS}")
        codec = MelVQCodec.load(folder)
        if Path(out_dir).resolve() != folder.resolve():
            codec.save(out_dir, extra=dict(copied_from=str(folder.resolve()),
                                           sha256=sha256(folder / CODEC_WEIGHTS)))
        return codec, False
    cfg = cp.melvq.config()
    ids, load = training_audio(cfg.sample_rate)
    fitted_on = hashlib.sha256("\0".join(ids).encode()).hexdigest()[:32]
    state = dict(kind="melvq", config=dataclasses.asdict(cfg), seed=cp.seed, fitted_on=fitted_on)
    if _reusable(out_dir, state):  # fitted once: encode/decode with exactly those bytes
        return MelVQCodec.load(out_dir), False
    log.info("features: fitting the mel VQ codec (%d x %d) on %d training utterances",
             cfg.n_codebooks, cfg.codebook_size, len(ids))
    codec = MelVQCodec.fit(load(), cfg, cp.seed, progress=lambda k, rms: log.info(
        "features: codebook %d/%d fitted (residual rms %.3f)", k, cfg.n_codebooks, rms))
    codec.save(out_dir, extra=dict(fitted_on=fitted_on, n_fit_utterances=len(ids)))
    return codec, True


def prepare_codec(cp, out_dir: Path, training_audio=None):
    """(codec, info) for the stage: info is meta["codec"] (name, kind, path, pretrained, speech, sha256, ...).

    `training_audio(sample_rate) -> (ids, load)`: the training split's utterance ids and a function
    returning their audio at that rate; called only when a mel VQ codec must be (re)fitted."""
    out_dir = Path(out_dir)
    if cp.kind == "melvq":
        if training_audio is None and cp.fitted is None:
            raise UserError("features.codec.kind melvq: the codec is fitted on the training audio, "
                            "which the caller did not give")
        model, _ = _prepare_melvq(cp, out_dir, training_audio)
        kwargs = dataclasses.asdict(model.cfg)
        books = f"{model.n_codebooks}x{model.codebook_size}"
        info = dict(name=f"mel VQ {books} + Griffin-Lim (fitted, seed {cp.seed})",
                    kind="melvq", path=None, sha256=sha256(out_dir / CODEC_WEIGHTS), pretrained=False,
                    speech=True)
    elif cp.weights is not None:
        model, kwargs = load_official(cp.weights)
        info = dict(name=f"dac {Path(cp.weights).name}", kind="dac", path=str(Path(cp.weights).resolve()),
                    sha256=sha256(cp.weights), pretrained=True, speech=True)
    else:
        kwargs = cp.dac.dac_kwargs()
        state = dict(kwargs=kwargs, seed=cp.seed)
        if _reusable(out_dir, state):  # written once: decode/encode with exactly those bytes
            model, _ = load_saved(out_dir)
        else:
            model = random_init(kwargs, cp.seed)
            save_random_init(model, kwargs, cp.seed, out_dir)
        info = dict(name=f"random-init dac (seed {cp.seed})", kind="dac", path=None,
                    sha256=sha256(out_dir / CODEC_WEIGHTS), pretrained=False, speech=False)
    info.update(sample_rate=int(model.sample_rate), hop_length=int(model.hop_length),
                n_codebooks=int(model.n_codebooks), codebook_size=int(model.codebook_size), kwargs=kwargs)
    return model, info


def load_codec(features_dir_or_meta, device: str = "cpu"):
    """The codec that encoded a features folder (or its meta dict), on `device`, in eval mode."""
    from tristage.fsio import read_json

    if isinstance(features_dir_or_meta, dict):
        meta, folder = features_dir_or_meta, features_dir_or_meta.get("dir")
    else:
        folder = Path(features_dir_or_meta)
        meta = read_json(folder / "meta.json")
    info = meta["codec"]
    if info.get("path"):
        if info.get("sha256") and sha256(info["path"]) != info["sha256"]:
            raise UserError(f"{info['path']}: codec weights changed since the features were encoded; "
                            "rerun the `features` stage")
        model, _ = load_official(info["path"])
    else:
        if folder is None:
            raise UserError("load_codec: a fitted or random-init codec needs the features folder "
                            "(meta has no 'dir')")
        model, _ = load_saved(Path(folder))
    return model.to(device).eval()


def encode(model, wav, lengths: list[int]) -> list:
    """wav (B, N) float at the codec's rate (zero padded), lengths in samples -> list of codes (K, T_i) int16,
    T_i = ceil(lengths[i] / hop)."""
    import torch

    if not hasattr(model, "quantizer"):  # a mel VQ codec: one utterance at a time (cheap)
        return [model.encode(wav[i, :n].cpu()).to(torch.int16) for i, n in enumerate(lengths)]
    hop = int(model.hop_length)
    with torch.inference_mode():
        x = model.preprocess(wav[:, None, :], model.sample_rate)  # (B, 1, N') padded to a multiple of hop
        _, codes, *_ = model.encode(x)  # (B, K, T)
    return [codes[i, :, : -(-n // hop)].to(torch.int16).cpu() for i, n in enumerate(lengths)]


def decode_codes(model, codes) -> tuple[np.ndarray, int]:
    """codes (K, T) integer -> (wav float32 (T * hop,), sample_rate)."""
    import torch

    if not hasattr(model, "quantizer"):  # a mel VQ codec
        return model.decode(codes)
    device = next(model.parameters()).device
    c = torch.as_tensor(codes).long().to(device)[None]  # (1, K, T)
    with torch.inference_mode():
        z, _, _ = model.quantizer.from_codes(c)
        wav = model.decode(z)  # (1, 1, N)
    return wav[0, 0].float().cpu().numpy(), int(model.sample_rate)
