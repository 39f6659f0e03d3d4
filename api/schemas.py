"""Request and response bodies of the speech endpoints, as msgspec Structs.

`SpeechRequest` is OpenAI's `CreateSpeechRequest` (unknown fields rejected, as OpenAI does)
plus Morpheus's documented extension fields; `check_speech` applies the limits msgspec's types
do not (lengths, the speed range), with OpenAI's messages and codes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec
from morpheus_tts.api.errors import invalid_value
from morpheus_tts.api.textguard import clean_text
from morpheus_tts.host.speed import MAX_SPEED, MIN_SPEED

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
StreamFormat = Literal["audio", "sse"]

MAX_INPUT_CHARS = 4096
MAX_INSTRUCTIONS_CHARS = 4096
# Enough for 4096 + 4096 characters even when every one is a JSON `\uXXXX` surrogate pair.
MAX_SPEECH_BODY_BYTES = 256 * 1024

OptionValue = str | int | float | bool


class VoiceRef(msgspec.Struct, forbid_unknown_fields=True):
    """OpenAI's object form of `voice`: `{"id": "..."}`."""

    id: str


class SpeechRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of `POST /v1/audio/speech`.

    OpenAI's fields keep OpenAI's meaning; an explicit `null` for an optional one means its
    default. Extension fields (not in OpenAI's API; the official SDKs send them via
    `extra_body=`):

    Args:
        model: a loaded engine or a model alias (`tts-1`, `orpheus`, ...).
        input: the text, 1-4096 characters.
        voice: a voice of the engine, a voice alias (`alloy`, `tara`), `engine:voice`, or
            `{"id": ...}` with one of those.
        instructions: style prompt, at most 4096 characters; handed to the engine as
            `options["instructions"]` (engines without style control ignore it).
        response_format: mp3 (default), opus, aac, flac, wav or pcm.
        speed: 0.25-4.0 (default 1.0).
        stream_format: "audio" (default) or "sse".
        low_latency: extension: prefer an early first chunk over throughput.
        pace: extension: hold synthesis to the listener's playback (at most `[server]
            buffer_max_ms` ahead of real time), for players that play as they receive.
            Default false: audio comes as fast as it is made, as from OpenAI, so clients that
            read the whole file first (SDK `create()`, OpenWebUI, curl) are not slowed down.
        options: extension: engine-specific knobs (a flat object of scalars), handed to the
            engine as `SynthesisRequest.options`.
    """

    model: str
    input: str
    voice: str | VoiceRef
    instructions: str | None = None
    response_format: ResponseFormat | None = None
    speed: float | None = None
    stream_format: StreamFormat | None = None
    low_latency: bool = False
    pace: bool = False
    options: dict[str, OptionValue] | None = None

    @property
    def voice_name(self) -> str:
        """The voice, whichever form it came in."""
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice

    @property
    def format(self) -> ResponseFormat:
        """The response format, mp3 when not given."""
        return self.response_format or "mp3"

    @property
    def rate(self) -> float:
        """The speed, 1.0 when not given."""
        return 1.0 if self.speed is None else self.speed

    @property
    def sse(self) -> bool:
        """True for `stream_format: "sse"`."""
        return self.stream_format == "sse"

    def engine_options(self) -> dict[str, Any]:
        """`options` plus `instructions`, for `SpeakRequest.options`."""
        merged: dict[str, Any] = dict(self.options or {})
        if self.instructions:
            merged["instructions"] = self.instructions
        return merged


def check_text(value: str, param: str, limit: int, *, required: bool = True) -> str:
    """OpenAI's length rules for a text field, plus `api.textguard`'s character rules.

    Returns:
        The text to speak (zero-width characters and emoji removed).

    Raises:
        OpenAIError: 400 `empty_string` (blank when required), `string_above_max_length`,
            `invalid_characters` or `no_speakable_text` (when required).
    """
    return clean_text(value, param, limit, whole=required)


def check_speed(speed: float, param: str = "speed") -> None:
    """OpenAI's range rule for speed (0.25-4.0).

    Raises:
        OpenAIError: 400 `decimal_below_min_value` or `decimal_above_max_value`.
    """
    if not math.isfinite(speed) or speed < MIN_SPEED:
        raise invalid_value(
            f"Invalid '{param}': decimal below minimum value. Expected a value >= {MIN_SPEED}, "
            f"but got {speed} instead.",
            param,
            "decimal_below_min_value",
        )
    if speed > MAX_SPEED:
        raise invalid_value(
            f"Invalid '{param}': decimal above maximum value. Expected a value <= {MAX_SPEED}, "
            f"but got {speed} instead.",
            param,
            "decimal_above_max_value",
        )


def check_speech(request: SpeechRequest) -> None:
    """Every limit of a decoded speech request that its types do not already enforce.

    Raises:
        OpenAIError: 400 naming the field.
    """
    check_text(request.input, "input", MAX_INPUT_CHARS)
    if request.instructions is not None:
        check_text(request.instructions, "instructions", MAX_INSTRUCTIONS_CHARS, required=False)
    if not request.model:
        raise invalid_value("Invalid 'model': empty string.", "model", "empty_string")
    if not request.voice_name:
        param = "voice.id" if isinstance(request.voice, VoiceRef) else "voice"
        raise invalid_value(f"Invalid '{param}': empty string.", param, "empty_string")
    check_speed(request.rate)


# -- responses -------------------------------------------------------------------------------


class Usage(msgspec.Struct, frozen=True):
    """Token usage of one speech request (see docs/api.md for how it is counted)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int


class AudioDelta(msgspec.Struct, frozen=True, tag_field="type", tag="speech.audio.delta"):
    """An SSE event: the next piece of the encoded audio, base64."""

    audio: str


class AudioDone(msgspec.Struct, frozen=True, tag_field="type", tag="speech.audio.done"):
    """The last SSE event of a successful stream."""

    usage: Usage


class ModelObject(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of `GET /v1/models` (OpenAI's shape plus the engine it resolves to)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    engine: str | None = None


class ModelList(msgspec.Struct, frozen=True):
    """`GET /v1/models`."""

    data: list[ModelObject]
    object: Literal["list"] = "list"


class LegacySpeakRequest(msgspec.Struct, kw_only=True):
    """The body of the legacy `POST /speak`; like the old server, other keys are ignored.

    Args:
        text: what to say.
        voice: a voice or voice alias (default: the default engine's default voice).
        speed: 0.25-4.0.
    """

    text: str
    voice: str | None = None
    speed: float = 1.0


class LegacySpeakResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The old JSON answer of `/speak` (with `Accept: application/json`), plus the engine."""

    status: str
    voice: str
    output_file: str
    generation_time: float
    url: str
    engine: str
