"""One utterance: chunker -> engine -> codec -> stitcher, as tasks joined by bounded streams.

Each stage is a task in the utterance's TaskGroup, and each arrow is an anyio memory object
stream with a small buffer, so a slow consumer slows the engine instead of growing memory.
Blocking inference runs one step per worker-thread call behind the engine's CapacityLimiter:
cancelling the utterance (client gone, barge-in) is noticed between steps, so every stage and
the worker stop within one engine step and nothing is left running.

The TaskGroup lives in the `open_utterance` context manager, never across the `yield` of an
async generator (anyio's cancel scopes must exit in the task that entered them).
"""

from __future__ import annotations

import functools
import math
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import numpy as np
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from host.contracts import Chunker, Codec, EngineCapabilities, Stitcher, SynthesisRequest
from host.events import PCMChunk, TextDelta, TokenFrames
from host.registry import LoadedEngine
from host.speed import SegmentStretcher

TEXT_BUFFER = 64  # text deltas are tiny; let a fast producer run ahead
SEGMENT_BUFFER = 2  # at most two segments queued ahead of the engine
AUDIO_BUFFER = 2  # chunks between stages: backpressure reaches the engine within two chunks

_DONE = object()


class UtteranceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one utterance needs besides its text, resolved by the runtime."""

    engine: LoadedEngine
    voice: str | None
    chunker: Chunker | None
    stitcher: Stitcher
    codec: Codec | None = None
    speed: float = 1.0
    options: dict[str, Any] = {}
    low_latency: bool = False
    stream_id: str = msgspec.field(default_factory=lambda: secrets.token_urlsafe(12))


class UtteranceStats(msgspec.Struct, kw_only=True):
    """What happened so far, for progress bars, headers, metrics and benchmarks."""

    started_at: float = msgspec.field(default_factory=time.perf_counter)
    first_audio_at: float | None = None
    segments: int = 0
    characters_spoken: int = 0
    samples_out: int = 0

    @property
    def time_to_first_audio_ms(self) -> float | None:
        """Milliseconds from start to the first stitched sample, once there is one."""
        if self.first_audio_at is None:
            return None
        return 1000.0 * (self.first_audio_at - self.started_at)


class Utterance:
    """The handle a caller holds while an utterance runs.

    Send text with `send_text` (or give it whole to `open_utterance`), end it with
    `end_text`, and read 24 kHz (or the configured rate) PCMChunks from `audio`. The last chunk
    has `final=True`. `cancel()` stops every stage.
    """

    def __init__(
        self,
        spec: UtteranceSpec,
        text_in: ObjectSendStream[TextDelta],
        audio: ObjectReceiveStream[PCMChunk],
        cancel_scope: anyio.CancelScope,
    ) -> None:
        self.spec = spec
        self.stream_id = spec.stream_id
        self.generation = 0
        self.audio = audio
        self.stats = UtteranceStats()
        self._text_in = text_in
        self._cancel_scope = cancel_scope
        self._text_seq = 0

    async def send_text(self, text: str, *, final: bool = False) -> None:
        """Push a text delta; `final=True` ends the text."""
        await self._text_in.send(
            TextDelta(
                stream_id=self.stream_id,
                generation=self.generation,
                seq=self._text_seq,
                text=text,
                final=final,
            )
        )
        self._text_seq += 1
        if final:
            await self._text_in.aclose()

    async def end_text(self) -> None:
        """No more text will come."""
        await self.send_text("", final=True)

    def cancel(self) -> None:
        """Stop every stage now; the engine's current step finishes and is discarded."""
        self._cancel_scope.cancel()


@asynccontextmanager
async def open_utterance(spec: UtteranceSpec, text: str | None = None) -> AsyncIterator[Utterance]:
    """Run one utterance's stages for the duration of the `async with` block.

    Args:
        spec: the resolved engine, voice and per-stream chunker/stitcher.
        text: the whole text, if known up front; otherwise call `Utterance.send_text`.

    Leaving the block early cancels whatever is still running.
    """
    text_send, text_recv = anyio.create_memory_object_stream[TextDelta](TEXT_BUFFER)
    seg_send, seg_recv = anyio.create_memory_object_stream[TextDelta](SEGMENT_BUFFER)
    raw_send, raw_recv = anyio.create_memory_object_stream[PCMChunk | TokenFrames](AUDIO_BUFFER)
    out_send, out_recv = anyio.create_memory_object_stream[PCMChunk](AUDIO_BUFFER)
    async with anyio.create_task_group() as tg:
        utterance = Utterance(spec, text_send, out_recv, tg.cancel_scope)
        tg.start_soon(_chunk_stage, spec, text_recv, seg_send)
        tg.start_soon(_engine_stage, spec, utterance.stats, seg_recv, raw_send)
        tg.start_soon(_stitch_stage, spec, utterance.stats, raw_recv, out_send)
        if text is not None:
            tg.start_soon(functools.partial(utterance.send_text, text, final=True))
        try:
            yield utterance
        finally:
            # Normal exit: the stages have finished or are about to; early exit: stop them.
            tg.cancel_scope.cancel()
            out_recv.close()


