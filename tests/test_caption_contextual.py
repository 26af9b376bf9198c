"""The contextualiser: identity at init, frozen inside caption modules, saved with the table, the same
correction in training, evaluation and synthesis; recombined captions; distillation learns context."""
from __future__ import annotations

import numpy as np
import torch

from tristage.captions.config import CaptionAdapters
from tristage.captions.contextual import Contextualiser, distil, frozen, recombined_captions
from tristage.captions.lexicon import LEXICON, Matcher
from tristage.captions.peft import CaptionPEFT, enhanced_table
from tristage.captions.vectors import CaptionVectorTable

P = CaptionAdapters(lora_rank=4, lora_alpha=8.0, vae_latent_dim=6)


def toy_table(dim=8, seed=0):
    tokens = ["<unk>", "a", "b", "</s>", "<gender:female>", "<pitch:high>", "a\tb\t</s>"]
    kinds = ["unk", "token", "token", "token", "attribute", "attribute", "context"]
    bases = ["<unk>", "a", "b", "</s>", "<gender:female>", "<pitch:high>", "b"]
    vectors = np.random.default_rng(seed).standard_normal((len(tokens), dim)).astype(np.float32)
    return CaptionVectorTable(tokens, kinds, bases, vectors, {"name": "toy", "pretrained": False})


def trained_ctx(dim=8, seed=0):
    torch.manual_seed(seed)
    ctx = Contextualiser(dim, width=16, layers=1, heads=2, max_len=4)
    with torch.no_grad():
        ctx.out.weight.normal_(0, 0.5)  # as if trained: a non-zero correction
    return frozen(ctx)


