"""Model: shapes, the delay pattern round trip, GRL sign, generation, load_model."""
from __future__ import annotations

import pytest
import torch

from tristage.model.config import PRESETS, ModelParams, TTSConfig
from tristage.model.decoder import Decoder, DecoderConfig, delay_codes, sinusoids, undelay_codes
from tristage.model.grl import grad_reverse
from tristage.model.text import encode_text
from tristage.model.tts import MODULE_NAMES, TTS
from tristage.testing.fakes import TINY_MODEL, FakeCaptionPEFT, fake_sources, write_tiny_params
from tristage.training.data import TrainData


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tristage.config import load_params

    folder = tmp_path_factory.mktemp("model")
    src = fake_sources(table_dir=folder / "caption_vectors")
    params = load_params(write_tiny_params(folder))
    cfg = TTSConfig(n_codebooks=src.n_codebooks, codebook_size=src.codebook_size, n_mels=src.n_mels,
                    caption_dim=src.table.dim, n_speakers=len(src.mapping), **TINY_MODEL)
    torch.manual_seed(0)
    model = TTS(cfg, FakeCaptionPEFT(src.table))
    data = TrainData(src, params.stage1, cfg.max_text_len, cfg.max_frames)
    return model, cfg, data


@pytest.mark.parametrize("K,T", [(1, 5), (3, 4), (4, 9)])
def test_delay_pattern_round_trip(K, T):
    codes = torch.randint(0, 10, (2, K, T))
    lengths = torch.tensor([T, T - 1])
    d = delay_codes(codes, lengths, pad_id=10)
    assert d.shape == (2, K, T + K - 1)
    for k in range(K):  # codebook k is shifted by k steps, pad before and after
        assert (d[:, k, :k] == 10).all()
        assert torch.equal(d[0, k, k:k + T], codes[0, k])
    assert (d[1, :, -1] == 10).all() if K == 1 else (d[1, K - 1, -1] == 10)
    back = undelay_codes(d)
    assert torch.equal(back[0], codes[0])
    assert torch.equal(back[1, :, :T - 1], codes[1, :, :T - 1]) and (back[1, :, T - 1] == 10).all()


def test_forward_shapes_and_losses(tiny):
    model, cfg, data = tiny
    import numpy as np

    batch = data.collate(data.train_idx[:3], [0])
    out = model(batch, speaker_head=True, grl_lambda=1.0)
    assert out["emo_vec"].shape == (3, cfg.d_model)
    assert out["mel_loss"].ndim == 0 and torch.isfinite(out["mel_loss"])
    # untrained: cross-entropy near log(V)
    assert abs(out["mel_loss"].item() - np.log(cfg.codebook_size)) < 0.5
    n_targets = int(batch["code_lengths"].sum()) * cfg.n_codebooks
    assert out["mel_count"].item() == n_targets  # pads (delay gaps and padding) are ignored
    assert out["speaker_count"].item() == 3
    logits, stop = model.decoder(
        torch.zeros(2, 3, cfg.d_model),
        batch["text"][:2],
        batch["text_mask"][:2],
        torch.zeros(2, cfg.n_codebooks, 7, dtype=torch.long),
        torch.ones(2, 7, dtype=torch.bool),
        torch.zeros(2, 4, cfg.caption_dim),
        torch.ones(2, 4, dtype=torch.bool),
    )
    assert logits.shape == (2, cfg.n_codebooks, 7, cfg.codebook_size) and stop.shape == (2, 7)


def test_top_level_module_names(tiny):
    model, _, _ = tiny
    assert {n for n, _ in model.named_children()} - {"grl"} == set(MODULE_NAMES)
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes <= set(MODULE_NAMES)


def test_grl_identity_forward_reversed_backward():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    g = torch.randn(4, 3)
    y.backward(g)
    assert torch.allclose(x.grad, -0.7 * g)


