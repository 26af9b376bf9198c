"""The `annotate` stage on a small espeak corpus: measures, bins that follow the voices, filled attributes,
captions the caption-vector matcher reads back, user captions untouched, resume, bad audio counted."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tristage.annotation.captions import CaptionWriter
from tristage.annotation.config import AnnotateParams
from tristage.annotation.run import run_annotate
from tristage.audio.measures import MEASURE_COLUMNS, AttributeBins
from tristage.captions.lexicon import LEXICON, Matcher
from tristage.config import load_params
from tristage.corpus.build import build_corpus
from tristage.corpus.config import CorpusParams
from tristage.data.config import PrepareParams
from tristage.data.manifest import read_prepared, resolve_audio
from tristage.data.prepare import run_prepare
from tristage.errors import ParamsError, UserError

FILLED = ("pitch", "speed", "modulation", "quality")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """12 espeak voices x 6 utterances (every emotion at least once per voice), prepared."""
    root = tmp_path_factory.mktemp("annot")
    build_corpus(CorpusParams(out_dir=root / "raw", n_speakers=12, utts_per_speaker=6, workers=2, seed=5))
    run_prepare(PrepareParams(manifest=root / "raw" / "manifest.jsonl", out_dir=root / "prepared",
                              metrics=root / "prepare.json", workers=2))
    return root


def strip(root: Path, name: str, bad_audio: bool = False) -> Path:
    """A copy of the prepared manifest without captions and fill attributes on every other row."""
    df = read_prepared(root / "prepared" / "manifest.parquet")
    df["audio"] = [str(resolve_audio(root / "prepared" / "manifest.parquet", a)) for a in df["audio"]]
    blank = np.arange(len(df)) % 2 == 0
    df.loc[blank, "caption"] = ""
    for c in FILLED:
        df.loc[blank, c] = None
    if bad_audio:
        (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
        df.loc[1, "audio"] = str(root / "broken.wav")
    path = root / f"{name}.parquet"
    df.to_parquet(path, index=False)
    return path


def params(root: Path, manifest: Path, name: str, **kw) -> AnnotateParams:
    return AnnotateParams(manifest=manifest, out_dir=root / name, metrics=root / f"{name}.json", workers=2,
                          shard_size=32, min_group=10, **kw)


def test_annotate_fills_captions_and_follows_the_voices(prepared):
    src = strip(prepared, "stripped", bad_audio=True)
    before = pd.read_parquet(src)
    ap = params(prepared, src, "annotated")
    m = run_annotate(ap, LEXICON, progress=False)
    out = read_prepared(ap.out_dir / "manifest.parquet")
    assert len(out) == len(before) == m["n_rows"] == 72
    assert m["n_failed"] == 1 and m["n_measured"] == 71
    failed = [json.loads(x) for x in (ap.out_dir / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == [before["id"][1]]
    assert set(MEASURE_COLUMNS) <= set(out.columns)
    for a in out["audio"]:
        assert resolve_audio(ap.out_dir / "manifest.parquet", a).is_file()

    out = out.set_index("id")
    before = before.set_index("id").loc[out.index]
    had = before["caption"].str.len() > 0
    assert (out.loc[had, "caption"] == before.loc[had, "caption"]).all()  # user captions untouched
    for c in FILLED:  # given values untouched (the unreadable row's too), missing ones filled
        assert (out.loc[had, c] == before.loc[had, c]).all()
        assert out.loc[~had, c].notna().all()
    assert m["captions_written"] == (~had).sum()
    matcher = Matcher(LEXICON)
    for uid, row in out[~had].iterrows():
        stated = matcher.attributes(row["caption"])
        for c in ("gender", "accent", "emotion", *FILLED):
            if isinstance(row[c], str):
                assert stated.get(c) == row[c], (row["caption"], c, row[c])

    # per-speaker median f0 follows the set pitch within each espeak voice variant
    speakers = {s["name"]: s for s in json.loads((prepared / "raw" / "speakers.json").read_text())}
    med = out.groupby("speaker")["f0_hz"].median()
    by_variant: dict[str, list] = {}
    for name, f0 in med.items():
        by_variant.setdefault(speakers[name]["voice"].split("+")[1], []).append((speakers[name]["pitch"], f0))
    compared = 0
    for pairs in by_variant.values():
        pairs.sort()
        for (p1, f1), (p2, f2) in zip(pairs, pairs[1:]):
            if p1 < p2:
                assert f1 < f2, by_variant
                compared += 1
    assert compared >= 2
    genders = out.groupby("gender")["f0_hz"].median()
    assert genders["female"] > 1.4 * genders["male"]
    # measured speed agrees with the corpus's labels well above chance
    sp = m["agreement"]["speed"]
    assert sp["n"] == 35 and sp["coarse"] > sp["chance_coarse"] + 0.15
    assert m["agreement"]["quality"]["coarse"] > 0.6

    bins = AttributeBins.from_dict(json.loads((ap.out_dir / "bins.json").read_text()))
    assert set(bins.bins["pitch"]["groups"]) == {"*", "female", "male"}
    row = out.iloc[5]
    assert bins.assign_one(row[list(MEASURE_COLUMNS)].to_dict(), gender=row["gender"])["pitch"] is not None

    # resume: nothing is measured again, the output is the same
    again = run_annotate(ap, LEXICON, progress=False)
    assert again["shards_measured"] == 0 and again["shards_skipped"] == m["shards_measured"] == 3
    pd.testing.assert_frame_equal(read_prepared(ap.out_dir / "manifest.parquet").set_index("id"), out)


def test_overwrite_replaces_the_attributes_but_not_captions(prepared):
    src = strip(prepared, "stripped2")
    ap = params(prepared, src, "overwritten", overwrite=True, captions=False)
    m = run_annotate(ap, LEXICON, progress=False)
    out = read_prepared(ap.out_dir / "manifest.parquet")
    before = pd.read_parquet(src)
    assert m["filled"]["pitch"] == len(out) and m["captions_written"] == 0
    assert (out["caption"].fillna("") == before["caption"].fillna("")).all()
    assert set(out["pitch"]) <= set(LEXICON["pitch"]) and out["pitch"].nunique() >= 4


def test_levels_must_be_lexicon_values(tmp_path):
    ap = params(tmp_path, tmp_path / "manifest.parquet", "bad", levels={"pitch": ["low", "sky high"]})
    with pytest.raises(
        UserError, match=r"annotate.levels.pitch: 'sky high' is not a value of caption_vectors"
    ):
        run_annotate(ap, LEXICON, progress=False)
    assert not (tmp_path / "bad").exists()
    (tmp_path / "p.yaml").write_text("annotate:\n  levels:\n    accent: [a, b]\n")
    with pytest.raises(ParamsError, match=r"annotate: .*levels.accent: no measure"):
        load_params(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text("annotate:\n  quality:\n    snr_db: [20, 10, 30]\n")
    with pytest.raises(ParamsError, match=r"annotate.quality: .*snr_db must be 3 ascending"):
        load_params(tmp_path / "p.yaml")


def test_caption_writer_states_every_value_with_varied_phrasing():
    writer, matcher = CaptionWriter(LEXICON), Matcher(LEXICON)
    rng = np.random.default_rng(0)
    attrs_all = ("gender", "accent", "pitch", "speed", "modulation", "emotion", "quality")
    seen = set()
    for _ in range(400):
        attrs = {a: (list(LEXICON[a])[rng.integers(len(LEXICON[a]))] if rng.random() < 0.8 else None)
                 for a in attrs_all}
        text = writer.write(attrs, rng)
        assert matcher.attributes(text) == {k: v for k, v in attrs.items() if v}, text
        assert text[0].isupper() and text.endswith(".")
        seen.add(text.split()[0])
    assert len(seen) > 10  # templates and phrases vary
    same = [writer.write({"gender": "male", "speed": "fast"}, np.random.default_rng(3)) for _ in range(2)]
    assert same[0] == same[1]
    assert writer.write({}, rng) in ("A speaker speaks.", "A speaker talks.", "A speaker reads.",
                                     "A speaker says the line.")
