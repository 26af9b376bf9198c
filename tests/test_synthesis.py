"""Using a trained model: stop token, KV cache, self-contained model folders, the API and the CLI."""
from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tristage.captions.config import CaptionAdapters
from tristage.errors import UserError
from tristage.model.config import TTSConfig
from tristage.model.decoder import stop_loss
from tristage.model.folder import load_model
from tristage.model.tts import build_model
from tristage.synthesis import TTS, edit_caption
from tristage.synthesis.api import SynthesisWarning
from tristage.testing.fakes import TINY_MODEL, fake_sources, train_fake_model

LEX = {"pitch": {"high": ["high-pitched", "high pitch"], "low": ["low-pitched", "deep"]},
       "speed": {"fast": ["quickly", "fast"], "slow": ["slowly"]}}


@pytest.fixture(scope="module", params=["learned", "aligned"])
def random_model(request):
    src = fake_sources()
    cfg = TTSConfig(
        n_codebooks=2,
        codebook_size=16,
        n_mels=8,
        caption_dim=16,
        n_speakers=4,
        caption_module=src.caption_module,
        caption_table=src.caption_table,
        peft=CaptionAdapters(lora_rank=4),
        **{**TINY_MODEL, "n_layer": 2, "positions": request.param, "text_rate": 2.5},
    )
    torch.manual_seed(0)
    return build_model(cfg, src.table).eval()


def test_kv_cache_greedy_identical_and_batch_equals_single(random_model):
    m = random_model
    mel_a, mel_b = torch.randn(30, 8), torch.randn(45, 8)
    cached = m.generate("hello", [1, 2, 3], mel_a, n_frames=40, greedy=True, use_cache=True, stop=False)
    full = m.generate("hello", [1, 2, 3], mel_a, n_frames=40, greedy=True, use_cache=False, stop=False)
    assert cached.shape == (2, 40) and torch.equal(cached, full)
    single = [m.generate(t, c, x, n_frames=20, greedy=True, stop=False)
              for t, c, x in (("hi", [1], mel_a), ("a longer text here", [3, 4, 5, 6], mel_b))]
    batch = m.generate_batch(["hi", "a longer text here"], [[1], [3, 4, 5, 6]], [mel_a, mel_b], max_frames=20,
                             greedy=True, stop=False)
    assert all(torch.equal(a, b) for a, b in zip(single, batch))


def test_stop_head_ends_generation_and_max_frames_caps(random_model):
    m = random_model
    mel = torch.randn(30, 8)
    head = m.decoder.stop_head
    saved = head.weight.detach().clone(), head.bias.detach().clone()
    try:
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(10.0)  # "the speech has ended" everywhere: one frame (the minimum)
        out = m.generate_batch(["a", "b"], [[1], [2]], [mel, mel], max_frames=[30, 5], greedy=True)
        assert [o.shape[1] for o in out] == [1, 1]
        with torch.no_grad():
            head.bias.fill_(-10.0)  # never ends: each row runs to its own cap
        out = m.generate_batch(["a", "b"], [[1], [2]], [mel, mel], max_frames=[30, 5], greedy=True)
        assert [o.shape[1] for o in out] == [30, 5]
        assert all(((o >= 0) & (o < 16)).all() for o in out)  # no pad / bos left in the codes
    finally:
        with torch.no_grad():
            head.weight.copy_(saved[0])
            head.bias.copy_(saved[1])


def test_stop_loss_targets_positions_past_the_end():
    lengths = torch.tensor([3, 5])
    mask = torch.arange(7)[None] < (lengths + 2)[:, None]  # K = 3: S = T + K - 1 valid positions
    target = (torch.arange(7)[None] >= lengths[:, None]).float()
    right = (target * 2 - 1) * 20  # confident and right
    assert stop_loss(right, lengths, mask) < 1e-6
    assert stop_loss(-right, lengths, mask) > 10
    wrong_outside = right.masked_fill(~mask, -50.0) * 1  # positions outside the mask don't count
    assert stop_loss(wrong_outside, lengths, mask) < 1e-6


