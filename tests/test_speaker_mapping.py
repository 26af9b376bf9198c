"""The `speaker_mapping` stage: deterministic ids, top_k / min_samples, JSONL == Parquet, metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tristage.data import speakers
from tristage.data.config import SpeakerMappingParams
from tristage.data.speakers import METRIC_KEYS, count_speakers, run_speaker_mapping, select_speakers
from tristage.errors import UserError

# name -> utterances: ties at 5 (b, a, c) and at 2 (d, e)
COUNTS = {"b": 5, "a": 5, "c": 5, "big": 9, "d": 2, "e": 2, "solo": 1}


def rows(counts: dict, numeric: dict | None = None) -> list[dict]:
    """Interleaved manifest rows; `numeric` speakers are written as JSON numbers."""
    out, left = [], dict(counts)
    i = 0
    while any(left.values()):
        for name in counts:
            if left[name]:
                left[name] -= 1
                spk = (numeric or {}).get(name, name)
                out.append({"audio": f"wavs/{i}.wav", "text": "hello there", "speaker": spk,
                            "caption": "a man speaks", "extra": {"nested": [1, 2]}})
                i += 1
    return out


def write_jsonl(path: Path, data: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


def write_parquet(path: Path, data: list[dict]) -> Path:
    pq.write_table(
        pa.Table.from_pylist([{**r, "speaker": str(r["speaker"]), "extra": None} for r in data]), path
    )
    return path


def mapping_of(path: Path, top_k=100, min_samples=1):
    return select_speakers(count_speakers(path), top_k, min_samples)


def test_ids_by_count_then_name(tmp_path):
    mapping, m = mapping_of(write_jsonl(tmp_path / "m.jsonl", rows(COUNTS)))
    assert list(mapping.items()) == [
        ("big", 0),
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("d", 4),
        ("e", 5),
        ("solo", 6),
    ]
    assert m == {
        "total_samples": 29,
        "total_speakers": 7,
        "speakers_with_min_samples": 7,
        "selected_speakers": 7,
        "selected_samples": 29,
        "selected_fraction": 1.0,
    }


@pytest.mark.parametrize("top_k,min_samples,expected", [
    (2, 1, ["big", "a"]),
    (100, 5, ["big", "a", "b", "c"]),
    (3, 5, ["big", "a", "b"]),
    (100, 6, ["big"]),
])
def test_top_k_and_min_samples(tmp_path, top_k, min_samples, expected):
    mapping, m = mapping_of(write_jsonl(tmp_path / "m.jsonl", rows(COUNTS)), top_k, min_samples)
    assert list(mapping) == expected and list(mapping.values()) == list(range(len(expected)))
    assert m["speakers_with_min_samples"] == sum(n >= min_samples for n in COUNTS.values())
    assert m["selected_samples"] == sum(COUNTS[s] for s in expected)
    assert m["selected_fraction"] == pytest.approx(m["selected_samples"] / 29, abs=1e-6)


def test_numeric_speaker_names_are_strings(tmp_path):
    counts = {"123": 3, "7": 2, "x": 2}
    # "123" written as a number in some rows and a string in others: one speaker
    data = rows(counts, numeric={"7": 7})
    data[0]["speaker"] = 123
    mapping, m = mapping_of(write_jsonl(tmp_path / "m.jsonl", data))
    assert mapping == {"123": 0, "7": 1, "x": 2} and m["total_speakers"] == 3
    only_numbers = rows({"5": 2, "40": 3}, numeric={"5": 5, "40": 40})
    assert mapping_of(write_jsonl(tmp_path / "n.jsonl", only_numbers))[0] == {"40": 0, "5": 1}


def test_jsonl_and_parquet_agree(tmp_path, monkeypatch):
    data = rows({f"spk{i:03d}": 1 + (i * 7) % 13 for i in range(60)})
    j = mapping_of(write_jsonl(tmp_path / "m.jsonl", data), top_k=20, min_samples=3)
    p = mapping_of(write_parquet(tmp_path / "m.parquet", data), top_k=20, min_samples=3)

    def no_streaming(path):  # force the careful chunked path (used for mixed types), in tiny chunks
        raise pa.ArrowInvalid("forced")

    monkeypatch.setattr(speakers, "_count_jsonl_streaming", no_streaming)
    small_chunks = select_speakers(count_speakers(tmp_path / "m.jsonl", chunk_bytes=512), 20, 3)
    assert j == p == small_chunks
    assert list(j[0]) == list(p[0])


def test_nulls_and_empty_names_not_counted(tmp_path):
    data = rows({"a": 2}) + [
        {"audio": "x.wav", "speaker": None},
        {"audio": "y.wav", "speaker": ""},
        {"audio": "z"},
    ]
    mapping, m = mapping_of(write_jsonl(tmp_path / "m.jsonl", data))
    assert mapping == {"a": 0} and m["total_samples"] == 2


def test_stage_writes_mapping_and_metrics(tmp_path):
    p = SpeakerMappingParams(manifest=write_parquet(tmp_path / "m.parquet", rows(COUNTS)),
                             output=tmp_path / "speakers" / "speaker_mapping.json",
                             metrics=tmp_path / "metrics" / "speaker_mapping.json", top_k=3, min_samples=2)
    metrics = run_speaker_mapping(p)
    assert json.loads(p.output.read_text()) == {"big": 0, "a": 1, "b": 2}
    saved = json.loads(p.metrics.read_text())
    assert tuple(saved) == METRIC_KEYS and saved == metrics
    assert saved["selected_samples"] == 19 and saved["speakers_with_min_samples"] == 6


def test_zero_selected_is_a_clear_error(tmp_path):
    p = SpeakerMappingParams(
        manifest=write_jsonl(tmp_path / "m.jsonl", rows(COUNTS)),
        output=tmp_path / "o.json",
        metrics=tmp_path / "mm.json",
        min_samples=50,
    )
    with pytest.raises(UserError, match=r"7 speakers, the largest has 9.*lower speaker_mapping\.min_samples"):
        run_speaker_mapping(p)
    assert not p.output.exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="manifest.parquet: manifest not found; run the `prepare` stage"):
        count_speakers(tmp_path / "manifest.parquet")
    pq.write_table(pa.table({"spk": ["a"]}), tmp_path / "x.parquet")
    with pytest.raises(UserError, match="no `speaker` column"):
        count_speakers(tmp_path / "x.parquet")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"speaker": "a"}\n{"speaker": "b"}\n{"speaker": oops}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl: line 3: not valid JSON"):
        count_speakers(bad)


def test_stage_cli(tmp_path):
    data = write_jsonl(tmp_path / "m.jsonl", rows(COUNTS))
    params = tmp_path / "params.yaml"
    params.write_text(
        "speaker_mapping:\n  manifest: m.jsonl\n  output: out/map.json\n  metrics: out/metrics.json\n"
        "  min_samples: 5\n"
    )
    env = {**os.environ, "TRISTAGE_TRACKING": "0"}
    r = subprocess.run(
        [sys.executable, "-m", "steps.speaker_mapping", "--params", str(params)],
        cwd=data.parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "map.json").read_text()) == {"big": 0, "a": 1, "b": 2, "c": 3}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "steps.speaker_mapping",
            "--params",
            str(params),
            "--set",
            "speaker_mapping.min_samples=10",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "min_samples" in r.stderr.strip().splitlines()[-1]
