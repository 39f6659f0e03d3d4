"""Realtime sessions through real clients: httpx + httpx-sse, and a websockets client.

A live server speaks the `fault` engine's tones (fast, deterministic); one test speaks real
Piper speech through `/v1/realtime` and has whisper transcribe it.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import LiveServer, start_live_server, word_error_rate
from httpx_sse import connect_sse
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

CONFIG = """
[server]
default_engine = "fault"
session_idle_timeout_s = {idle}
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
settings = {{ chunk_ms = 50.0, step_delay_ms = 5.0, voices = ["tone", "hum"] }}
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""

LONG_TEXT = " ".join(["This sentence keeps the tone engine busy for a while."] * 40)


def start_server(
    tmp_path: Path, idle_s: float = 300.0, env: dict[str, str] | None = None
) -> LiveServer:
    return start_live_server(tmp_path, CONFIG.format(idle=idle_s), env)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("sessions"))
    yield server
    server.stop()


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30) as http:
        yield http


def ws_url(live: LiveServer, path: str) -> str:
    return live.url.replace("http://", "ws://") + path


def open_session(client: httpx.Client, **body: Any) -> str:
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def say(client: httpx.Client, session_id: str, text: str, final: bool = False) -> dict:
    response = client.post(f"/v1/sessions/{session_id}/text", json={"text": text, "final": final})
    assert response.status_code == 202, response.text
    return response.json()


def read_events(client: httpx.Client, session_id: str, until: str, turn: int) -> list[dict]:
    """SSE events up to and including the first `until` event of `turn`."""
    events = []
    with connect_sse(client, "GET", f"/v1/sessions/{session_id}/events") as source:
        for sse in source.iter_sse():
            event = json.loads(sse.data)
            assert event["type"] == sse.event
            events.append(event)
            if event["type"] == until and event["turn"] == turn:
                return events
    raise AssertionError(f"stream ended before {until} of turn {turn}: {events}")


def pcm16_samples(events: list[dict]) -> np.ndarray:
    data = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "audio.delta")
    return np.frombuffer(data, dtype="<i2")


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def parse_pcm0(frame: bytes) -> tuple[int, int, np.ndarray]:
    magic, rate, count, channels = struct.unpack("<4sIII", frame[:16])
    assert magic == b"PCM0"
    samples = np.frombuffer(frame[16:], dtype="<f4")
    assert len(samples) == count * channels
    return rate, channels, samples


def receive_json(ws: ClientConnection) -> dict:
    message = ws.recv(timeout=30)
    assert isinstance(message, str), "expected a JSON message, got a binary frame"
    return json.loads(message)


# -- HTTP + SSE ------------------------------------------------------------------------------


def test_turns_speak_in_order_with_started_audio_done_and_metrics(client: httpx.Client) -> None:
    session_id = open_session(client)
    assert say(client, session_id, "Hello there,") == {"turn": 1, "generation": 0}
    say(client, session_id, " how are you?", final=True)
    assert say(client, session_id, "Second turn.", final=True)["turn"] == 2

    events = read_events(client, session_id, until="metrics", turn=2)

    kinds = [e["type"] for e in events if e["type"] != "audio.delta"]
    assert kinds == ["turn.started", "turn.done", "metrics"] * 2
    for turn in (1, 2):
        of_turn = [e for e in events if e["turn"] == turn]
        audio = [e for e in of_turn if e["type"] == "audio.delta"]
        done = next(e for e in of_turn if e["type"] == "turn.done")
        metrics = next(e for e in of_turn if e["type"] == "metrics")
        samples = pcm16_samples(audio)
        assert audio and all(e["sample_rate"] == 24000 for e in audio)
        assert [e["seq"] for e in audio] == list(range(len(audio)))
        assert done["audio_ms"] == pytest.approx(1000 * len(samples) / 24000)
        assert metrics["chunks"] == len(audio)
        assert metrics["audio_ms"] == done["audio_ms"]
        assert metrics["engine"] == "fault"
        assert metrics["time_to_first_audio_ms"] >= 0
        assert metrics["real_time_factor"] == pytest.approx(
            metrics["wall_ms"] / metrics["audio_ms"]
        )
        assert np.abs(samples).max() > 1000  # the tone, not silence


