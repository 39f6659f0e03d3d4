"""Realtime sessions over HTTP + SSE (protocol: docs/sessions.md; WebSocket: api/realtime.py).

`POST /v1/sessions` opens one; `POST .../text` pushes a delta, `POST .../barge-in` interrupts,
`GET .../events` streams `turn.started`, `audio.delta` (base64 pcm16), `turn.done`,
`turn.interrupted`, `metrics`, `error` and `session.closed` as server-sent events, `DELETE` ends
it. This module only translates; the sessions themselves live in `host.sessions`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import ServerSentEvent, ServerSentEventMessage
from morpheus_tts.api.encoders import pcm16
from morpheus_tts.api.errors import OpenAIError, decode_body, invalid_value, require_api_key
from morpheus_tts.api.openapi import documented, error_responses
from morpheus_tts.api.security import key_matches, presented_key
from morpheus_tts.api.textguard import clean_text
from morpheus_tts.host.config import read_environment
from morpheus_tts.host.registry import UnknownComponentError
from morpheus_tts.host.runtime import SpeakRequest
from morpheus_tts.host.session_events import AudioDelta, SessionClosed, SessionEvent
from morpheus_tts.host.session_manager import SessionManager
from morpheus_tts.host.sessions import Session, SessionError

KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream

_STATUS_BY_CODE = {
    "session_not_found": 404,
    "session_closed": 409,
    "too_many_turns": 429,
    "text_backlog_full": 429,
    "too_many_sessions": 429,
    "turn_text_too_long": 400,
}
MAX_SETTINGS_BYTES = 8192  # `settings` of a session, as compact JSON
MAX_SETTINGS_DEPTH = 4  # objects/arrays nested inside `settings`


class SessionCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`POST /v1/sessions` (and `/v1/realtime`'s `session.create` message): all optional.

    Args:
        engine: engine name (default: `[server] default_engine` at creation, then pinned).
        voice: one of the engine's voices (default: the configured or engine's first).
        speed: 0.25-4.0.
        settings: engine-specific options for every turn.
        low_latency: prefer an early first chunk.
        pace: hold synthesis to the listener's playback, judged by what the socket took
            (default: `[server] pace_playback`, on); false sends audio as fast as it is made.
    """

    engine: str | None = None
    voice: str | None = None
    speed: float = 1.0
    settings: dict[str, Any] = {}
    low_latency: bool = False
    pace: bool | None = None


