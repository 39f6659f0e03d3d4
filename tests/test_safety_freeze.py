"""Point 1 of "safe to expose": no request freezes the server.

A 2 MB session push is chunked off the event loop in linear time while `/health` keeps
answering; pushes and turns beyond `[server] max_push_chars` / `max_turn_chars` are refused
with the envelope; SIGTERM stops a server that is busy chunking.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, start_live_server
from morpheus_tts.plugins.chunkers.sentence import SentenceChunker

CONFIG = """
[server]
default_engine = "fault"
max_push_chars = {push}
max_turn_chars = {turn}
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
settings = {{ chunks_per_segment = 1, step_delay_ms = 5.0 }}
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""

TWO_MB = "Dr. Smith met Mr. Jones at 3.5 p.m. today, and then they went home. " * 30_000


def start(directory: Path, push: int, turn: int) -> LiveServer:
    return start_live_server(directory, CONFIG.format(push=push, turn=turn))


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose caps let a 2 MB push through, so the chunker has to cope with it."""
    server = start(tmp_path_factory.mktemp("roomy"), 4_000_000, 8_000_000)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def default_caps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start(tmp_path_factory.mktemp("caps"), 16_384, 40_000)
    yield server
    server.stop()


def test_health_answers_within_1_s_while_a_2_mb_push_is_chunked(roomy: LiveServer) -> None:
    assert len(TWO_MB) > 2_000_000
    with httpx.Client(base_url=roomy.url, timeout=60) as client:
        session = client.post("/v1/sessions", json={}).json()["id"]
        pushed: list[httpx.Response] = []
        pusher = threading.Thread(target=lambda: pushed.append(client.post(
            f"/v1/sessions/{session}/text", json={"text": TWO_MB, "final": True}
        )))
        pusher.start()
        answers = []
        while pusher.is_alive() or len(answers) < 5:
            answers.append(httpx.get(roomy.url + "/health", timeout=1.0).status_code)
            time.sleep(0.05)
        pusher.join()
        assert pushed[0].status_code == 202
        assert set(answers) == {200}
        # The turn is really being spoken from the chunked text; end it.
        client.delete(f"/v1/sessions/{session}")
        assert httpx.get(roomy.url + "/health", timeout=1.0).status_code == 200


def test_the_chunker_is_linear_in_the_text() -> None:
    """Ten times the text costs about ten times the work (quadratic would be a hundred):
    counted in segments and compared as a ratio, not timed against a fixed bound."""
    def cost(copies: int) -> float:
        chunker = SentenceChunker()
        text = "Dr. Smith met Mr. Jones, who said hello. " * copies
        started = time.process_time()
        segments = len(chunker.push(text)) + len(chunker.flush())
        assert segments >= copies
        return time.process_time() - started

    small, large = cost(2_000), cost(20_000)
    assert large < 40 * max(small, 1e-3)


def test_a_push_over_max_push_chars_is_a_400_envelope(default_caps: LiveServer) -> None:
    with httpx.Client(base_url=default_caps.url, timeout=30) as client:
        session = client.post("/v1/sessions", json={}).json()["id"]
        response = client.post(f"/v1/sessions/{session}/text", json={"text": "a" * 16_385})
        assert response.status_code == 400
        assert response.json()["error"] == {
            "message": "Invalid 'text': string too long. Expected a string with maximum length "
                       "16384, but got a string with length 16385 instead.",
            "type": "invalid_request_error",
            "param": "text",
            "code": "string_above_max_length",
        }
        client.delete(f"/v1/sessions/{session}")


def test_a_turn_over_max_turn_chars_is_refused_and_the_next_turn_works(
    default_caps: LiveServer,
) -> None:
    with httpx.Client(base_url=default_caps.url, timeout=30) as client:
        session = client.post("/v1/sessions", json={}).json()["id"]
        url = f"/v1/sessions/{session}/text"
        for _ in range(2):
            assert client.post(url, json={"text": "b " * 8_000}).status_code == 202
        response = client.post(url, json={"text": "c " * 8_000})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "turn_text_too_long"
        assert "max_turn_chars" in response.json()["error"]["message"]
        assert client.post(url, json={"text": "End.", "final": True}).status_code == 202
        assert client.post(url, json={"text": "Next turn.", "final": True}).json()["turn"] == 2
        client.delete(f"/v1/sessions/{session}")


def test_sigterm_stops_a_server_busy_with_a_big_push(tmp_path: Path) -> None:
    server = start(tmp_path, 4_000_000, 8_000_000)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            session = client.post("/v1/sessions", json={}).json()["id"]
            client.post(f"/v1/sessions/{session}/text", json={"text": TWO_MB, "final": True})
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) is not None
    finally:
        server.stop()
