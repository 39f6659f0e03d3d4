"""The one check every spoken text passes: speech `input`, legacy `text`, session deltas.

`clean_text` runs before anything is synthesized, so a bad text is a 400 envelope naming the
field, never a 500 or a 200 with truncated or empty audio:

- longer than the field's limit: 400 `string_above_max_length` (OpenAI's message);
- a control character (C0 but tab, newline and carriage return; DEL; C1) or a lone surrogate:
  400 `invalid_characters`, naming the character and its position (engines cut text at a NUL,
  or fail on it);
- zero-width and other format characters (U+200B, U+200D, U+FEFF, soft hyphen, bidi marks) are
  removed, and emoji and pictographs become spaces: engines either skip them or read out their
  names, one hard-cut segment of 300 emoji taking longer than the stall timeout to speak;
- a whole text (not a session delta) must still hold a letter or digit afterwards: 400
  `empty_string` when blank, `no_speakable_text` when only symbols, emoji or zero-width
  characters remain (otherwise the answer would be a 200 with no audio).
"""

from __future__ import annotations

import re

from morpheus_tts.api.errors import invalid_value

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# Format characters (category Cf) that change no sound: zero-width space/joiners, marks, BOM.
_FORMAT = re.compile(r"[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
                     r"\ufeff\ufff9-\ufffb\U000e0001-\U000e007f]")
# Emoji and pictographs, with their variation selectors and keycap mark.
_PICTOGRAPH = re.compile(r"[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff"
                         r"\ufe00-\ufe0f\u20e3]+")
_SPEAKABLE = re.compile(r"[^\W_]")  # a letter or a digit, in any script


def clean_text(value: str, param: str, limit: int, *, whole: bool = True) -> str:
    """Check a text field and return the text engines should get.

    Args:
        value: the text as the client sent it.
        param: the field's name for the error (`"input"`, `"text"`).
        limit: the most characters allowed.
        whole: the complete text of a request (must have something to speak); False for a
            session delta, which may be a lone space or empty.

    Raises:
        OpenAIError: 400 naming `param`, with the codes listed in the module docstring.
    """
    if whole and not value.strip():
        raise invalid_value(
            f"Invalid '{param}': empty string. Expected a string with at least one "
            "non-whitespace character.",
            param,
            "empty_string",
        )
    if len(value) > limit:
        raise invalid_value(
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{limit}, but got a string with length {len(value)} instead.",
            param,
            "string_above_max_length",
        )
    if bad := _CONTROL.search(value):
        raise invalid_value(
            f"Invalid '{param}': control character U+{ord(bad.group()):04X} at position "
            f"{bad.start()}. Remove it; only tab, newline and carriage return are allowed.",
            param,
            "invalid_characters",
        )
    cleaned = _PICTOGRAPH.sub(" ", _FORMAT.sub("", value))
    if whole and not _SPEAKABLE.search(cleaned):
        raise invalid_value(
            f"Invalid '{param}': nothing to speak. Expected at least one letter or digit "
            "(emoji, symbols and zero-width characters are not spoken).",
            param,
            "no_speakable_text",
        )
    return cleaned