def test_barge_in_drops_every_chunk_of_the_interrupted_turn(client: httpx.Client) -> None:
    session_id = open_session(client)
    say(client, session_id, LONG_TEXT)  # no final: the turn speaks until interrupted
    # Nobody reads yet, so the turn's audio piles up in the session queue before the barge-in.
    answer = client.post(f"/v1/sessions/{session_id}/barge-in")
    assert answer.json() == {"interrupted": [1], "generation": 1}
    assert say(client, session_id, "After the interruption.", final=True) == {
        "turn": 2,
        "generation": 1,
    }

    events = read_events(client, session_id, until="turn.done", turn=2)

    assert [e["type"] for e in events[:2]] == ["turn.started", "turn.interrupted"]
    assert events[1] == {"type": "turn.interrupted", "session_id": session_id, "turn": 1,
                         "generation": 0}
    audio = [e for e in events if e["type"] == "audio.delta"]
    assert audio
    # Of turn 1 only its faded tail is left (at most the 20 ms fade), ending in silence.
    tail = [e for e in audio if e["turn"] == 1]
    assert all(e["fade_out"] for e in tail)
    faded = pcm16_samples(tail)
    assert len(faded) <= 20 * 24 and (len(faded) == 0 or abs(int(faded[-1])) < 400)
    assert all(e["turn"] == 2 and e["generation"] == 1 for e in audio if e not in tail)
    assert audio[-1]["turn"] == 2


def test_barge_in_with_nothing_speaking_interrupts_nothing(client: httpx.Client) -> None:
    session_id = open_session(client)
    answer = client.post(f"/v1/sessions/{session_id}/barge-in")
    assert answer.status_code == 200
    assert answer.json() == {"interrupted": [], "generation": 1}


def test_client_leaving_mid_turn_cancels_its_synthesis(client: httpx.Client) -> None:
    session_id = open_session(client)
    say(client, session_id, LONG_TEXT, final=True)
    with connect_sse(client, "GET", f"/v1/sessions/{session_id}/events") as source:
        for sse in source.iter_sse():
            if sse.event == "audio.delta":
                break  # leave with the turn still speaking

    deadline = time.monotonic() + 20
    while client.get("/adapters").json()["adapters"][0]["open_streams"]:
        assert time.monotonic() < deadline, "the utterance kept running after the client left"
        time.sleep(0.05)
    steps = client.get("/adapters").json()["adapters"][0]["health"]["steps"]
    time.sleep(0.3)
    assert client.get("/adapters").json()["adapters"][0]["health"]["steps"] == steps
    assert client.get(f"/v1/sessions/{session_id}").json()["generation"] == 1

    # The session lives on: a returning client learns the turn was cut, then speaks again.
    say(client, session_id, "Back again.", final=True)
    events = read_events(client, session_id, until="turn.done", turn=2)
    assert events[0] == {"type": "turn.interrupted", "session_id": session_id, "turn": 1,
                         "generation": 0}


def test_delete_ends_the_session_and_its_event_stream(client: httpx.Client) -> None:
    session_id = open_session(client)
    say(client, session_id, LONG_TEXT)
    events = []
    with connect_sse(client, "GET", f"/v1/sessions/{session_id}/events") as source:
        for sse in source.iter_sse():
            events.append(json.loads(sse.data))
            if sse.event == "audio.delta" and len(events) == 3:
                assert client.delete(f"/v1/sessions/{session_id}").status_code == 204
    assert events[-1]["type"] == "session.closed"
    assert events[-1]["reason"] == "deleted"
    assert client.get(f"/v1/sessions/{session_id}").status_code == 404


