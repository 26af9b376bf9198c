"""Attribute edits that keep a caption a well-formed sentence, with the lexicon's own phrases.

    edit_caption("A man with a low voice speaks quickly.", {"pitch": "very low", "speed": "moderate"}, lex)
        -> "A man with a very deep voice speaks at a moderate pace."
    edit_caption("A woman speaks.", {"speed": "slow"}, lex)   -> "A woman speaks slowly."
    edit_caption("A woman reads the news.", {"pitch": "high"}, lex)
        -> "A woman reads the news. The voice is high-pitched."

The same function serves the web page, `tristage synthesize --set` and `TTS.synthesize(attributes=...)`.

- Where the caption states the attribute (the `Matcher`'s spans), each phrase is replaced by one of the
  new value's phrases that fits the same grammatical slot: a noun phrase ("with a low voice") by a noun
  phrase, the same head noun first ("with a very deep voice"), else an adjective before that head ("with a
  medium-pitched voice"); an adjective before a noun ("a deep-voiced man") by an adjective; an adverb
  after a verb ("speaks quickly") by an adverb, else a prepositional phrase ("speaks at a moderate pace").
  A degree word before the old phrase ("quite deep") goes with it; the article before it is made to fit
  ("a" / "an" / none).
- Where it states none, the value goes after a speaking verb ("speaks slowly", "speaks with a low pitch
  and a British accent"), or, when no verb takes it, into a sentence of its own ("The voice is
  high-pitched.").
- Every candidate is read back with the `Matcher` (the caption parser the caption table is built with):
  it is kept only if it states the new value and leaves every other stated attribute as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tristage.captions.lexicon import ATTRIBUTE_NOUNS, PERSON_NOUNS, PREPOSITIONS, UNCOUNTABLE, Matcher
from tristage.errors import UserError

# last words that make a lexicon phrase a noun phrase
HEAD_NOUNS = ATTRIBUTE_NOUNS | PERSON_NOUNS
PLURALS = frozenset({"men", "women"})
OWN_DETERMINERS = frozenset({"a", "an", "some", "no", "much", "little"})
ADJECTIVES_IN_LY = frozenset({"lively", "leisurely", "elderly", "friendly", "lovely", "curly"})
FLAT_ADVERBS = frozenset({"fast", "slow", "leisurely"})  # adjectives that also say how one speaks
# head nouns an adjective phrase may be put before ("a medium-pitched voice", "a slightly fast pace")
GENERIC_HEADS = frozenset(
    {"voice", "tone", "pitch", "pace", "speed", "delivery", "intonation", "accent", "way"}
)
DEGREE = ("quite", "rather", "fairly", "very", "slightly", "somewhat", "pretty", "really", "extremely",
          "a bit", "a little", "a touch")
SPEAKING_VERBS = frozenset(
    {
        "speaks",
        "talks",
        "reads",
        "says",
        "narrates",
        "announces",
        "chats",
        "mumbles",
        "whispers",
        "recites",
        "tells",
        "speak",
        "talk",
        "read",
        "speaking",
        "talking",
        "reading",
        "narrating",
        "chatting",
        "announcing",
        "spoken",
        "delivered",
    }
)
LINKING_VERBS = frozenset({"is", "are", "was", "were", "be", "being", "sounds", "sound", "sounding", "seems"})
DETERMINERS = frozenset(
    {"the", "a", "an", "this", "that", "these", "those", "his", "her", "their", "its", "my", "your", "our",
     "some", "every", "each"}
)
CONJUNCTIONS = frozenset({"and", "or", "but", "nor", "while", "than", "so", "yet"})
# a word after an adjective that shows the adjective is not before its noun ("deep and calm", "slow in")
OTHER_PREPOSITIONS = frozenset({"to", "from", "of", "for", "over", "about", "into", "like"})
NOT_HEADS = PREPOSITIONS | OTHER_PREPOSITIONS | CONJUNCTIONS | SPEAKING_VERBS | LINKING_VERBS
# the preposition a noun phrase of an attribute takes after a verb ("talks at a brisk pace")
NOUN_PREPOSITION = {"speed": "at", "emotion": "in"}
# attributes said after a speaking verb when the caption states none (others get a sentence)
AFTER_VERB = frozenset({"pitch", "speed", "modulation", "emotion", "accent"})
# a sentence per attribute and phrase kind, for a caption that has no place for the value
FRAMES: dict[str, dict[str, str]] = {
    "gender": {"adjective": "The speaker is {}.", "noun": "The speaker is {}."},
    "pitch": {"adjective": "The voice is {}.", "noun": "The voice has {}."},
    "speed": {"adverb": "The speaker talks {}.", "noun": "The speaker talks at {}.",
              "adjective": "The pace is {}."},
    "accent": {"noun": "The speaker has {}.", "adjective": "The speaker sounds {}."},
    "modulation": {"adjective": "The delivery is {}.", "noun": "The delivery has {}.",
                   "adverb": "The speaker talks {}."},
    "emotion": {"adjective": "The speaker sounds {}.", "noun": "The speaker talks in {}.",
                "adverb": "The speaker talks {}."},
    "quality": {"adjective": "The recording is {}.", "noun": "The recording has {}."},
}
DEFAULT_FRAMES = {"adjective": "The speaker is {}.", "noun": "The speaker has {}.",
                  "adverb": "The speaker talks {}."}
PLACE_NOUNS = ("room", "studio")  # quality nouns said as "It was recorded in a quiet room."

_WORD = r"[A-Za-z][\w'-]*"


def kind(phrase: str) -> str:
    """"noun" (a deep voice, brisk pace, man), "adverb" (quickly, without much emotion) or "adjective"
    (low-pitched, fast, Scottish)."""
    words = phrase.lower().split()
    if words[0] in PREPOSITIONS:
        return "adverb"
    if words[-1] in HEAD_NOUNS:
        return "noun"
    if words[-1].endswith("ly") and words[-1] not in ADJECTIVES_IN_LY:
        return "adverb"
    return "adjective"


def determiner(noun: str) -> str:
    """The article a noun phrase takes: "a" (a deep voice), "an" (an even speed) or "" (natural intonation,
    some background noise); "lot of reverb" takes "a"."""
    words = noun.lower().split()
    if words[0] == "lot":
        return "a"
    if words[0] in OWN_DETERMINERS or words[-1] in UNCOUNTABLE:
        return ""
    return "an" if words[0][0] in "aeiou" else "a"


def with_article(noun: str) -> str:
    det = determiner(noun)
    return f"{det} {noun}" if det else noun


def _prev_word(text: str, pos: int) -> tuple[str, int] | None:
    """The word just before `pos` with only spaces between (none across punctuation), and its start."""
    m = re.search(rf"({_WORD}) +$", text[:pos])
    return (m.group(1), m.start(1)) if m else None


def _next_word(text: str, pos: int) -> tuple[str, int] | None:
    """The word just after `pos` with only spaces between, and its end."""
    m = re.match(rf" +({_WORD})", text[pos:])
    return (m.group(1), pos + m.end(1)) if m else None


def _cap(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:]


@dataclass
class _Splice:
    """Replace text[start:end] with `new` (then fix the article before it)."""

    start: int
    end: int
    new: str
    noun: bool = False  # `new` is a noun phrase: it may take no article ("natural intonation")


class CaptionEditor:
    """`edit(caption, {attribute: value})` with one lexicon (see the module's docstring)."""

    def __init__(self, lexicon: dict[str, dict[str, list[str]]]):
        self.lexicon = lexicon
        self.matcher = Matcher(lexicon)
        # attribute -> value -> kind -> phrases, in lexicon order; only phrases read back as that value
        self.phrases: dict[str, dict[str, dict[str, list[str]]]] = {}
        for attr, values in lexicon.items():
            for value, phrases in values.items():
                by_kind: dict[str, list[str]] = {}
                for ph in phrases:
                    ph = " ".join(str(ph).split())
                    if ph and self.matcher.attributes(ph).get(attr) == value:
                        by_kind.setdefault(kind(ph), []).append(ph)
                self.phrases.setdefault(attr, {})[value] = by_kind

    # -- the request -----------------------------------------------------------------------
    def resolve(self, attributes: dict[str, str] | None) -> dict[str, str]:
        """{attribute: value} with the lexicon's spelling of each value; UserError listing the valid ones."""
        out = {}
        names = {a.lower(): a for a in self.lexicon}
        for name, value in (attributes or {}).items():
            attr = names.get(str(name).strip().lower())
            if attr is None:
                raise UserError(f"unknown attribute {name!r}; valid: {', '.join(sorted(self.lexicon))}")
            values = self.lexicon[attr]
            match = {v.lower(): v for v in values}.get(" ".join(str(value).split()).lower())
            if match is None:
                raise UserError(f"unknown value {value!r} for {attr}; valid: {', '.join(values)}")
            out[attr] = match
        return out

    def edit(self, caption: str, attributes: dict[str, str] | None) -> str:
        caption = " ".join(str(caption or "").split())
        for attr, value in self.resolve(attributes).items():
            caption = self._edit_one(caption, attr, value)
        return caption

    def _edit_one(self, text: str, attr: str, value: str) -> str:
        spans = [s for s in self.matcher.spans(text) if s[2] == attr]
        if not spans:
            return self._add(text, attr, value)
        for start, end, _, old in reversed(spans):  # right to left: earlier offsets stay valid
            if old != value:
                text = self._replace(text, start, end, attr, value)
        return text

    # -- checks ----------------------------------------------------------------------------
    def _others(self, text: str, attr: str) -> list[tuple[str, str]]:
        return [(a, v) for _, _, a, v in self.matcher.spans(text) if a != attr]

    def _reads_back(self, before: str, after: str, attr: str, value: str, region: tuple[int, int]) -> bool:
        """`after` states `value` (and only it) inside `region`, the new text's span, and every other
        attribute is stated as in `before`."""
        if self._others(after, attr) != self._others(before, attr):
            return False
        a, b = region
        inside = [(s, e, v) for s, e, at, v in self.matcher.spans(after) if at == attr and s < b and e > a]
        return bool(inside) and all(v == value for _, _, v in inside)

    def _apply(self, text: str, sp: _Splice) -> tuple[str, tuple[int, int]]:
        """Splice in `sp.new`, keeping a capital, fixing the article before it; (text, new span)."""
        start, end, new = sp.start, sp.end, sp.new
        if text[start : start + 1].isupper() or start == 0 or re.search(r"[.!?] *$", text[:start]):
            new = _cap(new)
        prev = _prev_word(text, start)
        first = new.split()[0].lower()
        if prev and prev[0].lower() in ("a", "an"):
            det = determiner(new) if sp.noun else ("" if first in OWN_DETERMINERS else
                                                    "an" if first[0] in "aeiou" else "a")
            if not det:  # "a" + "natural intonation" / "a bit fast": the article goes
                start = prev[1]
                new = _cap(new) if text[start].isupper() else new
            else:
                det = _cap(det) if prev[0][0].isupper() else det
                text = text[: prev[1]] + det + text[prev[1] + len(prev[0]) :]
                shift = len(det) - len(prev[0])
                start, end = start + shift, end + shift
        elif sp.noun and prev and prev[0].lower() in ("with", "at", "in", "has", "have", "had", "of"):
            new = with_article(new)  # "with reverb" -> "with a noticeable echo"
        out = text[:start] + new + text[end:]
        return out, (start, start + len(new))

    # -- a stated attribute ----------------------------------------------------------------
    def _replace(self, text: str, start: int, end: int, attr: str, value: str) -> str:
        old = text[start:end]
        s0 = start  # a degree word before the phrase belonged to the old value: "quite deep"
        while m := re.search(rf"(?:^|(?<=[ ,]))({'|'.join(DEGREE)}) +$", text[:s0], re.IGNORECASE):
            s0 = m.start(1)
        for sp in self._candidates(text, s0, end, old, attr, value):
            new_text, region = self._apply(text, sp)
            if self._reads_back(text, new_text, attr, value, region):
                return new_text
        # no phrase fits the slot (a lexicon without one): say the value in a sentence of its own,
        # after taking out the old phrase with what only it needed
        return self._add(self._remove(text, s0, end), attr, value)

    def _candidates(self, text: str, start: int, end: int, old: str, attr: str, value: str) -> list[_Splice]:
        """Replacements of text[start:end] in the order they are tried: the slot's own kind, phrases with
        the same last word (head) first, then the lexicon's order."""
        ph = self.phrases[attr][value]
        plural = old.lower().split()[-1] in PLURALS
        pick = {k: [p for p in v if (p.lower().split()[-1] in PLURALS) == plural] for k, v in ph.items()}
        nouns, adverbs, adjectives = pick.get("noun", []), pick.get("adverb", []), pick.get("adjective", [])
        last = old.lower().split()[-1]
        tail = last.split("-")[-1]

        def ranked(phrases: list[str]) -> list[str]:
            return sorted(phrases, key=lambda p: (p.lower().split()[-1] != last,
                                                  p.lower().split()[-1].split("-")[-1] != tail))

        attributive = [p for p in adjectives if p.lower().split()[0] not in OWN_DETERMINERS]
        flat = [p for p in adjectives if p.lower().split()[-1] in FLAT_ADVERBS]
        prep = NOUN_PREPOSITION.get(attr, "with")
        old_kind = kind(old)
        prev, nxt = _prev_word(text, start), _next_word(text, end)
        out: list[_Splice] = []
        if old_kind == "noun":
            same = [p for p in nouns if p.lower().split()[-1] == last]
            out += [_Splice(start, end, p, noun=True) for p in same]
            if last in GENERIC_HEADS:  # "a low voice" -> "a medium-pitched voice"
                out += [_Splice(start, end, f"{a} {last}") for a in ranked(attributive)
                        if last not in a.lower()]
            out += [_Splice(start, end, p, noun=True) for p in ranked(nouns) if p not in same]
            at = self._preposition_before(text, start)
            if at is not None:  # "talks at a brisk pace" -> "talks slightly quickly"
                out += [_Splice(at, end, p) for p in ranked(adverbs) + ranked(flat)]
            return out
        if old_kind == "adjective" and nxt and nxt[0].lower() not in NOT_HEADS:
            return [_Splice(start, end, p) for p in ranked(attributive)]  # before a noun: "a deep-voiced man"
        if old_kind == "adverb" or (prev and prev[0].lower() in SPEAKING_VERBS):  # how one speaks
            out += [_Splice(start, end, p) for p in ranked(adverbs) + ranked(flat)]
            out += [_Splice(start, end, f"{prep} {with_article(p)}") for p in ranked(nouns)]
            return out
        return [_Splice(start, end, p) for p in ranked(adjectives)]  # "the voice is deep", "male, quite deep"

    @staticmethod
    def _preposition_before(text: str, start: int) -> int | None:
        """Where "at" / "at a" before `start` begins (a noun phrase after it can become an adverb)."""
        prev = _prev_word(text, start)
        if prev and prev[0].lower() in ("a", "an"):
            prev = _prev_word(text, prev[1])
        return prev[1] if prev and prev[0].lower() == "at" else None

    @staticmethod
    def _remove(text: str, start: int, end: int) -> str:
        """Take text[start:end] out with the article and the preposition that led only to it."""
        prev = _prev_word(text, start)
        if prev and prev[0].lower() in ("a", "an", "the"):
            start = prev[1]
            prev = _prev_word(text, start)
        if prev and prev[0].lower() in PREPOSITIONS:
            start = prev[1]
        out = text[:start].rstrip(" ,") + text[end:]
        out = re.sub(r" +([,.!?])", r"\1", re.sub(r",( *,)+", ",", out))
        out = re.sub(r"^[ ,]+", "", " ".join(out.split()))
        return _cap(out) if out else out

    # -- an attribute the caption does not state -------------------------------------------
    def _add(self, text: str, attr: str, value: str) -> str:
        if attr in AFTER_VERB:
            for cand in self._after_verb(text, attr, value):
                if self._reads_back(text, cand[0], attr, value, cand[1]):
                    return cand[0]
        for sentence in self._sentences(attr, value):
            body = _cap(text.strip().rstrip(" ,;:"))
            if body and body[-1] not in ".!?":
                body += "."
            new = f"{body} {sentence}" if body else sentence
            region = (len(new) - len(sentence), len(new))
            if self._reads_back(text, new, attr, value, region):
                return new
        raise UserError(f"{attr}={value}: the lexicon has no phrase for it that reads back as {value}")

    def _after_verb(self, text: str, attr: str, value: str) -> list[tuple[str, tuple[int, int]]]:
        """Captions with the value said right after a speaking verb: "speaks slowly", "speaks with a low
        pitch", "speaks with a low pitch and a British accent", "speaks happily and slowly"."""
        ph = self.phrases[attr][value]
        flat = [p for p in ph.get("adjective", []) if p.lower().split()[-1] in FLAT_ADVERBS]
        adverbs = ph.get("adverb", []) + flat
        nouns = [p for p in ph.get("noun", []) if p.lower().split()[-1] not in PLURALS]
        prep = NOUN_PREPOSITION.get(attr, "with")
        out = []
        verbs = "|".join(sorted(SPEAKING_VERBS, key=len, reverse=True))
        for m in re.finditer(rf"(?<![\w-])({verbs})(?![\w-])", text, re.IGNORECASE):
            at = m.end()
            run = re.match(r"(?: +(?:and +)?[A-Za-z]+ly)+", text[at:])  # "speaks quickly", "slowly and sadly"
            if run and all(w.lower() not in ADJECTIVES_IN_LY for w in run.group(0).split()):
                at += run.end()
            else:
                run = None
            nxt = _next_word(text, at)
            if nxt and nxt[0].lower() not in PREPOSITIONS | OTHER_PREPOSITIONS | CONJUNCTIONS:
                continue  # an object follows ("reads the news"): not here
            for p in adverbs:
                if run is None:
                    head, new = text[:at], f" {p}"
                else:  # "speaks quickly" -> "speaks quickly and sadly"; "a and b" -> "a, b and c"
                    before, chain = text[: at - run.end()], run.group(0)
                    k = chain.rfind(" and ")
                    head, new = before + (chain[:k] + "," + chain[k + 4 :] if k >= 0 else chain), f" and {p}"
                out.append((head + new + text[at:], (len(head) + len(new) - len(p), len(head) + len(new))))
            for p in nouns:
                np_ = with_article(p)
                if nxt and nxt[0].lower() == prep:  # "speaks with a low pitch and a British accent"
                    k = nxt[1]
                    out.append((text[:k] + f" {np_} and" + text[k:], (k + 1, k + 1 + len(np_))))
                else:
                    new = f" {prep} {np_}"
                    out.append((text[:at] + new + text[at:], (at + len(new) - len(np_), at + len(new))))
            break  # the first verb that takes it
        return out

    def _sentences(self, attr: str, value: str) -> list[str]:
        """Sentences that state the value on their own, the attribute's own frames first."""
        frames = FRAMES.get(attr, DEFAULT_FRAMES)
        out = []
        for k, frame in frames.items():
            for p in self.phrases[attr][value].get(k, []):
                if p.lower().split()[-1] in PLURALS:
                    continue
                if k == "noun" and attr == "quality" and p.lower().split()[-1] in PLACE_NOUNS:
                    out.append(f"It was recorded in {with_article(p)}.")
                elif k == "noun" and "{}" in frame:
                    out.append(frame.format(with_article(p)))
                else:
                    out.append(frame.format(p))
        return [_cap(s) for s in out]


def edit_caption(
    caption: str, attributes: dict[str, str] | None, lexicon: dict[str, dict[str, list[str]]]
) -> str:
    """The caption with each attribute set to its value (see the module's docstring); an unknown attribute or
    value is a UserError that lists the valid ones. Many edits with one lexicon: keep a `CaptionEditor`."""
    return CaptionEditor(lexicon).edit(caption, attributes)