def test_grl_gradient_at_emotion_perceiver_is_reversed(tiny):
    """The speaker loss's gradient reaching the emotion perceiver through the GRL has the
    opposite sign of the gradient at the classifier's input."""
    model, _, data = tiny

    batch = data.collate(data.train_idx[:4], [1])
    seen = {}

    def on_cls_input(module, args):
        args[0].register_hook(lambda g: seen.__setitem__("cls_in", g))

    def on_emo_vec(module, args, out):
        out.register_hook(lambda g: seen.__setitem__("emo", g))

    def perceiver_grad(lam):
        model.zero_grad()
        h1 = model.speaker_classifier.register_forward_pre_hook(on_cls_input)
        h2 = model.emo_layer.register_forward_hook(on_emo_vec)
        try:
            out = model(batch, speaker_head=True, grl_lambda=lam)
            out["speaker_loss"].backward()
        finally:
            h1.remove(), h2.remove()
        return [p.grad.clone() for p in model.emotion_perceiver.parameters() if p.grad is not None]

    g_rev = perceiver_grad(1.0)
    assert torch.allclose(seen["emo"], -seen["cls_in"])  # emotion vector gets -1 x classifier-input gradient
    assert (seen["emo"] * seen["cls_in"]).sum() < 0
    g_plain = perceiver_grad(-1.0)  # -(-1) = identity: the un-reversed gradient
    assert g_rev and any(g.abs().sum() > 0 for g in g_rev)
    for a, b in zip(g_rev, g_plain):
        assert torch.allclose(a, -b, atol=1e-7)


def test_generate_returns_codes(tiny):
    model, cfg, data = tiny
    mel, _ = data.features(0)
    codes = model.generate("hello", [1, 2, 3], mel.float(), n_frames=5, greedy=True)
    assert codes.shape == (cfg.n_codebooks, 5)
    # greedy decoding under the delay pattern = the argmax of the teacher-forced forward pass at every
    # target position: scoring the generated codes as targets gives top-1 accuracy exactly 1
    model.eval()

    def top1(target: torch.Tensor) -> tuple[int, int]:
        ones = lambda n: torch.ones(1, n, dtype=torch.bool)
        text = torch.tensor([encode_text("hello", cfg.max_text_len)])
        with torch.no_grad():
            out = model(
                dict(
                    text=text,
                    text_mask=ones(text.shape[1]),
                    codes=target[None],
                    code_lengths=torch.tensor([target.shape[1]]),
                    caption_ids=torch.tensor([[1, 2, 3]]),
                    caption_mask=ones(3),
                    spk_mel=mel.float()[None],
                    spk_mask=ones(mel.shape[0]),
                    emo_mel=mel.float()[None],
                    emo_mask=ones(mel.shape[0]),
                )
            )
        return int(out["mel_correct"]), int(out["mel_count"])

    assert top1(codes) == (5 * cfg.n_codebooks, 5 * cfg.n_codebooks)
    flipped = codes.clone()
    flipped[0, 2] = (flipped[0, 2] + 1) % cfg.codebook_size  # a code that is not the argmax
    correct, count = top1(flipped)
    assert count == 5 * cfg.n_codebooks and correct < count
    g = torch.Generator().manual_seed(0)
    sampled = model.generate(
        "hello", [1, 2, 3], mel.float(), n_frames=4, temperature=1.0, top_k=5, generator=g
    )
    assert sampled.shape == (cfg.n_codebooks, 4)


def test_emotion_vector_batch(tiny):
    model, cfg, _ = tiny
    v = model.emotion_vector(torch.randn(3, 20, cfg.n_mels))
    assert v.shape == (3, cfg.d_model)


def test_presets_resolve():
    assert ModelParams().resolved() == PRESETS["tiny"]
    p = ModelParams(preset="seed", n_layer=2).resolved()
    assert p["d_model"] == 1024 and p["n_layer"] == 2


def _diagonal(att_shape, prefix_len, text_mask, audio_mask):
    """Attention (B, 1, S, L) with each audio query on the text token at its own fraction of the utterance."""
    att = torch.zeros(att_shape)
    for b in range(att_shape[0]):
        T, N = int(text_mask[b].sum()), int(audio_mask[b].sum())
        for s in range(att_shape[2]):
            att[b, 0, s, prefix_len + min(int((s + 0.5) / N * T), T - 1)] = 1.0
    return att


