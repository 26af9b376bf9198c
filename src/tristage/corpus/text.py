"""Sentences to speak and free-form style captions, generated deterministically from an rng.

    sentence(rng)                          -> "Did you see the old lamp near the station?"
    caption(rng, attrs)                    -> "In a noisy room, a Scottish woman talks quickly ..."

Captions are phrased many ways (dataspeech-like templates with synonyms) but always state
every true attribute: gender, pitch, speed, accent, modulation, quality and emotion.
`PHRASES[attribute][value]` lists the words a caption may use for a value.
"""
from __future__ import annotations

import numpy as np

# -- sentences ---------------------------------------------------------------------------------

NAMES = (
    "Anna",
    "Peter",
    "Maria",
    "David",
    "Laura",
    "James",
    "Sofia",
    "Thomas",
    "Emma",
    "Daniel",
    "Grace",
    "Oliver",
)
ADJS = (
    "old",
    "small",
    "bright",
    "quiet",
    "heavy",
    "green",
    "broken",
    "famous",
    "tiny",
    "golden",
    "strange",
    "warm",
)
NOUNS = ("lamp", "garden", "letter", "bicycle", "window", "river", "market", "teacher", "kitchen", "painting",
         "village", "camera", "bridge", "island", "piano", "doctor")
PLURALS = ("apples", "books", "candles", "birds", "tickets", "stones", "boxes", "flowers", "chairs", "songs")
VERBS = ("open", "carry", "paint", "visit", "clean", "find", "close", "watch", "fix", "follow")
PAST = (
    "opened",
    "carried",
    "painted",
    "visited",
    "cleaned",
    "found",
    "closed",
    "watched",
    "fixed",
    "followed",
)
PLACES = ("near the station", "behind the house", "across the street", "in the park", "by the harbour",
          "at the museum", "under the old tree", "on the top floor")
TIMES = ("tomorrow morning", "after lunch", "this evening", "next week", "before sunrise", "on Friday",
         "in a few minutes", "later today")
NUMBERS = ("two", "three", "five", "seven", "ten", "twelve", "twenty", "forty")

SENTENCES = (
    "The {adj} {noun} was {place}.",
    "{name} {past} the {adj} {noun} {time}.",
    "Did you see the {adj} {noun} {place}?",
    "Please {verb} the {noun} before {time2}.",
    "We {past} {number} {plural} {place}.",
    "I think the {noun} will be {adj} {time}.",
    "{name} said the {noun} is {adj}.",
    "How many {plural} can you {verb} {time}?",
    "After the rain, {name} and {name2} {past} the {noun}.",
    "There are {number} {plural} in the {noun}.",
    "If the {noun} is {adj}, we should {verb} it {time}.",
    "{name} did not {verb} the {noun}.",
)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def sentence(rng: np.random.Generator) -> str:
    """One English sentence of about 5 to 10 words."""
    template = _pick(rng, SENTENCES)
    name = _pick(rng, NAMES)
    name2 = _pick(rng, tuple(n for n in NAMES if n != name))
    return template.format(adj=_pick(rng, ADJS), noun=_pick(rng, NOUNS), plural=_pick(rng, PLURALS),
                           verb=_pick(rng, VERBS), past=_pick(rng, PAST), place=_pick(rng, PLACES),
                           time=_pick(rng, TIMES), time2=_pick(rng, TIMES[:6]), number=_pick(rng, NUMBERS),
                           name=name, name2=name2)


# -- captions ----------------------------------------------------------------------------------
# attribute -> value -> phrases. Each slot of a template draws one phrase of its kind.

GENDER_NOUN = {"female": ("woman", "female speaker", "lady", "female voice"),
               "male": ("man", "male speaker", "gentleman", "male voice")}
GENDER_ADJ = {"female": ("female",), "male": ("male",)}
PITCH = {
    "high": ("a high-pitched voice", "a fairly high voice", "a high voice", "a bright, high-pitched tone"),
    "moderate": (
        "a moderate pitch",
        "a medium-pitched voice",
        "an average-pitched voice",
        "a mid-range pitch",
    ),
    "low": ("a low-pitched voice", "a deep voice", "a low voice", "a fairly low pitch"),
}
PITCH_ADJ = {
    "high": ("high-pitched", "fairly high-pitched"),
    "moderate": ("medium-pitched", "moderately pitched"),
    "low": ("low-pitched", "deep-voiced"),
}
SPEED = {"fast": ("quickly", "fast", "rapidly", "at a brisk pace"),
         "moderate": ("at a moderate pace", "at an even speed", "at a normal speed", "at a steady pace"),
         "slow": ("slowly", "at a slow pace", "unhurriedly", "at a leisurely pace")}
SPEED_ADJ = {"fast": ("fast", "quick", "rapid"), "moderate": ("moderately paced", "evenly paced"),
             "slow": ("slow", "unhurried", "leisurely")}
MODULATION = {
    "monotone": ("monotonously", "in a flat tone", "with very little intonation", "in a monotone"),
    "moderate": ("with natural intonation", "with some variation in tone", "with a moderate intonation"),
    "expressive": (
        "expressively",
        "with lively intonation",
        "with a very animated delivery",
        "with a wide, expressive intonation",
    ),
}
MODULATION_ADJ = {
    "monotone": ("monotone", "flat"),
    "moderate": ("moderately intonated", "naturally intonated"),
    "expressive": ("expressive", "animated"),
}
QUALITY = {"clean": ("in a clean recording", "in a quiet room", "in a clear, noise-free recording",
                     "in a clean studio setting"),
           "noisy": ("in a noisy room", "with background noise", "in a noisy recording",
                     "over audible background noise"),
           "reverberant": ("in a reverberant room", "with a noticeable echo", "in an echoey hall",
                           "in a room with a lot of reverb")}
