"""Engine availability across utterances: mark an engine down, probe it back up.

When failover gives up on an engine (it failed twice and the stream moved on), the engine is
marked unavailable: later utterances start on the first available engine of their chain
instead of paying its stall timeout again (LiveKit's FallbackAdapter). A background probe
asks the engine to speak a short phrase every `interval_s`; once it yields audio, the engine is
available again. An engine unloaded meanwhile is not probed any more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import anyio
from morpheus_tts.host.contracts import SynthesisRequest, TurnRequest
from morpheus_tts.host.registry import LoadedEngine
from morpheus_tts.host.steps import engine_steps, run_locked, thread_steps

log = logging.getLogger(__name__)

PROBE_TEXT = "Hello."
PROBE_INTERVAL_S = 5.0


class Availability:
    """Marks engines unavailable and runs their recovery probes.

    Args:
        spawn: starts a background task (`StreamHost.start_soon`).
        is_loaded: whether an engine is still loaded (the probe stops when it is not).
        stall_timeout_s: longest wait for one probe step.
        interval_s: seconds between probes.
    """

    def __init__(
        self,
        spawn: Callable[..., Any],
        is_loaded: Callable[[LoadedEngine], bool],
        *,
        stall_timeout_s: float | None = 15.0,
        interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self._spawn, self._is_loaded = spawn, is_loaded
        self.stall_timeout_s, self.interval_s = stall_timeout_s, interval_s

    def mark_unavailable(self, loaded: LoadedEngine, reason: str) -> None:
        """Route new utterances around `loaded` until a probe hears it speak."""
        if not loaded.available:
            return
        loaded.available, loaded.unavailable_reason = False, reason
        log.warning("engine unavailable", extra={"engine": loaded.name, "error": reason})
        try:
            self._spawn(self._recover, loaded)
        except RuntimeError:  # no background task group (a bare runtime): stays marked
            log.warning("no recovery probe can run", extra={"engine": loaded.name})

    async def _recover(self, loaded: LoadedEngine) -> None:
        while not loaded.available and self._is_loaded(loaded):
            await anyio.sleep(self.interval_s)
            if not self._is_loaded(loaded):
                return
            try:
                spoke = await probe(loaded, self.stall_timeout_s)
            except Exception as exc:  # noqa: BLE001 - still down; try again later
                loaded.unavailable_reason = f"{type(exc).__name__}: {exc}"
                continue
            if spoke:
                loaded.available, loaded.unavailable_reason = True, None
                log.info("engine available again", extra={"engine": loaded.name})


async def probe(loaded: LoadedEngine, stall_timeout_s: float | None) -> bool:
    """Ask the engine to speak `PROBE_TEXT`; True when any audio came."""
    if loaded.turn_shaped:
        turn = loaded.engine.open_turn(  # type: ignore[attr-defined]
            TurnRequest(session_id=None, turn=1, voice=None)
        )
        try:
            for steps in (turn.push_text(PROBE_TEXT), turn.end_text()):
                async with aclosing(thread_steps(loaded, steps, stall_timeout_s)) as outputs:
                    async for output in outputs:
                        if len(output):
                            return True
            return False
        finally:
            await run_locked(loaded, turn.close, wait_s=stall_timeout_s)
    request = SynthesisRequest(text=PROBE_TEXT)
    async with aclosing(engine_steps(loaded, request, stall_timeout_s)) as outputs:
        async for output in outputs:
            if len(output):
                return True
    return False
