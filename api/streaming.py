"""The response side of a speech request: admission, the running utterance, the bodies.

`start_job` admits a request (`StreamSlots`, 429 beyond `$MORPHEUS_MAX_STREAMS`), starts its
utterance in the runtime's background task group and waits for the first chunk, so an engine
that fails at once still gets an error status. The body generators (`audio_body`, `sse_body`)
then only read the stream, encode each slice and send it.

Rate control hears what the socket took: Litestar resumes a body generator only once its last
`send` returned, and the server's `send` returns once the transport accepted the bytes (it
waits while the write buffer is over its high-water mark). So each body reports the audio of a
send to `OpenedAudio.sent` right after its `yield`. When the client goes away, Litestar
cancels the body; its `finally` (or the route's `after_response=finish_job`, if the body never
started) closes the stream, which cancels the utterance within one engine step.
"""

from __future__ import annotations

import base64
import logging
import math
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import numpy as np
from litestar import Request
from litestar.datastructures import State
from morpheus_tts.api.encoders import AudioEncoder, new_encoder
from morpheus_tts.api.errors import OpenAIError, scrub
from morpheus_tts.api.schemas import AudioDelta, AudioDone, Usage
from morpheus_tts.host.config import read_environment
from morpheus_tts.host.contracts import EngineRequestError
from morpheus_tts.host.errors import MorpheusError
from morpheus_tts.host.events import PCMChunk
from morpheus_tts.host.failover import DegradedWatch
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from morpheus_tts.host.streams import AudioStream

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger(__name__)

OUTPUT_RATE = 24000  # OpenAI's audio is 24 kHz mono in every format
AUDIO_TOKENS_PER_SECOND = 20  # usage: one output token per 50 ms of audio
MAX_STREAMS_ENV = "MORPHEUS_MAX_STREAMS"
FIRST_SLICE_SAMPLES = 2400  # 100 ms: what is encoded before the first bytes leave
SLICE_SAMPLES = 6000  # 250 ms: the most encoded per send after that
JOB_STATE_KEY = "speech_job"
MAX_FADE_MS = 30.0  # the longest fade a barge-in may ask for


class StreamSlots:
    """Admission control: at most `limit` audio streams at once (0: unlimited).

    Args:
        limit: the cap; requests beyond it get 429 with `Retry-After`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def acquire(self) -> None:
        """Take a slot.

        Raises:
            OpenAIError: 429 `rate_limit_exceeded` when all slots are taken.
        """
        if self.limit and self.active >= self.limit:
            raise OpenAIError(
                429,
                f"Too many concurrent streams (limit {self.limit}); retry after a second.",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        self.active += 1

    def release(self) -> None:
        """Give a slot back."""
        self.active -= 1


def stream_slots(state: State) -> StreamSlots:
    """The app's admission control (`$MORPHEUS_MAX_STREAMS`, default unlimited)."""
    slots = state.get("stream_slots")
    if slots is None:
        slots = StreamSlots(read_environment().max_streams)
        state["stream_slots"] = slots
    return slots


def live_jobs(state: State) -> dict[str, SpeechJob]:
    """The speech responses still streaming, by stream id (for barge-in)."""
    jobs = state.get("speech_jobs")
    if jobs is None:
        jobs = state["speech_jobs"] = {}
    return jobs


def barge_in_job(state: State, stream_id: str, fade_ms: float | None) -> SpeechJob:
    """Stop a streaming speech response: at most `fade_ms` (default `[server]
    barge_in_fade_ms`) of faded audio follows, then the response ends as a complete file.

    Raises:
        OpenAIError: 400 `invalid_value` (param fade_ms) outside 0-30; 404 `stream_not_found`
            when no response with that id is streaming.
    """
    if fade_ms is not None and not 0 <= fade_ms <= MAX_FADE_MS:
        raise OpenAIError(
            400, f"fade_ms must lie between 0 (cut) and {MAX_FADE_MS:g}; got {fade_ms:g}.",
            param="fade_ms", code="invalid_value",
        )
    job = live_jobs(state).get(stream_id)
    if job is None:
        raise OpenAIError(
            404,
            f"No speech stream {stream_id!r} is streaming: it has ended or never existed. "
            "Use the X-Morpheus-Stream-Id header of a response still in progress.",
            code="stream_not_found",
        )
    job.opened.stream.barge_in(fade_ms)
    return job


# -- an opened stream ------------------------------------------------------------------------