def test_guided_attention_loss_is_low_on_the_diagonal_and_one_off_the_text():
    from tristage.model.decoder import guided_attention_loss

    P, Lt, S = 3, 6, 12
    text_mask = torch.ones(2, Lt, dtype=torch.bool)
    text_mask[1, 4:] = False
    audio_mask = torch.ones(2, S, dtype=torch.bool)
    audio_mask[1, 9:] = False
    shape = (2, 1, S, P + Lt + S)
    diagonal = guided_attention_loss(_diagonal(shape, P, text_mask, audio_mask), P, text_mask, audio_mask,
                                     0.2)
    on_prefix = torch.zeros(shape)
    on_prefix[..., 0] = 1.0
    reversed_ = torch.zeros(shape)  # reads the text backwards: the end first
    for b in range(2):
        T = int(text_mask[b].sum())
        reversed_[b, 0, :, P + T - 1] = 1.0
        reversed_[b, 0, S // 2:, P] = 1.0
        reversed_[b, 0, S // 2:, P + T - 1] = 0.0
    assert diagonal < 0.1
    assert guided_attention_loss(on_prefix, P, text_mask, audio_mask, 0.2) == pytest.approx(1.0)
    assert guided_attention_loss(reversed_, P, text_mask, audio_mask, 0.2) > 0.5
    # padded queries do not count: garbage there changes nothing
    noisy = _diagonal(shape, P, text_mask, audio_mask)
    noisy[1, 0, 9:] = 0.0
    noisy[1, 0, 9:, 0] = 1.0
    assert guided_attention_loss(noisy, P, text_mask, audio_mask, 0.2) == pytest.approx(float(diagonal))


def test_decoder_returns_attention_without_changing_its_outputs(tiny):
    model, cfg, data = tiny
    model.eval()
    batch = data.collate(data.train_idx[:3], [0])
    torch.manual_seed(1)
    plain = model(batch)
    torch.manual_seed(1)
    guided = model(batch, align=(2, 0.2))
    assert torch.equal(plain["mel_loss"], guided["mel_loss"]) and "align_loss" not in plain
    assert 0 < guided["align_loss"].item() < 1
    # the probabilities the loss reads: (B, n_layer * heads, S, L), one distribution per query
    spk = model.speaker_prefix(batch["spk_mel"], batch["spk_mask"])
    prefix = torch.cat([spk, model.emotion_vector(batch["emo_mel"], batch["emo_mask"])[:, None]], dim=1)
    S = 5
    audio_in = torch.zeros(3, cfg.n_codebooks, S, dtype=torch.long)
    audio_mask = torch.ones(3, S, dtype=torch.bool)
    out = model.decoder(prefix, batch["text"], batch["text_mask"], audio_in, audio_mask,
                        torch.zeros(3, 4, cfg.caption_dim), torch.ones(3, 4, dtype=torch.bool), align_heads=2)
    att = out[2]
    L = prefix.shape[1] + batch["text"].shape[1] + S
    assert att.shape == (3, cfg.n_layer * 2, S, L)
    assert torch.allclose(att.sum(-1), torch.ones(3, cfg.n_layer * 2, S), atol=1e-5)
    causal_future = torch.ones(S, S, dtype=torch.bool).triu(1)  # audio keys after the query: never attended
    assert (att[..., -S:][..., causal_future] == 0).all()
    pad = ~batch["text_mask"]  # padded text keys: never attended
    P = prefix.shape[1]
    assert (att[..., P:P + pad.shape[1]].permute(0, 2, 3, 1)[pad[:, None, :].expand(3, S, -1)] == 0).all()
    model.train()


def test_guided_attention_training_pulls_attention_onto_the_diagonal(tiny):
    import copy

    model, cfg, data = tiny
    model = copy.deepcopy(model)
    batch = data.collate(data.train_idx[:4], [0])
    opt = torch.optim.Adam(model.decoder.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = model(batch, align=(1, 0.2))["align_loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first


def test_corrupt_codes_replaces_the_asked_fraction_and_never_bos_or_pad():
    from tristage.model.decoder import corrupt_codes

    V, K, S = 64, 4, 4000
    codes = torch.randint(0, V, (2, K, S))
    codes[:, :, 0] = V + 1  # BOS
    codes[:, 1:, 1:K] = V  # the delay pattern's PAD
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(corrupt_codes(codes, (0.0, 0.0), V, gen), codes)
    out = corrupt_codes(codes, (0.05, 0.3), V, gen)
    real = codes < V
    changed = (out != codes) & real
    # a random replacement equals the original 1 time in V: the changed rate is fraction * (1 - 1/V)
    rate0 = changed[:, 0].sum() / real[:, 0].sum()
    rate_fine = changed[:, 1:].sum() / real[:, 1:].sum()
    assert abs(float(rate0) - 0.05 * (1 - 1 / V)) < 0.01
    assert abs(float(rate_fine) - 0.3 * (1 - 1 / V)) < 0.01
    assert torch.equal(out[~real], codes[~real])  # BOS and PAD stay
    assert int(out[real].min()) >= 0 and int(out[real].max()) < V
    every = corrupt_codes(codes, (0.0, 1.0), V, gen)
    assert torch.equal(every[:, 0], codes[:, 0])
    assert float(((every != codes) & real)[:, 1:].sum()) > 0.9 * float(real[:, 1:].sum())


def test_input_noise_changes_the_inputs_and_never_the_targets(tiny):
    model, cfg, data = tiny
    model.eval()
    batch = data.collate(data.train_idx[:3], [0])
    clean = model(batch)
    torch.manual_seed(3)
    zero = model(batch, input_noise=(0.0, 0.0))
    noisy = model(batch, input_noise=(0.5, 0.5))
    assert torch.equal(clean["mel_loss"], zero["mel_loss"])
    assert torch.equal(clean["target"], noisy["target"]) and clean["mel_count"] == noisy["mel_count"]
    assert not torch.equal(clean["logits"], noisy["logits"])
    model.train()


def _cb0_loss(model, batch, input_noise):
    from tristage.model.decoder import code_loss

    torch.manual_seed(7)
    out = model(batch, input_noise=input_noise)
    return float(code_loss(out["logits"][:, :1], out["target"][:, :1], model.cfg.pad_id)[0])


def test_training_with_fine_input_noise_keeps_codebook_0_when_the_fine_inputs_are_wrong(tiny):
    """The exposure bias input_noise is for: a decoder trained on the recording's fine codes leans on
    them to predict codebook 0, and fails when generation feeds it wrong ones; trained with random fine
    inputs, it holds codebook 0 without them."""
    import copy

    model, cfg, data = tiny
    batch = data.collate(data.train_idx[:4], [0])
    damaged = {}
    for name, noise in (("clean", None), ("noisy", (0.0, 0.5))):
        m = copy.deepcopy(model)
        m.eval()  # no dropout: the two runs differ only in their inputs
        opt = torch.optim.Adam(m.decoder.parameters(), lr=3e-3)
        torch.manual_seed(0)
        for _ in range(80):
            loss = m(batch, input_noise=noise)["mel_loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            damaged[name] = _cb0_loss(m, batch, (0.0, 1.0)) - _cb0_loss(m, batch, None)
    assert damaged["noisy"] < 0.5 * damaged["clean"], damaged


def test_sinusoid_positions_match_best_where_the_positions_are_equal():
    pos = torch.arange(0, 300, dtype=torch.float32)
    table = sinusoids(pos, 64)  # (300, 64)
    assert table.shape == (300, 64) and table.abs().max() <= 1.0
    sim = table @ table.T  # sum of cos(w (p - q)): largest on the diagonal
    assert torch.equal(sim.argmax(dim=1), torch.arange(300))


def test_aligned_positions_put_text_token_t_at_audio_frame_t_times_the_rate():
    torch.manual_seed(0)
    dec = Decoder(DecoderConfig(n_codebooks=2, codebook_size=8, d_model=32, n_layer=1, n_head=2,
                                caption_dim=4, max_text_len=16, max_frames=32, positions="aligned",
                                text_rate=2.0))
    names = {n for n, _ in dec.named_parameters()}
    assert {"text_pos_scale", "audio_pos_scale"} <= names and not any("_pos.weight" in n for n in names)
    text = torch.zeros(1, 6, dtype=torch.long)
    codes = torch.zeros(1, 2, 12, dtype=torch.long)
    with torch.no_grad():
        text_pos = dec._text(text) - dec.text_emb(text)  # (1, 6, C): the position part alone
        audio_pos = dec._audio(codes, 0) - sum(emb(codes[:, k]) for k, emb in enumerate(dec.code_emb))
    for t in range(6):  # token t sits where frame 2t does
        torch.testing.assert_close(text_pos[0, t], audio_pos[0, 2 * t])
    assert not torch.allclose(text_pos[0, 1], audio_pos[0, 1])
