"""Failover: stall timeouts around engine steps, one retry with a smaller chunk, then the next
engine of `[server] failover`, flagged `degraded`.

What counts as failing: a step raises, a step gives no output within `stall_timeout_s`, or a
segment with words in it yields no audio at all (an engine that takes text and stays silent).

What is replayed: before any audio has left the engine, the whole request replays on the next
attempt (nothing has been heard, so nothing is lost or doubled). After it, the stream goes on
from the next unspoken segment: a segment the failed engine had started is not repeated, so the
listener hears no audio twice; the rest of that segment is lost.

A stalled worker thread cannot be killed. Its step is abandoned: the stream moves on, the
step's result is discarded when it finally returns, and the thread keeps the engine's capacity
limiter until then, so a model is never freed under a running step (unload waits for it) and
a retry on the same engine waits for it too (bounded by the same timeout).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec
import numpy as np
from anyio.abc import ObjectReceiveStream
from morpheus_tts.host.contracts import SynthesisRequest
from morpheus_tts.host.errors import MorpheusError
from morpheus_tts.host.events import TextDelta
from morpheus_tts.host.rate import first_words
from morpheus_tts.host.registry import LoadedEngine

log = logging.getLogger(__name__)

_DONE = object()


class EngineStalledError(MorpheusError, TimeoutError):
    """An engine step gave no output within the stall timeout."""


class SilentEngineError(MorpheusError, RuntimeError):
    """An engine accepted a segment with words in it and returned no audio."""


class Candidate(msgspec.Struct, frozen=True):
    """One engine of a failover chain, with the voice it speaks this request in."""

    engine: LoadedEngine
    voice: str | None


class Degraded(msgspec.Struct, frozen=True, kw_only=True):
    """Failover moved a stream to another engine: what consumers tell their client."""

    engine: str  # speaking from now on
    from_engine: str
    reason: str


class DegradedWatch:
    """Spots each engine switch of a running utterance, once, for an SSE or WebSocket event.

    Call `check(stats)` before sending each chunk: it returns a `Degraded` the first time the
    utterance's statistics name an engine other than the last one reported.

    Args:
        engine: the engine the request asked for.
    """

    def __init__(self, engine: str) -> None:
        self.engine = engine

    def check(self, stats: Any) -> Degraded | None:
        """A `Degraded` if `stats.engine` changed since the last call, else None."""
        if stats is None or not stats.degraded or stats.engine == self.engine:
            return None
        notice = Degraded(
            engine=stats.engine,
            from_engine=self.engine,
            reason=stats.failures[-1] if stats.failures else "",
        )
        self.engine = stats.engine
        return notice


class Attempt(msgspec.Struct, frozen=True):
    """What the next try looks like: which engine, and whether it is the smaller-chunk retry."""

    candidate: Candidate
    retry: bool = False


class FailoverPolicy:
    """Decides, after each failure, whether to retry smaller, move on, or give up.

    Args:
        chain: the request's engine first, then `[server] failover` (without repeats).
        stall_timeout_s: longest wait for one step's output; None waits for ever.
        on_failover: called with (from engine, to engine, reason) when the engine changes.
    """

    def __init__(
        self,
        chain: list[Candidate],
        *,
        stall_timeout_s: float | None = None,
        on_failover: Callable[[str, str, str], None] | None = None,
    ) -> None:
        if not chain:
            raise ValueError("a failover chain needs at least one engine")
        self.chain = chain
        self.stall_timeout_s = stall_timeout_s
        self.attempt = Attempt(chain[0])
        self.degraded = False
        self.failures: list[str] = []
        self._position = 0
        self._first_error: BaseException | None = None
        self._on_failover = on_failover

    @property
    def engine(self) -> LoadedEngine:
        """The engine the next step runs on."""
        return self.attempt.candidate.engine

    def failed(self, exc: BaseException) -> Attempt:
        """Record a failure of the current attempt and return the next one.

        Raises:
            BaseException: the last engine's first error, once every engine of the chain has
                failed twice.
        """
        failed = self.engine.name
        reason = f"{type(exc).__name__}: {exc}"
        self.failures.append(f"{failed}: {reason}")
        log.warning("engine failed", extra={"engine": failed, "error": reason})
        if not self.attempt.retry:
            self._first_error = exc
            self.attempt = Attempt(self.attempt.candidate, retry=True)
            return self.attempt
        self._position += 1
        if self._position >= len(self.chain):
            raise self._first_error or exc  # the first failure says most about the engine
        self.attempt = Attempt(self.chain[self._position])
        self.degraded = True
        if self._on_failover is not None:
            self._on_failover(failed, self.engine.name, reason)
        return self.attempt

    def request(self, base: SynthesisRequest, min_chunk: int) -> SynthesisRequest:
        """The request for the current attempt: the voice of its engine, smaller on retry."""
        changes: dict[str, Any] = {"voice": self.attempt.candidate.voice}
        if self.attempt.retry:
            size = base.chunk_size or 2 * min_chunk
            changes.update(chunk_size=max(min_chunk, size // 2), low_latency=True)
        return msgspec.structs.replace(base, **changes)

    async def steps(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        """The current engine's output for `request`, each step under the stall timeout.

        Raises:
            EngineStalledError: a step gave nothing in time.
            SilentEngineError: the segment has words and no audio came.
        """
        loaded = self.engine
        heard = False
        async for output in engine_steps(loaded, request, self.stall_timeout_s):
            heard = heard or len(output) > 0
            yield output
        if not heard and any(ch.isalnum() for ch in request.text):
            raise SilentEngineError(
                f"engine {loaded.name!r} returned no audio for {request.text!r}"
            )


async def engine_steps(
    loaded: LoadedEngine, request: SynthesisRequest, stall_timeout_s: float | None
) -> AsyncIterator[np.ndarray]:
    """Iterate an engine's output; a sync iterator is advanced one `next()` per thread call.

    Cancellation from outside waits for the step in flight (at most `stall_timeout_s`), so
    the engine is left between steps, never mid-call.
    """
    output = loaded.engine.synthesize(request)
    if isinstance(output, AsyncIterator):
        while True:
            with _stall_guard(loaded, stall_timeout_s):
                item = await anext(output, _DONE)
            if item is _DONE:
                return
            yield item
    iterator: Iterator[np.ndarray] = iter(output)
    abandoned = False
    try:
        while True:
            step = _ThreadStep(loaded, functools.partial(next, iterator, _DONE))
            item = await step.run(stall_timeout_s)
            if step.abandoned:
                abandoned = True
                raise EngineStalledError(
                    f"engine {loaded.name!r} gave no output in {stall_timeout_s:g} s"
                )
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None and not abandoned:  # a generator still running can't be closed
            close()


@contextmanager
def _stall_guard(loaded: LoadedEngine, timeout_s: float | None) -> Iterator[None]:
    """`anyio.fail_after` that raises EngineStalledError naming the engine."""
    try:
        with anyio.fail_after(timeout_s):
            yield
    except TimeoutError:
        raise EngineStalledError(
            f"engine {loaded.name!r} gave no output in {timeout_s:g} s"
        ) from None


class _ThreadStep:
    """One blocking step in a worker thread that holds the engine's limiter while it runs.

    If the stall timeout passes first the step is abandoned: the caller goes on, and the
    thread releases the limiter itself when it returns (its result is dropped).
    """

    def __init__(self, loaded: LoadedEngine, fn: Callable[[], Any]) -> None:
        self._loaded, self._fn = loaded, fn
        self._lock = threading.Lock()
        self._finished = False
        self.abandoned = False

    def _in_thread(self) -> Any:
        try:
            return self._fn()
        finally:
            with self._lock:
                self._finished = True
                release_here = self.abandoned
            if release_here:
                try:
                    anyio.from_thread.run_sync(self._loaded.limiter.release_on_behalf_of, self)
                except RuntimeError:
                    pass  # the event loop is gone, and the limiter with it

    async def run(self, timeout_s: float | None) -> Any:
        limiter = self._loaded.limiter
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with _stall_guard(self._loaded, timeout_s):
            await limiter.acquire_on_behalf_of(self)
        result: Any = None
        try:
            # Shielded: a cancel from outside waits for the step; only the stall deadline
            # (a scope inside the shield) may abandon it.
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(_remaining(deadline)):
                    result = await anyio.to_thread.run_sync(
                        self._in_thread, abandon_on_cancel=True
                    )
        finally:
            with self._lock:
                if self._finished:
                    limiter.release_on_behalf_of(self)
                else:
                    self.abandoned = True
        await anyio.lowlevel.checkpoint()  # deliver a cancel that arrived during the step
        return result


def _remaining(deadline: float | None) -> float:
    return float("inf") if deadline is None else max(0.0, deadline - time.monotonic())


class SegmentLog:
    """The segments of one utterance as they arrive, kept so failover can replay them.

    Args:
        segments: the chunker's output.
        split_first: cut the first segment after its first few words (low latency on a
            waveform engine: a shorter first call gives earlier first audio); both pieces keep
            the segment's index, so the stitcher joins them without a seam.
    """

    def __init__(self, segments: ObjectReceiveStream[TextDelta], *, split_first: bool) -> None:
        self._segments = segments
        self._split_first = split_first
        self._seen: list[TextDelta] = []
        self._ended = False

    async def get(self, index: int) -> TextDelta | None:
        """Segment number `index`, waiting for it to arrive; None once the text has ended."""
        while index >= len(self._seen) and not self._ended:
            try:
                segment = await self._segments.receive()
            except anyio.EndOfStream:
                self._ended = True
                break
            if self._split_first and not self._seen:
                pieces = first_words(segment.text)
                self._seen += [msgspec.structs.replace(segment, text=p) for p in pieces]
            else:
                self._seen.append(segment)
        return self._seen[index] if index < len(self._seen) else None
