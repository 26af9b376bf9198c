"""`tristage import`: a tiny corpus of each format, made here, becomes a manifest `prepare` keeps;
bad entries are rejected with a reason and the rest goes on."""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from tristage.cli import main as cli
from tristage.data.config import PrepareParams
from tristage.data.prepare import run_prepare

SR = 16000


def tone(seconds: float = 1.0, freq: float = 180.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def wav_bytes(x: np.ndarray, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def rejects(out: Path) -> list[str]:
    return sorted(json.loads(x)["reason"] for x in (out / "rejects.jsonl").read_text().splitlines())


def prepare_keeps(out: Path, tmp: Path) -> dict:
    m = run_prepare(PrepareParams(manifest=out / "manifest.jsonl", out_dir=tmp / "prepared",
                                  metrics=tmp / "prepare.json", workers=1))
    assert m["rows_rejected"] == 0, m
    return m


def test_ljspeech(tmp_path, capsys):
    src = tmp_path / "LJSpeech-1.1"
    (src / "wavs").mkdir(parents=True)
    for i in range(3):
        sf.write(src / "wavs" / f"LJ001-000{i}.wav", tone(1.0 + i * 0.2), SR)
    (src / "metadata.csv").write_text(
        "LJ001-0000|Printing, in 1 sense.|Printing, in one sense.\n"
        "LJ001-0001|The second one|\n"                      # no normalized text: the original is used
        "LJ001-0002|Third|Third, normalised.\n"
        "LJ001-0009|No audio for this one.|No audio for this one.\n"
        "just a line without fields\n"
        "LJ001-0003||\n", encoding="utf-8")
    out = tmp_path / "imported"
    assert cli(["import", "ljspeech", str(src), "--out", str(out), "--language", "en"]) == 0
    summary = json.loads(capsys.readouterr().out)
    got = rows(out)
    assert summary["rows"] == 3 and summary["rejected"] == 3
    assert [r["text"] for r in got] == ["Printing, in one sense.", "The second one", "Third, normalised."]
    assert {r["speaker"] for r in got} == {"LJ"} and {r["language"] for r in got} == {"en"}
    assert rejects(out) == ["audio_not_found", "bad_line", "missing_text"]
    assert prepare_keeps(out, tmp_path)["rows_kept"] == 3


def test_libritts(tmp_path):
    src = tmp_path / "LibriTTS" / "train-clean-100"
    for spk, chapter, n in (("19", "198", 2), ("26", "495", 1)):
        d = src / spk / chapter
        d.mkdir(parents=True)
        for k in range(n):
            stem = f"{spk}_{chapter}_000000_00000{k}"
            sf.write(d / f"{stem}.wav", tone(0.8, 120 + 40 * k), SR)
            (d / f"{stem}.normalized.txt").write_text(f"Normalized {stem}.")
            (d / f"{stem}.original.txt").write_text(f"ORIGINAL {stem}")
    sf.write(src / "19" / "198" / "19_198_000000_000009.wav", tone(), SR)  # no transcript
    sf.write(src / "19" / "stray.wav", tone(), SR)                           # wrong depth
    (src.parent / "speakers.tsv").write_text("READER\tGENDER\tSUBSET\tNAME\n19\tF\ttrain-clean-100\tKara\n"
                                             "26\tM\ttrain-clean-100\tDenny\n")
    out = tmp_path / "imported"
    assert cli(["import", "libritts", str(src), "--out", str(out)]) == 0
    got = rows(out)
    assert [(r["id"], r["speaker"], r["gender"]) for r in got] == [
        ("19_198_000000_000000", "19", "female"), ("19_198_000000_000001", "19", "female"),
        ("26_495_000000_000000", "26", "male")]
    assert got[0]["text"].startswith("Normalized")
    assert rejects(out) == ["bad_layout", "missing_text"]
    assert cli(["import", "libritts", str(src), "--out", str(tmp_path / "orig"), "--text", "original"]) == 0
    assert rows(tmp_path / "orig")[0]["text"].startswith("ORIGINAL")
    prepare_keeps(out, tmp_path)


def test_hf_parquet(tmp_path):
    src = tmp_path / "hf" / "data"
    src.mkdir(parents=True)
    audio = [{"bytes": wav_bytes(tone(1.0)), "path": "clip_a.wav"},
             {"bytes": wav_bytes(tone(1.2, 220.0), "FLAC"), "path": None},  # suffix sniffed: .flac
             {"bytes": b"RIFF....WAVEgarbage", "path": "bad.wav"},
             {"bytes": wav_bytes(tone(0.9)), "path": "clip_d.wav"}]
    table = pa.table({
        "audio": pa.array(audio, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "sentence": ["first clip", "second clip", "broken clip", ""],
        "who": ["alice", "bob", "alice", "bob"],
        "gender": ["female", "male", "female", "male"],
    })
    pq.write_table(table.slice(0, 2), src / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(2, 2), src / "train-00001-of-00002.parquet")
    out = tmp_path / "imported"
    args = ["import", "hf-parquet", str(src), "--out", str(out), "--columns", "sentence=text,who=speaker"]
    assert cli(args) == 0
    got = rows(out)
    assert [(r["text"], r["speaker"], r["gender"]) for r in got] == [("first clip", "alice", "female"),
                                                                    ("second clip", "bob", "male")]
    assert got[0]["audio"].endswith(".wav") and got[1]["audio"].endswith(".flac")
    x, sr = sf.read(out / got[1]["audio"])
    assert sr == SR and abs(len(x) / sr - 1.2) < 0.01
    assert rejects(out) == ["missing_text", "unreadable_audio"]
    mtime = (out / got[0]["audio"]).stat().st_mtime_ns
    assert cli(args) == 0 and (out / got[0]["audio"]).stat().st_mtime_ns == mtime  # decoded once
    prepare_keeps(out, tmp_path)
    # no speaker column (nor a guessable one) and no --speaker: every row is rejected, a clear error
    assert (
        cli(["import", "hf-parquet", str(src), "--out", str(tmp_path / "x"), "--columns", "sentence=text"])
        == 2
    )
    assert (
        cli(["import", "hf-parquet", str(src), "--out", str(tmp_path / "y"), "--columns", "sentence=txt"])
        == 2
    )


def write_jsonl_gz(path: Path, items: list) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for it in items:
            f.write((it if isinstance(it, str) else json.dumps(it)) + "\n")


def recording(rid: str, path: str, seconds: float) -> dict:
    return {"id": rid, "sources": [{"type": "file", "channels": [0], "source": path}], "sampling_rate": SR,
            "num_samples": int(seconds * SR), "duration": seconds, "channel_ids": [0]}


def test_lhotse_recordings_and_supervisions(tmp_path):
    src = tmp_path / "lhotse"
    (src / "audio").mkdir(parents=True)
    long = np.concatenate([tone(1.0, 150.0), tone(1.5, 250.0)])
    sf.write(src / "audio" / "rec1.wav", long, SR)
    sf.write(src / "audio" / "rec2.wav", tone(1.0), SR)
    write_jsonl_gz(
        src / "corpus_recordings_train.jsonl.gz",
        [
            recording("rec1", "audio/rec1.wav", 2.5),
            recording("rec2", str(src / "audio" / "rec2.wav"), 1.0),
            {
                "id": "rec3",
                "sources": [{"type": "url", "channels": [0], "source": "https://x/y.wav"}],
                "duration": 1.0,
            },
            "{not json",
        ],
    )
    sup = lambda sid, rid, start, dur, **kw: {"id": sid, "recording_id": rid, "start": start, "duration": dur,  # noqa: E731
                                              "channel": 0, "text": f"text of {sid}", "speaker": "S1", **kw}
    write_jsonl_gz(
        src / "corpus_supervisions_train.jsonl.gz",
        [
            sup("seg-a", "rec1", 0.0, 1.0, gender="F"),
            sup("seg-b", "rec1", 1.0, 1.5),
            sup("whole", "rec2", 0.0, 1.0),
            sup("lost", "nope", 0.0, 1.0),
            sup("remote", "rec3", 0.0, 1.0),
            sup("past-end", "rec1", 2.0, 3.0),
        ],
    )
    out = tmp_path / "imported"
    assert cli(["import", "lhotse", str(src), "--out", str(out)]) == 0
    got = {r["id"]: r for r in rows(out)}
    assert set(got) == {"seg-a", "seg-b", "whole"}
    assert got["whole"]["audio"] == str(src / "audio" / "rec2.wav")  # whole recording: used in place
    b, sr = sf.read(out / got["seg-b"]["audio"])
    assert sr == SR and abs(len(b) / sr - 1.5) < 0.01
    assert np.allclose(b[:100], long[SR:SR + 100], atol=1e-3)  # the right samples
    assert got["seg-a"]["gender"] == "female"
    assert rejects(out) == ["bad_line", "unknown_recording", "unreadable_audio", "unsupported_source"]
    assert not list(out.glob(".lhotse-index-*"))  # the on-disk index is removed
    prepare_keeps(out, tmp_path)


def test_lhotse_cuts(tmp_path):
    src = tmp_path / "cuts"
    src.mkdir()
    sf.write(src / "r.wav", np.concatenate([tone(1.0), tone(1.0, 300.0)]), SR)
    rec = recording("r", "r.wav", 2.0)
    cut = {"id": "c1", "start": 1.0, "duration": 1.0, "channel": 0, "type": "MonoCut", "recording": rec,
           "supervisions": [{"id": "u1", "recording_id": "r", "start": 0.0, "duration": 1.0, "channel": 0,
                             "text": "second half", "speaker": "S"}]}
    (src / "cuts_dev.jsonl").write_text(json.dumps(cut) + "\n" + json.dumps({"id": "broken"}) + "\n")
    out = tmp_path / "imported"
    assert cli(["import", "lhotse", str(src / "cuts_dev.jsonl"), "--out", str(out)]) == 0
    [row] = rows(out)
    x, _ = sf.read(out / row["audio"])
    assert row["text"] == "second half" and abs(len(x) / SR - 1.0) < 0.01
    assert rejects(out) == ["bad_line"]


@pytest.mark.parametrize("fmt", ["ljspeech", "libritts", "hf-parquet", "lhotse"])
def test_missing_source_is_a_clean_error(tmp_path, fmt, capsys):
    assert cli(["import", fmt, str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
