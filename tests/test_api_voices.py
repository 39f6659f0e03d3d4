"""Voice prompts over HTTP: register (multipart and base64 JSON), use, list, delete, refuse."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from conftest import ROOT, LiveServer, start_live_server

CONFIG = """
[server]
default_engine = "turnstub"
[plugins.turnstub]
module = "turn_engine"
settings = { voice_cloning = true }
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    env = {"PYTHONPATH": str(ROOT / "tests")}
    server: LiveServer = start_live_server(tmp_path_factory.mktemp("voices"), CONFIG, env)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        server.stop()


def wav_of_tone(hz: float, seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def dominant_hz(samples: np.ndarray, rate: int = 24000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * rate / len(samples))


def speak_pcm(client: httpx.Client, voice: str) -> httpx.Response:
    return client.post("/v1/audio/speech", json={
        "model": "turnstub", "voice": voice, "input": "one two three four",
        "response_format": "pcm",
    })


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_an_uploaded_voice_speaks_in_the_reference_pitch(client: httpx.Client) -> None:
    files = {"file": ("ref.wav", wav_of_tone(440.0, 1.5), "audio/wav")}
    response = client.post("/v1/audio/voices", data={"name": "lisa"}, files=files)
    assert response.status_code == 201, response.text
    assert response.json() == {"object": "voice", "name": "lisa", "engine": "turnstub",
                               "duration_s": 1.5, "sample_rate": 16000}
    listed = client.get("/v1/audio/voices").text
    assert '"lisa"' in listed
    cloned = speak_pcm(client, "lisa")
    assert cloned.status_code == 200, cloned.text
    samples = np.frombuffer(cloned.content, dtype="<i2").astype(np.float32)
    assert dominant_hz(samples) == pytest.approx(440.0, abs=3)
    plain = np.frombuffer(speak_pcm(client, "stub").content, dtype="<i2").astype(np.float32)
    assert abs(dominant_hz(plain) - 440.0) > 20  # the built-in voice sounds otherwise

    deleted = client.delete("/v1/audio/voices/lisa")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    gone = speak_pcm(client, "lisa")
    assert gone.status_code == 400 and error_of(gone)["param"] == "voice"
    assert '"lisa"' not in client.get("/v1/audio/voices").text


def test_a_base64_json_upload_registers_the_voice(client: httpx.Client) -> None:
    audio = base64.b64encode(wav_of_tone(600.0, 1.2)).decode()
    response = client.post("/v1/audio/voices", json={"name": "json-voice", "audio": audio})
    assert response.status_code == 201, response.text
    samples = np.frombuffer(speak_pcm(client, "json-voice").content, "<i2").astype(np.float32)
    assert dominant_hz(samples) == pytest.approx(600.0, abs=3)
    assert client.delete("/v1/audio/voices/json-voice").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"name": "short", "audio": base64.b64encode(wav_of_tone(300, 0.3)).decode()},
         400, "file", "invalid_duration"),
        ({"name": "long", "audio": base64.b64encode(wav_of_tone(300, 31)).decode()},
         400, "file", "invalid_duration"),
        ({"name": "junk", "audio": base64.b64encode(b"not audio at all" * 10).decode()},
         400, "file", "invalid_value"),
        ({"name": "bad64", "audio": "@@@"}, 400, "audio", "invalid_value"),
        ({"name": "bad name!", "audio": ""}, 400, "name", "invalid_value"),
        ({"name": "x", "audio": "", "model": "nope"}, 404, "model", "model_not_found"),
    ],
)
def test_bad_uploads_are_refused_naming_the_field(
    client: httpx.Client, body: dict, status: int, param: str, code: str
) -> None:
    response = client.post("/v1/audio/voices", json=body)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)


def test_deleting_an_unknown_voice_is_404(client: httpx.Client) -> None:
    response = client.delete("/v1/audio/voices/never-added")
    assert response.status_code == 404
    assert error_of(response)["code"] == "voice_not_found"


def test_a_name_already_taken_is_refused(client: httpx.Client) -> None:
    audio = base64.b64encode(wav_of_tone(500, 1.1)).decode()
    response = client.post("/v1/audio/voices", json={"name": "stub", "audio": audio})
    assert response.status_code == 400 and error_of(response)["code"] == "voice_exists"

