"""The `caption_vectors` stage: encode the training captions once, build the vector table, score it.

    run_caption_vectors(params.caption_vectors, tracker) -> metrics

1. captions of the prepared manifest (a row without one gets one rebuilt from its attribute
   columns, like the seed's "female American quickly ..."), unique, split by caption into
   build / held-out (`heldout_fraction`, `seed`);
2. the encoder (`encoder` dir, or a seeded tiny T5 + a tokenizer trained on the build captions,
   saved in `out_dir/encoder/`) runs over the build captions, batched;
3. the table: per token the mean state over its contexts, per attribute value the mean over its
   tokens and contexts, per (prev, token, next) context seen `context_min_count` times its mean;
4. fidelity on the held-out captions and on free-form paraphrases: the table's vectors, spread
   over the tokens they stand for, against the encoder's states of the same tokens; overall, per
   attribute, for unseen tokens. The held-out captions and their states are saved with the table
   (`load_heldout`), so a trained caption module can be scored later without the encoder;
5. `mode: cache`: the table plus the exact encoder states of every manifest caption (`add_cache`).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from tristage.captions.tokenize import CAPTION_ATTRIBUTES, CaptionParser, Unit, clean_caption, row_captions
from tristage.captions.vectors import ATTRIBUTE_KINDS, CACHE, UNK, VOCAB, CaptionVectorTable, context_keys
from tristage.environment import deterministic_torch
from tristage.errors import UserError

log = logging.getLogger(__name__)

ATTRS = CAPTION_ATTRIBUTES


def manifest_captions(df) -> list[str]:
    """Unique captions in first-seen order; rows without a caption are rebuilt from attribute columns."""
    return [c for c in dict.fromkeys(row_captions(df)) if c]


def attribute_agreement(df, lexicon: dict) -> tuple[float | None, int]:
    """How often the value a caption states (per the lexicon) equals the row's attribute column, over
    the cells where both exist and the column's value is a lexicon value: (fraction, cells)."""
    from tristage.captions.lexicon import Matcher

    cols = [c for c in ATTRS if c in df.columns and c in lexicon]
    if "caption" not in df.columns or not cols:
        return None, 0
    m = Matcher(lexicon)
    values = {a: {v.lower() for v in lexicon[a]} for a in cols}
    sub = df[["caption", *cols]].drop_duplicates()
    agree = total = 0
    for row in sub.itertuples(index=False):
        stated = m.attributes(clean_caption(row[0]))
        for a, v in zip(cols, row[1:]):
            v = clean_caption(v).lower()
            if v in values[a]:
                total += 1
                agree += stated.get(a, "").lower() == v
    return (round(agree / total, 4) if total else None), total


