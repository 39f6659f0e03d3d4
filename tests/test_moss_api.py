"""MOSS-TTS-Realtime through a real `morpheus serve` on the tiny random-weight checkpoints.

Session turns over SSE and the WebSocket (the per-session KV cache grows across turns and each
turn continues the previous one's rows), barge-in mid-turn (cache cropped to what was heard,
the session speaks again), DELETE freeing the cache, voice upload then speech with it, and
one-shot speech. The engine's state is read where an operator reads it: `GET /adapters`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import LiveServer, start_live_server
from httpx_sse import connect_sse
from morpheus_tts.plugins.engines.moss_settings import DEFAULT_VOICE
from morpheus_tts.plugins.engines.moss_tiny import CODEC_DIR, MODEL_DIR, write_all
from test_api_sessions import parse_pcm0, pcm16_samples, read_events, receive_json, say, ws_url
from test_api_voices import wav_of_tone
from websockets.sync.client import connect

CONFIG = """
[server]
default_engine = "moss-realtime"
chunker = "sentence"
stitcher = "crossfade"
sample_rate = 24000
[plugins.moss-realtime]
module = "morpheus_tts.plugins.engines.moss_realtime"
settings = {{ model_path = "{model}", codec_path = "{codec}", device = "cpu" }}
[plugins.moss-audio-tokenizer]
module = "morpheus_tts.plugins.codecs.moss_audio_tokenizer"
settings = {{ model_path = "{codec}" }}
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""

SETTINGS = {"seed": 3, "max_frames": 6}  # short turns: 6 frames = 480 ms
FRAME = 1920  # samples per codec frame at 24 kHz


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tiny = write_all(tmp_path_factory.mktemp("moss"), seed=5).parent
    config = CONFIG.format(model=(tiny / MODEL_DIR).as_posix(), codec=(tiny / CODEC_DIR).as_posix())
    # One intra-op thread: tiny models on a shared machine run faster without thread overhead.
    server = start_live_server(tiny, config, env={"OMP_NUM_THREADS": "1"})
    yield server
    server.stop()


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as http:
        yield http


def engine_health(client: httpx.Client) -> dict[str, Any]:
    adapters = client.get("/adapters").json()["adapters"]
    [moss] = [a for a in adapters if a["name"] == "moss-realtime"]
    return moss["health"]


def session_detail(client: httpx.Client, session_id: str) -> dict[str, Any]:
    return engine_health(client)["session_detail"][session_id]


