"""The evaluate stage end to end on the fake corpus: every contract key per stage, probes, audio, plots."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from tristage.config import load_params
from tristage.errors import UserError
from tristage.evaluation.metrics import CONTRACT_KEYS
from tristage.evaluation.run import classifier_trained, run_evaluate
from tristage.testing.fakes import default_fake_sources, write_tiny_params
from tristage.training.trainer import train_stage

pytestmark = pytest.mark.slow

HOP = 40  # samples per code frame of the fake vocoder


def fake_vocoder():
    """codes (K, T) -> a tone per frame whose pitch follows codebook 0 (deterministic)."""
    calls = []

    def voc(codes: torch.Tensor):
        calls.append(codes.clone())
        f = 200 + 20 * codes[0].float().numpy()
        t = np.arange(HOP) / 8000
        return np.concatenate([0.3 * np.sin(2 * np.pi * fi * t) for fi in f]).astype(np.float32), 8000

    return voc, calls


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    params = load_params(write_tiny_params(folder, steps=6))
    src = default_fake_sources(folder)
    for s in ("stage1", "stage2", "stage3"):
        train_stage(s, params, None, sources=src)
    return folder, params, src


def test_classifier_trained_follows_the_preset_chain():
    assert [classifier_trained(s) for s in ("stage1", "stage2", "stage3")] == [False, True, True]


def test_evaluate_writes_every_contract_key_samples_and_plots(trained):
    folder, params, src = trained
    params = load_params(folder / "params.yaml", ["evaluate.n_samples=2", "evaluate.max_sample_frames=12"])
    voc, calls = fake_vocoder()
    doc = run_evaluate(params, None, sources=src, vocoder=(voc, dict(name="fake", pretrained=False)))
    on_disk = json.loads((folder / "metrics/evaluate.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    assert on_disk["final_stage"] == "stage3"
    for stage in ("stage1", "stage2", "stage3"):
        m = on_disk[stage]
        assert set(CONTRACT_KEYS) <= set(m), stage
        assert m["mel_loss"] > 0 and 0 <= m["mel_top1"] <= 1
        assert 0 <= m["speaker_probe_acc"] <= 1 and 0 <= m["emotion_probe_acc"] <= 1
    assert on_disk["stage1"]["speaker_acc"] is None and on_disk["stage1"]["speaker_acc_band"] is None
    assert on_disk["stage2"]["speaker_acc_band"] in ("below", "in", "above", "edge")
    assert on_disk["mel_loss"] == on_disk["stage3"]["mel_loss"]
    assert "not speech" in on_disk["note"] and on_disk["audio_is_speech"] is False
    # samples: matched + cross pairs for every stage, each wav as long as its generated codes
    samples = json.loads((folder / "data/samples/samples.json").read_text())
    kinds = {(s["stage"], s["kind"]) for s in samples["samples"]}
    assert kinds == {(st, k) for st in ("stage1", "stage2", "stage3") for k in ("matched", "cross")}
    for s in samples["samples"]:
        info = sf.info(folder / "data/samples" / s["wav"])
        assert info.frames == s["n_frames"] * HOP and s["is_speech"] is False
        assert s["speaker_ref"]["speaker"] != s["emotion_ref"]["speaker"] or s["kind"] == "matched"
    assert len(calls) == len(samples["samples"])
    for name in ("stages.png", "probes.png", "speaker_acc_band.png"):
        assert (folder / "plots/evaluate" / name).stat().st_size > 1000


def test_evaluate_is_deterministic(trained):
    folder, params, src = trained
    params = load_params(folder / "params.yaml", ["evaluate.n_samples=1", "evaluate.max_sample_frames=8",
                                                  "evaluate.stages=[stage2]"])
    a = run_evaluate(params, None, sources=src, vocoder=(fake_vocoder()[0], {}))
    b = run_evaluate(params, None, sources=src, vocoder=(fake_vocoder()[0], {}))
    assert a == b


def test_missing_stage_names_the_stage_to_run(tmp_path):
    params = load_params(write_tiny_params(tmp_path, steps=2))
    with pytest.raises(UserError, match=r"run stage1 first \(dvc repro stage1\)"):
        run_evaluate(params, None, sources=default_fake_sources(tmp_path), vocoder=(fake_vocoder()[0], {}))


def test_bad_stage_name_is_a_params_error(tmp_path):
    from tristage.errors import ParamsError

    with pytest.raises(ParamsError, match="evaluate.stages"):
        load_params(write_tiny_params(tmp_path, steps=2), ["evaluate.stages=[stage9]"])


def test_default_vocoder_decodes_with_the_features_codec_and_reports_its_provenance(tmp_path):
    """The evaluate stage's audio comes from the very codec weights the features stage saved."""
    from tristage.evaluation.run import default_vocoder
    from tristage.features.codec import prepare_codec
    from tristage.features.config import FeaturesParams
    from tristage.fsio import write_json

    fp = FeaturesParams(codec=dict(kind="dac"))  # the random-init DAC (the mel VQ codec: test_melvq.py)
    model, info = prepare_codec(fp.codec, tmp_path)
    write_json(tmp_path / "meta.json", dict(codec=info))
    voc, prov = default_vocoder(tmp_path, "cpu")
    assert prov == dict(name=info["name"], kind="dac", path=None, pretrained=False, speech=False)
    codes = torch.randint(0, info["codebook_size"], (info["n_codebooks"], 6))
    wav, sr = voc(codes)
    assert sr == info["sample_rate"] and wav.shape == (6 * info["hop_length"],)
    from tristage.features.codec import decode_codes

    ref, _ = decode_codes(model, codes)
    assert np.array_equal(wav, ref)