def test_session_pins_engine_voice_and_describes_itself(client: httpx.Client) -> None:
    session_id = open_session(client, voice="hum", speed=1.5)
    info = client.get(f"/v1/sessions/{session_id}").json()
    assert info["engine"] == "fault"
    assert info["voice"] == "hum"
    assert info["speed"] == 1.5
    assert info["sample_rate"] == 24000
    assert info["events_url"] == f"/v1/sessions/{session_id}/events"
    assert info["ws_url"] == f"/v1/sessions/{session_id}/ws"


def test_session_ids_are_long_random_and_url_safe(client: httpx.Client) -> None:
    ids = {open_session(client) for _ in range(5)}
    assert len(ids) == 5
    for session_id in ids:
        token = session_id.removeprefix("sess_")
        assert len(token) >= 32
        assert token.replace("-", "").replace("_", "").isalnum()


# -- HTTP error paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ""),
        ("POST", "/text"),
        ("POST", "/barge-in"),
        ("GET", "/events"),
        ("DELETE", ""),
    ],
)
def test_unknown_session_is_404(client: httpx.Client, method: str, path: str) -> None:
    body = {"text": "hi"} if path == "/text" else None
    response = client.request(method, f"/v1/sessions/sess_nope{path}", json=body)
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "session_not_found"
    assert "POST /v1/sessions" in error["message"]


def test_unknown_engine_lists_the_loaded_ones(client: httpx.Client) -> None:
    response = client.post("/v1/sessions", json={"engine": "nope"})
    assert response.status_code == 404
    error = error_of(response)
    assert (error["param"], error["code"]) == ("engine", "engine_not_found")
    assert error["message"] == "unknown engine 'nope'; available: fault"


def test_unknown_voice_is_400_naming_the_voices(client: httpx.Client) -> None:
    response = client.post("/v1/sessions", json={"voice": "alto"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "voice"
    assert "available: hum, tone" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [({"speed": 9}, "speed"), ({"engin": "fault"}, "engin"), ({"settings": 3}, "settings")],
)
def test_bad_session_body_is_400_naming_the_field(
    client: httpx.Client, body: dict, param: str
) -> None:
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 400
    assert error_of(response)["param"] == param


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"final": True}, "missing_required_parameter"),
        ({"text": 5}, "invalid_type"),
        ({"text": "hi", "done": True}, "unknown_parameter"),
    ],
)
def test_bad_text_body_is_400(client: httpx.Client, body: dict, code: str) -> None:
    session_id = open_session(client)
    response = client.post(f"/v1/sessions/{session_id}/text", json=body)
    assert response.status_code == 400
    assert error_of(response)["code"] == code


def test_too_many_pending_turns_is_429(client: httpx.Client) -> None:
    session_id = open_session(client)
    for _ in range(4):  # nobody reads: the first turn stalls, the others queue behind it
        say(client, session_id, LONG_TEXT, final=True)
    response = client.post(f"/v1/sessions/{session_id}/text", json={"text": "one more"})
    assert response.status_code == 429
    assert error_of(response)["code"] == "too_many_turns"


# -- WebSocket -------------------------------------------------------------------------------


def test_websocket_streams_pcm0_frames_between_json_events(
    live: LiveServer, client: httpx.Client
) -> None:
    session_id = open_session(client)
    with connect(ws_url(live, f"/v1/sessions/{session_id}/ws")) as ws:
        created = receive_json(ws)
        assert created["type"] == "session.created"
        assert created["session"]["id"] == session_id
        ws.send(json.dumps({"type": "text", "text": "Hello over a socket."}))
        ws.send(json.dumps({"type": "text", "text": "", "final": True}))
        frames: list[np.ndarray] = []
        kinds = []
        while "metrics" not in kinds:
            message = ws.recv(timeout=30)
            if isinstance(message, bytes):
                rate, channels, samples = parse_pcm0(message)
                assert (rate, channels) == (24000, 1)
                frames.append(samples)
                continue
            event = json.loads(message)
            kinds.append(event["type"])
            if event["type"] == "turn.done":
                total = sum(len(f) for f in frames)
                assert event["audio_ms"] == pytest.approx(1000 * total / 24000)
        assert kinds.count("text.accepted") == 2  # each acknowledged, in any order with audio
        events = [k for k in kinds if k != "text.accepted"]
        assert events == ["turn.started", "turn.done", "metrics"]
        assert np.abs(np.concatenate(frames)).max() > 0.1


