"""params.yaml -> typed config: defaults, validation, overrides, path resolution."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import project_env

from tristage.captions.config import CaptionAdapters, CaptionVectorsParams
from tristage.config import STAGES, Params, dump_defaults, load_params, parse_override
from tristage.errors import ParamsError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_repo_params_file_equals_the_code_defaults():
    """params.yaml ships the seed values; the schema defaults are the same values."""
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(shipped) == set(STAGES)
    assert shipped == dump_defaults()


def test_seed_values_are_the_defaults():
    p = load_params(REPO / "params.yaml")
    assert (p.speaker_mapping.top_k, p.speaker_mapping.min_samples) == (500, 50)
    peft = p.stage1.peft
    assert (peft.lora_rank, peft.lora_alpha, peft.vae_latent_dim, peft.orthogonality_weight) == (
        16,
        32.0,
        128,
        0.01,
    )
    assert peft.adapters() == CaptionAdapters()  # one place holds the adapters' defaults
    assert (p.stage2.peft.kl_weight, p.stage3.peft.orthogonality_weight) == (0.001, 0.01)
    assert (p.stage2.grl_lambda, p.stage2.speaker_loss_weight) == (1.0, 0.1)
    assert tuple(p.stage2.speaker_acc_band) == (0.3, 0.6)
    assert p.stage3.lr_scale == 0.5 and p.stage1.lr_scale == 1.0


def test_every_dvc_stage_has_a_section_and_a_step():
    """One name, one hop: dvc stage = steps/<stage>.py = params key; DAG order kept."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == [s for s in STAGES if s in dvc]
    assert {"corpus", "prepare", "speaker_mapping"} <= set(dvc)
    for stage in dvc:
        assert stage in Params.model_fields, stage
        assert (REPO / "steps" / f"{stage}.py").is_file(), stage
        assert stage in dvc, stage
        assert dvc[stage]["cmd"] == f"python -m steps.{stage}"


def _covers(entry: str, key: str) -> bool:
    """A dvc.yaml `params:` entry (`stage1`, `features.codec`) reads `key` when it is the key or holds it."""
    return key == entry or key.startswith(entry + ".")


def test_caption_adapters_are_stage1_params_that_caption_vectors_does_not_read():
    """The PEFT settings are training params (stage1.peft: adapters and loss weights; stage2/3.peft: loss
    weights): the caption_vectors stage reads none of them, the training stages read their own."""
    from tristage.training.config import PeftLossParams, PeftParams

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "peft" not in CaptionVectorsParams.model_fields
    keys = [f"stage1.peft.{k}" for k in PeftParams.model_fields]
    keys += [f"{s}.peft.{k}" for s in ("stage2", "stage3") for k in PeftLossParams.model_fields]
    for key in keys:
        assert not any(_covers(p, key) for p in dvc["caption_vectors"]["params"]), key
        assert any(_covers(p, key) for p in dvc[key.split(".")[0]]["params"]), key


@pytest.mark.slow
def test_editing_a_peft_key_leaves_caption_vectors_up_to_date(tmp_path):
    """`dvc status` on this repo's params and stages' params lists (commands stubbed): after a run, an edit
    of stage1.peft changes stage1 only."""
    dvc_exe = str(Path(sys.executable).with_name("dvc"))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        s: {"cmd": "true", "params": stages[s]["params"]} for s in ("caption_vectors", "stage1", "stage2")}}))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    run = lambda *a: subprocess.run([dvc_exe, *a], cwd=tmp_path, capture_output=True, text=True, check=True)
    run("init", "--no-scm", "-q")
    run("repro", "-q")
    assert json.loads(run("status", "--json").stdout) == {}
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["stage1"]["peft"].update(kl_weight=0.002, lora_rank=8, vae_decoder="value")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert set(json.loads(run("status", "--json").stdout)) == {"stage1"}


