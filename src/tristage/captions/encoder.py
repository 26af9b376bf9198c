"""The caption encoder whose outputs the vector table stands in for.

model, tok, info = load_encoder(path)                  # any local HF encoder dir
model, tok, info = make_tiny_encoder(captions, out, tiny, seed)   # seeded random-init T5 + trained tokenizer
states = encode(model, tok_call, captions, batch_size)  # list of (T_i, d) float32 arrays
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tristage.errors import UserError


def load_encoder(path: str | os.PathLike):
    """`T5EncoderModel` for T5 configs, else `AutoModel`; the tokenizer from the same folder."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(
            f"caption_vectors.encoder: {path} is not a local Hugging Face model folder (no config.json)"
        )
    cfg = AutoConfig.from_pretrained(path)
    cls = T5EncoderModel if cfg.model_type in ("t5", "mt5", "umt5") else AutoModel
    model = cls.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    if not getattr(tok, "is_fast", False):
        raise UserError(
            f"caption_vectors.encoder: {path} has no fast tokenizer (tokenizer.json); offsets are needed"
        )
    name = path.resolve().name
    if name in ("model", "models", "encoder", "."):
        name = f"{path.resolve().parent.name}/{path.name}"
    info = dict(
        name=name,
        path=str(path),
        model_type=cfg.model_type,
        pretrained=True,
        dim=int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model),
    )
    return model, tok, info


def train_tokenizer(captions: list[str], vocab_size: int):
    """A lowercase WordPiece tokenizer for `captions`, appending "</s>" like T5's.

    The vocabulary is built here, deterministically (the `tokenizers` WordPiece trainer is not:
    its ties depend on hash order): the special tokens, every character seen (word-initial and
    "##" continuation), then the most frequent words (ties by spelling) up to `vocab_size`.
    Unknown words fall back to pieces: a known prefix, then characters.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    norm = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for c in sorted(set(captions)):
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(c)))
    chars = sorted({ch for w in words for ch in w})
    vocab = ["<pad>", "</s>", "<unk>"] + chars + [f"##{ch}" for ch in chars]
    seen = set(vocab)
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    tk = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tk.normalizer = norm
    tk.pre_tokenizer = pre
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", 1)])
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def make_tiny_encoder(captions: list[str], out_dir: str | os.PathLike, tiny, seed: int):
    """Seeded random-init T5 encoder + tokenizer trained on the captions, saved in `out_dir`."""
    import torch
    from transformers import T5Config, T5EncoderModel

    tok = train_tokenizer(captions, tiny.vocab_size)
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=tiny.d_model,
        d_kv=tiny.d_model // tiny.num_heads,
        d_ff=tiny.d_ff,
        num_layers=tiny.num_layers,
        num_heads=tiny.num_heads,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(cfg).eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    info = dict(name="tiny-t5", path=str(out_dir), model_type="t5", pretrained=False, dim=tiny.d_model)
    return model, tok, info


def encode_batches(model, parser, captions: list[str], batch_size: int, progress: bool = True,
                   desc: str = "encoding captions"):
    """Yield (indices, states) per batch: states[j] (T, d) float32 for captions[indices[j]], rows in the
    order of `parser.tokenize` (the call the table's lookup uses too). Similar lengths per batch."""
    import torch
    from tqdm import tqdm

    order = sorted(range(len(captions)), key=lambda i: (len(captions[i]), i))
    pad_left = parser.tok.padding_side == "left"
    with (
        tqdm(
            total=len(captions),
            desc=desc,
            unit="cap",
            mininterval=1.0,
            disable=not progress or bool(os.environ.get("TRISTAGE_NO_PROGRESS")),
        ) as bar,
        torch.inference_mode(),
    ):
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = parser.tokenize([captions[i] for i in idx], padding=True, return_tensors="pt")
            h = model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            ).last_hidden_state  # (B, T, d)
            lens = enc["attention_mask"].sum(1).tolist()
            yield (
                idx,
                [(h[b, -n:] if pad_left else h[b, :n]).float().numpy().copy() for b, n in enumerate(lens)],
            )
            bar.update(len(idx))


def encode(model, parser, captions: list[str], batch_size: int, progress: bool = True) -> list[np.ndarray]:
    """Contextual states per caption, in the order of `captions`."""
    out: list = [None] * len(captions)
    for idx, states in encode_batches(model, parser, captions, batch_size, progress):
        for i, h in zip(idx, states):
            out[i] = h
    return out


def encode_vocabulary(model, tok, limit: int, batch_size: int = 512) -> tuple[list[str], np.ndarray]:
    """Each (non-special) vocabulary token encoded alone, with the tokenizer's special tokens around it:
    (tokens, (V, d) states at the token). The fallback for tokens no build caption contains."""
    import torch

    special = set(tok.all_special_ids)
    vocab = sorted((i, t) for t, i in tok.get_vocab().items() if i not in special)[:limit]
    if not vocab:
        return [], np.zeros((0, 0), dtype=np.float32)
    enc = tok("x", add_special_tokens=True, return_special_tokens_mask=True)
    body = [j for j, m in enumerate(enc["special_tokens_mask"]) if not m]
    ids0 = enc["input_ids"]
    before = ids0[:body[0]] if body else ids0[:0]
    after = ids0[body[-1] + 1:] if body else ids0
    where = len(before)  # position of the token among the special ones ([CLS] x [SEP], x </s>)
    template = torch.tensor(before + [0] + after)
    out = []
    with torch.inference_mode():
        for s in range(0, len(vocab), batch_size):
            ids = torch.tensor([i for i, _ in vocab[s:s + batch_size]])
            x = template.repeat(len(ids), 1)  # (b, T)
            x[:, where] = ids
            h = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state  # (b, T, d)
            out.append(h[:, where].float().numpy())
    return [t for _, t in vocab], np.concatenate(out)
