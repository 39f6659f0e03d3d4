"""Realtime sessions: multi-turn speech fed by text deltas (a voice agent's LLM output).

A session pins an engine and a voice and speaks one utterance per turn: the first text delta
opens a turn, `final=True` closes its text, and the turn ends once its audio is queued. Turns
speak one after another. Everything a session produces goes into one bounded event queue read
by one consumer at a time (an SSE stream or a WebSocket); a new consumer takes over from the
old one, and a consumer that leaves while a turn speaks interrupts it.

Barge-in bumps the session's generation, cancels every unfinished turn within one engine step
and drops their queued audio. Every event carries its turn's generation and audio is checked
again on the way out, so no audio of an interrupted turn reaches the next one (Pipecat #754).

Engine state that survives turns (MOSS-TTS-Realtime's KV cache) is keyed by the session id:
a turn-shaped engine gets `TurnRequest(session_id=..., turn=n)` for every turn (never in
`options`), and `end_session(session_id)` once the session ends (`host.session_manager`).
Segment engines (Piper, Orpheus) see neither: each turn is a fresh utterance to them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import anyio
import msgspec
import numpy as np
from morpheus_tts.host.errors import MorpheusError
from morpheus_tts.host.failover import DegradedWatch
from morpheus_tts.host.registry import EngineUnloadedError, UnknownComponentError
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from morpheus_tts.host.session_events import (
    AudioDelta,
    EventQueue,
    Lease,
    SessionClosed,
    SessionEvent,
    TurnDegraded,
    TurnDone,
    TurnError,
    TurnInterrupted,
    TurnMetrics,
    TurnStarted,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger(__name__)

EVENT_AUDIO_BUFFER = 8  # audio events queued for the consumer before the engine is paused
TURN_TEXT_BUFFER = 1024  # text deltas a turn holds before the client is told to slow down
MAX_PENDING_TURNS = 4  # turns queued or speaking at once

Spawn = Callable[..., Any]


class SessionError(MorpheusError):
    """A session request that cannot be honoured; `code` is machine-readable."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


# -- sessions --------------------------------------------------------------------------------


class Turn:
    """One utterance of a session: its text deltas in, its audio out."""

    def __init__(self, index: int, generation: int) -> None:
        self.index, self.generation = index, generation
        self.text_send, self.text_recv = anyio.create_memory_object_stream[tuple[str, bool]](
            TURN_TEXT_BUFFER
        )
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.state: Literal["queued", "speaking", "done", "interrupted", "failed"] = "queued"
        self.chunks = 0
        self.text_chars = 0  # characters pushed so far, against `[server] max_turn_chars`
        self.samples = 0
        self.sample_rate = 0
        self.utterance: Any = None  # while speaking: its probe records a barge-in

    @property
    def unfinished(self) -> bool:
        """Queued or speaking."""
        return self.state in ("queued", "speaking")

    @property
    def audio_ms(self) -> float:
        """Audio queued for the consumer so far."""
        return 1000.0 * self.samples / self.sample_rate if self.sample_rate else 0.0


