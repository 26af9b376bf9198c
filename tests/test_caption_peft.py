"""CaptionPEFT: identity at init, gradients to every adapter kind, KL / orthogonality values, checkpoints;
the fused path held to the reference (values and gradients), its inference bake following weight updates."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tristage.captions.config import CaptionAdapters
from tristage.captions.contextual import Contextualiser, frozen
from tristage.captions.peft import CaptionPEFT, FusedPEFT, ReferencePEFT
from tristage.captions.vectors import CaptionVectorTable

P = CaptionAdapters(lora_rank=4, lora_alpha=8.0, vae_latent_dim=6)
IMPLS = ["fused", "reference"]


def peft(impl, **update) -> CaptionAdapters:
    return dataclasses.replace(P, impl=impl, **update)


def toy_table(vectors=None, kinds=None, dim=8, seed=0):
    """<unk>, 3 tokens, 1 context row of token "b", 2 attribute values."""
    tokens = ["<unk>", "a", "b", "</s>", "<gender:female>", "<pitch:high>", "a\tb\t</s>"]
    kinds = kinds or ["unk", "token", "token", "token", "attribute", "attribute", "context"]
    bases = ["<unk>", "a", "b", "</s>", "<gender:female>", "<pitch:high>", "b"]
    if vectors is None:
        vectors = np.random.default_rng(seed).standard_normal((len(tokens), dim)).astype(np.float32)
    return CaptionVectorTable(tokens, kinds, bases, vectors, {"name": "toy", "pretrained": False})


def batch():
    ids = torch.tensor([[1, 4, 2, 5, 3], [6, 5, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    return ids, mask


def test_adapter_slots_fixed_from_vocabulary():
    t = toy_table()
    m = CaptionPEFT(t, P)
    assert m.lora_a.shape == (4, 8, 4)  # <unk> (shared unseen adapter) + a, b, </s>
    assert m.vae_mu_w.shape == (2, 1, 6)  # each value has one row: its encoder reads 1 coordinate
    assert t.adapter_ids.tolist() == [0, 1, 2, 3, 0, 1, 2]  # the context row of "b" shares b's LoRA
    assert "vectors" not in m.state_dict()  # the table is not part of the checkpoint


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False])
def test_identity_at_init(train, impl):
    t = toy_table()
    m = CaptionPEFT(t, peft(impl)).train(train)
    ids, mask = batch()
    out = m(ids, mask)
    assert out.states.shape == (2, 5, 8) and out.mask.dtype == torch.bool
    torch.testing.assert_close(out.states[mask], t.vectors[ids][mask])
    assert torch.all(out.states[~mask] == 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_reach_each_adapter_kind(impl):
    t = toy_table()
    m = CaptionPEFT(t, peft(impl)).train()
    ids, mask = batch()
    target = torch.randn(2, 5, 8)
    out = m(ids, mask)
    loss = ((out.states - target)[mask] ** 2).mean() + out.kl + out.ortho
    loss.backward()
    assert m.lora_b.grad[[1, 2, 3]].abs().sum(dim=(1, 2)).gt(0).all()  # tokens in the batch
    assert m.lora_b.grad[0].abs().sum() == 0  # <unk> not in the batch
    assert m.vae_dec_w.grad.abs().sum(dim=(1, 2)).gt(0).all()  # both attribute values
    assert m.vae_mu_w.grad.abs().sum() > 0  # through the KL
    # once B / the decoder are no longer zero (after a step), LoRA A and the VAE encoder's variance
    # get gradient from the reconstruction too
    with torch.no_grad():
        m.lora_b.add_(0.1)
        m.vae_dec_w.add_(0.1)
    m.zero_grad()
    out = m(ids, mask)
    ((out.states - target)[mask] ** 2).mean().backward()
    assert m.lora_a.grad[[1, 2, 3]].abs().sum() > 0
    assert m.vae_logvar_w.grad.abs().sum() > 0


@pytest.mark.parametrize("impl", IMPLS)
def test_kl_known_value(impl):
    t = toy_table()
    m = CaptionPEFT(t, peft(impl)).eval()
    with torch.no_grad():
        m.vae_mu_w.zero_()
        m.vae_mu_b.fill_(0.5)
        m.vae_logvar_b.fill_(math.log(2.0))
    ids, mask = batch()
    # per row: -0.5 * z * (1 + log 2 - 0.25 - 2)
    expected = -0.5 * 6 * (1 + math.log(2.0) - 0.25 - 2.0)
    assert m(ids, mask).kl.item() == pytest.approx(expected, rel=1e-5)
    # no attribute in the batch -> 0
    assert m(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool)).kl.item() == 0.0
    with torch.no_grad():
        m.vae_mu_b.zero_()
        m.vae_logvar_b.zero_()
    assert m(ids, mask).kl.item() == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_orthogonality_known_values(impl):
    v = np.zeros((7, 4), dtype=np.float32)
    v[:, 0] = 1.0
    v[4] = [3, 0, 0, 0]
    v[5] = [0, 2, 0, 0]
    m = CaptionPEFT(toy_table(v, dim=4), peft(impl))
    ids, mask = batch()
    approx = pytest.approx
    assert m(ids, mask).ortho.item() == approx(0.0, abs=1e-7)  # orthogonal (any norms)
    v[5] = [1, 1, 0, 0]  # cosine 1/sqrt(2) -> squared 0.5 on both off-diagonal entries
    assert CaptionPEFT(toy_table(v, dim=4), peft(impl))(ids, mask).ortho.item() == approx(0.5, rel=1e-5)
    v[5] = [-2, 0, 0, 0]
    assert CaptionPEFT(toy_table(v, dim=4), peft(impl))(ids, mask).ortho.item() == approx(1.0, rel=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_eval_is_deterministic_and_train_samples(impl):
    t = toy_table()
    m = CaptionPEFT(t, peft(impl))
    with torch.no_grad():
        m.vae_dec_w.normal_()
    ids, mask = batch()
    m.eval()
    torch.testing.assert_close(m(ids, mask).states, m(ids, mask).states)
    m.train()
    assert not torch.allclose(m(ids, mask).states, m(ids, mask).states)


def test_state_dict_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    t = toy_table()
    torch.manual_seed(0)
    a = CaptionPEFT(t, P)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_file(a.state_dict(), str(tmp_path / "peft.safetensors"))
    torch.manual_seed(1)
    b = CaptionPEFT(t, P)
    b.load_state_dict(load_file(str(tmp_path / "peft.safetensors")))
    ids, mask = batch()
    a.eval(), b.eval()
    torch.testing.assert_close(a(ids, mask).states, b(ids, mask).states)
    torch.testing.assert_close(a(ids, mask).ortho, b(ids, mask).ortho)


def test_vae_encoder_reads_each_value_in_the_basis_of_its_rows():
    """The coordinates keep the geometry of a value's rows, and any affine map of the d-dim rows
    (x W, the seed's encoder) is a map of the coordinates: the same family, k x z parameters."""
    from tristage.captions.peft import value_coords

    g = torch.Generator().manual_seed(0)
    basis = torch.randn(2, 3, 8, generator=g)  # two values, rows in a 3-dim subspace each
    X = torch.cat([torch.randn(4, 3, generator=g) @ basis[0], torch.randn(5, 3, generator=g) @ basis[1]])
    slot = torch.tensor([0] * 4 + [1] * 5)
    c = value_coords(X, torch.arange(9), slot, 2, max_rank=5)
    assert c.shape == (9, 3)
    for s in (0, 1):
        Xs, cs = X[slot == s].double(), c[slot == s].double()
        torch.testing.assert_close(cs @ cs.T, Xs @ Xs.T, rtol=1e-4, atol=1e-4)  # inner products kept
        W = torch.randn(8, 6, generator=g).double()
        U = torch.linalg.lstsq(cs, Xs @ W).solution  # (3, 6)
        torch.testing.assert_close(cs @ U, Xs @ W, rtol=1e-4, atol=1e-4)
    # a value with more rows than max_rank: the identity basis (the rows themselves)
    torch.testing.assert_close(value_coords(X, torch.arange(9), slot, 2, max_rank=4), X)


@pytest.mark.parametrize("counts, w, row, layout", [
    ([3, 3, 3, 2], 15, 8, "direct"),  # even groups, small W: one group per slot, in place
    ([9, 1, 1, 2, 1, 1, 0], 100, 40, "overflow"),  # one big slot: its first rows in place, the rest in chunks
    ([40, 0, 0, 1, 0, 0, 0, 0], 4, 4, "gathered"),  # few slots of many used: chunks of gathered W
])
def test_grouping_matches_per_row_products(counts, w, row, layout):
    """Every layout gives each row its own slot's product, and folds the per-group gradients of W
    back to the slot: the sum over its rows of x^T g."""
    from tristage.captions.peft import Grouping

    g = torch.Generator().manual_seed(0)
    slot = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
    R, (S, a, b) = len(slot), (len(counts), 5, 3)
    x, W = torch.randn(R, a, generator=g), torch.randn(S, a, b, generator=g)
    gy = torch.randn(R, b, generator=g)
    grp = Grouping(slot, S, w, row, torch.device("cpu"))
    kind = "gathered" if grp.sel is not None else "overflow" if grp.extra is not None else "direct"
    assert kind == layout
    flat = torch.from_numpy(grp.flat)
    xp = x[torch.from_numpy(grp.gather_index(np.arange(R)))].view(grp.G, grp.C, a)
    s = torch.from_numpy(slot)
    want = torch.einsum("ra,rab->rb", x, W[s])
    torch.testing.assert_close(grp.bmm(xp, W).view(-1, b)[flat], want)
    base = torch.randn(grp.G, grp.C, b, generator=g)
    torch.testing.assert_close(grp.bmm(xp, W, base=base).view(-1, b)[flat], want + base.view(-1, b)[flat])
    gyp = torch.zeros(grp.G * grp.C, b).index_copy_(0, flat, gy).view(grp.G, grp.C, b)  # padding: no gradient
    got = grp.scatter(torch.bmm(xp.transpose(1, 2), gyp))
    want_grad = torch.zeros(S, a, b).index_add_(0, s, x[:, :, None] * gy[:, None, :])
    torch.testing.assert_close(got, want_grad)


def wide_table(dim=6, seed=0):
    """A table whose batches use every layout: a token with many context rows, tokens with one,
    attribute values with 1-5 rows (pieces). dim 6: a value has more rows than dim / 2, so the VAE
    encoders read the identity basis (k = d); dim 16: each value's SVD basis (k = 5 < d)."""
    tokens = ["<unk>", "a", "b", "c", "d", "</s>"]
    kinds, bases = ["unk"] + ["token"] * 5, list(tokens)
    for i in range(12):  # context rows of "a"
        tokens.append(f"x{i}\ta\ty"), kinds.append("context"), bases.append("a")
    for v, n in (("<x:a>", 5), ("<x:b>", 1), ("<y:a>", 3), ("<y:b>", 2)):
        for j in range(n):
            tokens.append(v if j == 0 else f"{v}\tp{j}"), kinds.append("attribute"), bases.append(v)
    vectors = np.random.default_rng(seed).standard_normal((len(tokens), dim)).astype(np.float32)
    return CaptionVectorTable(tokens, kinds, bases, vectors, {"name": "wide", "pretrained": False})


def test_attribute_decoders_are_shared_within_an_attribute():
    """`vae_decoder: attribute`: one decoder matrix per attribute, read by all its values; each value keeps
    its encoder and output bias. Identity at init; a change to attribute x's decoder moves the rows of
    x's two values and nothing else."""
    t = wide_table()
    assert t.value_attribute.tolist() == [0, 0, 1, 1]  # <x:a> <x:b> <y:a> <y:b>
    m = CaptionPEFT(t, dataclasses.replace(P, vae_decoder="attribute")).eval()
    assert m.vae_dec_w.shape == (2, 6, 6) and m.vae_dec_b.shape == (4, 6) and m.vae_mu_w.shape[0] == 4
    rows = torch.arange(len(t.tokens))
    torch.testing.assert_close(m.enhanced_rows(rows)[0], t.vectors)
    with torch.no_grad():
        m.vae_mu_b.normal_()
        m.vae_dec_w[0].normal_()
    moved = (m.enhanced_rows(rows)[0] - t.vectors).abs().sum(1) > 1e-6
    x_rows = m.is_attr & (m.dec_slot[m.slot.where(m.is_attr, 0)] == 0)
    assert x_rows.sum() == 6 and torch.equal(moved, x_rows)  # <x:a>'s 5 rows and <x:b>'s one
    assert CaptionPEFT(t, P).vae_dec_w.shape[0] == 2  # the default
    assert CaptionPEFT(t, dataclasses.replace(P, vae_decoder="value")).vae_dec_w.shape[0] == 4  # the seed's
    with pytest.raises(ValueError, match="vae_decoder"):
        CaptionPEFT(t, dataclasses.replace(P, vae_decoder="token"))


def with_contextualiser(t, seed=0):
    """The table with a (frozen) contextualiser whose correction is not zero, as if trained."""
    torch.manual_seed(seed)
    ctx = Contextualiser(t.dim, width=16, layers=1, heads=2, max_len=4)
    with torch.no_grad():
        ctx.out.weight.normal_(0, 0.5)
    t.contextualiser = frozen(ctx)
    return t


def twins(t, **update) -> tuple[FusedPEFT, ReferencePEFT]:
    """Both implementations with one state dict (moved away from the identity, so that every parameter
    gets a gradient): the fused one's, loaded strictly into the reference."""
    torch.manual_seed(0)
    fused = CaptionPEFT(t, peft("fused", **update))
    with torch.no_grad():
        for q in fused.parameters():
            q.add_(0.3 * torch.randn_like(q))
    ref = CaptionPEFT(t, peft("reference", **update))
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def wide_batch(t, aligned: bool):
    """(4, 9) rows of the wide table; padding anywhere, or (aligned) after each caption, as a cache needs."""
    rng = np.random.default_rng(1)
    ids = torch.from_numpy(rng.integers(0, len(t.tokens), (4, 9)))
    if aligned:
        return ids, torch.arange(9) < torch.tensor([9, 3, 6, 7])[:, None]
    return ids, torch.from_numpy(rng.random((4, 9)) < 0.8)


def run(m, ids, mask, grads):
    """One forward (noise from seed 5) and backward -> states, kl, ortho and each parameter's gradient."""
    m.zero_grad()
    torch.manual_seed(5)
    out = m(ids, mask)
    torch.autograd.backward([out.states, out.kl, out.ortho], list(grads))
    return out, {k: q.grad.clone() for k, q in m.named_parameters()}


@pytest.mark.parametrize("context", [False, True])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("decoder, zdim", [("value", 128), ("attribute", 128), ("attribute", 4)])
@pytest.mark.parametrize("table", ["toy", "wide", "wide-svd"])
def test_fused_path_computes_the_reference(table, decoder, zdim, train, context):
    """The fused forward and hand-written backward give the reference's states, KL and orthogonality and
    the same gradient of every parameter, in train mode (the same noise) and eval mode, and without
    gradients (the baked table) the same values. Over the VAE's bases (toy: one row per value, k = 1;
    wide: the identity, k = d; wide-svd: each value's SVD basis, 1 < k < d), one decoder per value or per
    attribute (wide: attributes x and y, two values each) both ways the fused encoders run with shared
    decoders (z128: stacked per attribute in the decoders' groups; z4: grouped by value, z moved between
    the layouts), and with a contextualiser (its corrections cached by the fused module) or without."""
    t = toy_table() if table == "toy" else wide_table(dim=16 if table == "wide-svd" else 6)
    if context:
        t = with_contextualiser(t)
    fused, ref = twins(t, vae_decoder=decoder, vae_latent_dim=zdim)
    k = fused.vae_mu_w.shape[1]
    assert k == {"toy": 1, "wide": t.dim, "wide-svd": 5}[table]
    assert fused.vae_dec_w.shape[0] == (2 if decoder == "attribute" or table == "toy" else t.n_vae)
    assert bool(fused._stack_blocks) == (decoder == "attribute" and zdim == 128 and table != "toy")
    assert list(fused.state_dict()) == list(ref.state_dict())
    ids, mask = batch() if table == "toy" else wide_batch(t, aligned=context)
    if context:
        assert fused.cache_context([r[m].tolist() for r, m in zip(ids, mask)], max_mb=10)["skipped"] is None
        assert fused._cached(ids.numpy(), mask.numpy()) is not None
    fused.train(train), ref.train(train)
    grads = torch.randn(ids.shape + (t.dim,)), torch.tensor(0.7), torch.tensor(1.3)
    got, got_grads = run(fused, ids, mask, grads)
    want, want_grads = run(ref, ids, mask, grads)
    torch.testing.assert_close(got.states, want.states)
    torch.testing.assert_close(got.kl, want.kl)
    torch.testing.assert_close(got.ortho, want.ortho)
    assert got.kl > 0 and got.ortho > 0
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, msg=lambda e, name=name: f"{name}: {e}")
        assert g.abs().sum() > 0, name  # every kind of parameter is exercised
    if not train:
        with torch.no_grad():
            baked, plain = fused(ids, mask), ref(ids, mask)
        torch.testing.assert_close(baked.states, plain.states)
        torch.testing.assert_close(baked.kl, plain.kl)
        torch.testing.assert_close(baked.ortho, plain.ortho)


