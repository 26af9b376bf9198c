"""The attribute lexicon: which caption phrases state which attribute value.

    LEXICON[attribute][value] = [phrase, ...]      (the default of `caption_vectors.lexicon`)
    Matcher(lexicon).spans("A deep-voiced Scottish man ...")
        -> [(2, 13, "pitch", "low"), (14, 22, "accent", "Scottish"), (23, 26, "gender", "male")]

Phrases match case-insensitively on word boundaries, longest first, without overlaps, so
"slightly high-pitched" wins over "high-pitched" and "no background noise" over
"background noise". No torch, no transformers: the params schema imports this module.
"""
from __future__ import annotations

import re

# the grammar of lexicon phrases, shared by the caption writer (annotation/captions.py) and the caption
# editor (captions/edit.py): a phrase ending in one of ATTRIBUTE_NOUNS is a noun phrase ("brisk pace"),
# one starting with a preposition an adverbial ("with a fast delivery")
PREPOSITIONS = frozenset({"with", "without", "in", "at", "as", "on", "by"})
ATTRIBUTE_NOUNS = frozenset({"pitch", "voice", "tone", "pace", "speed", "intonation", "delivery", "noise",
                             "room", "studio", "echo", "reverb", "way", "accent", "boredom", "emotion"})
PERSON_NOUNS = frozenset({"woman", "women", "lady", "girl", "man", "men", "gentleman", "guy", "boy"})
UNCOUNTABLE = frozenset({"intonation", "noise", "reverb", "echo", "variation", "emotion", "boredom"})

ACCENTS = (
    "American",
    "British",
    "English",
    "Scottish",
    "Irish",
    "Welsh",
    "Northern Irish",
    "Australian",
    "New Zealand",
    "Canadian",
    "South African",
    "Indian",
    "Pakistani",
    "Nigerian",
    "Kenyan",
    "Ghanaian",
    "Jamaican",
    "Caribbean",
    "New York",
    "Southern American",
    "Texan",
    "Boston",
    "Lancastrian",
    "West Midlands",
    "Cockney",
    "Yorkshire",
    "Geordie",
    "Scouse",
    "Chinese",
    "Japanese",
    "Korean",
    "Vietnamese",
    "Filipino",
    "Thai",
    "Indonesian",
    "Malaysian",
    "Singaporean",
    "French",
    "German",
    "Italian",
    "Spanish",
    "Portuguese",
    "Brazilian",
    "Mexican",
    "Argentinian",
    "Colombian",
    "Russian",
    "Polish",
    "Ukrainian",
    "Dutch",
    "Swedish",
    "Norwegian",
    "Danish",
    "Finnish",
    "Greek",
    "Turkish",
    "Arabic",
    "Egyptian",
    "Israeli",
    "Persian",
)

LEXICON: dict[str, dict[str, list[str]]] = {
    "gender": {
        "female": ["female", "woman", "women", "lady", "girl", "feminine"],
        "male": ["male", "man", "men", "gentleman", "guy", "boy", "masculine"],
    },
    "pitch": {
        "very high": ["very high-pitched", "very high pitch", "very high voice", "squeaky"],
        "high": [
            "high-pitched",
            "high pitch",
            "high voice",
            "fairly high-pitched",
            "fairly high voice",
            "high tone",
            "high-pitched tone",
        ],
        "slightly high": [
            "slightly high-pitched",
            "slightly high pitch",
            "slightly high voice",
            "somewhat high-pitched",
        ],
        "moderate": [
            "medium-pitched",
            "moderate pitch",
            "average-pitched",
            "mid-range pitch",
            "moderately pitched",
            "medium pitch",
            "average pitch",
        ],
        "slightly low": [
            "slightly low-pitched",
            "slightly low pitch",
            "slightly low voice",
            "somewhat low-pitched",
        ],
        "low": [
            "low-pitched",
            "low pitch",
            "low voice",
            "deep voice",
            "fairly low pitch",
            "deep-voiced",
            "deep",
        ],
        "very low": ["very low-pitched", "very low pitch", "very deep voice", "very deep"],
    },
    "speed": {
        "fast": [
            "quickly",
            "fast",
            "rapidly",
            "brisk pace",
            "quick",
            "rapid",
            "hurriedly",
            "fast pace",
            "speedy",
        ],
        "slightly fast": ["slightly fast", "slightly quickly", "a bit fast", "somewhat quickly"],
        "moderate": [
            "moderate pace",
            "even speed",
            "normal speed",
            "steady pace",
            "moderately paced",
            "evenly paced",
            "moderate speed",
            "average speed",
            "normal pace",
        ],
        "slightly slow": ["slightly slow", "slightly slowly", "a bit slowly", "somewhat slowly"],
        "slow": ["slowly", "slow pace", "unhurriedly", "leisurely pace", "slow", "unhurried", "leisurely"],
    },
    "modulation": {
        "monotone": [
            "monotonously",
            "flat tone",
            "very little intonation",
            "monotone",
            "flat",
            "monotonous",
            "monoton",
        ],
        "moderate": [
            "natural intonation",
            "some variation in tone",
            "moderate intonation",
            "moderately intonated",
            "naturally intonated",
        ],
        "expressive": [
            "expressively",
            "lively intonation",
            "very animated delivery",
            "expressive intonation",
            "expressive",
            "animated",
            "lively",
            "dynamic",
        ],
    },
    "quality": {
        "clean": [
            "clean",
            "quiet room",
            "noise-free",
            "no background noise",
            "clean studio",
            "clear",
            "studio",
        ],
        "slightly noisy": [
            "slightly noisy",
            "a little background noise",
            "some background noise",
            "slight noise",
        ],
        "noisy": ["noisy", "background noise", "audible background noise", "noticeable background noise"],
        "very noisy": [
            "very noisy",
            "heavy background noise",
            "extremely noisy",
            "very loud background noise",
        ],
        "reverberant": [
            "reverberant",
            "noticeable echo",
            "echoey",
            "echo",
            "reverb",
            "lot of reverb",
            "echoing",
        ],
    },
    "emotion": {
        "neutral": [
            "neutral",
            "neutral tone",
            "without much emotion",
            "matter-of-fact",
            "matter-of-fact way",
        ],
        "happy": ["happy", "cheerfully", "joyful", "cheerful", "joyfully", "happily", "delighted"],
        "sad": ["sad", "sadly", "sorrowful", "sorrowfully", "melancholy", "unhappy"],
        "angry": ["angry", "angrily", "irritated", "furious", "annoyed"],
        "bored": ["bored", "listlessly", "uninterested", "as if bored", "boredom"],
    },
    "accent": {a: [a, f"{a} accent", f"{a}-accented"] for a in ACCENTS},
}

