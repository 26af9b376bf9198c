"""dvc.yaml deps can't drift from the code: each stage's deps cover the static import closure of
`steps/<stage>.py` inside src/tristage (tristage/closure.py), for every stage there is."""

from __future__ import annotations

import shutil

import yaml
from conftest import REPO

from tristage.closure import check_dvc_deps, code_digest, import_closure, rewrite_dvc_deps, uncovered


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_deps_cover_its_import_closure():
    stages = [s for s in _stages() if (REPO / "steps" / f"{s}.py").is_file()]
    assert {"stage1", "evaluate", "features"} <= set(stages)
    missing = check_dvc_deps(REPO)
    assert not missing, (
        "dvc.yaml deps miss code the stage imports (python -m tristage.closure lists them):\n"
        + "\n".join(f"  {stage}: {', '.join(paths)}" for stage, paths in missing.items())
    )


def test_closure_follows_lazy_and_from_imports():
    files = {
        f.relative_to(REPO / "src").as_posix()
        for f in import_closure([REPO / "steps/stage1.py"], REPO / "src")
    }
    # lazy (inside a function) import of the trainer; the trainer's model; the caption module the model builds
    assert {
        "tristage/training/trainer.py",
        "tristage/model/decoder.py",
        "tristage/captions/peft/reference.py",
        "tristage/data/manifest.py",
        "tristage/features/store.py",
        "tristage/training/__init__.py",
    } <= files
    corpus = {
        f.relative_to(REPO / "src").as_posix()
        for f in import_closure([REPO / "steps/corpus.py"], REPO / "src")
    }
    assert "tristage/training/trainer.py" not in corpus  # a trainer edit doesn't rerun the corpus


def test_check_fails_naming_stage_and_path_when_a_dep_is_removed(tmp_path):
    for rel in ("dvc.yaml", "steps", "src"):
        src = REPO / rel
        (
            shutil.copytree(src, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy2(src, tmp_path / rel)
        )
    assert check_dvc_deps(tmp_path) == {}
    doc = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    for stage, dep in (
        ("stage1", "src/tristage/model"),
        ("evaluate", "src/tristage/evaluation/run.py"),
        ("stage2", "src/tristage/captions/peft"),
    ):
        doc["stages"][stage]["deps"].remove(dep)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))  # another layout: still read
    missing = check_dvc_deps(tmp_path)
    assert set(missing) == {"stage1", "evaluate", "stage2"}
    assert "src/tristage/model/decoder.py" in missing["stage1"]
    assert "src/tristage/evaluation/run.py" in missing["evaluate"]
    assert "src/tristage/captions/peft/fused.py" in missing["stage2"]
    assert all(p.startswith("src/tristage/captions/peft/") for p in missing["stage2"])
    # `python -m tristage.closure --write` puts them back and leaves the rest of the file alone
    assert sorted(rewrite_dvc_deps(tmp_path)) == ["evaluate", "stage1", "stage2"]
    assert check_dvc_deps(tmp_path) == {}
    fixed = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    assert {k: v for k, v in fixed["stages"]["stage1"].items() if k != "deps"} == {
        k: v for k, v in _stages()["stage1"].items() if k != "deps"
    }
    assert (
        fixed["stages"]["stage1"]["deps"][0] == "steps/stage1.py"
        and "data/features" in fixed["stages"]["stage1"]["deps"]
    )


def test_a_new_import_is_a_new_dep(tmp_path):
    """Adding an import of a module no dep covers makes the check fail for that stage only."""
    for rel in ("dvc.yaml", "steps", "src"):
        src = REPO / rel
        (
            shutil.copytree(src, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy2(src, tmp_path / rel)
        )
    step = tmp_path / "steps" / "speaker_mapping.py"
    step.write_text(
        step.read_text() + "\n\ndef _unused():\n    from tristage.corpus import text  # noqa: F401\n"
    )
    assert check_dvc_deps(tmp_path) == {"speaker_mapping": ["src/tristage/corpus/text.py"]}


def test_uncovered_and_code_digest(tmp_path):
    f = REPO / "src/tristage/model/decoder.py"
    assert uncovered([f], ["src/tristage/model"], REPO) == []
    assert uncovered([f], ["src/tristage/model/tts.py", "src/tristage/mod"], REPO) == [
        "src/tristage/model/decoder.py"
    ]
    digest, files = code_digest(["tristage.model.tts"])
    assert "tristage/model/decoder.py" in files and "tristage/captions/peft/fused.py" in files
    assert "tristage/training/trainer.py" not in files
    # the digest is of the contents: a copied tree with one byte changed gives another digest
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    assert code_digest(["tristage.model.tts"], tmp_path / "src")[0] == digest
    dec = tmp_path / "src/tristage/model/decoder.py"
    dec.write_text(dec.read_text() + "\n# changed\n")
    d2, f2 = code_digest(["tristage.model.tts"], tmp_path / "src")
    assert d2 != digest and [k for k in f2 if f2[k] != files[k]] == ["tristage/model/decoder.py"]