def test_impl_picks_the_class_and_both_hold_the_same_parameters(tmp_path):
    """`peft.impl` picks the class (the default: fused), also through the name saved model configs hold;
    under one seed both start from the same parameters, and a checkpoint of one loads into the other."""
    import types

    from safetensors.torch import load_file, save_file

    from tristage.model.tts import build_caption_module
    from tristage.training.config import PeftParams

    t = toy_table()
    assert type(CaptionPEFT(t, P)) is FusedPEFT and type(CaptionPEFT(t)) is FusedPEFT
    torch.manual_seed(0)
    fused = CaptionPEFT(t, peft("fused"))
    torch.manual_seed(0)
    ref = CaptionPEFT(t, peft("reference"))
    assert type(ref) is ReferencePEFT and isinstance(ref, CaptionPEFT) and isinstance(fused, CaptionPEFT)
    a, b = fused.state_dict(), ref.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    cfg = types.SimpleNamespace(caption_module="tristage.captions.peft:CaptionPEFT", peft=peft("reference"))
    assert type(build_caption_module(cfg, t)) is ReferencePEFT
    with pytest.raises(ValueError, match="impl"):
        PeftParams(impl="fast")  # stage1.peft
    with pytest.raises(ValueError, match="impl"):
        CaptionPEFT(t, types.SimpleNamespace(impl="fast"))
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_file(fused.state_dict(), str(tmp_path / "peft.safetensors"))
    ref.load_state_dict(load_file(str(tmp_path / "peft.safetensors")))
    ids, mask = batch()
    fused.eval(), ref.eval()
    torch.testing.assert_close(ref(ids, mask).states, fused(ids, mask).states)