# Free-form paraphrases the stage also scores (never used to build the table): new wordings,
# new accents, words the demo corpus never uses.
PARAPHRASES = (
    "A young woman with a bright, slightly high-pitched voice speaks quickly in a very noisy cafe.",
    "Deep-voiced older man, Irish accent, talking slowly and calmly in a quiet studio.",
    "She sounds cheerful and lively, with a British accent, recorded with some background noise.",
    "An Australian gentleman reads the text at a normal speed in a monotone, the audio is clean.",
    "Very low-pitched male voice, German accent, speaking hurriedly and angrily.",
    "A lady from Texas with a Southern American accent talks unhurriedly and warmly.",
    (
        "The female narrator has a Canadian accent and a medium pitch, speaking expressively "
        "in a reverberant church."
    ),
    "A bored teenager mumbles monotonously with a flat tone, the recording is echoey.",
    "An Indian man with a fairly low pitch speaks at a brisk pace, sounding delighted.",
    "Soft-spoken Japanese woman, slow and gentle, very clean recording with no background noise.",
    "A sorrowful Scottish voice, male, quite deep, reading at a leisurely pace.",
    "Energetic American female host, rapid delivery, very animated, a little background noise.",
    "He speaks with a thick Russian accent, moderately paced and naturally intonated.",
    "Whispering girl with a French accent, slightly slow, melancholy, in a small echoing room.",
    "A middle-aged Nigerian man announces the news clearly and steadily at an average speed.",
    "Calm Dutch woman, average pitch, neutral tone, studio-quality audio.",
    "The speaker, a Welsh gentleman, sounds irritated and talks fast over heavy background noise.",
    "A Kenyan lady speaking happily with lively intonation in a clean recording.",
    "Male voice, Spanish accent, somewhat low-pitched, unhappy and slow, with a lot of reverb.",
    "An elderly Polish woman tells a story slowly with some variation in tone.",
    "Squeaky cartoonish voice, very high pitch, speaking extremely fast and joyfully.",
    "A Jamaican man laughs and talks quickly, extremely noisy street recording.",
    "Professional Singaporean female newsreader, clear audio, moderate speed, matter-of-fact.",
    "Gruff Boston guy with a low voice, talking annoyed and rapidly.",
    "A gentle Korean woman reads a bedtime story softly, slowly and expressively.",
    "The Egyptian speaker is male, speaks at a steady pace with a slightly high voice, sounding neutral.",
    "A Brazilian girl with a lively, cheerful tone, moderate pitch, some background noise.",
    "A tired Swedish man speaks monotonously and slowly in a quiet room.",
    "Furious Italian woman shouting quickly, very noisy recording with echo.",
    "A South African man with a deep voice and an even speed, without much emotion.",
    "Clear, crisp recording of a Filipino woman speaking at a fast pace and sounding happy.",
    "An old Cockney gentleman chatting leisurely, with an animated delivery and slight noise.",
)


class Matcher:
    """Finds lexicon phrases in a caption (character spans)."""

    def __init__(self, lexicon: dict[str, dict[str, list[str]]]):
        phrases: dict[str, tuple[str, str]] = {}
        for attr in sorted(lexicon):
            for value in sorted(lexicon[attr]):
                for ph in lexicon[attr][value]:
                    phrases.setdefault(ph.lower().strip(), (attr, value))
        self.phrases = phrases
        order = sorted(phrases, key=lambda p: (-len(p), p))  # longest first: regex alternation is ordered
        # spaces match any run of whitespace / commas; hyphens match themselves
        alts = [r"\s*,?\s+".join(re.escape(w) for w in p.split()) for p in order]
        self._re = (
            re.compile(r"(?<![\w-])(" + "|".join(alts) + r")(?![\w-])", re.IGNORECASE) if alts else None
        )

    def spans(self, caption: str) -> list[tuple[int, int, str, str]]:
        """[(start, end, attribute, value)] in caption order, non-overlapping."""
        if self._re is None:
            return []
        out = []
        for m in self._re.finditer(caption):
            key = " ".join(re.split(r"\s*,?\s+", m.group(1).lower()))
            attr, value = self.phrases[key]
            out.append((m.start(), m.end(), attr, value))
        return out

    def attributes(self, caption: str) -> dict[str, str]:
        """The first value stated for each attribute."""
        found: dict[str, str] = {}
        for _, _, attr, value in self.spans(caption):
            found.setdefault(attr, value)
        return found
