"""Captions written from attribute values with the lexicon's own phrases (dataspeech without the LLM).

    writer = CaptionWriter(lexicon)      # params `caption_vectors.lexicon`
    writer.write({"gender": "female", "pitch": "low", "speed": "fast", "quality": "noisy"}, rng)
        -> "A deep-voiced woman talks at a brisk pace. The recording has background noise."

Every stated value is said with one of its lexicon phrases, so the caption-vector matcher reads
the same values back (`Matcher(lexicon).attributes(caption)`; tests check it). Phrases are sorted
by shape (adverb "quickly", noun phrase "brisk pace", adjective "fast") and each shape has its
frames ("speaks quickly", "talks at a brisk pace", "with a fast delivery"); the template, the
order of the clauses and the phrases are drawn from the row's seeded rng, so a corpus gets varied
phrasing and a rerun the same captions. Attributes without a value are left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tristage.captions.lexicon import ATTRIBUTE_NOUNS, PREPOSITIONS, UNCOUNTABLE, Matcher

ORDER = ("gender", "accent", "pitch", "speed", "modulation", "emotion", "quality")
GENDER_ADJ_ENDINGS = ("ale", "ine")  # female, male, feminine, masculine
VERBS = ("speaks", "talks", "reads", "says the line")


def shape(phrase: str) -> str:
    """"adverb" (quickly, a bit slowly, as if bored), "noun" (brisk pace, deep voice) or "adjective"."""
    words = phrase.lower().split()
    if (
        words[0] in PREPOSITIONS
        or words[0] == "a"
        or words[-1].endswith("ly")
        and words[-1] not in ("lively",)
    ):
        return "adverb"
    if words[-1] in ATTRIBUTE_NOUNS:
        return "noun"
    return "adjective"


def article(phrase: str) -> str:
    """"a deep voice", "an even speed", "very little intonation", "some background noise"."""
    first, last = phrase.lower().split()[0], phrase.lower().split()[-1]
    if first in ("a", "an", "some", "no", "very", "lot") and first != "very" or last in UNCOUNTABLE:
        return ("a " + phrase) if first == "lot" else phrase
    return ("an " if first[0] in "aeiou" else "a ") + phrase


@dataclass
class _Subject:
    """The parts of a caption's first sentence drawn from the attributes: `pre` adjectives before the
    subject `noun` ("deep-voiced woman"), `post` clauses after the verb ("with a flat intonation")."""

    noun: str = "speaker"
    pre: list[str] = field(default_factory=list)
    post: list[str] = field(default_factory=list)


class CaptionWriter:
    def __init__(self, lexicon: dict[str, dict[str, list[str]]]):
        self.lexicon = lexicon
        self.matcher = Matcher(lexicon)
        # attribute -> value -> shape -> phrases; only phrases the matcher reads back as this value
        self.phrases: dict[str, dict[str, dict[str, list[str]]]] = {}
        for attr, values in lexicon.items():
            for value, phrases in values.items():
                by_shape: dict[str, list[str]] = {}
                for ph in phrases:
                    if self.matcher.attributes(ph).get(attr) == value and not ph.lower().endswith(
                        ("men", "women")
                    ):
                        by_shape.setdefault(shape(ph), []).append(ph)
                self.phrases.setdefault(attr, {})[value] = by_shape

    def _pick(
        self, rng: np.random.Generator, attr: str, value: str, shapes: tuple[str, ...]
    ) -> tuple[str, str] | None:
        opts = [(s, ph) for s in shapes for ph in self.phrases.get(attr, {}).get(value, {}).get(s, [])]
        return opts[int(rng.integers(len(opts)))] if opts else None

    def write(self, attrs: dict[str, str | None], rng: np.random.Generator) -> str:
        """One caption for a row's attribute values (None or unknown values are left out). The rng draws
        in a fixed order (subject and clauses, verb, clause order and template, quality), so a seeded rng
        gives the same caption on every run."""
        attrs = {k: v for k, v in attrs.items() if v and k in self.phrases and v in self.phrases[k]}
        subject = self._subject(attrs, rng)
        verb_phrase = self._verb_phrase(attrs, rng)
        text = self._sentence(subject, verb_phrase, rng)
        if "quality" in attrs:
            text += self._quality_sentence(attrs["quality"], rng)
        return text

    def _subject(self, attrs: dict[str, str], rng: np.random.Generator) -> _Subject:
        """The subject noun (gender noun or "speaker"), the adjectives before it and the clauses after the
        verb, from gender, accent, pitch, emotion and modulation."""
        subject = _Subject()
        if "gender" in attrs:
            g = self._pick(rng, "gender", attrs["gender"], ("adjective", "noun"))
            if g is not None:
                if g[1].lower().endswith(GENDER_ADJ_ENDINGS):
                    subject.pre.append(g[1])
                else:
                    subject.noun = g[1]
        for attr in ("accent", "pitch", "emotion", "modulation"):
            if attr not in attrs:
                continue
            got = self._pick(rng, attr, attrs[attr], ("adjective", "noun", "adverb"))
            if got is None:
                continue
            kind, ph = got
            if (
                kind == "adjective"
                and attr in ("accent", "pitch")
                or kind == "adjective"
                and rng.random() < 0.3
            ):
                subject.pre.append(ph)
            elif kind == "adjective":
                delivery = f"with {article(ph + ' delivery')}"
                subject.post.append(f"sounding {ph}" if attr == "emotion" else delivery)
            elif kind == "noun":
                subject.post.append(f"with {article(ph)}" if attr != "emotion" else f"in {article(ph)}")
            else:
                subject.post.append(ph)
        return subject

    def _verb_phrase(self, attrs: dict[str, str], rng: np.random.Generator) -> str:
        """A verb, with the speed phrase where there is one: "talks at a brisk pace", "speaks quickly"."""
        speed = (
            self._pick(rng, "speed", attrs["speed"], ("adverb", "noun", "adjective"))
            if "speed" in attrs
            else None
        )
        verb = VERBS[int(rng.integers(len(VERBS)))]
        if speed is None:
            return verb
        if speed[0] == "noun":
            return f"{verb} at {article(speed[1])}"
        if speed[0] == "adverb":
            return f"{verb} {speed[1]}"
        return f"{verb} with {article(speed[1] + ' delivery')}"

    @staticmethod
    def _sentence(subject: _Subject, verb_phrase: str, rng: np.random.Generator) -> str:
        """The first sentence: the clauses in a random order around subject + verb, one of three templates."""
        order = rng.permutation(len(subject.post))
        post = [subject.post[i] for i in order]
        head = " ".join([*subject.pre, subject.noun])
        head = article(head) if not head.lower().startswith(("a ", "an ")) else head
        template = int(rng.integers(3))
        if template == 0 or not post:
            body = f"{head} {verb_phrase}" + (", " + ", ".join(post) if post else "")
        elif template == 1:
            body = f"{head}, {post[0]}, {verb_phrase}" + (", " + ", ".join(post[1:]) if post[1:] else "")
        else:
            body = f"{post[0][:1].upper()}{post[0][1:]}, {head} {verb_phrase}" + \
                   (", " + ", ".join(post[1:]) if post[1:] else "")
        return body[:1].upper() + body[1:] + "."

    def _quality_sentence(self, value: str, rng: np.random.Generator) -> str:
        """" The recording is clean." / " It was recorded in a small room." / " The recording has ..."."""
        q = self._pick(rng, "quality", value, ("adjective", "noun"))
        if q is None:
            return ""
        kind, ph = q
        if kind == "adjective":
            return f" The recording is {ph}."
        if ph.lower().split()[-1] in ("room", "studio"):
            return f" It was recorded in {article(ph)}."
        return f" The recording has {article(ph)}."
