"""What a realtime session tells its consumer, and the bounded queue that carries it.

Events are frozen msgspec Structs with one tagged base (`type` is the wire name: `turn.started`,
`audio.delta`, ...). Every event names its session, its turn and the turn's generation.

The queue lets control events (turn boundaries, errors) pass at once while audio waits for
room: a slow consumer pauses the engine, never a barge-in (control before data). One consumer
reads at a time; its `Lease` is revoked when another takes over.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio
import msgspec
import numpy as np

MAX_CONTROL_EVENTS = 256  # unread control events kept (oldest dropped) while no one reads


# -- events ----------------------------------------------------------------------------------


class SessionEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of what a session tells its consumer; `turn` counts from 1."""

    session_id: str
    turn: int = 0
    generation: int = 0


class TurnStarted(SessionEvent, frozen=True, kw_only=True, tag="turn.started"):
    """A turn began speaking."""


class AudioDelta(SessionEvent, frozen=True, kw_only=True, tag="audio.delta"):
    """Mono float32 audio of a turn; `start` is its first sample's offset in the turn.

    `fade_out` marks the short faded tail (`[server] barge_in_fade_ms`) that ends a turn cut by
    barge-in: it follows `turn.interrupted` and survives the drop of the turn's other audio.
    """

    samples: np.ndarray
    sample_rate: int
    seq: int
    start: int
    fade_out: bool = False


class TurnDone(SessionEvent, frozen=True, kw_only=True, tag="turn.done"):
    """All audio of the turn has been queued."""

    audio_ms: float


class TurnInterrupted(SessionEvent, frozen=True, kw_only=True, tag="turn.interrupted"):
    """The turn was cut by barge-in (or its consumer left); its queued audio was dropped."""


class TurnDegraded(SessionEvent, frozen=True, kw_only=True, tag="turn.degraded"):
    """Failover moved the turn to another engine; audio after this event is `engine`'s."""

    engine: str
    from_engine: str
    reason: str


class TurnMetrics(SessionEvent, frozen=True, kw_only=True, tag="metrics"):
    """How a finished turn went.

    `real_time_factor` is wall time over audio time (below 1 is faster than real time); the
    wall time includes waiting for text and for the consumer. `pauses` counts the times the
    engine waited for the listener (pacing); `underflows` the times the listener's buffer, as
    modelled from what its socket took, ran dry before the end.
    """

    engine: str  # the engine that spoke last (another than the session's after failover)
    degraded: bool
    time_to_first_audio_ms: float | None
    audio_ms: float
    chunks: int
    wall_ms: float
    real_time_factor: float | None
    pauses: int
    underflows: int
    trace_id: str | None = None  # the turn's trace (32 hex digits) while tracing is on


class TurnError(SessionEvent, frozen=True, kw_only=True, tag="error"):
    """The turn failed; the session stays usable. Later deltas of the turn are dropped."""

    message: str
    code: str


class SessionClosed(SessionEvent, frozen=True, kw_only=True, tag="session.closed"):
    """The session ended ("deleted", "closed", "expired" or "shutdown"); nothing follows."""

    reason: str


# -- the event queue -------------------------------------------------------------------------


class Lease:
    """A consumer's claim on a session's events; revoked when another consumer attaches."""

    revoked = False


class EventQueue:
    """Control events never wait; audio waits while `capacity` audio events are queued.

    Args:
        capacity: audio events queued before `put_audio` waits.
    """

    def __init__(self, capacity: int) -> None:
        self._items: deque[SessionEvent] = deque()
        self._audio = 0
        self._capacity = capacity
        self._changed = anyio.Event()
        self.closed = False

    def notify(self) -> None:
        """Wake every waiter (something changed)."""
        self._changed.set()
        self._changed = anyio.Event()

    def put_control(self, event: SessionEvent) -> None:
        """Queue a control event now, never waiting."""
        if self.closed:
            return
        if len(self._items) - self._audio >= MAX_CONTROL_EVENTS:
            oldest = next(e for e in self._items if not isinstance(e, AudioDelta))
            self._items.remove(oldest)
        self._items.append(event)
        self.notify()

    async def put_audio(self, event: AudioDelta, stale: Callable[[], bool]) -> None:
        """Queue audio once there is room, unless `stale()` has turned true meanwhile."""
        while self._audio >= self._capacity and not self.closed:
            await self._changed.wait()
        if not self.closed and not stale():
            self._items.append(event)
            self._audio += 1
            self.notify()

    def drop_audio(self, below_generation: int) -> None:
        """Forget queued audio of generations older than `below_generation`."""
        kept = [
            e for e in self._items
            if not (isinstance(e, AudioDelta) and e.generation < below_generation
                    and not e.fade_out)
        ]
        self._items = deque(kept)
        self._audio = sum(isinstance(e, AudioDelta) for e in kept)
        self.notify()

    async def get(self, lease: Lease) -> SessionEvent | None:
        """The oldest event; None once closed and empty, or when `lease` is revoked."""
        while not lease.revoked:
            if self._items:
                event = self._items.popleft()
                if isinstance(event, AudioDelta):
                    self._audio -= 1
                self.notify()
                return event
            if self.closed:
                return None
            await self._changed.wait()
        return None

    def close(self) -> None:
        """Take no more events; readers get what is queued, then None."""
        self.closed = True
        self.notify()
