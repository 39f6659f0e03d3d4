"""The turn-shaped test engine again, as "turnstub2" (a failover target beside "turnstub")."""

from __future__ import annotations

from morpheus_tts.host import Component, hookimpl
from turn_engine import TurnStubEngine, TurnStubSettings


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer the stub engine as `turnstub2`."""
    return [Component(name="turnstub2", kind="engine", create=TurnStubEngine,
                      settings=TurnStubSettings, description="turn-shaped test engine, again")]