class Session:
    """One realtime session. Create it through `host.session_manager.SessionManager.create`.

    Args:
        session_id: the unguessable id.
        request: engine, voice and `session_id` pinned.
        runtime: the server's runtime.
        spawn: runs a background task (`StreamHost.start_soon`).
    """

    def __init__(
        self, session_id: str, request: SpeakRequest, runtime: Runtime, spawn: Spawn
    ) -> None:
        self.id = session_id
        self.request = request
        self.engine: str = request.engine or runtime.default_engine
        self.voice: str | None = request.voice
        self.created_at = time.time()
        self.generation = 0
        self.turns = 0
        self.closed_reason: str | None = None
        self.owner: str | None = None  # who opened it, for the per-client session limit
        self._runtime = runtime
        self._spawn = spawn
        self._queue = EventQueue(EVENT_AUDIO_BUFFER)
        self._active: list[Turn] = []
        self._open: Turn | None = None
        self._consumer: Lease | None = None
        self._last_active = time.monotonic()
        self._interrupted_span: Any = None  # the next turn's trace links to it

    # -- state -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the session has ended."""
        return self.closed_reason is not None

    def idle_s(self, now: float) -> float:
        """Seconds since the last request or consumer (0 while a consumer is attached).

        A turn without a consumer stalls once its audio fills the queue, so it does not keep
        the session alive.
        """
        if self._consumer is not None:
            return 0.0
        return now - self._last_active

    def touch(self) -> None:
        """Note activity (a request), restarting the idle clock."""
        self._last_active = time.monotonic()

    # -- input -------------------------------------------------------------------------------

    def send_text(self, text: str, *, final: bool = False) -> Turn:
        """Push a text delta, opening a turn if none is open; `final` closes the turn's text.

        Raises:
            SessionError: the session is closed, too many turns are pending, or text arrives
                faster than it can be spoken.
        """
        self._check_open()
        self.touch()
        turn = self._open
        limit = self._runtime.config.server.max_turn_chars
        if (turn.text_chars if turn else 0) + len(text) > limit:
            raise SessionError(
                f"a turn holds at most {limit} characters of text ([server] max_turn_chars); "
                "end the turn with final=true and continue in the next one",
                "turn_text_too_long",
            )
        if turn is None:
            if len(self._active) >= MAX_PENDING_TURNS:
                raise SessionError(
                    f"{MAX_PENDING_TURNS} turns are already queued or speaking; wait for a "
                    "turn.done event or barge in",
                    "too_many_turns",
                )
            turn = self._start_turn()
        try:
            turn.text_send.send_nowait((text, final))
            turn.text_chars += len(text)
        except anyio.WouldBlock:
            raise SessionError(
                f"turn {turn.index} already holds {TURN_TEXT_BUFFER} unspoken text deltas; "
                "send larger deltas or wait",
                "text_backlog_full",
            ) from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the turn failed: the rest of its text is dropped until `final`
        if final:
            self._open = None
            turn.text_send.close()
        return turn

    def barge_in(self) -> list[Turn]:
        """Stop speaking now: cancel unfinished turns, drop their audio. Returns them."""
        self._check_open()
        self.touch()
        return self._interrupt()

    def _interrupt(self) -> list[Turn]:
        interrupted = [turn for turn in self._active if turn.unfinished]
        self.generation += 1
        self._open = None
        for turn in interrupted:
            turn.state = "interrupted"
            if turn.utterance is not None:
                # Stops the engine (a turn-shaped one hears interrupt(heard)) and drops the
                # turn's queued audio in every stage; the turn ends with a short fade, which
                # `_speak` still delivers (`fade_out`), as a streamed response does.
                turn.utterance.barge_in()
                self._interrupted_span = turn.utterance.probe.span_context
            else:
                turn.scope.cancel()
            turn.text_send.close()
        self._queue.drop_audio(self.generation)
        for turn in interrupted:
            self._queue.put_control(
                TurnInterrupted(session_id=self.id, turn=turn.index, generation=turn.generation)
            )
        return interrupted

    async def wait_turns(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until every turn of the session has finished."""
        with anyio.move_on_after(timeout_s):
            for turn in list(self._active):
                await turn.done.wait()

    def _check_open(self) -> None:
        if self.closed:
            raise SessionError(f"session {self.id} is {self.closed_reason}", "session_closed")

    # -- output ------------------------------------------------------------------------------

    def attach(self) -> Lease:
        """Become the consumer of this session's events, taking over from any previous one."""
        if self._consumer is not None:
            self._consumer.revoked = True
        self._consumer = Lease()
        self._queue.notify()
        self.touch()
        return self._consumer

    def detach(self, lease: Lease) -> None:
        """The consumer left; if it was the current one, speaking turns are interrupted."""
        if lease is not self._consumer:
            return
        self._consumer = None
        self.touch()
        if not self.closed and any(turn.unfinished for turn in self._active):
            self._interrupt()

    def delivered(self, event: AudioDelta) -> None:
        """The consumer's socket accepted `event`: the turn's rate control hears it."""
        for turn in self._active:
            if turn.index == event.turn and turn.utterance is not None:
                turn.utterance.consumed(len(event.samples))
                return

    async def next_event(self, lease: Lease) -> SessionEvent | None:
        """The next event for `lease`, never audio of an interrupted generation.

        Returns None once the session closed or another consumer took over.
        """
        while True:
            event = await self._queue.get(lease)
            stale = isinstance(event, AudioDelta) and event.generation < self.generation
            if stale and not event.fade_out:
                continue
            return event

    # -- turns -------------------------------------------------------------------------------

    def _start_turn(self) -> Turn:
        self.turns += 1
        turn = Turn(self.turns, self.generation)
        previous = self._active[-1] if self._active else None
        self._active.append(turn)
        self._open = turn
        self._spawn(self._run_turn, turn, previous)
        return turn

    async def _run_turn(self, turn: Turn, previous: Turn | None) -> None:
        try:
            with turn.scope:
                if previous is not None:
                    await previous.done.wait()  # turns speak in order
                await self._speak(turn)
        finally:
            turn.done.set()
            turn.text_recv.close()
            self._active.remove(turn)
            self.touch()

    async def _speak(self, turn: Turn) -> None:
        turn.state = "speaking"
        started = time.perf_counter()
        first_audio: float | None = None
        common = dict(session_id=self.id, turn=turn.index, generation=turn.generation)
        self._emit(turn, TurnStarted(**common))
        watch = DegradedWatch(self.engine)
        try:
            request = msgspec.structs.replace(self.request, turn=turn.index)
            async with self._runtime.speak(request) as utterance:
                turn.utterance = utterance
                if self._interrupted_span is not None:  # the first turn after a barge-in
                    utterance.probe.record_barge_in(self._interrupted_span)
                    self._interrupted_span = None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._feed, turn, utterance)
                    async for chunk in utterance.audio:
                        if len(chunk.samples) == 0:
                            continue
                        if turn.state == "interrupted":  # the barge-in's faded tail
                            await self._put_audio(
                                turn, chunk.samples, chunk.sample_rate, fade_out=True
                            )
                            continue
                        if first_audio is None:
                            first_audio = time.perf_counter()
                        if notice := watch.check(utterance.stats):
                            self._emit(turn, TurnDegraded(
                                **common, engine=notice.engine,
                                from_engine=notice.from_engine, reason=notice.reason,
                            ))
                        await self._put_audio(turn, chunk.samples, chunk.sample_rate)
                    tg.cancel_scope.cancel()  # audio ended early (abort): stop feeding text
        except Exception as exc:  # noqa: BLE001 - reported to the consumer, session lives on
            error = _unwrap(exc)
            turn.state = "failed"
            log.warning("session turn failed", extra={"session": self.id, "error": str(error)})
            self._emit(turn, TurnError(**common, message=str(error), code=_error_code(error)))
            return
        if turn.state == "interrupted":
            return  # ended by its fade; `turn.interrupted` was already sent
        turn.state = "done"
        wall_ms = 1000.0 * (time.perf_counter() - started)
        audio_ms = turn.audio_ms
        self._emit(turn, TurnDone(**common, audio_ms=audio_ms))
        self._emit(turn, TurnMetrics(
            **common,
            engine=watch.engine,
            degraded=watch.engine != self.engine,
            time_to_first_audio_ms=(
                None if first_audio is None else 1000.0 * (first_audio - started)
            ),
            audio_ms=audio_ms,
            chunks=turn.chunks,
            wall_ms=wall_ms,
            real_time_factor=wall_ms / audio_ms if audio_ms else None,
            pauses=turn.utterance.rate.pauses,
            underflows=turn.utterance.rate.underflows,
            trace_id=_trace_id(turn.utterance.probe.span_context),
        ))

    async def _feed(self, turn: Turn, utterance: Any) -> None:
        async with turn.text_recv:
            async for text, final in turn.text_recv:
                await utterance.send_text(text, final=final)
                if final:
                    return

    async def _put_audio(
        self, turn: Turn, samples: np.ndarray, sample_rate: int, *, fade_out: bool = False
    ) -> None:
        event = AudioDelta(
            session_id=self.id, turn=turn.index, generation=turn.generation,
            samples=samples, sample_rate=sample_rate, seq=turn.chunks, start=turn.samples,
            fade_out=fade_out,
        )
        turn.chunks += 1
        turn.samples += len(samples)
        turn.sample_rate = sample_rate
        await self._queue.put_audio(
            event, lambda: turn.generation < self.generation and not fade_out
        )

    def _emit(self, turn: Turn, event: SessionEvent) -> None:
        if turn.generation == self.generation and turn.state != "interrupted":
            self._queue.put_control(event)

    def _close(self, reason: str) -> None:
        self.closed_reason = reason
        for turn in self._active:
            turn.scope.cancel()
            turn.text_send.close()
        self._queue.drop_audio(self.generation + 1)
        self._queue.put_control(
            SessionClosed(
                session_id=self.id, turn=self.turns, generation=self.generation, reason=reason
            )
        )
        self._queue.close()


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, EngineUnloadedError):
        return "engine_unloaded"
    if isinstance(exc, UnknownComponentError):
        return "engine_unavailable"
    return "synthesis_failed"


def _trace_id(span_context: Any) -> str | None:
    """The W3C trace id of a turn's span context, or None while tracing is off."""
    if span_context is None or not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x")