class OpenedAudio:
    """A started utterance, as the response reads it.

    `wait_first()` waits for the first chunk (so an engine that fails at once still gets an
    error status); `chunks()` then yields 24 kHz float32 samples; `sent(n)` reports n of them
    taken by the socket; `aclose()` stops it.
    """

    def __init__(self, stream: AudioStream, rest: AsyncIterator[PCMChunk]) -> None:
        self.stream = stream
        self._rest = rest
        self._first: PCMChunk | None = None
        self.samples_out = 0
        stream.report_consumption()

    @property
    def requested_engine(self) -> str:
        """The engine the request asked for (failover may have moved on from it)."""
        utterance = self.stream.utterance
        return utterance.spec.engine.name if utterance is not None else ""

    def sent(self, samples: int) -> None:
        """The socket accepted `samples` (at 24 kHz): rate control's playback model hears it."""
        if samples:
            self.stream.consumed(samples)

    @classmethod
    def start(cls, runtime: Runtime, request: SpeakRequest, text: str) -> OpenedAudio:
        """Start the utterance in the background (raises the runtime's resolution errors).

        The utterance's stitcher produces OpenAI's 24 kHz itself: one resampler per stream.
        """
        stream = runtime.stream(msgspec.structs.replace(request, sample_rate=OUTPUT_RATE), text)
        return cls(stream, aiter(stream))

    async def wait_first(self) -> None:
        """Wait for the first chunk (or the end of a stream without audio).

        Raises:
            OpenAIError: 400 when the engine refuses the request (a bad option: not retried,
                no failover); 500 when it fails before producing audio.
        """
        try:
            self._first = await anext(self._rest, None)
        except EngineRequestError as exc:
            await self.aclose()
            raise OpenAIError(
                400, f"The engine refused the request: {exc}", code="invalid_value"
            ) from None
        except Exception as exc:
            await self.aclose()
            log.exception("engine failed before the first chunk", exc_info=exc)
            raise OpenAIError(
                500, f"The engine failed before producing audio: {engine_message(exc)}",
                code="engine_error",
            ) from None
        except BaseException:
            await self.aclose()
            raise

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        """The audio at 24 kHz, in slices: the first chunk, then the rest as it comes.

        A chunk is handed on in slices of at most `SLICE_SAMPLES` (the stream's very first
        one shorter), so an encoder's first bytes leave after a few milliseconds of encoding
        rather than after a whole sentence's worth.
        """
        limit = FIRST_SLICE_SAMPLES
        async for chunk in self._chunks():
            if chunk.sample_rate != OUTPUT_RATE:
                raise RuntimeError(f"stream at {chunk.sample_rate} Hz, not {OUTPUT_RATE}")
            samples = chunk.samples
            self.samples_out += len(samples)
            while len(samples):
                yield samples[:limit]
                samples, limit = samples[limit:], SLICE_SAMPLES

    async def _chunks(self) -> AsyncIterator[PCMChunk]:
        if self._first is None:
            return
        first, self._first = self._first, None
        yield first
        async for chunk in self._rest:
            yield chunk

    @property
    def duration_s(self) -> float:
        """Seconds of audio delivered so far."""
        return self.samples_out / OUTPUT_RATE

    async def aclose(self) -> None:
        """Stop the utterance (if still running); safe to call more than once."""
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()


class SpeechJob:
    """What one audio response holds: the stream, its encoder and its admission slot.

    `finish()` releases all three exactly once. The body calls it when it ends; the route's
    `after_response` hook calls it too, because a client that leaves before the body starts
    means the body generator never runs (and so never reaches its `finally`).
    """

    def __init__(
        self, opened: OpenedAudio, encoder: AudioEncoder, slots: StreamSlots,
        jobs: dict[str, SpeechJob],
    ) -> None:
        self.opened, self.encoder, self.slots = opened, encoder, slots
        utterance = opened.stream.utterance
        self.stream_id = utterance.stream_id if utterance is not None else ""
        self._jobs = jobs
        if self.stream_id:
            jobs[self.stream_id] = self
        self._finished = False

    def timing_headers(self) -> dict[str, str]:
        """`Server-Timing: ttfa;dur=<ms>`: the pipeline's own time to first audio."""
        stats = self.opened.stream.stats
        ttfa_ms = stats.time_to_first_audio_ms if stats is not None else None
        return {} if ttfa_ms is None else {"Server-Timing": f"ttfa;dur={ttfa_ms:.1f}"}

    async def finish(self) -> None:
        """Stop the utterance, free the encoder, give the slot back (idempotent)."""
        if self._finished:
            return
        self._finished = True
        self._jobs.pop(self.stream_id, None)
        self.encoder.close()
        self.slots.release()
        await self.opened.aclose()


