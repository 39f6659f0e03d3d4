"""Point 3 of "safe to expose": one key covers what it should.

With only `$MORPHEUS_API_KEY` set, everything but `/health`, the OpenAPI schema and the web UI's
files needs it: the admin writes, `/outputs` files, `/config`, `/metrics`, WebSockets. With an
admin key as well, the admin endpoints need the admin key, which opens everything else too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from conftest import FAULT_TOML, LiveServer, start_live_server

CONFIG = FAULT_TOML

API_KEY, ADMIN_KEY = "api-key-123", "admin-key-456"
PROTECTED = [
    ("GET", "/config", None),
    ("POST", "/config", {"max_sessions": 10}),
    ("GET", "/plugins", None),
    ("POST", "/plugins", {"name": "x", "module": "morpheus_tts.plugins.engines.fault"}),
    ("DELETE", "/plugins/fault", None),
    ("GET", "/adapters", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/audio/speech", {"model": "fault", "input": "Hi.", "voice": "tone"}),
    ("POST", "/speak", {"text": "Hi."}),
    ("POST", "/v1/sessions", {}),
    ("GET", "/outputs/0123456789abcdef0123456789abcdef.wav", None),
]


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    outputs = tmp_path_factory.mktemp("outputs")
    live = start_live_server(
        tmp_path_factory.mktemp("keys"), CONFIG,
        env={"MORPHEUS_API_KEY": API_KEY, "MORPHEUS_OUTPUTS_DIR": str(outputs)},
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def both_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(
        tmp_path_factory.mktemp("keys2"), CONFIG,
        env={"MORPHEUS_API_KEY": API_KEY, "MORPHEUS_ADMIN_KEY": ADMIN_KEY},
    )
    yield live
    live.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_everything_but_the_public_endpoints_needs_the_api_key(
    api_only: LiveServer, method: str, path: str, body: object, headers: dict[str, str]
) -> None:
    response = httpx.request(method, api_only.url + path, json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"
    plugins = httpx.get(api_only.url + "/plugins", headers=bearer(API_KEY)).json()["plugins"]
    assert [p["name"] for p in plugins] == ["fault", "sentence", "crossfade"]


@pytest.mark.parametrize("path", ["/health", "/schema/openapi.json", "/"])
def test_health_schema_and_the_page_stay_open(api_only: LiveServer, path: str) -> None:
    assert httpx.get(api_only.url + path).status_code == 200


def test_the_api_key_alone_opens_the_admin_writes(api_only: LiveServer) -> None:
    response = httpx.post(api_only.url + "/config", json={"max_sessions": 50},
                          headers=bearer(API_KEY))
    assert response.status_code == 200
    assert response.json()["max_sessions"] == 50


def test_outputs_files_need_the_key(api_only: LiveServer) -> None:
    spoken = httpx.post(api_only.url + "/speak", json={"text": "Hello there."},
                        headers={**bearer(API_KEY), "Accept": "application/json"}, timeout=30)
    assert spoken.status_code == 200, spoken.text
    url = api_only.url + spoken.json()["url"]
    assert httpx.get(url).status_code == 401
    fetched = httpx.get(url, headers=bearer(API_KEY))
    assert fetched.status_code == 200 and fetched.content[:4] == b"RIFF"


def ws_status(
    server: LiveServer, headers: dict[str, str], subprotocols: list[str] | None = None
) -> str:
    """The first message of a /v1/realtime handshake (its first 30 characters), else the HTTP
    status that refused it; with `subprotocols`, the one the server chose comes first."""
    async def run() -> str:
        url = f"ws://127.0.0.1:{server.port}/v1/realtime?engine=fault"
        try:
            async with websockets.connect(
                url, additional_headers=headers, subprotocols=subprotocols, open_timeout=10
            ) as ws:
                first = str(await asyncio.wait_for(ws.recv(), 10))[:30]
                return f"{ws.subprotocol} {first}" if subprotocols else first
        except websockets.InvalidStatus as exc:
            return str(exc.response.status_code)

    return asyncio.run(run())


def test_a_websocket_needs_the_key(api_only: LiveServer) -> None:
    assert ws_status(api_only, {}) == "403"
    assert ws_status(api_only, bearer(API_KEY)).startswith('{"type":"session.created"')


def test_a_browser_websocket_sends_the_key_as_a_subprotocol(api_only: LiveServer) -> None:
    # Browsers cannot set headers on a WebSocket: OpenAI's convention carries the key as a
    # subprotocol beside a plain one, which the server answers with (never with the key).
    offered = ["realtime", f"openai-insecure-api-key.{API_KEY}"]
    assert ws_status(api_only, {}, offered).startswith('realtime {"type":"session.created"')
    assert ws_status(api_only, {}, ["realtime", "openai-insecure-api-key.wrong"]) == "403"
    assert ws_status(api_only, {}, ["realtime"]) == "403"


def test_with_an_admin_key_the_api_key_no_longer_opens_admin_writes(
    both_keys: LiveServer,
) -> None:
    response = httpx.post(both_keys.url + "/config", json={"max_sessions": 20},
                          headers=bearer(API_KEY))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_admin_key"
    assert httpx.get(both_keys.url + "/config", headers=bearer(API_KEY)).json()[
        "max_sessions"] == 64


@pytest.mark.parametrize("headers", [bearer(ADMIN_KEY), {"X-Admin-Key": ADMIN_KEY}])
def test_the_admin_key_opens_writes_and_everything_else(
    both_keys: LiveServer, headers: dict[str, str]
) -> None:
    assert httpx.post(both_keys.url + "/config", json={"max_sessions": 30},
                      headers=headers).status_code == 200
    assert httpx.get(both_keys.url + "/v1/models", headers=headers).status_code == 200
    assert httpx.get(both_keys.url + "/config", headers=headers).status_code == 200


def test_the_public_list_is_what_is_documented() -> None:
    from morpheus_tts.api.security import PUBLIC, is_public

    docs = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    for entry in PUBLIC:
        assert entry in docs
    assert is_public("GET", "/health") and is_public("GET", "/index.html")
    assert not is_public("POST", "/health") and not is_public("GET", "/outputs/x.wav")
    assert not is_public("GET", "/metrics") and not is_public("GET", "/config")
