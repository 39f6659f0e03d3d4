"""Realtime sessions over HTTP + SSE and over a WebSocket (protocols: docs/sessions.md).

HTTP: `POST /v1/sessions` opens one; `POST .../text` pushes a delta, `POST .../barge-in`
interrupts, `GET .../events` streams `turn.started`, `audio.delta` (base64 pcm16), `turn.done`,
`turn.interrupted`, `metrics`, `error` and `session.closed` as server-sent events, `DELETE` ends
it. WebSocket: `.../ws` (or `/v1/realtime`, which opens a session itself) takes JSON control
messages and answers with the same events as JSON, audio as binary `PCM0` frames (float32).
This module only translates; the sessions themselves live in `host.sessions`.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import numpy as np
from litestar import Request, delete, get, post
from litestar.connection import WebSocket
from litestar.datastructures import State
from litestar.exceptions import WebSocketDisconnect
from litestar.handlers import websocket
from litestar.response import ServerSentEvent, ServerSentEventMessage

from api.encoders import pcm16
from api.errors import OpenAIError, decode_body, invalid_value, require_api_key
from host.registry import UnknownComponentError
from host.runtime import SpeakRequest
from host.session_events import AudioDelta, SessionClosed, SessionEvent
from host.sessions import Session, SessionError, SessionManager

KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
FIRST_MESSAGE_WAIT_S = 1.0  # /v1/realtime without query parameters waits this long for
# a `session.create` before opening a session with the defaults
QUERY_FIELDS = ("engine", "voice", "speed", "low_latency")
PCM0_MAGIC = b"PCM0"
WS_SESSION_NOT_FOUND = 4404  # application close codes live in 4000-4999

_STATUS_BY_CODE = {
    "session_not_found": 404,
    "session_closed": 409,
    "too_many_turns": 429,
    "text_backlog_full": 429,
    "too_many_sessions": 429,
}


class SessionCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`POST /v1/sessions` (and `/v1/realtime`'s `session.create` message): all optional.

    Args:
        engine: engine name (default: `[server] default_engine` at creation, then pinned).
        voice: one of the engine's voices (default: the configured or engine's first).
        speed: 0.25-4.0.
        settings: engine-specific options for every turn.
        low_latency: prefer an early first chunk.
    """

    engine: str | None = None
    voice: str | None = None
    speed: float = 1.0
    settings: dict[str, Any] = {}
    low_latency: bool = False


