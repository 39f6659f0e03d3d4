"""The "sentence" chunker: cuts streamed LLM text into segments an engine speaks well.

Text arrives as deltas of a few characters, so the chunker only cuts where the text already
received decides it: a period is a sentence end once whitespace follows it (`3.` may still
become `3.5`), never between two non-space characters (`$29.99`, `v1.2.3`, `example.com`), and
never after an abbreviation (`Dr.`, `e.g.`), a single initial (`J. R. R. Tolkien`) or a list
number at the start of a line (`1. Boil`). `!` and `?` never occur inside numbers, so a sentence
ending in one is released at once. A blank line also ends a segment; tags such as `<laugh>` are
never cut. Because a cut never depends on text after the point where it is decided, deltas of
any size give exactly the segments the whole text would.

For a low time to first audio the first segment of a stream may be its first clause; after it
come whole sentences, cut at `max_chars` if one runs on.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from morpheus_tts.host.contracts import Component
from morpheus_tts.host.hookspecs import hookimpl

ABBREVIATIONS = frozenset(
    "dr. mr. mrs. ms. prof. sr. jr. st. vs. etc. e.g. i.e. a.m. p.m. u.s. inc. ltd. no. fig. "
    "approx. cf. mt.".split()
)
CLOSERS = "\"'”’»)]}"
# Punctuation left over after an eager cut at `!`/`?` (`?!`, `!!!`, a stray closing quote).
DANGLING = ".!?…" + CLOSERS
# One alternation, scanned left to right: paragraph breaks, sentence terminator runs with their
# closing quotes/brackets, clause punctuation, and spaced dashes.
_CANDIDATE = re.compile(
    r"(?P<para>\n[ \t]*\n)|(?P<end>[.!?…]+[" + re.escape(CLOSERS) + r"]*)"
    r"|(?P<clause>[,;:])|(?P<dash>\s[-–—])"
)
_CLAUSE_IN_WINDOW = re.compile(r"(?:[,;:]|\s[-–—])(?=\s)")
# An unclosed `<laugh` (or `<laugh softly`) at the end of a segment would cut a tag in half.
_OPEN_TAG = re.compile(r"<[A-Za-z][^<>\n]{0,40}$")
_PAIRS = (("(", ")"), ("[", "]"), ("“", "”"), ("«", "»"))
_DANGLING_RUN = re.compile("[" + re.escape(DANGLING) + "]*")
_SPACE_RUN = re.compile(r"\s*")
_NON_SPACE = re.compile(r"\S")


class SentenceSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Settings of the sentence chunker.

    Args:
        first_fragment: let the first segment of a stream be its first clause.
        first_fragment_min_chars: a first clause shorter than this is not cut off ("Well," is
            not worth a segment of its own).
        max_chars: a sentence longer than this is cut at the last clause boundary or space
            before the limit (20-4000; the chunker's work per character grows with it).
        eager_release: release a sentence ending in `!` or `?` at once, without waiting for
            the next delta; the redundant punctuation that may follow (`?!`, `!!!`) is dropped.
    """

    first_fragment: bool = True
    first_fragment_min_chars: Annotated[int, msgspec.Meta(ge=1)] = 12
    max_chars: Annotated[int, msgspec.Meta(ge=20, le=4000)] = 300
    eager_release: bool = True