def test_relative_paths_resolve_against_the_params_folder(tmp_path):
    sub = tmp_path / "proj"
    sub.mkdir()
    p = load_params(write(sub, {"prepare": {"manifest": "my/manifest.jsonl"}}))
    assert p.prepare.manifest == (sub / "my/manifest.jsonl").resolve()
    assert p.prepare.out_dir == (sub / "data/prepared").resolve()
    assert p.base_dir == sub.resolve()


def test_absolute_paths_stay(tmp_path):
    p = load_params(write(tmp_path, {"prepare": {"manifest": "/abs/m.jsonl"}}))
    assert p.prepare.manifest == Path("/abs/m.jsonl")


@pytest.mark.parametrize(
    "data, key",
    [
        ({"speaker_mapping": {"top_k": "many"}}, "speaker_mapping.top_k"),  # bad type
        ({"speaker_mapping": {"top_k": 0}}, "speaker_mapping.top_k"),  # out of range
        ({"stage2": {"grl_lambda": -1.0}}, "stage2.grl_lambda"),
        ({"prepare": {"min_duration": 5.0, "max_duration": 1.0}}, "prepare"),
        ({"prepare": {"manifets": "x.jsonl"}}, "prepare.manifets"),  # unknown key (typo)
        ({"stage4": {}}, "stage4"),  # unknown stage
        ({"stage1": {"peft": {"lora_rank": -2}}}, "stage1.peft.lora_rank"),
        ({"stage1": {"peft": {"vae_decoder": "token"}}}, "stage1.peft.vae_decoder"),
        ({"stage2": {"peft": {"lora_rank": 8}}}, "stage2.peft.lora_rank"),  # the adapters are stage1's
        ({"caption_vectors": {"peft": {}}}, "caption_vectors.peft: unknown key: moved to stage1.peft"),
    ],
)
def test_invalid_values_fail_naming_the_key(tmp_path, data, key):
    with pytest.raises(ParamsError) as exc:
        load_params(write(tmp_path, data))
    msg = str(exc.value)
    assert key in msg and "\n" not in msg


def test_override_applies_and_is_typed(tmp_path):
    p = load_params(
        write(tmp_path, {}),
        [
            "stage2.grl_lambda=2.0",
            "speaker_mapping.top_k=10",
            "stage2.speaker_acc_band=[0.2, 0.5]",
            "caption_vectors.encoder=null",
        ],
    )
    assert p.stage2.grl_lambda == 2.0
    assert p.speaker_mapping.top_k == 10
    assert tuple(p.stage2.speaker_acc_band) == (0.2, 0.5)
    assert p.caption_vectors.encoder is None


@pytest.mark.parametrize("item, key", [("stage2.grl_lambdaa=1", "stage2.grl_lambdaa"),
                                        ("stage2.grl_lambda=abc", "stage2.grl_lambda"),
                                        ("novalue", "novalue"), ("stage2..x=1", "stage2..x")])
def test_bad_override_fails_naming_the_key(tmp_path, item, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        load_params(write(tmp_path, {}), [item])


def test_parse_override_yaml_scalars():
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=x=y") == (["a"], "x=y")


@pytest.mark.parametrize("text", ["[1, 2", "- just\n- a list\n"])
def test_malformed_file_is_a_clean_error(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ParamsError, match="params.yaml"):
        load_params(p)


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_stage_cli_rejects_bad_params_before_work(tmp_path):
    """One clear line naming the key, exit 2, and no output written."""
    params = write(tmp_path, {"speaker_mapping": {"min_samples": -5}})
    r = subprocess.run([sys.executable, "-m", "steps.speaker_mapping", "--params", str(params)],
                       cwd=tmp_path, capture_output=True, text=True, env=project_env())
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "speaker_mapping.min_samples" in lines[0]
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


def test_stage_cli_bad_override(tmp_path):
    params = write(tmp_path, {})
    r = subprocess.run(
        [sys.executable, "-m", "steps.prepare", "--params", str(params), "--set", "prepare.workers=0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=project_env(),
    )
    assert r.returncode == 2 and "prepare.workers" in r.stderr