@pytest.mark.parametrize("pace", [True, False])
def test_websocket_turns_are_paced_by_what_the_socket_took(live: LiveServer, pace: bool) -> None:
    query = "" if pace else "?pace=false"  # pacing is on by default for sessions
    with connect(ws_url(live, f"/v1/realtime{query}")) as ws:
        assert receive_json(ws)["session"]["pace"] is pace
        ws.send(json.dumps({"type": "text", "text": "Paced words. " * 5, "final": True}))
        while True:
            message = ws.recv(timeout=30)
            if isinstance(message, str) and json.loads(message)["type"] == "metrics":
                metrics = json.loads(message)
                break
    assert metrics["audio_ms"] > 3000  # far more than the 500 ms the listener may hold
    # Paced, the engine waited for the listener again and again; unpaced, never.
    assert (metrics["pauses"] > 2) is pace
    assert isinstance(metrics["underflows"], int)


def test_websocket_barge_in_stops_frames_until_the_next_turn(
    live: LiveServer, client: httpx.Client
) -> None:
    session_id = open_session(client)
    with connect(ws_url(live, f"/v1/sessions/{session_id}/ws")) as ws:
        receive_json(ws)
        ws.send(json.dumps({"type": "text", "text": LONG_TEXT}))
        while not isinstance(ws.recv(timeout=30), bytes):
            pass
        ws.send(json.dumps({"type": "barge_in"}))
        while (message := ws.recv(timeout=30)) and not (
            isinstance(message, str) and json.loads(message)["type"] == "turn.interrupted"
        ):
            pass  # frames sent before the barge-in arrived may still come
        ws.send(json.dumps({"type": "text", "text": "Next turn.", "final": True}))
        after, faded = [], []
        while "turn.started" not in after:
            message = ws.recv(timeout=30)
            if isinstance(message, bytes):
                faded.append(parse_pcm0(message)[2])  # the interrupted turn's faded tail
                continue
            after.append(json.loads(message)["type"])
        assert sorted(after) == ["text.accepted", "turn.started"]
        assert len(faded) <= 1 and sum(len(f) for f in faded) <= 20 * 24  # at most 20 ms


def test_websocket_bad_messages_get_error_events_and_the_socket_stays_usable(
    live: LiveServer, client: httpx.Client
) -> None:
    session_id = open_session(client)
    with connect(ws_url(live, f"/v1/sessions/{session_id}/ws")) as ws:
        receive_json(ws)
        for bad in ("not json", json.dumps({"type": "dance"}), b"\x00\x01"):
            ws.send(bad)
            event = receive_json(ws)
            assert event["type"] == "error"
            assert event["error"]["code"] == "invalid_message"
        ws.send(json.dumps({"type": "text", "text": "Still here.", "final": True}))
        assert receive_json(ws)["type"] == "text.accepted"
        assert receive_json(ws)["type"] == "turn.started"


def test_websocket_close_message_ends_the_session(live: LiveServer, client: httpx.Client) -> None:
    session_id = open_session(client)
    with connect(ws_url(live, f"/v1/sessions/{session_id}/ws")) as ws:
        receive_json(ws)
        ws.send(json.dumps({"type": "close"}))
        assert receive_json(ws)["type"] == "session.closed"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        assert ws.close_code == 1000
    assert client.get(f"/v1/sessions/{session_id}").status_code == 404


def test_websocket_to_unknown_session_closes_with_4404(live: LiveServer) -> None:
    with connect(ws_url(live, "/v1/sessions/sess_nope/ws")) as ws:
        event = receive_json(ws)
        assert event["error"]["code"] == "session_not_found"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        assert ws.close_code == 4404


