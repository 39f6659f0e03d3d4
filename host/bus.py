"""The control side of an utterance's bus: events that must overtake queued audio.

Text, frames and PCM travel between stages through bounded memory streams; an event behind
them would wait for the audio ahead of it to drain. A `BargeIn` must not wait, so it is
published on a `ControlBus` instead: every stage subscribes when it starts, and `publish`
hands the event to each subscriber at once, in the order they subscribed. Subscribers act
synchronously (reset a chunker, cancel a scope, note the fade and what was heard); the stages
then finish their work in their own tasks.
"""

from __future__ import annotations

from collections.abc import Callable

from morpheus_tts.host.events import Event

Handler = Callable[[Event], None]


class ControlBus:
    """Subscribers by stage name; `history` keeps what was published (tests, diagnostics)."""

    def __init__(self) -> None:
        self._handlers: list[tuple[str, Handler]] = []
        self.history: list[tuple[Event, list[str]]] = []

    def subscribe(self, stage: str, handler: Handler) -> None:
        """Call `handler(event)` for every event published from now on."""
        self._handlers.append((stage, handler))

    def publish(self, event: Event) -> list[str]:
        """Deliver `event` to every subscriber now; returns the stages that received it."""
        reached = []
        for stage, handler in list(self._handlers):
            handler(event)
            reached.append(stage)
        self.history.append((event, reached))
        return reached
