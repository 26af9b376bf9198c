"""The DAC codec: build it (official weights or a seeded small random-init one), save it,
load exactly the weights used to encode, encode batches, decode codes back to audio.

Official weights (`features.codec.weights`): a torch file holding {"state_dict", "metadata":
{"kwargs"}}; read with torch.load(weights_only=True), the features meta records the path
and its sha256. No path: `dac.DAC(**config)` after torch.manual_seed(seed); its weights
are written once into the features folder (codec.safetensors + codec.json).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from tristage.errors import UserError

CODEC_WEIGHTS = "codec.safetensors"
CODEC_CONFIG = "codec.json"


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


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
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
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
    write_json(out_dir / CODEC_CONFIG, {"kwargs": kwargs, "seed": seed})


def load_saved(out_dir: Path):
    from safetensors.torch import load_file

    from tristage.fsio import read_json

    cfg = read_json(out_dir / CODEC_CONFIG)
    model = _dac(cfg["kwargs"])
    model.load_state_dict(load_file(str(out_dir / CODEC_WEIGHTS)))
    return model.eval(), cfg["kwargs"]


def prepare_codec(cp, out_dir: Path):
    """(model, info) for the stage: info is meta["codec"] (name, path, pretrained, sha256, kwargs, ...)."""
    if cp.weights is not None:
        model, kwargs = load_official(cp.weights)
        info = dict(name=f"dac {Path(cp.weights).name}", path=str(Path(cp.weights).resolve()),
                    sha256=sha256(cp.weights), pretrained=True)
    else:
        kwargs = cp.dac_kwargs()
        saved = out_dir / CODEC_CONFIG
        reuse = saved.is_file() and (out_dir / CODEC_WEIGHTS).is_file()
        if reuse:
            from tristage.fsio import read_json

            cfg = read_json(saved)
            reuse = cfg.get("kwargs") == kwargs and cfg.get("seed") == cp.seed
        if reuse:  # written once: decode/encode with exactly those bytes
            model, _ = load_saved(out_dir)
        else:
            model = random_init(kwargs, cp.seed)
            save_random_init(model, kwargs, cp.seed, out_dir)
        info = dict(
            name=f"random-init dac (seed {cp.seed})",
            path=None,
            sha256=sha256(out_dir / CODEC_WEIGHTS),
            pretrained=False,
        )
    info.update(sample_rate=int(model.sample_rate), hop_length=int(model.hop_length),
                n_codebooks=int(model.n_codebooks), codebook_size=int(model.codebook_size), kwargs=kwargs)
    return model, info


def load_codec(features_dir_or_meta, device: str = "cpu"):
    """The DAC model that encoded a features folder (or its meta dict), on `device`, in eval mode."""
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
            raise UserError("load_codec: a random-init codec needs the features folder (meta has no 'dir')")
        model, _ = load_saved(Path(folder))
    return model.to(device).eval()


def encode(model, wav, lengths: list[int]) -> list:
    """wav (B, N) float at the codec's rate (zero padded), lengths in samples -> list of codes (K, T_i) int16,
    T_i = ceil(lengths[i] / hop)."""
    import torch

    hop = int(model.hop_length)
    with torch.inference_mode():
        x = model.preprocess(wav[:, None, :], model.sample_rate)  # (B, 1, N') padded to a multiple of hop
        _, codes, *_ = model.encode(x)  # (B, K, T)
    return [codes[i, :, : -(-n // hop)].to(torch.int16).cpu() for i, n in enumerate(lengths)]


def decode_codes(model, codes) -> tuple[np.ndarray, int]:
    """codes (K, T) integer -> (wav float32 (T * hop,), sample_rate)."""
    import torch

    device = next(model.parameters()).device
    c = torch.as_tensor(codes).long().to(device)[None]  # (1, K, T)
    with torch.inference_mode():
        z, _, _ = model.quantizer.from_codes(c)
        wav = model.decode(z)  # (1, 1, N)
    return wav[0, 0].float().cpu().numpy(), int(model.sample_rate)
