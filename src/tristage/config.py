"""The one place that reads and validates `params.yaml`.

    params = load_params("params.yaml", overrides=["stage2.grl_lambda=2.0"])
    params.stage2.grl_lambda  # -> 2.0, typed and range-checked

- one top-level key per DVC stage; each maps to the schema its package owns;
- unknown keys, wrong types and out-of-range values fail here, before any work,
  with a `ParamsError` whose one-line message names the key (`stage2.grl_lambda`);
- `--set key.sub=value` overrides are parsed as YAML scalars/lists (`2.0`, `null`,
  `[0.3, 0.6]`) and applied before validation;
- relative paths are resolved against the folder that holds the params file, so a
  stage runs the same from any working directory.
"""
from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import BaseModel, ValidationError

from tristage.annotation.config import AnnotateParams
from tristage.captions.config import CaptionVectorsParams
from tristage.corpus.config import CorpusParams
from tristage.data.config import PrepareParams, SpeakerMappingParams
from tristage.errors import ParamsError
from tristage.evaluation.config import EvaluateParams
from tristage.features.config import FeaturesParams
from tristage.schema import Section
from tristage.training.config import Stage1Params, Stage2Params, Stage3Params

STAGES = (
    "corpus",
    "prepare",
    "annotate",
    "speaker_mapping",
    "caption_vectors",
    "features",
    "stage1",
    "stage2",
    "stage3",
    "evaluate",
)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
# Keys that moved: an older params file names the new place in its error
MOVED = {"caption_vectors.peft": "stage1.peft (the caption adapters and stage1's loss weights; "
                                 "stage2.peft / stage3.peft: those stages' loss weights)"}


class Params(Section):
    corpus: CorpusParams = CorpusParams()
    prepare: PrepareParams = PrepareParams()
    annotate: AnnotateParams = AnnotateParams()
    speaker_mapping: SpeakerMappingParams = SpeakerMappingParams()
    caption_vectors: CaptionVectorsParams = CaptionVectorsParams()
    features: FeaturesParams = FeaturesParams()
    stage1: Stage1Params = Stage1Params()
    stage2: Stage2Params = Stage2Params()
    stage3: Stage3Params = Stage3Params()
    evaluate: EvaluateParams = EvaluateParams()

    # Where the params came from (not a params key): relative paths were resolved here.
    base_dir: Path | None = None
    source: Path | None = None

    def stage(self, name: str) -> Section:
        if name not in STAGES:
            raise ParamsError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
        return getattr(self, name)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`"stage2.grl_lambda=2.0"` -> (["stage2", "grl_lambda"], 2.0)."""
    if "=" not in item:
        raise ParamsError(f"--set {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ParamsError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads "1e-3" as a string
    return key.split("."), value


Overrides = Iterable[str] | Mapping[str, Any]


def override_items(overrides: Overrides | None) -> dict[str, Any]:
    """The one override parser: `["stage2.grl_lambda=2.0"]` (the `--set` form) or
    `{"stage2.grl_lambda": 2.0}` (the flow's form) -> `{"stage2.grl_lambda": 2.0}`."""
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        items = {}
        for key, value in overrides.items():
            if not isinstance(key, str) or not key.strip() or any(not p for p in key.strip().split(".")):
                raise ParamsError(f"overrides: bad key {key!r}; "
                                  "use dotted params keys like 'stage2.grl_lambda'")
            items[key.strip()] = value  # already typed (JSON from the run form)
        return items
    if isinstance(overrides, str):
        overrides = [overrides]
    return {".".join(keys): value for keys, value in map(parse_override, overrides)}


def apply_overrides(data: dict, overrides: Overrides | None) -> dict:
    for key, value in override_items(overrides).items():
        keys = key.split(".")
        node = data
        for depth, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ParamsError(f"--set {key}: {'.'.join(keys[: depth + 1])} is not a mapping")
            node = nxt
        node[keys[-1]] = value
    return data


def _dotted_keys(data: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, Mapping):
            out.extend(_dotted_keys(v, f"{prefix}{k}."))
    return out


def check_overrides(path: str | os.PathLike, overrides: Overrides | None) -> dict[str, Any]:
    """Validate overrides against `path` and the typed params *before* anything edits the file
    (`dvc exp run -S` writes the file first and validates never). Returns them as a dict.

    Like DVC, a key must already exist in the file; a misspelt one fails with one hint
    (`did you mean stage2.grl_lambda?`). Values are then checked by the same schema as
    `load_params`, so a wrong type or range names the key."""
    items = override_items(overrides)
    src = Path(path)
    try:
        data = yaml.safe_load(src.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{src}: cannot read params: {exc}".replace("\n", " ")) from None
    known = _dotted_keys(data)
    for key in items:
        if key in known:
            continue
        same_depth = [k for k in known if k.count(".") == key.count(".")]
        close = difflib.get_close_matches(key, same_depth, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; use the dotted names of params.yaml (stage.key)"
        raise ParamsError(f"overrides: {key}: no such key in {src.name}{hint}")
    load_params(src, items)
    return items


def _did_you_mean(key: str) -> str:
    """`; did you mean stage2.grl_lambda?` for a misspelt key (the schema's keys, same depth)."""
    known = [k for k in _dotted_keys(Params().model_dump(mode="json", exclude={"base_dir", "source"}))
             if k.count(".") == key.count(".")]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else " (check the spelling against params.yaml)"


def _format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            moved = next((new for old, new in MOVED.items() if loc == old or loc.startswith(old + ".")), None)
            msg = f"unknown key: moved to {moved}" if moved else "unknown key" + _did_you_mean(loc)
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        parts.append(f"{loc}: {msg}")
    return f"{source}: invalid params: " + "; ".join(parts)


def _is_path_annotation(ann: Any) -> bool:
    if ann is Path:
        return True
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return any(a is Path for a in typing.get_args(ann))
    if origin is typing.Annotated:
        return _is_path_annotation(typing.get_args(ann)[0])
    return False


def resolve_paths(model: BaseModel, base: Path) -> BaseModel:
    """Return a copy of `model` with every relative `Path` field made absolute under `base`."""
    updates: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            updates[name] = resolve_paths(value, base)
        elif isinstance(value, Path) and _is_path_annotation(field.annotation):
            if not value.is_absolute():
                updates[name] = (base / value).resolve()
    return model.model_copy(update=updates) if updates else model


def load_params(path: str | os.PathLike | None = "params.yaml", overrides: Overrides | None = ()) -> Params:
    """Read, override, validate and resolve. Raises `ParamsError` naming the key at fault."""
    if path is None:
        data: dict = {}
        base = Path.cwd()
        source = "<defaults>"
        src_path = None
    else:
        src_path = Path(path).resolve()
        base = src_path.parent
        source = str(path)
        if not src_path.is_file():
            raise ParamsError(f"{source}: params file not found")
        try:
            data = yaml.safe_load(src_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ParamsError(f"{source}: not valid YAML: {exc}".replace("\n", " ")) from None
        if not isinstance(data, dict):
            raise ParamsError(f"{source}: top level must be a mapping of stage names")
    for reserved in ("base_dir", "source"):
        if reserved in data:
            raise ParamsError(f"{source}: {reserved}: unknown key (reserved)")
    data = apply_overrides(data, overrides)
    try:
        params = Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(_format_validation_error(exc, source)) from None
    params = resolve_paths(params, base)
    return params.model_copy(update={"base_dir": base, "source": src_path})


def dump_defaults() -> dict:
    """The default params as plain YAML-able data (what `params.yaml` ships with)."""
    return Params().model_dump(mode="json", exclude={"base_dir", "source"})
