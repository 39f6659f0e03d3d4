"""The stitch stage of an utterance: decode codec frames, time-stretch, stitch, emit PCM.

Each segment's frames go through one codec decoder (a turn of a turn-shaped engine is one
segment, so one decoder for the whole turn); the stitcher joins segments with its seam and
resamples to the output rate. A barge-in (`BargeIn` on the control bus) cancels the main loop
and the stream ends with the stitcher's fade.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from morpheus_tts.host.events import PCMChunk, TokenFrames
from morpheus_tts.host.speed import SegmentStretcher

if TYPE_CHECKING:
    from morpheus_tts.host.pipeline import Utterance, UtteranceSpec


async def stitch_stage(
    utt: Utterance,
    raw_in: ObjectReceiveStream[PCMChunk | TokenFrames],
    audio_out: ObjectSendStream[PCMChunk],
) -> None:
    """Decode codec frames, time-stretch if needed, and stitch into the output stream."""
    spec, stats, rate = utt.spec, utt.stats, utt.rate
    stitcher = spec.stitcher
    decoders: dict[str, Any] = {}
    stretch = SegmentStretcher(spec.speed) if _needs_stretch(spec) else None
    start = 0
    seq = 0
    last_segment = 0
    last_rate = spec.engine.engine.capabilities.sample_rate
    tokens: int | None = None  # codec frames behind the latest output (token engines)
    underflows = 0  # reported to the probe so far

    async def emit(samples: np.ndarray, final: bool = False) -> None:
        nonlocal start, seq, underflows
        if len(samples) == 0 and not final:
            return
        ready_at = time.perf_counter()
        if stats.first_audio_at is None and len(samples):
            stats.first_audio_at = ready_at
        rate.emitted(len(samples))
        if final:
            rate.finish()
            stats.finished_at = ready_at
        chunk = PCMChunk(
            stream_id=spec.stream_id, generation=utt.generation, seq=seq, samples=samples,
            sample_rate=stitcher.sample_rate, start=start, segment=last_segment, final=final,
            trace=utt.probe.trace,
        )
        buffer_ms = rate.buffer_ms() if rate.buffer.playing else None
        while underflows < rate.underflows:  # the client ran dry since the last chunk
            underflows += 1
            utt.probe.record_underflow(buffer_ms)
        utt.probe.on_chunk(chunk, ready_at, chunk_tokens=tokens, buffer_ms=buffer_ms)
        await audio_out.send(chunk)
        start += len(samples)
        seq += 1
        stats.samples_out = start

    async def push(samples: np.ndarray, rate_hz: int, segment: int) -> None:
        if stretch is None:
            await emit(stitcher.push(samples, rate_hz, segment))
            return
        # The stretcher releases a whole segment once the next one begins.
        held_segment = stretch.segment
        done = stretch.push(samples, rate_hz, segment)
        if len(done):
            await emit(stitcher.push(done, rate_hz, held_segment))

    def flush_decoders() -> np.ndarray:
        tail = [decoder.flush() for decoder in decoders.values()]
        decoders.clear()
        return np.concatenate([np.zeros(0, np.float32), *tail])

    async with raw_in, audio_out:
        with utt._stitching:
            async for event in raw_in:
                if event.generation < utt.generation:
                    continue  # audio of an interrupted turn
                if event.segment != last_segment and decoders:
                    # Each segment is its own code sequence: finish decoding it (its held-back
                    # tail belongs to it, not to the next segment) and start the next afresh.
                    await push(flush_decoders(), last_rate, last_segment)
                if isinstance(event, TokenFrames):
                    codec = spec.codecs.get(event.codec) or spec.codec
                    if codec is None:
                        raise RuntimeError(f"engine emitted {event.codec} frames but has no codec")
                    if event.codec not in decoders:
                        decoders[event.codec] = codec.decoder()
                    decoder = decoders[event.codec]
                    samples = await anyio.to_thread.run_sync(decoder.decode, event.frames)
                    rate_hz, tokens = codec.sample_rate, len(event.frames)
                else:
                    samples, rate_hz = event.samples, event.sample_rate
                await push(samples, rate_hz, event.segment)
                last_segment, last_rate = event.segment, rate_hz
            await push(flush_decoders(), last_rate, last_segment)
            if stretch is not None:
                await emit(stitcher.push(stretch.flush(), last_rate, last_segment))
            await emit(stitcher.flush(), final=True)
            return
        # Barge-in: whatever the stitcher holds, faded over at most fade_ms, ends the stream.
        await emit(stitcher.fade_out(utt.fade_ms or 0.0), final=True)


def _needs_stretch(spec: UtteranceSpec) -> bool:
    caps = spec.engine.engine.capabilities
    return not caps.native_speed and not math.isclose(spec.speed, 1.0)