def fresh(m, ids, mask):
    """States computed now, from m's current weights (the reference, loaded with them): no cache."""
    ref = CaptionPEFT(toy_table(), peft("reference")).eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        return ref(ids, mask).states


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_inference_bake_follows_an_in_place_optimizer_step(opt):
    """In eval mode, an optimizer updates the weights in place (no mode switch, no new tensors); the next
    inference call gives the states of the new weights, not the baked ones of the old."""
    t = toy_table()
    m = CaptionPEFT(t, P).eval()
    ids, mask = batch()
    with torch.no_grad():
        before = m(ids, mask).states  # bakes
    torch.testing.assert_close(before, fresh(m, ids, mask))
    make = dict(sgd=lambda ps: torch.optim.SGD(ps, lr=0.5), adamw=lambda ps: torch.optim.AdamW(ps, lr=0.1))
    optimizer = make[opt](m.parameters())
    out = m(ids, mask)  # grad enabled: the direct path
    (out.states.square().sum() + out.kl + out.ortho).backward()
    optimizer.step()
    with torch.no_grad():
        after = m(ids, mask).states
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh(m, ids, mask))


def test_inference_bake_follows_loads_moves_and_hand_edits():
    """load_state_dict (of the module, or of a model holding it), a switch to eval mode after weights were
    edited in train mode, and `invalidate_bake()` after a hand edit in eval mode: each re-bakes."""
    t = toy_table()
    m = CaptionPEFT(t, P).eval()
    ids, mask = batch()

    def check():
        with torch.inference_mode():
            states = m(ids, mask).states
        torch.testing.assert_close(states, fresh(m, ids, mask))
        return states

    first = check()
    other = CaptionPEFT(t, P)
    with torch.no_grad():
        other.lora_b.normal_()
    m.load_state_dict(other.state_dict())
    assert not torch.allclose(check(), first)
    with torch.no_grad():
        other.vae_dec_w.normal_()
    torch.nn.ModuleDict({"caption_peft": m}).load_state_dict(
        {f"caption_peft.{k}": v for k, v in other.state_dict().items()})
    second = check()
    m.train()
    with torch.no_grad():
        m.lora_b.add_(1.0)
    m.eval()
    third = check()
    with torch.no_grad():
        m.vae_dec_b.add_(1.0)
    m.invalidate_bake()
    assert not torch.allclose(check(), third) and not torch.allclose(third, second)