def batch():
    ids = torch.tensor([[1, 4, 2, 5, 3], [6, 5, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    return ids, mask


def test_untrained_is_the_table_and_frozen_has_no_parameters():
    ctx = Contextualiser(8, width=16, layers=2, heads=4, max_len=4)
    x, mask = torch.randn(2, 6, 8), torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.all(ctx(x, mask) == 0)  # zero-init output projection
    f = frozen(trained_ctx())
    assert list(f.parameters()) == [] and f.state_dict() == {} and len(dict(f.named_buffers())) > 10
    out = f(x, mask)  # longer than max_len (4): positions past it reuse the last embedding
    assert out.shape == (2, 6, 8) and torch.all(out[1, 2:] == 0) and out[0].abs().sum() > 0
    # a padded position changes nothing for the real ones
    x2 = x.clone()
    x2[1, 2:] = 100.0
    torch.testing.assert_close(f(x2, mask)[1, :2], out[1, :2])
    # the short caption alone (no padding) gets what it got in the padded batch
    torch.testing.assert_close(f(x[1:, :2], mask[1:, :2])[0], out[1, :2])


def test_same_correction_in_training_eval_and_the_baked_synthesis_table(tmp_path):
    from tristage.model.folder import BakedCaptions, _save_caption

    t = toy_table()
    t.contextualiser = trained_ctx()
    t.save(tmp_path / "table")
    loaded = CaptionVectorTable.load(tmp_path / "table")
    ids, mask = batch()
    rows = [r[m].tolist() for r, m in zip(ids, mask)]
    for a, b in zip(t.context_delta(rows), loaded.context_delta(rows)):
        np.testing.assert_allclose(a, b)
        assert np.abs(a).sum() > 0
    m = CaptionPEFT(loaded, P)
    assert all("context" not in k for k in m.state_dict())  # the checkpoint holds adapters only
    assert all(not n.startswith("context") for n, _ in m.named_parameters())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m.eval()
    delta = m.context_delta(ids, mask)
    plain = m(ids, mask, context=False).states
    torch.testing.assert_close(m(ids, mask).states, plain + delta)
    with torch.inference_mode():  # the baked inference path adds the same correction
        torch.testing.assert_close(m(ids, mask).states, plain + delta)
    # baking rows for a synthesis folder leaves the correction out; the folder's module adds it back
    rows_out = enhanced_table(m, len(loaded))
    torch.testing.assert_close(rows_out[ids] * mask[..., None], plain.detach())
    _save_caption(tmp_path / "baked", loaded, rows_out)
    baked = CaptionVectorTable.load(tmp_path / "baked")
    assert not torch.equal(baked.vectors, baked.context_vectors)  # the raw rows kept for the contextualiser
    torch.testing.assert_close(BakedCaptions(baked)(ids, mask).states, m(ids, mask).states.detach())
    # training mode: gradients reach the adapters through the (frozen) correction
    m.train()
    m(ids, mask).states.square().sum().backward()
    assert m.lora_b.grad.abs().sum() > 0


def test_cached_corrections_are_the_computed_ones_and_do_not_depend_on_the_order_met():
    t = toy_table()
    t.contextualiser = trained_ctx()
    m = CaptionPEFT(t, P)
    ids, mask = batch()
    computed = m.context_delta(ids, mask)
    corpus = [[1, 4, 2, 5, 3], [6, 5], [1, 4, 2, 5, 3], [2, 2, 2]]  # a repeat is cached once
    info = m.cache_context(corpus, max_mb=1)
    assert info["captions"] == 3 and info["rows"] == 10 and info["skipped"] is None
    cached = m.context_delta(ids, mask)
    torch.testing.assert_close(cached, computed)
    assert torch.all(cached[1, 2:] == 0)
    where = m._cached(ids.numpy(), mask.numpy())
    assert where is not None and int(where.max()) == len(m.context_cache) - 1  # padding: the zero row
    # the bits depend on the set of captions, not on the order a (resumed) run meets them
    other = CaptionPEFT(t, P)
    other.cache_context(corpus[::-1], max_mb=1)
    assert torch.equal(other.context_delta(ids, mask), cached)
    # train and eval outputs add the cached correction; inference gathers the baked rows and the
    # corrections in one pass, also after the cache is rebuilt (the bake follows it)
    torch.testing.assert_close(m(ids, mask).states, m(ids, mask, context=False).states + computed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m.eval()
    expect = m(ids, mask, context=False).states + computed
    for _ in range(2):
        with torch.inference_mode():
            assert m._cached(ids.numpy(), mask.numpy()) is not None
            torch.testing.assert_close(m(ids, mask).states, expect)
        m.cache_context(corpus[:2], max_mb=1)
    # room for the corrections but not for each position's whole state: eval mode then gathers the baked
    # row and the correction, two rows a position, to the same states
    need = (len(m.vectors) + 10 + 2) * m.dim * 4 / 2**20
    for max_mb, whole in ((need * 1.5, False), (need * 2.5, True)):
        assert m.cache_context(corpus, max_mb=max_mb)["skipped"] is None
        with torch.inference_mode():
            torch.testing.assert_close(m(ids, mask).states, expect)
        assert (m._baked()[3] is not None) == whole
    m.train()
    # a batch with a caption that is not cached (or not left-aligned) computes the whole batch
    assert m._cached(np.array([[1, 4, 2, 5, 3], [6, 6, 0, 0, 0]]), mask.numpy()) is None
    assert m._cached(ids.roll(1, 1).numpy(), mask.roll(1, 1).numpy()) is None
    torch.testing.assert_close(m.context_delta(torch.tensor([[2, 2, 2]]), torch.ones(1, 3, dtype=torch.bool)),
                               m.context.correction(m.vectors, torch.tensor([[2, 2, 2]]),
                                                    torch.ones(1, 3, dtype=torch.bool)))
    # over the memory cap, or without a contextualiser: nothing kept, batches compute it
    assert m.cache_context(corpus, max_mb=1e-5)["skipped"].endswith("MiB > 1e-05 MiB")
    assert m.context_cache is None and m._cached(ids.numpy(), mask.numpy()) is None
    plain = CaptionPEFT(toy_table(), P)
    assert plain.cache_context(corpus, max_mb=1)["skipped"] == "no contextualiser"


def test_recombined_captions_mix_the_pieces_of_one_template_family():
    build = ["A female speaker talks quickly in a clean room.", "A male voice talks slowly in a noisy room.",
             "Some woman speaker talks fast in a very noisy hall.", "Deep-voiced man, speaking slowly.",
             "The end."]
    out = recombined_captions(build, LEXICON, 50, seed=0, exclude={build[1]})
    assert 20 <= len(out) <= 50 and len(out) == len(set(out)) and not set(out) & set(build)
    assert out == recombined_captions(build, LEXICON, 50, seed=0, exclude={build[1]})  # seeded
    m = Matcher(LEXICON)
    family = [s[2] for s in m.spans(build[0])]
    assert family == ["gender", "speed", "quality"]
    for c in out:  # only the 3-member family mixes (a family of one gives nothing new)
        assert [s[2] for s in m.spans(c)] == family and c[0].isupper()
        assert c.split(" ")[0] in ("A", "Some") and c.endswith(("room.", "hall."))
    assert {m.attributes(c)["gender"] for c in out} == {"female", "male"}
    assert recombined_captions(["No attribute here.", "Nor here."], LEXICON, 5, seed=0) == []


def test_distil_learns_a_correction_that_depends_on_the_caption():
    """Targets where a token's state depends on the token after it: the table can't hold that, the
    distilled contextualiser learns it."""
    import types

    t = toy_table(dim=8)
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 4, size=int(rng.integers(3, 7)))) for _ in range(64)]
    V = t.vectors.numpy()

    def target(s):  # each row's vector turned towards the next row's
        return np.stack([V[r] + 0.8 * V[s[i + 1] if i + 1 < len(s) else 3] for i, r in enumerate(s)])

    t.lookup = lambda c, *a, **k: (seqs[int(c)], [[i] for i in range(len(seqs[int(c)]))], 0)
    cp = types.SimpleNamespace(seed=0, max_length=16, contextualiser=types.SimpleNamespace(
        width=32, layers=1, heads=2, steps=150, batch_size=16, lr=3e-3, caption_loss_weight=0.25))
    ctx, info = distil(t, [str(i) for i in range(64)], [target(s) for s in seqs], cp)
    assert info["steps"] == 150 and info["loss_end"] < 0.5 * info["loss_start"]
    t.contextualiser = ctx
    cos = lambda a, b: (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    held = [list(rng.integers(1, 4, size=5)) for _ in range(16)]
    delta = t.context_delta(held)
    with_ctx = np.mean([cos(V[s] + d, target(s)).mean() for s, d in zip(held, delta)])
    table_only = np.mean([cos(V[s], target(s)).mean() for s in held])
    assert with_ctx > table_only + 0.05, (with_ctx, table_only)