class TextInput(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/sessions/{id}/text`: a text delta; `final` ends the turn's text."""

    text: str
    final: bool = False


# -- shared helpers --------------------------------------------------------------------------


def session_manager(state: State) -> SessionManager:
    """The app's SessionManager (created in the lifespan)."""
    return state.sessions


def session_error(exc: SessionError) -> OpenAIError:
    """The HTTP error for a `SessionError`."""
    return OpenAIError(_STATUS_BY_CODE.get(exc.code, 400), str(exc), code=exc.code)


def check_settings(settings: dict[str, Any]) -> None:
    """`settings` stays small: at most `MAX_SETTINGS_BYTES` of JSON, `MAX_SETTINGS_DEPTH` deep.

    Raises:
        OpenAIError: 400 `settings_too_large` naming `settings`.
    """
    size = len(msgspec.json.encode(settings))
    if size > MAX_SETTINGS_BYTES or _depth(settings) > MAX_SETTINGS_DEPTH:
        raise invalid_value(
            f"Invalid 'settings': at most {MAX_SETTINGS_BYTES} bytes of JSON nested at most "
            f"{MAX_SETTINGS_DEPTH} levels deep (got {size} bytes). Send engine options only.",
            "settings",
            "settings_too_large",
        )


def _depth(value: Any) -> int:
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            pending.extend((child, level + 1) for child in
                           (item.values() if isinstance(item, dict) else item))
    return deepest


def client_owner(headers: Any, client: Any) -> str:
    """Who a request comes from, for the per-client session limit: its address, and the key it
    presents when that is one of the server's keys (made-up keys on an open server do not buy
    more sessions)."""
    address = client.host if client is not None else "unknown"
    key = presented_key(dict(headers))
    env = read_environment()
    if key and key_matches(key, env.api_key, env.admin_key):
        return f"{hashlib.sha256(key.encode()).hexdigest()[:16]}@{address}"
    return address


def session_text(manager: SessionManager, text: str) -> str:
    """A pushed delta, checked like every spoken text (`api.textguard`) and capped at
    `[server] max_push_chars`; returns what the turn gets."""
    return clean_text(text, "text", manager.runtime.config.server.max_push_chars, whole=False)


def create_session(
    manager: SessionManager, body: SessionCreate, owner: str | None = None
) -> Session:
    """Open a session, turning host errors into API errors naming the field."""
    check_settings(body.settings)
    request = SpeakRequest(
        engine=body.engine, voice=body.voice, speed=body.speed, options=body.settings,
        low_latency=body.low_latency, pace=body.pace,
    )
    try:
        return manager.create(request, owner=owner)
    except UnknownComponentError as exc:
        param = "voice" if exc.kind == "voice" else "engine"
        status = 400 if exc.kind == "voice" else 404
        raise OpenAIError(status, str(exc), param=param, code=f"{exc.kind}_not_found") from None
    except ValueError as exc:
        raise invalid_value(str(exc), "speed") from None
    except SessionError as exc:
        raise session_error(exc) from None


def lookup(manager: SessionManager, session_id: str) -> Session:
    """The session or a 404."""
    try:
        return manager.get(session_id)
    except SessionError as exc:
        raise session_error(exc) from None


def session_info(session: Session, manager: SessionManager) -> dict[str, Any]:
    """The JSON description of a session."""
    runtime = manager.runtime
    return {
        "id": session.id,
        "object": "realtime.session",
        "engine": session.engine,
        "voice": session.voice,
        "speed": session.request.speed,
        "pace": (
            runtime.config.server.pace_playback
            if session.request.pace is None else session.request.pace
        ),
        "sample_rate": runtime.config.server.sample_rate,
        "created_at": int(session.created_at),
        "idle_timeout_s": runtime.config.server.session_idle_timeout_s,
        "turns": session.turns,
        "generation": session.generation,
        "events_url": f"/v1/sessions/{session.id}/events",
        "ws_url": f"/v1/sessions/{session.id}/ws",
    }


def event_json(event: SessionEvent) -> dict[str, Any]:
    """An event as JSON: audio becomes base64 little-endian pcm16 under `audio`."""
    if isinstance(event, AudioDelta):
        body = {
            "type": "audio.delta",
            "session_id": event.session_id,
            "turn": event.turn,
            "generation": event.generation,
            "seq": event.seq,
            "start": event.start,
            "sample_rate": event.sample_rate,
            "audio": base64.b64encode(pcm16(event.samples)).decode("ascii"),
        }
        if event.fade_out:
            body["fade_out"] = True  # the faded tail of a turn cut by barge-in
        return body
    return msgspec.to_builtins(event)


# -- HTTP ------------------------------------------------------------------------------------


@post(
    "/v1/sessions", guards=[require_api_key], status_code=201,
    operation_class=documented(SessionCreate, body_required=False),
    responses=error_responses(400, 401, 404, 429),
)
async def open_session(request: Request, state: State) -> dict[str, Any]:
    """Open a realtime session: `{engine?, voice?, speed?, settings?, low_latency?}`."""
    raw = await request.body()
    body = decode_body(raw, SessionCreate) if raw.strip() else SessionCreate()
    manager = session_manager(state)
    owner = client_owner(request.headers, request.client)
    return session_info(create_session(manager, body, owner), manager)


@get(
    "/v1/sessions/{session_id:str}", guards=[require_api_key], sync_to_thread=False,
    responses=error_responses(401, 404),
)
def get_session(state: State, session_id: FromPath[str]) -> dict[str, Any]:
    """Describe a live session."""
    manager = session_manager(state)
    return session_info(lookup(manager, session_id), manager)


@post(
    "/v1/sessions/{session_id:str}/text", guards=[require_api_key], status_code=202,
    operation_class=documented(TextInput), responses=error_responses(400, 401, 404, 409, 429),
)
async def push_text(request: Request, state: State, session_id: FromPath[str]) -> dict[str, Any]:
    """Push `{text, final}`; the first delta after a finished turn opens the next turn."""
    manager = session_manager(state)
    session = lookup(manager, session_id)
    body = decode_body(await request.body(), TextInput)
    text = session_text(manager, body.text)
    try:
        turn = session.send_text(text, final=body.final)
    except SessionError as exc:
        raise session_error(exc) from None
    return {"turn": turn.index, "generation": turn.generation}


@post(
    "/v1/sessions/{session_id:str}/barge-in", guards=[require_api_key], status_code=200,
    responses=error_responses(401, 404, 409),
)
async def barge_in(state: State, session_id: FromPath[str]) -> dict[str, Any]:
    """Stop speaking now; answers the interrupted turns and the new generation."""
    session = lookup(session_manager(state), session_id)
    try:
        turns = session.barge_in()
    except SessionError as exc:
        raise session_error(exc) from None
    return {"interrupted": [t.index for t in turns], "generation": session.generation}


@delete(
    "/v1/sessions/{session_id:str}", guards=[require_api_key], status_code=204,
    responses=error_responses(401, 404),
)
async def end_session(state: State, session_id: FromPath[str]) -> None:
    """End a session; its consumer gets `session.closed`."""
    manager = session_manager(state)
    lookup(manager, session_id)
    await manager.close(session_id, "deleted")


@get(
    "/v1/sessions/{session_id:str}/events", guards=[require_api_key], sync_to_thread=False,
    responses=error_responses(401, 404),
)
def session_events(state: State, session_id: FromPath[str]) -> ServerSentEvent:
    """The session's events as SSE; a second reader takes over from the first."""
    session = lookup(session_manager(state), session_id)
    return ServerSentEvent(
        _sse_messages(session), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _sse_messages(session: Session) -> AsyncIterator[ServerSentEventMessage]:
    lease = session.attach()
    try:
        while True:
            event: SessionEvent | None | bool = False
            with anyio.move_on_after(KEEPALIVE_S):
                event = await session.next_event(lease)
            if event is False:
                yield ServerSentEventMessage(comment="keepalive", data=None)
                continue
            if event is None:
                return
            yield ServerSentEventMessage(event=event_type(event), data=dumps(event_json(event)))
            if isinstance(event, AudioDelta):
                session.delivered(event)  # the send returned: the socket took it
            if isinstance(event, SessionClosed):
                return
    finally:
        session.detach(lease)  # a client gone mid-turn interrupts it


def event_type(event: SessionEvent) -> str:
    """The wire name of an event (`turn.started`, ...)."""
    return str(type(event).__struct_config__.tag)


def dumps(data: dict[str, Any]) -> str:
    """Compact JSON text."""
    return json.dumps(data, separators=(",", ":"))


ROUTES = [open_session, get_session, push_text, barge_in, end_session, session_events]
