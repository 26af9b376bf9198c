"""The fine-tune's work area: a DVC project of its own, written by `tristage finetune` before `dvc repro`.

    write_workspace(fp, work)   # finetune.yaml, params.yaml, dvc.yaml (+ `dvc init --no-scm` once)

- `finetune.yaml`: the fine-tune's params (`finetune/config.py`), absolute paths;
- `params.yaml`: the project's stages `prepare`, `annotate`, `features` pointed at the work area, with what
  the base model folder fixes: `annotate.bins` = its bins.json (the base corpus's bins, so captions mean
  the same), `features.mel` = its mel settings and `features.codec` = its own codec (a fitted mel VQ
  codec's folder: `codec.fitted`; official DAC weights: `codec.weights`), `caption_vectors.lexicon` = the
  lexicon its caption table was built with;
- `dvc.yaml`: import -> prepare -> split -> annotate -> features -> train -> report -> track, each step
  `python -m ... --params FILE` with its params keys and files as DVC params and deps (the user's folder,
  the base model's files and the step's code too), so a rerun with the same inputs does no work and a
  changed `finetune.train.steps` reruns train, report and track only.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tristage.errors import UserError
from tristage.finetune.config import FinetuneParams

WORK = ".finetune"  # default work area: <out's folder>/.finetune/<out's name>/
BASE_FILES = ("model.safetensors", "config.json", "synthesis.json", "speakers.json", "references.safetensors",
              "bins.json", "caption")
FT = "finetune.yaml"
STEPS = ("import", "prepare", "split", "annotate", "features", "train", "report", "track")  # in DAG order
MODULES = {"import": "data", "split": "data", "train": "train", "report": "report", "track": "track"}


def default_work(out: Path) -> Path:
    out = Path(out).resolve()
    return out.parent / WORK / out.name


def codec_params(model: Path, info: dict) -> tuple[dict, list[str]]:
    """`features.codec` that encodes with the folder's own codec, and the files that are that codec."""
    from tristage.fsio import read_json

    codec, model = info.get("codec") or {}, Path(model).resolve()
    if codec.get("weights"):
        weights = (model / codec["weights"]).resolve()
        return {"kind": "dac", "weights": str(weights)}, [str(weights)]
    folder = model / str(codec.get("dir") or "codec")
    if not (folder / "codec.json").is_file():
        raise UserError(f"{model}: the model folder has no codec (codec/codec.json) to encode the recordings "
                        "with; fine-tune a folder written by a training stage")
    saved = read_json(folder / "codec.json")
    if saved.get("kind") == "melvq":
        return {"kind": "melvq", "fitted": str(folder)}, [str(folder)]
    # a random-init DAC: the same config and seed make the same weights (the train step checks the sha256)
    return {"kind": "dac", "seed": saved.get("seed", 1234), "dac": saved.get("kwargs", {})}, [str(folder)]


def stage_params(model: Path, info: dict) -> dict:
    """params.yaml of the work area (paths relative to it)."""
    from tristage.features.config import MelParams

    bins = Path(model).resolve() / "bins.json"
    mel = {k: v for k, v in (info.get("mel") or {}).items() if k in MelParams.model_fields}
    out = {
        "prepare": {"manifest": "imported/manifest.jsonl", "out_dir": "prepared",
                    "metrics": "metrics/prepare.json"},
        "annotate": {"manifest": "prepared/manifest.parquet", "out_dir": "annotated",
                     "metrics": "metrics/annotate.json", "bins": str(bins) if bins.is_file() else None},
        "features": {"manifest": "annotated/manifest.parquet", "out_dir": "features",
                     "metrics": "metrics/features.json", "num_workers": 0, "mel": mel,
                     "codec": codec_params(model, info)[0]},
    }
    if info.get("lexicon"):
        out["caption_vectors"] = {"lexicon": info["lexicon"]}
    return out


def code_deps(step: str, project: bool) -> list[str]:
    """The code a step runs (its module's import closure, `tristage.closure`), as the DAG's stages list
    theirs: a changed library reruns the steps that use it."""
    from tristage.closure import import_closure, module_file

    if project:
        import steps

        start = Path(steps.__file__).resolve().parent / f"{step}.py"
        return [str(start), *map(str, import_closure([start]))]
    own = f"tristage.finetune.{MODULES[step]}"
    return [str(module_file("tristage.finetune.steps")), *map(str, import_closure([own]))]


def _step(name: str, deps: list[str], params: list, outs: list, project: bool = False) -> dict:
    """One stage: its cmd (a step of this package, or a project stage on params.yaml, whose own MLflow run
    is off: the fine-tune logs one), its deps (data, then code), params and outs, and metrics/<name>.json."""
    cmd = (f"TRISTAGE_TRACKING=0 python -m steps.{name} --params params.yaml" if project
           else f"python -m tristage.finetune.steps {name} --params {FT}")
    stage = dict(cmd=cmd, deps=[*deps, *code_deps(name, project)], params=params)
    if outs:
        stage["outs"] = outs
    stage["metrics"] = [{f"metrics/{name}.json": {"cache": False}}]
    return stage


def _params(*keys: str) -> list:
    return [{FT: [f"finetune.{k}" for k in keys]}]


def dvc_stages(fp: FinetuneParams, info: dict) -> dict:
    """dvc.yaml of the work area (see the module doc)."""
    model = Path(fp.model).resolve()
    base = [str(model / n) for n in BASE_FILES if (model / n).exists()]
    bins = [str(model / "bins.json")] if (model / "bins.json").is_file() else []
    codec = codec_params(model, info)[1]
    annotated = [{"annotated": {"persist": True}}]  # its measures cache survives a rerun
    stages = [
        _step("import", [str(Path(fp.data).resolve())], _params("data", "format", "speaker"), ["imported"]),
        _step("prepare", ["imported"], ["prepare"], ["prepared"], project=True),
        _step("split", ["prepared"], _params("heldout", "min_utterances", "seed"), ["split.json"]),
        _step("annotate", ["prepared", "split.json", *bins], ["annotate", "caption_vectors.lexicon"],
              annotated, project=True),
        _step("features", ["annotated", *codec], ["features"], ["features"], project=True),
        _step("train", ["features", "annotated", "split.json", *base], _params("model", "speaker", "train"),
              ["model"]),
        _step("report", ["model", "annotated", "split.json", "features", *base], _params("report"),
              ["report"]),
        _step("track", ["model", "report"], _params("track", "speaker"), []),
    ]
    return {"stages": dict(zip(STEPS, stages))}


def _dump(path: Path, data: dict, head: str) -> None:
    from tristage.fsio import write_text

    text = f"# {head}\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged files keep their mtime
        write_text(path, text)


def write_workspace(fp: FinetuneParams, work: Path, info: dict) -> Path:
    """Write (or refresh) the work area's three files; `dvc init --no-scm` where it is new -> `work`."""
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    note = "written by `tristage finetune`; rerun that command rather than editing this file"
    _dump(work / FT, {"finetune": fp.model_dump(mode="json")}, note)
    _dump(work / "params.yaml", stage_params(fp.model, info), note)
    _dump(work / "dvc.yaml", dvc_stages(fp, info), note)
    if not (work / ".dvc").is_dir():
        r = subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=work,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise UserError(f"{work}: dvc init failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return work