class SentenceChunker:
    """Per-stream chunker: whole sentences, a short first fragment, tags kept whole.

    Args:
        settings: the validated settings; defaults when omitted.
    """

    def __init__(self, settings: SentenceSettings | None = None) -> None:
        self.settings = settings or SentenceSettings()
        self._buffer, self._pos, self._first, self._dropping = "", 0, True, False

    def push(self, text: str) -> list[str]:
        """Add a text delta; return the segments it completes, in order."""
        self._buffer += text
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """The text has ended: return the remaining segments; the chunker is then empty."""
        segments = self._drain(final=True)
        self._clear()
        return segments

    def reset(self) -> None:
        """Forget buffered text; the next segment is a first segment again."""
        self._clear()
        self._first = True

    def _clear(self) -> None:
        """Forget buffered text, keeping whether the next segment is a first one."""
        self._buffer = ""
        self._pos = 0  # where the undecided text starts in `_buffer`
        self._dropping = False

    # Linearity: the text before `_pos` is done and never looked at again, and each decision
    # reads a window of `max_chars` + 2 characters after `_pos` (a cut never lies further), so
    # a push costs O(len(text) * max_chars) however large it is, and `_buffer` is compacted
    # once per push, not once per segment.

    def _drain(self, final: bool) -> list[str]:
        segments: list[str] = []
        while True:
            self._trim_start()
            found = self._find_cut(final)
            if found is None:
                break
            cut, eager = found
            segment = self._buffer[self._pos : self._pos + cut].strip()
            self._pos += cut
            self._dropping = eager
            if segment:
                segments.append(segment)
                self._first = False
        self._buffer, self._pos = self._buffer[self._pos :], 0
        return segments

    def _trim_start(self) -> None:
        # Dropping spans deltas: after "Really?" the "!" may arrive in the next push.
        if self._dropping:
            end = _DANGLING_RUN.match(self._buffer, self._pos).end()
            self._dropping = end == len(self._buffer)
            self._pos = end
        self._pos = _SPACE_RUN.match(self._buffer, self._pos).end()

    def _find_cut(self, final: bool) -> tuple[int, bool] | None:
        """Return (end of the next segment, whether it was an eager cut), or None to wait.

        Offsets are relative to `_pos`. Candidates are decided in order; an undecided one (it
        needs text not yet received) blocks every later one, which keeps streamed and
        whole-text cuts identical.
        """
        limit = self.settings.max_chars
        rest = len(self._buffer) - self._pos
        if not rest:
            return None
        window = self._buffer[self._pos : self._pos + limit + 2]
        for match in _CANDIDATE.finditer(window):
            kind = match.lastgroup
            if kind in ("clause", "dash") and not (self._first and self.settings.first_fragment):
                continue
            eager = self._eager_cut(window, match) if kind == "end" else None
            cut = eager or match.end()
            if cut > limit:
                break
            if eager:
                return cut, True
            if kind == "para":
                decided: bool | None = True
            elif kind == "end":
                decided = self._ends_sentence(window, rest, match, final)
            else:
                decided = self._clause_ends_fragment(window, rest, cut, final)
            if decided is None:
                return None
            if decided:
                return cut, False
        if rest > limit:
            return self._limit_cut(window)
        return (rest, False) if final else None

    def _eager_cut(self, window: str, match: re.Match[str]) -> int | None:
        """End of a sentence at its first `!`/`?`, when no quote or bracket is left open."""
        run = match.group()
        marks = [i for i, char in enumerate(run) if char in "!?"]
        if not self.settings.eager_release or not marks:
            return None
        cut = match.start() + marks[0] + 1
        before = window[:cut]
        balanced = before.count('"') % 2 == 0 and all(
            before.count(a) == before.count(b) for a, b in _PAIRS
        )
        return cut if balanced and not _open_tag_before(before, cut) else None

    def _next_word_start(self, offset: int) -> int | None:
        """The first non-space character at or after `offset` (relative), if received."""
        found = _NON_SPACE.search(self._buffer, self._pos + offset)
        return None if found is None else found.start() - self._pos

    def _ends_sentence(
        self, window: str, rest: int, match: re.Match[str], final: bool
    ) -> bool | None:
        """Decide whether a terminator run ends a sentence; None while that is unknown."""
        run, end = match.group().rstrip(CLOSERS), match.end()
        if end == rest:
            return True if final else None
        if not window[end].isspace():
            return False  # `3.5`, `example.com`, `."He`
        if len(run) > 1 or "…" in run or run != match.group():
            # After an ellipsis or a closing quote a lowercase word continues the sentence:
            # "I think... maybe", "\"Stop!\" she said". Decided by the next word's first letter.
            following = self._next_word_start(end)
            if following is None:
                return True if final else None
            return not self._buffer[self._pos + following].islower()
        if run in "!?":
            return True
        before = window[: match.start()]
        word = before.split()[-1] if before and not before[-1].isspace() else ""
        token = word.lstrip("\"'“‘([{«")
        if f"{token.lower()}." in ABBREVIATIONS or (len(token) == 1 and token.isupper()):
            return False
        line = before[: len(before) - len(word)].rsplit("\n", 1)[-1]
        # "1. Boil the water." at the start of a line is a list item, not a sentence "1."
        return not (token.isdigit() and len(token) <= 2 and not line.strip())

    def _clause_ends_fragment(
        self, window: str, rest: int, cut: int, final: bool
    ) -> bool | None:
        """Decide whether the clause punctuation ending at `cut` ends the first fragment."""
        if cut == rest:
            return False if final else None
        if not window[cut].isspace():
            return False  # `1,000`, `10:30`, `https://`
        fragment = window[:cut].strip()
        long_enough = len(fragment) >= self.settings.first_fragment_min_chars
        return long_enough and not _open_tag_before(fragment, len(fragment))

    def _limit_cut(self, window: str) -> tuple[int, bool]:
        """Cut a sentence that runs past `max_chars`: last clause, else last space, else hard."""
        limit = self.settings.max_chars
        window = window[: limit + 1]
        clauses = [m.end() for m in _CLAUSE_IN_WINDOW.finditer(window) if m.end() <= limit]
        if clauses and clauses[-1] >= limit // 2 and not _open_tag_before(window, clauses[-1]):
            return clauses[-1], False
        for space in range(len(window) - 1, 0, -1):
            if window[space].isspace() and not _open_tag_before(window, space):
                return space, False
        return limit, False


def _open_tag_before(text: str, end: int) -> bool:
    """Whether `text[:end]` ends inside an unclosed tag (only its last 64 characters matter:
    a tag name is at most 42 long)."""
    return _OPEN_TAG.search(text, max(0, end - 64), end) is not None


@hookimpl
def morpheus_chunkers() -> list[Component]:
    """Offer the sentence chunker."""
    return [
        Component(
            name="sentence",
            kind="chunker",
            create=SentenceChunker,
            settings=SentenceSettings,
            description="Punctuation-aware sentences with a short first fragment; tags kept whole.",
        )
    ]