def wait_for(check, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def settled_turn(client: httpx.Client, session_id: str, turn: int) -> dict[str, Any]:
    """The session's detail once `turn` is its newest turn and is closed (rows stable)."""
    def ready() -> dict[str, Any] | None:
        detail = session_detail(client, session_id)
        last = detail["last_turn"]
        return detail if last and last["turn"] == turn and not detail["open"] else None
    return wait_for(ready, f"turn {turn} to close")


def open_session(client: httpx.Client, **body: Any) -> str:
    response = client.post("/v1/sessions", json={"settings": SETTINGS, **body})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def check_turns_continue(details: list[dict[str, Any]]) -> None:
    """Turn 1 started the context; turn 2 continued turn 1's rows (prefix reused)."""
    first, second = details
    assert first["last_turn"]["fresh"] is True and first["last_turn"]["base"] == 0
    assert first["rows"] > first["last_turn"]["after_prefill"] > first["last_turn"]["prompt_end"]
    assert second["last_turn"]["fresh"] is False
    assert second["last_turn"]["base"] == first["rows"]
    assert second["rows"] > first["rows"]
    # Seeded, these turns stop at max_frames (not EOS), whose last frame is never fed back.
    for detail in details:
        last = detail["last_turn"]
        assert detail["rows"] == last["after_prefill"] + last["frames"] - 1


def test_two_sse_turns_grow_one_cache_and_delete_frees_it(client: httpx.Client) -> None:
    session_id = open_session(client, pace=False)
    details = []
    for turn, text in ((1, "Hello there, how are you today?"), (2, "Fine, thanks for asking.")):
        assert say(client, session_id, text, final=True)["turn"] == turn
        events = read_events(client, session_id, "metrics", turn)
        kinds = [e["type"] for e in events]
        assert "error" not in kinds, events
        samples = pcm16_samples(events)
        assert len(samples) > 0 and np.abs(samples).max() > 0
        details.append(settled_turn(client, session_id, turn))
        assert len(samples) == details[-1]["last_turn"]["frames"] * FRAME
    check_turns_continue(details)
    assert engine_health(client)["cache_rows"][session_id] == details[1]["rows"]

    assert client.delete(f"/v1/sessions/{session_id}").status_code == 204
    health = wait_for(lambda: (h := engine_health(client))["sessions"] == 0 and h,
                      "the session's cache to be freed")
    assert health["cache_rows"] == {} and health["session_detail"] == {}


def test_two_websocket_turns_grow_one_cache(live: LiveServer, client: httpx.Client) -> None:
    with connect(ws_url(live, "/v1/realtime")) as ws:
        ws.send(json.dumps({"type": "session.create", "settings": SETTINGS, "pace": False}))
        session = receive_json(ws)["session"]
        assert session["engine"] == "moss-realtime"
        details = []
        for turn, text in ((1, "Good morning to all of you."), (2, "And a good evening too.")):
            ws.send(json.dumps({"type": "text", "text": text, "final": True}))
            samples = []
            while True:
                message = ws.recv(timeout=60)
                if isinstance(message, bytes):
                    rate, _, frame = parse_pcm0(message)
                    assert rate == 24000
                    samples.append(frame)
                    continue
                event = json.loads(message)
                assert event["type"] != "error", event
                if event["type"] == "metrics":
                    break
            audio = np.concatenate(samples)
            assert np.abs(audio).max() > 0
            details.append(settled_turn(client, session["id"], turn))
            assert len(audio) == details[-1]["last_turn"]["frames"] * FRAME
        check_turns_continue(details)
    # /v1/realtime ends its session with the connection: the engine frees the cache.
    wait_for(lambda: session["id"] not in engine_health(client)["cache_rows"],
             "the connection's session cache to be freed")


def test_barge_in_crops_the_cache_and_the_session_speaks_again(client: httpx.Client) -> None:
    # Paced (the default): the engine keeps at most ~500 ms ahead of the listener, so the
    # barge-in lands mid-turn.
    session_id = open_session(client, settings={"seed": 3, "max_frames": 400})
    say(client, session_id, "This long answer keeps going and going. " * 10, final=True)
    received = 0
    with connect_sse(client, "GET", f"/v1/sessions/{session_id}/events") as source:
        for sse in source.iter_sse():
            event = json.loads(sse.data)
            assert event["type"] not in ("error", "turn.done"), event
            if event["type"] == "audio.delta":
                received += 1
                if received == 2:
                    response = client.post(f"/v1/sessions/{session_id}/barge-in")
                    assert response.status_code == 200 and response.json()["interrupted"] == [1]
            if event["type"] == "turn.interrupted":
                break
    cut = settled_turn(client, session_id, 1)
    last = cut["last_turn"]
    assert last["heard"] is not None and 1 <= last["heard"] <= last["frames"] < 400
    assert cut["rows"] == last["after_prefill"] + last["heard"]

    say(client, session_id, "Next turn speaks.", final=True)
    events = read_events(client, session_id, "metrics", 2)
    assert "error" not in [e["type"] for e in events], events
    assert len(pcm16_samples(events)) > 0
    after = settled_turn(client, session_id, 2)
    assert after["last_turn"]["fresh"] is False and after["last_turn"]["base"] == cut["rows"]
    assert client.delete(f"/v1/sessions/{session_id}").status_code == 204
    wait_for(lambda: session_id not in engine_health(client)["cache_rows"], "cache freed")


def speak(client: httpx.Client, voice: str, text: str = "Hello there, friend.") -> np.ndarray:
    response = client.post("/v1/audio/speech", json={
        "model": "moss-realtime", "voice": voice, "input": text, "response_format": "pcm",
        "options": {"seed": 11, "max_frames": 5, "top_k": 1},
    })
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype="<i2")


def test_one_shot_speech_leaves_no_session_state(client: httpx.Client) -> None:
    first = speak(client, DEFAULT_VOICE)
    assert len(first) > 0 and np.abs(first).max() > 0
    np.testing.assert_array_equal(speak(client, DEFAULT_VOICE), first)  # seeded: repeatable
    assert engine_health(client)["sessions"] == 0


def test_an_uploaded_voice_speaks_differently_from_the_default(client: httpx.Client) -> None:
    files = {"file": ("ref.wav", wav_of_tone(330.0, 1.2), "audio/wav")}
    response = client.post("/v1/audio/voices", data={"name": "tone330", "model": "moss-realtime"},
                           files=files)
    assert response.status_code == 201, response.text
    assert response.json()["engine"] == "moss-realtime"
    assert "tone330" in client.get("/adapters").text
    cloned, plain = speak(client, "tone330"), speak(client, DEFAULT_VOICE)
    assert len(cloned) > 0 and np.abs(cloned).max() > 0
    assert len(cloned) != len(plain) or not np.array_equal(cloned, plain)
    np.testing.assert_array_equal(speak(client, "tone330"), cloned)  # the same prompt again
    assert client.delete("/v1/audio/voices/tone330").status_code == 200
    gone = client.post("/v1/audio/speech", json={"model": "moss-realtime", "voice": "tone330",
                                                 "input": "Hi there."})
    assert gone.status_code == 400 and gone.json()["error"]["param"] == "voice"

