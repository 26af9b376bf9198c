"""Stage presets: frozen tensors bitwise unchanged after a stage, trainable ones changed."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tristage.captions.config import CaptionAdapters
from tristage.config import load_params
from tristage.model.config import TTSConfig
from tristage.model.folder import load_model
from tristage.model.tts import MODULE_NAMES, build_model
from tristage.testing.fakes import default_fake_sources, write_tiny_params
from tristage.training.presets import CONDITIONERS, PRESETS, stage_preset
from tristage.training.trainer import _seed_all, train_stage

CONTRACT = ("mel_loss", "mel_top1", "trainable_params", "total_params", "trainable_fraction")
STAGE2 = ("speaker_loss", "speaker_acc", "grl_lambda", "speaker_loss_weight")
STAGES = ("stage1", "stage2", "stage3")


@pytest.fixture(scope="module")
def three_stages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stages")
    params = load_params(write_tiny_params(folder, steps=6))
    src = default_fake_sources(folder)
    metrics = {s: train_stage(s, params, None, sources=src) for s in ("stage1", "stage2", "stage3")}
    return folder, params, src, metrics


def _weights(folder, stage):
    return load_file(str(folder / "models" / stage / "model.safetensors"))


def _initial_stage1(folder, params, src):
    cfg = TTSConfig.from_dict(json.loads((folder / "models/stage1/config.json").read_text()))
    _seed_all(params.stage1.seed)  # the trainer seeds, then builds: the same initial weights
    return build_model(cfg, src.table).state_dict()


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_frozen_unchanged_trainable_changed(three_stages, stage):
    folder, params, src, _ = three_stages
    before = (
        _initial_stage1(folder, params, src)
        if stage == "stage1"
        else _weights(folder, PRESETS[stage].previous)
    )
    after = _weights(folder, stage)
    assert before.keys() == after.keys()
    frozen = PRESETS[stage].frozen
    for module in MODULE_NAMES:
        keys = [k for k in after if k.split(".")[0] == module]
        assert keys, module
        changed = [k for k in keys if not torch.equal(before[k], after[k])]
        if module in frozen:
            assert not changed, f"{stage}: frozen {module} changed: {changed[:3]}"
        else:
            # every trainable tensor moved (weight decay alone moves matrices; biases get gradients)
            assert len(changed) >= 0.9 * len(keys), f"{stage}: trainable {module} barely changed"


def test_preset_table_matches_the_seed():
    assert PRESETS["stage1"].grl is False and "speaker_classifier" in PRESETS["stage1"].frozen
    assert set(PRESETS["stage2"].frozen) == {"speaker_encoder", "speaker_perceiver"} and PRESETS["stage2"].grl
    assert set(CONDITIONERS) <= set(PRESETS["stage3"].frozen) and not PRESETS["stage3"].grl
    # stage 3 trains the decoder alone (the caption adapters are conditioners too); `unfreeze` keeps them
    assert [m for m in MODULE_NAMES if m not in PRESETS["stage3"].frozen] == ["decoder"]
    sp = load_params(None).stage3.model_copy(update=dict(unfreeze=["caption_peft"]))
    assert "caption_peft" not in stage_preset("stage3", sp).frozen
    assert "caption_peft" in PRESETS["stage3"].frozen
    assert stage_preset("stage3", load_params(None).stage3) == PRESETS["stage3"]
    assert load_params(None).stage3.lr_scale == 0.5 and load_params(None).stage2.lr_scale == 1.0


def test_metrics_and_outputs(three_stages):
    folder, _, _, metrics = three_stages
    for stage, m in metrics.items():
        on_disk = json.loads((folder / "metrics" / f"{stage}.json").read_text())
        assert on_disk == m
        for k in CONTRACT:
            assert isinstance(m[k], (int, float)), (stage, k)
        assert 0 < m["trainable_fraction"] <= 1
        assert m["trainable_params"] < m["total_params"]
        assert m["codec"].startswith("random-init")
        for k in STAGE2:
            assert (k in m) == (stage == "stage2")
        out = folder / "models" / stage
        assert {"model.safetensors", "config.json", "trainer_state.pt", "checkpoints"} <= {
            p.name for p in out.iterdir()
        }
        plots = folder / "plots" / stage
        tsv = (plots / "train.tsv").read_text().splitlines()
        assert tsv[0].startswith("step\t") and "mel_loss" in tsv[0] and len(tsv) > 3
        assert (plots / "losses.png").stat().st_size > 1000
    assert metrics["stage2"]["speaker_acc_band"] in ("below", "in", "above", "edge")
    assert (folder / "plots/stage2/speaker_acc.png").is_file()
    assert metrics["stage3"]["trainable_fraction"] < metrics["stage2"]["trainable_fraction"]
    assert metrics["stage3"]["trainable_modules"] == ["decoder"]  # the seed's stage 3: the decoder alone
    # later stages carry stage1's architecture
    c1, c3 = (json.loads((folder / f"models/{s}/config.json").read_text()) for s in ("stage1", "stage3"))
    assert c1 == c3


def test_load_model_and_generate(three_stages):
    folder, _, src, _ = three_stages
    model, cfg = load_model(folder / "models" / "stage3")
    mel, _ = src.store.load(src.store.ids[0])
    codes = model.generate("hi", src.table.encode("a happy voice"), mel.float(), n_frames=3, greedy=True)
    assert codes.shape == (cfg.n_codebooks, 3)


def test_missing_previous_stage_is_one_line(tmp_path):
    """stage2 started without stage1, through the real CLI: exit 2, one line naming the stage to run."""
    import subprocess
    import sys

    from conftest import project_env

    p = write_tiny_params(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "steps.stage2", "--params", str(p)],
        capture_output=True,
        text=True,
        env=project_env(),
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "stage2: error: models/stage1/model.safetensors not found: run stage1 first (dvc repro stage1)"


def test_later_stages_build_the_adapters_stage1_saved(three_stages):
    """stage1.peft's adapters are saved in stage1's config.json (no loss weights); stage2/3 read them there
    as they read the architecture, whatever stage1.peft says now."""
    import dataclasses

    from tristage.training.build import resolve_config

    folder, params, src, _ = three_stages
    saved = {s: json.loads((folder / f"models/{s}/config.json").read_text())["peft"] for s in STAGES}
    assert saved["stage1"] == dataclasses.asdict(params.stage1.peft.adapters())
    assert saved["stage1"] == saved["stage2"] == saved["stage3"]
    assert saved["stage1"]["lora_rank"] == 4 and "kl_weight" not in saved["stage1"]
    edited = params.model_copy(update={"stage1": params.stage1.model_copy(update={
        "peft": params.stage1.peft.model_copy(update={"lora_rank": 8, "vae_decoder": "value"})})})
    assert resolve_config("stage1", edited, edited.stage1, src)[0].peft.lora_rank == 8
    cfg, _ = resolve_config("stage2", edited, edited.stage2, src)
    assert cfg.peft == CaptionAdapters(**saved["stage1"])  # stage1's, not the edited params'


def test_old_config_json_forms_still_load(three_stages, tmp_path):
    """config.json `peft` as written before the adapters were typed (the whole caption_vectors.peft, loss
    weights included), without `vae_decoder` (then: one decoder per value), or absent."""
    import shutil

    folder, _, src, _ = three_stages
    old = {"impl": "fused", "kl_weight": 0.001, "lora_alpha": 32.0, "lora_rank": 4,  # a real stage1 config's
           "orthogonality_weight": 0.01, "vae_decoder": "attribute", "vae_latent_dim": 128}  # (rank as here)
    copy = tmp_path / "stage1"
    shutil.copytree(folder / "models/stage1", copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "peft": old}))
    model, loaded = load_model(copy, table=src.table)
    assert loaded.peft == CaptionAdapters(lora_rank=4) and model.caption_peft.lora_a.weight.shape[0] == 4
    assert CaptionAdapters.from_saved({"lora_rank": 8}) == CaptionAdapters(lora_rank=8, vae_decoder="value")
    no_peft = {k: v for k, v in cfg.items() if k != "peft"}
    assert TTSConfig.from_dict(no_peft).peft == CaptionAdapters(vae_decoder="value")
    with pytest.raises(ValueError, match="unknown caption adapter keys: \\['rank'\\]"):
        TTSConfig.from_dict({**cfg, "peft": {"rank": 4}})


def test_a_config_without_vae_decoder_builds_one_decoder_per_value():
    from test_caption_peft import toy_table

    from tristage.model.tts import build_caption_module

    table = toy_table()
    table.value_attribute = torch.tensor([0, 0])  # the toy's two values under one attribute
    cfg = TTSConfig.from_dict(dict(n_codebooks=2, codebook_size=16, n_mels=8, caption_dim=8, n_speakers=2,
                                   peft=dict(lora_rank=4, vae_latent_dim=6)))  # saved before vae_decoder
    assert build_caption_module(cfg, table).vae_dec_w.shape == (2, 6, 8)  # legacy: per value
    cfg.peft = CaptionAdapters(lora_rank=4, vae_latent_dim=6)  # the default now: per attribute
    assert build_caption_module(cfg, table).vae_dec_w.shape == (1, 6, 8)