QUALITY_SENT = {"clean": ("The recording is clean.", "The audio is clear, with no background noise.",
                          "It is a clean recording."),
                "noisy": ("The recording is noisy.", "There is noticeable background noise.",
                          "It is a noisy recording."),
                "reverberant": ("The recording is reverberant.", "There is a noticeable echo in the room.",
                                "It sounds like a reverberant hall.")}
EMOTION = {"neutral": ("in a neutral tone", "without much emotion", "in a matter-of-fact way"),
           "happy": ("sounding happy", "cheerfully", "in a joyful mood", "with a happy tone"),
           "sad": ("sounding sad", "sadly", "in a sorrowful tone", "with a sad voice"),
           "angry": ("sounding angry", "angrily", "in an irritated tone", "with an angry tone"),
           "bored": ("sounding bored", "in a bored tone", "listlessly", "as if bored")}
EMOTION_ADJ = {
    "neutral": ("neutral", "matter-of-fact"),
    "happy": ("happy", "cheerful"),
    "sad": ("sad", "sorrowful"),
    "angry": ("angry", "irritated"),
    "bored": ("bored", "uninterested"),
}

# What a caption may say for each attribute value (tests check captions against this).
PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "gender": {k: GENDER_NOUN[k] + GENDER_ADJ[k] for k in GENDER_NOUN},
    "pitch": {k: PITCH[k] + PITCH_ADJ[k] for k in PITCH},
    "speed": {k: SPEED[k] + SPEED_ADJ[k] for k in SPEED},
    "modulation": {k: MODULATION[k] + MODULATION_ADJ[k] for k in MODULATION},
    "quality": {k: QUALITY[k] + QUALITY_SENT[k] for k in QUALITY},
    "emotion": {k: EMOTION[k] + EMOTION_ADJ[k] for k in EMOTION},
}

# Slots: {g} gender noun, {ga} gender adjective, {p} pitch phrase, {pa} pitch adjective, {s} speed adverb,
# {sa} speed adjective, {m} modulation adverb, {ma} modulation adjective, {q} quality phrase,
# {qs} quality sentence, {e} emotion phrase, {ea} emotion adjective, {a} accent ("Scottish").
CAPTIONS = (
    "A {a} {g} with {p} speaks {s} and {m} {q}, {e}.",
    "{Q}, a {a} {g} talks {s} and {m} with {p}, {e}.",
    "A {ea} {a} {g} speaks {m} {s}, with {p}. {qs}",
    "A {ga} speaker with a {a} accent, {p} and a {ma} delivery talks {s} {q}, {e}.",
    "This is a {ga} voice with a {a} accent: {pa}, {sa} and {ma}, {e}. {qs}",
    "{E}, a {pa} {g} with a {a} accent delivers the line {s} and {m} {q}.",
    "{Q}, you can hear a {a} {g} speaking {s} with {p}; the delivery is {ma} and {ea}.",
    "A {sa}, {ma} utterance from a {ea} {a} {g} with {p}, {q}.",
    "The speaker is a {a} {g} who talks {s} with {p}, {m}, {e}. {qs}",
    "A {g} with {p} and a {a} accent says this {s} and {m}, {e}, {q}.",
    "Spoken {s} by a {pa} {a} {g}, {m} and {e}. {qs}",
    "{Q}, a {ea} {ga} speaker with a {a} accent reads the sentence {s}, with {p} and {m}.",
)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def caption(rng: np.random.Generator, attrs: dict[str, str]) -> str:
    """A free-form caption stating `attrs` (gender, pitch, speed, accent, modulation, quality, emotion)."""
    g, p, s, m = attrs["gender"], attrs["pitch"], attrs["speed"], attrs["modulation"]
    q, e, a = attrs["quality"], attrs["emotion"], attrs["accent"]
    template = _pick(rng, CAPTIONS)
    slots = dict(g=_pick(rng, GENDER_NOUN[g]), ga=_pick(rng, GENDER_ADJ[g]), p=_pick(rng, PITCH[p]),
                 pa=_pick(rng, PITCH_ADJ[p]), s=_pick(rng, SPEED[s]), sa=_pick(rng, SPEED_ADJ[s]),
                 m=_pick(rng, MODULATION[m]), ma=_pick(rng, MODULATION_ADJ[m]), q=_pick(rng, QUALITY[q]),
                 qs=_pick(rng, QUALITY_SENT[q]), e=_pick(rng, EMOTION[e]), ea=_pick(rng, EMOTION_ADJ[e]), a=a)
    slots["Q"] = _cap(slots["q"])
    slots["E"] = _cap(slots["e"])
    return fix_articles(template.format(**slots))


def fix_articles(text: str) -> str:
    """"a American" -> "an American", "a expressive" -> "an expressive" (word-level)."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] in ("a", "A") and words[i + 1][:1].lower() in "aeiou":
            words[i] = "an" if words[i] == "a" else "An"
        elif words[i] in ("an", "An") and words[i + 1][:1].lower() not in "aeiou":
            words[i] = "a" if words[i] == "an" else "A"
    return " ".join(words)