def split_captions(captions: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(build, heldout), both sorted; at least one build caption."""
    caps = sorted(set(captions))
    perm = np.random.default_rng(seed).permutation(len(caps))
    n_held = min(int(round(fraction * len(caps))), max(len(caps) - 1, 0))
    held = sorted(caps[i] for i in perm[:n_held])
    build = sorted(caps[i] for i in perm[n_held:])
    return build, held


def tokenized_units(parser: CaptionParser, captions: list[str]) -> list[list[Unit]]:
    enc = parser.tokenize(captions)
    return [parser.units(c, enc["input_ids"][i], enc["offset_mapping"][i], enc["special_tokens_mask"][i])
            for i, c in enumerate(captions)]


class TableBuilder:
    """Running sums of encoder states per row key, fed batch by batch (memory: one row per key)."""

    def __init__(self, context: bool = True, attribute_pieces: bool = True):
        self.context, self.pieces = context, attribute_pieces
        self.index: dict[str, int] = {}
        self.kinds: list[str] = []
        self.bases: list[str] = []
        self.sums = np.zeros((0, 0))
        self.weights = np.zeros(0)
        self.occurrences = np.zeros(0, dtype=np.int64)

    def _row(self, key: str, kind: str, base: str) -> int:
        j = self.index.get(key)
        if j is None:
            j = self.index[key] = len(self.kinds)
            self.kinds.append(kind), self.bases.append(base)
        return j

    def add(self, units_list: list[list[Unit]], states: list[np.ndarray]) -> None:
        rows, weights, vecs = [], [], []  # one entry per (key, occurrence)
        for units, H in zip(units_list, states):
            assert sum(len(u.positions) for u in units) == len(H), "units and encoder states out of line"
            for i, u in enumerate(units):
                if u.attribute is not None:  # token-weighted: the mean over all its tokens in all contexts
                    rows.append(self._row(u.key, "attribute", u.key))
                    weights.append(len(u.positions)), vecs.append(H[u.positions].sum(0))
                    for p, piece in zip(u.positions, u.pieces) if self.pieces else ():
                        rows.append(self._row(f"{u.key}\t{piece}", "attribute", u.key))
                        weights.append(1), vecs.append(H[p])
                    continue
                v = H[u.positions[0]]
                rows.append(self._row(u.key, "token", u.key))
                weights.append(1), vecs.append(v)
                for k in context_keys(units, i) if self.context else ():
                    rows.append(self._row(k, "context", u.key))
                    weights.append(1), vecs.append(v)
        if not rows:
            return
        n, d = len(self.kinds), vecs[0].shape[0]
        if self.sums.shape[0] < n:  # grow (doubling) to hold the new keys
            cap = max(n, 2 * self.sums.shape[0])
            grow = lambda a: np.concatenate([a, np.zeros((cap - len(a), *a.shape[1:]), a.dtype)])
            self.sums = grow(self.sums if self.sums.size else np.zeros((0, d)))
            self.weights = grow(self.weights)
            self.occurrences = grow(self.occurrences)
        idx = np.asarray(rows, dtype=np.int64)
        np.add.at(self.sums, idx, np.stack(vecs).astype(np.float64))
        np.add.at(self.weights, idx, np.asarray(weights, dtype=np.float64))
        np.add.at(self.occurrences, idx, 1)

    def finish(self, meta: dict, tokenizer=None, min_count: int = 2,
               vocab: tuple[list[str], np.ndarray] | None = None) -> CaptionVectorTable:
        """Rows: <unk>, tokens, attribute values (+ pieces), contexts seen min_count times, vocabulary
        fallbacks (each group sorted by name)."""
        if not self.kinds:
            raise UserError("caption_vectors: no caption tokens to build the table from")
        n = len(self.kinds)
        sums, weights, occ = self.sums[:n], self.weights[:n], self.occurrences[:n]
        means = sums / weights[:, None]
        kinds = dict(zip(self.index, self.kinds))
        token_rows = [j for j, k in enumerate(self.kinds) if k == "token"]
        unk = (sums[token_rows].sum(0) / weights[token_rows].sum())[None]  # mean of all token occurrences
        pick = lambda kind, ok=lambda j: True: sorted(k for k, j in self.index.items()
                                                      if self.kinds[j] == kind and ok(j))
        order = pick("token") + pick("attribute") + pick("context", lambda j: occ[j] >= max(min_count, 1))
        rows = [self.index[k] for k in order]
        parts = [unk, means[rows]]
        names, row_kinds, row_bases = [UNK] + order, ["unk"] + [self.kinds[j] for j in rows], \
            [UNK] + [self.bases[j] for j in rows]
        if vocab is not None and len(vocab[0]):
            keep = [j for j, t in enumerate(vocab[0]) if t not in kinds]
            parts.append(vocab[1][keep].astype(np.float64))
            names += [VOCAB + vocab[0][j] for j in keep]
            row_kinds += ["vocab"] * len(keep)
            row_bases += [vocab[0][j] for j in keep]
        vectors = np.concatenate(parts).astype(np.float32)
        meta = dict(meta, context_keys=bool(self.context), context_min_count=int(min_count),
                    attribute_pieces=bool(self.pieces))
        return CaptionVectorTable(names, row_kinds, row_bases, vectors, meta, tokenizer=tokenizer)


def build_table(units_list: list[list[Unit]], states: list[np.ndarray], meta: dict, tokenizer=None,
                context: bool = True, min_count: int = 2, attribute_pieces: bool = True,
                vocab: tuple[list[str], np.ndarray] | None = None) -> CaptionVectorTable:
    """The table from parsed captions and their encoder states, in one go (see TableBuilder)."""
    b = TableBuilder(context, attribute_pieces)
    b.add(units_list, states)
    return b.finish(meta, tokenizer, min_count, vocab)


def position_group(table: CaptionVectorTable, row: int) -> str:
    """What a looked-up row stands for: an attribute ("pitch"), "unseen" (vocabulary fallback or
    <unk>) or "other" (ordinary tokens, the end token)."""
    kind = table.kinds[row]
    if kind in ("vocab", "unk"):
        return "unseen"
    if kind in ATTRIBUTE_KINDS:
        return table.bases[row][1:].split(":", 1)[0]
    return "other"


class Fidelity:
    """Token cosines (the table vector standing for each token vs its encoder state), caption cosines
    (mean-pooled), unseen tokens, cosines per group (attribute / "unseen" / "other"); fed batch by batch.
    `context` / `pieces` / `cache`: lookup variants (None: the table's). `vectors` (N, dim): other
    vectors for the same rows, e.g. a trained caption module's rows (captions.peft.enhanced_table).
    `contextual`: add the table's contextualiser's correction (if it has one), as the caption modules do."""

    def __init__(self, table: CaptionVectorTable, context: bool | None = None, pieces: bool | None = None,
                 cache: bool = True, vectors=None, contextual: bool = True):
        self.table, self.context, self.pieces, self.cache = table, context, pieces, cache
        self.contextual = contextual and table.contextualiser is not None
        self.V = np.asarray(table.vectors if vectors is None else vectors, dtype=np.float32)
        self.tok_cos: list[np.ndarray] = []
        self.cap_cos: list[float] = []
        self.groups: dict[str, list[np.ndarray]] = {}
        self.unseen = self.unk = 0

    def add(self, captions: list[str], states: list[np.ndarray]) -> None:
        looked = [self.table.lookup(c, self.context, self.pieces, cache=self.cache) for c in captions]
        deltas = self.table.context_delta([ids for ids, _, _ in looked]) if self.contextual else None
        for k, ((ids, where, n), H) in enumerate(zip(looked, states)):
            self.unseen += n
            self.unk += sum(len(p) for i, p in zip(ids, where) if i == 0)
            if not where:
                continue
            R = np.zeros_like(H)
            group = np.full(len(H), "other", dtype=object)
            for j, (row, pos) in enumerate(zip(ids, where)):
                R[pos] = self.V[row] + (deltas[k][j] if deltas is not None else 0.0)
                group[pos] = position_group(self.table, row)
            cos = (R * H).sum(1) / (np.linalg.norm(R, axis=1) * np.linalg.norm(H, axis=1) + 1e-8)
            self.tok_cos.append(cos)
            for g in set(group):
                self.groups.setdefault(g, []).append(cos[group == g])
            r, h = R.mean(0), H.mean(0)
            self.cap_cos.append(float(r @ h / (np.linalg.norm(r) * np.linalg.norm(h) + 1e-8)))

    def result(self) -> dict:
        t = np.concatenate(self.tok_cos) if self.tok_cos else np.zeros(0)
        f = lambda x: round(float(x()), 5) if len(t) else None
        by_group = {g: round(float(np.concatenate(v).mean()), 5) for g, v in sorted(self.groups.items())}
        return dict(cosine_mean=f(t.mean), cosine_p05=f(lambda: np.percentile(t, 5)), cosine_min=f(t.min),
                    caption_cosine_mean=f(lambda: np.mean(self.cap_cos)), n_tokens=int(len(t)),
                    n_unseen_tokens=int(self.unseen), n_unk=int(self.unk), by_group=by_group,
                    _cosines=t)


def fidelity(table: CaptionVectorTable, captions: list[str], states: list[np.ndarray],
             context: bool | None = None, pieces: bool | None = None) -> dict:
    f = Fidelity(table, context, pieces)
    f.add(captions, states)
    return f.result()


def add_cache(table: CaptionVectorTable, captions: list[str], units_list: list[list[Unit]],
              states: list[np.ndarray]) -> CaptionVectorTable:
    """`table` plus cache rows: each caption's exact encoder states, one row per token position, its rows
    contiguous. A position inside an attribute phrase shares that value's VAE, any other its token's LoRA."""
    names, kinds, bases, cache, n = list(table.tokens), list(table.kinds), list(table.bases), {}, len(table)
    for caption, units, H in zip(captions, units_list, states):
        cache[caption] = (n, len(H))
        for u in sorted(units, key=lambda u: u.positions[0]):
            for _ in u.positions:
                names.append(f"{CACHE}{n}")
                kinds.append("cache_attribute" if u.attribute is not None else "cache")
                bases.append(u.key)
                n += 1
    vectors = np.concatenate([table.vectors.numpy()] + [np.asarray(H, dtype=np.float32) for H in states])
    assert len(vectors) == n == len(names), "cache rows and encoder states out of line"
    return CaptionVectorTable(names, kinds, bases, vectors, dict(table.meta, mode="cache"),
                              tokenizer=table._tokenizer, cache=cache)


def save_heldout(folder: Path, captions: list[str], states: list[np.ndarray]) -> None:
    """The held-out captions and their encoder states (`heldout.json`, `heldout.safetensors`)."""
    from safetensors.numpy import save_file

    from tristage.fsio import write_json

    offsets = np.cumsum([0] + [len(h) for h in states]).astype(np.int64)
    dim = states[0].shape[1] if states else 0
    flat = np.concatenate(states).astype(np.float32) if states else np.zeros((0, dim), np.float32)
    save_file({"states": np.ascontiguousarray(flat), "offsets": offsets}, str(folder / "heldout.safetensors"))
    write_json(folder / "heldout.json", captions, indent=None)


def load_heldout(folder: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Public: the captions held out of a table build and the encoder's states for them, (T_i, dim) each,
    token positions as the table's lookup gives them. Score any vectors for the table's rows with
    `Fidelity(table, vectors=...)`, e.g. a trained caption module's: no encoder needed."""
    from safetensors.numpy import load_file

    from tristage.fsio import read_json

    folder = Path(folder)
    try:
        captions = read_json(folder / "heldout.json")
        data = load_file(str(folder / "heldout.safetensors"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{folder}: no held-out captions ({exc}); run the `caption_vectors` stage again"
        ) from exc
    off = data["offsets"]
    return captions, [data["states"][a:b] for a, b in zip(off[:-1], off[1:])]


def write_plot(
    path: Path, series: dict[str, np.ndarray], groups: dict[str, dict[str, float]], title: str
) -> None:
    """Token cosine histograms (left) and the mean cosine per attribute / unseen / other tokens (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tristage.fsio import save_figure

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw=dict(width_ratios=[1.1, 1]))
    lo = min([float(v.min()) for v in series.values() if len(v)] + [0.0])
    bins = np.linspace(min(lo, 0.0), 1.0, 41)
    for name, v in series.items():
        if len(v):
            ax.hist(v, bins=bins, alpha=0.55, label=f"{name} (n={len(v)}, mean {v.mean():.3f})")
    ax.set_xlabel("cosine(table vector, encoder state) per token")
    ax.set_ylabel("tokens")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    names = sorted({g for d in groups.values() for g in d}, key=lambda g: (g in ("other", "unseen"), g))
    width = 0.8 / max(len(groups), 1)
    for k, (label, d) in enumerate(groups.items()):
        bx.bar(np.arange(len(names)) + k * width, [d.get(g, np.nan) for g in names], width, label=label)
    bx.set_xticks(np.arange(len(names)) + width * (len(groups) - 1) / 2, names, rotation=30, fontsize=8)
    bx.set_ylim(min([0.5] + [v for d in groups.values() for v in d.values()]) - 0.05, 1.0)
    bx.set_ylabel("mean token cosine")
    bx.set_title("per attribute, unseen and other tokens", fontsize=9)
    bx.legend(fontsize=8)
    save_figure(fig, path, dpi=100, bbox_inches="tight")


def load_inputs(cp) -> tuple[list[str], list[str], list[str], tuple]:
    """(build captions, held-out captions, paraphrases, (attribute agreement, cells)) of the manifest."""
    from tristage.data.manifest import read_prepared

    df = read_prepared(cp.manifest)
    captions = manifest_captions(df)
    if not captions:
        raise UserError(f"{cp.manifest}: no captions (column `caption` empty and no attribute columns)")
    build, held = split_captions(captions, cp.heldout_fraction, cp.seed)
    paraphrases = [
        c for c in dict.fromkeys(clean_caption(p) for p in cp.paraphrases) if c and c not in set(build)
    ]
    log.info("%d unique captions: %d to build the table, %d held out, %d paraphrases",
             len(captions), len(build), len(held), len(paraphrases))
    return build, held, paraphrases, attribute_agreement(df, cp.lexicon)


def open_encoder(cp, build: list[str], folder: Path):
    """(model, tokenizer, info): the local encoder, or the seeded tiny T5 saved in `folder`/encoder."""
    from tristage.captions.encoder import load_encoder, make_tiny_encoder

    if cp.encoder is not None:
        return load_encoder(cp.encoder)
    model, tok, info = make_tiny_encoder(build, folder / "encoder", cp.tiny, cp.seed)
    info["path"] = "encoder"  # relative to the table folder
    return model, tok, info


def encode_table(cp, model, parser: CaptionParser, info: dict, build: list[str], progress: bool,
                 keep_states: bool = False) -> tuple[CaptionVectorTable, list[np.ndarray] | None]:
    """Encode the build captions batch by batch into the table (and keep their states, for the cache)."""
    from tristage.captions.encoder import encode_batches, encode_vocabulary

    builder, kept, dim = TableBuilder(cp.context_keys, cp.attribute_pieces), [None] * len(build), 0
    for idx, states in encode_batches(
        model, parser, build, cp.batch_size, progress, "encoding build captions"
    ):
        builder.add(tokenized_units(parser, [build[i] for i in idx]), states)
        dim = states[0].shape[1]
        for i, h in zip(idx, states) if keep_states else ():
            kept[i] = h
    meta = dict(name=info["name"], encoder=info, pretrained=bool(info["pretrained"]), dim=int(dim),
                end_token=parser.end_token, max_length=cp.max_length, lexicon=cp.lexicon,
                n_build_captions=len(build), seed=cp.seed, mode="table")
    vocab = encode_vocabulary(model, parser.tok, cp.vocab_fallback_max) if cp.vocab_fallback_max else None
    table = builder.finish(meta, tokenizer=parser.tok, min_count=cp.context_min_count, vocab=vocab)
    return table, (kept if keep_states else None)


def add_contextualiser(cp, model, parser, table, build: list[str], build_states: list[np.ndarray],
                       exclude: set[str], progress: bool) -> dict:
    """Distil the contextualiser (captions.contextual) on the build captions and recombined ones (encoded
    here), never on `exclude`; attach it to `table`. Returns its log for the metrics."""
    from tristage.captions.contextual import distil, recombined_captions
    from tristage.captions.encoder import encode

    p = cp.contextualiser
    extra = recombined_captions(build, cp.lexicon, p.recombined, cp.seed, exclude=exclude | set(build))
    t0 = time.perf_counter()
    extra_states = encode(model, parser, extra, cp.batch_size, progress) if extra else []
    t_encode = round(time.perf_counter() - t0, 2)
    table.contextualiser, info = distil(table, build + extra, build_states + extra_states, cp, progress)
    return dict(info, recombined_captions=len(extra), encode_recombined_seconds=t_encode)


def score_table(cp, model, parser, table, held: list[str], paraphrases: list[str], progress: bool):
    """Fidelity of the table (its lookup + contextualiser; without the contextualiser; and the seed's
    one-row-per-token way as a baseline) on the held-out captions and the paraphrases: ({name: result},
    held-out states)."""
    from tristage.captions.encoder import encode_batches

    base = dict(context=False, pieces=False, contextual=False)
    acc = {"held": Fidelity(table), "base": Fidelity(table, **base), "para": Fidelity(table),
           "base_para": Fidelity(table, **base), "table": Fidelity(table, contextual=False),
           "table_para": Fidelity(table, contextual=False)}
    held_states: list = [None] * len(held)
    sets = ((held, ("held", "base", "table")), (paraphrases, ("para", "base_para", "table_para")))
    for caps, names in sets:
        for idx, states in encode_batches(
            model, parser, caps, cp.batch_size, progress, f"encoding {names[0]}"
        ):
            for name in names:
                acc[name].add([caps[i] for i in idx], states)
            for i, h in zip(idx, states) if caps is held else ():
                held_states[i] = h
    return {k: f.result() for k, f in acc.items()}, held_states


def caption_metrics(r: dict, table, info: dict, n: dict, extra: dict) -> dict:
    """metrics/caption_vectors.json from the fidelity results `r` (see score_table)."""
    fid, base, para, base_para = r["held"], r["base"], r["para"], r["base_para"]
    kinds = table.kinds
    return dict(
        cosine_mean=fid["cosine_mean"],
        cosine_p05=fid["cosine_p05"],
        cosine_min=fid["cosine_min"],
        caption_cosine_mean=fid["caption_cosine_mean"],
        n_heldout_captions=n["held"],
        encoder=f"{info['name']} ({'pretrained' if info['pretrained'] else 'random-init'}, "
        f"{info['model_type']}, "
        f"d={table.dim})",
        pretrained=bool(info["pretrained"]),
        paraphrase_cosine_mean=para["cosine_mean"],
        paraphrase_cosine_p05=para["cosine_p05"],
        paraphrase_cosine_min=para["cosine_min"],
        paraphrase_caption_cosine_mean=para["caption_cosine_mean"],
        n_paraphrases=n["para"],
        n_unseen_tokens=fid["n_unseen_tokens"] + para["n_unseen_tokens"],
        heldout_unseen_tokens=fid["n_unseen_tokens"],
        paraphrase_unseen_tokens=para["n_unseen_tokens"],
        heldout_unseen_cosine_mean=fid["by_group"].get("unseen"),
        paraphrase_unseen_cosine_mean=para["by_group"].get("unseen"),
        heldout_cosine_by_attribute=fid["by_group"],
        paraphrase_cosine_by_attribute=para["by_group"],
        n_unk_fallback_tokens=fid["n_unk"] + para["n_unk"],  # unseen and not in the vocabulary rows
        heldout_tokens=fid["n_tokens"],
        paraphrase_tokens=para["n_tokens"],
        baseline_cosine_mean=base["cosine_mean"],
        baseline_caption_cosine_mean=base["caption_cosine_mean"],
        baseline_paraphrase_cosine_mean=base_para["cosine_mean"],
        table_only_cosine_mean=r["table"]["cosine_mean"],  # without the contextualiser
        table_only_cosine_p05=r["table"]["cosine_p05"],
        table_only_caption_cosine_mean=r["table"]["caption_cosine_mean"],
        table_only_paraphrase_cosine_mean=r["table_para"]["cosine_mean"],
        n_build_captions=n["build"],
        n_rows=len(table),
        n_token_rows=kinds.count("token"),
        n_attribute_rows=kinds.count("attribute"),
        n_context_rows=kinds.count("context"),
        n_vocab_rows=kinds.count("vocab"),
        dim=table.dim,
        **extra,
    )


def run_caption_vectors(cp, tracker=None, progress: bool = True) -> dict:

    from tristage.fsio import atomic_dir, write_json

    t0 = time.perf_counter()
    deterministic_torch(cp.threads)
    build, held, paraphrases, (agreement, n_cells) = load_inputs(cp)
    cached = cp.mode == "cache"
    with atomic_dir(cp.out_dir) as tmp:
        model, tok, info = open_encoder(cp, build, tmp)
        parser = CaptionParser(tok, cp.lexicon, cp.max_length)
        t1 = time.perf_counter()
        contextual = cp.contextualiser.layers > 0 and not cached  # a cached caption's rows are exact
        table, build_states = encode_table(cp, model, parser, info, build, progress,
                                           keep_states=cached or contextual)
        t_encode = time.perf_counter() - t1
        ctx_info = (add_contextualiser(cp, model, parser, table, build, build_states,
                                       set(held) | set(paraphrases), progress) if contextual else None)
        results, held_states = score_table(cp, model, parser, table, held, paraphrases, progress)
        save_heldout(tmp, held, held_states)
        extra = dict(mode=cp.mode, table_bytes=int(table.vectors.numel() * 4), contextualiser=ctx_info)
        if cached:  # exact states of every manifest caption; the table rows stay as the back-off
            caps, states = build + held, build_states + held_states
            table = add_cache(table, caps, tokenized_units(parser, caps), states)
            exact = fidelity(table, held, held_states)
            n_rows = sum(len(h) for h in states)
            extra.update(cache_captions=len(caps), cache_rows=n_rows, cache_bytes=int(n_rows * table.dim * 4),
                         cache_heldout_cosine_mean=exact["cosine_mean"])
        table.save(tmp)
    extra.update(attribute_agreement=agreement, attribute_cells=n_cells, context_keys=bool(cp.context_keys),
                 attribute_pieces=bool(cp.attribute_pieces), encode_seconds=round(t_encode, 3),
                 seconds=round(time.perf_counter() - t0, 2))
    metrics = caption_metrics(
        results, table, info, dict(held=len(held), para=len(paraphrases), build=len(build)), extra
    )
    series = {"held-out": results["held"]["_cosines"], "paraphrases": results["para"]["_cosines"]}
    if ctx_info is not None:
        series["held-out, table alone (no contextualiser)"] = results["table"]["_cosines"]
    write_plot(Path(cp.plots_dir) / "cosine_hist.png", series,
               {"held-out": results["held"]["by_group"], "paraphrases": results["para"]["by_group"]},
               f"caption vector fidelity, {metrics['encoder']}")
    write_json(cp.metrics, metrics)
    if tracker is not None:
        tracker.set_tags({"caption_encoder": metrics["encoder"]})
        tracker.log_artifact(Path(cp.plots_dir) / "cosine_hist.png")
    log.info(
        "table %d rows, d=%d; held-out token cosine %.3f (baseline %.3f), caption %.3f; paraphrases %.3f, "
        "%d unseen tokens; %.1f s",
        len(table),
        table.dim,
        metrics["cosine_mean"] or 0,
        metrics["baseline_cosine_mean"] or 0,
        metrics["caption_cosine_mean"] or 0,
        metrics["paraphrase_cosine_mean"] or 0,
        metrics["n_unseen_tokens"],
        metrics["seconds"],
    )
    return {k: v for k, v in metrics.items() if not isinstance(v, str)}  # the tracker flattens the dicts
