"""Orpheus's token layout: the prompt, the special ids, and audio tokens <-> SNAC codes.

Orpheus is a Llama 3 model whose vocabulary ends in `<custom_token_N>` tokens (id 128256 + N).
It speaks in frames of 7 audio tokens; slot `j` of a frame carries code `c` (0..4095) as token
`128266 + j * 4096 + c`. The slots hold SNAC's three levels in this order (frame `i`)::

    slot: 0      1        2        3          4          5          6
    code: c0[i]  c1[2i]   c2[4i]   c2[4i+1]   c1[2i+1]   c2[4i+2]   c2[4i+3]

This module turns generated ids into (frames, 7) code arrays in slot order, the representation
the `snac` codecs decode. Unlike the reference decoders it keeps code 0, rejects code 4096 and
every id outside a slot's range, and never lets one bad token shift the alignment of later frames.
Nothing here imports llama.cpp: the engine passes in its tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import numpy as np

CUSTOM_TOKEN_BASE = 128256
AUDIO_TOKEN_BASE = 128266
CODEBOOK_SIZE = 4096
SLOTS = 7

BEGIN_OF_TEXT = 128000
END_OF_TEXT = 128009
START_OF_SPEECH = 128257
END_OF_SPEECH = 128258
START_OF_HUMAN = 128259
END_OF_HUMAN = 128260
START_OF_AI = 128261
END_OF_AI = 128262
PAD = 128263
LAST_AUDIO_TOKEN = AUDIO_TOKEN_BASE + SLOTS * CODEBOOK_SIZE - 1

VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")
EMOTION_TAGS = (
    "<laugh>",
    "<chuckle>",
    "<sigh>",
    "<cough>",
    "<sniffle>",
    "<groan>",
    "<yawn>",
    "<gasp>",
)

# Control tokens a user must not smuggle into the prompt through the text.
_INJECTED = re.compile(r"<custom_token_\d+>|<\|[a-z_]+\|>")
_CUSTOM_TOKEN = re.compile(r"<custom_token_(\d+)>")


def audio_token(slot: int, code: int) -> int:
    """The token id that carries `code` in `slot`.

    Raises:
        ValueError: slot outside 0..6 or code outside 0..4095.
    """
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot must be 0..{SLOTS - 1}, got {slot}")
    if not 0 <= code < CODEBOOK_SIZE:
        raise ValueError(f"code must be 0..{CODEBOOK_SIZE - 1}, got {code}")
    return AUDIO_TOKEN_BASE + slot * CODEBOOK_SIZE + code


def split_audio_token(token_id: int) -> tuple[int, int] | None:
    """(slot, code) of an audio token, or None when the id is no audio token at all."""
    offset = token_id - AUDIO_TOKEN_BASE
    if not 0 <= offset < SLOTS * CODEBOOK_SIZE:
        return None
    return divmod(offset, CODEBOOK_SIZE)


def frames_to_tokens(frames: np.ndarray) -> list[int]:
    """Token ids of (frames, 7) codes in slot order (the inverse of `FrameAssembler`)."""
    frames = np.asarray(frames, dtype=np.int64).reshape(-1, SLOTS)
    if frames.size and (frames.min() < 0 or frames.max() >= CODEBOOK_SIZE):
        raise ValueError(f"codes must be 0..{CODEBOOK_SIZE - 1}")
    offsets = AUDIO_TOKEN_BASE + CODEBOOK_SIZE * np.arange(SLOTS)
    return (frames + offsets).ravel().tolist()


class FrameAssembler:
    """Collects generated ids into whole frames, one stream at a time.

    Rules, in order, for each id:

    - `END_OF_SPEECH` (or any id in `stop_ids`) ends the stream; a partial frame is dropped.
    - An audio token for the slot the current frame expects is kept.
    - An audio token for another slot, or a code outside 0..4095 for the expected slot, is
      rejected with the partial frame; if it belongs to slot 0 it starts the next frame, so a
      single stray token costs at most one frame and never misaligns the rest.
    - Any other id (start-of-speech, padding, text) is skipped.

    Attributes:
        rejected: ids rejected so far (stray audio tokens plus the partial frames they broke).
        ended: end of speech was seen.
    """

    def __init__(self, stop_ids: Iterable[int] = ()) -> None:
        self._stop_ids = {END_OF_SPEECH, *stop_ids}
        self._partial: list[int] = []
        self._frames: list[list[int]] = []
        self.rejected = 0
        self.ended = False

    def push(self, token_id: int) -> None:
        """Add one generated id."""
        if self.ended:
            return
        if token_id in self._stop_ids:
            self.ended = True
            self.rejected += len(self._partial)
            self._partial = []
            return
        split = split_audio_token(token_id)
        if split is None:
            if token_id > LAST_AUDIO_TOKEN:  # past the last slot: a broken audio token
                self._reject(token_id)
            return
        slot, code = split
        if slot == len(self._partial):
            self._partial.append(code)
            if len(self._partial) == SLOTS:
                self._frames.append(self._partial)
                self._partial = []
            return
        if slot == 0:  # the partial frame was cut short: drop it, this token starts the next
            self.rejected += len(self._partial)
            self._partial = [code]
        else:
            self._reject(token_id)

    def _reject(self, token_id: int) -> None:
        self.rejected += len(self._partial) + 1
        self._partial = []

    def extend(self, token_ids: Iterable[int]) -> None:
        """Add several ids in order."""
        for token_id in token_ids:
            self.push(token_id)

    @property
    def ready(self) -> int:
        """Whole frames waiting to be taken."""
        return len(self._frames)

    def take(self, max_frames: int | None = None) -> np.ndarray:
        """Remove and return up to `max_frames` whole frames as an int32 (frames, 7) array."""
        count = len(self._frames) if max_frames is None else min(max_frames, len(self._frames))
        taken, self._frames = self._frames[:count], self._frames[count:]
        return np.asarray(taken, dtype=np.int32).reshape(-1, SLOTS)


class CustomTokenParser:
    """Turns streamed completion text (`<custom_token_N>` pieces) back into token ids.

    Servers stream text, and a token's text may be split across two SSE events; the unfinished
    tail is kept until the next piece arrives.
    """

    def __init__(self) -> None:
        self._tail = ""

    def feed(self, text: str) -> list[int]:
        """Add streamed text; return the ids of the custom tokens now complete."""
        text = self._tail + text
        ids = [CUSTOM_TOKEN_BASE + int(n) for n in _CUSTOM_TOKEN.findall(text)]
        cut = text.rfind("<")
        self._tail = text[cut:] if cut != -1 and ">" not in text[cut:] else ""
        return ids


def clean_text(text: str) -> str:
    """The user's text without control-token spellings (emotion tags such as <laugh> stay)."""
    return _INJECTED.sub("", text).strip()


