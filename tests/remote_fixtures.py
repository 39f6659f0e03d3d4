"""A scripted OpenAI-style speech server on 127.0.0.1 (uvicorn in a thread), for remote engines.

Each test sets what it answers: the voices and models listings, the health status, and for
`POST /v1/audio/speech` a status with a body, or pcm bytes sent in given pieces with given
pauses, optionally cut off before the end. Requests are recorded for assertions.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import uvicorn
from conftest import free_port


class CutOff(Exception):
    """Raised by the app to drop the connection mid-response."""


class ScriptedRemote:
    """The server and its script."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.voices: tuple[int, Any] = (200, {"voices": ["amber", "basil"]})
        self.models: tuple[int, Any] = (200, {"object": "list", "data": []})
        self.health_status = 200
        self.status = 200
        self.error_body: Any = {"error": {"message": "bad voice", "type": "invalid_request_error",
                                          "param": "voice", "code": None}}
        self.pieces: list[tuple[bytes, float]] = [(b"\x00\x00", 0.0)]
        self.cut_off = False
        self.pieces_sent = 0
        self.requests: list[dict[str, Any]] = []
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error",
                                lifespan="off", interface="asgi3")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ScriptedRemote:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("scripted remote did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def app(self, scope: dict, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        self.requests.append({
            "method": scope["method"], "path": path, "headers": headers,
            "json": json.loads(body) if body else None,
        })
        if path == "/health":
            await _answer(send, self.health_status, {"status": "ok"})
        elif path == "/v1/audio/voices":
            await _answer(send, *self.voices)
        elif path == "/v1/models":
            await _answer(send, *self.models)
        elif path == "/v1/audio/speech":
            await self._speech(send)
        else:
            await _answer(send, 404, {"detail": "Not Found"})

    async def _speech(self, send: Any) -> None:
        if self.status != 200:
            await _answer(send, self.status, self.error_body)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"audio/pcm")]})
        for data, pause_s in self.pieces:
            await asyncio.sleep(pause_s)
            await send({"type": "http.response.body", "body": data, "more_body": True})
            self.pieces_sent += 1
        if self.cut_off:
            raise CutOff("connection dropped mid-response")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def speech_requests(self) -> list[dict[str, Any]]:
        """The recorded `POST /v1/audio/speech` requests."""
        return [r for r in self.requests if r["path"] == "/v1/audio/speech"]


async def _answer(send: Any, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})
