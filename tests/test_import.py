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
    sup = lambda sid, rid, start, dur, **kw: {"id": sid, "recording_id": rid, "start": start, "duration": dur,
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


@pytest.mark.parametrize("fmt", ["ljspeech", "libritts", "librispeech", "hf-parquet", "lhotse", "auto"])
def test_missing_source_is_a_clean_error(tmp_path, fmt, capsys):
    assert cli(["import", fmt, str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


# -- folders of any audio format; nothing under the folder skipped silently ---------------------------

SOUNDFILE = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
             "mp3": ("MP3", "MPEG_LAYER_III")}


def write_audio(path: Path, seconds: float = 1.0, freq: float = 180.0) -> None:
    fmt, subtype = SOUNDFILE[path.suffix[1:].lower()]
    sf.write(path, tone(seconds, freq), SR, format=fmt, subtype=subtype)


def reject_lines(out: Path) -> list[tuple[str, str, str]]:
    return [(r["source"], r["reason"], r["detail"])
            for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())]


def features_read(out: Path, tmp: Path) -> list[float]:
    """The `features` stage's reader on every row `prepare` kept: the durations it decodes."""
    from tristage.data.manifest import read_prepared, resolve_audio
    from tristage.features.extract import read_audio

    manifest = tmp / "prepared" / "manifest.parquet"
    kept = read_prepared(manifest)
    return [read_audio(str(resolve_audio(manifest, a)), d, 24000, 16000)[2]
            for a, d in zip(kept["audio"], kept["duration"])]


def make_libritts(src: Path, ext: str) -> list[str]:
    ids = []
    for spk, chapter, n in (("19", "198", 2), ("26", "495", 2)):
        d = src / spk / chapter
        d.mkdir(parents=True)
        for k in range(n):
            stem = f"{spk}_{chapter}_000000_00000{k}"
            write_audio(d / f"{stem}.{ext}", 0.8 + 0.1 * k, 120 + 40 * k)
            (d / f"{stem}.normalized.txt").write_text(f"Normalized {stem}.")
            (d / f"{stem}.original.txt").write_text(f"ORIGINAL {stem}")
            ids.append(stem)
        (d / f"{spk}_{chapter}.trans.tsv").write_text("")  # LibriTTS keeps these beside the clips
        (d / f"{spk}_{chapter}.book.tsv").write_text("")
    return ids


def test_libritts_ogg_every_clip(tmp_path):
    src = tmp_path / "train-clean-100"
    ids = make_libritts(src, "ogg")
    out = tmp_path / "imported"
    assert cli(["import", "libritts", str(src), "--out", str(out)]) == 0
    got = rows(out)
    assert [r["id"] for r in got] == ids and all(r["audio"].endswith(".ogg") for r in got)
    assert reject_lines(out) == []
    assert cli(["import", "auto", str(src), "--out", str(tmp_path / "auto")]) == 0
    assert rows(tmp_path / "auto") == got
    assert prepare_keeps(out, tmp_path)["rows_kept"] == 4
    assert [round(d, 1) for d in features_read(out, tmp_path)] == [0.8, 0.9, 0.8, 0.9]


def make_librispeech(src: Path, ext: str = "flac") -> list[str]:
    ids = []
    for spk, chapter in (("103", "1240"), ("1034", "121119")):
        d = src / spk / chapter
        d.mkdir(parents=True)
        lines = []
        for k in range(3):
            uid = f"{spk}-{chapter}-{k:04d}"
            write_audio(d / f"{uid}.{ext}", 0.7 + 0.1 * k, 150 + 30 * k)
            lines.append(f"{uid} CHAPTER {k} OF {spk}")
            ids.append(uid)
        (d / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return ids


def test_librispeech_flac_every_clip(tmp_path, capsys):
    src = tmp_path / "LibriSpeech" / "train-clean-100"
    ids = make_librispeech(src)
    (src.parent / "SPEAKERS.TXT").write_text(
        "; ID  |SEX| SUBSET           |MINUTES| NAME\n103  | F | train-clean-100  | 25.19 | Kara\n"
        "1034 | M | train-clean-100  | 25.04 | Kevin\n")
    (src.parent / "README.TXT").write_text("LibriSpeech")  # above SRC: not walked
    out = tmp_path / "imported"
    assert cli(["import", "librispeech", str(src), "--out", str(out), "--language", "en"]) == 0
    got = rows(out)
    assert [r["id"] for r in got] == ids
    assert [(r["speaker"], r["gender"]) for r in got[::3]] == [("103", "female"), ("1034", "male")]
    assert got[1]["text"] == "CHAPTER 1 OF 103" and got[1]["language"] == "en"
    assert reject_lines(out) == []
    capsys.readouterr()
    assert cli(["import", "auto", str(src), "--out", str(tmp_path / "auto"), "--language", "en"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "librispeech"
    assert rows(tmp_path / "auto") == got
    assert prepare_keeps(out, tmp_path)["rows_kept"] == 6
    assert len(features_read(out, tmp_path)) == 6
    # pointed at the corpus root instead of a subset: one line that says where to point it
    capsys.readouterr()
    assert cli(["import", "auto", str(src.parent), "--out", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "librispeech" in err and str(src) in err


def test_librispeech_entries_it_cannot_use_each_get_a_line(tmp_path):
    src = tmp_path / "dev-clean"
    make_librispeech(src)
    chapter = src / "103" / "1240"
    (chapter / "103-1240-0001.flac").unlink()                        # a line without its audio
    write_audio(chapter / "103-1240-0009.flac")                       # audio without a line
    (chapter / "103-1240-0002.flac").write_bytes(b"fLaC not really")  # does not decode
    with open(chapter / "103-1240.trans.txt", "a") as f:
        f.write("103-1240-0007\n")                                    # no text
    (chapter / "notes.docx").write_bytes(b"PK")                       # not audio
    write_audio(src / "103" / "stray.flac")                           # wrong depth
    out = tmp_path / "imported"
    assert cli(["import", "librispeech", str(src), "--out", str(out)]) == 0
    assert [r["id"] for r in rows(out)] == ["103-1240-0000", "1034-121119-0000", "1034-121119-0001",
                                            "1034-121119-0002"]
    lines = {(src_, reason) for src_, reason, _ in reject_lines(out)}
    assert lines == {("103/1240/103-1240.trans.txt:2", "audio_not_found"),
                     ("103/1240/103-1240.trans.txt:3", "unreadable_audio"),
                     ("103/1240/103-1240.trans.txt:4", "missing_text"),
                     ("103/1240/103-1240-0009.flac", "missing_text"),
                     ("103/1240/notes.docx", "not_audio"),
                     ("103/stray.flac", "bad_layout")}
    assert len(reject_lines(out)) == 6
    prepare_keeps(out, tmp_path)


def test_ljspeech_flac(tmp_path):
    src = tmp_path / "LJSpeech-1.1"
    (src / "wavs").mkdir(parents=True)
    for i in range(3):
        write_audio(src / "wavs" / f"LJ001-000{i}.flac", 1.0 + 0.2 * i)
    (src / "metadata.csv").write_text("".join(f"LJ001-000{i}|Text {i}.|Text {i}.\n" for i in range(3)))
    (src / "README").write_text("LJ Speech")  # the corpus's documentation: no line
    out = tmp_path / "imported"
    assert cli(["import", "ljspeech", str(src), "--out", str(out)]) == 0
    got = rows(out)
    assert [(r["id"], Path(r["audio"]).name) for r in got] == [(f"LJ001-000{i}", f"LJ001-000{i}.flac")
                                                              for i in range(3)]
    assert reject_lines(out) == []
    assert prepare_keeps(out, tmp_path)["rows_kept"] == 3
    assert [round(d, 1) for d in features_read(out, tmp_path)] == [1.0, 1.2, 1.4]
    # files under the folder that no line takes: each one a line with its reason
    write_audio(src / "wavs" / "LJ001-0000.wav")                  # a second file for one id
    write_audio(src / "wavs" / "LJ009-0001.flac")                 # no metadata line
    (src / "wavs" / "LJ009-0002.m4a").write_bytes(b"\0\0\0 ftypM4A ")  # audio soundfile can't read
    (src / "wavs" / "list.txt").write_text("x")
    write_audio(src / "stray.wav")                                # not in wavs/
    (src / "wavs" / "LJ001-0002.flac").write_bytes(b"garbage")    # does not decode
    assert cli(["import", "ljspeech", str(src), "--out", str(out)]) == 0
    assert [(r["id"], Path(r["audio"]).name) for r in rows(out)] == [("LJ001-0000", "LJ001-0000.wav"),
                                                                    ("LJ001-0001", "LJ001-0001.flac")]
    assert {(s, r) for s, r, _ in reject_lines(out)} == {
        ("wavs/LJ001-0000.flac", "duplicate_id"), ("metadata.csv:3", "unreadable_audio"),
        ("wavs/LJ009-0001.flac", "missing_text"), ("wavs/LJ009-0002.m4a", "unsupported_audio"),
        ("wavs/list.txt", "not_audio"), ("stray.wav", "bad_layout")}
    assert len(reject_lines(out)) == 6


def test_plain_pairs_reject_each_bad_entry_and_keep_the_good(tmp_path, capsys):
    src = tmp_path / "my_voice"
    src.mkdir()
    write_audio(src / "good.wav")
    (src / "good.txt").write_text("A good pair.\n")
    write_audio(src / "lonely.wav")                       # no transcript
    (src / "broken.wav").write_bytes(b"RIFF\x00\x01garbage bytes, not a wave file")
    (src / "broken.txt").write_text("This one does not decode.")
    out = tmp_path / "imported"
    assert cli(["import", "auto", str(src), "--out", str(out)]) == 0
    assert "import auto (pairs): 1 rows" in capsys.readouterr().err
    [row] = rows(out)
    assert (row["id"], row["text"], row["speaker"], row["audio"]) == ("good", "A good pair.", "my_voice",
                                                                      str(src / "good.wav"))
    lines = reject_lines(out)
    assert [(s, r) for s, r, _ in lines] == [("broken.wav", "unreadable_audio"),
                                             ("lonely.wav", "missing_text")]
    assert "lonely.txt" in lines[1][2] and lines[0][2]  # what is missing, why it doesn't decode
    prepare_keeps(out, tmp_path)


def test_plain_pairs_every_other_file_gets_a_line(tmp_path):
    src = tmp_path / "my_voice"
    (src / "old").mkdir(parents=True)
    write_audio(src / "a.flac")
    (src / "a.txt").write_text("\ufeffFirst line\nsecond line.")  # BOM and a line break
    write_audio(src / "b.ogg")
    (src / "b.txt").write_text("  \n")                              # empty transcript
    write_audio(src / "SHOUT.WAV")
    (src / "SHOUT.TXT").write_text("Upper case names.")
    (src / "c.txt").write_text("Words without audio.")
    (src / "d.m4a").write_bytes(b"\0\0\0 ftypM4A ")
    (src / "d.txt").write_text("Phone recording.")
    (src / "cover.jpg").write_bytes(b"\xff\xd8")
    (src / "README.md").write_text("my recordings")
    write_audio(src / "old" / "e.wav")
    (src / "elsewhere").symlink_to(src / "old", target_is_directory=True)  # not followed: a line
    (src / "gone.wav").symlink_to(tmp_path / "deleted.wav")                # a broken link
    out = src / "imported"  # inside SRC: left out of the walk, also on a rerun
    for _ in range(2):
        assert cli(["import", "auto", str(src), "--out", str(out), "--speaker", "me"]) == 0
        assert [(r["id"], r["text"], r["speaker"]) for r in rows(out)] == [
            ("SHOUT", "Upper case names.", "me"), ("a", "First line second line.", "me")]
        assert sorted((s, r) for s, r, _ in reject_lines(out)) == [
            ("b.ogg", "missing_text"), ("c.txt", "audio_not_found"), ("cover.jpg", "not_audio"),
            ("d.m4a", "unsupported_audio"), ("elsewhere", "bad_layout"), ("gone.wav", "not_audio"),
            ("old/e.wav", "bad_layout")]


@pytest.mark.parametrize("ext", list(SOUNDFILE))
def test_plain_pairs_every_format_soundfile_writes(tmp_path, ext):
    if SOUNDFILE[ext][0] not in sf.available_formats():
        assert ext == "mp3", f"soundfile here cannot write {ext}"
        pytest.skip("this soundfile (libsndfile < 1.1) cannot write mp3")
    src = tmp_path / "voice"
    src.mkdir()
    for i in range(2):
        write_audio(src / f"clip{i}.{ext}", 1.0 + 0.5 * i)
        (src / f"clip{i}.txt").write_text(f"Clip {i} in {ext}.")
    out = tmp_path / "imported"
    assert cli(["import", "auto", str(src), "--out", str(out)]) == 0
    assert [(r["id"], Path(r["audio"]).name) for r in rows(out)] == [("clip0", f"clip0.{ext}"),
                                                                     ("clip1", f"clip1.{ext}")]
    assert reject_lines(out) == []
    assert prepare_keeps(out, tmp_path)["rows_kept"] == 2
    assert np.allclose(features_read(out, tmp_path), [1.0, 1.5], atol=0.01)  # `features` decodes it whole


def test_auto_unrecognisable_folder_is_one_clear_line(tmp_path, capsys):
    src = tmp_path / "stuff"
    (src / "sub").mkdir(parents=True)
    (src / "notes.txt").write_text("hello")
    (src / "sub" / "x.doc").write_bytes(b"x")
    out = tmp_path / "imported"
    make_librispeech(tmp_path / "ok")
    assert cli(["import", "librispeech", str(tmp_path / "ok"), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert cli(["import", "auto", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(src) in err
    assert all(name in err for name in ("ljspeech", "libritts", "librispeech", "name.<audio> + name.txt"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier import is untouched


def test_no_usable_entry_names_the_reasons(tmp_path, capsys):
    src = tmp_path / "voice"
    src.mkdir()
    write_audio(src / "a.wav")
    write_audio(src / "b.wav")
    assert cli(["import", "auto", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no usable entry" in err and "missing_text 2" in err
    assert [r for _, r, _ in reject_lines(tmp_path / "o")] == ["missing_text", "missing_text"]
