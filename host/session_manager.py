"""The server's live sessions: create, look up, close, and expire the idle ones.

`host.sessions` holds what one session does; this module owns them all, enforces
`[server] max_sessions`, pins each new session's engine and voice, and tells a turn-shaped
engine (`IncrementalEngine.end_session`) once when a session ends, after its last turn closed.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time

import anyio
import msgspec
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from morpheus_tts.host.sessions import Session, SessionError
from morpheus_tts.host.steps import run_locked

TURN_CLOSE_WAIT_S = 5.0  # how long a closing session waits for its turns to let go

log = logging.getLogger(__name__)


class SessionManager:
    """Every live session of the server, by id; expires idle ones.

    Args:
        runtime: the server's runtime (its `[server]` settings give the idle timeout and the
            session limit; its stream host runs the turns).
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self) -> None:
        """Start expiring idle sessions (call inside `runtime.running()`)."""
        self.runtime.streams.start_soon(self._expire_idle)

    def create(self, request: SpeakRequest, owner: str | None = None) -> Session:
        """Open a session; the request is validated now (engine, voice, speed).

        Args:
            request: what every turn speaks with.
            owner: who asks (an API key's digest or a client address): one owner holds at most
                `[server] max_sessions_per_client` sessions, so one client cannot take them all.

        Raises:
            UnknownComponentError: engine or voice not loaded (the message lists what is).
            ValueError: speed out of range.
            SessionError: the server already holds `max_sessions` sessions, or `owner` holds
                `max_sessions_per_client`.
        """
        server = self.runtime.config.server
        limit = server.max_sessions
        if len(self._sessions) >= limit:
            raise SessionError(
                f"the server holds its limit of {limit} sessions; delete one or raise "
                "[server] max_sessions",
                "too_many_sessions",
            )
        held = sum(1 for s in self._sessions.values() if owner is not None and s.owner == owner)
        if owner is not None and held >= server.max_sessions_per_client:
            raise SessionError(
                f"this client already holds {held} sessions, the limit per client; delete one "
                "(DELETE /v1/sessions/{id}) or raise [server] max_sessions_per_client",
                "too_many_sessions",
            )
        spec = self.runtime.resolve(request)
        session_id = f"sess_{secrets.token_urlsafe(24)}"
        pinned = msgspec.structs.replace(
            request, engine=spec.engine.name, voice=spec.voice, session_id=session_id
        )
        session = Session(session_id, pinned, self.runtime, self.runtime.streams.start_soon)
        session.owner = owner
        self._sessions[session_id] = session
        log.info("session opened", extra={"session": session_id, "engine": session.engine})
        return session

    def get(self, session_id: str) -> Session:
        """The live session `session_id`.

        Raises:
            SessionError: no such session (never created, deleted or expired).
        """
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionError(
                f"no session {session_id!r}: it was never created, was deleted, or expired "
                "after being idle; create one with POST /v1/sessions",
                "session_not_found",
            )
        return session

    async def close(self, session_id: str, reason: str = "deleted") -> None:
        """End a session: cancel its turns, tell its consumer, free the engine's state."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        session._close(reason)
        log.info("session closed", extra={"session": session_id, "reason": reason})
        loaded = self.runtime.registry.engines.get(session.engine)
        if loaded is None or not loaded.turn_shaped:
            return
        with anyio.CancelScope(shield=True):
            await session.wait_turns(TURN_CLOSE_WAIT_S)  # their interrupt/close come first
            try:
                end = functools.partial(loaded.engine.end_session, session_id)  # type: ignore[attr-defined]
                await run_locked(loaded, end)
            except Exception:  # an engine's cleanup fault must not break the API
                log.exception("engine end_session failed", extra={"session": session_id})

    async def close_all(self, reason: str = "shutdown") -> None:
        """End every session (server shutdown)."""
        for session_id in list(self._sessions):
            await self.close(session_id, reason)

    async def _expire_idle(self) -> None:
        while True:
            timeout = self.runtime.config.server.session_idle_timeout_s
            await anyio.sleep(min(max(timeout / 4, 0.05), 5.0))
            now = time.monotonic()
            for session in list(self._sessions.values()):
                if session.idle_s(now) > timeout:
                    await self.close(session.id, "expired")