async def _chunk_stage(
    spec: UtteranceSpec,
    text_in: ObjectReceiveStream[TextDelta],
    segments_out: ObjectSendStream[TextDelta],
) -> None:
    """Cut text deltas into segments; pass them through whole for incremental engines."""
    index = 0
    async with text_in, segments_out:
        async for delta in text_in:
            if spec.chunker is None:
                pieces = [delta.text] if delta.text else []
            else:
                pieces = spec.chunker.push(delta.text)
                if delta.final:
                    pieces += spec.chunker.flush()
            for piece in pieces:
                await segments_out.send(
                    TextDelta(
                        stream_id=spec.stream_id,
                        generation=delta.generation,
                        seq=index,
                        text=piece,
                        segment=index,
                        trace=delta.trace,
                    )
                )
                index += 1
            if delta.final:
                return


async def _engine_stage(
    spec: UtteranceSpec,
    stats: UtteranceStats,
    segments_in: ObjectReceiveStream[TextDelta],
    raw_out: ObjectSendStream[PCMChunk | TokenFrames],
) -> None:
    """Synthesize each segment, one blocking step per worker-thread call."""
    caps = spec.engine.engine.capabilities
    seq = 0
    async with segments_in, raw_out:
        async for segment in segments_in:
            request = SynthesisRequest(
                text=segment.text,
                voice=spec.voice,
                speed=spec.speed if caps.native_speed else 1.0,
                options=spec.options,
                low_latency=spec.low_latency,
            )
            spec.engine.active_streams += 1
            try:
                async for output in _steps(spec.engine, request):
                    await raw_out.send(_wrap(caps, output, segment, seq))
                    seq += 1
            finally:
                spec.engine.active_streams -= 1
            stats.segments += 1
            stats.characters_spoken += len(segment.text)


def _wrap(
    caps: EngineCapabilities, output: np.ndarray, segment: TextDelta, seq: int
) -> PCMChunk | TokenFrames:
    common = dict(
        stream_id=segment.stream_id,
        generation=segment.generation,
        seq=seq,
        segment=segment.segment,
        trace=segment.trace,
    )
    if caps.output == "tokens":
        return TokenFrames(frames=output, codec=caps.codec or "", **common)
    return PCMChunk(
        samples=np.asarray(output, dtype=np.float32), sample_rate=caps.sample_rate, **common
    )


async def _steps(loaded: LoadedEngine, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
    """Iterate an engine's output; a sync iterator is advanced one `next()` per thread call."""
    output = loaded.engine.synthesize(request)
    if isinstance(output, AsyncIterator):
        async for item in output:
            yield item
        return
    iterator: Iterator[np.ndarray] = iter(output)
    step = functools.partial(next, iterator, _DONE)
    try:
        while True:
            item = await anyio.to_thread.run_sync(step, limiter=loaded.limiter)
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


async def _stitch_stage(
    spec: UtteranceSpec,
    stats: UtteranceStats,
    raw_in: ObjectReceiveStream[PCMChunk | TokenFrames],
    audio_out: ObjectSendStream[PCMChunk]
) -> None:
    """Decode codec frames, time-stretch if needed, and stitch into the output stream."""
    stitcher = spec.stitcher
    decoder = spec.codec.decoder() if spec.codec is not None else None
    stretch = SegmentStretcher(spec.speed) if _needs_stretch(spec) else None
    start = 0
    seq = 0
    last_segment = 0
    last_rate = spec.engine.engine.capabilities.sample_rate

    async def emit(samples: np.ndarray, final: bool = False) -> None:
        nonlocal start, seq
        if len(samples) == 0 and not final:
            return
        if stats.first_audio_at is None and len(samples):
            stats.first_audio_at = time.perf_counter()
        await audio_out.send(
            PCMChunk(
                stream_id=spec.stream_id,
                seq=seq,
                samples=samples,
                sample_rate=stitcher.sample_rate,
                start=start,
                segment=last_segment,
                final=final,
            )
        )
        start += len(samples)
        seq += 1
        stats.samples_out = start

    async with raw_in, audio_out:
        async for event in raw_in:
            if isinstance(event, TokenFrames):
                if decoder is None:
                    raise RuntimeError(f"engine emitted {event.codec} frames but has no codec")
                samples = await anyio.to_thread.run_sync(decoder.decode, event.frames)
                rate = spec.codec.sample_rate  # type: ignore[union-attr]
            else:
                samples, rate = event.samples, event.sample_rate
            if stretch is not None:
                # The stretcher releases a whole segment once the next one begins.
                held_segment = last_segment
                samples = stretch.push(samples, rate, event.segment)
                if len(samples):
                    await emit(stitcher.push(samples, rate, held_segment))
            else:
                await emit(stitcher.push(samples, rate, event.segment))
            last_segment, last_rate = event.segment, rate
        tail = decoder.flush() if decoder is not None else np.zeros(0, np.float32)
        if stretch is not None:
            stretch.push(tail, last_rate, last_segment)
            tail = stretch.flush()
        if len(tail):
            await emit(stitcher.push(tail, last_rate, last_segment))
        await emit(stitcher.flush(), final=True)


def _needs_stretch(spec: UtteranceSpec) -> bool:
    caps = spec.engine.engine.capabilities
    return not caps.native_speed and not math.isclose(spec.speed, 1.0)
