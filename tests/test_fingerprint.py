"""Code-aware resume in-process (the real file edit under `dvc repro` is tests/test_freshness.py):
checkpoints carry the fingerprint's parts and the code files' hashes; a checkpoint of other code,
params or data is not resumed and the one log line says why; kl / ortho are logged per step."""

from __future__ import annotations

import logging

from tristage.config import load_params
from tristage.testing.fakes import default_fake_sources, write_tiny_params
from tristage.training import checkpoint as ck
from tristage.training import fingerprint
from tristage.training.trainer import train_stage


def _fresh_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "starting fresh" in ln]


def test_checkpoint_of_other_code_is_not_resumed_and_the_line_names_the_file(tmp_path, caplog, monkeypatch):
    params = load_params(write_tiny_params(tmp_path, steps=4, checkpoint_every=2))
    src = default_fake_sources(tmp_path)
    train_stage("stage1", params, None, sources=src)
    manifest = ck.read_json(tmp_path / "models/stage1/checkpoints/step-000004/manifest.json")
    parts, files = manifest["fingerprint_parts"], manifest["code_files"]
    assert set(parts) == {
        "stage",
        "params",
        "model_config",
        "init_weights",
        "world_size",
        "data",
        "code",
    }
    # the trainer's closure, the model, and the configured caption module (the fakes' in this test)
    assert {"tristage/training/trainer.py", "tristage/model/decoder.py", "tristage/testing/fakes.py"} <= set(
        files
    )
    assert manifest["fingerprint"] == fingerprint.combine(parts)

    with caplog.at_level(logging.INFO, logger="tristage.training"):  # unchanged: resumes (0 steps to do)
        assert train_stage("stage1", params, None, sources=src)["resumed_from_step"] == 4
    assert not _fresh_lines(caplog.text)

    real = fingerprint.code_part

    def edited(caption_module=None):  # as if src/tristage/model/decoder.py had been edited
        digest, per_file = real(caption_module)
        return "0" * 16, dict(per_file, **{"tristage/model/decoder.py": "f" * 64})

    monkeypatch.setattr(fingerprint, "code_part", edited)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tristage.training"):
        m = train_stage("stage1", params, None, sources=src)
    assert m["resumed_from_step"] is None and m["steps"] == 4
    lines = _fresh_lines(caplog.text)
    assert len(lines) == 1, caplog.text
    assert "step-000004" in lines[0] and "made by other code (tristage/model/decoder.py)" in lines[0]
    assert "other params" not in lines[0] and "other data" not in lines[0]


def test_reason_names_each_part_that_differs():
    parts = dict(
        stage="stage1",
        params="p",
        model_config="m",
        init_weights="",
        world_size=1,
        data="d",
        code="c",
    )
    manifest = dict(
        fingerprint_parts=dict(parts, params="p0", world_size=2, data="d0", code="c0"),
        code_files={"tristage/a.py": "1", "tristage/b.py": "2", "tristage/gone.py": "3"},
    )
    reason = fingerprint.why_not_resumable(
        manifest, parts, {"tristage/a.py": "1", "tristage/b.py": "9", "tristage/new.py": "4"}
    )
    assert reason == (
        "other params; world size 2 (now 1); other data (features, manifest, speakers or caption "
        "vectors); made by other code (tristage/b.py, tristage/gone.py, tristage/new.py)"
    )
    assert "older trainer" in fingerprint.why_not_resumable({}, parts, {})


def test_changed_data_starts_fresh_saying_so(tmp_path, caplog):
    params = load_params(write_tiny_params(tmp_path, steps=2))
    src = default_fake_sources(tmp_path)
    train_stage("stage1", params, None, sources=src)
    src.table.vectors[0] += 1.0  # the caption vector table changed (caption_vectors reran)
    with caplog.at_level(logging.INFO, logger="tristage.training"):
        m = train_stage("stage1", params, None, sources=src)
    assert m["resumed_from_step"] is None
    lines = _fresh_lines(caplog.text)
    assert len(lines) == 1 and "other data" in lines[0] and "code" not in lines[0]


def test_kl_and_ortho_are_logged_every_step(tmp_path):
    params = load_params(write_tiny_params(tmp_path, steps=4, log_every=1))
    logged: list[tuple[int, dict]] = []

    class Tracker:
        def log_metrics(self, metrics, step=None):
            logged.append((step, dict(metrics)))

        def __getattr__(self, name):
            return lambda *a, **k: None

    m = train_stage("stage1", params, Tracker(), sources=default_fake_sources(tmp_path))
    rows = (tmp_path / "plots/stage1/train.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    assert {"kl", "ortho"} <= set(header)
    for line in rows[2:]:  # row 1 is step 0 (the evaluation before training)
        cells = dict(zip(header, line.split("\t")))
        assert float(cells["kl"]) >= 0 and float(cells["ortho"]) > 0  # the fake PEFT's ortho is never 0
    steps = [s for s, d in logged if "kl" in d and "ortho" in d]
    assert steps == [1, 2, 3, 4]
    assert m["kl"] is not None and m["ortho"] > 0 and m["n_skipped_too_long"] == 0


def test_fingerprint_does_not_depend_on_where_the_repo_lies(tmp_path):
    """The same inputs in two folders (a clone, a `dvc exp run --temp` copy, a workspace) give the same
    fingerprint, so the same run writes the same bytes; other contents give another."""
    import dataclasses
    from types import SimpleNamespace

    from tristage.features.store import FeatureStore
    from tristage.model.config import TTSConfig
    from tristage.testing.corpus import write_feature_store

    def data_part(folder, seed=0):
        store = FeatureStore(write_feature_store(folder, 6, seed=seed))
        return store.meta["dir"], fingerprint.data_fingerprint(
            SimpleNamespace(store=store, mapping={"spk00": 0}, table=None), [])

    (dir_a, data_a), (dir_b, data_b) = data_part(tmp_path / "a/features"), data_part(tmp_path / "b/features")
    assert dir_a != dir_b and data_a == data_b
    assert data_part(tmp_path / "c/features", seed=1)[1] != data_a

    params = load_params(write_tiny_params(tmp_path))
    cfg = TTSConfig(n_codebooks=4, codebook_size=256, n_mels=80, caption_dim=32, n_speakers=4,
                    caption_vectors=str(tmp_path / "a/data/caption_vectors"))

    def parts(config, stage_params=params.stage1):
        return fingerprint.run_fingerprint_parts("stage1", stage_params, config, "init", 1, data_a)[0]

    moved = dataclasses.replace(cfg, caption_vectors=str(tmp_path / "b/data/caption_vectors"))
    assert parts(cfg) == parts(moved)
    assert parts(cfg)["model_config"] != parts(dataclasses.replace(cfg, d_model=64))["model_config"]
    # the caption adapters are part of the architecture; their loss weights are the stage's params
    wider = dataclasses.replace(cfg, peft=dataclasses.replace(cfg.peft, lora_rank=8))
    assert parts(wider)["model_config"] != parts(cfg)["model_config"]
    weights = params.stage1.peft.model_copy(update={"kl_weight": 0.1})
    heavier = params.stage1.model_copy(update={"peft": weights})
    assert parts(cfg, heavier)["params"] != parts(cfg)["params"]
    assert parts(cfg, heavier)["model_config"] == parts(cfg)["model_config"]
