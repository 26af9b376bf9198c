"""The `prepare` stage: every kind of bad row rejected with its reason and line, every good row kept."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml

from tristage.data.config import PrepareParams
from tristage.data.manifest import PREPARED_COLUMNS, prepared_schema, read_prepared, resolve_audio
from tristage.data.prepare import REASONS, run_prepare
from tristage.errors import UserError
from tristage.testing import write_tone_corpus

REPO = Path(__file__).resolve().parents[1]


def params(manifest: Path, out: Path, **kw) -> PrepareParams:
    return PrepareParams(
        manifest=manifest, out_dir=out / "prepared", metrics=out / "metrics" / "prepare.json", workers=2, **kw
    )


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A good tone corpus (2 speakers x 3 utterances) in tmp/raw/."""
    return write_tone_corpus(tmp_path / "raw", n_speakers=2, utts_per_speaker=3, sample_rate=16000, seed=1)


def add_bad_rows(manifest: Path) -> dict[int, str]:
    """Append one bad row of every kind; return line number -> expected reason."""
    raw = manifest.parent
    good = read_lines(manifest)
    g = good[0]
    sf.write(raw / "wavs" / "silent.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    sf.write(raw / "wavs" / "short.wav", 0.3 * np.sin(np.arange(800) / 5).astype(np.float32), 16000)
    sf.write(raw / "wavs" / "long.wav", 0.3 * np.sin(np.arange(16000 * 31) / 5).astype(np.float32), 16000)
    (raw / "wavs" / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio at all")
    (raw / "wavs" / "text.wav").write_text("just some text, not audio\n" * 50)
    row = lambda **kw: json.dumps({**{k: g[k] for k in ("text", "speaker")}, **kw})
    bad = [
        ("bad_json", '{"audio": "wavs/x.wav", "text": "broken'),
        ("bad_json", '["a", "list"]'),
        ("missing_field", json.dumps({"audio": g["audio"], "speaker": "s", "id": "m1"})),  # no text
        ("missing_field", json.dumps({"audio": g["audio"], "text": "hi there", "speaker": "", "id": "m2"})),
        ("missing_field", json.dumps({"text": "hi there", "speaker": "s", "id": "m3"})),  # no audio
        (
            "invalid_text",
            json.dumps({"audio": g["audio"], "text": "\u0001\u0002\u0007", "speaker": "s", "id": "t1"}),
        ),
        ("invalid_text", json.dumps({"audio": g["audio"], "text": 42, "speaker": "s", "id": "t2"})),
        (
            "invalid_text",
            json.dumps({"audio": g["audio"], "text": "caf\ufffd au lait", "speaker": "s", "id": "t3"}),
        ),
        ("invalid_text", b'{"audio": "a.wav", "text": "\xff\xfe bad bytes", "speaker": "s"}'),
        (
            "invalid_field",
            json.dumps({"audio": g["audio"], "text": "hi there", "speaker": ["a"], "id": "f1"}),
        ),
        (
            "invalid_field",
            json.dumps(
                {"audio": g["audio"], "text": "hi there", "speaker": "s", "id": "f2", "duration": "long"}
            ),
        ),
        ("audio_not_found", row(audio="wavs/nope.wav", id="a1")),
        ("unreadable_audio", row(audio="wavs/garbage.wav", id="a2")),
        ("unreadable_audio", row(audio="wavs/text.wav", id="a3")),
        ("duration_out_of_range", row(audio="wavs/short.wav", id="d1")),
        ("duration_out_of_range", row(audio="wavs/long.wav", id="d2")),
        ("duration_mismatch", row(audio=g["audio"], id="d3", duration=g["duration"] + 5.0)),
        ("silent_audio", row(audio="wavs/silent.wav", id="s1")),
        ("duplicate_id", json.dumps(g)),
    ]
    lines = manifest.read_bytes().rstrip(b"\n").split(b"\n")
    expected = {}
    for reason, text in bad:
        lines.append(b"")  # blank lines are skipped but still counted as lines
        lines.append(text if isinstance(text, bytes) else text.encode())
        expected[len(lines)] = reason
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    return expected


def test_every_bad_row_rejected_with_reason_and_line(corpus, tmp_path):
    good = read_lines(corpus)
    expected = add_bad_rows(corpus)
    p = params(corpus, tmp_path)
    metrics = run_prepare(p)

    rejects = read_lines(p.out_dir / "rejects.jsonl")
    assert {r["line"]: r["reason"] for r in rejects} == expected
    assert set(expected.values()) == set(REASONS)  # every reason code is exercised
    assert all(r["detail"] and "row" in r for r in rejects)
    dup = next(r for r in rejects if r["reason"] == "duplicate_id")
    assert dup["row"]["id"] == good[0]["id"]  # the original row is kept in the reject

    df = read_prepared(p.out_dir / "manifest.parquet")
    assert list(df["id"]) == [g["id"] for g in good]  # every good row kept, in order
    assert pq.read_schema(p.out_dir / "manifest.parquet").equals(prepared_schema())
    for _, r in df.iterrows():
        path = resolve_audio(p.out_dir / "manifest.parquet", r["audio"])
        assert path.is_file() and path.parent.name == "wavs"
        assert r["sample_rate"] == 16000 and abs(r["duration"] - sf.info(path).duration) < 1e-6

    assert metrics["rows_in"] == len(good) + len(expected)
    assert metrics["rows_kept"] == len(good) and metrics["rows_rejected"] == len(expected)
    assert sum(metrics["rejects_by_reason"].values()) == len(expected)
    assert metrics["rejects_by_reason"]["invalid_text"] == 4
    assert json.loads(p.metrics.read_text()) == metrics


def test_text_normalised_and_names_coerced(tmp_path):
    manifest = write_tone_corpus(tmp_path / "raw", n_speakers=1, utts_per_speaker=3)
    rows = read_lines(manifest)
    rows[0].update(text="  Cafe\u0301 \t au\n lait  ", speaker=123)
    rows[1].update(speaker="123", caption=None)
    rows[2].update(speaker=7.0)
    del rows[2]["id"]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = params(manifest, tmp_path)
    run_prepare(p)
    df = read_prepared(p.out_dir / "manifest.parquet")
    assert df["text"][0] == "Caf\u00e9 au lait"  # NFC + whitespace collapsed
    assert list(df["speaker"]) == ["123", "123", "7"]
    assert df["caption"][1] == ""
    assert df["id"][2] == "wavs/" + Path(rows[2]["audio"]).stem  # id from the audio path


def test_column_mapping_and_parquet_input(corpus, tmp_path):
    rows = read_lines(corpus)
    renamed = [
        {("wav" if k == "audio" else "spk" if k == "speaker" else k): v for k, v in r.items()} for r in rows
    ]
    renamed[1]["spk"] = 5  # numeric speaker in a parquet column of mixed types -> keep it a string column
    table = pa.Table.from_pylist([{**r, "spk": str(r["spk"])} for r in renamed])
    src = corpus.parent / "manifest.parquet"
    pq.write_table(table, src)
    p = params(src, tmp_path, columns={"wav": "audio", "spk": "speaker"})
    metrics = run_prepare(p)
    assert metrics["rows_kept"] == len(rows) and metrics["rows_rejected"] == 0
    df = read_prepared(p.out_dir / "manifest.parquet")
    assert list(df["speaker"]) == [str(r["spk"]) for r in renamed]
    assert list(df.columns) == list(PREPARED_COLUMNS)

    # parquet rows are numbered from 1 in rejects
    table = pa.Table.from_pylist([{**r, "spk": str(r["spk"])} for r in renamed[:2]]
                                 + [{"wav": None, "text": "x", "spk": "s"}])
    pq.write_table(table, src)
    run_prepare(p)
    assert read_lines(p.out_dir / "rejects.jsonl")[0]["line"] == 3


def test_check_audio_false_trusts_the_manifest(corpus, tmp_path):
    rows = read_lines(corpus)
    rows.append({**rows[0], "id": "ghost", "audio": "wavs/not_there.wav", "duration": 2.0})
    rows.append({**rows[0], "id": "nodur", "duration": None})
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = params(corpus, tmp_path, check_audio=False)
    metrics = run_prepare(p)
    df = read_prepared(p.out_dir / "manifest.parquet")
    assert "ghost" in set(df["id"]) and df["sample_rate"].isna().all()
    assert read_lines(p.out_dir / "rejects.jsonl")[0]["reason"] == "missing_field"
    assert metrics["rows_kept"] == len(rows) - 1


def test_zero_good_rows_is_an_error_and_keeps_old_outputs(corpus, tmp_path):
    p = params(corpus, tmp_path)
    run_prepare(p)
    before = (p.out_dir / "manifest.parquet").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "x.wav", "text": "hi", "speaker": "a"}\n{"text": "hi"}\nnot json\n')
    with pytest.raises(
        UserError, match=r"bad\.jsonl: no usable rows out of 3; reasons: .*audio_not_found"
    ) as e:
        run_prepare(params(bad, tmp_path))
    assert "\n" not in str(e.value)
    assert (p.out_dir / "manifest.parquet").read_bytes() == before


def test_bad_inputs_name_the_file_or_key(tmp_path, corpus):
    with pytest.raises(UserError, match=r"missing\.jsonl: manifest not found"):
        run_prepare(params(tmp_path / "missing.jsonl", tmp_path))
    with pytest.raises(UserError, match=r"dvc repro corpus"):
        run_prepare(params(tmp_path / "data" / "raw" / "manifest.jsonl", tmp_path))
    with pytest.raises(UserError, match=r"prepare\.columns\.wav: maps to 'wave'"):
        run_prepare(params(corpus, tmp_path, columns={"wav": "wave"}))
    other = tmp_path / "prepared"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"prepare\.out_dir: .*precious\.txt"):
        run_prepare(params(corpus, tmp_path))
    assert (other / "precious.txt").read_text() == "keep me"


def test_stage_cli_from_another_directory(corpus, tmp_path):
    """`python -m steps.prepare --params <copy>`: paths are relative to the copied params file."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.move(str(corpus.parent), proj / "raw")
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["prepare"].update(manifest="raw/manifest.jsonl", out_dir="out/prepared", metrics="out/metrics.json")
    (proj / "params.yaml").write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "TRISTAGE_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "steps.prepare", "--params", str(proj / "params.yaml")],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((proj / "out" / "metrics.json").read_text())["rows_kept"] == 6
    assert (proj / "out" / "prepared" / "manifest.parquet").is_file()

    r = subprocess.run([sys.executable, "-m", "steps.prepare", "--params", str(proj / "params.yaml"),
                        "--set", "prepare.manifest=raw/none.jsonl"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("prepare: error: ") and "none.jsonl" in r.stderr
