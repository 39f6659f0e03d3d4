"""Point 6 of "safe to expose": `POST /config` validates with plugins.toml's constraints.

Both decode through `ServerSettings` (host/config.py), so a value refused in the file is
refused over HTTP with the same words, and the running settings stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import FAULT_TOML, LiveServer, start_live_server
from morpheus_tts.host.config import ConfigError, load_config

CONFIG = FAULT_TOML

BAD = [
    ("max_sessions", -1, "Expected `int` >= 1"),
    ("drain_timeout_s", -5, "Expected `float` >= 0.0"),
    ("session_idle_timeout_s", 1e308, "Expected `float` <= 86400.0"),
    ("max_chunk_tokens", 10**12, "Expected `int` <= 4096"),
    ("buffer_max_ms", 1e12, "Expected `float` <= 60000.0"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("config"), CONFIG)
    yield live
    live.stop()


@pytest.mark.parametrize(("field", "value", "reason"), BAD)
def test_post_config_refuses_what_plugins_toml_refuses(
    server: LiveServer, tmp_path: Path, field: str, value: float, reason: str
) -> None:
    before = httpx.get(server.url + "/config").json()
    response = httpx.post(server.url + "/config", json={field: value})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": f"`server.{field}`: {reason}",
        "type": "invalid_request_error",
        "param": field,
        "code": "invalid_value",
    }
    assert httpx.get(server.url + "/config").json() == before

    path = tmp_path / "plugins.toml"
    path.write_text(CONFIG.replace('default_engine = "fault"',
                                   f'default_engine = "fault"\n{field} = {value!r}'))
    with pytest.raises(ConfigError, match=f"`server.{field}`: {reason}"):
        load_config(path)


def test_a_value_in_range_applies(server: LiveServer) -> None:
    response = httpx.post(server.url + "/config", json={"max_sessions": 8, "drain_timeout_s": 0})
    assert response.status_code == 200
    assert (response.json()["max_sessions"], response.json()["drain_timeout_s"]) == (8, 0.0)
