"""Point 7 of "safe to expose": an unload without drain ends open streams clearly.

An audio body (pcm, wav, mp3) is aborted: the connection drops before the chunked body's end,
so the HTTP client raises instead of keeping a short file that looks complete. An SSE stream
gets an `error` event instead of `speech.audio.done`. With `?drain=true` the body completes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from conftest import LiveServer, start_live_server

CONFIG = """
[server]
default_engine = "fault"
plugin_modules = ["morpheus_tts.plugins.*"]
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
settings = { chunks_per_segment = 40, step_delay_ms = 50.0 }
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""
FAULT = {"name": "fault", "module": "morpheus_tts.plugins.engines.fault",
         "settings": {"chunks_per_segment": 40, "step_delay_ms": 50.0}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("unload"), CONFIG)
    yield live
    live.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
        if "fault" not in [p["name"] for p in http.get("/plugins").json()["plugins"]]:
            assert http.post("/plugins", json=FAULT).status_code == 201


def body(**extra: object) -> dict:
    return {"model": "fault", "input": "One long sentence.", "voice": "tone", **extra}


def read_while_unloading(client: httpx.Client, fmt: str, drain: bool) -> tuple[bytes, str]:
    """Stream a 4 s response, unload its engine after the first bytes; what came, and how
    the body ended ("complete" or the client's error)."""
    received = bytearray()
    unload = threading.Thread(
        target=lambda: client.delete(f"/plugins/fault?drain={str(drain).lower()}")
    )
    try:
        with client.stream("POST", "/v1/audio/speech", json=body(response_format=fmt)) as r:
            assert r.status_code == 200
            for data in r.iter_bytes():
                received += data
                if not unload.is_alive() and unload.ident is None:
                    unload.start()
        ending = "complete"
    except httpx.RemoteProtocolError as exc:
        ending = f"aborted: {exc}"
    unload.join(timeout=60)
    return bytes(received), ending


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3"])
def test_unload_without_drain_aborts_the_audio_body(client: httpx.Client, fmt: str) -> None:
    received, ending = read_while_unloading(client, fmt, drain=False)
    assert ending.startswith("aborted"), ending
    assert 0 < len(received) < 4 * 24000 * 2  # some audio, less than the whole 4 s


def test_unload_with_drain_lets_the_body_complete(client: httpx.Client) -> None:
    received, ending = read_while_unloading(client, "pcm", drain=True)
    assert ending == "complete"
    assert len(received) == 4 * 24000 * 2


def test_unload_without_drain_sends_an_sse_error_event(client: httpx.Client) -> None:
    events: list[dict] = []
    unload = threading.Thread(target=lambda: client.delete("/plugins/fault"))
    with client.stream("POST", "/v1/audio/speech", json=body(stream_format="sse")) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 1:
                    unload.start()
    unload.join(timeout=60)
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["message"] == (
        "The engine failed mid-stream: engine 'fault' was unloaded")