def test_realtime_opens_a_session_from_query_and_ends_it_on_disconnect(
    live: LiveServer, client: httpx.Client
) -> None:
    with connect(ws_url(live, "/v1/realtime?voice=hum")) as ws:
        session = receive_json(ws)["session"]
        assert (session["engine"], session["voice"]) == ("fault", "hum")
        assert client.get(f"/v1/sessions/{session['id']}").status_code == 200
    deadline = time.monotonic() + 10
    while client.get(f"/v1/sessions/{session['id']}").status_code != 404:
        assert time.monotonic() < deadline, "the connection's session outlived it"
        time.sleep(0.05)


def test_realtime_takes_engine_and_voice_from_a_first_create_message(live: LiveServer) -> None:
    with connect(ws_url(live, "/v1/realtime")) as ws:
        ws.send(json.dumps({"type": "session.create", "engine": "fault", "voice": "hum"}))
        session = receive_json(ws)["session"]
        assert session["voice"] == "hum"
        ws.send(json.dumps({"type": "text", "text": "Hi.", "final": True}))
        assert receive_json(ws)["type"] == "text.accepted"


def test_realtime_with_an_unknown_engine_is_refused(live: LiveServer) -> None:
    with connect(ws_url(live, "/v1/realtime?engine=nope")) as ws:
        event = receive_json(ws)
        assert event["type"] == "error"
        assert event["error"]["message"] == "unknown engine 'nope'; available: fault"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        assert ws.close_code == 4404


# -- expiry ----------------------------------------------------------------------------------


def test_idle_sessions_expire_but_not_while_a_client_listens(tmp_path: Path) -> None:
    server = start_server(tmp_path, idle_s=0.3)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            idle, listened = open_session(http), open_session(http)
            with connect(ws_url(server, f"/v1/sessions/{listened}/ws")) as ws:
                receive_json(ws)
                deadline = time.monotonic() + 20
                while http.get(f"/v1/sessions/{idle}").status_code != 404:
                    assert time.monotonic() < deadline, "the idle session never expired"
                    time.sleep(0.05)
                assert http.get(f"/v1/sessions/{listened}").status_code == 200
            while http.get(f"/v1/sessions/{listened}").status_code != 404:
                assert time.monotonic() < deadline + 20, "the session never expired"
                time.sleep(0.05)
    finally:
        server.stop()


def test_sessions_need_the_api_key_when_the_server_has_one(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"MORPHEUS_API_KEY": "k"})
    try:
        refused = httpx.post(f"{server.url}/v1/sessions", json={})
        assert refused.status_code == 401
        assert error_of(refused)["code"] == "invalid_api_key"
        with pytest.raises(InvalidStatus):
            connect(ws_url(server, "/v1/realtime"))
        key = {"Authorization": "Bearer k"}
        with connect(ws_url(server, "/v1/realtime"), additional_headers=key) as ws:
            assert receive_json(ws)["type"] == "session.created"
    finally:
        server.stop()


# -- real speech -----------------------------------------------------------------------------


@pytest.mark.slow
def test_realtime_speaks_llm_deltas_intelligibly(server: LiveServer, transcribe: Any) -> None:
    text = "The quick brown fox jumps over the lazy dog. Then it runs back home."
    deltas = [text[i : i + 7] for i in range(0, len(text), 7)]
    with connect(ws_url(server, "/v1/realtime?engine=piper")) as ws:
        receive_json(ws)
        for delta in deltas:
            ws.send(json.dumps({"type": "text", "text": delta}))
        ws.send(json.dumps({"type": "text", "text": "", "final": True}))
        frames = []
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                frames.append(parse_pcm0(message)[2])
            elif json.loads(message)["type"] == "turn.done":
                break
    heard = transcribe(np.concatenate(frames), 24000)
    assert word_error_rate(text, heard) <= 0.15, heard
