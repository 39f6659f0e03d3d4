"""Engine output on its way to the stitcher: bus events, their duration, pacing.

Each engine output becomes a `PCMChunk` or `TokenFrames` stamped with its segment and
generation and its duration feeds the rate controller (`engine_stage.StageState.hand_on`); both
kinds of turn run (`host.engine_turn`, `host.segment_turn`) then wait while the client's buffer
is full (`pace`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import numpy as np
from morpheus_tts.host.contracts import EngineCapabilities
from morpheus_tts.host.events import PCMChunk, TokenFrames
from morpheus_tts.host.rate import RateController

if TYPE_CHECKING:
    from morpheus_tts.host.pipeline import UtteranceSpec

MAX_PAUSE_S = 0.25  # re-check the playback model at least this often while paused


def wrap_output(
    caps: EngineCapabilities,
    output: np.ndarray,
    stream_id: str,
    segment: int,
    seq: int,
    generation: int,
    trace: dict[str, str] | None,
) -> PCMChunk | TokenFrames:
    """An engine's output as the bus event the stitch stage takes."""
    common = dict(
        stream_id=stream_id, generation=generation, seq=seq, segment=segment, trace=trace
    )
    if caps.output == "tokens":
        return TokenFrames(frames=output, codec=caps.codec or "", **common)
    return PCMChunk(
        samples=np.asarray(output, dtype=np.float32), sample_rate=caps.sample_rate, **common
    )


def duration_ms(event: PCMChunk | TokenFrames, spec: UtteranceSpec) -> float:
    """How much audio an output holds (codec frames through their codec's frame rate)."""
    if isinstance(event, PCMChunk):
        return event.duration_ms
    codec = spec.codecs.get(event.codec) or spec.codec
    return 1000.0 * len(event.frames) / codec.frame_rate if codec else 0.0


def ms_since(started: float) -> float:
    """Milliseconds from `started` (a `time.perf_counter()` reading) to now."""
    return 1000.0 * (time.perf_counter() - started)


async def pace(rate: RateController, next_audio_ms: float | None) -> None:
    """Wait while the client holds more audio than it needs (overflow)."""
    # The model drains with the clock, not with an event: polling it is the point.
    while (wait_s := rate.pause_s(next_audio_ms=next_audio_ms)) > 0:  # noqa: ASYNC110
        await anyio.sleep(min(wait_s, MAX_PAUSE_S))
