"""Caption parsing, the vector table (build, lookup, fallback, determinism) and the caption_vectors stage."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, project_env

from tristage.captions.lexicon import LEXICON, PARAPHRASES, Matcher

CORPUS_VALUES = {
    "pitch": ["high", "moderate", "low"],
    "speed": ["fast", "moderate", "slow"],
    "modulation": ["monotone", "moderate", "expressive"],
    "quality": ["clean", "noisy", "reverberant"],
    "gender": ["female", "male"],
    "emotion": ["neutral", "happy", "sad", "angry", "bored"],
}


def corpus_captions(n: int, seed: int = 0) -> list[tuple[str, dict]]:
    from tristage.corpus.build import ACCENTS
    from tristage.corpus.text import caption

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        attrs = {k: v[int(rng.integers(len(v)))] for k, v in CORPUS_VALUES.items()}
        attrs["accent"] = ACCENTS[int(rng.integers(len(ACCENTS)))][1]
        out.append((caption(rng, attrs), attrs))
    return out


@pytest.fixture(scope="module")
def tokenizer():
    from tristage.captions.encoder import train_tokenizer

    return train_tokenizer([c for c, _ in corpus_captions(200, seed=1)], 400)


def test_lexicon_has_40_accents_and_multiword_values():
    assert len(LEXICON["accent"]) >= 40
    m = Matcher(LEXICON)
    cases = {
        "A slightly high-pitched woman": [("pitch", "slightly high"), ("gender", "female")],
        "a very noisy recording, no background noise at all": [
            ("quality", "very noisy"),
            ("quality", "clean"),
        ],
        "A man with a New York accent, speaking slowly": [
            ("gender", "male"),
            ("accent", "New York"),
            ("speed", "slow"),
        ],
        "The WOMAN speaks Very  Quickly and is deep-voiced": [
            ("gender", "female"),
            ("speed", "fast"),
            ("pitch", "low"),
        ],
        "a human manuscript": [],  # no match inside words
    }
    for text, want in cases.items():
        assert [(a, v) for _, _, a, v in m.spans(text)] == want, text
    span = m.spans("A slightly high-pitched woman")[0]
    assert "A slightly high-pitched woman"[span[0]:span[1]] == "slightly high-pitched"


def test_parser_on_corpus_phrasings(tokenizer):
    from tristage.captions.tokenize import CaptionParser

    parser = CaptionParser(tokenizer, LEXICON)
    assert parser.end_token == "</s>"
    for cap, attrs in corpus_captions(400, seed=2):
        units = parser.parse(cap)
        found = {}
        for u in units:
            if u.attribute:
                a, v = u.attribute.split(":", 1)
                found.setdefault(a, set()).add(v)
        assert found == {k: {v} for k, v in attrs.items()}, cap
        pos = [p for u in units for p in u.positions]
        assert pos == list(range(len(pos)))  # every token in exactly one unit, in order
        assert units[-1].key == "</s>" and units[-1].attribute is None
        assert all(len(u.pieces) == len(u.positions) for u in units)
    # multi-piece phrase -> one unit; an unknown value (not in the table) stays ordinary tokens
    units = parser.parse("A fairly high-pitched Lancastrian lady.")
    pitch = [u for u in units if u.attribute == "pitch:high"][0]
    assert len(pitch.positions) >= 3  # fairly, high, -, pitched
    units = parser.parse("A Lancastrian lady.", known={"gender:female"})
    assert [u.attribute for u in units if u.attribute] == ["gender:female"]


def _context_states(units_list, dim=8):
    """States that depend on the token and on the previous unit: per-token means can't be exact,
    (prev, token, next) keys can."""
    rng = np.random.default_rng(0)
    emb: dict[str, np.ndarray] = {}
    get = lambda k: emb.setdefault(k, rng.standard_normal(dim))
    out = []
    for units in units_list:
        H = np.zeros((sum(len(u.positions) for u in units), dim), dtype=np.float32)
        for i, u in enumerate(units):
            prev = units[i - 1].key if i else "^"
            for p, piece in zip(u.positions, u.pieces):
                H[p] = get(piece) + 0.7 * get("prev:" + prev)
        out.append(H)
    return out


def test_build_table_fidelity_known_values(tokenizer):
    from tristage.captions.build import build_table, fidelity, tokenized_units
    from tristage.captions.tokenize import CaptionParser

    parser = CaptionParser(tokenizer, LEXICON)
    caps = sorted({c for c, _ in corpus_captions(150, seed=3)})
    units = tokenized_units(parser, caps)
    states = _context_states(units)
    meta = {"lexicon": LEXICON, "end_token": parser.end_token}
    table = build_table(units, states, meta, tokenizer=tokenizer, context=True, min_count=1)
    # on the build captions themselves, trigram context rows reproduce non-attribute states exactly
    ctx = fidelity(table, caps, states)
    base = fidelity(table, caps, states, context=False, pieces=False)
    assert ctx["cosine_mean"] > base["cosine_mean"] + 0.02
    assert ctx["n_unseen_tokens"] == 0
    kinds = set(table.kinds)
    assert {"unk", "token", "attribute", "context"} <= kinds
    assert (
        table.vectors.shape == (len(table.tokens), 8) and table.is_attribute.dtype.is_floating_point is False
    )
    # context-free states: the per-token mean is exact -> cosine 1
    flat = [
        np.stack(
            [np.full(8, hash(p) % 7 + 1.0) * np.sign(np.arange(8) - 3.5) for u in us for p in u.pieces]
        ).astype(np.float32)
        for us in units
    ]
    t2 = build_table(units, flat, meta, tokenizer=tokenizer, context=False, attribute_pieces=True)
    f2 = fidelity(t2, caps, flat)
    assert f2["cosine_mean"] == pytest.approx(1.0, abs=1e-5) and f2["caption_cosine_mean"] == pytest.approx(
        1.0
    )


def test_attribute_agreement_with_columns():
    import pandas as pd

    from tristage.captions.build import attribute_agreement

    rows = [dict(caption=c, **a) for c, a in corpus_captions(100, seed=5)]
    rows[0]["gender"] = "female" if rows[0]["gender"] == "male" else "male"  # one wrong cell
    frac, cells = attribute_agreement(pd.DataFrame(rows), LEXICON)
    assert cells == 700 and frac == pytest.approx(699 / 700, abs=1e-4)


def test_unseen_and_empty_never_raise(tokenizer):
    from tristage.captions.build import build_table, tokenized_units
    from tristage.captions.tokenize import CaptionParser

    parser = CaptionParser(tokenizer, LEXICON)
    caps = sorted({c for c, _ in corpus_captions(60, seed=4)})
    units = tokenized_units(parser, caps)
    table = build_table(units, _context_states(units), {"lexicon": LEXICON, "end_token": "</s>"},
                        tokenizer=tokenizer)
    end = table.tokens.index("</s>")
    assert table.encode("") == [end] and table.encode(None) == [end] and table.encode(float("nan")) == [end]
    assert table.encode("   ") == [end]
    before = table.n_unseen
    ids = table.encode("Zyxqv wombats ✨ quibble")
    assert 0 in ids and table.n_unseen > before  # <unk> fallback, counted
    assert all(0 <= i < len(table) for i in table.encode(123))
    ids = table.encode(caps[0])
    assert ids[-1] == end or table.tokens[ids[-1]].split("\t")[1] == "</s>"
    assert any(table.is_attribute[ids].tolist())


def _params(tmp: Path, **extra) -> Path:
    from tristage.testing import write_prepared

    write_prepared(tmp / "corpus", n_speakers=4, utts_per_speaker=6)
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    cv = data["caption_vectors"]
    cv.update(manifest="corpus/manifest.parquet", out_dir="out/caption_vectors", metrics="metrics/cv.json",
              plots_dir="plots/cv", heldout_fraction=0.25, paraphrases=list(PARAPHRASES[:6]),
              contextualiser=dict(cv["contextualiser"], steps=30, recombined=60), **extra)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow
def test_stage_cli_and_deterministic_build(tmp_path):
    params = _params(tmp_path)
    r = subprocess.run([sys.executable, "-m", "steps.caption_vectors", "--params", str(params)], cwd=REPO,
                       env=project_env(TRISTAGE_NO_PROGRESS="1"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "metrics/cv.json").read_text())
    for k in (
        "cosine_mean",
        "cosine_p05",
        "cosine_min",
        "caption_cosine_mean",
        "n_heldout_captions",
        "encoder",
        "paraphrase_cosine_mean",
        "paraphrase_caption_cosine_mean",
        "n_unseen_tokens",
    ):
        assert k in m, k
    assert "random-init" in m["encoder"] and m["pretrained"] is False
    assert m["n_heldout_captions"] >= 1 and 0 < m["cosine_mean"] <= 1 and m["cosine_min"] <= m["cosine_p05"]
    assert m["n_unseen_tokens"] > 0  # the paraphrases have words the corpus never uses
    assert (tmp_path / "plots/cv/cosine_hist.png").stat().st_size > 1000
    out = tmp_path / "out/caption_vectors"
    assert (out / "encoder/config.json").is_file() and (out / "tokenizer").is_dir()

    from tristage.captions.vectors import CaptionVectorTable

    table = CaptionVectorTable.load(out)
    assert table.meta["pretrained"] is False and table.dim == 64
    assert table.encoder_info == {"name": "tiny-t5", "pretrained": False}
    assert table.vectors.shape == (len(table.tokens), 64) and bool(table.is_attribute.any())
    ids = table.encode("A female speaker with a high-pitched American voice speaks quickly.")
    assert any(table.is_attribute[ids].tolist()) and len(ids) > 5

    # the same build again, in-process: byte-identical outputs
    from tristage.captions.build import run_caption_vectors
    from tristage.config import load_params

    p2 = load_params(params, ["caption_vectors.out_dir=out2", "caption_vectors.metrics=m2.json",
                              "caption_vectors.plots_dir=p2"])
    run_caption_vectors(p2.caption_vectors, progress=False)
    for f in ("vectors.safetensors", "tokens.json", "encoder/model.safetensors", "tokenizer/tokenizer.json",
              "contextualiser.safetensors"):
        assert (out / f).read_bytes() == (tmp_path / "out2" / f).read_bytes(), f


def test_stage_bad_manifest_one_line(tmp_path, capsys):
    from steps.caption_vectors import run
    from tristage.stage import run_stage

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"caption_vectors": {"manifest": "missing.parquet"}}))
    assert run_stage("caption_vectors", run, ["--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.parquet" in err[0]
