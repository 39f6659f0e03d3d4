"""The typed events that carry one utterance through the pipeline.

Every event names its stream (`stream_id`), the turn it belongs to (`generation`, bumped on
barge-in: stages drop events of an older generation) and its position (`seq`, counted per
stage output). Events are frozen msgspec Structs with one tagged base, so `match` works on them
and they stay cheap to create on the hot path.

`trace` carries the W3C trace context (`traceparent`/`tracestate`) across memory streams, since
OpenTelemetry context does not follow an object from one task to another by itself.
"""

from __future__ import annotations

import msgspec
import numpy as np


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every bus event."""

    stream_id: str
    generation: int = 0
    seq: int = 0
    trace: dict[str, str] | None = None


class TextDelta(Event, frozen=True, kw_only=True, tag="text_delta"):
    """A piece of text. Into the chunker: raw deltas; out of it: whole segments.

    `final=True` ends the text of a turn (its `text` may be empty).
    """

    text: str
    final: bool = False
    segment: int = 0


class TokenFrames(Event, frozen=True, kw_only=True, tag="token_frames"):
    """Codec frames from a token engine: an int array shaped (frames, codebooks)."""

    frames: np.ndarray
    codec: str
    segment: int = 0
    final: bool = False


class PCMChunk(Event, frozen=True, kw_only=True, tag="pcm_chunk"):
    """Mono float32 audio.

    `start` is the offset of the first sample in the stream, in samples at `sample_rate`.
    `segment` is the index of the text segment that produced it; `final` marks the last chunk
    of the segment (engine side) or of the utterance (stitcher side).
    """

    samples: np.ndarray
    sample_rate: int
    start: int = 0
    segment: int = 0
    final: bool = False

    @property
    def duration_ms(self) -> float:
        """Length of the chunk in milliseconds."""
        return 1000.0 * len(self.samples) / self.sample_rate


class BargeIn(Event, frozen=True, kw_only=True, tag="barge_in"):
    """Stop speaking now: cut (`fade_ms=0`) or fade out over 10-30 ms, drop everything older.

    Published on the utterance's control bus (`host.bus`), ahead of queued audio: its
    `generation` is the new one. `delivered` is how many output samples the client had been
    sent when it came (what it can have heard); the engine stage turns it into the engine's
    units for `EngineTurn.interrupt`.
    """

    fade_ms: float = 0.0
    delivered: int = 0
