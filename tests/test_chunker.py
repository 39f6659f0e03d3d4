"""The sentence chunker: where it cuts, and that streaming never changes the cuts."""

from __future__ import annotations

import msgspec
import pytest
from morpheus_tts.host.contracts import Chunker
from morpheus_tts.plugins.chunkers.sentence import (
    SentenceChunker,
    SentenceSettings,
    morpheus_chunkers,
)


def whole(text: str, settings: SentenceSettings | None = None) -> list[str]:
    """Segments of `text` pushed at once, then flushed."""
    chunker = SentenceChunker(settings or SentenceSettings())
    return chunker.push(text) + chunker.flush()


def streamed(text: str, size: int, settings: SentenceSettings | None = None) -> list[str]:
    """Segments of `text` pushed as deltas of `size` characters, then flushed."""
    chunker = SentenceChunker(settings or SentenceSettings())
    segments: list[str] = []
    for start in range(0, len(text), size):
        segments += chunker.push(text[start : start + size])
    return segments + chunker.flush()


CASES = [
    pytest.param(
        "Well, after thinking about it for quite a long while, I believe the answer is yes. "
        "Thanks!",
        [
            "Well, after thinking about it for quite a long while,",
            "I believe the answer is yes.",
            "Thanks!",
        ],
        id="first-fragment-at-first-long-enough-clause",
    ),
    pytest.param("Hi, there. Okay", ["Hi, there.", "Okay"], id="first-clause-too-short"),
    pytest.param(
        "It's sunny. Let's go out. We can walk.",
        ["It's sunny.", "Let's go out.", "We can walk."],
        id="multiple-sentences",
    ),
    pytest.param(
        "Good morning to everyone, and welcome; today we talk, then we eat.",
        ["Good morning to everyone,", "and welcome; today we talk, then we eat."],
        id="only-the-first-segment-is-a-fragment",
    ),
    pytest.param(
        "It costs $29.99 today. Buy it.", ["It costs $29.99 today.", "Buy it."], id="money"
    ),
    pytest.param("Pi is about 3.5 or so. Hmm.", ["Pi is about 3.5 or so.", "Hmm."], id="decimal"),
    pytest.param(
        "Dr. Smith is here. MR. Jones too.",
        ["Dr. Smith is here.", "MR. Jones too."],
        id="title-abbreviations-any-case",
    ),
    pytest.param(
        "Use a tool, e.g. this one. Done.", ["Use a tool, e.g. this one.", "Done."], id="e.g."
    ),
    pytest.param(
        "We met at 9 a.m. in the U.S. office. Fine.",
        ["We met at 9 a.m. in the U.S. office.", "Fine."],
        id="dotted-abbreviations",
    ),
    pytest.param(
        "J. R. R. Tolkien wrote it. Read it.",
        ["J. R. R. Tolkien wrote it.", "Read it."],
        id="initials",
    ),
    pytest.param(
        "See example.com for v1.2.3 notes. OK.",
        ["See example.com for v1.2.3 notes.", "OK."],
        id="period-between-non-space-chars",
    ),
    pytest.param(
        "We sold 1,000 units, which is a lot. Yay.",
        ["We sold 1,000 units,", "which is a lot.", "Yay."],
        id="comma-inside-number-is-not-a-clause",
    ),
    pytest.param(
        "I was thinking... maybe not. Wait… What now.",
        ["I was thinking... maybe not.", "Wait…", "What now."],
        id="ellipses",
    ),
    pytest.param(
        'He said "Hi." Then he left.', ['He said "Hi."', "Then he left."], id="quote-after-period"
    ),
    pytest.param(
        '"Stop!" she shouted. Nobody did.',
        ['"Stop!" she shouted.', "Nobody did."],
        id="quoted-exclamation-inside-sentence",
    ),
    pytest.param(
        "(It was late.) We slept.", ["(It was late.)", "We slept."], id="bracket-after-period"
    ),
    pytest.param(
        "Really?! Yes. Wow!!! Okay.",
        ["Really?", "Yes.", "Wow!", "Okay."],
        id="terminator-runs-cut-at-first-mark",
    ),
    pytest.param(
        "<sigh> Okay then, <laugh> that is really funny, right? Sure <giggle>.",
        ["<sigh> Okay then,", "<laugh> that is really funny, right?", "Sure <giggle>."],
        id="emotion-tags",
    ),
    pytest.param(
        "Here are the steps:\n1. Boil the water.\n2. Add the tea.",
        ["Here are the steps:", "1. Boil the water.", "2. Add the tea."],
        id="numbered-list",
    ),
    pytest.param("Title\n\nBody text here.", ["Title", "Body text here."], id="paragraph-break"),
    pytest.param("   ", [], id="whitespace-only"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_whole_text_segments(text: str, expected: list[str]) -> None:
    assert whole(text) == expected


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_streamed_deltas_give_the_whole_text_segments(text: str, expected: list[str]) -> None:
    for size in range(1, 8):
        assert streamed(text, size) == expected, f"delta size {size}"


def test_push_releases_a_finished_sentence_before_flush() -> None:
    assert SentenceChunker().push("Hello there. Wh") == ["Hello there."]


def test_push_holds_a_period_at_the_end_of_the_buffer() -> None:
    chunker = SentenceChunker()
    assert chunker.push("It costs 3.") == []
    assert chunker.push("5 dollars. An") == ["It costs 3.5 dollars."]


def test_push_releases_a_question_at_once() -> None:
    assert SentenceChunker().push("Are you there?") == ["Are you there?"]


def test_eager_release_off_waits_for_whitespace() -> None:
    chunker = SentenceChunker(SentenceSettings(eager_release=False))
    assert chunker.push("Are you there?") == []
    assert chunker.push("! Yes") == ["Are you there?!"]


def test_punctuation_after_an_eager_cut_is_dropped_across_deltas() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Really?") == ["Really?"]
    assert chunker.push("!") == []
    assert chunker.push("! Yes.") == []
    assert chunker.flush() == ["Yes."]


def test_tag_split_across_deltas_stays_whole() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Ha, that was so funny <la") == []
    assert chunker.push("ugh>. Next") == ["Ha, that was so funny <laugh>."]


def test_max_chars_cut_never_ends_inside_a_tag() -> None:
    settings = SentenceSettings(max_chars=24, first_fragment=False)
    segments = whole("aaaaaaaaaaaaaaa <laugh very softly> b.", settings)
    assert segments == ["aaaaaaaaaaaaaaa", "<laugh very softly> b."]


def test_max_chars_cuts_a_long_sentence_at_the_last_clause() -> None:
    settings = SentenceSettings(max_chars=40, first_fragment=False)
    text = "one two three four five six, seven eight nine ten eleven twelve."
    assert whole(text, settings) == [
        "one two three four five six,",
        "seven eight nine ten eleven twelve.",
    ]


def test_max_chars_cuts_at_the_last_space_without_a_clause() -> None:
    settings = SentenceSettings(max_chars=20, first_fragment=False)
    assert whole("alpha beta gamma delta epsilon.", settings) == [
        "alpha beta gamma",
        "delta epsilon.",
    ]


def test_first_fragment_off_gives_whole_sentences() -> None:
    settings = SentenceSettings(first_fragment=False)
    text = "Well, after thinking about it for quite a long while, I believe so."
    assert whole(text, settings) == [text]


def test_first_fragment_min_chars_is_configurable() -> None:
    settings = SentenceSettings(first_fragment_min_chars=3)
    assert whole("Well, after thinking, yes.", settings) == ["Well,", "after thinking, yes."]


def test_reset_drops_buffered_text() -> None:
    chunker = SentenceChunker()
    chunker.push("Half a sent")
    chunker.reset()
    assert chunker.push("New text. ") == ["New text."]
    assert chunker.flush() == []


def test_reset_makes_the_next_segment_a_first_fragment_again() -> None:
    chunker = SentenceChunker()
    assert chunker.push("First sentence here. ") == ["First sentence here."]
    chunker.reset()
    assert chunker.push("Another long opening clause, then more.") == [
        "Another long opening clause,"
    ]


def test_flush_empties_the_chunker() -> None:
    chunker = SentenceChunker()
    chunker.push("No terminator")
    assert chunker.flush() == ["No terminator"]
    assert chunker.flush() == []


def test_hook_offers_the_sentence_chunker() -> None:
    (component,) = morpheus_chunkers()
    assert (component.name, component.kind, component.settings) == (
        "sentence",
        "chunker",
        SentenceSettings,
    )
    assert isinstance(component.create(SentenceSettings()), Chunker)


def test_settings_reject_unknown_fields() -> None:
    with pytest.raises(msgspec.ValidationError, match="first_fragment_chars"):
        msgspec.convert({"first_fragment_chars": 5}, SentenceSettings)


def test_settings_reject_a_tiny_max_chars() -> None:
    with pytest.raises(msgspec.ValidationError, match="max_chars"):
        msgspec.convert({"max_chars": 5}, SentenceSettings)
