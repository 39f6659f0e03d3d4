"""Failover: stall timeouts around engine steps, one retry with a smaller chunk, then the next
engine of `[server] failover`, flagged `degraded`.

What counts as failing: a step raises, a step gives no output within `stall_timeout_s`, or a
segment with words in it yields no audio at all (an engine that takes text and stays silent).
What does not: a request the engine can never speak (`EngineRequestError`: an unknown option
or voice, a value out of range) is neither retried nor moved to another engine; it fails the
utterance at once, before any audio, and the client is told (HTTP 400).

Availability is remembered across utterances (LiveKit's FallbackAdapter): an engine failover
gave up on is marked unavailable, later requests start on the first available engine of their
chain, and a background probe (`host.availability`) marks it available again once it speaks.

What is replayed: before any audio has left the engine, the whole request replays on the next
attempt (nothing has been heard, so nothing is lost or doubled). After it, the stream goes on
from the next unspoken segment: a segment the failed engine had started is not repeated, so the
listener hears no audio twice; the rest of that segment is lost.

A stalled worker thread cannot be killed. Its step is abandoned (`host.steps`): the stream
moves on, the step's result is discarded when it finally returns, and the thread keeps the
engine's capacity limiter until then.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import numpy as np
from morpheus_tts.host.contracts import EngineRequestError, SynthesisRequest
from morpheus_tts.host.errors import MorpheusError
from morpheus_tts.host.registry import LoadedEngine
from morpheus_tts.host.steps import EngineStalledError, engine_steps

log = logging.getLogger(__name__)

__all__ = ["EngineStalledError", "FailoverPolicy", "SilentEngineError", "is_final_error"]


class SilentEngineError(MorpheusError, RuntimeError):
    """An engine accepted a segment with words in it and returned no audio."""


def is_final_error(exc: BaseException) -> bool:
    """True for failures no retry or other engine can fix (the request itself is bad)."""
    return isinstance(exc, EngineRequestError)


def available_first(chain: list[Candidate]) -> list[Candidate]:
    """The chain with the engines known to be down moved to the end (kept in order)."""
    up = [c for c in chain if c.engine.available]
    return up + [c for c in chain if not c.engine.available]


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
        chain: the request's engine first, then `[server] failover` (without repeats). Engines
            marked unavailable by earlier utterances go last; starting elsewhere than on the
            request's engine counts as degraded.
        stall_timeout_s: longest wait for one step's output; None waits for ever.
        on_failover: called with (from engine, to engine, reason) when the engine changes.
        on_unavailable: called with an engine failover gave up on (starts its recovery probe).
    """

    def __init__(
        self,
        chain: list[Candidate],
        *,
        stall_timeout_s: float | None = None,
        on_failover: Callable[[str, str, str], None] | None = None,
        on_unavailable: Callable[[LoadedEngine, str], None] | None = None,
    ) -> None:
        if not chain:
            raise ValueError("a failover chain needs at least one engine")
        requested = chain[0].engine
        self.chain = available_first(chain)
        self.stall_timeout_s = stall_timeout_s
        self.attempt = Attempt(self.chain[0])
        self.degraded = self.engine is not requested
        self.failures: list[str] = []
        if self.degraded:
            self.failures.append(f"{requested.name}: {requested.unavailable_reason}")
        self._position = 0
        self._first_error: BaseException | None = None
        self._on_failover = on_failover
        self._on_unavailable = on_unavailable
        self._after_stall = False

    @property
    def engine(self) -> LoadedEngine:
        """The engine the next step runs on."""
        return self.attempt.candidate.engine

    def failed(self, exc: BaseException) -> Attempt:
        """Record a failure of the current attempt and return the next one.

        Raises:
            EngineRequestError: at once (`exc` itself): the request is bad on any attempt.
            BaseException: the last engine's first error, once every engine of the chain has
                failed twice.
        """
        failed = self.engine.name
        reason = f"{type(exc).__name__}: {exc}"
        if is_final_error(exc):
            raise exc
        self.failures.append(f"{failed}: {reason}")
        log.warning("engine failed", extra={"engine": failed, "error": reason})
        if not self.attempt.retry:
            self._first_error = exc
            self.attempt = Attempt(self.attempt.candidate, retry=True)
            # The stalled step still holds the engine: the retry waits for it one timeout at
            # most (waiting behind other streams is queueing, and is not bounded).
            self._after_stall = isinstance(exc, EngineStalledError)
            return self.attempt
        if self._on_unavailable is not None and len(self.chain) > 1:
            self._on_unavailable(self.engine, reason)
        self._position += 1
        if self._position >= len(self.chain):
            raise self._first_error or exc  # the first failure says most about the engine
        self.attempt = Attempt(self.chain[self._position])
        self._after_stall = False
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
        queue_s = self.stall_timeout_s if self._after_stall else None
        async for output in engine_steps(loaded, request, self.stall_timeout_s, queue_s):
            heard = heard or len(output) > 0
            yield output
        if not heard and any(ch.isalnum() for ch in request.text):
            raise SilentEngineError(
                f"engine {loaded.name!r} returned no audio for {request.text!r}"
            )

