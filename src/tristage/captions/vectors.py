"""The caption vector table: precomputed encoder outputs, one row per token / context / attribute value.

    table = CaptionVectorTable.load("data/caption_vectors")
    ids = table.encode("A deep-voiced Scottish man speaks slowly.")   # list[int], never raises
    table.vectors[ids]                                                # (L, dim) float32

Rows (`table.tokens`, `table.kinds`):
- 0 "<unk>": the fallback for tokens never seen when the table was built (mean of all token vectors);
- "token": one per tokenizer token (its mean state over all contexts), the end token "</s>" included;
- "attribute": one per attribute value ("<pitch:low>"), the mean state over all its phrases' tokens,
  and (`attribute_pieces`) one per value and token piece ("<pitch:low>\t▁deep"), all of a value
  sharing its VAE (`adapter_ids`; `value_attribute` numbers each value's attribute);
- "context": a token in context, "prev\\ttoken\\tnext" (or one side empty: "prev\\ttoken\\t",
  "\\ttoken\\tnext"), used first when the caption has that context, else backing off to the token.
- "vocab": "<vocab>\ttoken", the tokenizer's tokens that no build caption has, each encoded alone
  (`vocab_fallback`): the fallback of an unseen token, before "<unk>"; they share the unseen LoRA.
- "cache" / "cache_attribute" (`caption_vectors.mode: cache`): the encoder's exact states of every
  manifest caption, one row per token ("<cache>\tj"), the caption's rows contiguous (`cache.json`:
  caption -> first row, row count). A cached caption looks up its own rows; any other backs off to
  the rows above. Cache rows share the adapters of their token (LoRA) or attribute value (VAE).
- `contextualiser` (captions.contextual): the small transformer distilled from the encoder that adds
  to a caption's rows what its states owe to the rest of the caption (`context_delta`); it reads
  `context_vectors`, the raw rows (the same tensor as `vectors` unless adapters were baked into them).
Folder: vectors.safetensors ("vectors" (N, dim), and "context_vectors" where they differ),
tokens.json (tokens, kinds, base), meta.json (meta["contextualiser"]: its config),
contextualiser.safetensors, tokenizer/ (the encoder's tokenizer, so lookups need no encoder).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from tristage.captions.tokenize import CaptionParser, Unit, clean_caption

UNK = "<unk>"
BOS, EOS = "<^>", "<$>"  # context placeholders before the first / after the last unit
VOCAB = "<vocab>\t"  # prefix of the rows of tokens encoded alone (fallback for unseen tokens)
CACHE = "<cache>\t"  # prefix of the cached rows (exact encoder states of one caption's tokens)
ATTRIBUTE_KINDS = ("attribute", "cache_attribute")  # rows refined by their attribute value's VAE


def context_keys(units: list[Unit], i: int) -> tuple[str, ...]:
    """Keys of unit i, most specific first: two units each side, one each side, left only, right only."""
    key = lambda j: units[j].key if 0 <= j < len(units) else (BOS if j < 0 else EOS)
    p2, prev, tok, nxt, n2 = (key(j) for j in range(i - 2, i + 3))
    return (f"{p2} {prev}\t{tok}\t{nxt} {n2}", f"{prev}\t{tok}\t{nxt}", f"{prev}\t{tok}\t", f"\t{tok}\t{nxt}")


class CaptionVectorTable:
    def __init__(
        self,
        tokens: list[str],
        kinds: list[str],
        bases: list[str],
        vectors: np.ndarray | torch.Tensor,
        meta: dict,
        tokenizer=None,
        cache: dict[str, tuple[int, int]] | None = None,
    ):
        assert tokens[0] == UNK and len(tokens) == len(kinds) == len(bases) == len(vectors)
        self.tokens, self.kinds, self.bases, self.meta = list(tokens), list(kinds), list(bases), dict(meta)
        self.vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32))  # (N, dim)
        self.contextualiser = None  # captions.contextual.Contextualiser (frozen) or None
        self.context_vectors = self.vectors  # (N, dim) what the contextualiser reads: the raw rows
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.is_attribute = torch.tensor([k in ATTRIBUTE_KINDS for k in kinds], dtype=torch.bool)  # (N,)
        self.cache = dict(cache or {})  # caption -> (first row, n rows): exact encoder states
        # adapter slot of each row: LoRA slot (by token content; 0 = the shared unseen adapter) for
        # token/context rows, VAE slot (by attribute value) for attribute rows
        lora = {UNK: 0}
        for t, k in zip(self.tokens, self.kinds):
            if k == "token":
                lora.setdefault(t, len(lora))
        vae: dict[str, int] = {}
        for b, k in zip(self.bases, self.kinds):
            if k in ATTRIBUTE_KINDS:
                vae.setdefault(b, len(vae))
        self.n_lora, self.n_vae = len(lora), len(vae)
        self.adapter_ids = torch.tensor([vae[b] if k in ATTRIBUTE_KINDS else lora.get(b, 0)
                                         for k, b in zip(self.kinds, self.bases)], dtype=torch.long)
        self.known_attributes = {b[1:-1] for b in vae}
        # (n_vae,) the attribute of each VAE slot ("<pitch:low>" -> pitch), numbered in order of appearance
        attrs: dict[str, int] = {}
        self.value_attribute = torch.tensor(
            [attrs.setdefault(b[1:-1].split(":")[0], len(attrs)) for b in vae], dtype=torch.long)
        self.attribute_pieces = bool(meta.get("attribute_pieces", False))
        self.use_context = bool(meta.get("context_keys", True))
        self.n_unseen = 0  # unseen tokens met by encode/lookup since load
        self._tokenizer = tokenizer
        self._parser: CaptionParser | None = None
        self.folder: Path | None = None

    @property
    def encoder_info(self) -> dict:
        """{"name", "pretrained"} of the encoder the table stands in for (what the trainer logs)."""
        enc = self.meta.get("encoder") if isinstance(self.meta.get("encoder"), dict) else {}
        return dict(
            name=enc.get("name", self.meta.get("name", "unknown")), pretrained=self.meta.get("pretrained")
        )

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def end_id(self) -> int:
        return self.index.get(self.meta.get("end_token", "</s>"), 0)

    @property
    def parser(self) -> CaptionParser:
        if self._parser is None:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.folder / "tokenizer")
            self._parser = CaptionParser(self._tokenizer, self.meta.get("lexicon", {}),
                                         self.meta.get("max_length", 128))
        return self._parser

    def ids_for(self, units: list[Unit], context: bool | None = None,
                pieces: bool | None = None) -> tuple[list[int], list[list[int]], int]:
        """Row ids for parsed units (with back-off), the token positions each id stands for, and the
        number of unseen tokens. An attribute unit gives one id per piece when the table has piece rows
        ("<pitch:low>\t▁deep"; back-off: the value's row), else one id for the whole phrase."""
        context = self.use_context if context is None else context
        pieces = self.attribute_pieces if pieces is None else pieces
        ids, where, unseen = [], [], 0
        for i, u in enumerate(units):
            if u.attribute is not None:
                value_row = self.index.get(u.key, 0)
                if pieces:
                    for p, piece in zip(u.positions, u.pieces):
                        ids.append(self.index.get(f"{u.key}\t{piece}", value_row))
                        where.append([p])
                else:
                    ids.append(value_row)
                    where.append(list(u.positions))
                continue
            row = None
            if context:
                for key in context_keys(units, i):
                    row = self.index.get(key)
                    if row is not None:
                        break
            if row is None:
                row = self.index.get(u.key)
            if row is None:
                row, unseen = self.index.get(VOCAB + u.key, 0), unseen + 1
            ids.append(row)
            where.append(list(u.positions))
        return ids, where, unseen

    def lookup(self, caption, context: bool | None = None, pieces: bool | None = None,
               cache: bool = True) -> tuple[list[int], list[list[int]], int]:
        """(ids, token positions per id, n_unseen) for one caption; an empty caption gives [end id].
        A cached caption (and `cache`) gives its own rows, one per token."""
        caption = clean_caption(caption)
        if cache and caption in self.cache:
            first, n = self.cache[caption]
            return list(range(first, first + n)), [[p] for p in range(n)], 0
        units = self.parser.parse(caption, self.known_attributes) if caption else []
        if not units:
            return [self.end_id], [], 0
        ids, where, unseen = self.ids_for(units, context, pieces)
        self.n_unseen += unseen
        return ids, where, unseen

    def encode(self, caption: str) -> list[int]:
        try:
            return self.lookup(caption)[0]
        except Exception:  # never raise inside a data loader: a caption that can't be parsed -> the end token
            return [self.end_id]

    @torch.no_grad()
    def context_delta(self, rows: list[list[int]], batch_size: int = 64) -> list[np.ndarray]:
        """Per caption (its rows, as `lookup` gives them) the contextualiser's correction, (L_i, dim);
        zeros without a contextualiser."""
        if self.contextualiser is None:
            return [np.zeros((len(r), self.dim), np.float32) for r in rows]
        from tristage.captions.contextual import pad_rows

        out = []
        for s in range(0, len(rows), batch_size):
            part = rows[s:s + batch_size]
            delta = self.contextualiser.correction(self.context_vectors, *pad_rows(part)).numpy()
            out += [delta[i, : len(r)] for i, r in enumerate(part)]
        return out

    # -- files ---------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> None:
        """Write into `folder` (the caller makes it atomic: the stage writes a temp folder and renames)."""
        from safetensors.numpy import save_file

        from tristage.fsio import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"vectors": np.ascontiguousarray(self.vectors.numpy())}
        meta = dict(self.meta)
        meta.pop("contextualiser", None)
        if self.contextualiser is not None:
            from safetensors.torch import save_file as save_torch

            state = {k: v.contiguous() for k, v in self.contextualiser.named_buffers()}
            save_torch(state, str(folder / "contextualiser.safetensors"))
            meta["contextualiser"] = self.contextualiser.config
            if self.context_vectors is not self.vectors:
                arrays["context_vectors"] = np.ascontiguousarray(self.context_vectors.numpy())
        save_file(arrays, str(folder / "vectors.safetensors"))
        write_json(
            folder / "tokens.json", dict(tokens=self.tokens, kinds=self.kinds, base=self.bases), indent=None
        )
        write_json(folder / "meta.json", meta)
        if self.cache:
            write_json(folder / "cache.json", self.cache, indent=None)
        if self._tokenizer is not None:
            self._tokenizer.save_pretrained(folder / "tokenizer")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "CaptionVectorTable":
        from safetensors.numpy import load_file

        from tristage.errors import UserError
        from tristage.fsio import read_json

        folder = Path(folder)
        try:
            arrays = load_file(str(folder / "vectors.safetensors"))
            vectors = arrays["vectors"]
            idx = read_json(folder / "tokens.json")
            meta = read_json(folder / "meta.json")
            cache = read_json(folder / "cache.json") if (folder / "cache.json").is_file() else None
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(
                f"{folder}: not a caption vector table ({exc}); run the `caption_vectors` stage"
            ) from exc
        table = cls(idx["tokens"], idx["kinds"], idx["base"], vectors, meta,
                    cache={c: (int(a), int(b)) for c, (a, b) in (cache or {}).items()})
        table.folder = folder
        if meta.get("contextualiser"):
            from safetensors.torch import load_file as load_torch

            from tristage.captions.contextual import Contextualiser, frozen

            ctx = Contextualiser(**meta["contextualiser"])
            try:
                ctx.load_state_dict(load_torch(str(folder / "contextualiser.safetensors")))
            except (OSError, RuntimeError, ValueError) as exc:
                raise UserError(f"{folder}: contextualiser.safetensors does not load ({exc}); "
                                "run the `caption_vectors` stage again") from exc
            table.contextualiser = frozen(ctx)
            if "context_vectors" in arrays:
                table.context_vectors = torch.as_tensor(arrays["context_vectors"])
        return table
