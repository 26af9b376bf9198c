"""Training reads the captions the caption vectors were built from (rebuilt from attribute columns
where a row has none); evaluate measures each stage's own caption module; targets longer than
max_frames are skipped and counted, never cut."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tristage.testing.fakes import fake_sources, write_tiny_params

GENDERS = ("female", "male")
PITCHES = ("high", "low", "moderate")


@pytest.fixture(scope="module")
def attribute_only(tmp_path_factory):
    """The fake corpus, its manifest with attribute columns and NO captions, and a real caption vector
    table (tiny random-init encoder) built from that manifest by the caption_vectors stage."""
    from tristage.captions.build import run_caption_vectors
    from tristage.captions.vectors import CaptionVectorTable
    from tristage.config import load_params

    folder = tmp_path_factory.mktemp("attr")
    src = fake_sources(n_speakers=4, utts_per_speaker=8)
    man = src.manifest.copy()
    man["caption"] = ""
    man["gender"] = [GENDERS[i % 2] for i in range(len(man))]
    man["pitch"] = [PITCHES[i % 3] for i in range(len(man))]
    man.to_parquet(folder / "manifest.parquet")
    params = load_params(
        write_tiny_params(folder, steps=2),
        [
            "caption_vectors.manifest=manifest.parquet",
            "caption_vectors.out_dir=cv",
            "caption_vectors.metrics=cv.json",
            "caption_vectors.plots_dir=cvplots",
            "caption_vectors.heldout_fraction=0.3",
            "stage1.peft.lora_rank=16",  # the real adapters' default (the tiny params' 4 is the fake's)
        ],
    )
    run_caption_vectors(params.caption_vectors, progress=False)
    table = CaptionVectorTable.load(folder / "cv")
    src.manifest, src.table = man, table
    src.caption_module, src.caption_table = (
        "tristage.captions.peft:CaptionPEFT",
        "tristage.captions.vectors:CaptionVectorTable",
    )
    src.caption_vectors = str(folder / "cv")
    return folder, params, src


def test_attribute_only_rows_train_on_their_rebuilt_captions(attribute_only, caplog):
    from tristage.captions.build import manifest_captions
    from tristage.model.folder import load_model
    from tristage.training.data import TrainData
    from tristage.training.trainer import train_stage

    folder, params, src = attribute_only
    data = TrainData(src, params.stage1, 32, 64)
    texts = [e.caption_text for e in data.examples]
    assert all(texts) and set(texts) == set(manifest_captions(src.manifest))  # the table's very texts
    by_id = src.manifest.set_index("id")
    for e in data.examples:  # gender, pitch, emotion: the attribute columns in the table's order
        row = by_id.loc[e.id]
        assert e.caption_text == f"{row['gender']} {row['pitch']} {row['emotion']}"
    end = src.table.end_id
    assert not any(e.caption == [end] for e in data.examples)
    assert all(src.table.is_attribute[e.caption].any() for e in data.examples)

    with caplog.at_level(logging.INFO, logger="tristage.training"):
        m = train_stage("stage1", params, sources=src)
    assert m["steps"] == 2
    # the contextualiser's corrections of the corpus's distinct captions, computed once for the run
    assert src.table.contextualiser is not None
    n = len({tuple(e.caption) for e in data.examples})
    assert any(f"caption contextualiser cached for {n} captions" in r.getMessage() for r in caplog.records)
    model, _ = load_model(folder / "models/stage1", table=src.table)
    batch = data.collate(data.train_idx[:4], [0])
    with torch.no_grad():
        states = model.caption_peft(batch["caption_ids"], batch["caption_mask"]).states  # (B, L, d)
        end_state = model.caption_peft(torch.tensor([[end]]), torch.ones(1, 1, dtype=torch.bool)).states[0, 0]
    valid = states[batch["caption_mask"]]
    assert valid.shape[0] >= 2 * 4  # at least two attribute rows per caption
    assert not torch.allclose(valid, end_state.expand_as(valid))
    # two rows with different attributes get different caption states
    assert not torch.allclose(states[0].sum(0), states[1].sum(0))


def test_evaluate_caption_cosine_is_the_models_own(attribute_only):
    """Untrained adapters score exactly the table's figure; changed adapters score another one."""
    import json

    from tristage.captions.peft import CaptionPEFT
    from tristage.evaluation.captions import caption_cosine, heldout_states

    folder, params, src = attribute_only
    held = heldout_states(src.table)
    assert held is not None and len(held.captions) >= 1
    peft = CaptionPEFT(src.table, params.stage1.peft.adapters())
    at_init = caption_cosine(peft, src.table, held)
    assert at_init == pytest.approx(
        json.loads((folder / "cv.json").read_text())["caption_cosine_mean"], abs=2e-5
    )
    with torch.no_grad():
        torch.manual_seed(0)
        peft.vae_dec_w.normal_(0, 0.5)
        peft.lora_b.normal_(0, 0.5)
    moved = caption_cosine(peft, src.table, held)
    assert moved is not None and abs(moved - at_init) > 1e-3
    assert peft.training  # left in the mode it was in


