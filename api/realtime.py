"""Realtime sessions over a WebSocket (protocol: docs/sessions.md).

`/v1/sessions/{id}/ws` speaks a session opened over HTTP; `/v1/realtime` opens one for the
connection. Both take JSON control messages (`text`, `barge_in`, `close`) and answer with the
session's events as JSON, audio as binary frames in MLX-Audio's `PCM0` layout (float32). A send
loop and a receive loop share the socket in one task group.
"""

from __future__ import annotations

import struct
from typing import Any

import anyio
import msgspec
import numpy as np
from litestar.connection import WebSocket
from litestar.exceptions import WebSocketDisconnect
from litestar.handlers import websocket
from litestar.params import FromPath
from morpheus_tts.api.errors import TOO_DEEP, OpenAIError, require_api_key
from morpheus_tts.api.security import chosen_subprotocol
from morpheus_tts.api.sessions import (
    SessionCreate,
    TextInput,
    client_owner,
    create_session,
    dumps,
    event_json,
    session_error,
    session_info,
    session_manager,
    session_text,
)
from morpheus_tts.host.session_events import AudioDelta, SessionClosed
from morpheus_tts.host.session_manager import SessionManager
from morpheus_tts.host.sessions import Session, SessionError

FIRST_MESSAGE_WAIT_S = 1.0  # /v1/realtime without query parameters waits this long for
# a `session.create` before opening a session with the defaults
QUERY_FIELDS = ("engine", "voice", "speed", "low_latency", "pace")
PCM0_MAGIC = b"PCM0"
WS_SESSION_NOT_FOUND = 4404  # application close codes live in 4000-4999


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


def pcm0_frame(samples: np.ndarray, sample_rate: int, channels: int = 1) -> bytes:
    """MLX-Audio's frame: b'PCM0' | u32 rate | u32 samples | u32 channels | float32 LE data."""
    payload = np.ascontiguousarray(samples, dtype="<f4")
    frames = len(payload) // channels
    return PCM0_MAGIC + struct.pack("<III", sample_rate, frames, channels) + payload.tobytes()


@websocket("/v1/sessions/{session_id:str}/ws", guards=[require_api_key])
async def session_socket(socket: WebSocket, session_id: FromPath[str]) -> None:
    """Speak a session over a WebSocket; the session outlives the connection."""
    await socket.accept(subprotocols=chosen_subprotocol(dict(socket.headers)))
    manager = session_manager(socket.app.state)
    try:
        session = manager.get(session_id)
    except SessionError as exc:
        await _refuse(socket, exc)
        return
    await _serve(socket, manager, session, owned=False)


@websocket("/v1/realtime", guards=[require_api_key])
async def realtime_socket(socket: WebSocket) -> None:
    """Open a session for this connection and speak it; it ends with the connection.

    The settings come from the query (`engine`, `voice`, `speed`, `low_latency`, `pace`) or
    from a first `session.create` message.
    """
    await socket.accept(subprotocols=chosen_subprotocol(dict(socket.headers)))
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
        session = create_session(manager, body, client_owner(socket.headers, socket.client))
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
    except RecursionError:
        raise OpenAIError(400, TOO_DEEP, code="json_too_deep") from None


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
            await socket.send_data(dumps(data), mode="text")

    async def send_events() -> None:
        while (event := await session.next_event(lease)) is not None:
            if isinstance(event, AudioDelta):
                async with lock:
                    await socket.send_data(pcm0_frame(event.samples, event.sample_rate), "binary")
                session.delivered(event)
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
                text = session_text(manager, message.text)
                turn = session.send_text(text, final=message.final)
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
        except RecursionError:
            error = OpenAIError(400, TOO_DEEP, code="json_too_deep")
            await send_json({"type": "error", **error.envelope()})
        except OpenAIError as exc:
            await send_json({"type": "error", **exc.envelope()})
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


ROUTES = [session_socket, realtime_socket]
