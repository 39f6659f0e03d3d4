"""Point 2 of "safe to expose": no cross-site writes.

A browser page on another origin cannot change the server: JSON endpoints need
`Content-Type: application/json`, requests carrying a foreign `Origin` are refused over HTTP and
WebSocket, the server's own origin and `[server] allowed_origins` pass, and clients that send
no `Origin` (curl, SDKs) keep working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import websockets
from conftest import LiveServer, start_live_server

CONFIG = """
[server]
default_engine = "fault"
allowed_origins = ["https://app.example"]
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("origin"), CONFIG)
    yield live
    live.stop()


def config_of(server: LiveServer) -> dict:
    return httpx.get(server.url + "/config").json()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/config", '{"max_sessions": 1, "tts_backend": "fault"}'),
        ("/plugins", '{"name": "x", "module": "morpheus_tts.plugins.engines.piper"}'),
    ],
)
def test_a_text_plain_write_is_refused_and_the_config_unchanged(
    server: LiveServer, path: str, body: str
) -> None:
    before = config_of(server)
    response = httpx.post(server.url + path, content=body,
                          headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"] == {
        "message": f"Unsupported Content-Type 'text/plain' for POST {path}: send the body as "
                   "application/json (e.g. `-H 'Content-Type: application/json'`).",
        "type": "invalid_request_error",
        "param": None,
        "code": "unsupported_media_type",
    }
    assert config_of(server) == before
    assert "x" not in [p["name"] for p in httpx.get(server.url + "/plugins").json()["plugins"]]


def test_a_form_post_without_content_type_is_refused(server: LiveServer) -> None:
    response = httpx.post(server.url + "/v1/sessions", content=b"{}")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_a_foreign_origin_is_refused_even_with_json(server: LiveServer) -> None:
    before = config_of(server)
    response = httpx.post(server.url + "/config", json={"max_sessions": 1},
                          headers={"Origin": EVIL})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "origin_not_allowed" and error["type"] == "permission_error"
    assert "allowed_origins" in error["message"]
    assert config_of(server) == before


def test_a_foreign_origin_cannot_read_either(server: LiveServer) -> None:
    response = httpx.get(server.url + "/config", headers={"Origin": EVIL})
    assert response.status_code == 403


@pytest.mark.parametrize("origin", ["own", "https://app.example", None])
def test_own_allowed_and_absent_origins_pass(server: LiveServer, origin: str | None) -> None:
    headers = {} if origin is None else {
        "Origin": f"http://127.0.0.1:{server.port}" if origin == "own" else origin
    }
    response = httpx.post(server.url + "/v1/sessions", json={}, headers=headers)
    assert response.status_code == 201, response.text
    httpx.delete(server.url + f"/v1/sessions/{response.json()['id']}")


def test_a_null_origin_is_refused(server: LiveServer) -> None:
    response = httpx.post(server.url + "/v1/sessions", json={}, headers={"Origin": "null"})
    assert response.status_code == 403


def test_a_bodyless_post_needs_no_content_type(server: LiveServer) -> None:
    response = httpx.post(server.url + "/v1/sessions")
    assert response.status_code == 201
    httpx.delete(server.url + f"/v1/sessions/{response.json()['id']}")


def ws_handshake(server: LiveServer, origin: str | None) -> str:
    async def run() -> str:
        url = f"ws://127.0.0.1:{server.port}/v1/realtime?engine=fault"
        try:
            async with websockets.connect(url, origin=origin, open_timeout=10) as socket:
                first = await asyncio.wait_for(socket.recv(), 10)
                return "open:" + str(first)[:40]
        except websockets.InvalidStatus as exc:
            return f"refused:{exc.response.status_code}"

    return asyncio.run(run())


def test_a_websocket_from_a_foreign_origin_is_refused(server: LiveServer) -> None:
    assert ws_handshake(server, EVIL) == "refused:403"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("origin", ["own", None])
def test_a_websocket_from_the_own_origin_or_none_opens(
    server: LiveServer, origin: str | None
) -> None:
    own = f"http://127.0.0.1:{server.port}" if origin == "own" else None
    assert ws_handshake(server, own).startswith('open:{"type":"session.created"')
