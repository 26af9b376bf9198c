"""Attribute edits keep the caption a well-formed sentence: every pitch and speed value of the real lexicon
(params.yaml), on realistic captions that state the attribute in different forms, or not at all."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tristage.captions.edit import CaptionEditor, edit_caption
from tristage.captions.lexicon import Matcher
from tristage.config import load_params
from tristage.errors import UserError

LEXICON = load_params(Path(__file__).resolve().parents[1] / "params.yaml").caption_vectors.lexicon
MATCHER = Matcher(LEXICON)
EDITOR = CaptionEditor(LEXICON)

# the attribute stated as: a noun phrase after "with a", an adjective before the noun, a noun phrase of its
# own, an adjective opening the caption, a predicate with a degree word, an adverb, "at a ... pace", ...
STATED = {
    "pitch": [
        "A man with a low voice speaks slowly.",
        "A deep-voiced woman talks at a brisk pace. The recording has background noise.",
        "A masculine Irish-accented speaker talks hurriedly, with a low pitch.",
        "Very low-pitched male voice, German accent, speaking hurriedly and angrily.",
        "A sorrowful Scottish voice, male, quite deep, reading at a leisurely pace.",
        "The voice is high-pitched and the speaker talks quickly.",
        "An Indian man with a fairly low pitch speaks at a brisk pace, sounding delighted.",
        "The female narrator has a Canadian accent and a medium pitch, speaking expressively.",
        "Squeaky cartoonish voice, speaking extremely fast and joyfully.",
    ],
    "speed": [
        "A man with a low voice speaks slowly.",
        "A deep-voiced woman talks at a brisk pace. The recording has background noise.",
        "An Irish-accented gentleman speaks with a speedy delivery, with a deep voice.",
        "With a fairly low pitch, a boy says the line at a fast pace, with an Irish accent.",
        "Squeaky cartoonish voice, very high pitch, speaking extremely fast and joyfully.",
        "Calm Dutch woman, average pitch, neutral tone, slow and gentle.",
        "A man talks at a moderate speed with a flat tone.",
        "Gruff Boston guy with a low voice, talking annoyed and rapidly.",
    ],
}
NOT_STATED = [
    "A woman speaks.",
    "A woman speaks with a British accent.",
    "A woman reads the news in a calm tone.",
    "A bored teenager mumbles monotonously.",
    "a happy voice",
    "",
]
CASES = [
    (attr, value, caption)
    for attr in ("pitch", "speed")
    for value in LEXICON[attr]
    for caption in STATED[attr] + NOT_STATED
]

# the words that end a noun phrase in these captions, and the verbs a noun phrase must not run into
NOUNS = {"voice", "pitch", "tone", "pace", "speed", "delivery", "man", "woman", "boy", "girl", "gentleman",
         "guy", "lady", "teenager", "speaker", "room", "accent", "noise", "recording", "line", "news",
         "narrator", "intonation"}
VERBS = {"speaks", "talks", "reads", "says", "speaking", "talking", "reading", "mumbles", "is", "has",
         "sounds"}


def problems(text: str) -> list[str]:
    """What makes `text` not a well-formed caption, by rules a test can assert."""
    out = []
    if m := re.search(r"\b(\w+) +\1\b", text, re.IGNORECASE):
        out.append(f"doubled word {m.group(0)!r}")
    tokens = re.findall(r"[\w'-]+|[.,;!?]", text.lower())
    for i, t in enumerate(tokens):
        if t in ("with", "at", "a", "an") and (i + 1 == len(tokens) or tokens[i + 1] in VERBS | set(".,;!?")):
            out.append(f"dangling {t!r} before {tokens[i + 1:i + 2]}")
        if t in ("a", "an") and tokens[i + 1 : i + 2] not in (["bit"], ["little"]):  # "a bit fast": an adverb
            for u in tokens[i + 1 :]:
                if u in NOUNS:
                    break
                if u in VERBS or u in ".,;!?":
                    out.append(f"{t!r} + adjectives with no noun before {u!r}")
                    break
    if m := re.search(r"\ba +[aeiou]|\ban +[b-df-hj-np-tv-z]", text, re.IGNORECASE):
        out.append(f"article does not fit: {m.group(0)!r}")
    if not text.endswith(".") or text.endswith(".."):
        out.append("does not end with one period")
    if re.search(r" [.,;]|[.,;] *[.,;]|  ", text):
        out.append("stray punctuation or spaces")
    for sentence in re.split(r"(?<=[.!?]) +", text):
        if not sentence[:1].isupper():
            out.append(f"sentence starts in lower case: {sentence!r}")
    return out


@pytest.mark.parametrize("attr,value,caption", CASES, ids=[f"{a}={v}-{c[:28]}" for a, v, c in CASES])
def test_every_pitch_and_speed_value_keeps_the_caption_grammatical(attr, value, caption):
    before = MATCHER.attributes(caption)
    assert (attr in before) == (caption in STATED[attr])  # the case is what it says it is
    edited = edit_caption(caption, {attr: value}, LEXICON)
    assert problems(edited) == [], edited
    stated = [(a, v) for _, _, a, v in MATCHER.spans(edited) if a == attr]
    assert stated and all(v == value for _, v in stated), edited  # the new value's phrase, no old one
    assert any(re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", edited, re.IGNORECASE)
               for p in LEXICON[attr][value]), edited
    after = MATCHER.attributes(edited)  # the caption parser of the caption table reads it back
    assert after[attr] == value
    assert {k: v for k, v in after.items() if k != attr} == {k: v for k, v in before.items() if k != attr}
    if caption and attr in before:
        assert len(edited.split()) <= len(caption.split()) + 3  # replaced in place, nothing appended
    if value == before.get(attr):
        assert edited == caption  # already so: untouched


def test_the_reported_captions_and_the_slots_of_the_phrases():
    assert EDITOR.edit("A man with a low voice speaks.", {"pitch": "very low"}) == \
        "A man with a very deep voice speaks."
    assert EDITOR.edit("A low-pitched man speaks.", {"pitch": "very low"}) == "A very low-pitched man speaks."
    assert EDITOR.edit("A man with a low voice speaks.", {"pitch": "moderate"}) == \
        "A man with a medium-pitched voice speaks."
    assert EDITOR.edit("A deep-voiced man speaks.", {"pitch": "moderate"}) == "A medium-pitched man speaks."
    assert EDITOR.edit("A man with a low voice speaks.", {"pitch": "moderate", "gender": "female"}) == \
        "A woman with a medium-pitched voice speaks."
    assert EDITOR.edit("She talks at a brisk pace.", {"speed": "slightly fast"}) == \
        "She talks at a slightly fast pace."
    assert EDITOR.edit("She speaks quickly.", {"speed": "moderate"}) == "She speaks at a moderate pace."
    assert EDITOR.edit("The voice is quite deep.", {"pitch": "high"}) == "The voice is high-pitched."
    # absent: said after the verb, or in a sentence of its own; never a trailing fragment
    assert EDITOR.edit("A woman speaks.", {"pitch": "high"}) == "A woman speaks with a high pitch."
    assert EDITOR.edit("A woman speaks with a British accent.", {"speed": "slow"}) == \
        "A woman speaks slowly with a British accent."
    assert EDITOR.edit("A woman reads the news.", {"pitch": "high"}) == \
        "A woman reads the news. The voice is high-pitched."
    assert EDITOR.edit("", {"speed": "fast", "pitch": "low"}) == "The speaker talks quickly with a low pitch."
    assert EDITOR.edit("a happy voice", {"speed": "slow"}) == "A happy voice. The speaker talks slowly."


def test_several_attributes_at_once_and_unknown_ones():
    edited = EDITOR.edit("A woman with a high-pitched voice speaks quickly in a quiet room.",
                         {"gender": "male", "Pitch": "Very Low", "speed": "slightly slow"})
    assert problems(edited) == [], edited
    assert MATCHER.attributes(edited) == {"gender": "male", "pitch": "very low", "speed": "slightly slow",
                                          "quality": "clean"}
    with pytest.raises(UserError, match="unknown value 'purple' for pitch; valid: very high, high"):
        EDITOR.edit("A woman speaks.", {"pitch": "purple"})
    with pytest.raises(UserError, match="unknown attribute 'colour'; valid: accent, emotion, gender"):
        EDITOR.edit("A woman speaks.", {"colour": "red"})


@pytest.mark.parametrize("attr", ["gender", "modulation", "quality", "emotion"])
def test_the_other_attributes_read_back_too(attr):
    for value in LEXICON[attr]:
        for caption in STATED["pitch"][:4] + NOT_STATED:
            edited = EDITOR.edit(caption, {attr: value})
            assert MATCHER.attributes(edited).get(attr) == value, edited
            assert not re.search(r"\b(\w+) +\1\b", edited), edited
            assert edited.endswith(".") or edited[-1] == caption[-1] != ".", edited  # in place: as it ended