class TextInput(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/sessions/{id}/text`: a text delta; `final` ends the turn's text."""

    text: str
    final: bool = False


# WebSocket client messages: one tagged union, decoded strictly.
class _TextMessage(TextInput, tag="text", tag_field="type", forbid_unknown_fields=True):
    pass


class _BargeIn(msgspec.Struct, tag="barge_in", tag_field="type", forbid_unknown_fields=True):
    pass


class _Close(msgspec.Struct, tag="close", tag_field="type", forbid_unknown_fields=True):
    pass


class _Create(SessionCreate, tag="session.create", tag_field="type", forbid_unknown_fields=True):
    pass


ClientMessage = _TextMessage | _BargeIn | _Close | _Create


# -- shared helpers --------------------------------------------------------------------------


def session_manager(state: State) -> SessionManager:
    """The app's SessionManager (created in the lifespan)."""
    return state.sessions


def session_error(exc: SessionError) -> OpenAIError:
    """The HTTP error for a `SessionError`."""
    return OpenAIError(_STATUS_BY_CODE.get(exc.code, 400), str(exc), code=exc.code)


def create_session(manager: SessionManager, body: SessionCreate) -> Session:
    """Open a session, turning host errors into API errors naming the field."""
    request = SpeakRequest(
        engine=body.engine, voice=body.voice, speed=body.speed, options=body.settings,
        low_latency=body.low_latency,
    )
    try:
        return manager.create(request)
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
        return {
            "type": "audio.delta",
            "session_id": event.session_id,
            "turn": event.turn,
            "generation": event.generation,
            "seq": event.seq,
            "start": event.start,
            "sample_rate": event.sample_rate,
            "audio": base64.b64encode(pcm16(event.samples)).decode("ascii"),
        }
    return msgspec.to_builtins(event)


def pcm0_frame(samples: np.ndarray, sample_rate: int, channels: int = 1) -> bytes:
    """MLX-Audio's frame: b'PCM0' | u32 rate | u32 samples | u32 channels | float32 LE data."""
    payload = np.ascontiguousarray(samples, dtype="<f4")
    frames = len(payload) // channels
    return PCM0_MAGIC + struct.pack("<III", sample_rate, frames, channels) + payload.tobytes()


# -- HTTP ------------------------------------------------------------------------------------


@post("/v1/sessions", guards=[require_api_key], status_code=201)
async def open_session(request: Request, state: State) -> dict[str, Any]:
    """Open a realtime session: `{engine?, voice?, speed?, settings?, low_latency?}`."""
    raw = await request.body()
    body = decode_body(raw, SessionCreate) if raw.strip() else SessionCreate()
    manager = session_manager(state)
    return session_info(create_session(manager, body), manager)


@get("/v1/sessions/{session_id:str}", guards=[require_api_key], sync_to_thread=False)
def get_session(state: State, session_id: str) -> dict[str, Any]:
    """Describe a live session."""
    manager = session_manager(state)
    return session_info(lookup(manager, session_id), manager)


@post("/v1/sessions/{session_id:str}/text", guards=[require_api_key], status_code=202)
async def push_text(request: Request, state: State, session_id: str) -> dict[str, Any]:
    """Push `{text, final}`; the first delta after a finished turn opens the next turn."""
    session = lookup(session_manager(state), session_id)
    body = decode_body(await request.body(), TextInput)
    try:
        turn = session.send_text(body.text, final=body.final)
    except SessionError as exc:
        raise session_error(exc) from None
    return {"turn": turn.index, "generation": turn.generation}


@post("/v1/sessions/{session_id:str}/barge-in", guards=[require_api_key], status_code=200)
async def barge_in(state: State, session_id: str) -> dict[str, Any]:
    """Stop speaking now; answers the interrupted turns and the new generation."""
    session = lookup(session_manager(state), session_id)
    try:
        turns = session.barge_in()
    except SessionError as exc:
        raise session_error(exc) from None
    return {"interrupted": [t.index for t in turns], "generation": session.generation}


@delete("/v1/sessions/{session_id:str}", guards=[require_api_key], status_code=204)
async def end_session(state: State, session_id: str) -> None:
    """End a session; its consumer gets `session.closed`."""
    manager = session_manager(state)
    lookup(manager, session_id)
    await manager.close(session_id, "deleted")


@get("/v1/sessions/{session_id:str}/events", guards=[require_api_key], sync_to_thread=False)
def session_events(state: State, session_id: str) -> ServerSentEvent:
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
            yield ServerSentEventMessage(event=event_type(event), data=_dumps(event_json(event)))
            if isinstance(event, SessionClosed):
                return
    finally:
        session.detach(lease)  # a client gone mid-turn interrupts it


def event_type(event: SessionEvent) -> str:
    """The wire name of an event (`turn.started`, ...)."""
    return str(type(event).__struct_config__.tag)


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


# -- WebSocket -------------------------------------------------------------------------------


@websocket("/v1/sessions/{session_id:str}/ws", guards=[require_api_key])
async def session_socket(socket: WebSocket, session_id: str) -> None:
    """Speak a session over a WebSocket; the session outlives the connection."""
    await socket.accept()
    manager = session_manager(socket.app.state)
    try:
        session = manager.get(session_id)
    except SessionError as exc:
        await _refuse(socket, exc)
        return
    await _serve(socket, manager, session, owned=False)


@websocket("/v1/realtime", guards=[require_api_key])
async def realtime_socket(socket: WebSocket) -> None:
    """Open a session for this connection (query `engine`, `voice`, `speed`, or a first
    `session.create` message) and speak it; the session ends with the connection."""
    await socket.accept()
    manager = session_manager(socket.app.state)
    query = {k: socket.query_params[k] for k in QUERY_FIELDS if k in socket.query_params}
    first: ClientMessage | None = None
    body = SessionCreate()
    try:
        if query:
            body = msgspec.convert(query, SessionCreate, strict=False)
        else:
            with anyio.move_on_after(FIRST_MESSAGE_WAIT_S):
                first = await _first_message(socket)
            if isinstance(first, _Create):
                body, first = SessionCreate(**msgspec.structs.asdict(first)), None
        session = create_session(manager, body)
    except (OpenAIError, msgspec.ValidationError, WebSocketDisconnect) as exc:
        if not isinstance(exc, WebSocketDisconnect):
            await _refuse(socket, exc)
        return
    await _serve(socket, manager, session, owned=True, first=first)


async def _first_message(socket: WebSocket) -> ClientMessage | None:
    """A `session.create` may come first; anything else is handled once the session exists."""
    message = await socket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(detail="client left", code=message.get("code", 1000))
    text = message.get("text")
    if text is None:
        return None
    try:
        return msgspec.json.decode(text, type=ClientMessage)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise OpenAIError(400, f"invalid first message: {exc}", code="invalid_message") from None


async def _refuse(socket: WebSocket, exc: Exception) -> None:
    error = exc if isinstance(exc, OpenAIError) else None
    if isinstance(exc, SessionError):
        error = session_error(exc)
    if error is None:
        error = OpenAIError(400, str(exc), code="invalid_value")
    await socket.send_json({"type": "error", **error.envelope()})
    code = WS_SESSION_NOT_FOUND if error.status_code == 404 else 4000 + error.status_code
    await socket.close(code=code, reason=error.message[:120])


async def _serve(
    socket: WebSocket,
    manager: SessionManager,
    session: Session,
    *,
    owned: bool,
    first: ClientMessage | None = None,
) -> None:
    """Run the send and receive loops until the session closes or the client leaves."""
    lock = anyio.Lock()  # the two loops share one socket

    async def send_json(data: dict[str, Any]) -> None:
        async with lock:
            await socket.send_data(_dumps(data), mode="text")

    async def send_events() -> None:
        while (event := await session.next_event(lease)) is not None:
            if isinstance(event, AudioDelta):
                async with lock:
                    await socket.send_data(pcm0_frame(event.samples, event.sample_rate), "binary")
            else:
                await send_json(event_json(event))
            if isinstance(event, SessionClosed):
                break
        tg.cancel_scope.cancel()

    async def handle(message: ClientMessage | None, raw: str | None) -> bool:
        """Act on one client message; False once the client asked to close."""
        try:
            if message is None:
                message = msgspec.json.decode(raw or "", type=ClientMessage)
            if isinstance(message, _Close):
                return False
            if isinstance(message, _TextMessage):
                turn = session.send_text(message.text, final=message.final)
                await send_json(
                    {"type": "text.accepted", "turn": turn.index, "generation": turn.generation}
                )
            elif isinstance(message, _BargeIn):
                session.barge_in()
            else:
                raise SessionError("the session already exists", "session_exists")
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            error = OpenAIError(400, f"invalid message: {exc}", code="invalid_message")
            await send_json({"type": "error", **error.envelope()})
        except SessionError as exc:
            await send_json({"type": "error", **session_error(exc).envelope()})
        return True

    async def receive_messages() -> None:
        """Until `close` (the send loop then delivers `session.closed`) or disconnect."""
        if first is not None and not await handle(first, None):
            await manager.close(session.id, "closed")
            return
        while True:
            message = await socket.receive()
            if message["type"] == "websocket.disconnect":
                tg.cancel_scope.cancel()
                return
            text = message.get("text")
            if text is None:
                error = OpenAIError(400, "send JSON text frames", code="invalid_message")
                await send_json({"type": "error", **error.envelope()})
            elif not await handle(None, text):
                await manager.close(session.id, "closed")
                return

    lease = session.attach()
    try:
        await send_json({"type": "session.created", "session": session_info(session, manager)})
        async with anyio.create_task_group() as tg:
            tg.start_soon(send_events)
            tg.start_soon(receive_messages)
    except (OSError, WebSocketDisconnect):
        pass  # the client went away mid-send
    finally:
        session.detach(lease)
        if owned:
            await manager.close(session.id, "closed")
    try:
        await socket.close(code=1000, reason=session.closed_reason or "")
    except (OSError, WebSocketDisconnect, RuntimeError):
        pass  # already closed by the client


ROUTES = [
    open_session, get_session, push_text, barge_in, end_session, session_events,
    session_socket, realtime_socket,
]
