"""Utterances that outlive the code that started them: the shape HTTP responses need.

A response body is an async generator, and a TaskGroup must never stay open across a generator's
`yield`. So each utterance's context (its TaskGroup) is held open by a task in a long-lived
group (`StreamHost.running()`, entered once in the server's lifespan), while the response reads
the utterance's own audio stream directly (no relay task, no second buffer between them).
Closing it (client gone) cancels the utterance's task, which stops every stage within one
engine step.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup
from morpheus_tts.host.events import PCMChunk
from morpheus_tts.host.pipeline import Utterance, UtteranceStats

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


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

    def __init__(self, scope: anyio.CancelScope) -> None:
        self._scope = scope
        self.utterance: Utterance | None = None
        self.error: BaseException | None = None
        self._started = anyio.Event()
        self._done_reading = anyio.Event()  # the consumer has what it wants: let go
        self._finished = anyio.Event()  # the utterance's stages have all stopped
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
        await self._started.wait()
        utterance = self.utterance
        try:
            if utterance is not None:
                # `Utterance.audio` already drops chunks queued before a barge-in.
                async for chunk in utterance.audio:
                    if chunk.final:
                        # Last chunk: first make sure no stage failed (a stitcher whose
                        # input ended because the engine failed still ends the stream).
                        self._done_reading.set()
                        await self._finished.wait()
                        if self.error is not None:
                            break
                    yield chunk
                    # The consumer asks for the next chunk: this one has gone out.
                    if not self._manual_reports:
                        utterance.consumed(len(chunk.samples))
                    if chunk.final:
                        break
        except anyio.ClosedResourceError:
            pass  # closed by `aclose`
        finally:
            self._done_reading.set()
        await self._finished.wait()  # a stage's error is known once every stage has stopped
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        """Stop the utterance (if still running) and release the stream."""
        self._done_reading.set()
        self._scope.cancel()

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
        """Run an opened (already validated) utterance in the background.

        The background task only holds the utterance's context open until the consumer has
        read the final chunk (or closed the stream); the consumer reads the audio itself.
        """
        if self._tg is None:
            raise RuntimeError("StreamHost is not running; enter `running()` first")
        scope = anyio.CancelScope()
        stream = AudioStream(scope)

        async def run() -> None:
            with scope:
                try:
                    async with opened as utterance:
                        stream.utterance = utterance
                        stream._started.set()
                        await stream._done_reading.wait()
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:  # noqa: BLE001 - delivered to the consumer
                    stream.error = _unwrap(exc)
                finally:
                    stream._started.set()
                    stream._finished.set()

        self._tg.start_soon(run)
        return stream


def _unwrap(exc: BaseException) -> BaseException:
    """A TaskGroup wraps a stage's error in an ExceptionGroup; the consumer wants the error."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc

