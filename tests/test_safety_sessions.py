"""Point 5 of "safe to expose": fair sessions.

`settings` is capped in size and depth, and one client holds at most `[server]
max_sessions_per_client` of the server's `max_sessions`.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import LiveServer, start_live_server

CONFIG = """
[server]
default_engine = "fault"
max_sessions = 5
max_sessions_per_client = 2
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("fair"), CONFIG)
    yield live
    live.stop()


def test_settings_over_8_kib_are_a_400(server: LiveServer) -> None:
    response = httpx.post(server.url + "/v1/sessions", json={"settings": {"a": "x" * 9000}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("settings", "settings_too_large")
    assert "8192 bytes" in error["message"]


def test_settings_nested_deeper_than_4_are_a_400(server: LiveServer) -> None:
    response = httpx.post(server.url + "/v1/sessions",
                          json={"settings": {"a": [[[[["deep"]]]]]}})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "settings_too_large"


def test_one_client_holds_at_most_max_sessions_per_client(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        ids = [client.post("/v1/sessions", json={}).json()["id"] for _ in range(2)]
        third = client.post("/v1/sessions", json={})
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "too_many_sessions"
        assert "max_sessions_per_client" in third.json()["error"]["message"]
        # A made-up key on an open server is not another client.
        forged = client.post("/v1/sessions", json={}, headers={"Authorization": "Bearer x"})
        assert forged.status_code == 429
        client.delete(f"/v1/sessions/{ids[0]}")
        again = client.post("/v1/sessions", json={})
        assert again.status_code == 201
        for session in (ids[1], again.json()["id"]):
            client.delete(f"/v1/sessions/{session}")
