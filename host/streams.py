"""Utterances that outlive the code that started them: the shape HTTP responses need.

A response body is an async generator, and a TaskGroup must never stay open across a generator's
`yield`. So each utterance runs as a task in a long-lived group (`StreamHost.running()`, entered
once in the server's lifespan) and hands its audio to the response through a bounded memory
stream. The response only reads; closing it (client gone) cancels the utterance's task, which
stops every stage within one engine step.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, TaskGroup
from morpheus_tts.host.events import PCMChunk
from morpheus_tts.host.pipeline import Utterance, UtteranceStats

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

HANDOFF_BUFFER = 2  # chunks between the utterance and its consumer


class AudioStream:
    """The consumer's side of a background utterance.

    Iterate it for PCMChunks; the last has `final=True`. An error inside the utterance is
    re-raised from the iteration. `aclose()` (or leaving `async with`) cancels the utterance;
    `barge_in()` ends it within one chunk.

    Rate control needs to know what the client really took. By default a chunk counts as
    consumed when the iteration asks for the next one. A consumer that knows better (the HTTP
    layer, whose socket sends return once the bytes are accepted) calls `report_consumption()`
    before reading, then `consumed(n)` after each send; iteration then reports nothing.
    """

    def __init__(self, receive: ObjectReceiveStream[PCMChunk], scope: anyio.CancelScope) -> None:
        self._receive = receive
        self._scope = scope
        self.utterance: Utterance | None = None
        self.error: BaseException | None = None
        self._started = anyio.Event()
        self._manual_reports = False

    @property
    def stats(self) -> UtteranceStats | None:
        """The running utterance's statistics (None until it has started)."""
        return self.utterance.stats if self.utterance else None

    async def started(self) -> Utterance:
        """Wait until the utterance runs (its text can then be sent)."""
        await self._started.wait()
        if self.utterance is None:
            raise RuntimeError("utterance failed to start") from self.error
        return self.utterance

    def __aiter__(self) -> AsyncIterator[PCMChunk]:
        return self._iterate()

    def report_consumption(self) -> None:
        """From now on the consumer calls `consumed(n)` itself; iteration reports nothing."""
        self._manual_reports = True

    def consumed(self, samples: float) -> None:
        """The client took `samples` more of the audio (a socket send of them returned)."""
        self._manual_reports = True
        if self.utterance is not None:
            self.utterance.consumed(samples)

    def barge_in(self, fade_ms: float | None = None) -> None:
        """Stop speaking: queued audio is dropped, at most `fade_ms` of fade ends the stream."""
        if self.utterance is not None:
            self.utterance.barge_in(fade_ms)

    async def _iterate(self) -> AsyncIterator[PCMChunk]:
        async for chunk in self._receive:
            utterance = self.utterance
            if utterance is not None and chunk.generation < utterance.generation:
                continue  # queued before a barge-in
            yield chunk
            # The consumer asks for the next chunk: this one has gone out.
            if utterance is not None and not self._manual_reports:
                utterance.consumed(len(chunk.samples))
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        """Stop the utterance (if still running) and release the stream."""
        self._scope.cancel()
        self._receive.close()

    async def __aenter__(self) -> AudioStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class StreamHost:
    """Runs utterances as tasks of one long-lived TaskGroup."""

    def __init__(self) -> None:
        self._tg: TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Own the task group for as long as the server runs; cancels leftovers on exit."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a background task (a session's forwarder, a loader) in the long-lived group."""
        if self._tg is None:
            raise RuntimeError("StreamHost is not running; enter `running()` first")
        self._tg.start_soon(fn, *args)

    def spawn(self, opened: AbstractAsyncContextManager[Utterance]) -> AudioStream:
        """Run an opened (already validated) utterance in the background."""
        if self._tg is None:
            raise RuntimeError("StreamHost is not running; enter `running()` first")
        send, receive = anyio.create_memory_object_stream[PCMChunk](HANDOFF_BUFFER)
        scope = anyio.CancelScope()
        stream = AudioStream(receive, scope)

        async def run() -> None:
            with scope:
                async with send:
                    try:
                        async with opened as utterance:
                            stream.utterance = utterance
                            stream._started.set()
                            async for chunk in utterance.audio:
                                await send.send(chunk)
                    except anyio.get_cancelled_exc_class():
                        raise
                    except anyio.BrokenResourceError:
                        pass  # the consumer went away: nothing left to deliver
                    except Exception as exc:  # noqa: BLE001 - delivered to the consumer
                        stream.error = _unwrap(exc)
                    finally:
                        stream._started.set()

        self._tg.start_soon(run)
        return stream


def _unwrap(exc: BaseException) -> BaseException:
    """A TaskGroup wraps a stage's error in an ExceptionGroup; the consumer wants the error."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc

