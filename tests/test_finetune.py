"""Your own voice: `tristage finetune` on a small folder of recordings made here with espeak-ng, from a
toy model folder trained by the shrunk DAG (`dvc repro stage3` in a copy of the repo, or the session's
reproduced DAG when another test file built it already)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_repo, project_env, shrink_params

# a short fine-tune: the toy model, few steps, two held-out utterances, short clips
FAST = ["--steps", "2", "--heldout", "2", "--min-utterances", "6", "--set", "train.batch_size=4",
        "--set", "train.eval_every=1", "--set", "report.length_factor=1.0"]


def make_voice(folder: Path, n: int, voice: str = "en-us+m3", start: int = 0) -> list[str]:
    """`n` espeak utterances of one voice as a plain folder of name.wav + name.txt; -> their names."""
    import soundfile as sf

    from tristage.corpus.espeak import Espeak
    from tristage.corpus.text import sentence

    tts, rng = Espeak.get(), np.random.default_rng(start)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(start, start + n):
        text = sentence(rng)
        x = tts.synth(text, voice, rate=int(rng.choice([140, 160, 180])), pitch=30)
        sf.write(folder / f"take{i:02d}.wav", x.astype(np.float32) / 32768.0, tts.sample_rate)
        (folder / f"take{i:02d}.txt").write_text(text + "\n", encoding="utf-8")
        names.append(f"take{i:02d}")
    return names


def finetune(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tristage.cli", "finetune", *args], cwd=cwd,
                          capture_output=True, text=True, env=env or project_env(), timeout=900)


def _summary(r: subprocess.CompletedProcess) -> dict:
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A toy model folder (stage3 of the shrunk DAG): the session's reproduced DAG's when another test file
    built it, else the shrunk DAG's stages up to stage3 run here one by one (`python -m steps.<stage>`)."""
    from tristage.config import STAGES

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    shared = root / "reproduced" / "repo" / "models" / "stage3"
    if (root / "reproduced" / "done").exists() and (shared / "bins.json").is_file():
        return shared
    repo = copy_repo(tmp_path_factory.mktemp("ftbase") / "repo")
    shrink_params(repo / "params.yaml")
    for stage in STAGES[: STAGES.index("stage3") + 1]:
        r = subprocess.run([sys.executable, "-m", f"steps.{stage}"], cwd=repo, capture_output=True, text=True,
                           env=project_env())
        assert r.returncode == 0, f"{stage}: {r.stderr[-3000:]}"
    return repo / "models" / "stage3"


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> Path:
    """10 good pairs, one wav without its transcript, one wav that isn't audio, one stray text file."""
    folder = tmp_path_factory.mktemp("voice") / "my_voice"
    make_voice(folder, 10)
    make_voice(folder, 1, start=10)
    (folder / "take10.txt").unlink()  # missing transcript
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    (folder / "broken.txt").write_text("This one won't read.\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tuned(base, voice, tmp_path_factory):
    """One fine-tune of `voice`, tracked in a fresh MLflow database and registered: (project, result)."""
    project = tmp_path_factory.mktemp("project")
    env = project_env(TRISTAGE_TRACKING="1", MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    r = finetune(project, "--model", str(base), "--data", str(voice), "--speaker", "robin", "--out",
                 "models/robin", "--register", *FAST, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return project, r


# -- the whole command ------------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_makes_a_model_folder_that_speaks_and_a_report(base, tuned):
    from tristage.synthesis import TTS

    project, r = tuned
    out = project / "models" / "robin"
    tts = TTS.from_pretrained(out)
    assert "robin" in tts.speakers  # the user's voice is a stored reference of the new folder
    wav, sr = tts.synthesize("Hello there.", caption="A man speaks slowly.", speaker_ref="robin",
                             max_seconds=0.3)
    assert sr == tts.sample_rate and len(wav) > 0 and np.isfinite(wav).all()
    report = json.loads((out / "finetune.json").read_text())
    assert report["speaker"] == "robin" and len(report["heldout"]) == 2 and report["n_train"] == 8
    for row in ("ground_truth", "resynthesis", "before", "after"):
        assert report["rows"][row]["n_clips"] == 2
        assert 0 <= report["rows"][row]["wer"] and -1 <= report["rows"][row]["speaker_sim"] <= 1
        assert report["rows"][row]["dnsmos_ovrl"] > 0
    assert report["delta"]["speaker_sim"] == pytest.approx(
        report["rows"]["after"]["speaker_sim"] - report["rows"]["before"]["speaker_sim"], abs=1e-3)
    assert set(report["leakage"]) == {"before", "after"}
    assert "| speaker_sim" in (out / "finetune.md").read_text() and (out / "finetune.png").stat().st_size > 0
    assert {p.parent.name for p in (out / "audio").glob("*/*.wav")} == {"ground_truth", "resynthesis",
                                                                         "before", "after"}
    # the folder's JSON files hold no absolute paths (contract: copy it anywhere)
    for p in out.glob("*.json"):
        assert str(project) not in p.read_text() and str(base) not in p.read_text(), p.name


@pytest.mark.slow
def test_finetune_trains_the_decoder_only_and_keeps_the_baked_captions(base, tuned):
    from safetensors.torch import load_file

    project, _ = tuned
    out = project / "models" / "robin"
    old, new = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(old) == set(new)
    changed = {k.split(".")[0] for k in old if not np.array_equal(old[k].numpy(), new[k].numpy())}
    assert changed == {"decoder"}  # the `finetune` preset: conditioners, classifier, caption adapters kept
    # the caption table is the base's, baked, untouched (no adapters applied a second time)
    for name in ("vectors.safetensors", "tokens.json"):
        assert (base / "caption" / name).read_bytes() == (out / "caption" / name).read_bytes()
    info = json.loads((project / "models/robin/synthesis.json").read_text())
    assert info["stage"] == "finetune" and info["caption_baked"] and info["finetune"]["speaker"] == "robin"


@pytest.mark.slow
def test_finetune_bins_with_the_base_corpus_bins_and_encodes_with_its_codec(base, tuned):
    project, _ = tuned
    work = project / "models" / ".finetune" / "robin"
    bins = json.loads((work / "annotated" / "bins.json").read_text())
    assert bins == json.loads((base / "bins.json").read_text())
    meta = json.loads((work / "features" / "meta.json").read_text())
    assert meta["codec"]["kind"] == "melvq" and "copied_from" in json.dumps(
        json.loads((work / "features" / "codec.json").read_text()))


@pytest.mark.slow
def test_bad_files_get_one_line_each_and_the_good_pairs_are_used(tuned):
    _, r = tuned
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("finetune: skipped")]
    assert any("take10.wav: missing_text" in ln for ln in lines), lines
    assert any("broken.wav: unreadable_audio" in ln for ln in lines), lines
    assert len([ln for ln in lines if "broken" in ln or "take10" in ln]) == 2  # one line each
    assert _summary(r)["report"]["before/speaker_sim"] is not None


@pytest.mark.slow
def test_finetune_is_logged_and_registered_in_mlflow(tuned):
    from mlflow.tracking import MlflowClient

    project, _ = tuned
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tristage").experiment_id],
                              filter_string="tags.`tristage.role` = 'finetune'")
    assert len(runs) == 1 and runs[0].data.tags["speaker"] == "robin"
    assert "after/speaker_sim" in runs[0].data.metrics and "train/mel_loss" in runs[0].data.metrics
    assert [m.name for m in client.search_registered_models()] == ["robin"]


@pytest.mark.slow
def test_rerun_does_no_work_and_changed_steps_rerun_only_training_and_later(base, voice, tuned):
    project, _ = tuned
    args = ["--model", str(base), "--data", str(voice), "--speaker", "robin", "--out", "models/robin",
            "--register", *FAST]
    stamp = (project / "models/robin/model.safetensors").stat().st_mtime_ns
    again = finetune(project, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(_summary(again)["steps"].values()) == {"unchanged"} and not _summary(again)["published"]
    assert "Running stage" not in again.stderr
    assert (project / "models/robin/model.safetensors").stat().st_mtime_ns == stamp
    more = finetune(project, *args, "--steps", "3")
    assert more.returncode == 0, more.stderr[-3000:]
    steps = _summary(more)["steps"]
    assert [s for s, o in steps.items() if o == "ran"] == ["train", "report", "track"]
    assert {steps[s] for s in ("import", "prepare", "split", "annotate", "features")} == {"unchanged"}
    assert "Stage 'features' didn't change, skipping" in more.stderr
    assert json.loads((project / "models/robin/training.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_too_few_utterances_is_one_error_naming_the_flag(base, tmp_path):
    make_voice(tmp_path / "few", 4)
    r = finetune(tmp_path, "--model", str(base), "--data", str(tmp_path / "few"), "--speaker", "kim", "--out",
                 "models/kim", "--quiet", *FAST)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("finetune: error: split: ") and "4 usable utterance(s)" in last
    assert "--min-utterances 6" in last and "--heldout 2" in last
    assert not (tmp_path / "models" / "kim").exists()


# -- parts, fast ------------------------------------------------------------------------------------

def test_heldout_utterances_are_seeded_and_independent_of_listing_order():
    from tristage.finetune.data import heldout_ids

    ids = [f"u{i:02d}" for i in range(20)]
    a = heldout_ids(ids, 3, 1234)
    assert a == heldout_ids(list(reversed(ids)), 3, 1234) and len(set(a)) == 3 and set(a) <= set(ids)
    assert a != heldout_ids(ids, 3, 1)


def _args(tmp_path, **kw):
    import argparse

    from tristage.cli import _parser

    model, data = tmp_path / "base", tmp_path / "data"
    argv = ["finetune", "--model", str(model), "--data", str(data), "--speaker", "sam", "--out",
            str(tmp_path / "models" / "sam")]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", *([] if v is True else [str(v)])]
    ns = _parser().parse_args(argv)
    return ns if isinstance(ns, argparse.Namespace) else None


@pytest.mark.parametrize("flag, value, named", [("steps", 0, "--steps"), ("heldout", 0, "--heldout"),
                                                ("set", "train.batchsize=4", "--set train.batchsize"),
                                                ("set", "report.dnsmos=maybe", "--set report.dnsmos")])
def test_bad_values_are_one_line_naming_the_flag(tmp_path, flag, value, named):
    from tristage.errors import UserError
    from tristage.finetune.run import _params_or_exit

    with pytest.raises(UserError, match=f"^{named}: "):
        _params_or_exit(_args(tmp_path, **{flag: value}))


def test_set_reaches_the_finetune_params(tmp_path):
    from tristage.finetune.run import _params_or_exit

    fp = _params_or_exit(_args(tmp_path, steps=7, set="train.batch_size=3"))
    assert (fp.train.steps, fp.train.batch_size, fp.train.preset) == (7, 3, "finetune")
    assert fp.model.is_absolute() and fp.project == Path.cwd().resolve()


def test_the_preset_freezes_what_stage3_freezes_and_unfreeze_names_frozen_modules():
    from tristage.errors import UserError
    from tristage.finetune.config import TrainParams
    from tristage.finetune.train import finetune_preset
    from tristage.training.presets import CONDITIONERS, PRESETS

    preset = finetune_preset(TrainParams())
    assert preset == PRESETS["finetune"] and "decoder" not in preset.frozen and not preset.grl
    assert set(CONDITIONERS) | {"caption_peft", "speaker_classifier"} == set(preset.frozen)
    assert "speaker_perceiver" not in finetune_preset(TrainParams(unfreeze=["speaker_perceiver"])).frozen
    with pytest.raises(UserError, match="^finetune.train.unfreeze: decoder: not frozen"):
        finetune_preset(TrainParams(unfreeze=["decoder"]))


def test_the_base_folder_is_never_the_output_and_inputs_are_checked(tmp_path):
    from tristage.errors import UserError
    from tristage.finetune.run import _params_or_exit, check_inputs

    (tmp_path / "base").mkdir()
    fp = _params_or_exit(_args(tmp_path))
    with pytest.raises(UserError, match="not a model folder"):
        check_inputs(fp)
    (tmp_path / "base" / "synthesis.json").write_text("{}")
    with pytest.raises(UserError, match="^--data: "):
        check_inputs(fp)
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="^--out: .* base model folder"):
        check_inputs(fp.model_copy(update={"out": tmp_path / "base"}))
    (tmp_path / "models" / "sam").mkdir(parents=True)
    (tmp_path / "models" / "sam" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="^--out: .* not a fine-tune's output"):
        check_inputs(fp)


def test_the_pipeline_tracks_the_right_params_per_step(tmp_path):
    from tristage.finetune.config import FinetuneParams
    from tristage.finetune.plan import STEPS, dvc_stages, stage_params

    model = tmp_path / "base"
    (model / "codec").mkdir(parents=True)
    (model / "codec" / "codec.json").write_text(json.dumps({"kind": "melvq"}))
    (model / "bins.json").write_text("{}")
    fp = FinetuneParams(model=model, data=tmp_path / "data", speaker="sam", out=tmp_path / "out")
    info = {"codec": {"dir": "codec"}, "mel": {"n_mels": 80, "sample_rate": 16000, "other": 1}}
    stages = dvc_stages(fp, info)["stages"]
    assert list(stages) == list(STEPS)
    keys = {s: [k for p in st["params"] for k in (p["finetune.yaml"] if isinstance(p, dict) else [p])]
            for s, st in stages.items()}
    assert keys["train"] == ["finetune.model", "finetune.speaker", "finetune.train"]
    assert not any("finetune.train" in k for s in ("import", "prepare", "split", "annotate", "features")
                   for k in keys[s])  # a changed --steps reruns train and what follows only
    assert not any("project" in k for ks in keys.values() for k in ks)  # where it ran from reruns nothing
    assert str(model / "bins.json") in stages["annotate"]["deps"]
    assert str(model / "codec") in stages["features"]["deps"]
    params = stage_params(model, info)
    assert params["annotate"]["bins"] == str(model / "bins.json")
    assert params["features"]["codec"] == {"kind": "melvq", "fitted": str(model / "codec")}
    assert params["features"]["mel"] == {"n_mels": 80, "sample_rate": 16000}
    from tristage.config import load_params

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_params(tmp_path / "params.yaml").annotate.bins == model / "bins.json"  # a valid params file


def test_annotate_bins_param_must_name_a_bins_file(tmp_path):
    from tristage.annotation.run import _fixed_bins
    from tristage.errors import UserError

    with pytest.raises(UserError, match="^annotate.bins: .*not found"):
        _fixed_bins(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"format": 2}')
    with pytest.raises(UserError, match="^annotate.bins: .*bad.json"):
        _fixed_bins(tmp_path / "bad.json")


def test_the_page_lists_the_model_folders(tmp_path):
    from tristage.synthesis.app import model_choices

    for name in ("stage3", "robin", ".finetune", "notes"):
        (tmp_path / name).mkdir()
    for name in ("stage3", "robin", ".finetune"):
        (tmp_path / name / "synthesis.json").write_text("{}")
    assert model_choices(tmp_path) == [str(tmp_path / "robin"), str(tmp_path / "stage3")]
    assert model_choices(tmp_path, "elsewhere/m")[0] == "elsewhere/m"
    assert model_choices(tmp_path / "missing") == []


def test_the_flow_calls_the_command_line_with_its_parameters():
    from prefect.utilities.callables import parameter_schema

    from flows.finetune import command, finetune

    argv = command("my_voice", "me", "models/stage3", "", "finetune", 0, "auto", 3, True)
    assert argv[1:4] == ["-m", "tristage.cli", "finetune"] and argv[-1] == "--register"
    assert argv[argv.index("--out") + 1] == str(Path("models") / "me") and "--steps" not in argv
    props = parameter_schema(finetune.fn).model_dump()["properties"]
    assert {"data", "speaker", "preset", "steps", "model"} <= set(props)
    assert props["data"].get("description") and props["preset"].get("description")


@pytest.mark.slow
@pytest.mark.long
def test_benchmark_runs_on_the_reproduced_dag_held_out_speakers(base, tmp_path):
    """benchmarks/finetune.py end to end on the shrunk DAG: each held-out speaker's utterances, a
    fine-tune of the preset's size (150 steps), its before / after table and results.json."""
    root = base.parents[1]
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "benchmarks.finetune", "--root", str(root), "--n", "6",
                        "--heldout", "2", "--budget-s", "900", "--out", str(out)],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                       env=project_env(), timeout=1800)
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] and all("error" not in row for row in results["rows"]), r.stdout + r.stderr[-3000:]
    for row in results["rows"]:
        assert -1 <= row["before"] <= 1 and -1 <= row["after"] <= 1 and row["wall_s"] < 900
        assert row["passed"] == (row["after"] > row["before"])
    assert r.returncode == (0 if results["passed"] else 1) and "speaker" in r.stdout