def test_edit_caption_replaces_adds_and_lists_valid_values():
    """(Every lexicon value on realistic captions: tests/test_caption_edit.py.)"""
    assert edit_caption("A woman with a high-pitched voice speaks quickly.", {"pitch": "low"}, LEX) == \
        "A woman with a low-pitched voice speaks quickly."
    assert edit_caption("A woman speaks.", {"speed": "slow"}, LEX) == "A woman speaks slowly."
    assert edit_caption("", {"speed": "Fast"}, LEX) == "The speaker talks quickly."
    with pytest.raises(UserError, match="valid: high, low"):
        edit_caption("x", {"pitch": "loud"}, LEX)
    with pytest.raises(UserError, match="unknown attribute 'accent'; valid: pitch, speed"):
        edit_caption("x", {"accent": "Irish"}, LEX)


# -- a trained model folder ------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    return folder, train_fake_model(folder, steps=4)


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.slow
def test_copied_model_folder_synthesises_without_the_data(trained, tmp_path):
    folder, stage3 = trained
    for p in stage3.rglob("*.json"):
        assert not [s for s in _strings(json.loads(p.read_text())) if s.startswith("/")], p
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(stage3, copy, ignore=shutil.ignore_patterns("checkpoints", "trainer_state.pt"))
    moved = [(folder / d, tmp_path / f"gone-{d}") for d in ("caption_vectors", "features")]
    for a, b in moved:
        a.rename(b)  # the training data is gone
    try:
        tts = TTS.from_pretrained(copy)
        assert tts.speakers and not tts.is_speech and "NOT speech" in tts.note
        wav, sr = tts.synthesize("utterance 1 of speaker 2", caption="a speaker2 sounding happy voice",
                                 speaker_ref=tts.speakers[0], seed=0, max_seconds=0.5)
        hop = tts.info["codec"]["hop_length"]
        assert sr == 16000 and wav.dtype == np.float32 and 0 < len(wav) <= 16 * hop  # 0.5 s = 16 frames
        assert len(wav) % hop == 0 and np.isfinite(wav).all()
        again, _ = tts.synthesize("utterance 1 of speaker 2", caption="a speaker2 sounding happy voice",
                                  speaker_ref=tts.speakers[0], seed=0, max_seconds=0.5)
        assert np.array_equal(wav, again)  # seeded
    finally:
        for a, b in moved:
            b.rename(a)


@pytest.mark.slow
def test_baked_caption_table_gives_the_training_model(trained):
    folder, stage3 = trained
    from tristage.testing.fakes import default_fake_sources

    src = default_fake_sources(folder / "again")
    baked, _ = load_model(stage3)  # the folder's own (adapter-baked) table
    raw, _ = load_model(stage3, table=src.table)  # the training table + the adapters in the weights
    mel = torch.randn(20, 8)
    ids = src.table.encode("a speaker1 sounding sad voice")
    a = baked.generate("hi there", ids, mel, n_frames=12, greedy=True, stop=False)
    b = raw.generate("hi there", ids, mel, n_frames=12, greedy=True, stop=False)
    assert torch.equal(a, b)


