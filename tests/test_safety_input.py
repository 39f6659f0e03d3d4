"""Point 4 of "safe to expose": strict input, errors before audio.

Control characters, JSON nested 1000 deep, emoji floods and zero-width-only text are each a
400 envelope before any audio, from one validation function (`api.textguard.clean_text`) that
speech, legacy and sessions share; messages carry no internals.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from conftest import LiveServer
from morpheus_tts.api.errors import OpenAIError
from morpheus_tts.api.textguard import clean_text

EMOJI_FLOOD = "😀" * 4096
ZERO_WIDTH = "\u200b\u200d\ufeff" * 10
INTERNAL = ("Traceback", "TaskGroup", "Exception", "RecursionError", "/work", ".py")


def speech(server: LiveServer, text: str, **extra: object) -> httpx.Response:
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav", **extra}
    return httpx.post(server.url + "/v1/audio/speech", json=body, timeout=60)


def assert_envelope(response: httpx.Response, code: str, param: str | None) -> None:
    assert response.status_code == 400, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"], error["type"]) == (
        code, param, "invalid_request_error")
    assert not any(word in error["message"] for word in INTERNAL), error["message"]


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x85"])
def test_control_characters_are_a_400_naming_the_character(
    server: LiveServer, char: str
) -> None:
    response = speech(server, f"Hello{char} world.")
    assert_envelope(response, "invalid_characters", "input")
    assert f"U+{ord(char):04X} at position 5" in response.json()["error"]["message"]


def test_tab_newline_and_carriage_return_are_speech(server: LiveServer) -> None:
    response = speech(server, "Hello\tthere.\r\nHow are you?")
    assert response.status_code == 200 and len(response.content) > 10_000


@pytest.mark.parametrize("text", [EMOJI_FLOOD, ZERO_WIDTH, "\u2764\ufe0f \U0001f44d\U0001f3fd"])
def test_nothing_speakable_is_a_400_at_once(server: LiveServer, text: str) -> None:
    assert_envelope(speech(server, text), "no_speakable_text", "input")


def test_emoji_among_words_are_skipped_and_the_words_spoken(
    server: LiveServer, transcribe
) -> None:
    import io
    import wave

    import numpy as np

    response = speech(server, "Good \U0001f600 morning \u200bto you.")
    assert response.status_code == 200
    with wave.open(io.BytesIO(response.content)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768
        rate = wav.getframerate()
    heard = transcribe(pcm, rate).lower()
    assert "good morning" in heard and "face" not in heard


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/audio/speech", '{"model":"tts-1","input":"hi","voice":"alloy","x":%s}'),
        ("/speak", '{"text":"hi","extra":%s}'),
        ("/v1/sessions", '{"settings":{"a":%s}}'),
    ],
)
def test_json_nested_1000_deep_is_a_400(server: LiveServer, path: str, body: str) -> None:
    deep = body % ("[" * 1000 + "]" * 1000)
    response = httpx.post(server.url + path, content=deep,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:200]
    assert response.json()["error"]["code"] in ("json_too_deep", "unknown_parameter")
    assert "Recursion" not in response.text


DEEP_CREATE = '{"type":"session.create","settings":{"a":' + "[" * 1000 + "]" * 1000 + "}}"


def test_json_nested_1000_deep_over_a_websocket_is_an_error_event(server: LiveServer) -> None:
    async def run() -> tuple[dict, dict, dict]:
        url = f"ws://127.0.0.1:{server.port}/v1/realtime"
        async with websockets.connect(url) as socket:
            created = json.loads(await socket.recv())
            assert created["type"] == "session.created"
            await socket.send(DEEP_CREATE)
            deep = json.loads(await asyncio.wait_for(socket.recv(), 10))
            await socket.send('{"type":"text","text":"Still here?\\u0000","final":true}')
            control = json.loads(await asyncio.wait_for(socket.recv(), 10))
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as socket:
            await socket.send(DEEP_CREATE)  # as the first message: the session is refused
            refused = json.loads(await asyncio.wait_for(socket.recv(), 10))
            await socket.wait_closed()
            assert socket.close_code == 4400
        return deep, control, refused

    deep, control, refused = asyncio.run(run())
    assert deep["type"] == "error" and deep["error"]["code"] == "json_too_deep"
    assert control["type"] == "error" and control["error"]["code"] == "invalid_characters"
    assert refused["type"] == "error" and refused["error"]["code"] == "json_too_deep"


def test_legacy_speak_uses_the_same_rules(server: LiveServer) -> None:
    response = httpx.post(server.url + "/speak", json={"text": "A\x00B"})
    assert_envelope(response, "invalid_characters", "text")
    assert_envelope(httpx.post(server.url + "/speak", json={"text": ZERO_WIDTH}),
                    "no_speakable_text", "text")


def test_session_deltas_use_the_same_rules(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        session = client.post("/v1/sessions", json={}).json()["id"]
        response = client.post(f"/v1/sessions/{session}/text", json={"text": "x\x00"})
        assert_envelope(response, "invalid_characters", "text")
        # A delta may be blank or zero-width (more text follows); it is not spoken as such.
        ok = client.post(f"/v1/sessions/{session}/text", json={"text": "\u200b "})
        assert ok.status_code == 202
        client.delete(f"/v1/sessions/{session}")


def test_clean_text_removes_what_is_not_spoken() -> None:
    assert clean_text("so\u00adft\u200b ok \U0001f44d\U0001f3fd!", "input", 100) == "soft ok  !"
    with pytest.raises(OpenAIError) as raised:
        clean_text("\ud800 lone surrogate", "input", 100)
    assert raised.value.code == "invalid_characters"
    assert clean_text("", "text", 10, whole=False) == ""