def prompt_ids(tokenize: Callable[[str], list[int]], voice: str, text: str) -> list[int]:
    """The canonical Orpheus prompt as ids.

    Args:
        tokenize: text -> ids, adding BOS (128000) and parsing no special tokens.
        voice: one of `VOICES`.
        text: what to say; emotion tags are passed through.
    """
    body = tokenize(f"{voice}: {clean_text(text)}")
    return [START_OF_HUMAN, *body, END_OF_TEXT, END_OF_HUMAN, START_OF_AI, START_OF_SPEECH]


def prompt_text(voice: str, text: str) -> str:
    """The canonical prompt spelt as text, for servers that tokenize it themselves.

    `<custom_token_N>`, `<|begin_of_text|>` and `<|eot_id|>` are parsed as the special tokens
    they name by llama.cpp and vLLM (a server that adds BOS itself puts one more in front).
    """
    return (
        f"<custom_token_{START_OF_HUMAN - CUSTOM_TOKEN_BASE}><|begin_of_text|>"
        f"{voice}: {clean_text(text)}<|eot_id|>"
        f"<custom_token_{END_OF_HUMAN - CUSTOM_TOKEN_BASE}>"
        f"<custom_token_{START_OF_AI - CUSTOM_TOKEN_BASE}>"
        f"<custom_token_{START_OF_SPEECH - CUSTOM_TOKEN_BASE}>"
    )
