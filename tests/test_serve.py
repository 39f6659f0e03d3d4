"""`morpheus serve`: the port opens at once, /health turns 200 when the engine is warm."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from conftest import LiveServer

CONFIG = """
[server]
default_engine = "fault"
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
settings = { start_delay_ms = 4000 }
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""


def test_health_is_503_while_loading_then_200(tmp_path: Path) -> None:
    config = tmp_path / "plugins.toml"
    config.write_text(CONFIG)
    server = LiveServer(config)
    try:
        statuses = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 200 not in statuses:
            try:
                response = httpx.get(f"{server.url}/health", timeout=1)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert response.json()["status"] == "starting"
            time.sleep(0.1)
        assert statuses[0] == 503
        assert statuses[-1] == 200
    finally:
        server.stop()


def test_server_binds_loopback_by_default() -> None:
    from morpheus_tts.api.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 5005)
