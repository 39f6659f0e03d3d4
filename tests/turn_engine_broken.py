"""A plugin whose engine declares `incremental_text=True` but has no turn methods."""

from __future__ import annotations

from typing import Any

from morpheus_tts.host import Component, EngineCapabilities, hookimpl


class HalfTurnEngine:
    """Promises turns, implements only `synthesize`."""

    capabilities = EngineCapabilities(sample_rate=24000, voices=("x",), incremental_text=True)

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {"ready": True}

    def synthesize(self, request: Any) -> Any:
        return iter(())


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer `halfturn`."""
    return [Component(name="halfturn", kind="engine", create=HalfTurnEngine)]