def test_the_finetune_step_trains_with_guided_attention_and_input_noise_as_a_stage_does(tmp_path):
    """`finetune.train.guided_attention` / `input_noise` reach the model's forward pass as the stages' do
    (training/config.forward_args), and too many guided heads is one error naming the key."""
    from tristage.config import load_params
    from tristage.errors import UserError
    from tristage.finetune.config import FinetuneParams, TrainParams
    from tristage.finetune.train import _Loop, finetune_preset, stage_params
    from tristage.model.config import TTSConfig
    from tristage.model.tts import TTS
    from tristage.testing.fakes import TINY_MODEL, FakeCaptionPEFT, fake_sources, write_tiny_params
    from tristage.training.data import TrainData

    src = fake_sources(table_dir=tmp_path / "caption_vectors")
    params = load_params(write_tiny_params(tmp_path))
    cfg = TTSConfig(n_codebooks=src.n_codebooks, codebook_size=src.codebook_size, n_mels=src.n_mels,
                    caption_dim=src.table.dim, n_speakers=len(src.mapping), **TINY_MODEL)
    model = TTS(cfg, FakeCaptionPEFT(src.table))
    data = TrainData(src, params.stage1, cfg.max_text_len, cfg.max_frames)
    data.val_batches = lambda batch_size: []  # no validation: one step is what is looked at
    calls, forward = [], model.forward

    def spy(batch, **kwargs):
        calls.append(kwargs)
        return forward(batch, **kwargs)

    model.forward = spy

    def loop(**train):
        tp = TrainParams(**train)
        fp = FinetuneParams(model=tmp_path, data=tmp_path, speaker="robin", out=tmp_path / "out",
                            train=tp)
        sp = stage_params(fp, tmp_path, {"max_ref_frames": 40})
        return _Loop(model, data, finetune_preset(tp), sp, "cpu")

    loop().step(1)
    on = dict(guided_attention=dict(weight=1.0, heads=1, sigma=0.3), input_noise=dict(coarse=0.1, fine=0.4))
    loop(**on).step(1)
    assert calls == [{}, dict(align=(1, 0.3), input_noise=(0.1, 0.4))]
    with pytest.raises(UserError, match=r"^finetune.train.guided_attention.heads: 9 but the decoder has 2 "):
        loop(guided_attention=dict(weight=1.0, heads=9))
