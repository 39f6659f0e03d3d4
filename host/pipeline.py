"""One utterance: chunker -> engine -> codec -> stitcher, as tasks joined by bounded streams.

Each stage is a task in the utterance's TaskGroup, and each arrow is an anyio memory object
stream with a small buffer, so a slow consumer slows the engine instead of growing memory.
Blocking inference runs one step per worker-thread call behind the engine's CapacityLimiter:
cancelling the utterance (client gone, barge-in) is noticed between steps, so every stage and
the worker stop within one engine step and nothing is left running.

There is one stream path, text deltas in and PCM out: the engine stage (`host.engine_stage`)
speaks every utterance as a turn. A turn-shaped engine (`capabilities.incremental_text`) gets
the deltas straight into its own `EngineTurn` (`host.engine_turn`: one segment, one codec
decoder); a segment engine is presented as a turn by its chunker, the adapter
(`host.segment_turn`, LiveKit's StreamAdapter), which cuts the deltas into segments and speaks
them one `synthesize()` call each.

Realtime control lives beside it: `host.rate` picks each request's chunk size and pauses the
engine while the client's buffer is full; `host.failover` times out stalled steps, retries and
moves to the next engine. Barge-in (`Utterance.barge_in`) is a `BargeIn` event published on the
utterance's control bus (`host.bus`), ahead of queued audio: it bumps the generation (every
stage and the reader drop older events); the engine stage stops (its chunker forgets buffered
text; a turn-shaped engine hears `interrupt(heard)` with what the client was sent, then
`close()`); the stitcher ends with a short fade.

The TaskGroup lives in the `open_utterance` context manager, never across the `yield` of an
async generator (anyio's cancel scopes must exit in the task that entered them).
"""

from __future__ import annotations

import functools
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from morpheus_tts.host.bus import ControlBus
from morpheus_tts.host.contracts import Chunker, Codec, Stitcher
from morpheus_tts.host.engine_stage import engine_stage
from morpheus_tts.host.events import BargeIn, Event, PCMChunk, TextDelta, TokenFrames
from morpheus_tts.host.failover import Candidate
from morpheus_tts.host.observer import NULL_OBSERVER
from morpheus_tts.host.rate import RateController, RateSettings
from morpheus_tts.host.registry import LoadedEngine
from morpheus_tts.host.stitch_stage import stitch_stage

if TYPE_CHECKING:
    from morpheus_tts.host.observer import Outcome, UtteranceObserver, UtteranceProbe

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

TEXT_BUFFER = 64  # text deltas are tiny; let a fast producer run ahead
AUDIO_BUFFER = 2  # chunks between stages: backpressure reaches the engine within two chunks


class UtteranceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one utterance needs besides its text, resolved by the runtime.

    `failover` lists the engines to move to (with their voices) when `engine` fails;
    `codecs` holds the codec of every token engine among them. `observer` is told what
    happens (spans, metrics, logs); `request_id`, `response_format` and `trace` (a W3C
    carrier to continue) are for it. `session_id`, `turn` and `user_text` reach a
    turn-shaped engine's `TurnRequest`; `on_unavailable` is told of an engine failover gave
    up on (its recovery probe starts).
    """

    engine: LoadedEngine
    voice: str | None
    chunker: Chunker
    stitcher: Stitcher
    codec: Codec | None = None
    speed: float = 1.0
    options: dict[str, Any] = {}
    low_latency: bool = False
    rate: RateSettings = RateSettings()
    failover: tuple[Candidate, ...] = ()
    codecs: dict[str, Codec] = {}
    stall_timeout_s: float | None = None
    barge_in_fade_ms: float = 20.0
    observer: UtteranceObserver = NULL_OBSERVER
    request_id: str | None = None
    response_format: str | None = None
    trace: dict[str, str] | None = None
    session_id: str | None = None
    turn: int = 1
    user_text: str | None = None
    on_unavailable: Callable[[LoadedEngine, str], None] | None = None
    stream_id: str = msgspec.field(default_factory=lambda: secrets.token_urlsafe(12))


class UtteranceStats(msgspec.Struct, kw_only=True):
    """What happened so far, for progress bars, headers, metrics and benchmarks.

    `engine` is the engine speaking now; `degraded` turns true when failover moved the stream
    off the requested engine (`failures` says why).
    """

    started_at: float = msgspec.field(default_factory=time.perf_counter)
    first_segment_at: float | None = None  # the chunker released the first segment
    first_byte_at: float | None = None  # the engine yielded its first output
    first_audio_at: float | None = None  # the stitcher released the first sample
    finished_at: float | None = None  # the stitcher released the final chunk
    segments: int = 0
    characters_spoken: int = 0
    samples_out: int = 0
    engine: str = ""
    degraded: bool = False
    failures: list[str] = []
    interrupted: bool = False

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
    has `final=True`. Report what the client really took with `consumed`. `barge_in()` stops
    speaking within one chunk; `cancel()` stops every stage.
    """

    def __init__(
        self,
        spec: UtteranceSpec,
        text_in: ObjectSendStream[TextDelta],
        audio: ObjectReceiveStream[PCMChunk],
        cancel_scope: anyio.CancelScope,
        stats: UtteranceStats | None = None,
        probe: UtteranceProbe | None = None,
    ) -> None:
        self.spec = spec
        self.stream_id = spec.stream_id
        self.generation = 0
        self.audio: ObjectReceiveStream[PCMChunk] = _CurrentAudio(self, audio)
        self.stats = stats or UtteranceStats(engine=spec.engine.name)
        self.probe = probe or NULL_OBSERVER.on_request_start(spec, self.stats, None)
        self.rate = RateController(
            spec.rate, sample_rate=spec.stitcher.sample_rate, low_latency=spec.low_latency
        )
        self.fade_ms: float | None = None  # set by barge_in
        self.bus = ControlBus()
        self.barged: BargeIn | None = None  # the barge-in, once it came
        self.delivered_samples = 0.0  # output samples the client was sent (`consumed`)
        self._text_in = text_in
        self._cancel_scope = cancel_scope
        self._producers = anyio.CancelScope()  # the text and engine stages
        self._stitching = anyio.CancelScope()  # the stitcher's main loop
        self._text_seq = 0

    @property
    def interrupted(self) -> bool:
        """True once `barge_in` was called."""
        return self.fade_ms is not None

    async def send_text(self, text: str, *, final: bool = False) -> None:
        """Push a text delta; `final=True` ends the text. Ignored after a barge-in, and once
        the text stage has stopped (it failed: the error comes out of the utterance)."""
        if self.interrupted:
            return
        delta = TextDelta(
            stream_id=self.stream_id, generation=self.generation, seq=self._text_seq,
            text=text, final=final, trace=self.probe.trace,
        )
        try:
            await self._text_in.send(delta)
        except anyio.BrokenResourceError:
            return
        self._text_seq += 1
        if final:
            await self._text_in.aclose()

    async def end_text(self) -> None:
        """No more text will come."""
        await self.send_text("", final=True)

    def consumed(self, samples: float) -> None:
        """The client took `samples` of the audio (a socket accepted them): feeds rate control."""
        self.delivered_samples += samples
        self.rate.consumed(samples)

    def barge_in(self, fade_ms: float | None = None) -> None:
        """Stop speaking now: at most `fade_ms` of faded audio follows, then the final chunk.

        Publishes a `BargeIn` on the control bus with a new generation, so audio already
        queued is dropped by every stage and by the reader of `audio`; the text and engine
        stages stop (a step in flight is cancelled if the engine can stop it, else finishes
        and is discarded: the engine stays usable). `fade_ms=0` cuts.
        """
        if self.interrupted:
            return
        self.fade_ms = self.spec.barge_in_fade_ms if fade_ms is None else max(0.0, fade_ms)
        self.generation += 1
        self.stats.interrupted = True
        self.probe.record_interrupted(round(self.fade_ms))
        self.barged = BargeIn(
            stream_id=self.stream_id, generation=self.generation, fade_ms=self.fade_ms,
            delivered=int(self.delivered_samples), trace=self.probe.trace,
        )
        self.bus.publish(self.barged)

    def _stop_producers(self, event: Event) -> None:
        if isinstance(event, BargeIn):
            self._producers.cancel()

    def _stop_stitching(self, event: Event) -> None:
        if isinstance(event, BargeIn):
            self._stitching.cancel()

    def cancel(self) -> None:
        """Stop every stage now; the engine's current step finishes and is discarded."""
        self._cancel_scope.cancel()