def test_inference_kl_is_computed_when_read():
    """Inference computes the KL when it is read: of the batch and the parameters it was given, even when
    both change before the read; it matches the direct path's."""
    t = toy_table()
    m = CaptionPEFT(t, P).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ids, mask = batch()
    ref = m(ids, mask)  # grad enabled: the direct path
    with torch.inference_mode():
        fast = m(ids, mask)
    torch.testing.assert_close(fast.states, ref.states.detach())
    torch.testing.assert_close(fast.kl, ref.kl.detach())
    torch.testing.assert_close(fast.ortho, ref.ortho.detach())
    with torch.inference_mode():
        late = m(ids, mask)
    want = m(ids, mask).kl.detach()
    ids[0, 1] = 3  # the batch, in place: its first caption loses attribute row 4
    with torch.no_grad():
        m.vae_mu_b.add_(1.0)
    torch.testing.assert_close(late.kl, want)
    assert late.kl.item() != pytest.approx(m(ids, mask).kl.item())


@pytest.mark.parametrize("impl", IMPLS)
def test_orthogonality_uses_the_mean_row_of_each_value(impl):
    v = np.zeros((7, 4), dtype=np.float32)
    v[:, 0] = 1.0
    v[4], v[5], v[6] = (
        [1, 1, 0, 0],
        [1, -1, 0, 0],
        [0, 0, 5, 0],
    )  # value 0 = rows 4, 5 (mean e0); value 1 = row 6
    kinds = ["unk", "token", "token", "token", "attribute", "attribute", "attribute"]
    t = toy_table(v, kinds=kinds, dim=4)
    t.bases[:] = ["<unk>", "a", "b", "</s>", "<x:a>", "<x:a>", "<x:b>"]
    t = CaptionVectorTable(t.tokens, kinds, t.bases, v, t.meta)
    assert t.n_vae == 2 and t.adapter_ids[4:].tolist() == [0, 0, 1]
    m = CaptionPEFT(t, peft(impl))
    assert m(*batch()).ortho.item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
def test_train_step_is_fp32_under_autocast(impl):
    """The trainer's amp (bf16 autocast) leaves the adapters' pass in fp32: the same states, KL and
    orthogonality as without it, and fp32 gradients."""
    m = CaptionPEFT(wide_table(), peft(impl)).train()
    with torch.no_grad():
        for q in m.parameters():
            q.add_(0.3 * torch.randn_like(q))
    ids, mask = torch.arange(27).view(3, 9) % 29, torch.ones(3, 9, dtype=torch.bool)
    torch.manual_seed(0)
    want = m(ids, mask)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m(ids, mask)
        (got.states.sum() + got.kl + got.ortho).backward()
    for a, b in ((got.states, want.states), (got.kl, want.kl), (got.ortho, want.ortho)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)
    assert all(q.grad.dtype == torch.float32 for q in m.parameters())
