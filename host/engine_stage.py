"""The engine stage of an utterance: rate-controlled requests, failover, pacing.

For each text segment it asks the rate controller for a chunk size, runs the engine's steps
under the failover policy (stall timeout, retry smaller, next engine), sends every output on
to the stitcher stamped with the turn's generation, reports chunk timing to the controller, and
waits while the client's buffer is full. Output of a turn interrupted by barge-in is dropped.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import TYPE_CHECKING

import anyio
import numpy as np
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from morpheus_tts.host.contracts import EngineCapabilities, SynthesisRequest
from morpheus_tts.host.events import PCMChunk, TextDelta, TokenFrames
from morpheus_tts.host.failover import Candidate, FailoverPolicy, SegmentLog, is_final_error
from morpheus_tts.host.rate import RateController

if TYPE_CHECKING:
    from morpheus_tts.host.pipeline import Utterance, UtteranceSpec

MAX_PAUSE_S = 0.25  # re-check the playback model at least this often while paused


async def engine_stage(
    utt: Utterance,
    segments_in: ObjectReceiveStream[TextDelta],
    raw_out: ObjectSendStream[PCMChunk | TokenFrames],
) -> None:
    """Synthesize each segment under rate control and failover, pausing on overflow."""
    spec, stats, rate = utt.spec, utt.stats, utt.rate
    policy = FailoverPolicy(
        [Candidate(spec.engine, spec.voice), *spec.failover],
        stall_timeout_s=spec.stall_timeout_s,
        on_failover=utt.probe.record_failover,
        on_unavailable=spec.on_unavailable,
    )
    stats.engine, stats.degraded = policy.engine.name, policy.degraded
    stats.failures = list(policy.failures)
    log = SegmentLog(segments_in, split_first=_low_latency_split(spec))
    audio_sent = False  # once audio left the engine, failover can't replay what was heard
    unrecovered: Exception | None = None  # a failure no later attempt has spoken past yet
    index = 0
    async with segments_in, raw_out:
        while (segment := await log.get(index)) is not None:
            if segment.generation < utt.generation:
                return
            await _pace(rate, rate.expected_audio_ms(len(segment.text)))
            loaded = policy.engine
            caps = loaded.engine.capabilities
            base = SynthesisRequest(
                text=segment.text,
                speed=spec.speed if caps.native_speed else 1.0,
                options=spec.options,
                chunk_size=rate.next_chunk_size(),
                low_latency=rate.low_latency,
            )
            request = policy.request(base, spec.rate.min_chunk)
            utt.probe.on_segment_start(segment.segment, segment.text)
            spoke, failure = await _speak_segment(utt, policy, request, segment, raw_out)
            utt.probe.on_segment_end(segment.segment, spoke)
            audio_sent = audio_sent or spoke > 0
            if failure is not None:
                unrecovered = unrecovered or failure
                policy.failed(failure)  # re-raises once the chain is spent
                stats.engine, stats.degraded = policy.engine.name, policy.degraded
                stats.failures = list(policy.failures)
                # Before any audio: replay it all. After: go on from the next unspoken segment.
                index = (index + (1 if spoke else 0)) if audio_sent else 0
                continue
            if utt.generation != segment.generation:
                return
            if spoke:
                unrecovered = None
            rate.segment_done(len(segment.text))
            stats.segments += 1
            stats.characters_spoken += len(segment.text)
            index += 1
    if unrecovered is not None:
        raise unrecovered  # the text ended before the next attempt spoke: the loss stands


async def _speak_segment(
    utt: Utterance,
    policy: FailoverPolicy,
    request: SynthesisRequest,
    segment: TextDelta,
    raw_out: ObjectSendStream[PCMChunk | TokenFrames],
) -> tuple[int, Exception | None]:
    """Send one segment's audio on; returns the chunks sent and the engine's error, if any."""
    caps = policy.engine.engine.capabilities
    sent = 0
    async with aclosing(policy.steps(request)) as outputs:
        while True:
            started = time.perf_counter()
            try:
                output = await anext(outputs)
            except StopAsyncIteration:
                return sent, None
            except Exception as exc:  # noqa: BLE001 - the engine's failure, for the policy
                if is_final_error(exc):
                    raise  # a bad request: no retry, no other engine
                return sent, exc
            if utt.generation != segment.generation:
                return sent, None  # barge-in: the step's output is discarded
            event = wrap_output(
                caps, output, segment.stream_id, segment.segment, utt.rate.chunks,
                utt.generation, segment.trace,
            )
            counted = caps.chunk_unit is not None or caps.output == "tokens"
            units = request.chunk_size if counted else None
            utt.rate.produced(_duration_ms(event, utt.spec), _ms_since(started), units=units)
            if utt.stats.first_byte_at is None:
                utt.stats.first_byte_at = time.perf_counter()
            await raw_out.send(event)
            sent += 1
            await _pace(utt.rate, None)


def _low_latency_split(spec: UtteranceSpec) -> bool:
    # Waveform engines speak a segment per call: an earlier first audio needs a shorter first
    # call. Token engines get a smaller first chunk instead.
    return spec.low_latency and spec.engine.engine.capabilities.output == "pcm"


async def _pace(rate: RateController, next_audio_ms: float | None) -> None:
    """Wait while the client holds more audio than it needs (overflow)."""
    # The model drains with the clock, not with an event: polling it is the point.
    while (wait_s := rate.pause_s(next_audio_ms=next_audio_ms)) > 0:  # noqa: ASYNC110
        await anyio.sleep(min(wait_s, MAX_PAUSE_S))


def _ms_since(started: float) -> float:
    return 1000.0 * (time.perf_counter() - started)


def _duration_ms(event: PCMChunk | TokenFrames, spec: UtteranceSpec) -> float:
    if isinstance(event, PCMChunk):
        return event.duration_ms
    codec = spec.codecs.get(event.codec) or spec.codec
    return 1000.0 * len(event.frames) / codec.frame_rate if codec else 0.0


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