@pytest.mark.slow
def test_reference_audio_any_rate_channels_and_length(trained, tmp_path):
    _, stage3 = trained
    tts = TTS.from_pretrained(stage3)
    t = np.arange(44100 * 4) / 44100
    stereo = (
        np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1).astype(np.float32) * 0.3
    )
    sf.write(tmp_path / "stereo44k.wav", stereo, 44100)
    sf.write(tmp_path / "mono8k.flac", stereo[:8000 // 2, 0], 8000)
    sf.write(tmp_path / "short.wav", stereo[:100, 0], 44100)
    a = tts.reference_mel(tmp_path / "stereo44k.wav")
    b = tts.reference_mel((stereo, 44100))
    assert a.shape == (tts.max_ref_frames, 8) and torch.allclose(
        a, b, atol=1e-2
    )  # long: centre-cropped (file: 16-bit)
    short = tts.reference_mel(tmp_path / "mono8k.flac")  # 0.5 s: used whole
    assert short.shape[0] < tts.max_ref_frames or tts.max_ref_frames <= 1 + 8000 // 256
    with pytest.warns(SynthesisWarning, match="caption: none given"):  # attributes alone: no caption
        wav, sr = tts.synthesize(
            "hello",
            speaker_ref=tmp_path / "stereo44k.wav",
            emotion_ref=tmp_path / "mono8k.flac",
            attributes={"pitch": "low"},
            max_seconds=0.2,
            temperature=0,
        )
    assert sr == 16000 and len(wav) > 0
    with pytest.raises(UserError, match="at least 0.1 s"):
        tts.reference_mel(tmp_path / "short.wav")
    with pytest.raises(UserError, match="neither an audio file nor a stored reference"):
        tts.reference_mel("nobody.wav")
    with pytest.raises(UserError, match="unknown value 'purple' for pitch; valid: very high"):
        tts.synthesize("hello", attributes={"pitch": "purple"})


@pytest.mark.slow
def test_cli_single_and_requests_with_bad_rows(trained, tmp_path, capsys):
    from tristage.cli import main

    _, stage3 = trained
    sf.write(tmp_path / "ref.wav", (0.3 * np.sin(np.arange(16000) / 10)).astype(np.float32), 16000)
    out = tmp_path / "one.wav"
    rc = main(["synthesize", "--model", str(stage3), "--text", "hello there", "--caption", "a happy voice",
               "--speaker-ref", str(tmp_path / "ref.wav"), "--set", "speed=slow", "--out", str(out),
               "--max-seconds", "0.3"])
    printed = capsys.readouterr().out
    assert rc == 0 and out.is_file() and "NOT speech" in printed
    info = json.loads(printed.splitlines()[1])
    assert (
        sf.info(out).frames == round(info["duration"] * 16000)
        and info["caption"] == "A happy voice. The speaker talks slowly."
    )
    rows = [dict(text="first good", speaker_ref="ref.wav", name="a"),
            "{not json",
            dict(caption="no text"),
            dict(text="bad value", attributes={"pitch": "purple"}),
            dict(text="missing ref", speaker_ref="missing.wav"),
            dict(text="second good", speaker_ref=None, temperature=0, max_seconds=0.2, name="b"),
            dict(text="bad field", colour="red"),
            dict(text="dup", name="a")]
    req = tmp_path / "reqs.jsonl"
    req.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    rc = main(
        [
            "synthesize",
            "--model",
            str(stage3),
            "--requests",
            str(req),
            "--out-dir",
            str(tmp_path / "out"),
            "--max-seconds",
            "0.3",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1  # some rows were bad
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["line"] for r in results] == list(range(1, 9))
    by_line = {r["line"]: r for r in results}
    assert {k for k, r in by_line.items() if "error" not in r} == {1, 6}
    assert "invalid JSON" in by_line[2]["error"] and "text" in by_line[3]["error"]
    assert "purple" in by_line[4]["error"] and "missing.wav" in by_line[5]["error"]
    assert "colour" in by_line[7]["error"] and "unique" in by_line[8]["error"]
    for r in (by_line[1], by_line[6]):
        assert sf.info(tmp_path / "out" / r["wav"]).duration == pytest.approx(r["duration"], abs=1e-3)
        assert r["rtf"] > 0 and r["seconds_taken"] > 0 and r["n_frames"] >= 1
    assert f"{req}:2:" in err


def _spy_captions(monkeypatch, tts) -> list[str]:
    """The captions the model is conditioned on (every TTS of this folder's caption table class)."""
    seen: list[str] = []
    cls = type(tts.table)
    encode = cls.encode

    def spy(self, caption):
        seen.append(caption)
        return encode(self, caption)

    monkeypatch.setattr(cls, "encode", spy)
    return seen


@pytest.mark.slow
def test_api_cli_and_page_build_the_same_caption(trained, tmp_path, monkeypatch, capsys):
    pytest.importorskip("gradio")
    from tristage.cli import main
    from tristage.synthesis.app import KEEP, _generate_fn

    _, stage3 = trained
    tts = TTS.from_pretrained(stage3)
    seen = _spy_captions(monkeypatch, tts)
    caption = "A man with a low voice speaks quickly."
    edits = {"pitch": "very low", "speed": "moderate"}
    expected = "A man with a very deep voice speaks at a moderate pace."
    assert edit_caption(caption, edits, tts.lexicon) == expected

    tts.synthesize("hello there", caption=caption, speaker_ref=tts.speakers[0], attributes=edits,
                   max_seconds=0.2)
    api = seen[-1]
    rc = main(["synthesize", "--model", str(stage3), "--text", "hello there", "--caption", caption,
               "--speaker-ref", tts.speakers[0], "--set", "pitch=very low", "--set", "speed=moderate",
               "--out", str(tmp_path / "cli.wav"), "--max-seconds", "0.2"])
    assert rc == 0
    cli = seen[-1]
    printed = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][0])
    page = _generate_fn(tts, tmp_path)
    dropdowns = [edits.get(a, KEEP) for a in tts.lexicon]
    _, details = page("hello there", caption, None, tts.speakers[0], None, 0.8, 50, 1.0, 0.2, 0, *dropdowns)
    assert api == cli == printed["caption"] == seen[-1] == expected
    assert details.endswith(f"caption used: {expected}")


@pytest.mark.slow
def test_no_caption_or_no_reference_warns_and_uses_a_neutral_caption(trained, monkeypatch):
    from tristage.captions.lexicon import Matcher
    from tristage.synthesis.api import Request

    _, stage3 = trained
    tts = TTS.from_pretrained(stage3)
    seen = _spy_captions(monkeypatch, tts)
    with pytest.warns(SynthesisWarning, match="caption: none given") as got:
        tts.synthesize("hello there", speaker_ref=tts.speakers[0], max_seconds=0.2)
    assert len(got) == 1 and seen[-1] == tts.default_caption  # the model is never given an empty caption
    stated = Matcher(tts.lexicon).attributes(tts.default_caption)
    assert {k: stated.get(k) for k in ("pitch", "speed", "emotion")} == \
        {"pitch": "moderate", "speed": "moderate", "emotion": "neutral"}
    voice = tts.speakers[0]
    with pytest.warns(SynthesisWarning, match=f"speaker_ref: none given; the stored voice '{voice}'"):
        tts.synthesize("hello there", caption="A woman speaks.", max_seconds=0.2)
    # a caption and a voice: no warning; the same through the batch API, told in Result.warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", SynthesisWarning)
        tts.synthesize("hello there", caption="A woman speaks.", speaker_ref=tts.speakers[0], max_seconds=0.2)
        res = tts.synthesize_batch([Request("hello", caption="  ", max_seconds=0.2)], warn=False)[0]
    assert [w.split(":")[0] for w in res.warnings] == ["caption", "speaker_ref"]
    assert res.caption == tts.default_caption
    # a clip the model ends at once is not silent about it
    head = tts.model.decoder.stop_head
    monkeypatch.setattr(head.bias, "data", torch.full_like(head.bias, 10.0))
    monkeypatch.setattr(head.weight, "data", torch.zeros_like(head.weight))
    with pytest.warns(SynthesisWarning, match=r"ended the speech after 1 frame\(s\) \(0\.03 s\)"):
        wav, sr = tts.synthesize("hello", caption="A woman speaks.", speaker_ref=tts.speakers[0])
    assert len(wav) / sr < 0.05


@pytest.mark.slow
def test_user_errors_are_one_line_without_a_traceback(trained, tmp_path, capsys):
    import subprocess
    import sys

    from tristage.cli import main

    _, stage3 = trained
    base = ["synthesize", "--model", str(stage3), "--text", "hi", "--max-seconds", "0.2"]
    (tmp_path / "notaudio.wav").write_text("not audio")
    (tmp_path / "reqs.jsonl").write_text(json.dumps({"text": "a", "seed": "x"}) + "\n")
    bad = {
        "unknown value 'purple' for pitch": ["--set", "pitch=purple", "--out", str(tmp_path / "a.wav")],
        "--batch-size: 0": ["--requests", str(tmp_path / "reqs.jsonl"), "--out-dir", str(tmp_path / "o"),
                            "--batch-size", "0"],
        "--threads: -1": ["--threads", "-1", "--out", str(tmp_path / "a.wav")],
        "--device: 'tpu'": ["--device", "tpu", "--out", str(tmp_path / "a.wav")],
        "seed: 18446744073709551616": ["--seed", str(2**64), "--out", str(tmp_path / "a.wav")],
        "cannot read audio": ["--speaker-ref", str(tmp_path / "notaudio.wav"), "--out",
                              str(tmp_path / "a.wav")],
        "cannot write the wav": ["--caption", "A woman speaks.", "--out", str(tmp_path)],  # a folder
    }
    for message, args in bad.items():
        assert main(base + args) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("synthesize: error: ") and message in err[-1], (message, err)
        assert not [line for line in err[:-1] if not line.startswith("synthesize: warning: ")], err
    row = main(base[:3] + ["--requests", str(tmp_path / "reqs.jsonl"), "--out-dir", str(tmp_path / "o")])
    assert row == 1 and "reqs.jsonl:1: seed: 'x'" in capsys.readouterr().err  # a bad row: its line
    # the terminal of a real run: one line on stderr, no traceback
    proc = subprocess.run([sys.executable, "-m", "tristage.cli", *base, "--set", "pitch=purple", "--out",
                           str(tmp_path / "a.wav")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "synthesize:" in line] == \
        [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(proc.stderr.strip().splitlines()) == 1 and "unknown value 'purple'" in proc.stderr


@pytest.mark.slow
def test_page_shows_user_errors_and_warnings_without_a_traceback(
    trained, tmp_path, monkeypatch, caplog, capsys
):
    import logging

    gr = pytest.importorskip("gradio")
    from tristage.synthesis.app import KEEP, _generate_fn

    _, stage3 = trained
    tts = TTS.from_pretrained(stage3)
    page = _generate_fn(tts, tmp_path)
    keep = [KEEP] * len(tts.lexicon)
    (tmp_path / "notaudio.wav").write_text("not audio")
    caplog.set_level(logging.INFO, logger="tristage")
    for form, message in [
        (("hi", "A woman speaks.", None, tts.speakers[0], None, 0.8, 50, 1.0, 0.2, None), "seed: None"),
        (("hi", "A woman speaks.", None, tts.speakers[0], None, -1, 50, 1.0, 0.2, 0), "temperature: -1"),
        (("hi", "A woman speaks.", str(tmp_path / "notaudio.wav"), None, None, 0.8, 50, 1.0, 0.2, 0),
         "cannot read audio"),
        (("", "A woman speaks.", None, tts.speakers[0], None, 0.8, 50, 1.0, 0.2, 0), "text: empty"),
    ]:
        caplog.clear()
        with pytest.raises(gr.Error) as got:
            page(*form, *keep)
        assert got.value.print_exception is False and message in got.value.message  # no traceback from gradio
        assert len(got.value.message.splitlines()) == 1 and got.value.__suppress_context__
        assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.ERROR, None)]
        assert message in caplog.records[0].getMessage()
    assert "Traceback" not in capsys.readouterr().err
    # no caption, no voice: served, with the warnings on the page, in the log and in the details
    shown: list[str] = []
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: shown.append(message))
    caplog.clear()
    wav, details = page("hi", "", None, None, None, 0.8, 50, 1.0, 0.2, 0, *keep)
    assert Path(wav).is_file() and details.startswith("duration")
    assert [m.split(":")[0] for m in shown] == ["caption", "speaker_ref"]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "caption used: " + tts.default_caption in details and "\nwarning: caption: none given" in details