async def finish_job(request: Request) -> None:
    """`after_response` hook: finish the request's `SpeechJob`, if it has one."""
    job: SpeechJob | None = request.state.get(JOB_STATE_KEY)
    if job is not None:
        await job.finish()


class StreamAborted(MorpheusError):
    """Raised out of an audio body whose utterance failed (or whose engine was unloaded).

    The server then drops the connection without the chunked body's final empty chunk, so an
    HTTP client reports an incomplete body (curl: exit 18; httpx: RemoteProtocolError) rather
    than keeping a short file that looks complete.
    """


async def audio_body(job: SpeechJob) -> AsyncIterator[bytes]:
    """The response body: each chunk encoded as it arrives.

    An engine failure mid-stream (an unload without drain included) aborts the body: the
    encoder's tail is not sent and `StreamAborted` ends the response unfinished.
    """
    opened, pending = job.opened, 0  # samples encoded, not yet sent
    try:
        try:
            async for samples in opened.chunks():
                pending += len(samples)
                if data := job.encoder.encode(samples):
                    yield data
                    opened.sent(pending)
                    pending = 0
        except Exception as exc:
            log.warning("engine failed mid-stream; aborting the body",
                        extra={"error": engine_message(exc)})
            raise StreamAborted(engine_message(exc)) from None
        if tail := job.encoder.flush():
            yield tail
            opened.sent(pending)
    finally:
        await job.finish()


def engine_message(exc: BaseException) -> str:
    """What a client is told about an engine failure: the first real error of a task group,
    scrubbed of paths and internals."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return scrub(str(exc) or type(exc).__name__)


def _sse(event: msgspec.Struct | dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(event) + b"\n\n"


async def sse_body(job: SpeechJob, input_tokens: int) -> AsyncIterator[bytes]:
    """The SSE body: `speech.audio.delta` events, then one `speech.audio.done` with usage.

    Extensions (OpenAI defines neither for speech): a `speech.degraded` event, before the
    first delta spoken by another engine, each time failover moves the stream on; an `error`
    event in place of `done` when the engine fails mid-stream.
    """
    encoder, opened, pending = job.encoder, job.opened, 0
    watch = DegradedWatch(opened.requested_engine)
    try:
        try:
            async for samples in opened.chunks():
                if notice := watch.check(opened.stream.stats):
                    yield _sse({"type": "speech.degraded", **msgspec.to_builtins(notice)})
                pending += len(samples)
                if data := encoder.encode(samples):
                    yield _sse(AudioDelta(audio=base64.b64encode(data).decode()))
                    opened.sent(pending)
                    pending = 0
            if tail := encoder.flush():
                yield _sse(AudioDelta(audio=base64.b64encode(tail).decode()))
                opened.sent(pending)
        except Exception as exc:
            log.exception("engine failed mid-stream; sending an error event")
            error = OpenAIError(
                500, f"The engine failed mid-stream: {engine_message(exc)}", code="engine_error"
            )
            yield _sse({"type": "error", **error.envelope()})
            return
        output_tokens = math.ceil(job.opened.duration_s * AUDIO_TOKENS_PER_SECOND)
        usage = Usage(input_tokens, output_tokens, input_tokens + output_tokens)
        yield _sse(AudioDone(usage=usage))
    finally:
        await job.finish()


async def start_job(
    request: Request, runtime: Runtime, speak: SpeakRequest, text: str, fmt: str
) -> SpeechJob:
    """Admit, start the utterance, wait for its first chunk; the job is finished after the
    response by the route's `after_response=finish_job`.

    Raises:
        OpenAIError: 429 when no stream slot is free; 500 when the engine fails at once.
    """
    slots = stream_slots(request.app.state)
    slots.acquire()
    try:
        opened = OpenedAudio.start(runtime, speak, text)
    except BaseException:
        slots.release()
        raise
    encoder: AudioEncoder | None = None
    try:
        encoder = new_encoder(fmt, OUTPUT_RATE)
        await opened.wait_first()
    except BaseException:
        if encoder is not None:
            encoder.close()
        await opened.aclose()
        slots.release()
        raise
    job = SpeechJob(opened, encoder, slots, live_jobs(request.app.state))
    request.state[JOB_STATE_KEY] = job
    return job