class _CurrentAudio(ObjectReceiveStream[PCMChunk]):
    """The utterance's audio without the chunks of generations older than its own."""

    def __init__(self, utterance: Utterance, receive: ObjectReceiveStream[PCMChunk]) -> None:
        self._utterance, self._receive = utterance, receive

    async def receive(self) -> PCMChunk:
        while True:
            chunk = await self._receive.receive()
            if chunk.generation >= self._utterance.generation:
                return chunk

    def close(self) -> None:
        self._receive.close()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self._receive.aclose()


@asynccontextmanager
async def open_utterance(spec: UtteranceSpec, text: str | None = None) -> AsyncIterator[Utterance]:
    """Run one utterance's stages for the duration of the `async with` block.

    Args:
        spec: the resolved engine, voice and per-stream chunker/stitcher.
        text: the whole text, if known up front; otherwise call `Utterance.send_text`.

    Leaving the block early cancels whatever is still running.
    """
    text_send, text_recv = anyio.create_memory_object_stream[TextDelta](TEXT_BUFFER)
    raw_send, raw_recv = anyio.create_memory_object_stream[PCMChunk | TokenFrames](AUDIO_BUFFER)
    out_send, out_recv = anyio.create_memory_object_stream[PCMChunk](AUDIO_BUFFER)
    stats = UtteranceStats(engine=spec.engine.name)
    probe = spec.observer.on_request_start(spec, stats, text)
    utterance: Utterance | None = None
    outcome: Outcome = "cancelled"
    try:
        async with anyio.create_task_group() as tg:
            utterance = Utterance(spec, text_send, out_recv, tg.cancel_scope, stats, probe)
            utterance.bus.subscribe("engine", utterance._stop_producers)
            utterance.bus.subscribe("stitcher", utterance._stop_stitching)
            with probe.activated():  # tasks started here inherit the request id and span
                tg.start_soon(_producer_stages, utterance, text_recv, raw_send)
                tg.start_soon(stitch_stage, utterance, raw_recv, out_send)
                if text is not None:
                    tg.start_soon(functools.partial(utterance.send_text, text, final=True))
            try:
                yield utterance
            finally:
                # Normal exit: the stages have finished or are about to; early exit: stop them.
                tg.cancel_scope.cancel()
                out_recv.close()
    except Exception as exc:
        outcome = "error"
        probe.on_error(_stage_error(exc))
        raise
    finally:
        if outcome != "error":
            if utterance is not None and utterance.interrupted:
                outcome = "interrupted"
            elif stats.finished_at is not None:
                outcome = "completed"  # else the consumer left early: "cancelled"
        probe.on_end(outcome)


def _stage_error(exc: BaseException) -> BaseException:
    """The error a stage raised, out of the TaskGroup's ExceptionGroup."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _producer_stages(
    utt: Utterance,
    text_in: ObjectReceiveStream[TextDelta],
    raw_out: ObjectSendStream[PCMChunk | TokenFrames],
) -> None:
    """The engine stage under the cancel scope that barge-in cancels."""
    with utt._producers:
        await engine_stage(utt, text_in, raw_out)
    for stream in (text_in, raw_out):
        stream.close()  # type: ignore[attr-defined]