@pytest.mark.slow
def test_mlflow_pyfunc_model_predicts_audio(trained, tmp_path):
    import io

    import mlflow
    import pandas as pd

    from tristage.model.folder import load_references, read_info
    from tristage.synthesis.pyfunc import log_synthesis_model

    _, stage3 = trained
    ref = sorted(load_references(stage3, read_info(stage3)))[0]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("synth", artifact_location=str(tmp_path / "artifacts"))
    said: list[str] = []  # MLflow's own warnings go to its loggers and to warnings.warn
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("mlflow").addHandler(handler)
    try:
        with mlflow.start_run(experiment_id=exp) as run, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            log_synthesis_model(stage3)
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
    said += [str(w.message) for w in caught]
    assert not [m for m in said if "CloudPickle" in m or "Add type hints" in m], said
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert "python_model" not in model.metadata.flavors["python_function"]  # logged from code: no pickle
    sig = model.metadata.signature
    assert [c.name for c in sig.inputs.inputs][:4] == ["text", "caption", "speaker_ref", "emotion_ref"]
    assert model.metadata.saved_input_example_info is not None
    with pytest.warns(SynthesisWarning, match="caption: none given"):  # the second row's empty caption
        out = model.predict(pd.DataFrame([dict(text="hello there", caption="a happy voice", speaker_ref=ref,
                                               max_seconds=0.3),
                                          dict(text="second one", caption="", speaker_ref=ref)]))
    assert list(out["sample_rate"]) == [16000, 16000]
    wav, sr = sf.read(io.BytesIO(out["wav"][0]))
    assert sr == 16000 and len(wav) / sr == pytest.approx(out["duration"][0]) and out["duration"][0] <= 0.33


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


