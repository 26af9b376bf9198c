"""CaptionPEFT: identity at init, gradients to every adapter kind, KL / orthogonality values, checkpoints."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tristage.captions.config import PeftParams
from tristage.captions.peft import CaptionPEFT
from tristage.captions.vectors import CaptionVectorTable

P = PeftParams(lora_rank=4, lora_alpha=8.0, vae_latent_dim=6)


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


@pytest.mark.parametrize("train", [True, False])
def test_identity_at_init(train):
    t = toy_table()
    m = CaptionPEFT(t, P).train(train)
    ids, mask = batch()
    out = m(ids, mask)
    assert out.states.shape == (2, 5, 8) and out.mask.dtype == torch.bool
    torch.testing.assert_close(out.states[mask], t.vectors[ids][mask])
    assert torch.all(out.states[~mask] == 0)


def test_gradients_reach_each_adapter_kind():
    t = toy_table()
    m = CaptionPEFT(t, P).train()
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


def test_kl_known_value():
    t = toy_table()
    m = CaptionPEFT(t, P).eval()
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


def test_orthogonality_known_values():
    v = np.zeros((7, 4), dtype=np.float32)
    v[:, 0] = 1.0
    v[4] = [3, 0, 0, 0]
    v[5] = [0, 2, 0, 0]
    m = CaptionPEFT(toy_table(v, dim=4), P)
    ids, mask = batch()
    assert m(ids, mask).ortho.item() == pytest.approx(0.0, abs=1e-7)  # orthogonal (any norms)
    v[5] = [1, 1, 0, 0]  # cosine 1/sqrt(2) -> squared 0.5 on both off-diagonal entries
    assert CaptionPEFT(toy_table(v, dim=4), P)(ids, mask).ortho.item() == pytest.approx(0.5, rel=1e-5)
    v[5] = [-2, 0, 0, 0]
    assert CaptionPEFT(toy_table(v, dim=4), P)(ids, mask).ortho.item() == pytest.approx(1.0, rel=1e-5)


def test_eval_is_deterministic_and_train_samples():
    t = toy_table()
    m = CaptionPEFT(t, P)
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


def test_grouped_matmul_matches_per_row_einsum():
    from tristage.captions.peft import grouped_matmul

    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(11, 5, generator=g), torch.randn(4, 5, 3, generator=g)
    slot = torch.tensor([3, 0, 0, 2, 3, 3, 1, 0, 2, 3, 0])
    torch.testing.assert_close(grouped_matmul(x, slot, W), torch.einsum("rd,rdk->rk", x, W[slot]))
    assert grouped_matmul(x[:0], slot[:0], W).shape == (0, 3)
    skew = torch.tensor([0] * 9 + [1, 2])  # one big group: chunked, same result
    torch.testing.assert_close(grouped_matmul(x, skew, W), torch.einsum("rd,rdk->rk", x, W[skew]))
    # both layouts (direct: W as it is; gathered: chunks of W), values and gradients
    from tristage.captions.peft import _layout

    assert _layout([3, 3, 3, 2], 11, 15, 8)[1] is None  # even groups, small W: direct
    assert _layout([40, 0, 0, 1, 0, 0, 0, 0], 41, 4, 4)[1] is not None  # one big group: chunks
    for s in (slot, skew):
        xg, Wg = x.clone().requires_grad_(), W.clone().requires_grad_()
        grouped_matmul(xg, s, Wg).square().sum().backward()
        xr, Wr = x.clone().requires_grad_(), W.clone().requires_grad_()
        torch.einsum("rd,rdk->rk", xr, Wr[s]).square().sum().backward()
        torch.testing.assert_close(xg.grad, xr.grad)
        torch.testing.assert_close(Wg.grad, Wr.grad)
    big = torch.randn(41, 2, generator=g), torch.randn(8, 2, 2, generator=g)
    s = torch.tensor([0] * 40 + [3])
    want = torch.einsum("rd,rdk->rk", big[0], big[1][s])
    torch.testing.assert_close(grouped_matmul(big[0], s, big[1]), want)


def test_inference_cache_matches_and_follows_updates():
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
    with torch.no_grad():
        m.lora_b.add_(1.0)  # an optimizer step: the cache must not go stale
        torch.testing.assert_close(m(ids, mask).states, m.enhanced_rows(ids[mask])[0].new_zeros(2, 5, 8)
                                   .masked_scatter(mask[..., None], m.enhanced_rows(ids[mask])[0]))


def test_orthogonality_uses_the_mean_row_of_each_value():
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
    m = CaptionPEFT(t, P)
    assert m(*batch()).ortho.item() == pytest.approx(0.0, abs=1e-7)