def test_targets_longer_than_max_frames_are_skipped_counted_and_warned_once(caplog, tmp_path):
    from tristage.config import load_params
    from tristage.training.data import TrainData

    src = fake_sources(n_speakers=4, utts_per_speaker=8, min_frames=12, max_frames=24, seed=3)
    params = load_params(write_tiny_params(tmp_path))
    n_frames = dict(zip(src.store.index["id"].astype(str), src.store.index["n_frames"].astype(int)))
    limit = 18
    too_long = sorted(i for i, n in n_frames.items() if n > limit)
    assert 0 < len(too_long) < len(n_frames) - 2
    with caplog.at_level(logging.WARNING, logger="tristage.training.data"):
        data = TrainData(src, params.stage1, 32, limit)
        again = TrainData(src, params.stage1, 32, limit)
    assert data.n_skipped_too_long == again.n_skipped_too_long == len(too_long)
    kept = {e.id for e in data.examples}
    assert kept.isdisjoint(too_long) and len(kept) == len(n_frames) - len(too_long)
    assert all(e.n_frames <= limit for e in data.examples)
    warnings = [r.getMessage() for r in caplog.records if "max_frames" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{len(too_long)} of {len(n_frames)}" in warnings[0] and "stage1.model.max_frames" in warnings[0]
    # the rows kept are whole: the codes of a batch are the stored codes, not a cut
    batch = data.collate([0], [0])
    stored = src.store.load(data.examples[0].id)[1]
    assert batch["codes"].shape[2] == stored.shape[1]
    assert np.array_equal(batch["codes"][0].numpy(), np.asarray(stored, dtype=np.int64))
    full = TrainData(src, params.stage1, 32, 64)
    assert full.n_skipped_too_long == 0 and len(full.examples) == len(n_frames)


def test_resume_with_the_contextualiser_cache_is_bitwise_identical(attribute_only, tmp_path):
    """A real caption table with a contextualiser: the run caches the corpus's corrections; a rerun
    that resumes from a middle checkpoint rebuilds the cache and ends on the same bits."""
    import shutil

    from safetensors.torch import load_file

    from tristage.config import load_params
    from tristage.training.trainer import train_stage

    folder, params, src = attribute_only
    assert src.table.contextualiser is not None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: repeatable sums, as the stage subprocesses of the tests run
    try:
        out = {}
        for run in ("a", "b"):
            p = load_params(folder / "params.yaml", [
                "caption_vectors.manifest=manifest.parquet", "caption_vectors.out_dir=cv",
                f"stage1.out_dir={tmp_path / run}", "stage1.steps=6", "stage1.checkpoint_every=2",
                "stage1.keep_last=3", f"stage1.metrics={tmp_path / run}.json",
                f"stage1.plots_dir={tmp_path / run}_plots"])
            train_stage("stage1", p, sources=src)
            out[run] = p
        b = tmp_path / "b"
        shutil.rmtree(b / "checkpoints" / "step-000006")
        shutil.rmtree(b / "checkpoints" / "step-000004")
        (b / "model.safetensors").unlink()
        m = train_stage("stage1", out["b"], sources=src)
    finally:
        torch.set_num_threads(threads)
    assert m["steps"] == 6 and m["resumed_from_step"] == 2
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