@pytest.mark.slow
def test_web_demo_in_a_real_browser(trained, tmp_path):
    """`make app`'s page, driven by Playwright on Debian's chromium: type, generate, get a playable wav."""
    import io
    import os
    import re
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no chromium binary (apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("gradio")
    _, stage3 = trained
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tristage.synthesis.app", "--model", str(stage3), "--port",
                             str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "app.log").read_text()
                time.sleep(0.5)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#generate", timeout=60_000)
            assert "NOT speech" in page.locator("#codec-note").inner_text()  # the random-init note is visible
            page.locator("#text textarea").fill("Hello from a real browser.")
            page.click("#generate")
            page.wait_for_function(
                "() => (document.querySelector('#details textarea') || {}).value?.startsWith('duration')",
                timeout=180_000,
            )
            details = page.locator("#details textarea").input_value()
            shown = float(re.match(r"duration ([\d.]+) s", details).group(1))
            src = re.findall(r'(?:src|href)="([^"]+\.wav)"', page.locator("#output").inner_html())[0]
            played = page.evaluate("""async (src) => { const a = new Audio(src);
                await new Promise((ok, bad) => { a.onloadedmetadata = ok; a.onerror = bad; });
                return a.duration; }""", src)
            body = page.request.get(src).body()
            browser.close()
        wav, sr = sf.read(io.BytesIO(body))
        assert sr == 16000 and len(wav) / sr == pytest.approx(shown, abs=1e-3)
        assert played == pytest.approx(shown, abs=0.01) and 0 < shown <= 6.0  # the page's max-seconds cap
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_baked_real_caption_table_round_trip(tmp_path):
    """The real CaptionVectorTable + CaptionPEFT: baked, saved, loaded -> the same states as the adapters."""
    from tristage.captions.peft import CaptionPEFT, enhanced_table
    from tristage.captions.vectors import CaptionVectorTable
    from tristage.model.folder import BakedCaptions, _save_caption

    tokens = ["<unk>", "a", "b", "</s>", "<gender:female>", "<pitch:high>", "a\tb\t</s>"]
    kinds = ["unk", "token", "token", "token", "attribute", "attribute", "context"]
    bases = ["<unk>", "a", "b", "</s>", "<gender:female>", "<pitch:high>", "b"]
    vectors = np.random.default_rng(0).standard_normal((len(tokens), 8)).astype(np.float32)
    table = CaptionVectorTable(tokens, kinds, bases, vectors, {"name": "toy", "pretrained": False})
    peft = CaptionPEFT(table, CaptionAdapters(lora_rank=4, lora_alpha=8.0, vae_latent_dim=6))
    with torch.no_grad():
        for p in peft.parameters():
            p.add_(0.1 * torch.randn_like(p))  # "trained" adapters: no longer the identity
    _save_caption(tmp_path / "caption", table, enhanced_table(peft, len(tokens)))
    loaded = CaptionVectorTable.load(tmp_path / "caption")
    assert loaded.meta["baked"] and loaded.tokens == tokens
    ids = torch.tensor([[1, 4, 2, 5, 3], [6, 5, 0, 0, 0]])
    mask = ids != 0
    peft.eval()
    with torch.no_grad():
        want = peft(ids, mask).states
    got = BakedCaptions(loaded)(ids, mask).states
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(
        got, torch.as_tensor(vectors)[ids] * mask[..., None]
    )
