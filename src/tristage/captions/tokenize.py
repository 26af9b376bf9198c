"""Caption parsing with the encoder's own tokenizer: tokens, attribute spans, end token.

    parser = CaptionParser(tokenizer, lexicon)
    units = parser.parse("A deep-voiced Scottish man speaks slowly.")
    # [Unit("▁A", None, [0]), Unit("<pitch:low>", "pitch:low", [1, 2, 3]), Unit("<accent:Scottish>", ...),
    #  ..., Unit("</s>", None, [12])]

A unit is one row of the vector table: an ordinary token, or a whole attribute phrase (all the
subword pieces of "slightly high-pitched" become one unit). `positions` index the tokenizer's
output for the caption, so the encoder's states of the same call line up with the units.
"""
from __future__ import annotations

import dataclasses
import math

from tristage.captions.lexicon import Matcher


def attr_key(attr: str, value: str) -> str:
    return f"<{attr}:{value}>"


@dataclasses.dataclass
class Unit:
    key: str  # token string, or "<attr:value>"
    attribute: str | None  # "attr:value" for attribute units
    positions: list[int]  # token positions in the tokenizer's output
    pieces: list[str]  # the tokens at those positions


def clean_caption(caption) -> str:
    if caption is None or (isinstance(caption, float) and math.isnan(caption)):
        return ""
    return " ".join(str(caption).split())


# attribute columns a missing caption is rebuilt from, in this order ("female low-pitch quickly ...")
CAPTION_ATTRIBUTES = ("gender", "pitch", "speed", "accent", "modulation", "quality", "emotion")


def row_captions(df) -> list[str]:
    """The caption of each manifest row: its own, or where it has none, one rebuilt from its attribute
    columns. The caption_vectors table is built from these very texts, and training reads them."""
    cols = [c for c in CAPTION_ATTRIBUTES if c in df.columns]
    caps = df["caption"].tolist() if "caption" in df.columns else [None] * len(df)
    attrs = [df[k].tolist() for k in cols]
    out = []
    for i, c in enumerate(caps):
        c = clean_caption(c)
        if not c and cols:
            c = clean_caption(" ".join(clean_caption(a[i]) for a in attrs))
        out.append(c)
    return out


class CaptionParser:
    def __init__(self, tokenizer, lexicon: dict, max_length: int = 128):
        self.tok = tokenizer
        self.matcher = Matcher(lexicon)
        self.max_length = max_length
        empty = tokenizer("", add_special_tokens=True)["input_ids"]
        ids = empty or [tokenizer.eos_token_id or tokenizer.sep_token_id]
        self.end_token = tokenizer.convert_ids_to_tokens([ids[-1]])[0]

    def tokenize(self, captions: list[str], **kw):
        """The tokenizer call shared by the encoder run and the lookup (same truncation, offsets)."""
        return self.tok(captions, truncation=True, max_length=self.max_length, return_offsets_mapping=True,
                        return_special_tokens_mask=True, **kw)

    def units(self, caption: str, ids: list[int], offsets: list, special: list[int],
              known: set[str] | None = None) -> list[Unit]:
        """Group one tokenized caption into units. `known`: attribute keys ("attr:value") that may
        become attribute units (None: all); other phrases stay ordinary tokens."""
        spans = [s for s in self.matcher.spans(caption) if known is None or f"{s[2]}:{s[3]}" in known]
        tokens = self.tok.convert_ids_to_tokens(ids)
        out: list[Unit] = []
        j = 0  # spans and tokens are both in caption order
        last_span = -1
        for t, (tok, (a, b), sp) in enumerate(zip(tokens, offsets, special)):
            span = -1
            if not sp and b > a:
                while j < len(spans) and spans[j][1] <= a:
                    j += 1
                if j < len(spans) and spans[j][0] < b:
                    span = j
            if span >= 0 and span == last_span:
                out[-1].positions.append(t)
                out[-1].pieces.append(tok)
            elif span >= 0:
                _, _, attr, value = spans[span]
                out.append(Unit(attr_key(attr, value), f"{attr}:{value}", [t], [tok]))
            else:
                out.append(Unit(tok, None, [t], [tok]))
            last_span = span
        return out

    def parse(self, caption, known: set[str] | None = None) -> list[Unit]:
        caption = clean_caption(caption)
        enc = self.tokenize([caption])
        return self.units(
            caption, enc["input_ids"][0], enc["offset_mapping"][0], enc["special_tokens_mask"][0], known
        )
